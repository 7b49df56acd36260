//! no-cross-delivery (incident C): bytes sent on a connection arrive on that connection.
//! Every `dp-probe reqresp` request carries a token unique to its connection and sequence
//! number; the server echoes what arrived on the same connection, so an answer echoing
//! another token means bytes crossed to another socket.
//!
//! On each node, for each local pod that serves TCP: eight persistent connections from the
//! node's address, in the node's cgroup (accelerated), requests interleaved across them
//! so that a redirect to the wrong peer socket shows as a foreign token.

use std::net::SocketAddrV4;

use super::{merge, per_node, Context, Invariant, Judgement};
use crate::cluster::ClusterNode;
use crate::observe::features::{self, KernelNeed};
use crate::observe::sockhash::{self as obs, Scope};
use crate::suite::{InvariantName, Needs};

const CONNECTIONS: u32 = 8;
const REQUESTS: u32 = 10;
const READ_TIMEOUT_MS: u64 = 2000;

pub const NAME: InvariantName = InvariantName::new("no-cross-delivery");
pub struct NoCrossDelivery;

impl Invariant for NoCrossDelivery {
    fn name(&self) -> InvariantName {
        NAME
    }

    fn about(&self) -> &'static str {
        "bytes sent on a connection arrive on that connection only"
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
        let js = per_node(ctx, |cn| check_node(ctx, cn));
        if js.is_empty() {
            return Judgement::unknown("no node has a local pod serving TCP: nothing to probe");
        }
        merge(&js)
    }
}

fn check_node(ctx: &Context<'_>, cn: &ClusterNode) -> Option<Judgement> {
    let node = cn.name();
    let targets = obs::local_targets(ctx.cluster, ctx.services, node);
    if targets.is_empty() {
        return None;
    }
    let scope = match Scope::of(cn) {
        Ok(s) => s,
        Err(e) => return Some(Judgement::unknown(e)),
    };
    let before = obs::accel_stats(cn).ok();
    let js: Vec<Judgement> = targets
        .iter()
        .map(|t| {
            let what = format!("{} ({})", t.addr, t.pod);
            match obs::reqresp(
                cn,
                t.addr,
                SocketAddrV4::new(scope.node_addr, 0),
                &[
                    "--connections",
                    &CONNECTIONS.to_string(),
                    "--requests",
                    &REQUESTS.to_string(),
                    "--timeout-ms",
                    &READ_TIMEOUT_MS.to_string(),
                ],
                obs::reqresp_timeout(CONNECTIONS.into(), REQUESTS.into(), READ_TIMEOUT_MS),
            ) {
                Ok(s) => judge(node, &what, &s),
                Err(e) => Judgement::unknown(format!("node {node} -> {what}: cannot probe: {e}")),
            }
        })
        .collect();
    let mut j = merge(&js);
    if let (Some(b), Ok(a)) = (before, obs::accel_stats(cn)) {
        j.evidence.push(format!(
            "node {node}: dp_accel_stats (bpftool) during the probes: {}",
            obs::stats_delta(&b, &a)
        ));
    }
    Some(j)
}

pub fn judge(node: &str, target: &str, summary: &serde_json::Value) -> Judgement {
    let crossed = summary["cross_delivered"].as_u64().unwrap_or(0);
    if summary["requests"].as_u64().unwrap_or(0) == 0 {
        return Judgement::unknown(format!("node {node} -> {target}: no request was made"));
    }
    if crossed == 0 {
        return Judgement::pass(format!(
            "node {node} -> {target}: every answer echoed its own connection's request"
        ));
    }
    let evidence = summary["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["cross_delivered"].as_u64().unwrap_or(0) > 0)
        .map(|c| {
            format!(
                "node {node}: connection {} -> {}: {}",
                c["local"].as_str().unwrap_or("?"),
                c["peer"].as_str().unwrap_or("?"),
                c["first_problem"].as_str().unwrap_or("?")
            )
        })
        .collect();
    Judgement::fail(
        format!("node {node} -> {target}: {crossed} answer(s) carried another connection's bytes"),
        evidence,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariant::Verdict;

    #[test]
    fn a_foreign_echo_fails() {
        let s = serde_json::json!({"requests":2,"cross_delivered":1,"connections":[
            {"local":"a","peer":"b","cross_delivered":1,"first_problem":"request tok-1-0-1: the answer echoed \"tok-1-1-0\""}]});
        let j = judge("n", "b", &s);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(j.evidence[0].contains("tok-1-1-0"));
        let ok = serde_json::json!({"requests":2,"cross_delivered":0});
        assert_eq!(judge("n", "b", &ok).verdict, Verdict::Pass);
    }
}
