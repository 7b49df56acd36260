//! Socket acceleration for node <-> local pod TCP (incident C in shared/DESIGN.md).
//!
//! `dp_sockops` (cgroup sock_ops) puts both ends of every established connection whose two
//! addresses are in `dp_accel`'s prefixes into `dp_sockhash`, keyed by the connection as
//! that end sees it. `dp_skmsg` (sk_msg verdict, attached to `dp_sockhash`) redirects every
//! `sendmsg()` of such a socket straight into the peer socket's receive queue (the key
//! reversed), so the payload never crosses the TCP stack. A message whose peer is not in
//! the map goes through TCP as usual: the program always returns SK_PASS.
//!
//! Inserts replace an existing key (`BPF_ANY`): a stale key left by a socket that is gone
//! (or planted from user space) must never keep a new connection out of the map, or the
//! peer's messages would be redirected to the stale socket while this one waits forever.
//! Only the `sockmap-noexist` mutant asks for `BPF_NOEXIST`, through `dp_accel`.

use core::{cell::UnsafeCell, ffi::c_void, ptr::addr_of};

use aya_ebpf::{
    bindings::{bpf_map_def, bpf_map_type::BPF_MAP_TYPE_SOCKHASH, bpf_sock_ops},
    helpers::{bpf_msg_redirect_hash, bpf_sock_hash_update},
    macros::{map, sk_msg, sock_ops},
    maps::{Array, PerCpuArray},
    programs::{SkMsgContext, SockOpsContext},
};
use datapath_common::{
    AccelConfig, SockKey, ACCEL_MAX_CIDRS, FAMILY_INET, FAMILY_INET6, MUTATE_SOCKKEY_PORT_ORDER,
    MUTATE_SOCKOPS_ACTIVE_ONLY, SOCKHASH_VALUE_SIZE, STAT_BYTES_REDIRECTED, STAT_COUNT,
    STAT_ESTABLISHED, STAT_INSERT_FAILED, STAT_INSERT_OK, STAT_MSG, STAT_MSG_PASSED,
    STAT_MSG_REDIRECTED,
};

/// `dp_sockhash`, declared by hand: aya-ebpf's `SockHash` has 4-byte values, and ours are
/// 8 bytes wide so that a user-space lookup returns the socket cookie. The agent creates
/// and pins the real map; this definition is what a load without pins gets.
#[repr(transparent)]
pub struct SockHash8(UnsafeCell<bpf_map_def>);

// SAFETY: the definition is only read by the loader and passed by address to helpers.
unsafe impl Sync for SockHash8 {}

impl SockHash8 {
    const fn new() -> Self {
        Self(UnsafeCell::new(bpf_map_def {
            type_: BPF_MAP_TYPE_SOCKHASH,
            key_size: core::mem::size_of::<SockKey>() as u32,
            value_size: SOCKHASH_VALUE_SIZE,
            // Placeholder: the agent sets max_entries.
            max_entries: 1,
            map_flags: 0,
            id: 0,
            pinning: 0,
        }))
    }

    #[inline(always)]
    fn as_ptr(&self) -> *mut c_void {
        self.0.get().cast()
    }
}

#[map(name = "dp_sockhash")]
static SOCKHASH: SockHash8 = SockHash8::new();
#[map(name = "dp_accel")]
static ACCEL: Array<AccelConfig> = Array::with_max_entries(1, 0);
#[map(name = "dp_accel_stats")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: u32 = 5;
/// `bpf_msg_redirect_hash` flag: into the peer's receive queue.
const BPF_F_INGRESS: u64 = 1;
const SK_PASS: u32 = 1;

#[sock_ops]
pub fn dp_sockops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    let passive_too = !crate::mutated(MUTATE_SOCKOPS_ACTIVE_ONLY);
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
        || (passive_too && op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
    {
        established(ctx.ops);
    }
    // sock_ops return values are ignored for these callbacks; 1 is the convention.
    1
}

#[sk_msg]
pub fn dp_skmsg(ctx: SkMsgContext) -> u32 {
    let md = ctx.msg;
    count(STAT_MSG, 1);
    // SAFETY: the kernel hands the program a valid context; reads are 4-byte ctx loads.
    let key = unsafe {
        key_of(
            rd(addr_of!((*md).family)),
            rd(addr_of!((*md).local_ip4)),
            rd(addr_of!((*md).remote_ip4)),
            addr_of!((*md).local_ip6).cast(),
            addr_of!((*md).remote_ip6).cast(),
            rd(addr_of!((*md).local_port)),
            rd(addr_of!((*md).remote_port)),
        )
    };
    if let Some(key) = key {
        let mut peer = key.reversed();
        // SAFETY: helper call with our context, our map and a key on the stack.
        let verdict = unsafe {
            bpf_msg_redirect_hash(
                md,
                SOCKHASH.as_ptr(),
                (&mut peer as *mut SockKey).cast(),
                BPF_F_INGRESS,
            )
        };
        if verdict as u32 == SK_PASS {
            count(STAT_MSG_REDIRECTED, 1);
            // SAFETY: a 4-byte ctx load.
            count(
                STAT_BYTES_REDIRECTED,
                u64::from(unsafe { rd(addr_of!((*md).size)) }),
            );
            return SK_PASS;
        }
    }
    // No peer in the map: the message takes the TCP path.
    count(STAT_MSG_PASSED, 1);
    SK_PASS
}

#[inline(always)]
fn established(ops: *mut bpf_sock_ops) {
    // SAFETY: copied out at once; the agent writes it with a single update.
    let cfg = match ACCEL.get(0) {
        Some(c) => *c,
        None => return,
    };
    if cfg.count == 0 {
        return;
    }
    // SAFETY: the kernel hands the program a valid context; reads are 4-byte ctx loads.
    let key = unsafe {
        key_of(
            rd(addr_of!((*ops).family)),
            rd(addr_of!((*ops).local_ip4)),
            rd(addr_of!((*ops).remote_ip4)),
            addr_of!((*ops).local_ip6).cast(),
            addr_of!((*ops).remote_ip6).cast(),
            rd(addr_of!((*ops).local_port)),
            rd(addr_of!((*ops).remote_port)),
        )
    };
    let Some(mut key) = key else {
        return;
    };
    if crate::mutated(MUTATE_SOCKKEY_PORT_ORDER) {
        // The bug: the peer's port as the context carries it (network byte order).
        key.dst_port = u32::from((key.dst_port as u16).to_be());
    }
    if key.family != FAMILY_INET
        || !in_nets(key.src_addr[0], &cfg)
        || !in_nets(key.dst_addr[0], &cfg)
    {
        return;
    }
    count(STAT_ESTABLISHED, 1);
    // SAFETY: helper call with our context, our map and a key on the stack.
    let ret = unsafe {
        bpf_sock_hash_update(
            ops,
            SOCKHASH.as_ptr(),
            (&mut key as *mut SockKey).cast(),
            u64::from(cfg.insert_flags),
        )
    };
    count(
        if ret == 0 {
            STAT_INSERT_OK
        } else {
            STAT_INSERT_FAILED
        },
        1,
    );
}

/// A volatile 4-byte read: context fields must be loaded with their own width, and the
/// compiler must not merge two adjacent `u32` loads into one 8-byte load.
#[inline(always)]
unsafe fn rd(p: *const u32) -> u32 {
    core::ptr::read_volatile(p)
}

/// The connection as this end sees it. IPv4-mapped IPv6 sockets are keyed as IPv4, so a
/// dual-stack server and an IPv4 client compute matching keys. `remote_port` holds the
/// network-order port in its upper 16 bits (little-endian hosts); `local_port` is in host
/// order.
#[inline(always)]
unsafe fn key_of(
    family: u32,
    local4: u32,
    remote4: u32,
    local6: *const u32,
    remote6: *const u32,
    local_port: u32,
    remote_port: u32,
) -> Option<SockKey> {
    let mut key = SockKey {
        family: FAMILY_INET,
        src_addr: [0; 4],
        dst_addr: [0; 4],
        src_port: local_port & 0xffff,
        dst_port: u32::from(u16::from_be((remote_port >> 16) as u16)),
    };
    if family == FAMILY_INET {
        key.src_addr[0] = local4;
        key.dst_addr[0] = remote4;
        return Some(key);
    }
    if family != FAMILY_INET6 {
        return None;
    }
    let l = [
        rd(local6),
        rd(local6.add(1)),
        rd(local6.add(2)),
        rd(local6.add(3)),
    ];
    let r = [
        rd(remote6),
        rd(remote6.add(1)),
        rd(remote6.add(2)),
        rd(remote6.add(3)),
    ];
    let mapped = 0xffffu32.to_be();
    if l[0] == 0 && l[1] == 0 && l[2] == mapped && r[0] == 0 && r[1] == 0 && r[2] == mapped {
        key.src_addr[0] = l[3];
        key.dst_addr[0] = r[3];
    } else {
        key.family = FAMILY_INET6;
        key.src_addr = l;
        key.dst_addr = r;
    }
    Some(key)
}

#[inline(always)]
fn in_nets(addr: u32, cfg: &AccelConfig) -> bool {
    let mut i = 0;
    while i < ACCEL_MAX_CIDRS {
        if (i as u32) < cfg.count && addr & cfg.masks[i] == cfg.nets[i] {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn count(index: u32, n: u64) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot: no other program touches it concurrently.
        unsafe { *p += n };
    }
}
