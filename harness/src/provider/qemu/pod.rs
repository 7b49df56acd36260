//! Pods inside a VM node: a network namespace and a cgroup, with a veth to the node
//! (`lxc<pod>` on the node side, `eth0` in the pod), routed Calico-style: the pod's /32
//! points at its veth, the pod's default route goes to the link-local gateway
//! 169.254.1.1, which every pod's node-side veth carries (nodes have no default route,
//! so proxy ARP would not answer for it). Pods on other nodes are reached through their node's pod CIDR route over
//! the cluster network (see `QemuCluster::install_pod_routes`).

use std::net::Ipv4Addr;
use std::path::Path;

/// The node-side veth of a pod: `lxc` + the pod name, cut to the 15 bytes Linux allows.
pub fn host_veth(pod: &str) -> String {
    let mut name = format!("lxc{pod}");
    name.truncate(15);
    name
}

/// A pod to create: its name, address and cgroup directory on the node.
pub struct PodPlan<'a> {
    pub name: &'a str,
    pub ip: Ipv4Addr,
    pub cgroup: &'a Path,
}

/// A shell script (run as root on the node) that creates `pods`: one `ip -batch` for the
/// node's side of all of them, one per pod for its namespace, instead of one `ip` per
/// setting (each process costs ~0.1 s of CPU in a TCG guest).
pub fn create_script(pods: &[PodPlan<'_>]) -> String {
    let mut node_side = String::new();
    let mut script = String::from("set -e\n");
    for p in pods {
        let (pod, ip, veth) = (p.name, p.ip, host_veth(p.name));
        node_side.push_str(&format!(
            "netns add {pod}\n\
             link add {veth} type veth peer name eth0 netns {pod}\n\
             link set {veth} up\n\
             addr add 169.254.1.1/32 dev {veth} scope link\n\
             route replace {ip}/32 dev {veth}\n"
        ));
    }
    script.push_str(&format!("ip -batch - <<'EOF'\n{node_side}EOF\n"));
    for p in pods {
        let (pod, ip) = (p.name, p.ip);
        script.push_str(&format!(
            "ip -n {pod} -batch - <<'EOF'\n\
             link set lo up\n\
             addr add {ip}/32 dev eth0\n\
             link set eth0 up\n\
             route add 169.254.1.1 dev eth0 scope link\n\
             route add default via 169.254.1.1 dev eth0\n\
             EOF\n"
        ));
    }
    let cgroups: Vec<String> = pods
        .iter()
        .map(|p| super::ssh::shell_quote(&p.cgroup.to_string_lossy()))
        .collect();
    if !cgroups.is_empty() {
        script.push_str(&format!("mkdir -p {}\n", cgroups.join(" ")));
    }
    script
}

/// A shell script that removes pod `pod` (its veth goes with the namespace).
pub fn delete_script(pod: &str, cgroup: &Path) -> String {
    let cgroup = super::ssh::shell_quote(&cgroup.to_string_lossy());
    format!("ip netns delete {pod} 2>/dev/null; rmdir {cgroup} 2>/dev/null; true\n")
}
