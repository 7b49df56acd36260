//! Socket-level load balancing on cgroup v2 hooks (as Cilium's bpf_sock).
//!
//! `connect4` and `sendmsg4` rewrite a destination that is a service address into one of
//! its backends and record the translation in `dp_revnat`, keyed by socket cookie and
//! backend; `recvmsg4` and `getpeername4` use that record so the application keeps seeing
//! the service address. All maps are created, sized and pinned by the agent.
#![no_std]
#![no_main]

// sock_ops + sk_msg socket acceleration (incident C); its programs and maps are part of
// this object.
mod sockmap;

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_set_retval},
    macros::{cgroup_sock_addr, map},
    maps::{HashMap, LruHashMap},
    programs::SockAddrContext,
    EbpfContext as _,
};
use datapath_common::{
    Backend, RevNatKey, RevNatValue, ServiceKey, ServiceValue, SlotKey,
    MUTATE_NO_GETPEERNAME_REVNAT, MUTATE_NO_RECVMSG_REVNAT, PROTO_TCP, PROTO_UDP,
};

// Placeholder sizes: the agent sets every map's max_entries at load time.
#[map(name = "dp_services")]
static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(1, 0);
#[map(name = "dp_slots")]
static SLOTS: HashMap<SlotKey, u32> = HashMap::with_max_entries(1, 0);
#[map(name = "dp_backends")]
static BACKENDS: HashMap<u32, Backend> = HashMap::with_max_entries(1, 0);
#[map(name = "dp_revnat")]
static REVNAT: LruHashMap<RevNatKey, RevNatValue> = LruHashMap::with_max_entries(1, 0);

/// Program return values for cgroup sock_addr hooks.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;
/// Errno reported to connect()/sendmsg() when a service has no backend.
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub fn dp_connect4(ctx: SockAddrContext) -> i32 {
    match try_translate(&ctx, Hook::Connect) {
        Ok(v) | Err(v) => v,
    }
}

#[cgroup_sock_addr(sendmsg4)]
pub fn dp_sendmsg4(ctx: SockAddrContext) -> i32 {
    match try_translate(&ctx, Hook::Sendmsg) {
        Ok(v) | Err(v) => v,
    }
}

#[cgroup_sock_addr(recvmsg4)]
pub fn dp_recvmsg4(ctx: SockAddrContext) -> i32 {
    // recvmsg4 and getpeername4 must return 1: they can only rewrite, never reject.
    if !mutated(MUTATE_NO_RECVMSG_REVNAT) {
        reverse(&ctx);
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn dp_getpeername4(ctx: SockAddrContext) -> i32 {
    if !mutated(MUTATE_NO_GETPEERNAME_REVNAT) {
        reverse(&ctx);
    }
    ALLOW
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    Connect,
    Sendmsg,
}

/// Service address -> backend. `Ok(ALLOW)` also when the destination is not a service;
/// `Err(REJECT)` when it is one without a usable backend.
#[inline(always)]
fn try_translate(ctx: &SockAddrContext, hook: Hook) -> Result<i32, i32> {
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let sa = unsafe { &mut *ctx.sock_addr };
    let proto = match sa.protocol {
        6 => PROTO_TCP,
        17 => PROTO_UDP,
        _ => return Ok(ALLOW),
    };
    // sendmsg4 only sees unconnected UDP; TCP never reaches it with an address.
    if hook == Hook::Sendmsg && proto != PROTO_UDP {
        return Ok(ALLOW);
    }
    let key = ServiceKey {
        addr: sa.user_ip4,
        // user_port keeps the network-order port in its low 16 bits.
        port: sa.user_port as u16,
        proto,
        pad: 0,
    };
    // SAFETY: the value is copied out at once; the agent updates it with a single write.
    let svc = match unsafe { SERVICES.get(&key) } {
        Some(v) => *v,
        None => return Ok(ALLOW),
    };
    if svc.backend_count == 0 {
        return Err(refuse());
    }
    // SAFETY: a plain helper call with this program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let slot = if proto == PROTO_TCP {
        // SAFETY: a helper without arguments.
        let r = unsafe { bpf_get_prandom_u32() };
        r % svc.backend_count
    } else {
        // The same UDP socket keeps its backend.
        (cookie % u64::from(svc.backend_count)) as u32
    };
    let slot_key = SlotKey {
        service_id: svc.service_id,
        slot,
    };
    // SAFETY: copied out at once.
    let backend_id = match unsafe { SLOTS.get(&slot_key) } {
        Some(id) => *id,
        None => return Err(refuse()),
    };
    // SAFETY: copied out at once.
    let backend = match unsafe { BACKENDS.get(&backend_id) } {
        Some(b) => *b,
        None => return Err(refuse()),
    };
    sa.user_ip4 = backend.addr;
    sa.user_port = u32::from(backend.port);
    let rev_key = RevNatKey {
        cookie,
        addr: backend.addr,
        port: backend.port,
        pad: 0,
    };
    let rev_value = RevNatValue {
        addr: key.addr,
        port: key.port,
        pad: 0,
    };
    // An LRU map: a full map evicts the oldest entry; a failed write only costs the
    // reverse translation of this socket, never the connection.
    let _ = REVNAT.insert(&rev_key, &rev_value, 0);
    Ok(ALLOW)
}

/// Backend -> service address, for sockets that connect4/sendmsg4 translated.
#[inline(always)]
fn reverse(ctx: &SockAddrContext) {
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let sa = unsafe { &mut *ctx.sock_addr };
    // SAFETY: a plain helper call with this program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = RevNatKey {
        cookie,
        addr: sa.user_ip4,
        port: sa.user_port as u16,
        pad: 0,
    };
    // SAFETY: copied out at once.
    if let Some(v) = unsafe { REVNAT.get(&key) } {
        let v = *v;
        sa.user_ip4 = v.addr;
        sa.user_port = u32::from(v.port);
    }
}

/// Whether [`refuse`] may call `bpf_set_retval`: set to 0 by the agent at load time
/// (`EbpfLoader::override_global`) when the kernel lacks the helper. It lives in the frozen
/// `.rodata` map, so the verifier knows its value and never checks the dead call.
#[unsafe(no_mangle)]
static DP_FAST_REFUSE: u32 = 1;

/// Make connect()/sendmsg() fail with ECONNREFUSED (bpf_set_retval, kernel 5.18+); the
/// program then returns 0. Without the helper the kernel reports EPERM.
#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: a plain read of a static; volatile so the compiler keeps the load that the
    // loader's value decides.
    if unsafe { core::ptr::read_volatile(&DP_FAST_REFUSE) } != 0 {
        // SAFETY: a helper that only sets this syscall's return value.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
    }
    REJECT
}

/// The deliberate bugs of a mutant (`datapath_common::MUTATE_*` bits): 0 for the correct
/// datapath. Set by the agent at load time like [`DP_FAST_REFUSE`]; frozen in `.rodata`, so
/// the verifier prunes the branches of the bugs that are off.
#[unsafe(no_mangle)]
static DP_MUTATIONS: u32 = 0;

#[inline(always)]
pub(crate) fn mutated(bit: u32) -> bool {
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
