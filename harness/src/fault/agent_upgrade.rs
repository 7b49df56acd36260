//! agent-upgrade: replace the running agent with a release whose masquerade map layout
//! differs (`datapathd run --layout N`: layout 2 appends a field to the NAT maps' values
//! and doubles their capacity; datapath/README.md), and go back. On the planned node:
//! SIGTERM the agent, start it at the other layout, wait until it is ready, stay there a
//! planned while (held connections keep running through the migrated maps), then SIGTERM
//! it again and start it at the layout it had. Deployed at layout 1 (`deploy.agent-layout`,
//! suites/upgrade.yaml) that is an upgrade and the downgrade back; at the newest, the
//! other way round. Each switch is proved by the judge's own
//! eyes: the pinned `dp_masq_fwd` as bpftool sees it has a new map id, the other value
//! size and capacity, and the agent's pid changed.
//!
//! Both switches happen inside the injection (the fault has ended when it returns): the
//! agent lives in the run's `Live`, which a heal cannot reach, and an upgrade followed by
//! a downgrade is exactly the round trip the suite judges afterwards (conn-disrupt).
//! One seeded node, not every node: a pod->external connection depends only on its own
//! node's masquerade, so one node's round trip already breaks (or keeps) its flows, and
//! the run stays short on qemu.

use std::time::Duration;

use rand::Rng;

use super::{Fault, FaultError, FaultRecord, PlanContext, Site, Started};
use crate::cluster::datapath::READY_TIMEOUT;
use crate::cluster::ClusterNode;
use crate::live::Live;
use crate::observe::bpf::{self, MapShape};
use crate::provider::Machines;
use crate::suite::{FaultStep, Needs, Scenario, Suite};

const NAME: &str = "agent-upgrade";

/// The layouts datapathd knows; the newest is its default.
const OLDEST: u32 = 1;
const NEWEST: u32 = 2;
/// The map whose shape proves the layout (its value grows by a field in layout 2).
const PROOF_MAP: &str = "masq/maps/dp_masq_fwd";

/// Every decision of one agent-upgrade.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentUpgrade {
    pub node: String,
    /// How long the agent runs at the other layout before it goes back.
    pub dwell_ms: u64,
}

impl Fault for AgentUpgrade {
    const NAME: &'static str = NAME;
    const ABOUT: &'static str =
        "replace the agent by a release with another masquerade map layout \
(a field added, a map resized) and go back; held connections must survive both migrations";

    fn needs() -> Needs {
        Needs::default()
    }

    fn validate(_suite: &Suite, _scenario: &Scenario, _step: &FaultStep) -> Result<(), String> {
        Ok(())
    }

    fn plan(cx: &mut PlanContext<'_>, step: &FaultStep) -> Self {
        AgentUpgrade {
            node: cx.node(step),
            dwell_ms: cx.rng.random_range(1000..3000),
        }
    }

    fn describe(&self) -> String {
        format!("node={} dwell={}ms", self.node, self.dwell_ms)
    }

    fn start<'m>(
        &self,
        live: &mut Live,
        _machines: Option<&'m mut dyn Machines>,
    ) -> Result<Started<'m>, FaultError> {
        Ok(Started::ended(NAME, self.inject(live)?))
    }
}

/// The `--layout` an agent's flags select (none: the newest, datapathd's default).
fn layout_of(args: &[String]) -> u32 {
    args.iter()
        .position(|a| a == "--layout")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(NEWEST)
}

/// `args` with `--layout` set to `layout` (replacing any earlier one).
fn with_layout(args: &[String], layout: u32) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len() + 2);
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
        } else if a == "--layout" {
            skip = true;
        } else {
            out.push(a.clone());
        }
    }
    out.extend(["--layout".to_string(), layout.to_string()]);
    out
}

impl AgentUpgrade {
    fn inject(&self, live: &mut Live) -> Result<FaultRecord, FaultError> {
        let node = self.node.clone();
        let site = Site::new(NAME, &node);
        let cn = site.cluster_node(live)?;
        if cn.net.is_none() {
            return Err(FaultError::Unsupported {
                fault: NAME,
                reason: format!("node {node} runs no masquerade: there is no map layout to change"),
            });
        }
        let idx = live
            .agents
            .iter()
            .position(|a| a.node == node)
            .ok_or_else(|| site.not_proved("no agent deployed"))?;
        let from = layout_of(&live.agents[idx].extra_args);
        let to = if from == NEWEST { OLDEST } else { NEWEST };
        let mut rec = FaultRecord::default();
        self.switch(live, idx, &cn, from, to, &mut rec)?;
        if !live.cancel.sleep(Duration::from_millis(self.dwell_ms)) {
            return Err(FaultError::Interrupted);
        }
        self.switch(live, idx, &cn, to, from, &mut rec)?;
        Ok(rec)
    }

    /// SIGTERM the agent, start it at `to`, wait for it, and prove the change.
    fn switch(
        &self,
        live: &mut Live,
        idx: usize,
        cn: &ClusterNode,
        from: u32,
        to: u32,
        rec: &mut FaultRecord,
    ) -> Result<(), FaultError> {
        let node = self.node.clone();
        let site = Site::new(NAME, &node);
        let pin = cn.bpffs.join(PROOF_MAP).display().to_string();
        let shape = |what: &str| -> Result<MapShape, FaultError> {
            bpf::map_shape(cn.node.as_ref(), &pin)
                .map_err(|e| site.not_proved(format!("reading {pin} {what}: {e}")))
        };
        let before = shape("before the switch")?;
        let old_pid = live.agents[idx].pid();
        let exit = live.agents[idx]
            .kill(libc::SIGTERM)
            .map_err(site.node_error("SIGTERM the agent"))?;
        rec.proof.push(format!(
            "agent pid {} at layout {from} stopped by SIGTERM: {}",
            old_pid.unwrap_or(0),
            exit.map_or("it did not end".to_string(), |e| e.to_string())
        ));
        let args = with_layout(&live.agents[idx].extra_args, to);
        live.agents[idx].extra_args = args;
        live.agents[idx]
            .start(cn, None)
            .map_err(site.node_error("start at the other layout"))?;
        if let Some(e) = live.agents[idx]
            .wait_ready(cn, READY_TIMEOUT)
            .map_err(site.node_error("wait ready"))?
        {
            return Err(site.not_proved(format!(
                "the agent started at layout {to} ended with {e} before it was ready"
            )));
        }
        let new_pid = live.agents[idx].pid();
        let after = shape("after the switch")?;
        if new_pid == old_pid
            || after.id == before.id
            || after.bytes_value == before.bytes_value
            || after.max_entries == before.max_entries
        {
            return Err(site.not_proved(format!(
                "layout {from} -> {to} not visible: pid {old_pid:?} -> {new_pid:?}, {pin} {before:?} -> {after:?}"
            )));
        }
        rec.proof.push(format!(
            "agent pid {} ready at layout {to}; {pin}: map id {} -> {}, value {} -> {} bytes, max_entries {} -> {} (bpftool)",
            new_pid.unwrap_or(0),
            before.id,
            after.id,
            before.bytes_value,
            after.bytes_value,
            before.max_entries,
            after.max_entries
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn layout_flag_is_read_and_replaced() {
        assert_eq!(layout_of(&[]), NEWEST);
        assert_eq!(layout_of(&s(&["--accelerate", "x", "--layout", "1"])), 1);
        assert_eq!(
            with_layout(&s(&["--layout", "1", "--accelerate", "x"]), 2),
            s(&["--accelerate", "x", "--layout", "2"])
        );
    }
}
