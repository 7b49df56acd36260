//! sockhash-bounded (incident C): a node's `dp_sockhash` holds at most two entries per
//! live accelerated connection (one per end). Thousands of leaked keys were the incident's
//! signature. Inputs: the entry count of the pinned map (bpftool) and the number of
//! ESTABLISHED connections whose both ends are in the node's accelerated prefixes.
//!
//! The sockets are read first and the map second: a connection that closes in between
//! only lowers the entry count. A count over the bound is observed again (for up to
//! [`SETTLE`]) before it is a failure, so a connection caught half-closed is not a leak;
//! leaked keys stay, so they still fail.

use std::time::{Duration, Instant};

use super::{merge, per_node, unknown_unless_harness, Context, Invariant, Judgement, Verdict};
use crate::cluster::ClusterNode;
use crate::observe::features::{self, KernelNeed};
use crate::observe::sockhash::{self as obs, Scope};
use crate::observe::ObserveError;
use crate::suite::{InvariantName, Needs};

/// How long an over-the-bound count is re-observed before it fails (stale keys must be
/// collected by then).
pub const SETTLE: Duration = obs::COLLECT_BOUND;

pub const NAME: InvariantName = InvariantName::new("sockhash-bounded");
pub struct SockhashBounded;

impl Invariant for SockhashBounded {
    fn name(&self) -> InvariantName {
        NAME
    }

    fn about(&self) -> &'static str {
        "a node's sockhash holds at most 2 entries per live accelerated connection"
    }

    fn suite_needs(&self) -> Needs {
        Needs {
            acceleration: true,
            ..Needs::default()
        }
    }

    fn needs(&self) -> &'static [KernelNeed] {
        features::SOCKET_ACCELERATION
    }

    fn check(&self, ctx: &Context<'_>) -> Result<Judgement, ObserveError> {
        Ok(merge(&per_node(ctx, |cn| check_node(ctx, cn).map(Some))?))
    }
}

fn observe(ctx: &Context<'_>, cn: &ClusterNode, scope: &Scope) -> Result<Judgement, ObserveError> {
    let socks = obs::sockets(ctx.cluster, cn)?;
    let keys = obs::dump(cn)?;
    let live = obs::live_accelerated_connections(&socks, scope);
    let sample: Vec<String> = keys
        .iter()
        .map(|(k, c)| format!("node {}: key {} -> {} cookie {c}", cn.name(), k.src, k.dst))
        .collect();
    Ok(judge(cn.name(), keys.len(), live, &sample))
}

fn check_node(ctx: &Context<'_>, cn: &ClusterNode) -> Result<Judgement, ObserveError> {
    let scope = match Scope::of(cn) {
        Ok(s) => s,
        Err(e) => return unknown_unless_harness("cannot observe", e),
    };
    let deadline = Instant::now() + SETTLE;
    let mut j = loop {
        let j = match observe(ctx, cn, &scope) {
            Ok(j) => j,
            Err(e) => return unknown_unless_harness("cannot observe", e),
        };
        if j.verdict == Verdict::Pass || Instant::now() >= deadline {
            break j;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if let Ok(c) = obs::status_counters(cn) {
        j.evidence.push(format!(
            "node {}: datapathd status sockhash: {c}",
            cn.name()
        ));
    }
    Ok(j)
}

pub fn judge(node: &str, entries: usize, live_accelerated: usize, sample: &[String]) -> Judgement {
    let bound = 2 * live_accelerated;
    if entries <= bound {
        Judgement::pass(format!(
            "node {node}: dp_sockhash holds {entries} entr(ies), bound 2 x {live_accelerated} live accelerated connection(s)"
        ))
    } else {
        let mut evidence = vec![format!(
            "node {node}: {entries} entries > 2 x {live_accelerated} live accelerated connection(s)"
        )];
        evidence.extend(sample.iter().take(20).cloned());
        Judgement::fail(
            format!("node {node}: dp_sockhash holds {entries} entries, more than {bound}"),
            evidence,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariant::Verdict;

    #[test]
    fn twice_the_connections_is_the_limit() {
        assert_eq!(judge("n", 4, 2, &[]).verdict, Verdict::Pass);
        let j = judge("n", 5, 2, &["k".into()]);
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(j.evidence.len(), 2);
    }

    #[test]
    fn recorded_map_is_within_twice_its_live_connections() {
        use crate::observe::{sockhash, ss};
        // The same recording as sockhash-keys-live's (testdata/README.md).
        let keys = sockhash::parse_dump(include_str!("testdata/sockhash.dump.json"))
            .expect("recorded dump reads");
        let socks = ss::parse(include_str!("testdata/sockhash.ss.txt")).expect("recorded ss reads");
        let scope = Scope {
            node_addr: "172.31.0.1".parse().unwrap(),
            nets: vec![
                ("172.31.0.1".parse().unwrap(), 32),
                ("10.244.1.0".parse().unwrap(), 24),
            ],
        };
        let live = obs::live_accelerated_connections(&socks, &scope);
        assert_eq!((keys.len(), live), (4, 2));
        assert_eq!(
            judge("node-a", keys.len(), live, &[]).verdict,
            Verdict::Pass
        );
        let j = judge("node-a", keys.len(), live - 1, &["k".into()]);
        assert_eq!(j.verdict, Verdict::Fail);
    }
}
