//! Acceptance 5 (issue 2): `datapathd cleanup` leaves no program, map, link or pin of
//! ours, as bpftool sees it. Needs root; see tests/common/mod.rs.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::bpftool;
use common::sandbox::{AgentOpts, Sandbox};
use common::yaml::{self, Svc};

/// What the kernel holds for one sandbox, by id.
#[derive(Debug, Default)]
struct Held {
    progs: BTreeSet<u32>,
    maps: BTreeSet<u32>,
    links: BTreeSet<u32>,
    pins: Vec<String>,
}

fn files_under(dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p.display().to_string());
        }
    }
}

fn held(sb: &Sandbox) -> Held {
    let mut h = Held::default();
    let attached = bpftool::try_cgroup_show(&sb.cgroup).unwrap_or_else(|e| panic!("{e}"));
    h.progs.extend(
        attached
            .iter()
            .filter(|a| a.name.starts_with(bpftool::PREFIX))
            .map(|a| a.id),
    );
    let progs = bpftool::try_progs().unwrap_or_else(|e| panic!("{e}"));
    for p in progs.iter().filter(|p| h.progs.contains(&p.id)) {
        h.maps.extend(p.map_ids.iter().copied());
    }
    let in_dir = |pins: &[String]| pins.iter().any(|p| Path::new(p).starts_with(&sb.bpffs));
    for m in bpftool::maps()
        .iter()
        .filter(|m| bpftool::is_ours(&m.name) && in_dir(&m.pinned))
    {
        h.maps.insert(m.id);
    }
    for l in bpftool::try_links().unwrap_or_else(|e| panic!("{e}")) {
        if in_dir(&l.pinned) || l.cgroup_id == Some(sb.cgroup_id) {
            h.links.insert(l.id);
        }
    }
    files_under(&sb.bpffs, &mut h.pins);
    h
}

/// What of `before` is still in the kernel (or on bpffs) now.
fn left_over(sb: &Sandbox, before: &Held) -> Vec<String> {
    let mut left = Vec::new();
    let progs = bpftool::try_progs().unwrap_or_else(|e| panic!("{e}"));
    left.extend(
        progs
            .iter()
            .filter(|p| before.progs.contains(&p.id))
            .map(|p| format!("program {} id {}", p.name, p.id)),
    );
    let maps = bpftool::maps();
    left.extend(
        maps.iter()
            .filter(|m| before.maps.contains(&m.id))
            .map(|m| format!("map {} id {}", m.name, m.id)),
    );
    let links = bpftool::try_links().unwrap_or_else(|e| panic!("{e}"));
    left.extend(
        links
            .iter()
            .filter(|l| before.links.contains(&l.id))
            .map(|l| format!("link id {}", l.id)),
    );
    let attached = bpftool::try_cgroup_show(&sb.cgroup).unwrap_or_else(|e| panic!("{e}"));
    left.extend(
        attached
            .iter()
            .filter(|a| a.name.starts_with(bpftool::PREFIX))
            .map(|a| format!("{} id {} still attached ({})", a.name, a.id, a.attach_type)),
    );
    let mut pins = Vec::new();
    files_under(&sb.bpffs, &mut pins);
    left.extend(pins.into_iter().map(|p| format!("pin {p}")));
    left
}

fn run_cleanup_and_judge(sb: &Sandbox, before: &Held) {
    let out = sb.cleanup();
    assert!(
        out.status.success(),
        "datapathd cleanup failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The kernel frees a detached program's objects promptly, but not always synchronously.
    let mut left = Vec::new();
    let clean = common::wait_for(Duration::from_secs(5), || {
        left = left_over(sb, before);
        left.is_empty().then_some(())
    });
    assert!(
        clean.is_some(),
        "after cleanup, still there: {left:#?}\nbefore: {before:#?}"
    );
}

fn services() -> Vec<Svc> {
    vec![
        Svc::new("web", "127.0.10.1", 80, "TCP", 8080).with_backends(&["127.0.1.1"]),
        Svc::new("dns", "127.0.10.2", 53, "UDP", 8080).with_backends(&["127.0.1.1"]),
    ]
}

#[test]
fn cleanup_leaves_nothing_of_ours() {
    if !common::can_run("cleanup_leaves_nothing_of_ours") {
        return;
    }
    let mut sb = Sandbox::new("cleanup");
    sb.start_backend("127.0.1.1", 8080);
    sb.write_services("svc.yaml", &yaml::file(&services()));
    sb.start_agent(&AgentOpts::default());
    // A clean stop keeps the datapath in place (that is the point of the pins) ...
    sb.stop_agent(libc::SIGTERM);
    let before = held(&sb);
    // One program and one pinned link per cgroup hook, as the agent itself reports them.
    let hooks = sb.status()["hooks"].as_array().map_or(0, Vec::len);
    assert!(hooks >= 4, "the four socket-LB hooks at least: {hooks}");
    assert_eq!(
        before.progs.len(),
        hooks,
        "one program per hook attached before cleanup: {before:#?}"
    );
    assert!(
        before.maps.len() >= 5,
        "our maps before cleanup: {before:#?}"
    );
    assert_eq!(
        before.links.len(),
        hooks,
        "one pinned link per hook before cleanup: {before:#?}"
    );
    // ... and cleanup removes all of it.
    run_cleanup_and_judge(&sb, &before);
}

#[test]
fn cleanup_after_crashes_and_legacy_attachments() {
    if !common::can_run("cleanup_after_crashes_and_legacy_attachments") {
        return;
    }
    let mut sb = Sandbox::new("cleanup-mutant");
    sb.start_backend("127.0.1.1", 8080);
    sb.write_services("svc.yaml", &yaml::file(&services()));
    // The mutant attaches with the legacy multi flag and pins nothing: its programs
    // outlive it, and only a query of the cgroup finds them.
    for _ in 0..2 {
        sb.start_agent(&AgentOpts {
            mutant: Some("stale-cgroup-prog".into()),
            failpoint: None,
            ..AgentOpts::default()
        });
        sb.stop_agent(libc::SIGKILL);
    }
    let failpoints = common::sandbox::datapathd_cmd(&["failpoints"]);
    let first = String::from_utf8_lossy(&failpoints.stdout)
        .lines()
        .find(|l| l.starts_with("after-pin-link:"))
        .map(str::to_owned);
    if let Some(fp) = first {
        sb.crash_agent_at(&fp, None);
    }
    let before = held(&sb);
    // Legacy attachments on hooks the crashed start had not reached yet, and a pinned link.
    assert!(
        before.progs.len() > 4,
        "more than one program per hook before cleanup: {before:#?}"
    );
    assert!(
        !before.links.is_empty(),
        "a pinned link before cleanup: {before:#?}"
    );
    run_cleanup_and_judge(&sb, &before);
}
