//! The agent-upgrade fault on the netns provider: `harness mutate upgrade` passes the
//! correct datapath (held connections survive both migrations) and catches
//! upgrade-recreates-maps by conn-disrupt, whose JUnit names the pod -> external
//! connections that broke; and a SIGINT while the fault replaces a node's agent (between
//! its stop, its start at the other layout, the dwell and the way back) ends the run with
//! 130, after it tore the cluster down, leaving nothing of the run on the host.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn harness() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_harness"))
}

fn suite_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../suites/upgrade.yaml")
}

#[test]
fn mutate_upgrade_catches_recreated_maps_by_the_connections_that_broke() {
    use harness::invariant::conn_disrupt::NAME as ConnDisrupt;
    if common::skip_unless_root("netns clusters (namespaces, cgroups, bpf, iptables)") {
        return;
    }
    let _l = common::lock();
    let dir = tempfile::tempdir().expect("temp dir");
    const SEED: u64 = 5;
    let report = common::mutate("upgrade", SEED, dir.path());
    common::assert_caught_exactly(&report, SEED, &[("upgrade-recreates-maps", &[ConnDisrupt])]);
    let junit = common::row_junit(&report, "upgrade-recreates-maps", SEED);
    assert!(
        junit.contains("held connections broke")
            && junit.contains("host external 172.31.0.250:8080"),
        "conn-disrupt names the broken pod -> external connections: {junit}"
    );
}

#[test]
fn interrupted_during_an_agent_upgrade_the_run_cleans_up_and_exits_130() {
    if common::skip_unless_root("netns clusters (namespaces, cgroups, bpf)") {
        return;
    }
    let _l = common::lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let reports = dir.path().join("r");
    let mut cmd = Command::new(harness());
    cmd.args(["suite", suite_file().to_str().expect("utf-8")])
        .args(["--provider", "netns", "--seed", "5", "--reports-dir"])
        .arg(&reports)
        .env("CI", "1");
    // The step's line comes as the fault starts: the signal lands during the switches.
    let (code, seen) = common::interrupt_when(cmd, "fault agent-upgrade node=");
    assert_eq!(code, Some(130), "{}", seen.join("\n"));
    let run = std::fs::read_dir(&reports)
        .expect("the reports directory")
        .flatten()
        .next()
        .expect("one run")
        .path();
    let text = std::fs::read_to_string(run.join("history.json")).expect("history.json");
    let h: serde_json::Value = serde_json::from_str(&text).expect("the history parses");
    let events = h["events"].as_array().expect("events");
    assert!(
        events.iter().any(|e| e["event"] == "interrupted"),
        "{events:#?}"
    );
    let marker = events
        .iter()
        .find_map(|e| e["marker"].as_str())
        .expect("the run's marker")
        .to_owned();
    common::assert_nothing_of(&marker);
}
