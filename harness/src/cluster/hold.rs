//! Held connections for conn-disrupt: one `dp-probe hold` from every pod to every TCP
//! service, to every TCP pod server on another node and, when the cluster has one, to the
//! external host (through the masquerade: its NAT entries are the state an agent upgrade
//! must carry over), opened at deploy time (after
//! the agents are ready: a service address needs socket-LB) so that they are
//! established before any fault. Each runs in its pod's netns and cgroup like a probe,
//! writes its events to a file in its node's work directory, and is kept with the
//! servers (stopped by pid at teardown). Every node gets a manifest, `holds.json`,
//! naming the connections whose client runs there: what observe/hold.rs reads back.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::service::ServiceState;
use super::workload::Server;
use super::{Cluster, Pod};
use crate::node::{NodeError, SpawnSpec};
use crate::suite::Protocol;

/// The manifest's name in each node's work directory.
pub const MANIFEST: &str = "holds.json";
/// Between two requests on a held connection: a stall is measured to about this.
pub const INTERVAL_MS: u64 = 200;
/// How long the deploy waits for each connection's first event.
const FIRST_EVENT: Duration = Duration::from_secs(10);

/// One held connection, as the manifest names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldConn {
    /// The client pod.
    pub client: String,
    /// What it reaches: `service web` or `pod web-b1`.
    pub target: String,
    pub to: SocketAddrV4,
    /// Its events (dp-wire `HoldEvent` lines), on the client's node.
    pub file: PathBuf,
}

/// Every (client pod, target, address) to hold, in a stable order.
pub fn wanted<'c>(
    cluster: &'c Cluster,
    services: &[ServiceState],
) -> Vec<(&'c Pod, String, SocketAddrV4)> {
    let tcp: Vec<&ServiceState> = services
        .iter()
        .filter(|s| s.protocol == Protocol::Tcp)
        .collect();
    // A pod's server answers on the target port of every service it backs; one is enough.
    let servers: Vec<(&Pod, SocketAddrV4)> = cluster
        .pods
        .iter()
        .filter_map(|p| {
            let s = tcp.iter().find(|s| s.backends.contains(&p.name))?;
            Some((p, SocketAddrV4::new(p.ip, s.target_port)))
        })
        .collect();
    let mut out = Vec::new();
    for client in &cluster.pods {
        for s in &tcp {
            out.push((
                client,
                format!("service {}", s.name),
                SocketAddrV4::new(s.vip, s.port),
            ));
        }
        for (server, addr) in servers.iter().filter(|(p, _)| p.node != client.node) {
            out.push((client, format!("pod {}", server.name), *addr));
        }
        if let Some(ext) = &cluster.external {
            out.push((client, format!("host {}", ext.name), ext.addr));
        }
    }
    out
}

/// Starts every hold, writes each node's manifest, and waits until each connection has
/// said something (opened, or why it could not). A connection that could not open is
/// no harness error: its file says why, and conn-disrupt judges it. Returns the started
/// processes (for teardown) and one line for the step's detail.
pub fn start(
    cluster: &Cluster,
    services: &[ServiceState],
    processes: &mut Vec<Server>,
) -> Result<String, NodeError> {
    let wanted = wanted(cluster, services);
    let mut manifests: Vec<(String, Vec<HeldConn>)> = cluster
        .nodes
        .iter()
        .map(|cn| (cn.name().to_owned(), Vec::new()))
        .collect();
    let started = super::in_parallel(&wanted, |(pod, target, to)| {
        let cn = cluster.node(&pod.node).ok_or_else(|| NodeError::Other {
            node: pod.node.clone(),
            message: format!("pod {} on an unknown node", pod.name),
        })?;
        let stem = format!("hold-{}-{}-{}", pod.name, to.ip(), to.port());
        let file = cn.work_dir.join(format!("{stem}.jsonl"));
        let argv = vec![
            cn.dp_probe.display().to_string(),
            "hold".into(),
            "--to".into(),
            to.to_string(),
            "--interval-ms".into(),
            INTERVAL_MS.to_string(),
            "--netns".into(),
            pod.netns.display().to_string(),
            "--cgroup".into(),
            pod.cgroup.display().to_string(),
        ];
        let mut proc = cn.node.spawn(&SpawnSpec {
            argv,
            stdout: file.clone(),
            stderr: cn.work_dir.join(format!("{stem}.err")),
            env: Vec::new(),
        })?;
        // Its first line (opened or ended), or its exit: then it was tried before any fault.
        let deadline = Instant::now() + FIRST_EVENT;
        loop {
            let said = cn.node.read_file(&file).is_ok_and(|d| d.contains(&b'\n'));
            if said || proc.try_wait()?.is_some() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = proc.kill(libc::SIGKILL);
                let _ = proc.wait_timeout(Duration::from_secs(5));
                return Err(NodeError::Timeout {
                    node: cn.name().to_owned(),
                    command: format!("wait for the first event of `dp-probe hold --to {to}`"),
                    after: FIRST_EVENT,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let held = HeldConn {
            client: pod.name.clone(),
            target: target.clone(),
            to: *to,
            file: file.clone(),
        };
        Ok((
            Server {
                pod: pod.name.clone(),
                node: pod.node.clone(),
                proc,
                log: file,
            },
            held,
        ))
    });
    let mut first_error = None;
    let mut n = 0;
    for s in started {
        match s {
            Ok((server, held)) => {
                if let Some((_, m)) = manifests.iter_mut().find(|(node, _)| *node == server.node) {
                    m.push(held);
                }
                processes.push(server);
                n += 1;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    for (node, held) in &manifests {
        if let Some(cn) = cluster.node(node) {
            // Serializing names, addresses and paths cannot fail.
            let json = serde_json::to_vec_pretty(held).unwrap_or_default();
            cn.node
                .write_file(&cn.work_dir.join(MANIFEST), &json, 0o644)?;
        }
    }
    Ok(format!(
        "{n} connections held (every pod to every TCP service, to every TCP pod server on another node and to the external host if any), a request every {INTERVAL_MS} ms"
    ))
}
