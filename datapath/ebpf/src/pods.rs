//! Pod networking (issue 18), as Cilium's bpf_lxc and bpf_overlay do it.
//!
//! * `dp_from_cont` on the ingress of every pod's host veth (`lxc...`): the host veth has
//!   no address and `arp_ignore=1`, so this program answers the pod's ARP requests (for
//!   the gateway, or any address other than the pod's own) with the host veth's MAC; IPv4
//!   to a local pod (`dp_endpoints`) gets its MACs rewritten and is redirected to that
//!   pod's host veth; IPv4 to a remote pod (`dp_ipcache`) is passed to the kernel (native
//!   routing: the agent's per-pod /32 routes) or encapsulated (`bpf_skb_set_tunnel_key`,
//!   VNI [`POD_VNI`]) and redirected to `dp_vxlan`; everything else is passed.
//! * `dp_from_ovl` on the ingress of `dp_vxlan` (collect_md): a decapsulated packet to a
//!   local pod is redirected to its host veth; everything else is passed.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{bpf_tunnel_key, TC_ACT_OK},
    helpers::{bpf_redirect, bpf_skb_set_tunnel_key},
    macros::{classifier, map},
    maps::{Array, HashMap},
    programs::TcContext,
};
use datapath_common::{
    EndpointInfo, IpcacheEntry, PodsConfig, MUTATE_ARP_RESPONDER_OFF, PODS_LAYOUT_VERSION,
    ROUTING_VXLAN,
};

// Placeholder sizes: the agent sets max_entries at load time.
#[map(name = "dp_endpoints")]
static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::with_max_entries(1, 0);
#[map(name = "dp_ipcache")]
static IPCACHE: HashMap<u32, IpcacheEntry> = HashMap::with_max_entries(1, 0);
#[map(name = "dp_pods_cfg")]
static CONFIG: Array<PodsConfig> = Array::with_max_entries(1, 0);

const PASS: i32 = TC_ACT_OK as i32;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
// Offsets in an Ethernet/IPv4 ARP packet.
const ARP_OP: usize = ETH_HLEN + 6;
const ARP_SHA: usize = ETH_HLEN + 8;
const ARP_SPA: usize = ETH_HLEN + 14;
const ARP_THA: usize = ETH_HLEN + 18;
const ARP_TPA: usize = ETH_HLEN + 24;
const IP_DADDR: usize = ETH_HLEN + 16;
/// Size of `struct bpf_tunnel_key` up to `tunnel_label`: a size every kernel since 4.x
/// accepts (the full struct grew in 6.x).
const TUNNEL_KEY_SIZE: u32 = 24;

#[classifier]
pub fn dp_from_cont(ctx: TcContext) -> i32 {
    match from_cont(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[classifier]
pub fn dp_from_ovl(ctx: TcContext) -> i32 {
    match from_ovl(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn config() -> Result<PodsConfig, i32> {
    match CONFIG.get(0) {
        Some(c) if c.layout_version == PODS_LAYOUT_VERSION => Ok(*c),
        _ => Err(PASS),
    }
}

#[inline(always)]
fn ethertype(ctx: &TcContext) -> Result<u16, i32> {
    let proto: u16 = ctx.load(12).map_err(|_| PASS)?;
    Ok(u16::from_be(proto))
}

fn from_cont(ctx: &TcContext) -> Result<i32, i32> {
    let cfg = config()?;
    match ethertype(ctx)? {
        ETH_P_ARP => arp_reply(ctx),
        ETH_P_IP => {
            let daddr: u32 = ctx.load(IP_DADDR).map_err(|_| PASS)?;
            // SAFETY: copied out at once.
            if let Some(ep) = unsafe { ENDPOINTS.get(&daddr) } {
                let ep = *ep;
                return to_local(ctx, &ep);
            }
            // SAFETY: copied out at once.
            let remote = match unsafe { IPCACHE.get(&daddr) } {
                Some(e) => *e,
                None => return Ok(PASS),
            };
            if cfg.routing != ROUTING_VXLAN || cfg.vxlan_ifindex == 0 {
                // Native routing: the kernel forwards by the agent's /32 route.
                return Ok(PASS);
            }
            // SAFETY: bpf_tunnel_key is plain old data; all zero is a valid value.
            let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
            key.tunnel_id = cfg.vni;
            key.__bindgen_anon_1.remote_ipv4 = u32::from_be(remote.node_addr);
            key.tunnel_ttl = 64;
            // SAFETY: the helper reads TUNNEL_KEY_SIZE bytes of `key`, which has more.
            let r = unsafe { bpf_skb_set_tunnel_key(ctx.skb.skb, &mut key, TUNNEL_KEY_SIZE, 0) };
            if r != 0 {
                return Ok(PASS);
            }
            // SAFETY: a plain helper call.
            Ok(unsafe { bpf_redirect(cfg.vxlan_ifindex, 0) } as i32)
        }
        _ => Ok(PASS),
    }
}

fn from_ovl(ctx: &TcContext) -> Result<i32, i32> {
    config()?;
    if ethertype(ctx)? != ETH_P_IP {
        return Ok(PASS);
    }
    let daddr: u32 = ctx.load(IP_DADDR).map_err(|_| PASS)?;
    // SAFETY: copied out at once.
    match unsafe { ENDPOINTS.get(&daddr) } {
        Some(ep) => {
            let ep = *ep;
            to_local(ctx, &ep)
        }
        None => Ok(PASS),
    }
}

/// To a pod of this node: from its host veth's MAC to its MAC, out of its host veth (which
/// delivers into the pod): no routing, no neighbour lookup.
#[inline(always)]
fn to_local(ctx: &TcContext, ep: &EndpointInfo) -> Result<i32, i32> {
    ctx.store(0, &ep.pod_mac, 0).map_err(|_| PASS)?;
    ctx.store(6, &ep.host_mac, 0).map_err(|_| PASS)?;
    // SAFETY: a plain helper call.
    Ok(unsafe { bpf_redirect(ep.ifindex, 0) } as i32)
}

/// Answer an ARP request from a wired pod for any address but its own with its host veth's
/// MAC, sending the reply back out of the interface it came in on.
#[inline(always)]
fn arp_reply(ctx: &TcContext) -> Result<i32, i32> {
    if mutated(MUTATE_ARP_RESPONDER_OFF) {
        // The bug: the kernel gets the request, and with arp_ignore=1 and no address on
        // the host veth it never answers.
        return Ok(PASS);
    }
    let op: u16 = ctx.load(ARP_OP).map_err(|_| PASS)?;
    if u16::from_be(op) != ARP_REQUEST {
        return Ok(PASS);
    }
    let sha: [u8; 6] = ctx.load(ARP_SHA).map_err(|_| PASS)?;
    let spa: u32 = ctx.load(ARP_SPA).map_err(|_| PASS)?;
    let tpa: u32 = ctx.load(ARP_TPA).map_err(|_| PASS)?;
    if spa == tpa {
        // Gratuitous ARP / the pod's own address: nothing to answer.
        return Ok(PASS);
    }
    // Only pods the agent wired are answered (DAD probes from 0.0.0.0 are not).
    // SAFETY: copied out at once.
    let ep = match unsafe { ENDPOINTS.get(&spa) } {
        Some(ep) => *ep,
        None => return Ok(PASS),
    };
    // SAFETY: the kernel hands every tc program a valid __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if ifindex != ep.ifindex {
        // Someone claims a pod's address from another interface: not ours to answer.
        return Ok(PASS);
    }
    ctx.store(0, &sha, 0).map_err(|_| PASS)?;
    ctx.store(6, &ep.host_mac, 0).map_err(|_| PASS)?;
    ctx.store(ARP_OP, &ARP_REPLY.to_be(), 0).map_err(|_| PASS)?;
    ctx.store(ARP_SHA, &ep.host_mac, 0).map_err(|_| PASS)?;
    ctx.store(ARP_SPA, &tpa, 0).map_err(|_| PASS)?;
    ctx.store(ARP_THA, &sha, 0).map_err(|_| PASS)?;
    ctx.store(ARP_TPA, &spa, 0).map_err(|_| PASS)?;
    // SAFETY: a plain helper call: out of the same interface, back into the pod.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

/// The deliberate bugs of a mutant (`datapath_common::MUTATE_*` bits), 0 for the correct
/// datapath: set by the agent at load time, frozen in `.rodata` (see the socket-LB object).
#[unsafe(no_mangle)]
static DP_MUTATIONS: u32 = 0;

#[inline(always)]
fn mutated(bit: u32) -> bool {
    // SAFETY: a plain read of a static; volatile so the load the loader decides stays.
    let bits = unsafe { core::ptr::read_volatile(&DP_MUTATIONS) };
    bits & bit != 0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
