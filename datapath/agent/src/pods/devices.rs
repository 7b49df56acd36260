//! The node's pod devices: `dp_host` (one end of a veth pair whose other end is `dp_net`,
//! as Cilium's cilium_host/cilium_net: a veth rather than a dummy because kernels without
//! the dummy module exist, this machine's among them), holding the gateway as a /32 and, in VXLAN mode, `dp_vxlan` (collect_md, UDP 8472), plus the sysctls
//! pod routing needs.

use std::net::Ipv4Addr;

use tracing::info;

use super::{
    ip::{self, IpError, Ns},
    PodsError, Routing,
};

pub const HOST_DEV: &str = "dp_host";
/// The other end of `dp_host`'s veth pair.
pub const NET_DEV: &str = "dp_net";
pub const VXLAN_DEV: &str = "dp_vxlan";
/// The Linux VXLAN port (Cilium's default too).
pub const VXLAN_PORT: &str = "8472";
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// The pods' MTU: the uplink's, less the encapsulation in VXLAN mode.
pub fn pod_mtu(uplink_mtu: u32, routing: Routing) -> u32 {
    match routing {
        Routing::Native => uplink_mtu,
        Routing::Vxlan => uplink_mtu.saturating_sub(VXLAN_OVERHEAD),
    }
}

/// Makes `dp_host` (gateway/32 only, MTU = the pods') and, for VXLAN, `dp_vxlan`; returns
/// their ifindexes (vxlan 0 in native mode). Existing devices are reused and corrected.
pub fn ensure(gateway: Ipv4Addr, mtu: u32, routing: Routing) -> Result<(u32, u32), PodsError> {
    let mtu_s = mtu.to_string();
    if ip::link(Ns::Here, HOST_DEV)?.is_none() {
        ip::ip(&[
            "link", "add", HOST_DEV, "type", "veth", "peer", "name", NET_DEV,
        ])?;
        info!(device = HOST_DEV, "created");
    }
    let (_, addrs) = ip::ipv4_addrs(Ns::Here, HOST_DEV)?.unwrap_or_default();
    for (a, len) in addrs {
        if a != gateway || len != 32 {
            ip::ip(&["addr", "del", &format!("{a}/{len}"), "dev", HOST_DEV])?;
        }
    }
    ip::ip(&["addr", "replace", &format!("{gateway}/32"), "dev", HOST_DEV])?;
    ip::ip(&["link", "set", NET_DEV, "mtu", &mtu_s, "up"])?;
    ip::ip(&["link", "set", HOST_DEV, "mtu", &mtu_s, "up"])?;
    let host = ip::link(Ns::Here, HOST_DEV)?
        .ok_or_else(|| PodsError::Device(HOST_DEV))?
        .ifindex;

    let vxlan = match routing {
        Routing::Native => {
            remove_vxlan();
            0
        }
        Routing::Vxlan => {
            if ip::link(Ns::Here, VXLAN_DEV)?.is_none() {
                ip::ip(&[
                    "link", "add", VXLAN_DEV, "type", "vxlan", "external", "dstport", VXLAN_PORT,
                ])?;
                info!(device = VXLAN_DEV, "created");
            }
            ip::ip(&["link", "set", VXLAN_DEV, "mtu", &mtu_s, "up"])?;
            ip::link(Ns::Here, VXLAN_DEV)?
                .ok_or_else(|| PodsError::Device(VXLAN_DEV))?
                .ifindex
        }
    };
    // Pods are routed by the node: forwarding on (Cilium enables it too).
    ip::sysctl("net/ipv4/ip_forward", "1").map_err(PodsError::Sysctl)?;
    Ok((host, vxlan))
}

fn remove_vxlan() {
    if ip::ip_quiet(&["link", "del", VXLAN_DEV]) {
        info!(device = VXLAN_DEV, "removed (native routing)");
    }
}

/// `cleanup`: both devices go (their routes and addresses with them).
pub fn remove() -> usize {
    [HOST_DEV, VXLAN_DEV]
        .into_iter()
        .filter(|d| ip::ip_quiet(&["link", "del", d]))
        .count()
}

/// The gateway and the pods' MTU as the running agent set them on `dp_host`: what
/// `pod add` configures the pod with.
pub fn gateway_and_mtu() -> Result<Option<(Ipv4Addr, u32)>, IpError> {
    Ok(
        ip::ipv4_addrs(Ns::Here, HOST_DEV)?.and_then(|(mtu, addrs)| {
            addrs
                .into_iter()
                .find(|(_, len)| *len == 32)
                .map(|(a, _)| (a, mtu))
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vxlan_pods_lose_the_encapsulation() {
        assert_eq!(pod_mtu(1500, Routing::Native), 1500);
        assert_eq!(pod_mtu(1500, Routing::Vxlan), 1450);
    }
}
