//! Faults as plug-ins, end to end on the netns provider: the noop fault (one file and one
//! registry line) is listed, validated in suites and run, with invariants judged while it
//! is active; interrupted while it is active, the run heals it and leaves nothing behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn harness() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_harness"))
}

fn suite_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fault-lifecycle.yaml")
}

/// The history of the one run under `reports`.
fn history(reports: &Path) -> serde_json::Value {
    let run = std::fs::read_dir(reports)
        .expect("the reports directory")
        .flatten()
        .next()
        .expect("one run")
        .path();
    let text = std::fs::read_to_string(run.join("history.json")).expect("history.json");
    serde_json::from_str(&text).expect("the history parses")
}

/// `event` (and, for verdicts, `invariant` and `during`) of each event, in order.
fn kinds(h: &serde_json::Value) -> Vec<String> {
    h["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            let kind = e["event"].as_str().unwrap_or("?").to_owned();
            match (e["invariant"].as_str(), e["during"].as_str()) {
                (Some(i), Some(f)) => format!("{kind} {i} during {f}"),
                (Some(i), None) => format!("{kind} {i}"),
                _ => kind,
            }
        })
        .collect()
}

#[test]
fn a_fault_from_the_registry_is_listed_and_validated() {
    let out = Command::new(harness())
        .arg("list")
        .output()
        .expect("harness list");
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{list}");
    assert!(
        list.lines().any(|l| l.trim_start().starts_with("noop ")),
        "the noop fault is listed: {list}"
    );
    assert!(
        list.lines()
            .any(|l| l.trim_start().starts_with("link-degrade ")
                && l.contains("nodes that are machines")),
        "each fault says what it needs: {list}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(suite_file()).expect("suite");
    std::fs::write(&bad, text.replace("name: noop\n", "name: no-such-fault\n")).expect("write");
    let out = Command::new(harness())
        .args(["suite", bad.to_str().expect("utf-8"), "--provider", "netns"])
        .output()
        .expect("harness suite");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no-such-fault") && err.contains("noop"),
        "{err}"
    );
    assert!(
        err.contains("bad.yaml:25"),
        "names the file and line: {err}"
    );
    std::fs::write(
        &bad,
        text.replace(
            "during: [service-connectivity,",
            "during: [sockhash-bounded,",
        ),
    )
    .expect("write");
    let out = Command::new(harness())
        .args(["suite", bad.to_str().expect("utf-8"), "--provider", "netns"])
        .output()
        .expect("harness suite");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("sockhash-bounded") && err.contains("accelerate"),
        "a during invariant is validated like a check's: {err}"
    );
}

#[test]
fn checks_run_while_a_fault_is_active_and_it_is_healed() {
    if common::skip_unless_root("netns clusters (namespaces, cgroups, bpf)") {
        return;
    }
    let _l = common::lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, stderr, junit) =
        common::netns_suite(suite_file().to_str().expect("utf-8"), &[], dir.path());
    assert_eq!(code, 0, "{stderr}");
    let k = kinds(&history(&dir.path().join("r")));
    let at = |what: &str| {
        k.iter()
            .position(|e| e == what)
            .unwrap_or_else(|| panic!("no `{what}` in {k:?}"))
    };
    let started = at("fault-started");
    let during = at("verdict service-connectivity during noop");
    let during2 = at("verdict one-program-per-hook during noop");
    let healed = at("fault-healed");
    let after = at("verdict service-connectivity");
    assert!(
        started < during && during < during2 && during2 < healed && healed < after,
        "{k:?}"
    );
    assert!(
        junit.contains("service-connectivity during noop"),
        "a check during a fault is a testcase of its own: {junit}"
    );
}

#[test]
fn interrupted_while_a_fault_is_active_the_run_heals_it_and_leaves_nothing() {
    if common::skip_unless_root("netns clusters (namespaces, cgroups, bpf)") {
        return;
    }
    let _l = common::lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let reports = dir.path().join("r");
    let mut cmd = Command::new(harness());
    cmd.args(["suite", suite_file().to_str().expect("utf-8")])
        .args(["--provider", "netns", "--seed", "3", "--reports-dir"])
        .arg(&reports)
        .env("CI", "1");
    let (code, seen) = common::interrupt_when(cmd, "noop active");
    assert_eq!(code, Some(130), "{}", seen.join("\n"));
    let h = history(&reports);
    let k = kinds(&h);
    let started = k.iter().position(|e| e == "fault-started");
    let healed = k.iter().position(|e| e == "fault-healed");
    assert!(
        matches!((started, healed), (Some(s), Some(h)) if s < h),
        "started, then healed: {k:?}"
    );
    assert!(k.contains(&"interrupted".to_string()), "{k:?}");
    let marker = h["events"]
        .as_array()
        .and_then(|e| e.iter().find_map(|e| e["marker"].as_str()))
        .expect("the run's marker")
        .to_owned();
    common::assert_nothing_of(&marker);
}
