//! One step of a scenario: `deploy`, `fault`, `wait-for` or `check`, written as a map
//! with that one key.

pub const EXPECTED: &str = "a step is one of: {deploy: {accelerate: false (optional; true: sockops/sockmap \
acceleration of node <-> local pod TCP), \
max-sockhash: N (optional, with accelerate: the sockhash's capacity), \
agent-layout: N (optional: the agents' map layout, datapathd run --layout)}} | {fault: {name: FAULT (`harness list` names them), \
node: NAME (optional; default: chosen from the seed), during: [INVARIANT, ...] (optional: judged while the fault is active), \
recover-within-s: SECONDS (optional: the bound of a later recovers-within)}} | \
{wait-for: {condition: agents-ready|services-reachable, timeout-s: 30}} | \
{check: {invariants: [INVARIANT, ...] (`harness list` names them)}}";

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
    /// dp_sockhash's capacity (`datapathd run --max-sockhash`; needs `accelerate`): small
    /// enough for a foreign writer to fill it with real sockets (map-pressure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sockhash: Option<u32>,
    /// The map layout (`datapathd run --layout N`) every agent starts with: an older
    /// release's, so that agent-upgrade upgrades first and downgrades back. Absent: the
    /// agent's default (its newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_layout: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FaultStep {
    pub name: FaultName,
    /// The node to hit; chosen from the seed when absent.
    #[serde(default)]
    pub node: Option<String>,
    /// Invariants judged while the fault is active (between its proof and its heal).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub during: Vec<InvariantName>,
    /// After the heal, how long every service may take to be reachable again: the bound
    /// `recovers-within` judges in a later check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recover_within_s: Option<u64>,
}

/// What a fault or an invariant needs of the suite and of the provider. The fault and
/// invariant registries (crate::registry) declare it per entry; suites are validated
/// against it and the runner skips what a provider cannot do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// Nodes that are machines (own kernel, own links): not the netns provider.
    pub machines: bool,
    /// The scenario's deploy step accelerates node <-> local pod TCP.
    pub acceleration: bool,
    /// A pod backing a TCP service on the fault's node (on some node when none is named).
    pub tcp_server: bool,
    /// Long-lived connections opened at deploy (from every pod to every TCP service and
    /// pod server on another node) that the invariant judges later.
    pub held_connections: bool,
    /// A fault step earlier in the scenario that sets `recover-within-s` (the bound the
    /// invariant judges the recovery after its heal against).
    pub recovery_bound: bool,
    /// The agent wires pods (`topology.routing` native or vxlan); a scenario of a suite
    /// with kernel routing is skipped with the reason.
    pub pod_routing: bool,
}

/// A fault's name as suites write it. Which names exist is the fault registry's
/// business (crate::registry), checked when a suite is loaded.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(transparent)]
pub struct FaultName(std::borrow::Cow<'static, str>);

impl FaultName {
    pub const fn new(name: &'static str) -> FaultName {
        FaultName(std::borrow::Cow::Borrowed(name))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for FaultName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
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

/// An invariant's name as suites write it. Which names exist is the invariant registry's
/// business (crate::registry), checked when a suite is loaded. `host-clean-after-down`
/// is judged after every teardown whether listed or not.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(transparent)]
pub struct InvariantName(std::borrow::Cow<'static, str>);

impl InvariantName {
    pub const fn new(name: &'static str) -> InvariantName {
        InvariantName(std::borrow::Cow::Borrowed(name))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for InvariantName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
