//! Faults: what is injected, where (decided by the plan from the seed), and the proof that
//! it took effect. One trait, one file per fault. A fault that cannot prove it happened
//! is a harness error, not a pass.

pub mod agent_restart;
pub mod kube_proxy_order_swap;
pub mod link_degrade;
pub mod node_reboot;
pub mod sockmap_leak;

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
    #[error("fault {fault}: this provider cannot do it: {reason}")]
    Unsupported { fault: &'static str, reason: String },
    #[error("fault {fault} on node {node}: {what}")]
    Provider {
        fault: &'static str,
        node: String,
        what: String,
        #[source]
        source: Box<crate::provider::ProviderError>,
    },
    #[error("fault interrupted")]
    Interrupted,
}

pub trait Fault {
    fn name(&self) -> &'static str;
    /// Injects, proves, and heals (the agent is running again when it returns Ok).
    fn inject(&self, live: &mut Live) -> Result<FaultRecord, FaultError>;
    /// Like `inject`, with the provider's machine layer (`None` when the provider has
    /// none). Faults below the node's userland (reboot, links) override this one.
    fn inject_with(
        &self,
        live: &mut Live,
        _machines: Option<&mut dyn crate::provider::Machines>,
    ) -> Result<FaultRecord, FaultError> {
        self.inject(live)
    }
}

pub fn from_plan(p: &FaultPlan) -> Box<dyn Fault> {
    match p {
        FaultPlan::AgentRestartMidAttach(r) => {
            Box::new(agent_restart::AgentRestartMidAttach(r.clone()))
        }
        FaultPlan::KubeProxyOrderSwap(p) => {
            Box::new(kube_proxy_order_swap::KubeProxyOrderSwap(p.clone()))
        }
        FaultPlan::NodeReboot(p) => Box::new(node_reboot::NodeReboot(p.clone())),
        FaultPlan::LinkDegrade(p) => Box::new(link_degrade::LinkDegrade(p.clone())),
        FaultPlan::SockmapLeak(p) => Box::new(sockmap_leak::SockmapLeak(p.clone())),
    }
}
