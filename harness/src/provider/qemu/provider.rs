//! `QemuProvider`: the harness's [`Provider`] on top of [`QemuCluster`]. Nodes are VMs
//! reached over SSH ([`SshNode`]); pods are network namespaces with a veth inside each VM,
//! every node owns a pod CIDR and routes the others' through their cluster addresses.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::node::SshNode;
use super::{clean_leftovers, KernelSpec, NodeImage, QemuCluster, QemuConfig, QemuError};
use crate::cluster::pods::{self, pod_address, pod_gateway, PodRouting, CLUSTER_CIDR};
use crate::cluster::{Cluster, ClusterNode, ExternalHost, HostServer, NodeNet, Pod, Topology};
use crate::node::Node;
use crate::provider::{Cleaned, Facts, Limitation, NodeFacts, Provider, ProviderError, UpRequest};

const NAME: &str = "qemu";
/// The cgroup the node's datapath attaches to: the VM's root cgroup, as in production.
const NODE_CGROUP: &str = "/sys/fs/cgroup";
const PODS_CGROUP: &str = "/sys/fs/cgroup/pods";
/// The node's datapath instance directory on the VM's own bpffs (datapathd's default).
const NODE_BPFFS: &str = "/sys/fs/bpf/datapathd";
const NODE_STATE: &str = "/var/lib/dp-harness";

/// Disposable VMs, one kernel per node.
#[derive(Default)]
pub struct QemuProvider {
    /// The node image's kernel (`--kernel`): a Debian series or a .deb, bzImage, vmlinux.
    pub kernel: Option<KernelSpec>,
    cluster: Option<QemuCluster>,
    facts: Facts,
}

impl QemuProvider {
    pub fn new() -> Self {
        Self {
            facts: Facts {
                provider: NAME.to_owned(),
                shared_kernel: false,
                ..Facts::default()
            },
            ..Self::default()
        }
    }

    pub fn with_kernel(kernel: Option<KernelSpec>) -> Self {
        Self {
            kernel,
            ..Self::new()
        }
    }

    /// The running cluster, for faults that need the VM layer (reboot, link netem).
    pub fn cluster(&mut self) -> Option<&mut QemuCluster> {
        self.cluster.as_mut()
    }
}

fn provider_error(e: QemuError, what: &str) -> ProviderError {
    match e {
        QemuError::QemuMissing { binary } => ProviderError::MissingTool {
            provider: NAME,
            tool: binary,
            hint: "install qemu-system-x86 (ci/setup does)".into(),
        },
        QemuError::ToolMissing { tool, hint } => ProviderError::MissingTool {
            provider: NAME,
            tool,
            hint: hint.into(),
        },
        QemuError::Interrupted => ProviderError::Interrupted { provider: NAME },
        QemuError::KernelUnavailable { spec, message } => ProviderError::KernelUnavailable {
            provider: NAME,
            spec,
            message,
        },
        QemuError::KernelMissing { path } => ProviderError::KernelUnavailable {
            provider: NAME,
            spec: path.display().to_string(),
            message: format!("kernel {}: no such file", path.display()),
        },
        other => ProviderError::Other {
            provider: NAME,
            what: what.to_owned(),
            source: Some(Box::new(other)),
        },
    }
}

fn node_error(e: crate::node::NodeError, what: String) -> ProviderError {
    ProviderError::Node {
        provider: NAME,
        what,
        source: e,
    }
}

impl Provider for QemuProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn marker(&self, id: &crate::provider::RunId) -> String {
        format!("{}{id}", super::RUN_PREFIX)
    }

    fn prepare(&mut self, topology: &Topology) -> Result<(), ProviderError> {
        for spec in topology.kernels.values() {
            NodeImage::for_kernel(spec).map_err(|e| provider_error(e, "building a node image"))?;
        }
        if topology
            .nodes
            .iter()
            .any(|n| !topology.kernels.contains_key(n))
        {
            NodeImage::build(self.kernel.as_ref(), None)
                .map_err(|e| provider_error(e, "building the node image"))?;
        }
        Ok(())
    }

    fn up(&mut self, req: &UpRequest<'_>) -> Result<Cluster, ProviderError> {
        let names: Vec<&str> = req.topology.nodes.iter().map(String::as_str).collect();
        let mut config = QemuConfig::new(&names, &req.run_dir.join("qemu"));
        config.run_id = Some(req.run_id.as_str().to_owned());
        config.kernel = self.kernel.clone();
        config.node_kernels = req.topology.kernels.clone();
        // Every binary the nodes run lies in one directory (cli::binaries), shared with
        // the guests.
        config.bin_dir = req.binaries.datapathd.parent().map(Path::to_owned);
        let cluster = QemuCluster::boot_cancellable(&config, &|| req.cancel.is_cancelled())
            .map_err(|e| provider_error(e, "booting the VMs"))?;
        self.facts.set_nodes(
            cluster
                .nodes()
                .iter()
                .map(|vm| NodeFacts {
                    name: vm.name.clone(),
                    kernel_release: vm.image.kernel_release.clone(),
                    kernel_package: vm.image.exact_kernel(),
                })
                .collect(),
        );
        self.facts.accelerator = cluster.accel.accel.name().to_owned();
        let cluster = self.cluster.insert(cluster);
        if req.cancel.is_cancelled() {
            return Err(ProviderError::Interrupted { provider: NAME });
        }
        cluster
            .start_helpers(&req.binaries.dp_remote)
            .map_err(|e| provider_error(e, "starting the nodes' dp-remote helpers"))?;
        let routed_by_kernel = req.topology.routing.is_kernel();
        // With the agent's pod datapath the agent routes pods; no per-node pod CIDR.
        if routed_by_kernel {
            cluster
                .install_pod_routes()
                .map_err(|e| provider_error(e, "routing the pod CIDRs"))?;
        }

        let mut nodes = Vec::new();
        for vm in cluster.nodes() {
            let pod_routing = (!routed_by_kernel).then(|| PodRouting {
                mode: req.topology.routing,
                gateway: pod_gateway(vm.index + 1),
                pods_dir: PathBuf::from(format!("{NODE_STATE}/pods")),
                ipcache_dir: PathBuf::from(format!("{NODE_STATE}/ipcache")),
            });
            let net = NodeNet {
                uplink: "eth0".into(),
                addr: vm.cluster_ip,
                pod_cidr: if routed_by_kernel {
                    vm.pod_cidr.clone()
                } else {
                    CLUSTER_CIDR.into()
                },
                cluster_cidr: CLUSTER_CIDR.into(),
                pod_iface_prefix: "lxc".into(),
                pod_routing: pod_routing.clone(),
            };
            let node: Arc<dyn Node> = Arc::new(SshNode::new(&vm.name, vm.ssh_slot()));
            let services_dir = PathBuf::from(format!("{NODE_STATE}/services"));
            let work_dir = PathBuf::from(format!("{NODE_STATE}/work"));
            node.check(
                &[
                    "mkdir",
                    "-p",
                    &services_dir.to_string_lossy(),
                    &work_dir.to_string_lossy(),
                    &format!("{NODE_STATE}/pods"),
                    &format!("{NODE_STATE}/ipcache"),
                    PODS_CGROUP,
                ],
                Duration::from_secs(30),
            )
            .map_err(|e| node_error(e, format!("preparing node {}", vm.name)))?;
            let datapathd = cluster
                .guest_path(&req.binaries.datapathd)
                .map_err(|e| provider_error(e, "finding datapathd for the guests"))?;
            let dp_probe = cluster
                .guest_path(&req.binaries.dp_probe)
                .map_err(|e| provider_error(e, "finding dp-probe for the guests"))?;
            nodes.push(ClusterNode {
                node,
                cgroup: PathBuf::from(NODE_CGROUP),
                bpffs: PathBuf::from(NODE_BPFFS),
                services_dir,
                work_dir,
                datapathd,
                dp_probe,
                net: Some(net),
            });
        }

        // Each node's pods in one remote script, every node at once.
        if req.cancel.is_cancelled() {
            return Err(ProviderError::Interrupted { provider: NAME });
        }
        let mut pods = Vec::new();
        let mut next_host: std::collections::HashMap<&str, u8> = Default::default();
        let mut hosts = Vec::new();
        for spec in &req.topology.pods {
            let host = next_host.entry(spec.node.as_str()).or_insert(10);
            hosts.push(*host);
            *host = host.saturating_add(1);
            pods.push(Pod {
                name: spec.name.clone(),
                node: spec.node.clone(),
                ip: std::net::Ipv4Addr::UNSPECIFIED,
                netns: PathBuf::from(format!("/run/netns/{}", spec.name)),
                cgroup: Path::new(PODS_CGROUP).join(&spec.name),
            });
        }
        let cluster = &*cluster;
        if !routed_by_kernel {
            // The runtime's part only (a network namespace and a cgroup per pod); the agent
            // wires them at deploy (cluster::pods), each from the address it keeps
            // wherever it runs.
            for (i, p) in pods.iter_mut().enumerate() {
                p.ip = pod_address(i);
            }
            let made = crate::cluster::in_parallel(&pods, |p| -> Result<(), ProviderError> {
                let cn = nodes.iter().find(|n| n.name() == p.node).ok_or_else(|| {
                    ProviderError::Other {
                        provider: NAME,
                        what: format!("pod {} on an unknown node {}", p.name, p.node),
                        source: None,
                    }
                })?;
                pods::create_sandbox(cn, p).map_err(|e| ProviderError::Other {
                    provider: NAME,
                    what: format!("creating the sandbox of pod {}", p.name),
                    source: Some(Box::new(e)),
                })
            });
            made.into_iter().collect::<Result<Vec<()>, _>>()?;
        }
        let made = crate::cluster::in_parallel(cluster.nodes(), |vm| {
            let mine: Vec<(&str, u8, &Path)> = pods
                .iter()
                .zip(&hosts)
                .filter(|(p, _)| routed_by_kernel && p.node == vm.name)
                .map(|(p, h)| (p.name.as_str(), *h, p.cgroup.as_path()))
                .collect();
            (vm.name.clone(), cluster.add_pods(&vm.name, &mine))
        });
        for (node, ips) in made {
            let ips =
                ips.map_err(|e| provider_error(e, &format!("creating the pods of {node}")))?;
            let mut ips = ips.into_iter();
            for p in pods
                .iter_mut()
                .filter(|p| routed_by_kernel && p.node == node)
            {
                p.ip = ips.next().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
            }
        }
        // The external host: the cluster network's own namespace (the underlay, not a
        // node), with an address on its bridge; its server runs on the host. It goes with
        // the network at down.
        let external = match (cluster.netns(), cluster.nodes().first()) {
            (Some(ns), Some(vm0)) => {
                let ns = ns.to_owned();
                let links = cluster
                    .netns_exec(&["ip", "-o", "link", "show", "type", "bridge"])
                    .map_err(|e| provider_error(e, "finding the cluster bridge"))?;
                let bridge = links
                    .lines()
                    .next()
                    .and_then(|l| l.split(": ").nth(1))
                    .map(|b| b.split('@').next().unwrap_or(b).to_owned())
                    .ok_or_else(|| ProviderError::Other {
                        provider: NAME,
                        what: format!("no bridge in the cluster network namespace {ns}"),
                        source: None,
                    })?;
                let o = vm0.cluster_ip.octets();
                let addr = std::net::Ipv4Addr::new(o[0], o[1], o[2], 250);
                cluster
                    .netns_exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", &bridge])
                    .map_err(|e| provider_error(e, "addressing the external host"))?;
                Some(ExternalHost {
                    name: "external".into(),
                    addr: std::net::SocketAddrV4::new(addr, 8080),
                    netns: PathBuf::from(format!("/run/netns/{ns}")),
                    on_host: Some(HostServer {
                        state: cluster.state.clone(),
                        dp_probe: req.binaries.dp_probe.clone(),
                        log_dir: req.run_dir.to_path_buf(),
                    }),
                })
            }
            _ => None,
        };
        Ok(Cluster {
            pod_net: Default::default(),
            nodes,
            pods,
            external,
        })
    }

    fn down(&mut self) -> Result<(), ProviderError> {
        match self.cluster.take() {
            Some(mut c) => c
                .teardown()
                .map_err(|e| provider_error(e, "tearing down the VMs")),
            None => Ok(()),
        }
    }

    fn keep(&mut self) -> Vec<String> {
        self.cluster
            .take()
            .map(QemuCluster::keep)
            .unwrap_or_default()
    }

    fn facts(&self) -> Facts {
        self.facts.clone()
    }

    fn limitations(&self) -> Vec<Limitation> {
        Vec::new()
    }

    fn machines(&mut self) -> Option<&mut dyn crate::provider::Machines> {
        Some(self)
    }

    fn clean_leftovers(&self) -> Result<Cleaned, ProviderError> {
        let c = clean_leftovers().map_err(|e| provider_error(e, "cleaning leftovers"))?;
        Ok(Cleaned {
            found: c.found,
            removed: c.removed,
            problems: c.problems,
        })
    }
}
