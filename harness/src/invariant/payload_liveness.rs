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

use super::{merge, per_node, Context, Invariant, Judgement, Verdict};
use crate::cluster::ClusterNode;
use crate::observe::features::{self, KernelNeed};
use crate::observe::sockhash::{self as obs, Scope};
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

    fn check(&self, ctx: &Context<'_>) -> Judgement {
        let js = per_node(ctx, |cn| check_node(ctx, cn, DEFAULT_BOUND_MS));
        if js.is_empty() {
            return Judgement::unknown("no node has a local pod serving TCP: nothing to probe");
        }
        merge(&js)
    }
}

fn check_node(ctx: &Context<'_>, cn: &ClusterNode, bound_ms: u64) -> Option<Judgement> {
    let node = cn.name();
    let targets = obs::local_targets(ctx.cluster, ctx.services, node);
    if targets.is_empty() {
        return None;
    }
    let scope = match Scope::of(cn) {
        Ok(s) => s,
        Err(e) => return Some(Judgement::unknown(e)),
    };
    let before = match obs::accel_stats(cn) {
        Ok(s) => s,
        Err(e) => return Some(Judgement::unknown(format!("node {node}: {e}"))),
    };
    // The leaked tuples, if the map can be read; without it the probes still run.
    let mut notes = Vec::new();
    let seen = obs::dump(cn).and_then(|k| obs::sockets(ctx.cluster, cn).map(|s| (k, s)));
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
            Ok(s) => judge(node, &what, &s, bound_ms),
            Err(e) => Judgement::unknown(format!("node {node} -> {what}: cannot probe: {e}")),
        });
        let stale = match &seen {
            Ok((keys, socks)) => {
                obs::stale_ports(keys, socks, scope.node_addr, t.addr, MAX_STALE_TUPLES)
            }
            Err(e) => {
                notes.push(format!(
                    "node {node}: stale tuples not reused (cannot read the sockhash: {e})"
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
                Ok(s) => judge(node, &what, &s, bound_ms),
                Err(e) => Judgement::unknown(format!("node {node} -> {what}: cannot probe: {e}")),
            });
        }
    }
    let mut j = merge(&js);
    let after = match obs::accel_stats(cn) {
        Ok(s) => s,
        Err(e) => return Some(Judgement::unknown(format!("node {node}: {e}"))),
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
    Some(j)
}

/// Judges one `dp-probe reqresp` summary (its JSON line).
pub fn judge(node: &str, target: &str, summary: &serde_json::Value, bound_ms: u64) -> Judgement {
    let n = |k: &str| summary[k].as_u64().unwrap_or(0);
    if n("requests") == 0 {
        return Judgement::unknown(format!(
            "node {node} -> {target}: no request was made (connect failures: {})",
            n("connect_failures")
        ));
    }
    let problems: Vec<String> = summary["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["hung"].as_u64().unwrap_or(0) > 0 || c["errors"].as_u64().unwrap_or(0) > 0)
        .map(|c| {
            format!(
                "node {node}: connection {} -> {} (cookie {}): {}",
                c["local"].as_str().unwrap_or("?"),
                c["peer"].as_str().unwrap_or("?"),
                c["cookie"],
                c["first_problem"].as_str().unwrap_or("?")
            )
        })
        .collect();
    if n("hung") == 0 && n("errors") == 0 && n("connect_failures") == 0 {
        Judgement::pass(format!(
            "node {node} -> {target}: {} request(s) answered within {bound_ms} ms",
            n("ok")
        ))
    } else {
        Judgement::fail(
            format!(
                "node {node} -> {target}: {} request(s) hung (no answer within {bound_ms} ms), {} error(s), {} connect failure(s)",
                n("hung"),
                n("errors"),
                n("connect_failures")
            ),
            problems,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariant::Verdict;

    #[test]
    fn hung_is_fail_and_nothing_is_unknown() {
        let hung = serde_json::json!({"requests":1,"ok":0,"hung":1,"errors":0,"connect_failures":0,
            "connections":[{"local":"127.0.0.1:40000","peer":"127.0.0.2:8080","cookie":5,"hung":1,"errors":0,
            "first_problem":"request tok: no answer within 1s (read timed out)"}]});
        let j = judge("n", "127.0.0.2:8080", &hung, 1000);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(j.evidence[0].contains("cookie 5"), "{:?}", j.evidence);
        let none = serde_json::json!({"requests":0,"connect_failures":1});
        assert_eq!(judge("n", "x", &none, 1000).verdict, Verdict::Unknown);
        let ok = serde_json::json!({"requests":3,"ok":3,"hung":0,"errors":0,"connect_failures":0});
        assert_eq!(judge("n", "x", &ok, 1000).verdict, Verdict::Pass);
    }
}
