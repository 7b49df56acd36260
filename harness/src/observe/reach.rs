//! Whether one pod reaches one address right now: a single `dp-probe connect` from the
//! pod's netns and cgroup, its attempt as dp-probe reports it (dp-wire, read strictly).
//! For faults that prove a cut (it fails) or a heal (it succeeds); the invariants keep
//! their own batched probes.

use std::net::SocketAddrV4;
use std::time::Duration;

use crate::cluster::{Cluster, ClusterNode, Pod};
use crate::node::{Exit, NodeError};
use dp_wire::Attempt;

#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    #[error("pod {pod} is on node {node}, which the cluster does not have")]
    NoNode { pod: String, node: String },
    #[error("probing {to} from pod {pod}")]
    Node {
        pod: String,
        to: SocketAddrV4,
        #[source]
        source: NodeError,
    },
    #[error("`dp-probe connect` from pod {pod} to {to} ended with {exit}: {stderr}")]
    Probe {
        pod: String,
        to: SocketAddrV4,
        exit: Exit,
        stderr: String,
    },
    #[error("`dp-probe connect` from pod {pod} to {to} printed `{line}`")]
    Output {
        pod: String,
        to: SocketAddrV4,
        line: String,
        #[source]
        source: serde_json::Error,
    },
}

/// One TCP attempt from `from` to `to`, given up after `timeout`. A failed connection is
/// an `Ok` attempt with `ok: false` (what the probe saw); an error is a probe that could
/// not say.
pub fn tcp_once(
    cluster: &Cluster,
    from: &Pod,
    to: SocketAddrV4,
    timeout: Duration,
) -> Result<Attempt, ReachError> {
    let cn = cluster.node(&from.node).ok_or_else(|| ReachError::NoNode {
        pod: from.name.clone(),
        node: from.node.clone(),
    })?;
    tcp_once_on(cn, from, to, timeout)
}

/// [`tcp_once`] with the pod's node at hand (a heal guard holds nodes, not the cluster).
pub fn tcp_once_on(
    cn: &ClusterNode,
    from: &Pod,
    to: SocketAddrV4,
    timeout: Duration,
) -> Result<Attempt, ReachError> {
    let (probe, to_s, ms) = (
        cn.dp_probe.display().to_string(),
        to.to_string(),
        timeout.as_millis().to_string(),
    );
    let (netns, cgroup) = (
        from.netns.display().to_string(),
        from.cgroup.display().to_string(),
    );
    let payload = format!("{}->{to}", from.name);
    let argv = [
        probe.as_str(),
        "connect",
        "--to",
        &to_s,
        "--proto",
        "tcp",
        "--payload",
        &payload,
        "--timeout-ms",
        &ms,
        "--netns",
        &netns,
        "--cgroup",
        &cgroup,
        "--count",
        "1",
    ];
    let out = cn
        .node
        .run(&argv, timeout + Duration::from_secs(30))
        .map_err(|source| ReachError::Node {
            pod: from.name.clone(),
            to,
            source,
        })?;
    // dp-probe exits 1 when the attempt failed; its line still says how.
    if !matches!(out.exit, Exit::Code(0) | Exit::Code(1)) {
        return Err(ReachError::Probe {
            pod: from.name.clone(),
            to,
            exit: out.exit,
            stderr: out.stderr_str().trim().to_owned(),
        });
    }
    let text = out.stdout_str();
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    serde_json::from_str(line).map_err(|source| ReachError::Output {
        pod: from.name.clone(),
        to,
        line: line.to_owned(),
        source,
    })
}
