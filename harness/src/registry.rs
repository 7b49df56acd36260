//! The one place where faults and invariants are registered: a fault or an invariant is
//! its own file plus one line here. `harness list`, suite validation, planning, the
//! steps' descriptions and the runner all look them up here.

use crate::fault::{self, entry, AnyFault};
use crate::invariant::{self, Invariant};
use crate::suite::{Catalog, FaultName, FaultStep, InvariantName, Needs, Scenario, Suite};

/// Every fault, in the order `harness list` shows them.
pub static FAULTS: &[&dyn AnyFault] = &[
    &entry::<fault::agent_restart::AgentRestartMidAttach>(),
    &entry::<fault::agent_upgrade::AgentUpgrade>(),
    &entry::<fault::kube_proxy_order_swap::KubeProxyOrderSwap>(),
    &entry::<fault::node_reboot::NodeReboot>(),
    &entry::<fault::link_degrade::LinkDegrade>(),
    &entry::<fault::sockmap_leak::SockmapLeak>(),
    &entry::<fault::partition::Partition>(),
    &entry::<fault::bpffs_remount::BpffsRemount>(),
    &entry::<fault::map_pressure::MapPressure>(),
    &entry::<fault::pod_churn::PodChurn>(),
    &entry::<fault::noop::Noop>(),
];

/// Every invariant a check can name, in the order `harness list` shows them.
pub static INVARIANTS: &[&dyn Invariant] = &[
    &invariant::service_connectivity::ServiceConnectivity,
    &invariant::one_program::OneProgramPerHook,
    &invariant::no_orphan::NoOrphanBpfObjects,
    &invariant::pod_to_external::PodToExternal,
    &invariant::forward_chain_order::ForwardChainOrder,
    &invariant::rules_exactly_once::RulesExactlyOnce,
    &invariant::no_invalid_drops::NoInvalidDrops,
    &invariant::pod_to_pod::PodToPod,
    &invariant::pod_wiring::PodWiring,
    &invariant::pod_delete_cleanup::PodDeleteCleanup,
    &invariant::payload_liveness::PayloadLiveness,
    &invariant::sockhash_keys_live::SockhashKeysLive,
    &invariant::sockhash_bounded::SockhashBounded,
    &invariant::no_cross_delivery::NoCrossDelivery,
    &invariant::recovers_within::RecoversWithin,
    &invariant::datapath_pinned::DatapathPinned,
    &invariant::conn_disrupt::ConnDisrupt,
];

/// Judged by the runner after every teardown, never by a check step.
pub const AFTER_TEARDOWN: &[InvariantName] = &[invariant::host_clean::NAME];

pub fn fault(name: &FaultName) -> Option<&'static dyn AnyFault> {
    FAULTS.iter().copied().find(|f| f.name() == name.as_str())
}

pub fn invariant(name: &InvariantName) -> Option<&'static dyn Invariant> {
    INVARIANTS.iter().copied().find(|i| &i.name() == name)
}

/// Suites are checked against the registries.
pub struct Registry;

impl Catalog for Registry {
    fn fault_names(&self) -> Vec<String> {
        FAULTS.iter().map(|f| f.name().to_owned()).collect()
    }
    fn invariant_names(&self) -> Vec<String> {
        INVARIANTS.iter().map(|i| i.name().to_string()).collect()
    }
    fn fault_needs(&self, name: &FaultName) -> Option<Needs> {
        fault(name).map(|f| f.needs())
    }
    fn invariant_needs(&self, name: &InvariantName) -> Option<Needs> {
        invariant(name).map(|i| i.suite_needs())
    }
    fn judged_after_teardown(&self) -> Vec<InvariantName> {
        AFTER_TEARDOWN.to_vec()
    }
    fn validate_fault(
        &self,
        suite: &Suite,
        scenario: &Scenario,
        step: &FaultStep,
    ) -> Result<(), String> {
        match fault(&step.name) {
            Some(f) => f.validate(suite, scenario, step),
            None => Err(format!("unknown fault `{}`", step.name)),
        }
    }
}
