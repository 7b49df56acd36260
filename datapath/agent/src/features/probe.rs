//! The probes: each asks the running kernel for exactly what the datapath does (load a
//! program of a type, create a map of a shape, create a link, call a helper) with tiny
//! hand-written programs, and says how the answer was obtained.
//!
//! Side effects are short-lived and leave nothing: links of pass-through programs (they
//! return 1, "let the operation through") go on the cgroup v2 root and, for tcx, on `lo`
//! (TCX_NEXT); none is pinned, so every object goes when its fd closes, and with the
//! process if it is killed mid-probe. (A cgroup made for the probe could not: an agent
//! SIGKILLed while probing, as the harness's faults do, left it behind.)

use std::{
    io::Read as _,
    os::fd::{AsFd, AsRawFd, OwnedFd},
};

use aya_obj::generated::{bpf_attach_type, bpf_map_type, bpf_prog_type};
use datapath_common::{SockKey, SOCKHASH_VALUE_SIZE};

use super::{Attach, Feature, Helper, MapKind, Probe, Probes, ProgType};
use crate::{
    prereq,
    sys::{self, Insn, SysError},
};

/// Where the kernel's own BTF lives.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// tcx's "continue with the next program" verdict: the probe program changes nothing.
const TCX_NEXT: i32 = -1;

/// Probe every feature; those in `assumed_missing` are reported unavailable unprobed,
/// and so is anything whose [`Feature::needs`] is unavailable.
pub fn probe_all(assumed_missing: &[Feature]) -> Probes {
    let mut ctx = Ctx::default();
    let mut probes = Probes::new();
    for f in Feature::all() {
        let unmet = f
            .needs()
            .into_iter()
            .find(|n| !probes.get(n).is_some_and(|p| p.available));
        let p = if assumed_missing.contains(&f) {
            Probe::missing("assumed missing (--assume-missing), not probed")
        } else if let Some(n) = unmet {
            Probe::missing(format!("not probed: needs {n}, which is unavailable"))
        } else {
            ctx.probe(f)
        };
        probes.insert(f, p);
    }
    probes
}

/// State shared by the probes: the cgroup the probes link to and the link the update probe swaps.
/// Fields drop in order: the link before the cgroup it is on.
#[derive(Default)]
struct Ctx {
    connect4_link: Option<(OwnedFd, OwnedFd)>,
    cgroup: Option<Result<ProbeCgroup, String>>,
}

fn errno_name(e: &SysError) -> String {
    let n = e.errno().unwrap_or(0);
    let name = match n {
        libc::EINVAL => "EINVAL",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::E2BIG => "E2BIG",
        libc::ENOENT => "ENOENT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EBADF => "EBADF",
        libc::ENOMEM => "ENOMEM",
        libc::ENXIO => "ENXIO",
        libc::EEXIST => "EEXIST",
        524 => "ENOTSUPP",
        _ => return format!("errno {n} ({})", e.io_error),
    };
    name.to_string()
}

fn failed(what: &str, e: &SysError) -> Probe {
    Probe::missing(format!("probe failed: {what}: {}", errno_name(e)))
}

fn raw_prog_type(p: ProgType) -> u32 {
    (match p {
        ProgType::CgroupSockAddr => bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        ProgType::SockOps => bpf_prog_type::BPF_PROG_TYPE_SOCK_OPS,
        ProgType::SkMsg => bpf_prog_type::BPF_PROG_TYPE_SK_MSG,
        ProgType::SchedCls => bpf_prog_type::BPF_PROG_TYPE_SCHED_CLS,
    }) as u32
}

fn raw_attach(a: Attach) -> u32 {
    (match a {
        Attach::Connect4 => bpf_attach_type::BPF_CGROUP_INET4_CONNECT,
        Attach::Sendmsg4 => bpf_attach_type::BPF_CGROUP_UDP4_SENDMSG,
        Attach::Recvmsg4 => bpf_attach_type::BPF_CGROUP_UDP4_RECVMSG,
        Attach::Getpeername4 => bpf_attach_type::BPF_CGROUP_INET4_GETPEERNAME,
        Attach::SockOps => bpf_attach_type::BPF_CGROUP_SOCK_OPS,
        Attach::SkMsgVerdict => bpf_attach_type::BPF_SK_MSG_VERDICT,
    }) as u32
}

/// The expected attach type a program type is loaded with (sock_addr and sk_msg
/// programs must name one; the probes of a program type use the datapath's first).
fn default_attach(p: ProgType) -> u32 {
    match p {
        ProgType::CgroupSockAddr => raw_attach(Attach::Connect4),
        ProgType::SkMsg => raw_attach(Attach::SkMsgVerdict),
        ProgType::SockOps | ProgType::SchedCls => 0,
    }
}

/// A program that returns `ret`: 1 lets a socket operation through (sock_addr, sock_ops,
/// SK_PASS), TCX_NEXT passes a packet on.
fn trivial(p: ProgType, expected_attach: u32, ret: i32) -> sys::Result<OwnedFd> {
    sys::prog_load(
        raw_prog_type(p),
        expected_attach,
        &[Insn::mov_r0(ret), Insn::EXIT],
    )
}

fn map_shape(m: MapKind) -> (u32, u32, u32) {
    let t = |t: bpf_map_type| t as u32;
    match m {
        MapKind::Hash => (t(bpf_map_type::BPF_MAP_TYPE_HASH), 4, 4),
        MapKind::Array => (t(bpf_map_type::BPF_MAP_TYPE_ARRAY), 4, 4),
        MapKind::PercpuArray => (t(bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY), 4, 8),
        MapKind::LruHash => (t(bpf_map_type::BPF_MAP_TYPE_LRU_HASH), 4, 4),
        // The datapath's own shape: 8-byte values, so that a lookup returns the cookie.
        MapKind::Sockhash => (
            t(bpf_map_type::BPF_MAP_TYPE_SOCKHASH),
            std::mem::size_of::<SockKey>() as u32,
            SOCKHASH_VALUE_SIZE,
        ),
    }
}

fn create_map(m: MapKind) -> sys::Result<OwnedFd> {
    let (t, k, v) = map_shape(m);
    sys::map_create(t, k, v, 1, "dp_probe")
}

impl Ctx {
    fn probe(&mut self, f: Feature) -> Probe {
        match f {
            Feature::ProgType(p) => match trivial(p, default_attach(p), 0) {
                Ok(_) => Probe::ok(format!("probe: BPF_PROG_LOAD {} ok", p.name())),
                Err(e) => failed(&format!("BPF_PROG_LOAD {}", p.name()), &e),
            },
            Feature::MapType(m) => {
                let (_, k, v) = map_shape(m);
                match create_map(m) {
                    Ok(_) => Probe::ok(format!(
                        "probe: BPF_MAP_CREATE {} (key {k}, value {v}) ok",
                        m.name()
                    )),
                    Err(e) => failed(&format!("BPF_MAP_CREATE {}", m.name()), &e),
                }
            }
            Feature::CgroupLink => self.cgroup_link(),
            Feature::LinkUpdate => self.link_update(),
            Feature::Attach(Attach::SkMsgVerdict) => sk_msg_attach(),
            Feature::Attach(a) => self.cgroup_attach(a),
            Feature::Tcx => tcx(),
            Feature::Helper(p, h) => helper(p, h),
            Feature::BtfVmlinux => btf(),
        }
    }

    fn probe_cgroup(&mut self) -> Result<&ProbeCgroup, String> {
        self.cgroup
            .get_or_insert_with(ProbeCgroup::create)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// A connect4 program linked to the cgroup v2 root (kept for the update probe).
    fn cgroup_link(&mut self) -> Probe {
        let attach = raw_attach(Attach::Connect4);
        let prog = match trivial(ProgType::CgroupSockAddr, attach, 1) {
            Ok(p) => p,
            Err(e) => return failed("BPF_PROG_LOAD cgroup_sock_addr (connect4)", &e),
        };
        let cg = match self.probe_cgroup() {
            Ok(cg) => cg,
            Err(why) => return Probe::missing(format!("not probed: {why}")),
        };
        match sys::link_create(prog.as_fd(), cg.fd.as_raw_fd() as u32, attach) {
            Ok(link) => {
                self.connect4_link = Some((link, prog));
                Probe::ok("probe: BPF_LINK_CREATE connect4 on the cgroup v2 root ok")
            }
            Err(e) => failed("BPF_LINK_CREATE connect4 on the cgroup v2 root", &e),
        }
    }

    /// Swap the probe link's program, as a restart does (`BPF_F_REPLACE`).
    fn link_update(&mut self) -> Probe {
        let Some((link, old)) = &self.connect4_link else {
            return Probe::missing("not probed: no probe link");
        };
        let new = match trivial(ProgType::CgroupSockAddr, raw_attach(Attach::Connect4), 1) {
            Ok(p) => p,
            Err(e) => return failed("BPF_PROG_LOAD cgroup_sock_addr (connect4)", &e),
        };
        match sys::link_update(link.as_fd(), new.as_fd(), old.as_fd()) {
            Ok(()) => Probe::ok("probe: BPF_LINK_UPDATE with BPF_F_REPLACE on the probe link ok"),
            Err(e) => failed("BPF_LINK_UPDATE with BPF_F_REPLACE", &e),
        }
    }

    /// Load a program for this attach type; link it to the cgroup v2 root when links work.
    fn cgroup_attach(&mut self, a: Attach) -> Probe {
        let p = a.prog_type();
        let attach = raw_attach(a);
        let expected = if p == ProgType::CgroupSockAddr {
            attach
        } else {
            0
        };
        let prog = match trivial(p, expected, 1) {
            Ok(fd) => fd,
            Err(e) => {
                return failed(
                    &format!(
                        "BPF_PROG_LOAD {} (expected_attach_type {})",
                        p.name(),
                        a.name()
                    ),
                    &e,
                )
            }
        };
        let loaded = format!(
            "BPF_PROG_LOAD {} (expected_attach_type {})",
            p.name(),
            a.name()
        );
        if self.connect4_link.is_none() {
            return Probe::ok(format!(
                "probe: {loaded} ok (no cgroup link to attach it with)"
            ));
        }
        let cg = match self.probe_cgroup() {
            Ok(cg) => cg,
            Err(why) => return Probe::ok(format!("probe: {loaded} ok; not attached: {why}")),
        };
        match sys::link_create(prog.as_fd(), cg.fd.as_raw_fd() as u32, attach) {
            Ok(_) => Probe::ok(format!(
                "probe: {loaded} + BPF_LINK_CREATE on the cgroup v2 root ok"
            )),
            Err(e) => failed(&format!("{loaded} ok, BPF_LINK_CREATE"), &e),
        }
    }
}

/// An sk_msg program attached to a new sockhash of the datapath's shape.
fn sk_msg_attach() -> Probe {
    let attach = raw_attach(Attach::SkMsgVerdict);
    let prog = match trivial(ProgType::SkMsg, attach, 1) {
        Ok(p) => p,
        Err(e) => return failed("BPF_PROG_LOAD sk_msg", &e),
    };
    let map = match create_map(MapKind::Sockhash) {
        Ok(m) => m,
        Err(e) => return failed("BPF_MAP_CREATE sockhash", &e),
    };
    match sys::prog_attach(map.as_fd(), prog.as_fd(), attach, 0) {
        Ok(()) => Probe::ok("probe: BPF_PROG_ATTACH sk_msg_verdict to a new sockhash ok"),
        Err(e) => failed("BPF_PROG_ATTACH sk_msg_verdict to a new sockhash", &e),
    }
}

/// A pass-through sched_cls program as a tcx ingress link on `lo`, released at once.
fn tcx() -> Probe {
    let Some(lo) = crate::masq::ifindex("lo") else {
        return Probe::missing("not probed: no `lo` in this network namespace");
    };
    let prog = match trivial(ProgType::SchedCls, 0, TCX_NEXT) {
        Ok(p) => p,
        Err(e) => return failed("BPF_PROG_LOAD sched_cls", &e),
    };
    let attach = bpf_attach_type::BPF_TCX_INGRESS as u32;
    match sys::link_create(prog.as_fd(), lo, attach) {
        Ok(_) => Probe::ok("probe: BPF_LINK_CREATE tcx_ingress on lo (pass-through program) ok"),
        Err(e) => failed("BPF_LINK_CREATE tcx_ingress on lo", &e),
    }
}

/// Verifier messages that mean "this helper does not exist for this program type"
/// (libbpf's helper probe reads the same ones).
const UNKNOWN_HELPER: [&str; 3] = [
    "invalid func ",
    "unknown func ",
    "program of this type cannot use helper ",
];

/// `call helper; exit` from a program of type `p`: the verifier names an unknown helper
/// before it looks at arguments, so any other verdict (even a rejection for the
/// arguments) means the helper is there.
fn helper(p: ProgType, h: Helper) -> Probe {
    helper_by_id(p, h.id(), h.name())
}

pub(super) fn helper_by_id(p: ProgType, id: u32, name: &str) -> Probe {
    let call = Insn {
        code: 0x85, // BPF_JMP | BPF_CALL
        regs: 0,
        off: 0,
        imm: id as i32,
    };
    let mut log = vec![0u8; 4096];
    let what = format!("a call to {name} from {}", p.name());
    match sys::prog_load_logged(
        raw_prog_type(p),
        default_attach(p),
        &[call, Insn::EXIT],
        &mut log,
    ) {
        Ok(_) => Probe::ok(format!("probe: the verifier accepts {what}")),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            match text
                .lines()
                .find(|l| UNKNOWN_HELPER.iter().any(|m| l.contains(m)))
            {
                Some(line) => Probe::missing(format!("probe: the verifier refuses {what}: {}", line.trim())),
                None if text.trim().is_empty() => failed(&format!("BPF_PROG_LOAD with {what} (no verifier log)"), &e),
                None => Probe::ok(format!(
                    "probe: the verifier knows {name} for {} (it rejected only the probe's arguments)",
                    p.name()
                )),
            }
        }
    }
}

/// `/sys/kernel/btf/vmlinux` exists and starts with a sane BTF header.
fn btf() -> Probe {
    let mut file = match std::fs::File::open(VMLINUX_BTF) {
        Ok(f) => f,
        Err(e) => return Probe::missing(format!("probe: cannot open {VMLINUX_BTF}: {e}")),
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut hdr = [0u8; 24];
    if let Err(e) = file.read_exact(&mut hdr) {
        return Probe::missing(format!(
            "probe: cannot read the header of {VMLINUX_BTF}: {e}"
        ));
    }
    match check_btf_header(&hdr, size) {
        Ok(()) => Probe::ok(format!(
            "probe: {VMLINUX_BTF} has a valid BTF header ({size} bytes)"
        )),
        Err(why) => Probe::missing(format!("probe: {VMLINUX_BTF}: {why}")),
    }
}

/// `struct btf_header`: magic 0xeB9F, version 1, then the type and string sections, which
/// must fit in the file.
pub(super) fn check_btf_header(h: &[u8; 24], size: u64) -> Result<(), String> {
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let magic = u16::from_le_bytes([h[0], h[1]]);
    if magic != 0xeb9f {
        return Err(format!("bad magic {magic:#x} (want 0xeb9f, little-endian)"));
    }
    if h[2] != 1 {
        return Err(format!("unknown BTF version {}", h[2]));
    }
    let hdr_len = u64::from(u32_at(4));
    let end = |off: usize, len: usize| u64::from(u32_at(off)) + u64::from(u32_at(len));
    let need = hdr_len + end(8, 12).max(end(16, 20));
    if size != 0 && need > size {
        return Err(format!("sections end at byte {need}, the file has {size}"));
    }
    Ok(())
}

/// The cgroup the probes link to: the first cgroup v2 mount's root, opened (nothing is
/// created in it).
struct ProbeCgroup {
    fd: OwnedFd,
}

impl ProbeCgroup {
    fn create() -> Result<ProbeCgroup, String> {
        let mounts = prereq::cgroup2_mounts().map_err(|e| e.to_string())?;
        let root = mounts
            .first()
            .ok_or("no cgroup v2 mount in /proc/mounts to link the probes to")?;
        let f = std::fs::File::open(root)
            .map_err(|e| format!("cannot open the cgroup {}: {e}", root.display()))?;
        Ok(ProbeCgroup { fd: f.into() })
    }
}
