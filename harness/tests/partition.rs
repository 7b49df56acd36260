//! The partition fault and recovers-within, end to end on the netns provider (the cut is
//! made inside the node namespaces): `harness mutate partition` passes the correct
//! datapath, with the cut and the heal proved and the recovery time in the JUnit, and
//! catches quarantine-never-restored by recovers-within; interrupted while the cut holds,
//! the run heals it (the kept cluster's raw tables have no cut) and leaves nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_caught_exactly, lock, mutate, row_junit, skip_unless_root};

const SEED: u64 = 744439176;

/// The history of the one run directory under `reports`.
fn history(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("history.json")).expect("history.json");
    serde_json::from_str(&text).expect("the history parses")
}

/// The proof lines of the first event of `kind`.
fn proof(h: &serde_json::Value, kind: &str) -> String {
    h["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["event"] == kind)
        .unwrap_or_else(|| panic!("no {kind} event"))["proof"]
        .as_array()
        .expect("its proof")
        .iter()
        .filter_map(|l| l.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn mutate_partition_passes_the_correct_datapath_and_catches_the_sticky_quarantine() {
    use harness::invariant::recovers_within::NAME as RecoversWithin;
    if skip_unless_root("netns clusters (namespaces, cgroups, bpf, iptables)") {
        return;
    }
    let _l = lock();
    let dir = tempfile::tempdir().expect("temp dir");
    let report = mutate("partition", SEED, dir.path());
    assert_caught_exactly(
        &report,
        SEED,
        &[("quarantine-never-restored", &[RecoversWithin])],
    );
    let correct = report
        .rows
        .iter()
        .find(|r| r.variant == harness::mutate::Variant::Correct)
        .and_then(|r| r.run_dir.clone())
        .expect("the correct datapath's run");
    let h = history(&correct);
    let cut = proof(&h, "fault-started");
    assert!(
        cut.contains("DROP rules in raw DPH-PARTITION") && cut.contains("fails across the cut"),
        "the cut is proved by its rules and a probe across it failing: {cut}"
    );
    let healed = proof(&h, "fault-healed");
    assert!(
        healed.contains("no DPH-PARTITION in") && healed.contains("answered in"),
        "the heal is proved by the rules gone and the probe answering: {healed}"
    );
    let xml = std::fs::read_to_string(correct.join("junit.xml")).expect("junit.xml");
    assert!(
        xml.contains("s after partition healed (bound 10 s)"),
        "the measured recovery is in the JUnit: {xml}"
    );
    let xml = row_junit(&report, "quarantine-never-restored", SEED);
    assert!(
        xml.contains("api (10.96.0.20:80)") && xml.contains("still not answering"),
        "the service whose only backend was across the cut is the evidence: {xml}"
    );
}

#[test]
fn interrupted_while_the_cut_holds_the_run_heals_it() {
    if skip_unless_root("netns clusters (namespaces, cgroups, bpf, iptables)") {
        return;
    }
    let _l = lock();
    let dir = tempfile::tempdir().expect("temp dir");
    let reports = dir.path().join("r");
    let state = dir.path().join("state");
    let harness = PathBuf::from(env!("CARGO_BIN_EXE_harness"));
    let mut cmd = Command::new(&harness);
    cmd.args(["suite", "partition", "--provider", "netns", "--keep"])
        .args(["--seed", &SEED.to_string(), "--reports-dir"])
        .arg(&reports)
        .env("CI", "1")
        .env("DP_HARNESS_STATE_DIR", &state);
    let (code, seen) = common::interrupt_when(cmd, "partition active");
    let log = seen.join("\n");
    assert_eq!(code, Some(130), "{log}");
    assert!(log.contains("(interrupted); not probed across"), "{log}");
    let marker = seen
        .iter()
        .find_map(|l| l.split("marker ").nth(1))
        .and_then(|m| m.split([')', ';']).next())
        .expect("the run's marker")
        .to_owned();
    // The kept cluster: no node namespace has our chain or a jump to it.
    let mut checked = 0;
    for node in ["node-a", "node-b", "node-c"] {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("{marker}-{node}")])
            .args(["iptables", "-w", "-t", "raw", "-S"])
            .output()
            .expect("ip netns exec");
        assert!(out.status.success(), "{node}: {out:?}");
        let rules = String::from_utf8_lossy(&out.stdout);
        assert!(!rules.contains("DPH-PARTITION"), "{node}: {rules}");
        checked += 1;
    }
    assert_eq!(checked, 3);
    let clean = Command::new(&harness)
        .arg("clean")
        .env("DP_HARNESS_STATE_DIR", &state)
        .output()
        .expect("harness clean");
    assert!(clean.status.success(), "{clean:?}");
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(!netns.contains(&marker), "namespaces left: {netns}");
}
