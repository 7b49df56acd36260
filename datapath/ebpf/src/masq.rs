//! BPF masquerade on the node's uplink (tc: tcx or clsact), as Cilium's bpf_host does it.
//!
//! * `dp_masq_egress`: IPv4 TCP/UDP from a pod CIDR to a destination outside every cluster
//!   CIDR gets the node's address as its source and a port from the masquerade range. The
//!   program allocates the port: it claims `dp_masq_rev[(external, node, ext port, port)]`
//!   with `BPF_NOEXIST`, so two flows never share a reply tuple (a taken port is skipped,
//!   up to [`ALLOC_TRIES`] candidates), then records `dp_masq_fwd[flow] = (node, port)`.
//! * `dp_masq_ingress`: a reply to the node's address on a port of the range that matches
//!   `dp_masq_rev` is translated back to the pod's address and port and sent with
//!   `bpf_redirect_neigh` straight to the pod's host-side interface (`dp_masq_pods`, filled
//!   by the agent), bypassing netfilter: conntrack on the node sees the pod's SYN but never
//!   the SYN-ACK. That is exactly what makes kube-proxy's INVALID drop bite when its chain
//!   runs first (incident B).
//!
//! Both NAT maps are LRU hashes: old flows are evicted when the map is full (no sweep). A
//! forward entry is trusted only while its reverse entry still points back at the same pod
//! address and port; otherwise a new port is allocated.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect_neigh},
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap},
    programs::TcContext,
};
use datapath_common::{
    MasqConfig, NatEndpoint, NatEntry, NatKey, MASQ_LAYOUT_OLDEST, MASQ_LAYOUT_VERSION,
    MASQ_MAX_CIDRS, MUTATE_MASQ_REPLY_PORT_KEPT, PROTO_TCP, PROTO_UDP,
};

// Placeholder sizes: the agent sets max_entries at load time. The NAT maps are created by
// the agent in the layout it runs (value 8 or 12 bytes, see MASQ_LAYOUT_VERSION): values
// are written whole as NatEntry (the kernel copies the map's value size) and read only as
// the leading NatEndpoint, which every layout has.
#[map(name = "dp_masq_cfg")]
static CONFIG: Array<MasqConfig> = Array::with_max_entries(1, 0);
#[map(name = "dp_masq_fwd")]
static FWD: LruHashMap<NatKey, NatEntry> = LruHashMap::with_max_entries(1, 0);
#[map(name = "dp_masq_rev")]
static REV: LruHashMap<NatKey, NatEntry> = LruHashMap::with_max_entries(1, 0);
/// Pod address (network byte order) -> ifindex of its host-side interface.
#[map(name = "dp_masq_pods")]
static PODS: HashMap<u32, u32> = HashMap::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_SADDR_OFF: usize = ETH_HLEN + 12;
const IP_DADDR_OFF: usize = ETH_HLEN + 16;
/// How many candidate ports one new flow tries before its packet is dropped.
const ALLOC_TRIES: u32 = 16;

#[classifier]
pub fn dp_masq_egress(ctx: TcContext) -> i32 {
    match try_egress(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[classifier]
pub fn dp_masq_ingress(ctx: TcContext) -> i32 {
    match try_ingress(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

const PASS: i32 = TC_ACT_OK as i32;
const DROP: i32 = TC_ACT_SHOT as i32;

/// What the translation needs from an IPv4 TCP/UDP packet.
struct Packet {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    proto: u8,
    /// Offset of the L4 header.
    l4: usize,
}

impl Packet {
    fn l4_csum_off(&self) -> usize {
        if self.proto == PROTO_TCP {
            self.l4 + 16
        } else {
            self.l4 + 6
        }
    }

    fn l4_flags(&self) -> u64 {
        // A UDP checksum of 0 means "none": keep it 0 rather than inventing one.
        if self.proto == PROTO_UDP {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        }
    }
}

/// `Err(PASS)` for anything that is not a first-fragment IPv4 TCP/UDP packet.
#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Packet, i32> {
    let proto_be: u16 = ctx.load(12).map_err(|_| PASS)?;
    if u16::from_be(proto_be) != ETH_P_IP {
        return Err(PASS);
    }
    let vihl: u8 = ctx.load(ETH_HLEN).map_err(|_| PASS)?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(PASS);
    }
    let frag_be: u16 = ctx.load(ETH_HLEN + 6).map_err(|_| PASS)?;
    if u16::from_be(frag_be) & 0x1fff != 0 {
        // A later fragment carries no ports.
        return Err(PASS);
    }
    let proto: u8 = ctx.load(ETH_HLEN + 9).map_err(|_| PASS)?;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(PASS);
    }
    let l4 = ETH_HLEN + ihl;
    Ok(Packet {
        saddr: ctx.load(IP_SADDR_OFF).map_err(|_| PASS)?,
        daddr: ctx.load(IP_DADDR_OFF).map_err(|_| PASS)?,
        sport: ctx.load(l4).map_err(|_| PASS)?,
        dport: ctx.load(l4 + 2).map_err(|_| PASS)?,
        proto,
        l4,
    })
}

#[inline(always)]
fn in_nets(addr: u32, nets: &[u32; MASQ_MAX_CIDRS], masks: &[u32; MASQ_MAX_CIDRS], n: u32) -> bool {
    let mut i = 0;
    while i < MASQ_MAX_CIDRS {
        if (i as u32) < n && addr & masks[i] == nets[i] {
            return true;
        }
        i += 1;
    }
    false
}

/// Which end of the packet a translation rewrites.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Source,
    Destination,
}

/// Replace the source or destination address and port with `to`, fixing the IP header
/// checksum and the L4 checksum (pseudo-header for the address). Values are as the packet
/// carries them (network byte order), so the helpers' raw arithmetic needs no conversion.
#[inline(always)]
fn rewrite(ctx: &TcContext, p: &Packet, end: End, to: &NatEndpoint) -> Result<(), i32> {
    let (addr_off, old_addr, port_off, old_port) = match end {
        End::Source => (IP_SADDR_OFF, p.saddr, p.l4, p.sport),
        End::Destination => (IP_DADDR_OFF, p.daddr, p.l4 + 2, p.dport),
    };
    let csum = p.l4_csum_off();
    let flags = p.l4_flags();
    ctx.l4_csum_replace(
        csum,
        u64::from(old_addr),
        u64::from(to.addr),
        flags | u64::from(BPF_F_PSEUDO_HDR) | 4,
    )
    .map_err(|_| DROP)?;
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old_addr), u64::from(to.addr), 4)
        .map_err(|_| DROP)?;
    ctx.store(addr_off, &to.addr, 0).map_err(|_| DROP)?;
    ctx.l4_csum_replace(csum, u64::from(old_port), u64::from(to.port), flags | 2)
        .map_err(|_| DROP)?;
    ctx.store(port_off, &to.port, 0).map_err(|_| DROP)?;
    Ok(())
}

#[inline(always)]
fn config() -> Result<MasqConfig, i32> {
    match CONFIG.get(0) {
        Some(c)
            if c.layout_version >= MASQ_LAYOUT_OLDEST
                && c.layout_version <= MASQ_LAYOUT_VERSION =>
        {
            Ok(*c)
        }
        _ => Err(PASS),
    }
}

fn try_egress(ctx: &TcContext) -> Result<i32, i32> {
    let cfg = config()?;
    let p = parse(ctx)?;
    if !in_nets(p.saddr, &cfg.pod_nets, &cfg.pod_masks, cfg.pod_count)
        || in_nets(
            p.daddr,
            &cfg.cluster_nets,
            &cfg.cluster_masks,
            cfg.cluster_count,
        )
        || p.daddr == cfg.node_addr
    {
        return Ok(PASS);
    }
    let key = NatKey {
        saddr: p.saddr,
        daddr: p.daddr,
        sport: p.sport,
        dport: p.dport,
        proto: p.proto,
        pad: [0; 3],
    };
    let pod = NatEndpoint {
        addr: p.saddr,
        port: p.sport,
        pad: 0,
    };
    let nat = match lookup_fwd(&key, &pod, cfg.node_addr) {
        Some(n) => n,
        None => allocate(&key, &pod, &cfg)?,
    };
    rewrite(ctx, &p, End::Source, &nat)?;
    Ok(PASS)
}

/// The flow's existing translation, if its reverse entry still points back at it.
#[inline(always)]
fn lookup_fwd(key: &NatKey, pod: &NatEndpoint, node_addr: u32) -> Option<NatEndpoint> {
    let nat = endpoint(&FWD, key)?;
    if nat.addr != node_addr {
        return None;
    }
    let rev_key = reply_key(key, &nat);
    let back = endpoint(&REV, &rev_key)?;
    if back.addr == pod.addr && back.port == pod.port {
        Some(nat)
    } else {
        None
    }
}

/// The endpoint of a NAT entry: its first 8 bytes, the only part every layout has (a
/// layout 1 value is 8 bytes; reading 12 would not pass the verifier).
#[inline(always)]
fn endpoint(map: &LruHashMap<NatKey, NatEntry>, key: &NatKey) -> Option<NatEndpoint> {
    let p = map.get_ptr(key)?;
    // SAFETY: the kernel returned a pointer to a live value of at least 8 bytes; read at once.
    Some(unsafe { core::ptr::read_unaligned(p.cast::<NatEndpoint>()) })
}

/// A whole value as written in every layout (the kernel keeps the map's value size of it).
#[inline(always)]
fn entry(ep: &NatEndpoint) -> NatEntry {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    NatEntry {
        ep: *ep,
        created_s: (now / 1_000_000_000) as u32,
    }
}

/// The tuple a reply to the translated flow arrives with.
#[inline(always)]
fn reply_key(key: &NatKey, nat: &NatEndpoint) -> NatKey {
    NatKey {
        saddr: key.daddr,
        daddr: nat.addr,
        sport: key.dport,
        dport: nat.port,
        proto: key.proto,
        pad: [0; 3],
    }
}

/// Claim a free port of the range for this flow (collision-free through `BPF_NOEXIST`).
#[inline(always)]
fn allocate(key: &NatKey, pod: &NatEndpoint, cfg: &MasqConfig) -> Result<NatEndpoint, i32> {
    let min = u32::from(cfg.port_min);
    let span = u32::from(cfg.port_max).saturating_sub(min) + 1;
    // SAFETY: a helper without arguments.
    let start = unsafe { bpf_get_prandom_u32() };
    let mut i = 0;
    while i < ALLOC_TRIES {
        let port = (min + start.wrapping_add(i) % span) as u16;
        let nat = NatEndpoint {
            addr: cfg.node_addr,
            port: port.to_be(),
            pad: 0,
        };
        let rev_key = reply_key(key, &nat);
        if REV
            .insert(&rev_key, &entry(pod), u64::from(BPF_NOEXIST))
            .is_ok()
        {
            if FWD.insert(key, &entry(&nat), 0).is_err() {
                let _ = REV.remove(&rev_key);
                return Err(DROP);
            }
            return Ok(nat);
        }
        i += 1;
    }
    // Every candidate is taken: drop rather than send a colliding tuple.
    Err(DROP)
}

fn try_ingress(ctx: &TcContext) -> Result<i32, i32> {
    let cfg = config()?;
    let p = parse(ctx)?;
    let dport = u16::from_be(p.dport);
    if p.daddr != cfg.node_addr || dport < cfg.port_min || dport > cfg.port_max {
        return Ok(PASS);
    }
    let key = NatKey {
        saddr: p.saddr,
        daddr: p.daddr,
        sport: p.sport,
        dport: p.dport,
        proto: p.proto,
        pad: [0; 3],
    };
    let mut pod = match endpoint(&REV, &key) {
        Some(v) => v,
        None => return Ok(PASS),
    };
    if mutated(MUTATE_MASQ_REPLY_PORT_KEPT) {
        // The bug: only the address is translated back.
        pod.port = p.dport;
    }
    rewrite(ctx, &p, End::Destination, &pod)?;
    // SAFETY: copied out at once.
    match unsafe { PODS.get(&pod.addr) } {
        // Straight to the pod's interface, resolving its MAC through the neighbour table:
        // no routing, no netfilter FORWARD, no conntrack.
        // SAFETY: a helper with no parameter block (NULL, 0 = use the neighbour table).
        Some(ifindex) => {
            Ok(unsafe { bpf_redirect_neigh(*ifindex, core::ptr::null_mut(), 0, 0) } as i32)
        }
        // Pod interface unknown yet: let the stack route it.
        None => Ok(PASS),
    }
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
