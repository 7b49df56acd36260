//! The restart invariants of incident A, as one judgement that lists every violation it
//! sees (empty = pass). The correct datapath must pass it after any crash; the
//! `stale-cgroup-prog` mutant must fail it, which proves the check can see the bug.
//!
//! It judges from two witnesses that share no code: `datapathd status --json` (the agent's
//! own report) and `bpftool -j` (the kernel, read independently), and from real traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::bpftool::{self, PREFIX};
use super::probe;
use super::sandbox::Sandbox;
use super::yaml::Svc;

/// The four hooks: our short name, bpftool's attach type name, our program's name.
pub const HOOKS: [(&str, &str, &str); 4] = [
    ("connect4", "cgroup_inet4_connect", "dp_connect4"),
    ("sendmsg4", "cgroup_udp4_sendmsg", "dp_sendmsg4"),
    ("recvmsg4", "cgroup_udp4_recvmsg", "dp_recvmsg4"),
    (
        "getpeername4",
        "cgroup_inet4_getpeername",
        "dp_getpeername4",
    ),
];

/// Connects per service in one check; all must reach a live backend.
const ATTEMPTS: u32 = 6;
/// Per attempt. A backend in the same namespace answers in well under a millisecond; an
/// attempt that goes to a dead backend over UDP can only end by this timeout.
const ATTEMPT_TIMEOUT_MS: u32 = 500;

/// The parts of `datapathd status --json` (schema 1, datapath/README.md) judged here.
#[derive(Debug, Deserialize)]
pub struct Status {
    pub schema: u32,
    #[serde(default)]
    pub hooks: Vec<HookStatus>,
    #[serde(default)]
    pub maps: Vec<MapStatus>,
}

#[derive(Debug, Deserialize)]
pub struct HookStatus {
    pub hook: String,
    #[serde(default)]
    pub programs: Vec<AttachedProgram>,
    pub ours: usize,
}

#[derive(Debug, Deserialize)]
pub struct AttachedProgram {
    pub id: u32,
    pub name: String,
    pub ours: bool,
}

#[derive(Debug, Deserialize)]
pub struct MapStatus {
    pub id: u32,
    pub name: String,
    pub pinned: Option<String>,
}

/// Reads the agent's report; a failure is itself a violation, never a pass.
pub fn status(sb: &Sandbox) -> Result<Status, String> {
    let out = super::sandbox::datapathd_cmd(&[
        "status",
        "--json",
        "--bpffs",
        sb.bpffs_str(),
        "--cgroup",
        sb.cgroup_str(),
    ]);
    if !out.status.success() {
        return Err(format!(
            "datapathd status failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "datapathd status --json: unexpected JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs [`check`] until it passes or `patience` has passed, and returns the last verdict.
/// Some kernel effects (a dead process's link going away) are not instantaneous.
pub fn check_within(sb: &Sandbox, services: &[Svc], patience: Duration) -> Vec<String> {
    let deadline = Instant::now() + patience;
    loop {
        let v = check(sb, services);
        if v.is_empty() || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every violation of the restart invariants in this sandbox right now, given the services
/// the live agent was started with (whose ready endpoints are the only live backends).
pub fn check(sb: &Sandbox, services: &[Svc]) -> Vec<String> {
    let mut v = Vec::new();
    let live_progs = check_programs(sb, &mut v);
    check_maps(sb, &live_progs, &mut v);
    check_links(sb, &live_progs, &mut v);
    check_traffic(sb, services, &mut v);
    v
}

/// One program of ours per hook, the same in the agent's report and in the kernel's.
/// Returns bpftool's attach type -> the single program of ours attached there.
fn check_programs(sb: &Sandbox, v: &mut Vec<String>) -> BTreeMap<String, u32> {
    let mut from_status: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    match status(sb) {
        Err(e) => v.push(e),
        Ok(st) => {
            if st.schema != 1 {
                v.push(format!(
                    "status: schema {} (this check reads schema 1)",
                    st.schema
                ));
            }
            for (hook, _, prog) in HOOKS {
                let Some(h) = st.hooks.iter().find(|h| h.hook == hook) else {
                    v.push(format!("status: no entry for hook {hook}"));
                    continue;
                };
                let ours: Vec<u32> = h.programs.iter().filter(|p| p.ours).map(|p| p.id).collect();
                if h.ours != 1 || ours.len() != 1 {
                    let all: Vec<String> = h
                        .programs
                        .iter()
                        .map(|p| format!("{} id {}", p.name, p.id))
                        .collect();
                    v.push(format!(
                        "status: hook {hook} has {} program(s) of ours attached, expected exactly one {prog}: [{}]",
                        h.ours,
                        all.join(", ")
                    ));
                }
                from_status.insert(hook, ours);
            }
        }
    }

    let mut live = BTreeMap::new();
    let attached = match bpftool::try_cgroup_show(&sb.cgroup) {
        Ok(a) => a,
        Err(e) => {
            v.push(e);
            return live;
        }
    };
    for (hook, attach_type, prog) in HOOKS {
        let ours: Vec<&bpftool::Attached> = attached
            .iter()
            .filter(|a| a.attach_type == attach_type && a.name.starts_with(PREFIX))
            .collect();
        match ours.as_slice() {
            [one] => {
                if one.name != prog {
                    v.push(format!(
                        "bpftool: {attach_type} runs {} (id {}), expected {prog}",
                        one.name, one.id
                    ));
                }
                if let Some(ids) = from_status.get(hook) {
                    if ids.as_slice() != [one.id] {
                        v.push(format!(
                            "bpftool and status disagree on {hook}: the kernel has {prog} id {}, status says {ids:?}",
                            one.id
                        ));
                    }
                }
                live.insert(attach_type.to_owned(), one.id);
            }
            many => {
                let list: Vec<String> = many
                    .iter()
                    .map(|a| format!("{} id {} flags {:?}", a.name, a.id, a.attach_flags))
                    .collect();
                v.push(format!(
                    "bpftool cgroup show {}: {attach_type} has {} program(s) of ours, expected exactly one: [{}]",
                    sb.cgroup.display(),
                    many.len(),
                    list.join(", ")
                ));
            }
        }
    }
    live
}

/// Every attached program of ours reads the live (pinned) maps, and every `dp_*` map this
/// test brought into the kernel is used by a live attached program or pinned in our
/// directory.
fn check_maps(sb: &Sandbox, live_progs: &BTreeMap<String, u32>, v: &mut Vec<String>) {
    let (maps, progs, tree) = match (
        bpftool::try_maps(),
        bpftool::try_progs(),
        bpftool::try_cgroup_tree(),
    ) {
        (Ok(m), Ok(p), Ok(t)) => (m, p, t),
        (m, p, t) => {
            v.extend([m.err(), p.err(), t.err()].into_iter().flatten());
            return;
        }
    };
    let our_dir = sb.bpffs.join("maps");
    let in_our_dir = |pins: &[String]| pins.iter().any(|p| Path::new(p).starts_with(&our_dir));
    // The live maps: ours, pinned in our directory, by name.
    let pinned: BTreeMap<&str, u32> = maps
        .iter()
        .filter(|m| m.is_ours() && in_our_dir(&m.pinned))
        .map(|m| (m.name.as_str(), m.id))
        .collect();
    let map_name: BTreeMap<u32, &str> = maps.iter().map(|m| (m.id, m.name.as_str())).collect();
    let prog_by_id: BTreeMap<u32, &bpftool::Prog> = progs.iter().map(|p| (p.id, p)).collect();

    // Programs attached to our cgroup (all of them, stale ones included) vs. elsewhere.
    let ours_cgroup = sb
        .cgroup
        .canonicalize()
        .unwrap_or_else(|_| sb.cgroup.clone());
    let mut here: BTreeSet<u32> = BTreeSet::new();
    let mut elsewhere: BTreeSet<u32> = BTreeSet::new();
    for entry in &tree {
        let is_ours =
            Path::new(&entry.cgroup) == ours_cgroup || Path::new(&entry.cgroup) == sb.cgroup;
        for p in &entry.programs {
            if is_ours {
                here.insert(p.id)
            } else {
                elsewhere.insert(p.id)
            };
        }
    }
    // bpftool cgroup tree may not list a cgroup it cannot name; cgroup show is direct.
    if let Ok(attached) = bpftool::try_cgroup_show(&sb.cgroup) {
        here.extend(attached.iter().map(|a| a.id));
    }

    let mut used_here: BTreeSet<u32> = BTreeSet::new();
    for id in &here {
        let Some(prog) = prog_by_id.get(id) else {
            continue;
        };
        if !prog.name.starts_with(PREFIX) {
            continue;
        }
        used_here.extend(prog.map_ids.iter().copied());
        for m in &prog.map_ids {
            let name = map_name.get(m).copied().unwrap_or("?");
            if !name.starts_with(PREFIX) {
                continue;
            }
            match pinned.get(name) {
                Some(live) if live == m => {}
                Some(live) => v.push(format!(
                    "program {} (id {id}) attached to our cgroup reads {name} id {m}, not the live pinned {name} id {live}",
                    prog.name
                )),
                None => v.push(format!(
                    "program {} (id {id}) attached to our cgroup reads {name} id {m}, which is not pinned under {}",
                    prog.name,
                    our_dir.display()
                )),
            }
        }
    }
    // The live connect4 program must read the live service map.
    if let (Some(prog), Some(svc_map)) = (
        live_progs
            .get("cgroup_inet4_connect")
            .and_then(|id| prog_by_id.get(id)),
        pinned.get("dp_services"),
    ) {
        if !prog.map_ids.contains(svc_map) {
            v.push(format!(
                "the live dp_connect4 (id {}) does not read the pinned dp_services (id {svc_map})",
                prog.id
            ));
        }
    }

    let used_elsewhere: BTreeSet<u32> = elsewhere
        .iter()
        .filter_map(|id| prog_by_id.get(id))
        .flat_map(|p| p.map_ids.iter().copied())
        .collect();
    for m in maps
        .iter()
        .filter(|m| m.is_ours() && !sb.baseline_maps.contains(&m.id))
    {
        let foreign =
            (!m.pinned.is_empty() && !in_our_dir(&m.pinned)) || used_elsewhere.contains(&m.id);
        if foreign || in_our_dir(&m.pinned) || used_here.contains(&m.id) {
            continue;
        }
        v.push(format!(
            "map {} id {} is left unreferenced: no program attached to our cgroup uses it and it is not pinned under {}",
            m.name,
            m.id,
            our_dir.display()
        ));
    }
}

/// Each pinned link of ours is attached to our cgroup and carries the live program.
fn check_links(sb: &Sandbox, live_progs: &BTreeMap<String, u32>, v: &mut Vec<String>) {
    let links = match bpftool::try_links() {
        Ok(l) => l,
        Err(e) => {
            v.push(e);
            return;
        }
    };
    let our_dir = sb.bpffs.join("links");
    for l in links
        .iter()
        .filter(|l| l.pinned.iter().any(|p| Path::new(p).starts_with(&our_dir)))
    {
        if l.cgroup_id != Some(sb.cgroup_id) {
            v.push(format!(
                "link id {} pinned at {:?} is attached to cgroup id {:?}, not ours ({})",
                l.id, l.pinned, l.cgroup_id, sb.cgroup_id
            ));
        }
        let live = l.attach_type.as_deref().and_then(|t| live_progs.get(t));
        if let Some(live) = live {
            if *live != l.prog_id {
                v.push(format!(
                    "link id {} pinned at {:?} carries program id {}, but program id {live} is the one attached",
                    l.id, l.pinned, l.prog_id
                ));
            }
        }
    }
}

/// Every service answers from one of its live backends, every time.
fn check_traffic(sb: &Sandbox, services: &[Svc], v: &mut Vec<String>) {
    for s in services {
        let live = s.live_backends();
        for a in probe::connect(
            &sb.netns,
            &sb.cgroup,
            &s.addr(),
            s.proto_arg(),
            ATTEMPTS,
            ATTEMPT_TIMEOUT_MS,
        ) {
            let backend = a.backend.clone().unwrap_or_default();
            if !a.ok {
                v.push(format!(
                    "{} {}: attempt failed: errno {:?}, {} (live backends {live:?})",
                    s.proto,
                    s.addr(),
                    a.errno,
                    a.error.unwrap_or_default()
                ));
            } else if !live.contains(&backend) {
                v.push(format!(
                    "{} {}: answered by {backend}, not a live backend {live:?}",
                    s.proto,
                    s.addr()
                ));
            }
        }
    }
}

/// The services as `datapathd status` decodes them from the maps:
/// `(address:port, protocol) -> sorted backends (address:port)`.
pub fn programmed(st: &serde_json::Value) -> BTreeMap<(String, String), Vec<String>> {
    let mut out = BTreeMap::new();
    for s in st["services"].as_array().into_iter().flatten() {
        let key = (
            format!("{}:{}", s["address"].as_str().unwrap_or("?"), s["port"]),
            s["protocol"].as_str().unwrap_or("?").to_ascii_lowercase(),
        );
        let mut backends: Vec<String> = s["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| format!("{}:{}", b["address"].as_str().unwrap_or("?"), b["port"]))
            .collect();
        backends.sort();
        backends.dedup();
        out.insert(key, backends);
    }
    out
}

/// What [`programmed`] must show for `services`.
pub fn expected(services: &[Svc]) -> BTreeMap<(String, String), Vec<String>> {
    services
        .iter()
        .map(|s| {
            let mut b = s.live_backends();
            b.sort();
            b.dedup();
            ((s.addr(), s.proto_arg().to_owned()), b)
        })
        .collect()
}

/// Waits until the maps hold exactly `services`; returns how long that took, or None.
pub fn wait_programmed(sb: &Sandbox, services: &[Svc], limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let want = expected(services);
    super::wait_for(limit, || {
        (programmed(&sb.status()) == want).then(|| start.elapsed())
    })
}
