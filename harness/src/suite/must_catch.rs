//! `must-catch`: the deliberately broken datapaths (`datapathd mutants`) a suite must
//! catch, each with the invariants that name its bug. `harness mutate` runs them; a mutant
//! is caught when one of its invariants fails.

pub const EXPECTED: &str = "must-catch: [{mutant: NAME (one of `datapathd mutants`), invariants: [INVARIANT, ...] (checked by a scenario of the suite)}]";

/// The mutants datapathd builds in, as `datapathd mutants` lists them. Suites are checked
/// against this list when they load; `harness mutate` checks it against the datapathd it
/// deploys, so a drift is a harness error rather than a mutant that silently never runs.
pub const KNOWN_MUTANTS: &[&str] = &[
    "stale-cgroup-prog",
    "udp-reply-not-reversed",
    "getpeername-not-rewritten",
    "kube-proxy-first",
    "forward-jump-appended",
    "forward-jump-duplicated",
    "masq-reply-port-kept",
    "sockmap-noexist",
    "sockmap-no-gc",
    "sockmap-key-port-order",
    "sockmap-active-only",
    "quarantine-never-restored",
    "bpffs-lost-pins-ignored",
    "map-pressure-flush",
    "upgrade-recreates-maps",
    "arp-responder-off",
    "ipcache-stale-on-move",
    "endpoint-kept-on-delete",
];

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MustCatch {
    pub mutant: String,
    /// Any one of these failing is a catch; none failing is a survivor.
    pub invariants: Vec<super::InvariantName>,
}
