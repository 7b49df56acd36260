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

/// A shell script (run as root on the node) that creates pod `pod` with address `ip`
/// and cgroup directory `cgroup`.
pub fn create_script(pod: &str, ip: Ipv4Addr, cgroup: &Path) -> String {
    let veth = host_veth(pod);
    let cgroup = super::ssh::shell_quote(&cgroup.to_string_lossy());
    format!(
        "set -e
ip netns add {pod}
ip link add {veth} type veth peer name eth0 netns {pod}
ip -n {pod} link set lo up
ip -n {pod} addr add {ip}/32 dev eth0
ip -n {pod} link set eth0 up
ip -n {pod} route add 169.254.1.1 dev eth0 scope link
ip -n {pod} route add default via 169.254.1.1 dev eth0
ip link set {veth} up
ip addr add 169.254.1.1/32 dev {veth} scope link
ip route replace {ip}/32 dev {veth}
mkdir -p {cgroup}
"
    )
}

/// A shell script that removes pod `pod` (its veth goes with the namespace).
pub fn delete_script(pod: &str, cgroup: &Path) -> String {
    let cgroup = super::ssh::shell_quote(&cgroup.to_string_lossy());
    format!("ip netns delete {pod} 2>/dev/null; rmdir {cgroup} 2>/dev/null; true\n")
}
