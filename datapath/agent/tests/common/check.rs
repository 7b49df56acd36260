//! The restart invariants of incident A, as one judgement that lists every violation it
//! sees (empty = pass). The correct datapath must pass it after any crash; the
//! `stale-cgroup-prog` mutant must fail it, which proves the check can see the bug.
//!
//! It judges from two witnesses that share no code: `datapathd status --json` (the agent's
//! own report) and `bpftool -j` (the kernel, read independently), and from real traffic.
//! The kernel's side is judged by the harness's own pure functions (one-program-per-hook,
//! no-orphan-bpf-objects) on the harness's observation, so the agent's tests and the
//! chaos runs hold the datapath to one definition; what only a sandbox can judge (maps
//! leaked since the test began, a link's cgroup, the agent's report against the kernel's)
//! is added here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use harness::invariant::{no_orphan, one_program, Judgement, Verdict};
use harness::node::netns::NetnsNode;
use harness::observe::bpf::{self, Attached, Kernel};
use serde::Deserialize;

use super::bpftool::{self, is_ours};
use super::probe;
use super::sandbox::Sandbox;
use super::yaml::Svc;

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
/// The harness's judges' violations start with the invariant's name
/// (`one-program-per-hook: node dpt-... hook connect4: 2 programs of ours attached ...`).
pub fn check(sb: &Sandbox, services: &[Svc]) -> Vec<String> {
    let mut v = Vec::new();
    // The harness's observation: `bpftool cgroup show` of the sandbox's cgroup and the
    // kernel's programs, maps and links, read on the host (the sandbox's kernel).
    match bpf::observe(&NetnsNode::host(), &sb.cgroup) {
        Err(e) => v.push(format!("bpftool: {e}")),
        Ok((attached, kernel)) => {
            let bpffs = sb.bpffs_str();
            violations(
                "one-program-per-hook",
                one_program::judge(&sb.name, bpffs, &attached, &kernel.links),
                &mut v,
            );
            violations(
                "no-orphan-bpf-objects",
                no_orphan::judge(&sb.name, bpffs, &attached, &kernel),
                &mut v,
            );
            check_status_agrees(sb, &attached, &mut v);
            check_no_map_leaked(sb, &kernel, &mut v);
        }
    }
    check_link_cgroups(sb, &mut v);
    check_traffic(sb, services, &mut v);
    v
}

/// A judgement's violations, each prefixed with the invariant's name: a fail's evidence,
/// or why it could not judge (which is never a pass).
fn violations(invariant: &str, j: Judgement, v: &mut Vec<String>) {
    match j.verdict {
        Verdict::Pass => {}
        Verdict::Fail if !j.evidence.is_empty() => {
            v.extend(j.evidence.iter().map(|e| format!("{invariant}: {e}")));
        }
        Verdict::Fail | Verdict::Unknown | Verdict::Skipped => {
            v.push(format!("{invariant}: {:?}: {}", j.verdict, j.summary));
        }
    }
}

/// The agent's report names, per hook, exactly one program of ours, the one the kernel
/// has attached, under the hook's program name (`dp_connect4` on connect4).
fn check_status_agrees(sb: &Sandbox, attached: &[Attached], v: &mut Vec<String>) {
    let st = match status(sb) {
        Ok(st) => st,
        Err(e) => return v.push(e),
    };
    if st.schema != 1 {
        v.push(format!(
            "status: schema {} (this check reads schema 1)",
            st.schema
        ));
    }
    for (hook, attach_type) in one_program::HOOKS {
        let prog = format!("dp_{hook}");
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
        // How many the kernel has is one-program-per-hook's to judge; with one, it must
        // be the hook's program and the one the agent reports.
        let in_kernel: Vec<&Attached> = attached
            .iter()
            .filter(|a| a.attach_type == attach_type && is_ours(&a.name))
            .collect();
        if let [one] = in_kernel.as_slice() {
            if one.name != prog {
                v.push(format!(
                    "bpftool: {attach_type} runs {} (id {}), expected {prog}",
                    one.name, one.id
                ));
            }
            if ours != [one.id] {
                v.push(format!(
                    "bpftool and status disagree on {hook}: the kernel has {prog} id {}, status says {ours:?}",
                    one.id
                ));
            }
        }
    }
}

/// Every `dp_*` map this test brought into the kernel is used by a program attached to
/// our cgroup, pinned in our directory, or someone else's (pinned elsewhere, used by a
/// program attached to another cgroup): none is left unreferenced.
fn check_no_map_leaked(sb: &Sandbox, kernel: &Kernel, v: &mut Vec<String>) {
    let tree = match bpftool::try_cgroup_tree() {
        Ok(t) => t,
        Err(e) => return v.push(e),
    };
    let our_dir = sb.bpffs.join("maps");
    let in_our_dir = |pins: &[String]| pins.iter().any(|p| Path::new(p).starts_with(&our_dir));
    let prog_maps: BTreeMap<u32, &[u32]> = kernel
        .progs
        .iter()
        .map(|p| (p.id, p.map_ids.as_slice()))
        .collect();
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
    let used = |progs: &BTreeSet<u32>| -> BTreeSet<u32> {
        progs
            .iter()
            .filter_map(|id| prog_maps.get(id))
            .flat_map(|maps| maps.iter().copied())
            .collect()
    };
    let (used_here, used_elsewhere) = (used(&here), used(&elsewhere));
    for m in kernel
        .maps
        .iter()
        .filter(|m| is_ours(&m.name) && !sb.baseline_maps.contains(&m.id))
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

/// Each pinned link of ours is attached to our cgroup (that it carries the attached
/// program is one-program-per-hook's and no-orphan's to judge).
fn check_link_cgroups(sb: &Sandbox, v: &mut Vec<String>) {
    let links = match bpftool::try_links() {
        Ok(l) => l,
        Err(e) => return v.push(e),
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
