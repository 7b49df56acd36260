//! The workload: one `dp-probe serve` per backend pod, answering on every target port of
//! the services it backs, identified by its pod name.

use std::path::PathBuf;
use std::time::Duration;

use super::service::ServiceState;
use super::{Cluster, Pod};
use crate::node::{wait_for_line, NodeError, Process, SpawnSpec};
use crate::suite::Protocol;

pub struct Server {
    pub pod: String,
    pub node: String,
    pub proc: Box<dyn Process>,
    pub log: PathBuf,
}

/// Starts a server in every pod that backs a service (in the suite, not only now: a
/// backend removed from a service keeps answering, so a stale route to it is caught by
/// the backend's name, not by a timeout). `in_pod_cgroup`: each server joins its pod's
/// cgroup (below the node's), as a real pod's processes do; the node's `sock_ops`
/// program sees only sockets of processes in its cgroup subtree, so socket acceleration
/// needs it. Without it the servers stay where the harness runs them.
pub fn start_servers(
    cluster: &Cluster,
    services: &[ServiceState],
    servers: &mut Vec<Server>,
    in_pod_cgroup: bool,
) -> Result<(), NodeError> {
    let mut wanted: Vec<(&Pod, Vec<String>)> = Vec::new();
    for pod in &cluster.pods {
        let mut argv: Vec<String> = Vec::new();
        for s in services.iter().filter(|s| s.backends.contains(&pod.name)) {
            let flag = match s.protocol {
                Protocol::Tcp => "--tcp",
                Protocol::Udp => "--udp",
            };
            let addr = format!("{}:{}", pod.ip, s.target_port);
            if !argv.windows(2).any(|w| w[0] == flag && w[1] == addr) {
                argv.push(flag.into());
                argv.push(addr);
            }
        }
        if argv.is_empty() {
            continue;
        }
        if in_pod_cgroup {
            argv.push("--cgroup".into());
            argv.push(pod.cgroup.display().to_string());
        }
        wanted.push((pod, argv));
    }
    // All at once: each start is a few round trips to its node.
    let started = super::in_parallel(&wanted, |(pod, argv)| start_one(cluster, pod, argv.clone()));
    // Keep every server that started (so teardown stops it) before reporting a failure.
    let mut first_error = None;
    for s in started {
        match s {
            Ok(s) => servers.push(s),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn start_one(cluster: &Cluster, pod: &Pod, listen: Vec<String>) -> Result<Server, NodeError> {
    let cn = cluster.node(&pod.node).ok_or_else(|| NodeError::Other {
        node: pod.node.clone(),
        message: format!("pod {} on an unknown node", pod.name),
    })?;
    let mut argv = vec![
        cn.dp_probe.display().to_string(),
        "serve".into(),
        "--id".into(),
        pod.name.clone(),
        "--netns".into(),
        pod.netns.display().to_string(),
    ];
    argv.extend(listen);
    let log = cn.work_dir.join(format!("serve-{}.out", pod.name));
    let mut proc = cn.node.spawn(&SpawnSpec {
        argv: argv.clone(),
        stdout: log.clone(),
        stderr: cn.work_dir.join(format!("serve-{}.err", pod.name)),
        env: Vec::new(),
    })?;
    if !wait_for_line(
        cn.node.as_ref(),
        proc.as_mut(),
        &log,
        "ready",
        Duration::from_secs(10),
    )? {
        return Err(NodeError::Failed {
            node: pod.node.clone(),
            command: argv.join(" "),
            exit: proc.try_wait()?.unwrap_or(crate::node::Exit::Unknown),
            stderr: String::from_utf8_lossy(
                &cn.node
                    .read_file(&cn.work_dir.join(format!("serve-{}.err", pod.name)))
                    .unwrap_or_default(),
            )
            .into_owned(),
        });
    }
    Ok(Server {
        pod: pod.name.clone(),
        node: pod.node.clone(),
        proc,
        log,
    })
}

/// Starts the external host's server (TCP with payload, `--id <its name>`), from the first
/// node's `dp-probe` (it enters the external namespace itself). Nothing without one.
pub fn start_external(cluster: &Cluster, servers: &mut Vec<Server>) -> Result<(), NodeError> {
    let (Some(ext), Some(cn)) = (&cluster.external, cluster.nodes.first()) else {
        return Ok(());
    };
    let host = match &ext.on_host {
        Some(h) => crate::node::netns::NetnsNode::host().with_state(h.state.clone()),
        None => crate::node::netns::NetnsNode::host(),
    };
    let (node, probe, dir): (&dyn crate::node::Node, &std::path::Path, &std::path::Path) =
        match &ext.on_host {
            Some(h) => (&host, &h.dp_probe, &h.log_dir),
            None => (cn.node.as_ref(), &cn.dp_probe, &cn.work_dir),
        };
    let argv = vec![
        probe.display().to_string(),
        "serve".into(),
        "--id".into(),
        ext.name.clone(),
        "--netns".into(),
        ext.netns.display().to_string(),
        "--tcp".into(),
        ext.addr.to_string(),
    ];
    let log = dir.join(format!("serve-{}.out", ext.name));
    let err = dir.join(format!("serve-{}.err", ext.name));
    let mut proc = node.spawn(&SpawnSpec {
        argv: argv.clone(),
        stdout: log.clone(),
        stderr: err.clone(),
        env: Vec::new(),
    })?;
    if !wait_for_line(node, proc.as_mut(), &log, "ready", Duration::from_secs(10))? {
        return Err(NodeError::Failed {
            node: node.name().to_string(),
            command: argv.join(" "),
            exit: proc.try_wait()?.unwrap_or(crate::node::Exit::Unknown),
            stderr: String::from_utf8_lossy(&node.read_file(&err).unwrap_or_default()).into_owned(),
        });
    }
    servers.push(Server {
        pod: ext.name.clone(),
        node: cn.name().to_string(),
        proc,
        log,
    });
    Ok(())
}

/// Stops servers by pid (SIGKILL) and reaps them.
pub fn stop_servers(servers: &mut Vec<Server>) {
    for s in servers.iter_mut() {
        let _ = s.proc.kill(libc::SIGKILL);
        let _ = s.proc.wait_timeout(Duration::from_secs(5));
    }
    servers.clear();
}
