//! Pod networking (issue 18; `datapathd run --routing native|vxlan --pods DIR --ipcache DIR
//! --gateway ADDR`, `datapathd pod add|del`). See datapath/README.md, "Pod networking".
//!
//! * devices.rs: `dp_host` (gateway /32) and `dp_vxlan`;
//! * wiring.rs: the pods object (`dp_from_cont`, `dp_from_ovl`, `dp_endpoints`,
//!   `dp_ipcache`), attachments and the wiring of one pod;
//! * ipcache.rs: `dp_ipcache` and native routes from the other nodes' files;
//! * files.rs: pod files, wired records, ipcache files; cni.rs: `pod add|del`;
//! * status.rs: `status --json`'s pod fields.
//!
//! The agent polls the pods and ipcache directories every [`POLL`] on its own thread
//! (like netsync.rs); the first pass runs before `ready`.

pub mod cli;
pub mod cni;
pub mod devices;
pub mod files;
pub mod ip;
pub mod ipcache;
pub mod status;
pub mod wiring;

use std::{
    collections::BTreeMap,
    fmt,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    str::FromStr,
    thread,
    time::{Duration, Instant},
};

use datapath_common::PROG_FROM_OVL;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::{masq::TcMode, pinned_record};
use files::{PodFile, PodName};
use wiring::Datapath;

/// The pods object built by build.rs (the eBPF crate's `pods` bin); empty with
/// AYA_BUILD_SKIP=1.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pods"));

/// How often the pods and ipcache directories are read (as `--services`).
pub const POLL: Duration = Duration::from_millis(200);
/// Everything is written again this often (repairs edits made behind our back).
pub const RESYNC: Duration = Duration::from_secs(30);
/// A pod that failed to wire is tried again after this long.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    Native,
    Vxlan,
}

impl FromStr for Routing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(Routing::Native),
            "vxlan" => Ok(Routing::Vxlan),
            _ => Err(format!("unknown routing mode `{s}`; valid: native, vxlan")),
        }
    }
}

impl fmt::Display for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Routing::Native => "native",
            Routing::Vxlan => "vxlan",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PodsError {
    #[error("this datapathd embeds no pods object (built with AYA_BUILD_SKIP=1)")]
    EmptyObject,
    #[error("--routing, --pods, --ipcache and --gateway go together (missing {0})")]
    Incomplete(&'static str),
    #[error("--routing needs --uplink and --node-addr")]
    NoUplink,
    #[error("device {0} was not created")]
    Device(&'static str),
    #[error("the pod's host veth {0} does not exist")]
    NoVeth(String),
    #[error("no usable MAC address for {0}")]
    NoMac(String),
    #[error("writing a sysctl")]
    Sysctl(#[source] std::io::Error),
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
    #[error("loading the pods object")]
    Object(#[source] aya::EbpfError),
    #[error("the pods object has no program {0}")]
    NoProgram(&'static str),
    #[error("{what} ({program})")]
    Program {
        what: &'static str,
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("{what} ({program})")]
    Link {
        what: &'static str,
        program: &'static str,
        #[source]
        source: crate::sys::SysError,
    },
    #[error(transparent)]
    Tc(#[from] crate::tc_attach::TcAttachError),
    #[error(transparent)]
    Map(#[from] crate::maps::MapError),
    #[error(transparent)]
    Ip(#[from] ip::IpError),
    #[error(transparent)]
    File(#[from] files::FileError),
    #[error(transparent)]
    Record(#[from] pinned_record::RecordError),
    #[error("starting the pods thread")]
    Thread(#[source] std::io::Error),
}

/// `run`'s pod options, checked by the CLI.
#[derive(Clone, Debug)]
pub struct PodsOptions {
    pub routing: Routing,
    pub pods_dir: PathBuf,
    pub ipcache_dir: PathBuf,
    pub gateway: Ipv4Addr,
    pub uplink: String,
    pub node_addr: Ipv4Addr,
    /// Resolved from the feature probes before start (as the masquerade's).
    pub mode: TcMode,
    pub max_entries: u32,
    /// `DP_MUTATIONS` of the object.
    pub mutations: u32,
    /// Mutant ipcache-stale-on-move.
    pub ipcache_stale_on_move: bool,
    /// Mutant endpoint-kept-on-delete.
    pub endpoint_kept_on_delete: bool,
}

/// What the running agent set up, pinned at `<bpffs>/pods/record` for `status` and
/// `cleanup` (other processes).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentRecord {
    pub routing: Routing,
    pub gateway: Ipv4Addr,
    pub pods_dir: PathBuf,
    pub ipcache_dir: PathBuf,
    pub uplink: String,
    pub node_addr: Ipv4Addr,
    pub attach: String,
    /// The network namespace (inode) the devices and routes are in.
    pub netns_ino: u64,
}

const RECORD: pinned_record::Kind = pinned_record::Kind {
    what: "pod networking record",
    map: "dp_pods_rec",
};

pub fn record_pin(bpffs: &Path) -> PathBuf {
    wiring::dir(bpffs).join("record")
}

pub fn read_record(bpffs: &Path) -> Option<AgentRecord> {
    pinned_record::read(RECORD, &record_pin(bpffs))
        .ok()
        .flatten()
}

/// Sets the node up (devices, object, first reconcile of pods and ipcache), then keeps it
/// in sync on a thread that ends with the process.
pub fn start(bpffs: &Path, opts: PodsOptions) -> Result<thread::JoinHandle<()>, PodsError> {
    if OBJECT.is_empty() {
        return Err(PodsError::EmptyObject);
    }
    for d in [&opts.pods_dir, &opts.ipcache_dir] {
        std::fs::create_dir_all(d).map_err(|source| PodsError::Dirs {
            path: d.display().to_string(),
            source,
        })?;
    }
    let uplink = ip::link(ip::Ns::Here, &opts.uplink)?.ok_or(PodsError::NoUplink)?;
    let mtu = devices::pod_mtu(uplink.mtu, opts.routing);
    let (_, vxlan) = devices::ensure(opts.gateway, mtu, opts.routing)?;
    let mut dp = Datapath::load(
        bpffs,
        opts.mode,
        opts.max_entries,
        opts.mutations,
        opts.routing,
        vxlan,
    )?;
    if opts.routing == Routing::Vxlan {
        dp.attach(devices::VXLAN_DEV, PROG_FROM_OVL)?;
        // Routes an earlier run in native mode installed for these entries.
        ipcache::remove_routes(&dp.ipcache);
    } else {
        wiring::drop_tcx_pin(&wiring::link_pin(bpffs, devices::VXLAN_DEV));
    }
    let record = AgentRecord {
        routing: opts.routing,
        gateway: opts.gateway,
        pods_dir: opts.pods_dir.clone(),
        ipcache_dir: opts.ipcache_dir.clone(),
        uplink: opts.uplink.clone(),
        node_addr: opts.node_addr,
        attach: dp.attach_name().to_string(),
        netns_ino: crate::netsync::netns_ino(),
    };
    pinned_record::write(RECORD, &record_pin(bpffs), &record)?;
    info!(routing = %opts.routing, gateway = %opts.gateway, mtu, attach = dp.attach_name(), "pod networking started");
    let mut sync = PodSync {
        dp,
        opts,
        wired: BTreeMap::new(),
        failed: BTreeMap::new(),
    };
    sync.pass(true);
    thread::Builder::new()
        .name("pods".into())
        .spawn(move || {
            let mut last_full = Instant::now();
            loop {
                thread::sleep(POLL);
                let full = last_full.elapsed() >= RESYNC;
                if full {
                    last_full = Instant::now();
                }
                sync.pass(full);
            }
        })
        .map_err(PodsError::Thread)
}

struct PodSync {
    dp: Datapath,
    opts: PodsOptions,
    /// Pods wired by this process, with the file they were wired from.
    wired: BTreeMap<PodName, PodFile>,
    /// Pods that failed to wire, and when.
    failed: BTreeMap<PodName, Instant>,
}

impl PodSync {
    /// One reconcile of pods and ipcache; `full` rewires every pod and rewrites every route.
    fn pass(&mut self, full: bool) {
        self.dp.repin();
        if let Err(e) = self.pods(full) {
            error!("pod reconcile failed: {e:#}");
        }
        let sync = ipcache::Sync {
            map: &self.dp.ipcache,
            routing: self.opts.routing,
            uplink: &self.opts.uplink,
            stale_on_move: self.opts.ipcache_stale_on_move,
        };
        match files::read_ipcache(&self.opts.ipcache_dir, self.opts.node_addr) {
            Ok((mut want, problems)) => {
                // A pod of this node is never remote here, whatever the files say (a pod
                // that moved here before the harness rewrote its old node's file): its
                // /32 route through its veth must not be replaced by one to another node.
                for p in self.wired.values() {
                    want.remove(&p.address);
                }
                if full {
                    for p in problems {
                        warn!("ipcache file problem: {p}");
                    }
                }
                if let Err(e) = sync.apply(&want, full) {
                    error!("ipcache reconcile failed: {e:#}");
                }
            }
            Err(e) => error!("reading {}: {e:#}", self.opts.ipcache_dir.display()),
        }
    }

    fn pods(&mut self, full: bool) -> Result<(), PodsError> {
        let dir = self.opts.pods_dir.clone();
        let (want, problems) = files::read_pods(&dir)?;
        if full {
            for p in &problems {
                warn!("pod file problem: {p}");
            }
        }
        // Pods whose file is gone: wired by this process, or recorded by an earlier one.
        let records = files::read_wired(&dir)?;
        let gone: BTreeMap<PodName, (String, Ipv4Addr)> = records
            .iter()
            .map(|(n, w)| (n.clone(), (w.host_veth.clone(), w.address)))
            .chain(
                self.wired
                    .iter()
                    .map(|(n, p)| (n.clone(), (p.host_veth.clone(), p.address))),
            )
            .filter(|(n, _)| !want.contains_key(n))
            .collect();
        for (name, (veth, addr)) in gone {
            self.dp
                .unwire(&veth, addr, self.opts.endpoint_kept_on_delete);
            let _ = std::fs::remove_file(files::wired_path(&dir, &name));
            self.wired.remove(&name);
            self.failed.remove(&name);
            info!(pod = %name, address = %addr, veth = %veth, "pod unwired");
        }
        for (name, pod) in &want {
            let changed = self.wired.get(name) != Some(pod);
            if !(changed || full) {
                continue;
            }
            if self
                .failed
                .get(name)
                .is_some_and(|t| t.elapsed() < RETRY && !full)
            {
                continue;
            }
            if changed {
                if let Some(old) = self.wired.get(name) {
                    // Same name, another address or veth: the old wiring goes first.
                    if old.address != pod.address || old.host_veth != pod.host_veth {
                        self.dp.unwire(&old.host_veth, old.address, false);
                    }
                }
            }
            match self.dp.wire(pod) {
                Ok(w) => {
                    let recorded = records.get(name) == Some(&w);
                    if !recorded {
                        wiring::record_wired(&dir, &w)?;
                    }
                    if changed {
                        info!(pod = %name, address = %pod.address, veth = %pod.host_veth, program_id = w.program_id, "pod wired");
                    }
                    self.wired.insert(name.clone(), pod.clone());
                    self.failed.remove(name);
                }
                Err(e) => {
                    if !self.failed.contains_key(name) {
                        warn!(pod = %name, "cannot wire the pod (retried): {e:#}");
                    }
                    self.failed.insert(name.clone(), Instant::now());
                    self.wired.remove(name);
                }
            }
        }
        if full && !self.opts.endpoint_kept_on_delete {
            self.sweep_endpoints(&want)?;
        }
        Ok(())
    }

    /// Endpoint entries no pod file accounts for (left by a crash between steps).
    fn sweep_endpoints(&self, want: &BTreeMap<PodName, PodFile>) -> Result<(), PodsError> {
        let live: Vec<Ipv4Addr> = want.values().map(|p| p.address).collect();
        for (k, _) in self
            .dp
            .endpoints
            .entries::<u32, datapath_common::EndpointInfo>()?
        {
            if !live.contains(&wiring::addr(k)) {
                self.dp.endpoints.delete(&k)?;
                info!(pod = %wiring::addr(k), "stale endpoint entry removed");
            }
        }
        Ok(())
    }
}

/// `cleanup` (in the node's network namespace): pod programs and links, native routes,
/// the pods' routes and neighbours, dp_host, dp_vxlan, the wired records and the pins.
/// Returns (links, devices) removed.
pub fn cleanup(bpffs: &Path) -> (usize, usize) {
    let Some(rec) = read_record(bpffs) else {
        return (0, 0);
    };
    let mut links = 0;
    let here = rec.netns_ino == crate::netsync::netns_ino();
    if here {
        if let Ok(m) =
            crate::maps::BpfMap::open_pin(&wiring::map_pin(bpffs, datapath_common::MAP_IPCACHE))
        {
            ipcache::remove_routes(&m);
        }
        for (_, w) in files::read_wired(&rec.pods_dir).unwrap_or_default() {
            // The veth is the pod's (the runtime's): only what the agent added goes.
            if wiring::drop_tcx_pin(&wiring::link_pin(bpffs, &w.host_veth)) {
                links += 1;
            }
            let _ = aya::programs::tc::qdisc_detach_program(
                &w.host_veth,
                aya::programs::TcAttachType::Ingress,
                datapath_common::PROG_FROM_CONT,
            );
            ip::ip_quiet(&[
                "route",
                "del",
                &format!("{}/32", w.address),
                "dev",
                &w.host_veth,
            ]);
            ip::ip_quiet(&["neigh", "del", &w.address.to_string(), "dev", &w.host_veth]);
        }
        let _ = std::fs::remove_dir_all(files::wired_dir(&rec.pods_dir));
    }
    // Any other link pins of ours (dp_vxlan's, pods without a record).
    if let Ok(rd) = std::fs::read_dir(wiring::dir(bpffs).join("links")) {
        for e in rd.flatten() {
            if wiring::drop_tcx_pin(&e.path()) {
                links += 1;
            }
        }
    }
    let devices = if here { devices::remove() } else { 0 };
    for name in [
        datapath_common::MAP_ENDPOINTS,
        datapath_common::MAP_IPCACHE,
        datapath_common::MAP_PODS_CFG,
    ] {
        let _ = crate::layout::unpin(&wiring::map_pin(bpffs, name));
    }
    let _ = crate::layout::unpin(&record_pin(bpffs));
    let _ = std::fs::remove_dir_all(wiring::dir(bpffs));
    (links, devices)
}
