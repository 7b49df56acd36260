//! Pods the agent wires (`topology.routing` native or vxlan; datapath/README.md, "Pod
//! networking"). Three parts, as in a real cluster: the runtime's (the pod's sandbox: a
//! network namespace and a cgroup on its node), the CNI plugin's (`datapathd pod add|del`,
//! which waits until the agent has wired or unwired the pod) and the CiliumEndpoint
//! watch's (one ipcache file per node, written into every node's `--ipcache` directory).
//! [`add`] and [`delete`] are the one place a pod is added or deleted: deploy and
//! pod-churn both use them.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{in_parallel, Cluster, ClusterNode, Pod};
use crate::node::NodeError;
use crate::suite::Routing;

/// A link-layer address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Mac, String> {
        let bad = || format!("`{s}` is not a MAC address");
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(Mac(out))
    }
}

impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The agent's pod datapath on one node: the `datapathd run` flags that turn it on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PodRouting {
    pub mode: Routing,
    /// The node's own gateway address (on `dp_host`), every local pod's default route.
    pub gateway: Ipv4Addr,
    /// `--pods`: one file per pod, written by `datapathd pod add`.
    pub pods_dir: PathBuf,
    /// `--ipcache`: one file per node, written by the harness.
    pub ipcache_dir: PathBuf,
}

impl PodRouting {
    pub fn agent_args(&self) -> Vec<String> {
        vec![
            "--routing".into(),
            self.mode.agent_mode().unwrap_or("off").into(),
            "--pods".into(),
            self.pods_dir.display().to_string(),
            "--ipcache".into(),
            self.ipcache_dir.display().to_string(),
            "--gateway".into(),
            self.gateway.to_string(),
        ]
    }
}

/// Every pod address (routing native or vxlan: one cluster-wide range, no per-node CIDR).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// The address of the pod at `index` in topology order (routing native or vxlan): it
/// keeps it on whatever node it runs, as with ENI or static pod addresses.
pub fn pod_address(index: usize) -> Ipv4Addr {
    let i = index + 10;
    Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250) as u8 + 2)
}

/// The gateway (on `dp_host`) of node `node_index` (1-based), outside every pod address.
pub fn pod_gateway(node_index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 200, node_index as u8)
}

/// How the program sits on the host veth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attach {
    Tcx,
    Clsact,
}

/// What `datapathd pod add` printed: the pod as the agent wired it. Every field is
/// required and no other is accepted (a changed line is a harness error, not a guess).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodWired {
    pub name: String,
    pub address: Ipv4Addr,
    pub netns: PathBuf,
    pub host_veth: String,
    pub ifindex: u32,
    pub host_mac: Mac,
    pub pod_mac: Mac,
    pub program_id: u32,
    pub attach: Attach,
}

/// A pod deleted during the run (pod-churn), and where it was: pod-delete-cleanup checks
/// that nothing of it is left there, nor anywhere else unless it was added again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DepartedPod {
    pub name: String,
    pub address: Ipv4Addr,
    pub node: String,
    /// Its host veth as `pod add` reported it (`None`: never wired).
    pub host_veth: Option<String>,
    pub cgroup: PathBuf,
    pub netns: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("pod {pod}: no node {node} in the cluster")]
    NoNode { pod: String, node: String },
    #[error("pod {pod} on node {node}: the node has no pod datapath (routing kernel)")]
    NoRouting { pod: String, node: String },
    #[error("pod {pod} on node {node}: `{command}` failed ({exit}): {stderr}")]
    Failed {
        pod: String,
        node: String,
        command: String,
        exit: String,
        stderr: String,
    },
    #[error("pod {pod} on node {node}: `datapathd pod add` printed `{line}`")]
    Unreadable {
        pod: String,
        node: String,
        line: String,
        #[source]
        source: serde_json::Error,
    },
}

/// How long `pod add|del` waits for the agent (its `--timeout-s`); generous under TCG.
pub const POD_TIMEOUT_S: u64 = 60;

fn routing_of<'a>(cn: &'a ClusterNode, pod: &str) -> Result<&'a PodRouting, PodError> {
    cn.net
        .as_ref()
        .and_then(|n| n.pod_routing.as_ref())
        .ok_or_else(|| PodError::NoRouting {
            pod: pod.into(),
            node: cn.name().into(),
        })
}

fn node_of<'a>(cluster: &'a Cluster, pod: &Pod) -> Result<&'a ClusterNode, PodError> {
    cluster.node(&pod.node).ok_or_else(|| PodError::NoNode {
        pod: pod.name.clone(),
        node: pod.node.clone(),
    })
}

fn run(cn: &ClusterNode, pod: &str, argv: &[&str], timeout: Duration) -> Result<String, PodError> {
    let out = cn.node.run(argv, timeout)?;
    if !out.success() {
        return Err(PodError::Failed {
            pod: pod.into(),
            node: cn.name().into(),
            command: argv.join(" "),
            exit: out.exit.to_string(),
            stderr: out.stderr_str().trim().to_string(),
        });
    }
    Ok(out.stdout_str())
}

/// The runtime's part: the pod's network namespace (`lo` up) and cgroup on its node,
/// recorded first where the node's provider keeps a state (the netns provider's host).
pub fn create_sandbox(cn: &ClusterNode, pod: &Pod) -> Result<(), PodError> {
    let name = pod
        .netns
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    cn.node.record_sandbox(&name, &pod.cgroup)?;
    let t = Duration::from_secs(30);
    run(cn, &pod.name, &["ip", "netns", "add", &name], t)?;
    run(
        cn,
        &pod.name,
        &["ip", "-n", &name, "link", "set", "lo", "up"],
        t,
    )?;
    let cg = pod.cgroup.display().to_string();
    run(cn, &pod.name, &["mkdir", "-p", &cg], t)?;
    Ok(())
}

/// Removes the sandbox (its processes must be gone: the caller stops them first).
pub fn remove_sandbox(cn: &ClusterNode, pod: &Pod) -> Result<(), PodError> {
    let name = pod
        .netns
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let t = Duration::from_secs(30);
    run(cn, &pod.name, &["ip", "netns", "del", &name], t)?;
    let cg = pod.cgroup.display().to_string();
    run(cn, &pod.name, &["rmdir", &cg], t)?;
    Ok(())
}

/// The CNI plugin's part: `datapathd pod add`, which returns once the agent wired it.
pub fn pod_add(cn: &ClusterNode, pod: &Pod) -> Result<PodWired, PodError> {
    let r = routing_of(cn, &pod.name)?;
    let (dir, netns, addr, cg) = (
        r.pods_dir.display().to_string(),
        pod.netns.display().to_string(),
        pod.ip.to_string(),
        pod.cgroup.display().to_string(),
    );
    let d = cn.datapathd.display().to_string();
    let timeout = POD_TIMEOUT_S.to_string();
    let argv = [
        d.as_str(),
        "pod",
        "add",
        "--pods",
        &dir,
        "--name",
        &pod.name,
        "--netns",
        &netns,
        "--addr",
        &addr,
        "--cgroup",
        &cg,
        "--timeout-s",
        &timeout,
    ];
    let out = run(
        cn,
        &pod.name,
        &argv,
        Duration::from_secs(POD_TIMEOUT_S + 30),
    )?;
    let line = out.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    serde_json::from_str(line).map_err(|source| PodError::Unreadable {
        pod: pod.name.clone(),
        node: cn.name().into(),
        line: line.into(),
        source,
    })
}

/// `datapathd pod del`: returns once the agent removed everything of the pod.
pub fn pod_del(cn: &ClusterNode, pod: &str) -> Result<(), PodError> {
    let r = routing_of(cn, pod)?;
    let dir = r.pods_dir.display().to_string();
    let d = cn.datapathd.display().to_string();
    let timeout = POD_TIMEOUT_S.to_string();
    let argv = [
        d.as_str(),
        "pod",
        "del",
        "--pods",
        &dir,
        "--name",
        pod,
        "--timeout-s",
        &timeout,
    ];
    run(cn, pod, &argv, Duration::from_secs(POD_TIMEOUT_S + 30))?;
    Ok(())
}

/// One node's ipcache file: `{"node","node_addr","pods":[{"name","address"}]}`.
pub fn ipcache_file(cluster: &Cluster, cn: &ClusterNode) -> Option<String> {
    let addr = cn.net.as_ref()?.addr;
    let pods: Vec<serde_json::Value> = cluster
        .pods
        .iter()
        .filter(|p| p.node == cn.name() && cluster.pod_net.wired.contains_key(&p.name))
        .map(|p| serde_json::json!({"name": p.name, "address": p.ip.to_string()}))
        .collect();
    Some(
        serde_json::json!({"node": cn.name(), "node_addr": addr.to_string(), "pods": pods})
            .to_string(),
    )
}

/// Writes every node's ipcache file into every node's `--ipcache` directory (each
/// atomically: a temporary file renamed over the old one, so the agent never reads half a
/// file). Returns one line per node written.
pub fn write_ipcache(cluster: &Cluster) -> Result<Vec<String>, PodError> {
    let files: Vec<(String, String)> = cluster
        .nodes
        .iter()
        .filter_map(|cn| Some((cn.name().to_string(), ipcache_file(cluster, cn)?)))
        .collect();
    let written = in_parallel(&cluster.nodes, |cn| -> Result<String, PodError> {
        let r = routing_of(cn, "-")?;
        for (node, json) in &files {
            let tmp = r.ipcache_dir.join(format!(".{node}.json.tmp"));
            let dst = r.ipcache_dir.join(format!("{node}.json"));
            cn.node.write_file(&tmp, json.as_bytes(), 0o644)?;
            let (t, d) = (tmp.display().to_string(), dst.display().to_string());
            run(cn, "-", &["mv", "-f", &t, &d], Duration::from_secs(30))?;
        }
        Ok(format!(
            "ipcache of {} nodes written on {}",
            files.len(),
            cn.name()
        ))
    });
    written.into_iter().collect()
}

/// Adds a pod at runtime: its sandbox on its node (unless `sandbox_exists`: the provider
/// made it at `up`), `pod add`, and the pod's wiring recorded in the cluster. The ipcache
/// is the caller's next step ([`write_ipcache`]), once for a batch of pods.
pub fn add(cluster: &Cluster, pod: &Pod, sandbox_exists: bool) -> Result<PodWired, PodError> {
    let cn = node_of(cluster, pod)?;
    if !sandbox_exists {
        create_sandbox(cn, pod)?;
    }
    pod_add(cn, pod)
}

/// Deletes a pod at runtime: `pod del` on its node, then its sandbox. The caller has
/// stopped its processes, and writes the ipcache next.
pub fn delete(cluster: &Cluster, pod: &Pod) -> Result<DepartedPod, PodError> {
    let cn = node_of(cluster, pod)?;
    pod_del(cn, &pod.name)?;
    remove_sandbox(cn, pod)?;
    Ok(DepartedPod {
        name: pod.name.clone(),
        address: pod.ip,
        node: pod.node.clone(),
        host_veth: cluster
            .pod_net
            .wired
            .get(&pod.name)
            .map(|w| w.host_veth.clone()),
        cgroup: pod.cgroup.clone(),
        netns: pod.netns.clone(),
    })
}

/// Deploy: every pod of the cluster added on its node (all at once; the provider made
/// their sandboxes), each one's wiring recorded in the cluster, then the ipcache written.
/// Returns one line per pod and node.
pub fn add_all(cluster: &mut Cluster) -> Result<Vec<String>, PodError> {
    let added = in_parallel(&cluster.pods, |p| add(cluster, p, true));
    let mut lines = Vec::new();
    for (p, w) in cluster.pods.iter().zip(added) {
        let w = w?;
        lines.push(format!(
            "pod {} ({}) on {}: {} ifindex {}, program {} ({:?})",
            p.name, w.address, p.node, w.host_veth, w.ifindex, w.program_id, w.attach
        ));
        cluster.pod_net.wired.insert(p.name.clone(), w);
    }
    lines.extend(write_ipcache(cluster)?);
    Ok(lines)
}

/// The pod's sandbox path on `node`, as [`create_sandbox`] makes it.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_add_line_reads_and_a_changed_one_does_not() {
        let line = r#"{"name":"web-a1","address":"10.244.0.10","netns":"/run/netns/p","host_veth":"lxcweb-a1","ifindex":6,"host_mac":"de:27:63:78:3b:69","pod_mac":"8a:6b:7f:e7:cc:fa","program_id":42,"attach":"tcx"}"#;
        let w: PodWired = serde_json::from_str(line).expect("reads");
        assert_eq!(w.host_mac.to_string(), "de:27:63:78:3b:69");
        assert_eq!(w.attach, Attach::Tcx);
        let extra = line.replace("\"attach\"", "\"colour\":1,\"attach\"");
        assert!(serde_json::from_str::<PodWired>(&extra).is_err());
        assert!("de:27:63".parse::<Mac>().is_err());
    }
}
