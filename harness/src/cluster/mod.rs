//! The cluster under test: nodes (with where the datapath lives on each), pods (a network
//! namespace and a cgroup on a node), and services (virtual address and port -> backend
//! pods). A provider's `up` returns a [`Cluster`]; the run deploys the datapath and the
//! workload onto it.

pub mod datapath;
pub mod hold;
pub mod kube_proxy;
pub mod pods;
pub mod service;
pub mod workload;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::node::Node;

/// What to bring up: node names and pods per node, as the suite says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Topology {
    pub nodes: Vec<String>,
    pub pods: Vec<PodSpec>,
    /// The kernel each node asks for; a node not named boots the provider's default.
    pub kernels: std::collections::BTreeMap<String, crate::kernel::KernelSpec>,
    /// Who wires the pods: the provider (kernel) or the agent (native, vxlan).
    pub routing: crate::suite::Routing,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PodSpec {
    pub name: String,
    pub node: String,
}

/// The binaries the run deploys, as paths on the host (built by cargo).
#[derive(Debug, Clone)]
pub struct Binaries {
    pub datapathd: PathBuf,
    pub dp_probe: PathBuf,
    /// The harness's helper on VM nodes (harness/remote).
    pub dp_remote: PathBuf,
}

/// One node and the places on it that the datapath and the workload use. All paths are
/// paths *on the node*.
#[derive(Clone)]
pub struct ClusterNode {
    pub node: Arc<dyn Node>,
    /// The cgroup v2 directory the node's datapathd attaches to (`--cgroup`); the pods'
    /// workload processes are placed under it, so the node's socket LB applies to them.
    pub cgroup: PathBuf,
    /// The node's own bpffs directory (`--bpffs`).
    pub bpffs: PathBuf,
    /// The services directory datapathd watches (`--services`).
    pub services_dir: PathBuf,
    /// A scratch directory for logs and files of this run.
    pub work_dir: PathBuf,
    /// `datapathd` and `dp-probe` as the node runs them.
    pub datapathd: PathBuf,
    pub dp_probe: PathBuf,
    /// The node's network as the datapath's masquerade and DP_FORWARD chain need it;
    /// `None`: the agent runs without them (socket LB only).
    pub net: Option<NodeNet>,
}

/// What `datapathd run --uplink ... --forward-chain` needs to know about a node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeNet {
    /// The interface towards the underlay (and the external host).
    pub uplink: String,
    /// The node's address on it: the source of masqueraded pod traffic.
    pub addr: Ipv4Addr,
    /// This node's pod CIDR (`10.244.1.0/24`).
    pub pod_cidr: String,
    /// Every pod address of the cluster (`10.244.0.0/16`): not masqueraded.
    pub cluster_cidr: String,
    /// Pod host-side interfaces are named PREFIX* (`lxc`).
    pub pod_iface_prefix: String,
    /// The agent wires the pods (routing native or vxlan); `None`: the provider did.
    pub pod_routing: Option<pods::PodRouting>,
}

impl NodeNet {
    /// The `datapathd run` flags for it.
    pub fn agent_args(&self) -> Vec<String> {
        [
            "--uplink",
            &self.uplink,
            "--node-addr",
            &self.addr.to_string(),
            "--pod-cidr",
            &self.pod_cidr,
            "--cluster-cidr",
            &self.cluster_cidr,
            "--pod-iface-prefix",
            &self.pod_iface_prefix,
            "--forward-chain",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(
            self.pod_routing
                .iter()
                .flat_map(pods::PodRouting::agent_args),
        )
        .collect()
    }

    /// The `datapathd run` flags that accelerate node <-> local pod TCP (sockops/sockmap):
    /// the node's address and its pod CIDR (datapath/README.md, "Socket acceleration").
    /// Every node's addresses differ, so nodes that share a kernel (netns) never collide
    /// in a sockhash key.
    pub fn accelerate_args(&self) -> Vec<String> {
        vec![
            "--accelerate".into(),
            format!("{}/32", self.addr),
            "--accelerate".into(),
            self.pod_cidr.clone(),
        ]
    }
}

impl ClusterNode {
    pub fn name(&self) -> &str {
        self.node.name()
    }
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("name", &self.node.name())
            .field("cgroup", &self.cgroup)
            .field("bpffs", &self.bpffs)
            .finish()
    }
}

/// A pod: a network namespace on a node, with an address reachable from every other pod.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pod {
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    /// Its network namespace as a path on the node (`dp-probe --netns`).
    pub netns: PathBuf,
    /// The cgroup its processes join (`dp-probe --cgroup`), under the node's cgroup.
    pub cgroup: PathBuf,
}

/// A host outside the cluster (not a node), on the underlay, serving TCP with payload
/// (`dp-probe serve`): the target of pod-to-external traffic through the masquerade.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExternalHost {
    pub name: String,
    pub addr: std::net::SocketAddrV4,
    /// Where its server runs: a network namespace on the host (netns provider, the
    /// underlay's namespace for qemu) as a path; the run starts `dp-probe serve` there.
    pub netns: PathBuf,
    /// `None`: the server is started through the first node (whose `dp-probe` can enter
    /// that namespace: the netns provider). `Some`: started on the host itself (qemu: the
    /// namespace is the host's, the nodes are VMs).
    pub on_host: Option<HostServer>,
}

/// How to run the external host's server on the host.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostServer {
    /// The run's state file: the server is listed in it before it runs, so `harness
    /// clean` stops it after a killed run.
    #[serde(skip)]
    pub state: crate::state::StateFile,
    /// `dp-probe` as the host runs it.
    pub dp_probe: PathBuf,
    /// Where its stdout and stderr go (the run's directory, so they stay as artifacts).
    pub log_dir: PathBuf,
}

/// What a provider brought up.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub nodes: Vec<ClusterNode>,
    pub pods: Vec<Pod>,
    /// The external host, when the provider brought one up (pod-to-external,
    /// no-invalid-drops need it).
    pub external: Option<ExternalHost>,
    /// The agent's pods (routing native or vxlan): as wired, and those deleted.
    pub pod_net: PodNet,
}

/// Pods as the agent wired them (routing native or vxlan), and those deleted during the
/// run; empty with kernel routing.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PodNet {
    /// What `datapathd pod add` printed for each pod now wired, by pod name.
    pub wired: std::collections::BTreeMap<String, pods::PodWired>,
    /// Every pod deleted during the run, in order (a pod deleted twice is listed twice).
    pub departed: Vec<pods::DepartedPod>,
}

impl Cluster {
    pub fn node(&self, name: &str) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.name() == name)
    }
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }
}

/// Runs `f` on every item at once, one thread each, and returns the results in the items'
/// order. Nodes and pods are observed and probed in parallel because each remote command
/// to a VM costs a round trip of up to a second under TCG; serial, they add up to minutes.
pub fn in_parallel<'a, T: Sync, R: Send>(items: &'a [T], f: impl Fn(&'a T) -> R + Sync) -> Vec<R> {
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = items.iter().map(|item| s.spawn(move || f(item))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// [`in_parallel`] over mutable items (agents being started and awaited).
pub fn in_parallel_mut<'a, T: Send, R: Send>(
    items: &'a mut [T],
    f: impl Fn(&'a mut T) -> R + Sync,
) -> Vec<R> {
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .iter_mut()
            .map(|item| s.spawn(move || f(item)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}
