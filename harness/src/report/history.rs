//! The JSON history: the plan (every decision), every event (step, proof, verdict,
//! timing), the facts and limitations of the provider. Two runs of one seed have the same
//! `plan`.

use std::path::Path;

use crate::event::Event;
use crate::plan::Plan;

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

/// What a replay reads of a history: its plan and the provider's facts. The events are
/// left out, so that a history written by another version of the harness (whose events
/// differ) still replays.
#[derive(Debug, serde::Deserialize)]
pub struct Replayable {
    pub plan: Plan,
    #[serde(default)]
    pub facts: Option<serde_json::Value>,
}

impl Replayable {
    /// node -> the exact kernel package it ran, as the provider recorded it.
    pub fn exact_kernels(&self) -> std::collections::BTreeMap<String, crate::kernel::KernelSpec> {
        let nodes = self
            .facts
            .as_ref()
            .and_then(|f| f.get("nodes"))
            .and_then(|n| n.as_array())
            .cloned()
            .unwrap_or_default();
        nodes
            .iter()
            .filter_map(|n| {
                let name = n.get("name")?.as_str()?.to_owned();
                let spec = n.get("kernel_package")?.as_str()?.parse().ok()?;
                Some((name, spec))
            })
            .collect()
    }
}

pub fn write(
    path: &Path,
    plan: &Plan,
    replay: &str,
    result: &crate::run::RunResult,
    outcome: &str,
) -> std::io::Result<()> {
    let h = History {
        plan: plan.clone(),
        replay: replay.to_owned(),
        facts: serde_json::to_value(&result.facts).ok(),
        limitations: result
            .limitations
            .iter()
            .filter_map(|l| serde_json::to_value(l).ok())
            .collect(),
        events: result.events.clone(),
        outcome: outcome.to_string(),
        wall_ms: result.wall.as_millis() as u64,
    };
    let data = serde_json::to_vec_pretty(&h).map_err(std::io::Error::other)?;
    std::fs::write(path, data)
}

pub fn read(path: &Path) -> Result<Replayable, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&data)
        .map_err(|e| format!("{}: not a history file: {e}", path.display()))
}
