//! `scenarios:` ordered steps, run `repeat` times each.

use super::step::Step;

pub const EXPECTED: &str = "scenarios: [{name: restart, repeat: 1, steps: [{deploy: {}}, \
{check: {invariants: [...]}}, {fault: {name: ...}}, ...]}] (the first step is deploy)";

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Overrides the suite's repeat for this scenario.
    #[serde(default)]
    pub repeat: Option<u32>,
    /// Each step is a map with one key (`- deploy: {}`); serde_yaml 0.9 wants `!tags`
    /// for enums unless told otherwise.
    #[serde(with = "serde_yaml::with::singleton_map_recursive")]
    pub steps: Vec<Step>,
}
