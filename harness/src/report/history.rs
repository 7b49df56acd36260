//! The JSON history: the plan (every decision), every event (step, proof, verdict,
//! timing), the facts and limitations of the provider. Two runs of one seed have the same
//! `plan`.

use std::path::Path;

use crate::plan::Plan;
use crate::provider::{Facts, Limitation};
use crate::run::Event;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct History {
    pub plan: Plan,
    pub replay: String,
    #[serde(default)]
    pub facts: Option<serde_json::Value>,
    #[serde(default)]
    pub limitations: Vec<serde_json::Value>,
    pub events: Vec<Event>,
    pub outcome: String,
    pub wall_ms: u64,
}

pub fn write(
    path: &Path,
    plan: &Plan,
    facts: &Facts,
    limits: &[Limitation],
    events: &[Event],
    outcome: &str,
    wall_ms: u64,
) -> std::io::Result<()> {
    let h = History {
        plan: plan.clone(),
        replay: plan.replay_command(),
        facts: serde_json::to_value(facts).ok(),
        limitations: limits
            .iter()
            .filter_map(|l| serde_json::to_value(l).ok())
            .collect(),
        events: events.to_vec(),
        outcome: outcome.to_string(),
        wall_ms,
    };
    let data = serde_json::to_vec_pretty(&h).map_err(std::io::Error::other)?;
    std::fs::write(path, data)
}

pub fn read(path: &Path) -> Result<History, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&data)
        .map_err(|e| format!("{}: not a history file: {e}", path.display()))
}
