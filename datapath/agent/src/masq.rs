//! The BPF masquerade on the node's uplink (`datapathd run --uplink ...`; the programs are
//! in datapath/ebpf/src/masq.rs).
//!
//! * Two tc programs: `dp_masq_egress` (pod CIDR -> outside every cluster CIDR: source
//!   becomes the node's address and a port of `--masq-ports`) and `dp_masq_ingress` (the
//!   reverse, then `bpf_redirect_neigh` to the pod's host-side interface, bypassing
//!   netfilter). The *program* allocates ports, collision-free: it claims the reply tuple in
//!   `dp_masq_rev` with `BPF_NOEXIST`. Both NAT maps are LRU hashes (garbage collection by
//!   eviction; no sweep).
//! * Attachment: tcx links (kernel 6.6+) pinned at `<bpffs>/masq/links/{egress,ingress}`,
//!   whose program is replaced atomically on restart (`BPF_LINK_UPDATE`); or, on older
//!   kernels (`--tc-attach clsact`), classic clsact filters at a fixed priority and handle
//!   ([`TC_PRIORITY`], [`TC_HANDLE`]) that a restart replaces in place (netlink without
//!   NLM_F_EXCL). Either way the attachment outlives the agent, like the cgroup links.
//! * Maps pinned at `<bpffs>/masq/maps/<name>`, reused across restarts while their shape
//!   matches, so live flows keep their translation; the NAT maps of another layout or
//!   capacity are migrated (masq_migrate.rs), never dropped.
//! * Pods: the agent scans the node's routes for `/32` routes through interfaces named
//!   `<prefix>*` (how pods are wired: the pod's address routed to its host-side veth) and
//!   keeps `dp_masq_pods` (pod address -> ifindex) equal to them.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fmt,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    str::FromStr,
};

use aya::{
    programs::{tc, SchedClassifier, TcAttachType},
    Ebpf, EbpfLoader,
};
use datapath_common::{
    MasqConfig, GLOBAL_MUTATIONS, MAP_MASQ_CFG, MAP_MASQ_FWD, MAP_MASQ_PODS, MAP_MASQ_REV,
    MASQ_MAX_CIDRS, PROG_MASQ_EGRESS, PROG_MASQ_INGRESS,
};
use serde::Serialize;
use tracing::{info, warn};

use crate::{
    layout,
    maps::{BpfMap, MapError},
    masq_migrate::{self, MigrateError, NAT_MAPS},
    tc_attach::{self, TcAttachError},
};

/// The masquerade object built by build.rs (the eBPF crate's `masq` bin); empty with
/// AYA_BUILD_SKIP=1.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/masq"));

/// clsact filter priority and handle of our programs (fixed, so a restart finds and
/// replaces them).
pub const TC_PRIORITY: u16 = 1;
pub const TC_HANDLE: u32 = 0xd0;

#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    #[error("this datapathd embeds no masquerade object (built with AYA_BUILD_SKIP=1)")]
    EmptyObject,
    #[error("uplink interface `{0}` does not exist in this network namespace")]
    NoUplink(String),
    #[error("--node-addr is required with --uplink")]
    NoNodeAddr,
    #[error("at least one --pod-cidr is required with --uplink")]
    NoPodCidr,
    #[error("at most {MASQ_MAX_CIDRS} {what} are supported, got {got}")]
    TooManyCidrs { what: &'static str, got: usize },
    #[error("the tc attach mode must be resolved by the feature probes before the masquerade starts (--tc-attach auto)")]
    UnresolvedMode,
    #[error("cannot create {path}")]
    Dirs {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("removing pin {path}")]
    Unpin {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the masquerade object")]
    Object(#[source] aya::EbpfError),
    #[error("the masquerade object has no program {0}")]
    NoProgram(&'static str),
    #[error("{what} ({program})")]
    Program {
        what: &'static str,
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(transparent)]
    Tc(#[from] TcAttachError),
    #[error(transparent)]
    Map(#[from] MapError),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error("reading {path}")]
    Routes {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// An IPv4 CIDR (`10.244.0.0/16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Cidr {
    fn mask(self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.len))
        }
    }

    /// Network and mask as the packet carries them (network byte order in memory).
    pub(crate) fn raw(self) -> (u32, u32) {
        let mask = self.mask();
        let net = u32::from(self.addr) & mask;
        (net.to_be(), mask.to_be())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not a CIDR (expected A.B.C.D/LEN)"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("`{a}` is not an IPv4 address"))?;
        let len: u8 = l
            .parse()
            .ok()
            .filter(|&n| n <= 32)
            .ok_or_else(|| format!("`{l}` is not a prefix length (0-32)"))?;
        Ok(Cidr { addr, len })
    }
}

/// A port range `MIN-MAX` (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl Default for PortRange {
    /// Above Linux's default ephemeral range (32768-60999), so the node's own sockets
    /// never take a port the masquerade hands out.
    fn default() -> Self {
        Self {
            min: 61000,
            max: 65535,
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("`{s}` is not a port range (expected MIN-MAX, 1 <= MIN <= MAX <= 65535)");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let min: u16 = a.parse().map_err(|_| bad())?;
        let max: u16 = b.parse().map_err(|_| bad())?;
        if min == 0 || min > max {
            return Err(bad());
        }
        Ok(Self { min, max })
    }
}

/// How the tc programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcMode {
    /// tcx where the kernel has it (probed), clsact otherwise.
    Auto,
    Tcx,
    Clsact,
}

impl FromStr for TcMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "tcx" => Ok(Self::Tcx),
            "clsact" => Ok(Self::Clsact),
            _ => Err(format!(
                "unknown tc attach mode `{s}`; valid: auto, tcx, clsact"
            )),
        }
    }
}

#[derive(Clone, Debug)]
pub struct MasqOptions {
    pub uplink: String,
    pub node_addr: Ipv4Addr,
    pub pod_cidrs: Vec<Cidr>,
    pub cluster_cidrs: Vec<Cidr>,
    pub ports: PortRange,
    pub pod_prefix: String,
    pub mode: TcMode,
    /// Capacity of each NAT map (LRU).
    pub max_entries: u32,
    /// `DP_MUTATIONS` of the object (a mutant's deliberate bugs; 0 for the correct one).
    pub mutations: u32,
    /// The NAT maps' layout (`run --layout`; see `datapath_common::MASQ_LAYOUT_VERSION`).
    pub layout: u32,
    /// The mutant upgrade-recreates-maps: a layout change starts with empty NAT maps.
    pub recreate_maps: bool,
}

/// Where the masquerade keeps its pins: `<bpffs>/masq/{maps,links}/`.
pub fn dir(bpffs: &Path) -> PathBuf {
    bpffs.join("masq")
}

pub fn map_pin(bpffs: &Path, map: &str) -> PathBuf {
    dir(bpffs).join("maps").join(map)
}

fn link_pin(bpffs: &Path, dir_name: &str) -> PathBuf {
    dir(bpffs).join("links").join(dir_name)
}

const DIRECTIONS: [(TcAttachType, &str, &str); 2] = [
    (TcAttachType::Egress, "egress", PROG_MASQ_EGRESS),
    (TcAttachType::Ingress, "ingress", PROG_MASQ_INGRESS),
];

/// The shapes of the maps that do not depend on the layout: (name, type, key size, value
/// size, max entries). The NAT maps' are masq_migrate::spec.
fn map_shapes(max: u32) -> [(&'static str, u32, u32, u32, u32); 2] {
    use aya_obj::generated::bpf_map_type::*;
    [
        (
            MAP_MASQ_CFG,
            BPF_MAP_TYPE_ARRAY as u32,
            4,
            std::mem::size_of::<MasqConfig>() as u32,
            1,
        ),
        (MAP_MASQ_PODS, BPF_MAP_TYPE_HASH as u32, 4, 4, max),
    ]
}

pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a NUL-terminated string; the call only reads it.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

pub fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as the call requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(s.to_string_lossy().into_owned())
}

/// A running masquerade: the loaded object (kept for the agent's lifetime) and the pods map.
pub struct Masq {
    _ebpf: Ebpf,
    pods: BpfMap,
    prefix: String,
    pub mode: TcMode,
}

pub fn start(bpffs: &Path, opts: &MasqOptions) -> Result<Masq, MasqError> {
    if OBJECT.is_empty() {
        return Err(MasqError::EmptyObject);
    }
    let uplink_ifindex =
        ifindex(&opts.uplink).ok_or_else(|| MasqError::NoUplink(opts.uplink.clone()))?;
    if opts.pod_cidrs.is_empty() {
        return Err(MasqError::NoPodCidr);
    }
    for (what, v) in [
        ("pod CIDRs", &opts.pod_cidrs),
        ("cluster CIDRs", &opts.cluster_cidrs),
    ] {
        if v.len() > MASQ_MAX_CIDRS {
            return Err(MasqError::TooManyCidrs { what, got: v.len() });
        }
    }
    // `run` resolved auto from the probes (features.rs), and refused tcx without tcx.
    let mode = match opts.mode {
        TcMode::Auto => return Err(MasqError::UnresolvedMode),
        m => m,
    };

    for sub in ["maps", "links"] {
        let d = dir(bpffs).join(sub);
        std::fs::create_dir_all(&d).map_err(|source| MasqError::Dirs {
            path: d.display().to_string(),
            source,
        })?;
    }
    prepare_pins(bpffs, opts.max_entries)?;
    masq_migrate::preflight(&dir(bpffs).join("maps"), opts.layout, opts.max_entries)?;
    let pending = masq_migrate::prepare(
        &dir(bpffs).join("maps"),
        opts.layout,
        opts.max_entries,
        opts.recreate_maps,
    )?;
    // Which network namespace the uplink is in (see `same_netns`).
    let marker = dir(bpffs).join(format!("netns-{}", crate::netsync::netns_ino()));
    std::fs::create_dir_all(&marker).map_err(|source| MasqError::Dirs {
        path: marker.display().to_string(),
        source,
    })?;

    let mut loader = EbpfLoader::new();
    let mut pins: Vec<(&str, PathBuf)> = map_shapes(opts.max_entries)
        .iter()
        .map(|s| (s.0, map_pin(bpffs, s.0)))
        .collect();
    for (name, _, _, _, max) in map_shapes(opts.max_entries) {
        loader.map_max_entries(name, max);
    }
    // Pinned by prepare in the layout's shape (the object's own definition is layout 2's).
    for name in NAT_MAPS {
        pins.push((name, pending.pin_path(name, map_pin(bpffs, name))));
    }
    for (name, pin) in &pins {
        loader.map_pin_path(name, pin.as_path());
    }
    if opts.mutations != 0 {
        loader.override_global(GLOBAL_MUTATIONS, &opts.mutations, true);
    }
    let mut ebpf = loader.load(OBJECT).map_err(MasqError::Object)?;

    // Configure before attaching: an unconfigured program passes everything.
    let cfg = BpfMap::open_pin(&map_pin(bpffs, MAP_MASQ_CFG))?;
    cfg.put(&0u32, &config(opts, uplink_ifindex))?;
    let pods = BpfMap::open_pin(&map_pin(bpffs, MAP_MASQ_PODS))?;

    for (attach_type, dir_name, name) in DIRECTIONS {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(MasqError::NoProgram(name))?
            .try_into()
            .map_err(|source| MasqError::Program {
                what: "not a tc program",
                program: name,
                source,
            })?;
        prog.load().map_err(|source| MasqError::Program {
            what: "loading",
            program: name,
            source,
        })?;
        let hook = tc_attach::Hook {
            device: &opts.uplink,
            direction: attach_type,
            program: name,
        };
        match mode {
            TcMode::Clsact => {
                tc_attach::attach_clsact(prog, &hook, TC_PRIORITY, TC_HANDLE)?;
                // A tcx link of ours from an earlier run (other mode) goes now.
                drop_tcx_pin(bpffs, dir_name)?;
            }
            _ => {
                tc_attach::attach_tcx(prog, &hook, &link_pin(bpffs, dir_name))?;
                // clsact filters of ours from an earlier run go now (none: NotFound).
                detach_clsact(&opts.uplink, attach_type, name);
            }
        }
        info!(program = name, uplink = %opts.uplink, mode = ?mode, "masquerade attached");
    }
    if !pending.is_empty() {
        pending.finish()?;
    }
    let masq = Masq {
        _ebpf: ebpf,
        pods,
        prefix: opts.pod_prefix.clone(),
        mode,
    };
    masq.sync_pods()?;
    Ok(masq)
}

fn config(opts: &MasqOptions, uplink_ifindex: u32) -> MasqConfig {
    let mut c = MasqConfig {
        layout_version: opts.layout,
        node_addr: u32::from(opts.node_addr).to_be(),
        uplink_ifindex,
        port_min: opts.ports.min,
        port_max: opts.ports.max,
        pod_count: opts.pod_cidrs.len() as u32,
        cluster_count: opts.cluster_cidrs.len() as u32,
        ..Default::default()
    };
    for (i, cidr) in opts.pod_cidrs.iter().enumerate() {
        (c.pod_nets[i], c.pod_masks[i]) = cidr.raw();
    }
    for (i, cidr) in opts.cluster_cidrs.iter().enumerate() {
        (c.cluster_nets[i], c.cluster_masks[i]) = cidr.raw();
    }
    c
}

/// Unpin the configuration and pods maps if their shape is not this agent's (they are the
/// same in every layout and rewritten at start; the NAT maps are masq_migrate's).
fn prepare_pins(bpffs: &Path, max: u32) -> Result<(), MasqError> {
    let unpin = |p: &Path| {
        layout::unpin(p).map_err(|source| MasqError::Unpin {
            path: p.display().to_string(),
            source,
        })
    };
    for (name, ty, key, value, max_entries) in map_shapes(max) {
        let pin = map_pin(bpffs, name);
        if pin.symlink_metadata().is_err() {
            continue;
        }
        let keep = BpfMap::open_pin(&pin).is_ok_and(|m| {
            m.info.map_type == ty
                && m.info.key_size == key
                && m.info.value_size == value
                && m.info.max_entries == max_entries
        });
        if keep {
            info!(map = name, "reusing pinned masquerade map");
        } else {
            warn!(
                map = name,
                "replacing pinned masquerade map (shape or layout changed)"
            );
            unpin(&pin)?;
        }
    }
    Ok(())
}

/// Remove clsact filters named `name` from `uplink`; returns how many kinds were removed
/// (0 or 1). Missing qdisc or filter: nothing to do.
fn detach_clsact(uplink: &str, attach_type: TcAttachType, name: &str) -> usize {
    match tc::qdisc_detach_program(uplink, attach_type, name) {
        Ok(()) => {
            info!(program = name, uplink, "removed clsact filter");
            1
        }
        Err(_) => 0,
    }
}

fn drop_tcx_pin(bpffs: &Path, dir_name: &str) -> Result<bool, MasqError> {
    Ok(tc_attach::drop_tcx_pin(&link_pin(bpffs, dir_name))?)
}

/// `/32` routes through `<prefix>*` interfaces: pod address -> interface name.
pub fn pod_routes(prefix: &str) -> Result<BTreeMap<Ipv4Addr, String>, MasqError> {
    const PATH: &str = "/proc/net/route";
    let text =
        std::fs::read_to_string(PATH).map_err(|source| MasqError::Routes { path: PATH, source })?;
    Ok(parse_routes(&text, prefix))
}

fn parse_routes(text: &str, prefix: &str) -> BTreeMap<Ipv4Addr, String> {
    let mut out = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || !f[0].starts_with(prefix) {
            continue;
        }
        // Destination and mask are printed as the in-memory (network order) u32 in hex.
        let (Ok(dst), Ok(mask)) = (u32::from_str_radix(f[1], 16), u32::from_str_radix(f[7], 16))
        else {
            continue;
        };
        if mask == u32::MAX {
            out.insert(Ipv4Addr::from(dst.to_ne_bytes()), f[0].to_string());
        }
    }
    out
}

impl Masq {
    /// Make `dp_masq_pods` equal to the pod routes; returns the number of pods.
    pub fn sync_pods(&self) -> Result<usize, MasqError> {
        let want: BTreeMap<u32, u32> = pod_routes(&self.prefix)?
            .into_iter()
            .filter_map(|(addr, iface)| {
                ifindex(&iface).map(|i| (u32::from_ne_bytes(addr.octets()), i))
            })
            .collect();
        let have: BTreeMap<u32, u32> = self.pods.entries::<u32, u32>()?.into_iter().collect();
        for (k, v) in &want {
            if have.get(k) != Some(v) {
                self.pods.put(k, v)?;
                info!(pod = %Ipv4Addr::from(k.to_ne_bytes()), ifindex = v, "pod interface");
            }
        }
        for k in have.keys().filter(|k| !want.contains_key(k)) {
            self.pods.delete(k)?;
            info!(pod = %Ipv4Addr::from(k.to_ne_bytes()), "pod interface gone");
        }
        Ok(want.len())
    }
}

/// Was the masquerade configured from this network namespace? Interface indexes mean
/// nothing in another one.
fn same_netns(bpffs: &Path) -> bool {
    dir(bpffs)
        .join(format!("netns-{}", crate::netsync::netns_ino()))
        .is_dir()
}

/// `cleanup`: detach our tc programs (tcx links, clsact filters on the uplink recorded in
/// the config pin). The pins themselves go with the instance directory. Returns (links,
/// filters) removed.
pub fn cleanup(bpffs: &Path) -> (usize, usize) {
    let mut links = 0;
    let mut filters = 0;
    for (_, dir_name, _) in DIRECTIONS {
        if drop_tcx_pin(bpffs, dir_name).unwrap_or(false) {
            links += 1;
        }
    }
    if !same_netns(bpffs) {
        return (links, filters);
    }
    let uplink = BpfMap::open_pin(&map_pin(bpffs, MAP_MASQ_CFG))
        .ok()
        .and_then(|m| m.get::<u32, MasqConfig>(&0).ok().flatten())
        .and_then(|c| ifname(c.uplink_ifindex));
    if let Some(uplink) = uplink {
        for (attach_type, _, name) in DIRECTIONS {
            filters += detach_clsact(&uplink, attach_type, name);
        }
    }
    (links, filters)
}

/// `status --json`'s `masquerade` (null when no masquerade was ever configured here).
#[derive(Debug, Serialize)]
pub struct MasqStatus {
    pub uplink: Option<String>,
    pub uplink_ifindex: u32,
    pub node_addr: String,
    pub ports: String,
    pub pod_cidrs: Vec<String>,
    pub cluster_cidrs: Vec<String>,
    /// The layout the last agent configured (`run --layout`).
    pub layout_version: u32,
    /// The layout of the pinned NAT maps, judged by their value size (null: no map or a
    /// size of no layout), with that value size and their capacity.
    pub map_layout: Option<u32>,
    pub nat_value_size: Option<u32>,
    pub nat_capacity: Option<u32>,
    /// Per direction: what is attached on the uplink.
    pub attachments: Vec<MasqAttachment>,
    /// Entries in `dp_masq_fwd` / `dp_masq_rev` (LRU) and `dp_masq_pods`.
    pub nat_entries: usize,
    pub reverse_entries: usize,
    pub pods: Vec<MasqPod>,
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct MasqAttachment {
    pub direction: &'static str,
    pub expected_program: &'static str,
    /// "tcx" (pinned link) or "clsact" (filter prio 1, handle 0xd0) or null (none found).
    pub mode: Option<&'static str>,
    /// tcx programs on the uplink in this direction, in run order (names).
    pub tcx_programs: Vec<String>,
    pub link_pin: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct MasqPod {
    pub address: String,
    pub ifindex: u32,
    pub interface: Option<String>,
}

fn cidrs(nets: &[u32], masks: &[u32], n: u32) -> Vec<String> {
    nets.iter()
        .zip(masks)
        .take(n as usize)
        .map(|(net, mask)| {
            format!(
                "{}/{}",
                Ipv4Addr::from(net.to_ne_bytes()),
                u32::from_be(*mask).count_ones()
            )
        })
        .collect()
}

pub fn status(bpffs: &Path) -> Option<MasqStatus> {
    let cfg_map = BpfMap::open_pin(&map_pin(bpffs, MAP_MASQ_CFG)).ok()?;
    let cfg = cfg_map.get::<u32, MasqConfig>(&0).ok().flatten()?;
    let mut problems = Vec::new();
    let uplink = if same_netns(bpffs) {
        ifname(cfg.uplink_ifindex)
    } else {
        problems
            .push("configured from another network namespace: attachments not inspected".into());
        None
    };
    if uplink.is_none() && problems.is_empty() {
        problems.push(format!("uplink ifindex {} is gone", cfg.uplink_ifindex));
    }
    let count = |name| {
        BpfMap::open_pin(&map_pin(bpffs, name))
            .and_then(|m| m.count())
            .unwrap_or(0)
    };
    let fwd_info = BpfMap::open_pin(&map_pin(bpffs, MAP_MASQ_FWD))
        .ok()
        .map(|m| m.info);
    let mut attachments = Vec::new();
    for (attach_type, dir_name, name) in DIRECTIONS {
        let pin = link_pin(bpffs, dir_name);
        let pinned = pin.symlink_metadata().is_ok();
        let tcx_programs: Vec<String> = uplink
            .as_deref()
            .and_then(|u| SchedClassifier::query_tcx(u, attach_type).ok())
            .map(|(_, ps)| {
                ps.iter()
                    .map(|p| p.name_as_str().unwrap_or("?").to_string())
                    .collect()
            })
            .unwrap_or_default();
        let ours_tcx = tcx_programs.iter().filter(|n| *n == name).count();
        let mode = if ours_tcx > 0 && pinned {
            Some("tcx")
        } else if ours_tcx == 0 && !pinned && uplink.is_some() {
            Some("clsact")
        } else {
            None
        };
        if ours_tcx > 1 {
            problems.push(format!(
                "{ours_tcx} tcx programs {name} on the uplink (want 1)"
            ));
        }
        if pinned && ours_tcx == 0 {
            problems.push(format!(
                "tcx link pin {} but no {name} on the uplink",
                pin.display()
            ));
        }
        attachments.push(MasqAttachment {
            direction: dir_name,
            expected_program: name,
            mode,
            tcx_programs,
            link_pin: pinned.then(|| pin.display().to_string()),
        });
    }
    let pods = BpfMap::open_pin(&map_pin(bpffs, MAP_MASQ_PODS))
        .and_then(|m| m.entries::<u32, u32>())
        .unwrap_or_default()
        .into_iter()
        .map(|(a, i)| MasqPod {
            address: Ipv4Addr::from(a.to_ne_bytes()).to_string(),
            ifindex: i,
            interface: ifname(i),
        })
        .collect();
    Some(MasqStatus {
        uplink,
        uplink_ifindex: cfg.uplink_ifindex,
        node_addr: Ipv4Addr::from(cfg.node_addr.to_ne_bytes()).to_string(),
        ports: format!("{}-{}", cfg.port_min, cfg.port_max),
        pod_cidrs: cidrs(&cfg.pod_nets, &cfg.pod_masks, cfg.pod_count),
        cluster_cidrs: cidrs(&cfg.cluster_nets, &cfg.cluster_masks, cfg.cluster_count),
        layout_version: cfg.layout_version,
        map_layout: fwd_info
            .as_ref()
            .and_then(|i| masq_migrate::layout_of(i.value_size)),
        nat_value_size: fwd_info.as_ref().map(|i| i.value_size),
        nat_capacity: fwd_info.as_ref().map(|i| i.max_entries),
        attachments,
        nat_entries: count(MAP_MASQ_FWD),
        reverse_entries: count(MAP_MASQ_REV),
        pods,
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cidrs_and_ranges() {
        let c: Cidr = "10.244.1.7/16".parse().expect("cidr");
        assert_eq!(
            c.raw(),
            (
                u32::from_ne_bytes([10, 244, 0, 0]),
                u32::from_ne_bytes([255, 255, 0, 0])
            )
        );
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert_eq!(
            "61000-62000".parse::<PortRange>(),
            Ok(PortRange {
                min: 61000,
                max: 62000
            })
        );
        assert!("5-4".parse::<PortRange>().is_err());
    }

    #[test]
    fn finds_pod_routes() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
lxcab\t0501F40A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
eth0\t0000F40A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
lxcx\t0000F40A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let r = parse_routes(text, "lxc");
        assert_eq!(r.len(), 1);
        assert_eq!(
            r.get(&Ipv4Addr::new(10, 244, 1, 5)).map(String::as_str),
            Some("lxcab")
        );
    }
}
