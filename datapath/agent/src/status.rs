//! `datapathd status`: what the kernel holds for this instance, read from the kernel (not
//! from a running agent's memory): programs attached to the cgroup per hook, our pins,
//! our maps with entry counts, and the services and backends decoded from the maps.
//! The JSON shape is documented in datapath/README.md (`schema` 1).

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use datapath_common::{
    Backend, Meta, ServiceKey, ServiceValue, SlotKey, MAP_BACKENDS, MAP_META, MAP_SERVICES,
    MAP_SLOTS, META_KEY, OBJECT_PREFIX,
};
use serde::Serialize;

use crate::{
    cgroup::{self, Attachment, Cgroup, CgroupError},
    failpoint::MAP_ORDER,
    hooks::Hook,
    layout::Layout,
    maps::{map_type_name, BpfMap, MapError},
    prereq,
    programming::{addr_from_map, port_from_map, proto_name},
    sys,
};

pub const SCHEMA: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Prereq(#[from] prereq::PrereqError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Map(#[from] MapError),
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub schema: u32,
    pub bpffs: String,
    pub bpffs_exists: bool,
    pub cgroup: Option<CgroupStatus>,
    pub layout_version: Option<u32>,
    pub hooks: Vec<HookStatus>,
    pub pins: Vec<PinStatus>,
    pub maps: Vec<MapStatus>,
    pub services_source: Option<String>,
    pub services: Vec<ServiceStatus>,
    pub problems: Vec<String>,
    /// The BPF masquerade (masq.rs); null when none was configured. Filled by the CLI.
    pub masquerade: Option<crate::masq::MasqStatus>,
    /// The DP_FORWARD chain (iptables.rs); null when not managed here. Filled by the CLI.
    pub forward_chain: Option<crate::iptables::ChainStatus>,
    /// Pod networking: `routing`, `gateway`, `pods`, `ipcache`, `devices` at the top
    /// level (pods/status.rs). Filled by the CLI.
    #[serde(flatten)]
    pub pod_networking: crate::pods::status::PodsStatus,
    /// Socket acceleration: dp_sockhash's keys judged against the live sockets; null when
    /// dp_sockhash is not pinned.
    pub sockhash: Option<SockhashStatus>,
    /// Kernel features and the choices made from them (features.rs): the running agent's
    /// record, or probed by this command when there is none. Filled by the CLI.
    pub features: Option<crate::features::Report>,
    /// Service changes a full map refused (pressure.rs): the running agent's record, null
    /// when none was ever refused since the last cleanup.
    pub pressure: Option<crate::pressure::Pressure>,
}

#[derive(Debug, Serialize)]
pub struct SockhashStatus {
    pub map_id: u32,
    pub pinned: String,
    pub max_entries: u32,
    pub entries: usize,
    /// Keys whose cookie names a live socket whose own tuple is the key.
    pub live_entries: usize,
    pub keys: Vec<crate::sockgc::KeyStatus>,
    /// The accelerated prefixes in dp_accel.
    pub accelerate: Vec<String>,
    /// "any" (BPF_ANY, replace) or "noexist" (the sockmap-noexist mutant).
    pub insert: &'static str,
    /// Programs attached to dp_sockhash as its sk_msg verdict (BPF_PROG_QUERY on the map).
    pub skmsg_programs: Vec<ProgRef>,
    /// dp_accel_stats summed over CPUs: inserts, insert failures, messages seen,
    /// redirected, passed to TCP, bytes redirected, in-scope established callbacks.
    pub counters: BTreeMap<&'static str, u64>,
    /// Why keys could not be judged (sock_diag failed): then every `live` is false.
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ProgRef {
    pub id: u32,
    pub name: String,
}

#[derive(Debug, Serialize)]
pub struct CgroupStatus {
    pub path: String,
    pub id: u64,
}

#[derive(Debug, Serialize)]
pub struct HookStatus {
    pub hook: &'static str,
    pub attach_type: &'static str,
    pub expected_program: &'static str,
    pub programs: Vec<AttachedProgram>,
    pub ours: usize,
}

#[derive(Debug, Serialize)]
pub struct AttachedProgram {
    pub id: u32,
    pub name: String,
    pub map_ids: Vec<u32>,
    pub attached_by: &'static str,
    pub link_id: Option<u32>,
    pub ours: bool,
}

#[derive(Debug, Serialize)]
pub struct PinStatus {
    pub path: String,
    pub kind: &'static str,
    pub name: String,
    pub id: Option<u32>,
    pub program_id: Option<u32>,
    pub cgroup_id: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct MapStatus {
    pub id: u32,
    pub name: String,
    #[serde(rename = "type")]
    pub map_type: String,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub entries: usize,
    pub pinned: Option<String>,
    pub used_by: Vec<u32>,
}

#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    pub address: String,
    pub port: u16,
    pub protocol: &'static str,
    pub service_id: u32,
    pub backend_count: u32,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Serialize)]
pub struct BackendStatus {
    pub slot: u32,
    /// Absent when the slot or the backend entry is missing (a problem is reported).
    pub id: Option<u32>,
    pub address: Option<String>,
    pub port: Option<u16>,
}

/// `skipped`: hooks the agent leaves out on this kernel (see features.rs); none of ours is
/// wanted there.
pub fn collect(
    bpffs: &Path,
    cgroup_path: Option<&Path>,
    skipped: &[Hook],
) -> Result<Status, StatusError> {
    prereq::require_root()?;
    let layout = Layout::new(bpffs);
    let mut problems = Vec::new();
    let bpffs_exists = layout.root().is_dir();
    if !bpffs_exists {
        // Not an error (e.g. after cleanup), but the path must be on bpffs to mean anything.
        prereq::check_bpffs(layout.root())?;
    }

    // Pins: links first, they tell us the cgroup when none was given.
    let mut pins = Vec::new();
    let mut link_cgroups = BTreeSet::new();
    for hook in Hook::ALL {
        let path = layout.link_pin(hook);
        if path.symlink_metadata().is_err() {
            continue;
        }
        let mut pin = PinStatus {
            path: path.display().to_string(),
            kind: "link",
            name: hook.name().to_string(),
            id: None,
            program_id: None,
            cgroup_id: None,
            error: None,
        };
        match sys::obj_get(&path).and_then(|fd| sys::link_info(fd.as_fd())) {
            Ok(info) => {
                pin.id = Some(info.id);
                pin.program_id = Some(info.prog_id);
                pin.cgroup_id = Some(info.cgroup_id);
                if info.cgroup_id == 0 {
                    problems.push(format!(
                        "pinned link {hook} is detached (its cgroup is gone)"
                    ));
                } else {
                    link_cgroups.insert(info.cgroup_id);
                }
            }
            Err(e) => pin.error = Some(format!("{e}: {}", e.io_error)),
        }
        pins.push(pin);
    }
    let mut pinned_maps: BTreeMap<u32, String> = BTreeMap::new();
    let mut pinned_by_name: BTreeMap<String, u32> = BTreeMap::new();
    let mut layout_version = None;
    for name in MAP_ORDER {
        let path = layout.map_pin(name);
        if path.symlink_metadata().is_err() {
            continue;
        }
        let mut pin = PinStatus {
            path: path.display().to_string(),
            kind: "map",
            name: name.to_string(),
            id: None,
            program_id: None,
            cgroup_id: None,
            error: None,
        };
        match BpfMap::open_pin(&path) {
            Ok(m) => {
                pin.id = Some(m.info.id);
                pinned_maps.insert(m.info.id, pin.path.clone());
                pinned_by_name.insert(name.to_string(), m.info.id);
                if name == MAP_META {
                    layout_version = m
                        .get::<u32, Meta>(&META_KEY)
                        .ok()
                        .flatten()
                        .map(|m| m.layout_version);
                }
            }
            Err(e) => pin.error = Some(format!("{e}")),
        }
        pins.push(pin);
    }
    // Anything else under our directory is unexpected: report it as a pin of unknown kind.
    for dir in [layout.maps_dir(), layout.links_dir()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path().display().to_string();
            if !pins.iter().any(|p| p.path == path) {
                problems.push(format!("unexpected pin {path}"));
                pins.push(PinStatus {
                    path,
                    kind: "unknown",
                    name: e.file_name().to_string_lossy().into_owned(),
                    id: None,
                    program_id: None,
                    cgroup_id: None,
                    error: None,
                });
            }
        }
    }

    // The cgroup: given, or the one our pinned links are attached to.
    let cgroup_path: Option<PathBuf> = match cgroup_path {
        Some(p) => Some(p.to_path_buf()),
        None => {
            if link_cgroups.len() > 1 {
                problems.push(format!(
                    "pinned links are attached to {} different cgroups",
                    link_cgroups.len()
                ));
            }
            let mounts = prereq::cgroup2_mounts()?;
            link_cgroups
                .iter()
                .next()
                .and_then(|&id| cgroup::find_by_id(&mounts, id))
        }
    };
    let cgroup = match cgroup_path {
        Some(p) => {
            prereq::check_cgroup(&p)?;
            Some(Cgroup::open(&p)?)
        }
        None => None,
    };

    // Attachments per hook.
    let mut hooks = Vec::new();
    let mut first_connect4: Option<Attachment> = None;
    let mut used_by: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    if let Some(cg) = &cgroup {
        let links = cg.links()?;
        for hook in Hook::ALL {
            let attached = cg.attachments(hook, &links)?;
            let ours = attached.iter().filter(|a| a.is_ours()).count();
            let want = usize::from(!skipped.contains(&hook));
            if ours != want {
                problems.push(format!(
                    "hook {hook}: {ours} programs of ours attached (want {want})"
                ));
            }
            for a in attached.iter().filter(|a| a.is_ours()) {
                if a.link_id.is_none() {
                    problems.push(format!(
                        "hook {hook}: program {} ({}) is attached by legacy BPF_PROG_ATTACH",
                        a.prog.id, a.prog.name
                    ));
                }
                for m in &a.prog.map_ids {
                    used_by.entry(*m).or_default().push(a.prog.id);
                }
                if hook == Hook::Connect4 && first_connect4.is_none() {
                    first_connect4 = Some(a.clone());
                }
            }
            hooks.push(HookStatus {
                hook: hook.name(),
                attach_type: hook.bpftool_attach_type(),
                expected_program: hook.program(),
                ours,
                programs: attached
                    .iter()
                    .map(|a| AttachedProgram {
                        id: a.prog.id,
                        name: a.prog.name.clone(),
                        map_ids: a.prog.map_ids.clone(),
                        attached_by: if a.link_id.is_some() {
                            "link"
                        } else {
                            "legacy"
                        },
                        link_id: a.link_id,
                        ours: a.is_ours(),
                    })
                    .collect(),
            });
        }
    } else if bpffs_exists || !pins.is_empty() {
        problems.push("no cgroup given and none found from the pinned links: attachments not inspected (pass --cgroup)".into());
    }

    // Maps: pinned ones and those our attached programs use.
    let mut map_ids: BTreeSet<u32> = pinned_maps.keys().copied().collect();
    map_ids.extend(used_by.keys().copied());
    let mut maps = Vec::new();
    let mut opened: BTreeMap<u32, BpfMap> = BTreeMap::new();
    for id in map_ids {
        let m = match BpfMap::from_id(id) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("map {id}: {e}"));
                continue;
            }
        };
        if !m.info.name.starts_with(OBJECT_PREFIX) {
            continue;
        }
        let users = used_by.get(&id).cloned().unwrap_or_default();
        if pinned_maps.contains_key(&id)
            && users.is_empty()
            && m.info.name != MAP_META
            && cgroup.is_some()
        {
            problems.push(format!(
                "pinned map {} (id {id}) is used by no attached program",
                m.info.name
            ));
        }
        if !pinned_maps.contains_key(&id) && !pinned_maps.is_empty() {
            problems.push(format!(
                "map {} (id {id}) used by program(s) {users:?} is not the pinned one",
                m.info.name
            ));
        }
        maps.push(MapStatus {
            id,
            name: m.info.name.clone(),
            map_type: map_type_name(m.info.map_type),
            key_size: m.info.key_size,
            value_size: m.info.value_size,
            max_entries: m.info.max_entries,
            entries: m.count()?,
            pinned: pinned_maps.get(&id).cloned(),
            used_by: users,
        });
        opened.insert(id, m);
    }

    // Services: from the pinned maps, else from the maps of the connect4 program of ours
    // that runs first on the cgroup.
    let pick = |name: &str| -> Option<u32> {
        if let Some(&id) = pinned_by_name.get(name) {
            return Some(id);
        }
        let a = first_connect4.as_ref()?;
        a.prog
            .map_ids
            .iter()
            .copied()
            .find(|id| opened.get(id).is_some_and(|m| m.info.name == name))
    };
    let (source, triple) = match (pick(MAP_SERVICES), pick(MAP_SLOTS), pick(MAP_BACKENDS)) {
        (Some(s), Some(l), Some(b)) => {
            let source = if pinned_by_name.contains_key(MAP_SERVICES) {
                "pins".to_string()
            } else {
                format!(
                    "program:{}",
                    first_connect4.as_ref().map_or(0, |a| a.prog.id)
                )
            };
            (Some(source), Some((s, l, b)))
        }
        _ => (None, None),
    };
    let services = match triple {
        Some((s, l, b)) => decode_services(&opened[&s], &opened[&l], &opened[&b], &mut problems)?,
        None => Vec::new(),
    };

    let sockhash = sockhash_status(&layout, &mut problems);
    let pressure = crate::pressure::read(bpffs).unwrap_or_else(|e| {
        problems.push(format!("{e}"));
        None
    });
    if let Some(p) = pressure.as_ref().filter(|p| p.resolved_at.is_none()) {
        problems.push(format!(
            "map pressure: {} service change(s) refused: {} full",
            p.refused_count,
            p.full
                .iter()
                .map(|f| f.map.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(Status {
        schema: SCHEMA,
        bpffs: layout.root().display().to_string(),
        bpffs_exists,
        cgroup: cgroup.as_ref().map(|c| CgroupStatus {
            path: c.path.display().to_string(),
            id: c.id,
        }),
        layout_version,
        hooks,
        pins,
        maps,
        services_source: source,
        services,
        problems,
        masquerade: None,
        forward_chain: None,
        pod_networking: Default::default(),
        sockhash,
        features: None,
        pressure,
    })
}

/// `sockhash` of the status, from the pinned dp_sockhash, dp_accel and dp_accel_stats.
fn sockhash_status(layout: &Layout, problems: &mut Vec<String>) -> Option<SockhashStatus> {
    use datapath_common::{
        AccelConfig, SockKey, INSERT_NOEXIST, MAP_ACCEL, MAP_ACCEL_STATS, MAP_SOCKHASH,
        STAT_BYTES_REDIRECTED, STAT_ESTABLISHED, STAT_INSERT_FAILED, STAT_INSERT_OK, STAT_MSG,
        STAT_MSG_PASSED, STAT_MSG_REDIRECTED,
    };
    let pin = layout.map_pin(MAP_SOCKHASH);
    if pin.symlink_metadata().is_err() {
        return None;
    }
    let map = match BpfMap::open_pin(&pin) {
        Ok(m) => m,
        Err(e) => {
            problems.push(format!("dp_sockhash: {e}"));
            return None;
        }
    };
    let mut error = None;
    let entries = map.entries::<SockKey, u64>().unwrap_or_else(|e| {
        error = Some(format!("reading dp_sockhash: {e}"));
        Vec::new()
    });
    let live = crate::sockgc::live_sockets().unwrap_or_else(|e| {
        error = Some(format!("listing live sockets: {e}"));
        Default::default()
    });
    let mut keys: Vec<_> = entries
        .iter()
        .map(|(k, c)| crate::sockgc::key_status(k, *c, &live))
        .collect();
    keys.sort_by(|a, b| (a.family, &a.src, &a.dst).cmp(&(b.family, &b.src, &b.dst)));
    let live_entries = keys.iter().filter(|k| k.live).count();
    if live_entries < keys.len() && error.is_none() {
        problems.push(format!(
            "dp_sockhash: {} of {} key(s) are not owned by a live socket with that tuple",
            keys.len() - live_entries,
            keys.len()
        ));
    }

    let (mut accelerate, mut insert) = (Vec::new(), "any");
    if let Ok(Some(cfg)) =
        BpfMap::open_pin(&layout.map_pin(MAP_ACCEL)).and_then(|m| m.get::<u32, AccelConfig>(&0))
    {
        for i in 0..(cfg.count as usize).min(cfg.nets.len()) {
            let net = std::net::Ipv4Addr::from(cfg.nets[i].to_ne_bytes());
            let len = u32::from_be(cfg.masks[i]).count_ones();
            accelerate.push(format!("{net}/{len}"));
        }
        if cfg.insert_flags == INSERT_NOEXIST {
            insert = "noexist";
        }
    }
    let mut counters = BTreeMap::new();
    if let Ok(stats) = BpfMap::open_pin(&layout.map_pin(MAP_ACCEL_STATS)) {
        for (name, idx) in [
            ("established", STAT_ESTABLISHED),
            ("inserted", STAT_INSERT_OK),
            ("insert_failed", STAT_INSERT_FAILED),
            ("messages", STAT_MSG),
            ("redirected", STAT_MSG_REDIRECTED),
            ("passed", STAT_MSG_PASSED),
            ("bytes_redirected", STAT_BYTES_REDIRECTED),
        ] {
            if let Ok(v) = stats.percpu_u64_sum(idx) {
                counters.insert(name, v);
            }
        }
    }
    let skmsg_programs = sys::prog_query(
        map.fd(),
        aya_obj::generated::bpf_attach_type::BPF_SK_MSG_VERDICT as u32,
    )
    .unwrap_or_default()
    .into_iter()
    .map(|id| ProgRef {
        id,
        name: sys::fd_by_id(sys::Obj::Prog, id)
            .and_then(|fd| sys::prog_info(fd.as_fd()))
            .map(|p| p.name)
            .unwrap_or_default(),
    })
    .collect::<Vec<_>>();
    if skmsg_programs.is_empty() {
        problems.push("dp_sockhash has no sk_msg program attached".into());
    }
    if keys.len() >= map.info.max_entries as usize {
        problems.push(sockhash_full(keys.len(), map.info.max_entries));
    }
    Some(SockhashStatus {
        map_id: map.info.id,
        pinned: pin.display().to_string(),
        max_entries: map.info.max_entries,
        entries: keys.len(),
        live_entries,
        keys,
        accelerate,
        insert,
        skmsg_programs,
        counters,
        error,
    })
}

/// The pressure line for a full sockhash: connections still work, unaccelerated.
pub fn sockhash_full(entries: usize, capacity: u32) -> String {
    format!(
        "map pressure: dp_sockhash is full ({entries} of {capacity} entries): new connections \
         are not accelerated (they still work through the TCP stack) until entries go"
    )
}

fn decode_services(
    services: &BpfMap,
    slots: &BpfMap,
    backends: &BpfMap,
    problems: &mut Vec<String>,
) -> Result<Vec<ServiceStatus>, MapError> {
    let services: BTreeMap<ServiceKey, ServiceValue> = services.entries()?.into_iter().collect();
    let slots: BTreeMap<SlotKey, u32> = slots.entries()?.into_iter().collect();
    let backends: BTreeMap<u32, Backend> = backends.entries()?.into_iter().collect();
    Ok(decode(&services, &slots, &backends, problems))
}

/// Pure decoding of the three maps into services with their backends, in slot order.
pub fn decode(
    services: &BTreeMap<ServiceKey, ServiceValue>,
    slots: &BTreeMap<SlotKey, u32>,
    backends: &BTreeMap<u32, Backend>,
    problems: &mut Vec<String>,
) -> Vec<ServiceStatus> {
    let mut out = Vec::new();
    for (k, v) in services {
        let address = addr_from_map(k.addr).to_string();
        let port = port_from_map(k.port);
        let protocol = proto_name(k.proto);
        let mut list = Vec::new();
        for slot in 0..v.backend_count {
            let id = slots.get(&SlotKey {
                service_id: v.service_id,
                slot,
            });
            let b = id.and_then(|id| backends.get(id));
            if b.is_none() {
                problems.push(format!(
                    "service {address}:{port}/{protocol}: slot {slot} has {}",
                    if id.is_none() {
                        "no slot entry".to_string()
                    } else {
                        format!(
                            "backend id {} with no backend entry",
                            id.copied().unwrap_or_default()
                        )
                    }
                ));
            }
            list.push(BackendStatus {
                slot,
                id: id.copied(),
                address: b.map(|b| addr_from_map(b.addr).to_string()),
                port: b.map(|b| port_from_map(b.port)),
            });
        }
        out.push(ServiceStatus {
            address,
            port,
            protocol,
            service_id: v.service_id,
            backend_count: v.backend_count,
            backends: list,
        });
    }
    out.sort_by(|a, b| {
        (a.address.as_str(), a.port, a.protocol).cmp(&(b.address.as_str(), b.port, b.protocol))
    });
    out
}

/// A short human-readable rendering (without --json).
pub fn render_text(s: &Status) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "bpffs {} ({})\n",
        s.bpffs,
        if s.bpffs_exists { "present" } else { "absent" }
    ));
    match &s.cgroup {
        Some(c) => out.push_str(&format!("cgroup {} (id {})\n", c.path, c.id)),
        None => out.push_str("cgroup: unknown\n"),
    }
    for h in &s.hooks {
        out.push_str(&format!("hook {}: {} of ours\n", h.hook, h.ours));
        for p in &h.programs {
            out.push_str(&format!(
                "  prog {} {} by {}{} maps {:?}\n",
                p.id,
                p.name,
                p.attached_by,
                p.link_id
                    .map(|l| format!(" (link {l})"))
                    .unwrap_or_default(),
                p.map_ids
            ));
        }
    }
    for m in &s.maps {
        out.push_str(&format!(
            "map {} {} entries {}/{}{}\n",
            m.id,
            m.name,
            m.entries,
            m.max_entries,
            m.pinned
                .as_ref()
                .map(|p| format!(" pinned {p}"))
                .unwrap_or_default()
        ));
    }
    for svc in &s.services {
        let bs: Vec<String> = svc
            .backends
            .iter()
            .map(|b| match (&b.address, b.port) {
                (Some(a), Some(p)) => format!("{a}:{p}"),
                _ => "?".into(),
            })
            .collect();
        out.push_str(&format!(
            "service {}:{}/{} -> [{}]\n",
            svc.address,
            svc.port,
            svc.protocol,
            bs.join(", ")
        ));
    }
    out.push_str(&crate::pods::status::render_text(&s.pod_networking));
    if let Some(f) = &s.features {
        out.push_str(&f.render_text());
    }
    if let Some(p) = &s.pressure {
        let full: Vec<String> = p
            .full
            .iter()
            .map(|f| format!("{} ({} of {})", f.map, f.used, f.capacity))
            .collect();
        out.push_str(&format!(
            "map pressure since {} (unix s){}: {} full; {} change(s) refused\n",
            p.since,
            p.resolved_at
                .map(|t| format!(", resolved at {t}"))
                .unwrap_or_default(),
            full.join(", "),
            p.refused_count
        ));
        for r in &p.refused {
            out.push_str(&format!("  {r}\n"));
        }
    }
    for p in &s.problems {
        out.push_str(&format!("problem: {p}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use datapath_common::PROTO_UDP;

    use super::*;
    use crate::programming::{backend_value, service_key};

    #[test]
    fn decodes_services_in_slot_order_and_reports_holes() {
        let k = service_key(Ipv4Addr::new(127, 10, 0, 1), 53, PROTO_UDP);
        let services = BTreeMap::from([(
            k,
            ServiceValue {
                backend_count: 3,
                service_id: 7,
            },
        )]);
        let slots = BTreeMap::from([
            (
                SlotKey {
                    service_id: 7,
                    slot: 0,
                },
                2,
            ),
            (
                SlotKey {
                    service_id: 7,
                    slot: 1,
                },
                1,
            ),
            (
                SlotKey {
                    service_id: 7,
                    slot: 2,
                },
                9,
            ),
        ]);
        let backends = BTreeMap::from([
            (
                1,
                backend_value(
                    SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 5353),
                    PROTO_UDP,
                ),
            ),
            (
                2,
                backend_value(
                    SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 3), 5353),
                    PROTO_UDP,
                ),
            ),
        ]);
        let mut problems = Vec::new();
        let out = decode(&services, &slots, &backends, &mut problems);
        assert_eq!(out.len(), 1);
        let s = &out[0];
        assert_eq!(
            (s.address.as_str(), s.port, s.protocol, s.service_id),
            ("127.10.0.1", 53, "udp", 7)
        );
        let addrs: Vec<_> = s.backends.iter().map(|b| b.address.clone()).collect();
        assert_eq!(
            addrs,
            vec![Some("127.0.0.3".into()), Some("127.0.0.2".into()), None]
        );
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("backend id 9"), "{problems:?}");
        let json = serde_json::to_value(s).expect("serialize");
        assert_eq!(json["backends"][0]["port"], 5353);
    }
}
