//! The pods object in the kernel: its maps (pinned under `<bpffs>/pods/maps/`), its two
//! programs, their attachments (tcx links pinned under `<bpffs>/pods/links/<device>`, or
//! clsact filters), and the wiring of one pod: program, endpoint entry, /32 route,
//! permanent neighbour, `arp_ignore=1`.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    programs::{tc, SchedClassifier, TcAttachType},
    Ebpf, EbpfLoader,
};
use datapath_common::{
    EndpointInfo, IpcacheEntry, PodsConfig, GLOBAL_MUTATIONS, MAP_ENDPOINTS, MAP_IPCACHE,
    MAP_PODS_CFG, PODS_LAYOUT_VERSION, POD_VNI, PROG_FROM_CONT, PROG_FROM_OVL, ROUTING_NATIVE,
    ROUTING_VXLAN,
};
use tracing::{info, warn};

use super::{
    files::{self, PodFile, Wired},
    ip::{self, Ns},
    PodsError, Routing,
};
use crate::{layout, maps::BpfMap, masq::TcMode, sys, tc_attach};

/// clsact filter priority and handle of the pod programs (fixed, so a restart finds and
/// replaces them; the masquerade's handle is 0xd0).
pub const TC_PRIORITY: u16 = 1;
pub const TC_HANDLE: u32 = 0xd1;

pub fn dir(bpffs: &Path) -> PathBuf {
    bpffs.join("pods")
}

pub fn map_pin(bpffs: &Path, map: &str) -> PathBuf {
    dir(bpffs).join("maps").join(map)
}

pub fn links_dir(bpffs: &Path) -> PathBuf {
    dir(bpffs).join("links")
}

pub fn link_pin(bpffs: &Path, device: &str) -> PathBuf {
    links_dir(bpffs).join(device)
}

/// (name, key size, value size) of the pinned maps this agent writes.
fn map_shapes() -> [(&'static str, u32, u32); 3] {
    [
        (MAP_ENDPOINTS, 4, std::mem::size_of::<EndpointInfo>() as u32),
        (MAP_IPCACHE, 4, std::mem::size_of::<IpcacheEntry>() as u32),
        (MAP_PODS_CFG, 4, std::mem::size_of::<PodsConfig>() as u32),
    ]
}

/// An address as the maps key it (network byte order in memory).
pub fn key(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

pub fn addr(key: u32) -> Ipv4Addr {
    Ipv4Addr::from(key.to_ne_bytes())
}

pub struct Datapath {
    ebpf: Ebpf,
    bpffs: PathBuf,
    /// An fd of every tcx link of ours, by device: a link outlives a bpffs remount that
    /// takes its pin, and [`Datapath::repin`] pins it again (run.rs's held pins leave
    /// `links/` to us, since pod links come and go).
    links: BTreeMap<String, OwnedFd>,
    pub mode: TcMode,
    pub endpoints: BpfMap,
    pub ipcache: BpfMap,
}

impl Datapath {
    /// Loads the object (reusing pinned maps of the same shape and layout) and configures it.
    pub fn load(
        bpffs: &Path,
        mode: TcMode,
        max_entries: u32,
        mutations: u32,
        routing: Routing,
        vxlan_ifindex: u32,
    ) -> Result<Datapath, PodsError> {
        if super::OBJECT.is_empty() {
            return Err(PodsError::EmptyObject);
        }
        for sub in ["maps", "links"] {
            let d = dir(bpffs).join(sub);
            std::fs::create_dir_all(&d).map_err(|source| PodsError::Dirs {
                path: d.display().to_string(),
                source,
            })?;
        }
        prepare_pins(bpffs, max_entries)?;
        let mut loader = EbpfLoader::new();
        for (name, _, _) in map_shapes() {
            loader.map_max_entries(name, if name == MAP_PODS_CFG { 1 } else { max_entries });
        }
        let pins: Vec<(&str, PathBuf)> = map_shapes()
            .iter()
            .map(|s| (s.0, map_pin(bpffs, s.0)))
            .collect();
        for (name, pin) in &pins {
            loader.map_pin_path(name, pin.as_path());
        }
        if mutations != 0 {
            loader.override_global(GLOBAL_MUTATIONS, &mutations, true);
        }
        let mut ebpf = loader.load(super::OBJECT).map_err(PodsError::Object)?;
        for name in [PROG_FROM_CONT, PROG_FROM_OVL] {
            program(&mut ebpf, name)?
                .load()
                .map_err(|source| PodsError::Program {
                    what: "loading",
                    program: name,
                    source,
                })?;
        }
        let cfg = BpfMap::open_pin(&map_pin(bpffs, MAP_PODS_CFG))?;
        cfg.put(
            &0u32,
            &PodsConfig {
                layout_version: PODS_LAYOUT_VERSION,
                routing: match routing {
                    Routing::Native => ROUTING_NATIVE,
                    Routing::Vxlan => ROUTING_VXLAN,
                },
                vxlan_ifindex,
                vni: POD_VNI,
            },
        )?;
        Ok(Datapath {
            ebpf,
            bpffs: bpffs.to_path_buf(),
            links: BTreeMap::new(),
            mode,
            endpoints: BpfMap::open_pin(&map_pin(bpffs, MAP_ENDPOINTS))?,
            ipcache: BpfMap::open_pin(&map_pin(bpffs, MAP_IPCACHE))?,
        })
    }

    pub fn program_id(&self, name: &'static str) -> Result<u32, PodsError> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(name)
            .ok_or(PodsError::NoProgram(name))?
            .try_into()
            .map_err(|source| PodsError::Program {
                what: "not a tc program",
                program: name,
                source,
            })?;
        let fd = prog.fd().map_err(|source| PodsError::Program {
            what: "program fd",
            program: name,
            source,
        })?;
        sys::prog_info(fd.as_fd())
            .map(|i| i.id)
            .map_err(|source| PodsError::Link {
                what: "reading the program's info",
                program: name,
                source,
            })
    }

    /// Attaches `name` to `device`'s ingress (replacing what an earlier run of ours left
    /// there); the program's id.
    pub fn attach(&mut self, device: &str, name: &'static str) -> Result<u32, PodsError> {
        let id = self.program_id(name)?;
        let pin = link_pin(&self.bpffs, device);
        let prog = program(&mut self.ebpf, name)?;
        let hook = tc_attach::Hook {
            device,
            direction: TcAttachType::Ingress,
            program: name,
        };
        match self.mode {
            TcMode::Clsact => {
                tc_attach::attach_clsact(prog, &hook, TC_PRIORITY, TC_HANDLE)?;
                drop_tcx_pin(&pin);
            }
            _ => {
                tc_attach::attach_tcx(prog, &hook, &pin)?;
                match sys::obj_get(&pin) {
                    Ok(fd) => {
                        self.links.insert(device.to_string(), fd);
                    }
                    Err(e) => warn!(device, "cannot hold the pinned tcx link: {e}"),
                }
            }
        }
        Ok(id)
    }

    /// Pins again the links whose pins a bpffs remount took (once the bpffs is back).
    pub fn repin(&self) {
        if self
            .links
            .keys()
            .all(|d| link_pin(&self.bpffs, d).symlink_metadata().is_ok())
            || crate::prereq::check_bpffs(&self.bpffs).is_err()
        {
            return;
        }
        if std::fs::create_dir_all(links_dir(&self.bpffs)).is_err() {
            return;
        }
        for (device, fd) in &self.links {
            let pin = link_pin(&self.bpffs, device);
            if pin.symlink_metadata().is_ok() {
                continue;
            }
            match sys::obj_pin(fd.as_fd(), &pin) {
                Ok(()) => {
                    warn!(device, pin = %pin.display(), "pinned the tcx link again (bpffs remounted?)")
                }
                Err(e) => warn!(device, "cannot pin the tcx link again: {e}"),
            }
        }
    }

    /// Wires one pod whose veth `pod add` made; the record `pod add` waits for.
    pub fn wire(&mut self, pod: &PodFile) -> Result<Wired, PodsError> {
        let veth = ip::link(Ns::Here, &pod.host_veth)?
            .ok_or_else(|| PodsError::NoVeth(pod.host_veth.clone()))?;
        let host_mac = veth
            .address
            .as_deref()
            .and_then(ip::parse_mac)
            .ok_or_else(|| PodsError::NoMac(pod.host_veth.clone()))?;
        let pod_mac =
            ip::parse_mac(&pod.pod_mac).ok_or_else(|| PodsError::NoMac(pod.pod_mac.clone()))?;
        // The kernel must never answer ARP on the host veth: the program does.
        ip::sysctl(&format!("net/ipv4/conf/{}/arp_ignore", pod.host_veth), "1")
            .map_err(PodsError::Sysctl)?;
        ip::ip(&["link", "set", &pod.host_veth, "up"])?;
        let program_id = self.attach(&pod.host_veth, PROG_FROM_CONT)?;
        self.endpoints.put(
            &key(pod.address),
            &EndpointInfo {
                ifindex: veth.ifindex,
                flags: 0,
                pod_mac,
                host_mac,
            },
        )?;
        let dst = format!("{}/32", pod.address);
        ip::ip(&[
            "route",
            "replace",
            &dst,
            "dev",
            &pod.host_veth,
            "scope",
            "link",
        ])?;
        ip::ip(&[
            "neigh",
            "replace",
            &pod.address.to_string(),
            "lladdr",
            &pod.pod_mac,
            "dev",
            &pod.host_veth,
            "nud",
            "permanent",
        ])?;
        Ok(Wired {
            name: pod.name.clone(),
            address: pod.address,
            netns: pod.netns.clone(),
            host_veth: pod.host_veth.clone(),
            ifindex: veth.ifindex,
            host_mac: ip::format_mac(&host_mac),
            pod_mac: ip::format_mac(&pod_mac),
            program_id,
            attach: self.attach_name().to_string(),
        })
    }

    pub fn attach_name(&self) -> &'static str {
        match self.mode {
            TcMode::Clsact => "clsact",
            _ => "tcx",
        }
    }

    /// Removes everything of a pod: program, endpoint entry (unless `keep_endpoint`, the
    /// mutant), route, neighbour and the veth (the pod's `eth0` goes with it).
    pub fn unwire(&mut self, host_veth: &str, address: Ipv4Addr, keep_endpoint: bool) {
        unwire_kernel(&self.bpffs, host_veth, address);
        self.links.remove(host_veth);
        if keep_endpoint {
            warn!(pod = %address, "mutant endpoint-kept-on-delete: dp_endpoints entry left");
        } else if let Err(e) = self.endpoints.delete(&key(address)) {
            warn!(pod = %address, "cannot delete the endpoint entry: {e}");
        }
    }
}

/// The kernel side of [`Datapath::unwire`] without the maps (`cleanup` uses it too).
pub fn unwire_kernel(bpffs: &Path, host_veth: &str, address: Ipv4Addr) {
    drop_tcx_pin(&link_pin(bpffs, host_veth));
    let _ = tc::qdisc_detach_program(host_veth, TcAttachType::Ingress, PROG_FROM_CONT);
    let dst = format!("{address}/32");
    ip::ip_quiet(&["route", "del", &dst, "dev", host_veth]);
    ip::ip_quiet(&["neigh", "del", &address.to_string(), "dev", host_veth]);
    if ip::ip_quiet(&["link", "del", host_veth]) {
        info!(veth = host_veth, pod = %address, "removed the pod's veth");
    }
}

/// The wired record's file.
pub fn record_wired(dir: &Path, w: &Wired) -> Result<(), PodsError> {
    Ok(files::write_atomic(&files::wired_path(dir, &w.name), w)?)
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, PodsError> {
    ebpf.program_mut(name)
        .ok_or(PodsError::NoProgram(name))?
        .try_into()
        .map_err(|source| PodsError::Program {
            what: "not a tc program",
            program: name,
            source,
        })
}

/// Unpin the maps whose shape or layout version is not this agent's.
fn prepare_pins(bpffs: &Path, max: u32) -> Result<(), PodsError> {
    let cfg_ok = BpfMap::open_pin(&map_pin(bpffs, MAP_PODS_CFG))
        .ok()
        .and_then(|m| m.get::<u32, PodsConfig>(&0).ok().flatten())
        .is_some_and(|c| c.layout_version == PODS_LAYOUT_VERSION || c.layout_version == 0);
    for (name, k, v) in map_shapes() {
        let pin = map_pin(bpffs, name);
        if pin.symlink_metadata().is_err() {
            continue;
        }
        let want_max = if name == MAP_PODS_CFG { 1 } else { max };
        let fits = BpfMap::open_pin(&pin).is_ok_and(|m| {
            m.info.key_size == k && m.info.value_size == v && m.info.max_entries == want_max
        });
        if !(fits && cfg_ok) {
            warn!(
                map = name,
                "pinned map has another shape or layout; replacing it"
            );
            layout::unpin(&pin).map_err(|source| PodsError::Unpin {
                path: pin.display().to_string(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Detach and unpin a tcx link pin of ours; true when there was one.
pub fn drop_tcx_pin(pin: &Path) -> bool {
    match tc_attach::drop_tcx_pin(pin) {
        Ok(dropped) => dropped,
        Err(e) => {
            warn!("{e:#}");
            true
        }
    }
}
