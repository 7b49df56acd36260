//! `status --json`'s pod fields: `routing`, `gateway`, `pods`, `ipcache`, `devices`,
//! read from the kernel (tcx query, `dp_endpoints`, `ip -j route/neigh/link`) and the
//! agent's records, so a pod the agent thinks wired but the kernel lost shows `wired:
//! false` with the reason.

use std::{net::Ipv4Addr, path::Path};

use aya::programs::{SchedClassifier, TcAttachType};
use datapath_common::{EndpointInfo, MAP_ENDPOINTS, MAP_IPCACHE, PROG_FROM_CONT};
use serde::Serialize;

use super::{devices, files, ip, ipcache, read_record, wiring, Routing};
use crate::maps::BpfMap;

#[derive(Debug, Default, Serialize)]
pub struct PodsStatus {
    /// null when pod networking is off.
    pub routing: Option<Routing>,
    pub gateway: Option<Ipv4Addr>,
    pub pods: Vec<PodStatus>,
    pub ipcache: Vec<IpcacheStatus>,
    pub devices: Option<Devices>,
}

#[derive(Debug, Serialize)]
pub struct PodStatus {
    pub name: String,
    pub address: Ipv4Addr,
    pub netns: String,
    pub host_veth: String,
    pub ifindex: u32,
    pub host_mac: Option<String>,
    pub pod_mac: Option<String>,
    pub program_id: Option<u32>,
    pub attach: Option<String>,
    pub wired: bool,
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct IpcacheStatus {
    pub address: Ipv4Addr,
    pub node_addr: Ipv4Addr,
}

#[derive(Debug, Serialize)]
pub struct Device {
    pub name: &'static str,
    pub ifindex: u32,
}

#[derive(Debug, Serialize)]
pub struct Devices {
    pub host: Option<Device>,
    pub vxlan: Option<Device>,
}

pub fn collect(bpffs: &Path) -> PodsStatus {
    let Some(rec) = read_record(bpffs) else {
        return PodsStatus::default();
    };
    let here = rec.netns_ino == crate::netsync::netns_ino();
    let ipcache = BpfMap::open_pin(&wiring::map_pin(bpffs, MAP_IPCACHE))
        .ok()
        .and_then(|m| ipcache::entries(&m).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|(address, node_addr)| IpcacheStatus { address, node_addr })
        .collect();
    let links = if here {
        ip::links(ip::Ns::Here).unwrap_or_default()
    } else {
        Vec::new()
    };
    let device = |name: &'static str| {
        links.iter().find(|l| l.ifname == name).map(|l| Device {
            name,
            ifindex: l.ifindex,
        })
    };
    let devices = here.then(|| Devices {
        host: device(devices::HOST_DEV),
        vxlan: device(devices::VXLAN_DEV),
    });
    let endpoints: Vec<(u32, EndpointInfo)> =
        BpfMap::open_pin(&wiring::map_pin(bpffs, MAP_ENDPOINTS))
            .and_then(|m| m.entries())
            .unwrap_or_default();
    let routes = if here {
        ip::routes(ip::Ns::Here).unwrap_or_default()
    } else {
        Vec::new()
    };
    let neighs = if here {
        ip::neighbours(ip::Ns::Here).unwrap_or_default()
    } else {
        Vec::new()
    };
    let (files, _) = files::read_pods(&rec.pods_dir).unwrap_or_default();
    let records = files::read_wired(&rec.pods_dir).unwrap_or_default();
    let mut pods = Vec::new();
    for (name, f) in &files {
        let w = records.get(name);
        let mut problems = Vec::new();
        if !here {
            problems.push("configured from another network namespace: not inspected".into());
        }
        let link = links.iter().find(|l| l.ifname == f.host_veth);
        if link.is_none() && here {
            problems.push(format!("host veth {} does not exist", f.host_veth));
        }
        let ifindex = link.map_or(0, |l| l.ifindex);
        let host_mac = link.and_then(|l| l.address.clone());
        match w {
            None => problems.push("not wired by the agent yet".into()),
            Some(w) if w.ifindex != ifindex => problems.push(format!(
                "wired on ifindex {} but {} is ifindex {ifindex}",
                w.ifindex, f.host_veth
            )),
            _ => {}
        }
        let ep = endpoints
            .iter()
            .find(|(k, _)| wiring::addr(*k) == f.address);
        match ep {
            None => problems.push("no dp_endpoints entry".into()),
            Some((_, e)) if e.ifindex != ifindex => problems.push(format!(
                "dp_endpoints entry points at ifindex {}, not {ifindex}",
                e.ifindex
            )),
            _ => {}
        }
        let dst = format!("{}", f.address);
        if here
            && !routes
                .iter()
                .any(|r| r.dst == dst && r.dev.as_deref() == Some(&f.host_veth))
        {
            problems.push(format!("no route {dst}/32 dev {}", f.host_veth));
        }
        if here
            && !neighs.iter().any(|n| {
                n.dst == dst
                    && n.dev.as_deref() == Some(&f.host_veth)
                    && n.lladdr.as_deref() == Some(&f.pod_mac)
                    && n.state.iter().any(|s| s == "PERMANENT")
            })
        {
            problems.push(format!("no permanent neighbour {dst} dev {}", f.host_veth));
        }
        let programs = if here && link.is_some() {
            attached_programs(&f.host_veth, &rec.attach)
        } else {
            Vec::new()
        };
        if here && link.is_some() && programs.len() != 1 {
            problems.push(format!(
                "{} {PROG_FROM_CONT} programs on {} ingress (want 1)",
                programs.len(),
                f.host_veth
            ));
        }
        pods.push(PodStatus {
            name: name.to_string(),
            address: f.address,
            netns: f.netns.display().to_string(),
            host_veth: f.host_veth.clone(),
            ifindex,
            host_mac,
            pod_mac: Some(f.pod_mac.clone()),
            program_id: programs.first().copied().or(w.map(|w| w.program_id)),
            attach: w.map(|w| w.attach.clone()),
            wired: problems.is_empty(),
            problems,
        });
    }
    PodsStatus {
        routing: Some(rec.routing),
        gateway: Some(rec.gateway),
        pods,
        ipcache,
        devices,
    }
}

/// Ids of the `dp_from_cont` programs on `device`'s ingress: tcx by query, clsact from
/// `tc -j filter show` (aya has no filter dump).
fn attached_programs(device: &str, attach: &str) -> Vec<u32> {
    if attach == "tcx" {
        return SchedClassifier::query_tcx(device, TcAttachType::Ingress)
            .map(|(_, ps)| {
                ps.iter()
                    .filter(|p| p.name_as_str() == Some(PROG_FROM_CONT))
                    .map(|p| p.id())
                    .collect()
            })
            .unwrap_or_default();
    }
    let out = ip::run_in(
        ip::Ns::Here,
        "tc",
        &["-j", "filter", "show", "dev", device, "ingress"],
    )
    .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| {
            let opts = f.get("options")?;
            let name = opts.get("bpf_name")?.as_str()?;
            name.starts_with(PROG_FROM_CONT)
                .then(|| opts.get("prog")?.get("id")?.as_u64())
                .flatten()
                .map(|id| id as u32)
        })
        .collect()
}

/// `status`'s text lines for pod networking: nothing when it is off.
pub fn render_text(p: &PodsStatus) -> String {
    let Some(routing) = &p.routing else {
        return String::new();
    };
    let mut out = format!(
        "pod routing {routing} gateway {}\n",
        p.gateway.map_or("?".into(), |g| g.to_string())
    );
    for pod in &p.pods {
        out.push_str(&format!(
            "pod {} {} on {} (ifindex {}) prog {} by {}{}\n",
            pod.name,
            pod.address,
            pod.host_veth,
            pod.ifindex,
            pod.program_id.map_or("none".into(), |id| id.to_string()),
            pod.attach.as_deref().unwrap_or("?"),
            if pod.wired { "" } else { ", not wired" }
        ));
        for problem in &pod.problems {
            out.push_str(&format!("  {problem}\n"));
        }
    }
    for e in &p.ipcache {
        out.push_str(&format!("ipcache {} -> node {}\n", e.address, e.node_addr));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lists_every_pod_and_ipcache_entry_and_nothing_when_off() {
        let off = PodsStatus {
            routing: None,
            gateway: None,
            pods: Vec::new(),
            ipcache: Vec::new(),
            devices: None,
        };
        assert_eq!(render_text(&off), "");
        let on = PodsStatus {
            routing: Some(Routing::Vxlan),
            gateway: Some(Ipv4Addr::new(10, 244, 200, 1)),
            pods: vec![PodStatus {
                name: "web-a1".into(),
                address: Ipv4Addr::new(10, 244, 0, 13),
                netns: "/run/netns/web-a1".into(),
                host_veth: "lxc2239e703b2da".into(),
                ifindex: 9,
                host_mac: None,
                pod_mac: None,
                program_id: None,
                attach: None,
                wired: false,
                problems: vec!["no dp_from_cont on lxc2239e703b2da".into()],
            }],
            ipcache: vec![IpcacheStatus {
                address: Ipv4Addr::new(10, 244, 0, 14),
                node_addr: Ipv4Addr::new(172, 31, 0, 2),
            }],
            devices: None,
        };
        assert_eq!(
            render_text(&on),
            "pod routing vxlan gateway 10.244.200.1\n\
             pod web-a1 10.244.0.13 on lxc2239e703b2da (ifindex 9) prog none by ?, not wired\n  \
             no dp_from_cont on lxc2239e703b2da\n\
             ipcache 10.244.0.14 -> node 172.31.0.2\n"
        );
    }
}
