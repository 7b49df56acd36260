//! Map keys and values shared by the datapath's eBPF programs and its agent.
//!
//! Every type is `#[repr(C)]` with explicit padding fields, so that the byte layout the
//! kernel hashes (map keys) is fully defined: implicit padding would be uninitialised on
//! one side and make equal keys hash differently. Addresses and ports are stored exactly
//! as `struct bpf_sock_addr` carries them, in network byte order, so the eBPF side never
//! converts.
//!
//! Changing any type here changes the pinned maps' layout: bump [`LAYOUT_VERSION`], and
//! the agent will replace (not reuse) pinned maps written by an older layout.
#![no_std]

/// Version of the map layout below. The agent stores it in [`MAP_META`] and reuses pinned
/// maps only when it matches (a pinned map of the same sizes but another layout would
/// otherwise be reused silently).
pub const LAYOUT_VERSION: u32 = 1;

/// IANA protocol numbers, as `bpf_sock_addr.protocol` reports them.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Prefix of every kernel object (program, map) that belongs to the datapath. The agent
/// uses it to recognise its own programs on a cgroup.
pub const OBJECT_PREFIX: &str = "dp_";

/// Map names (kernel names are at most 15 characters).
pub const MAP_SERVICES: &str = "dp_services";
pub const MAP_SLOTS: &str = "dp_slots";
pub const MAP_BACKENDS: &str = "dp_backends";
pub const MAP_REVNAT: &str = "dp_revnat";
pub const MAP_META: &str = "dp_meta";

/// Program names (the eBPF functions' symbols, which the kernel keeps as program names).
pub const PROG_CONNECT4: &str = "dp_connect4";
/// The eBPF object's `.rodata` switch for `bpf_set_retval` (u32, 1 = use it); the agent
/// sets it to 0 on kernels without the helper.
pub const GLOBAL_FAST_REFUSE: &str = "DP_FAST_REFUSE";
/// The `.rodata` switch of deliberate bugs (u32 bit set, 0 = none) in both eBPF objects:
/// the agent sets it at load time for a mutant (`datapathd mutants`), so one object
/// serves the correct datapath and every variant, and the verifier drops the dead branch.
pub const GLOBAL_MUTATIONS: &str = "DP_MUTATIONS";
/// recvmsg4 leaves the reply's source as the backend (no reverse translation).
pub const MUTATE_NO_RECVMSG_REVNAT: u32 = 1 << 0;
/// getpeername4 leaves the peer as the backend.
pub const MUTATE_NO_GETPEERNAME_REVNAT: u32 = 1 << 1;
/// sock_ops keys a connection with the peer's port in network byte order.
pub const MUTATE_SOCKKEY_PORT_ORDER: u32 = 1 << 2;
/// sock_ops inserts only the connecting end (active), never the accepting end.
pub const MUTATE_SOCKOPS_ACTIVE_ONLY: u32 = 1 << 3;
/// The masquerade's reply path restores the pod's address but keeps the masquerade port.
pub const MUTATE_MASQ_REPLY_PORT_KEPT: u32 = 1 << 4;
/// `dp_from_cont` passes ARP to the kernel instead of answering it (pods object).
pub const MUTATE_ARP_RESPONDER_OFF: u32 = 1 << 5;
pub const PROG_SENDMSG4: &str = "dp_sendmsg4";
pub const PROG_RECVMSG4: &str = "dp_recvmsg4";
pub const PROG_GETPEERNAME4: &str = "dp_getpeername4";

/// The only key of [`MAP_META`] (an array of one element).
pub const META_KEY: u32 = 0;

/// Key of `dp_services`: a service's virtual address, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// IPv4 address, network byte order (as `bpf_sock_addr.user_ip4`).
    pub addr: u32,
    /// Port, network byte order (the low 16 bits of `bpf_sock_addr.user_port`).
    pub port: u16,
    /// IP protocol number: [`PROTO_TCP`] or [`PROTO_UDP`]; a byte is enough.
    pub proto: u8,
    /// Explicit padding to 8 bytes; always 0.
    pub pad: u8,
}

/// Value of `dp_services`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Number of valid slots (`0..backend_count`) in `dp_slots` for this service; 0 means
    /// "no backend: refuse the connection".
    pub backend_count: u32,
    /// Stable id of the service, the first half of its `dp_slots` keys.
    pub service_id: u32,
}

/// Key of `dp_slots`: the `slot`-th backend of service `service_id`. Value: a backend id
/// (`u32`), the key of `dp_backends`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    pub service_id: u32,
    pub slot: u32,
}

/// Value of `dp_backends` (key: backend id, `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// IP protocol number (same as its service's).
    pub proto: u8,
    /// Explicit padding to 8 bytes; always 0.
    pub pad: u8,
}

/// Key of `dp_revnat` (an LRU hash): which service a socket reached a backend through.
/// Keyed by socket cookie *and* backend, so that recvmsg4/getpeername4 rewrite only the
/// backend this socket was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNatKey {
    /// Socket cookie (`bpf_get_socket_cookie`), 64 bits wide in the kernel.
    pub cookie: u64,
    /// Backend IPv4 address, network byte order.
    pub addr: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// Explicit padding to 16 bytes (the u64 aligns the struct to 8); always 0.
    pub pad: u16,
}

/// Value of `dp_revnat`: the service address the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNatValue {
    /// Service IPv4 address, network byte order.
    pub addr: u32,
    /// Service port, network byte order.
    pub port: u16,
    /// Explicit padding to 8 bytes; always 0.
    pub pad: u16,
}

/// Value of `dp_meta[0]`: describes the layout of the maps pinned next to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Meta {
    /// [`LAYOUT_VERSION`] of the agent that created the maps.
    pub layout_version: u32,
    /// Reserved for future flags; always 0. Keeps the struct 8 bytes wide.
    pub reserved: u32,
}

// ---------------------------------------------------------------------------------------
// BPF masquerade (tc on the node's uplink; incident B in shared/DESIGN.md). These maps are
// separate from the socket-LB set: they have their own object (`masq`), their own pins
// (`maps/dp_masq_*`) and their own layout version, kept in `dp_masq_cfg`.

/// The newest masquerade map layout (stored in [`MasqConfig::layout_version`]). One agent
/// knows two layouts, standing for the previous and the next release (`datapathd run
/// --layout N`), so an upgrade and a downgrade need no second build:
/// * 1: `dp_masq_fwd`/`dp_masq_rev` values are [`NatEndpoint`] (8 bytes), capacity
///   `--max-masq`;
/// * 2: values are [`NatEntry`] (12 bytes: a field appended), capacity twice `--max-masq`.
///
/// The programs serve both: they write a whole [`NatEntry`] (the kernel copies only the
/// map's value size) and read only its leading [`NatEndpoint`].
pub const MASQ_LAYOUT_VERSION: u32 = 2;
/// The oldest masquerade layout this agent still runs and migrates from.
pub const MASQ_LAYOUT_OLDEST: u32 = 1;

/// Masquerade map names.
pub const MAP_MASQ_CFG: &str = "dp_masq_cfg";
pub const MAP_MASQ_FWD: &str = "dp_masq_fwd";
pub const MAP_MASQ_REV: &str = "dp_masq_rev";
pub const MAP_MASQ_PODS: &str = "dp_masq_pods";

/// Masquerade program names (tc egress and ingress on the uplink).
pub const PROG_MASQ_EGRESS: &str = "dp_masq_egress";
pub const PROG_MASQ_INGRESS: &str = "dp_masq_ingress";

/// How many pod CIDRs and cluster CIDRs [`MasqConfig`] holds (a bounded loop in the program).
pub const MASQ_MAX_CIDRS: usize = 4;

/// Value of `dp_masq_cfg[0]`, written by the agent. Addresses and masks in network byte
/// order (as the packet carries them); the port range in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MasqConfig {
    /// [`MASQ_LAYOUT_VERSION`] of the agent that wrote it; 0 = not configured (the
    /// programs then pass every packet untouched).
    pub layout_version: u32,
    /// The node's address: the source of masqueraded packets.
    pub node_addr: u32,
    /// The uplink the programs are attached to (for `status` and `cleanup`).
    pub uplink_ifindex: u32,
    /// First and last port of the masquerade range (inclusive, host byte order).
    pub port_min: u16,
    pub port_max: u16,
    /// How many entries of `pod_nets`/`pod_masks` and `cluster_nets`/`cluster_masks` are used.
    pub pod_count: u32,
    pub cluster_count: u32,
    pub pod_nets: [u32; MASQ_MAX_CIDRS],
    pub pod_masks: [u32; MASQ_MAX_CIDRS],
    pub cluster_nets: [u32; MASQ_MAX_CIDRS],
    pub cluster_masks: [u32; MASQ_MAX_CIDRS],
}

/// A flow as the packet carries it (network byte order): key of `dp_masq_fwd` (pod ->
/// external, before translation) and of `dp_masq_rev` (external -> node, as the reply
/// arrives).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// IP protocol number ([`PROTO_TCP`] or [`PROTO_UDP`]).
    pub proto: u8,
    /// Explicit padding to 16 bytes; always 0.
    pub pad: [u8; 3],
}

/// An address and port (network byte order): value of `dp_masq_fwd` (the node's address
/// and the allocated port) and of `dp_masq_rev` (the pod's address and port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatEndpoint {
    pub addr: u32,
    pub port: u16,
    /// Explicit padding to 8 bytes; always 0.
    pub pad: u16,
}

/// Value of `dp_masq_fwd`/`dp_masq_rev` in layout 2: layout 1's [`NatEndpoint`] with a
/// field appended (appended, so the programs' reads of the endpoint work on both sizes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatEntry {
    pub ep: NatEndpoint,
    /// When the program made the translation, in seconds of `bpf_ktime_get_ns` (time
    /// since boot, wrapping after 136 years); 0 for an entry migrated from layout 1.
    pub created_s: u32,
}

// ---------------------------------------------------------------------------------------
// Socket acceleration: sock_ops + sockhash + sk_msg (incident C in shared/DESIGN.md). These
// maps are pinned next to the socket-LB maps (`maps/`), vouched for by the same `dp_meta`.

/// Map names.
pub const MAP_SOCKHASH: &str = "dp_sockhash";
pub const MAP_ACCEL: &str = "dp_accel";
pub const MAP_ACCEL_STATS: &str = "dp_accel_stats";

/// Program names: `dp_sockops` on the cgroup, `dp_skmsg` on `dp_sockhash`.
pub const PROG_SOCKOPS: &str = "dp_sockops";
pub const PROG_SKMSG: &str = "dp_skmsg";

/// Address families as the kernel numbers them (`AF_INET`, `AF_INET6`).
pub const FAMILY_INET: u32 = 2;
pub const FAMILY_INET6: u32 = 10;

/// Key of `dp_sockhash`: a TCP connection as one of its ends sees it (its own address and
/// port first). The peer's key is the same tuple reversed, which is what `dp_skmsg` looks
/// up. Keys carry no network namespace: two connections with the same tuple in two
/// namespaces collide (see DESIGN.md, incident C).
///
/// Every field is a `u32`, so there is no padding at all. Addresses in network byte order;
/// an IPv4 address is `addr[0]` with `addr[1..4]` zero (IPv4-mapped IPv6 sockets are keyed
/// as IPv4). Ports in host byte order in the low 16 bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockKey {
    /// [`FAMILY_INET`] or [`FAMILY_INET6`].
    pub family: u32,
    /// This end's address.
    pub src_addr: [u32; 4],
    /// The peer's address.
    pub dst_addr: [u32; 4],
    /// This end's port.
    pub src_port: u32,
    /// The peer's port.
    pub dst_port: u32,
}

impl SockKey {
    /// The key the peer socket computes for itself.
    pub const fn reversed(&self) -> SockKey {
        SockKey {
            family: self.family,
            src_addr: self.dst_addr,
            dst_addr: self.src_addr,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

/// Value width of `dp_sockhash`: 8 bytes, so that a user-space lookup returns the socket's
/// cookie (a 4-byte value would not: the kernel only returns cookies in 8-byte values).
pub const SOCKHASH_VALUE_SIZE: u32 = 8;

/// How many accelerated IPv4 prefixes [`AccelConfig`] holds (a bounded loop in the program).
pub const ACCEL_MAX_CIDRS: usize = 8;

/// `AccelConfig::insert_flags` values: the `flags` of `bpf_sock_hash_update`.
pub const INSERT_ANY: u32 = 0;
/// `BPF_NOEXIST`: only the `sockmap-noexist` mutant uses it (incident C).
pub const INSERT_NOEXIST: u32 = 1;

/// Value of `dp_accel[0]`, written by the agent: which connections are accelerated. A TCP
/// connection is, when both its addresses fall in one of the prefixes (e.g. the node's
/// address/32 and the node's pod CIDR). IPv4 only. `count` 0 = nothing is accelerated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AccelConfig {
    /// How many entries of `nets`/`masks` are used.
    pub count: u32,
    /// [`INSERT_ANY`] (replace a key that exists) or [`INSERT_NOEXIST`] (the mutant).
    pub insert_flags: u32,
    /// Network addresses and masks, network byte order.
    pub nets: [u32; ACCEL_MAX_CIDRS],
    pub masks: [u32; ACCEL_MAX_CIDRS],
}

/// Counters in `dp_accel_stats` (a per-CPU array of `u64`; user space sums the CPUs).
pub const STAT_INSERT_OK: u32 = 0;
/// `bpf_sock_hash_update` failed (EEXIST under the mutant).
pub const STAT_INSERT_FAILED: u32 = 1;
/// `dp_skmsg` ran (once per `sendmsg` on an accelerated socket).
pub const STAT_MSG: u32 = 2;
/// ... and redirected the message to the peer socket found under the reversed key.
pub const STAT_MSG_REDIRECTED: u32 = 3;
/// ... or found no peer and let the message go through TCP.
pub const STAT_MSG_PASSED: u32 = 4;
/// Bytes in redirected messages.
pub const STAT_BYTES_REDIRECTED: u32 = 5;
/// Established callbacks that were in scope (both addresses accelerated).
pub const STAT_ESTABLISHED: u32 = 6;
/// Number of counters (`max_entries` of `dp_accel_stats`).
pub const STAT_COUNT: u32 = 8;

// ---------------------------------------------------------------------------------------
// Pod networking (issue 18): `dp_from_cont` on every pod's host veth, `dp_from_ovl` on the
// VXLAN device. Own object (`pods`), own pins (`<bpffs>/pods/maps/`), own layout version
// (in `dp_pods_cfg`). Byte layouts are documented in datapath/README.md ("Pod networking").

/// Version of the pod maps' layout (stored in [`PodsConfig::layout_version`]).
pub const PODS_LAYOUT_VERSION: u32 = 1;

pub const MAP_ENDPOINTS: &str = "dp_endpoints";
pub const MAP_IPCACHE: &str = "dp_ipcache";
pub const MAP_PODS_CFG: &str = "dp_pods_cfg";

pub const PROG_FROM_CONT: &str = "dp_from_cont";
pub const PROG_FROM_OVL: &str = "dp_from_ovl";

/// [`PodsConfig::routing`] values.
pub const ROUTING_NATIVE: u32 = 1;
pub const ROUTING_VXLAN: u32 = 2;
/// The VXLAN network identifier of pod traffic.
pub const POD_VNI: u32 = 2;

/// Value of `dp_endpoints` (key: the pod's IPv4 address as a `u32` in network byte order).
/// 20 bytes, no padding: ifindex at 0, flags at 4, pod MAC at 8, host MAC at 14.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointInfo {
    /// ifindex of the pod's host veth (`lxc...`).
    pub ifindex: u32,
    /// Reserved; always 0.
    pub flags: u32,
    /// MAC of the pod's `eth0`.
    pub pod_mac: [u8; 6],
    /// MAC of the host veth: what the pod resolves its gateway to.
    pub host_mac: [u8; 6],
}

/// Value of `dp_ipcache` (key: a remote pod's IPv4 address, `u32`, network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpcacheEntry {
    /// The node that holds the pod (its underlay address, the tunnel endpoint), network
    /// byte order.
    pub node_addr: u32,
    /// Reserved; always 0 (explicit padding to 8 bytes).
    pub flags: u32,
}

/// Value of `dp_pods_cfg[0]`, written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PodsConfig {
    /// [`PODS_LAYOUT_VERSION`]; 0 = not configured (the programs pass everything).
    pub layout_version: u32,
    /// [`ROUTING_NATIVE`] or [`ROUTING_VXLAN`].
    pub routing: u32,
    /// ifindex of `dp_vxlan` (0 in native mode).
    pub vxlan_ifindex: u32,
    /// VNI of encapsulated pod traffic ([`POD_VNI`]).
    pub vni: u32,
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: all of these are #[repr(C)], contain only integers and have no implicit
    // padding (see the explicit `pad` fields), so every bit pattern is valid.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for RevNatKey {}
    unsafe impl aya::Pod for RevNatValue {}
    unsafe impl aya::Pod for Meta {}
    unsafe impl aya::Pod for MasqConfig {}
    unsafe impl aya::Pod for NatKey {}
    unsafe impl aya::Pod for NatEndpoint {}
    unsafe impl aya::Pod for NatEntry {}
    unsafe impl aya::Pod for SockKey {}
    unsafe impl aya::Pod for AccelConfig {}
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for IpcacheEntry {}
    unsafe impl aya::Pod for PodsConfig {}
}

// Compile-time checks that the sizes are what the comments say (no implicit padding).
const _: () = {
    assert!(core::mem::size_of::<ServiceKey>() == 8);
    assert!(core::mem::size_of::<ServiceValue>() == 8);
    assert!(core::mem::size_of::<SlotKey>() == 8);
    assert!(core::mem::size_of::<Backend>() == 8);
    assert!(core::mem::size_of::<RevNatKey>() == 16);
    assert!(core::mem::size_of::<RevNatValue>() == 8);
    assert!(core::mem::size_of::<Meta>() == 8);
    assert!(core::mem::size_of::<MasqConfig>() == 24 + 16 * MASQ_MAX_CIDRS);
    assert!(core::mem::size_of::<NatKey>() == 16);
    assert!(core::mem::size_of::<NatEndpoint>() == 8);
    assert!(core::mem::size_of::<NatEntry>() == 12);
    assert!(core::mem::size_of::<SockKey>() == 44);
    assert!(core::mem::size_of::<AccelConfig>() == 8 + 8 * ACCEL_MAX_CIDRS);
    assert!(core::mem::size_of::<EndpointInfo>() == 20);
    assert!(core::mem::size_of::<IpcacheEntry>() == 8);
    assert!(core::mem::size_of::<PodsConfig>() == 16);
};
