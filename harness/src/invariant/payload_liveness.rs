//! payload-liveness (incident C): every request over an accelerated connection gets its
//! answer within a bound (default 2 s). The observation is `dp-probe reqresp` run on the
//! node towards its local pods (`--timeout-ms` = the bound): a read that times out is a
//! hung request. A connection that is ESTABLISHED but answers nothing is a failure, never
//! a pass; a run that made no request at all is unknown.
//!
//! On each node, for each local pod that serves TCP: four persistent connections from the
//! node's address (ephemeral ports) carrying 25 requests each, and one connection from
//! the node-side port of every sockhash key that no live socket owns (at most
//! [`MAX_STALE_TUPLES`]): a new connection on a leaked tuple is where incident C bites,
//! and real clients (kubelet's probes) reuse ports at random. The probes run in the
//! node's cgroup, so `sock_ops` accelerates them; `dp_accel_stats` (read with bpftool)
//! must show redirected messages, otherwise no request went over an accelerated
//! connection and the verdict is unknown, not pass.

use std::net::SocketAddrV4;

use dp_wire::ReqRespSummary;

use super::{
    all_judged, merge, per_node, unknown_unless_harness, Context, Invariant, Judgement, Verdict,
};
use crate::cluster::ClusterNode;
use crate::observe::features::{self, KernelNeed};
use crate::observe::sockhash::{self as obs, Scope};
use crate::observe::ObserveError;
use crate::suite::{InvariantName, Needs};

pub const DEFAULT_BOUND_MS: u64 = 2000;
/// Stale tuples reused per target: each may hang for the bound.
pub const MAX_STALE_TUPLES: usize = 8;
const CONNECTIONS: u32 = 4;
const REQUESTS: u32 = 25;

pub const NAME: InvariantName = InvariantName::new("payload-liveness");
pub struct PayloadLiveness;

impl Invariant for PayloadLiveness {
    fn name(&self) -> InvariantName {
        NAME
    }

    fn about(&self) -> &'static str {
        "every request from a node to its local pods over an accelerated connection is answered within a bound; ESTABLISHED and silent is a failure"
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
        let js = per_node(ctx, |cn| check_node(ctx, cn, DEFAULT_BOUND_MS))?;
        if js.is_empty() {
            return Ok(Judgement::unknown(
                "no node has a local pod serving TCP: nothing to probe",
            ));
        }
        Ok(merge(&js))
    }
}

fn check_node(
    ctx: &Context<'_>,
    cn: &ClusterNode,
    bound_ms: u64,
) -> Result<Option<Judgement>, ObserveError> {
    let node = cn.name();
    let targets = obs::local_targets(ctx.cluster, ctx.services, node);
    if targets.is_empty() {
        return Ok(None);
    }
    let unknown = |e: ObserveError| unknown_unless_harness("cannot observe", e).map(Some);
    let scope = match Scope::of(cn) {
        Ok(s) => s,
        Err(e) => return unknown(e),
    };
    let before = match obs::accel_stats(cn) {
        Ok(s) => s,
        Err(e) => return unknown(e),
    };
    // The leaked tuples, if the map can be read; without it the probes still run.
    let mut notes = Vec::new();
    let seen = match obs::dump(cn).and_then(|k| obs::sockets(ctx.cluster, cn).map(|s| (k, s))) {
        Err(e) if e.is_harness_error() => return Err(e),
        seen => seen,
    };
    let bound = bound_ms.to_string();
    let mut js = Vec::new();
    for t in &targets {
        let what = format!("{} ({})", t.addr, t.pod);
        let fresh = obs::reqresp(
            cn,
            t.addr,
            SocketAddrV4::new(scope.node_addr, 0),
            &[
                "--connections",
                &CONNECTIONS.to_string(),
                "--requests",
                &REQUESTS.to_string(),
                "--timeout-ms",
                &bound,
            ],
            obs::reqresp_timeout(CONNECTIONS.into(), REQUESTS.into(), bound_ms),
        );
        js.push(match fresh {
            Ok(s) => Ok(judge(node, &what, &s, bound_ms)),
            Err(e) => unknown_unless_harness(format!("node {node} -> {what}: cannot probe"), e),
        });
        let stale = match &seen {
            Ok((keys, socks)) => {
                obs::stale_ports(keys, socks, scope.node_addr, t.addr, MAX_STALE_TUPLES)
            }
            Err(e) => {
                notes.push(format!(
                    "node {node}: stale tuples not reused (cannot read the sockhash: {})",
                    e.report()
                ));
                Vec::new()
            }
        };
        for port in stale {
            let from = SocketAddrV4::new(scope.node_addr, port);
            let what = format!("{what} from {from} (the tuple of a key no live socket owns)");
            let r = obs::reqresp(
                cn,
                t.addr,
                from,
                &[
                    "--connections",
                    "1",
                    "--requests",
                    "3",
                    "--timeout-ms",
                    &bound,
                ],
                obs::reqresp_timeout(1, 3, bound_ms),
            );
            js.push(match r {
                Ok(s) => Ok(judge(node, &what, &s, bound_ms)),
                Err(e) => unknown_unless_harness(format!("node {node} -> {what}: cannot probe"), e),
            });
        }
    }
    let mut j = merge(&all_judged(js)?);
    let after = match obs::accel_stats(cn) {
        Ok(s) => s,
        Err(e) => return unknown(e),
    };
    let redirected = after[3].saturating_sub(before[3]);
    if j.verdict == Verdict::Pass && redirected == 0 {
        j = Judgement::unknown(format!(
            "node {node}: requests were answered, but dp_accel_stats shows no redirected message: none went over an accelerated connection"
        ));
    }
    j.evidence.push(format!(
        "node {node}: dp_accel_stats (bpftool) during the probes: {}",
        obs::stats_delta(&before, &after)
    ));
    if let Ok(c) = obs::status_counters(cn) {
        j.evidence
            .push(format!("node {node}: datapathd status sockhash: {c}"));
    }
    j.evidence.extend(notes);
    Ok(Some(j))
}

/// Judges one `dp-probe reqresp` summary (its JSON line).
pub fn judge(node: &str, target: &str, summary: &ReqRespSummary, bound_ms: u64) -> Judgement {
    let s = summary;
    if s.requests == 0 {
        return Judgement::unknown(format!(
            "node {node} -> {target}: no request was made (connect failures: {})",
            s.connect_failures
        ));
    }
    let problems: Vec<String> = s
        .connections
        .iter()
        .filter(|c| c.hung > 0 || c.errors > 0)
        .map(|c| {
            format!(
                "node {node}: connection {} -> {} (cookie {}): {}",
                c.local,
                c.peer,
                c.cookie,
                c.first_problem.as_deref().unwrap_or("?")
            )
        })
        .collect();
    if s.hung == 0 && s.errors == 0 && s.connect_failures == 0 {
        Judgement::pass(format!(
            "node {node} -> {target}: {} request(s) answered within {bound_ms} ms",
            s.ok
        ))
    } else {
        Judgement::fail(
            format!(
                "node {node} -> {target}: {} request(s) hung (no answer within {bound_ms} ms), {} error(s), {} connect failure(s)",
                s.hung, s.errors, s.connect_failures
            ),
            problems,
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::invariant::Verdict;

    /// Recorded: `dp-probe reqresp` from a node to a local pod server of the netns
    /// provider with the datapath accelerating (testdata/README.md says how).
    pub(crate) fn recorded() -> ReqRespSummary {
        serde_json::from_str(include_str!("testdata/reqresp.json")).expect("recorded summary reads")
    }

    #[test]
    fn answered_requests_pass() {
        let s = recorded();
        assert!(s.requests > 0 && s.hung == 0);
        let j = judge("n", "10.244.1.2:8080", &s, 1000);
        assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
        assert!(j
            .summary
            .contains(&format!("{} request(s) answered within 1000 ms", s.ok)));
    }

    #[test]
    fn hung_is_fail_and_nothing_is_unknown() {
        let mut hung = recorded();
        hung.hung = 1;
        hung.connections[0].hung = 1;
        hung.connections[0].first_problem =
            Some("request tok: no answer within 1s (read timed out)".into());
        let cookie = hung.connections[0].cookie;
        let j = judge("n", "x", &hung, 1000);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.evidence[0].contains(&format!("(cookie {cookie}): request tok")),
            "{:?}",
            j.evidence
        );
        let mut none = recorded();
        none.requests = 0;
        none.connect_failures = 1;
        assert_eq!(judge("n", "x", &none, 1000).verdict, Verdict::Unknown);
    }
}
