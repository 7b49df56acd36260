//! One step of a scenario: `deploy`, `fault`, `wait-for` or `check`, written as a map
//! with that one key.

pub const EXPECTED: &str = "a step is one of: {deploy: {accelerate: false (optional; true: sockops/sockmap \
acceleration of node <-> local pod TCP)}} | {fault: {name: agent-restart-mid-attach|kube-proxy-order-swap|node-reboot|link-degrade|sockmap-leak, \
node: NAME (optional; default: chosen from the seed)}} | {wait-for: {condition: agents-ready|services-reachable, \
timeout-s: 30}} | {check: {invariants: [service-connectivity, one-program-per-hook, no-orphan-bpf-objects]}}";

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum Step {
    /// Start datapathd on every node, write the services, start the backends.
    Deploy(DeployStep),
    Fault(FaultStep),
    WaitFor(WaitForStep),
    Check(CheckStep),
}

#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DeployStep {
    /// Start every agent with socket acceleration for node <-> local pod TCP
    /// (`--accelerate <node addr>/32 --accelerate <pod CIDR>`) and the pods' servers in
    /// their pod cgroups (below the node's, where `sock_ops` is attached), so that
    /// `sock_ops` sees both ends. Off by default: other suites run as before.
    #[serde(default)]
    pub accelerate: bool,
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FaultStep {
    pub name: FaultKind,
    /// The node to hit; chosen from the seed when absent.
    #[serde(default)]
    pub node: Option<String>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    AgentRestartMidAttach,
    /// Incident B: kube-proxy (fixture) and the agent started in both orders, restarted
    /// alone, kube-proxy's rules flushed and re-added.
    KubeProxyOrderSwap,
    /// Reboot a node (a VM): its kernel, bpffs and pods start over; the datapath must
    /// come back clean. Needs a provider whose nodes are machines.
    NodeReboot,
    /// Degrade a node's cluster link (tc netem delay and loss), prove it, heal it.
    LinkDegrade,
    /// Incident C: stale sockhash keys planted for tuples that later node -> local pod
    /// connections use, then thousands of short connections over those tuples.
    SockmapLeak,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::AgentRestartMidAttach,
        FaultKind::KubeProxyOrderSwap,
        FaultKind::NodeReboot,
        FaultKind::LinkDegrade,
        FaultKind::SockmapLeak,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::AgentRestartMidAttach => "agent-restart-mid-attach",
            FaultKind::KubeProxyOrderSwap => "kube-proxy-order-swap",
            FaultKind::NodeReboot => "node-reboot",
            FaultKind::LinkDegrade => "link-degrade",
            FaultKind::SockmapLeak => "sockmap-leak",
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WaitForStep {
    pub condition: Condition,
    #[serde(default = "thirty")]
    pub timeout_s: u64,
}

fn thirty() -> u64 {
    30
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Condition {
    /// Every node's datapathd is running and has printed its ready line.
    AgentsReady,
    /// Every pod reaches every service once (a poll, not a verdict).
    ServicesReachable,
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CheckStep {
    pub invariants: Vec<InvariantName>,
}

/// The invariants a check can name. `host-clean-after-down` is judged after every
/// teardown whether listed or not.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum InvariantName {
    ServiceConnectivity,
    OneProgramPerHook,
    NoOrphanBpfObjects,
    HostCleanAfterDown,
    /// Incident B: every pod reaches the external host with payload (masquerade).
    PodToExternal,
    /// Incident B: DP_FORWARD precedes KUBE-FORWARD in FORWARD.
    ForwardChainOrder,
    /// Incident B: the datapath's iptables rules are each present exactly once.
    RulesExactlyOnce,
    /// Incident B: kube-proxy's INVALID DROP counts nothing during pod-to-external probes.
    NoInvalidDrops,
    /// Every pod reaches every other pod's server directly, across nodes, with payload.
    PodToPod,
    /// Incident C: every request from a node to its local pods over an accelerated
    /// connection is answered within a bound; ESTABLISHED and silent is a failure.
    PayloadLiveness,
    /// Incident C: every sockhash key is owned by a live socket whose tuple is the key,
    /// and every accelerated socket is in the map under its own key.
    SockhashKeysLive,
    /// Incident C: a node's sockhash holds at most 2 entries per live accelerated
    /// connection.
    SockhashBounded,
    /// Incident C: bytes sent on a connection arrive on that connection only.
    NoCrossDelivery,
}

impl InvariantName {
    pub const ALL: [InvariantName; 13] = [
        InvariantName::ServiceConnectivity,
        InvariantName::OneProgramPerHook,
        InvariantName::NoOrphanBpfObjects,
        InvariantName::HostCleanAfterDown,
        InvariantName::PodToExternal,
        InvariantName::ForwardChainOrder,
        InvariantName::RulesExactlyOnce,
        InvariantName::NoInvalidDrops,
        InvariantName::PodToPod,
        InvariantName::PayloadLiveness,
        InvariantName::SockhashKeysLive,
        InvariantName::SockhashBounded,
        InvariantName::NoCrossDelivery,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            InvariantName::ServiceConnectivity => "service-connectivity",
            InvariantName::OneProgramPerHook => "one-program-per-hook",
            InvariantName::NoOrphanBpfObjects => "no-orphan-bpf-objects",
            InvariantName::HostCleanAfterDown => "host-clean-after-down",
            InvariantName::PodToExternal => "pod-to-external",
            InvariantName::ForwardChainOrder => "forward-chain-order",
            InvariantName::RulesExactlyOnce => "rules-exactly-once",
            InvariantName::NoInvalidDrops => "no-invalid-drops",
            InvariantName::PodToPod => "pod-to-pod",
            InvariantName::PayloadLiveness => "payload-liveness",
            InvariantName::SockhashKeysLive => "sockhash-keys-live",
            InvariantName::SockhashBounded => "sockhash-bounded",
            InvariantName::NoCrossDelivery => "no-cross-delivery",
        }
    }
}

impl InvariantName {
    /// Judged only on a deployment with socket acceleration (incident C).
    pub fn needs_acceleration(self) -> bool {
        matches!(
            self,
            InvariantName::PayloadLiveness
                | InvariantName::SockhashKeysLive
                | InvariantName::SockhashBounded
                | InvariantName::NoCrossDelivery
        )
    }
}

impl std::fmt::Display for InvariantName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
