//! Faults: what is injected, where (decided by the plan from the seed), and the proof that
//! it took effect. One trait, one file per fault. A fault that cannot prove it happened
//! is a harness error, not a pass.

pub mod agent_restart;
pub mod kube_proxy_order_swap;

use crate::plan::FaultPlan;
use crate::run::Live;

/// What a fault did, for the history.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct FaultRecord {
    /// One line per thing done and proved (which process died how, where).
    pub proof: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("fault {fault} on node {node}: {what}")]
    NotProved {
        fault: &'static str,
        node: String,
        what: String,
    },
    #[error("fault {fault} on node {node}: {what}")]
    Node {
        fault: &'static str,
        node: String,
        what: String,
        #[source]
        source: Box<crate::node::NodeError>,
    },
    #[error("fault interrupted")]
    Interrupted,
}

pub trait Fault {
    fn name(&self) -> &'static str;
    /// Injects, proves, and heals (the agent is running again when it returns Ok).
    fn inject(&self, live: &mut Live) -> Result<FaultRecord, FaultError>;
}

pub fn from_plan(p: &FaultPlan) -> Box<dyn Fault> {
    match p {
        FaultPlan::AgentRestartMidAttach(r) => {
            Box::new(agent_restart::AgentRestartMidAttach(r.clone()))
        }
        FaultPlan::KubeProxyOrderSwap(p) => {
            Box::new(kube_proxy_order_swap::KubeProxyOrderSwap(p.clone()))
        }
    }
}
