//! Pods the agent wires (issue 18), end to end on the netns provider: `harness mutate
//! pod-vxlan` passes the correct datapath and catches each pod mutant by the invariant
//! that names it, with every pod's wiring in the report matching what the harness saw;
//! pod-native passes with its routing in the JUnit; pod-churn on a suite with kernel
//! routing is skipped with the reason; a SIGINT in the middle of pod-churn exits 130 and
//! leaves nothing of the run on the host.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_caught_exactly, lock, mutate, netns_suite, skip_unless_root};

const SEED: u64 = 5;

/// Every node's pods.json of a run's scenario.
fn pods_reports(run: &Path) -> Vec<serde_json::Value> {
    let dir = run.join("pods").join("wire-churn-move-1");
    let mut out = Vec::new();
    for node in ["node-a", "node-b", "node-c"] {
        let text = std::fs::read_to_string(dir.join(node).join("pods.json"))
            .unwrap_or_else(|e| panic!("{node}'s pods.json: {e}"));
        out.push(serde_json::from_str(&text).expect("pods.json parses"));
    }
    out
}

#[test]
fn mutate_pod_vxlan_catches_the_three_pod_mutants_and_the_report_shows_every_pod() {
    use harness::invariant::{pod_delete_cleanup, pod_to_pod, pod_wiring};
    if skip_unless_root("netns clusters (namespaces, cgroups, bpf, iptables)") {
        return;
    }
    let _l = lock();
    let dir = tempfile::tempdir().expect("temp dir");
    let report = mutate("pod-vxlan", SEED, dir.path());
    assert_caught_exactly(
        &report,
        SEED,
        &[
            ("arp-responder-off", &[pod_wiring::NAME]),
            ("endpoint-kept-on-delete", &[pod_delete_cleanup::NAME]),
            ("ipcache-stale-on-move", &[pod_to_pod::NAME]),
        ],
    );
    let correct = report
        .rows
        .iter()
        .find(|r| r.variant == harness::mutate::Variant::Correct)
        .and_then(|r| r.run_dir.clone())
        .expect("the correct datapath's run");
    // Every pod once, on its node: what `pod add` answered, the kernel and the agent agree.
    let mut pods = 0;
    for node in pods_reports(&correct) {
        assert_eq!(node["routing"], "vxlan", "{node}");
        for p in node["pods"].as_array().expect("pods") {
            let name = &p["name"];
            let added = &p["pod_add"];
            let kernel = &p["kernel"];
            assert_eq!(kernel["host_veth"]["name"], added["host_veth"], "{name}");
            assert_eq!(kernel["host_veth"]["ifindex"], added["ifindex"], "{name}");
            assert_eq!(
                kernel["host_veth"]["addresses"],
                serde_json::json!([]),
                "{name}"
            );
            assert_eq!(
                kernel["ingress_programs"][0]["prog_id"], added["program_id"],
                "{name}: {kernel}"
            );
            assert_eq!(kernel["ingress_programs"][0]["prog_name"], "dp_from_cont");
            assert_eq!(kernel["endpoint"]["ifindex"], added["ifindex"], "{name}");
            assert_eq!(kernel["endpoint"]["pod_mac"], added["pod_mac"], "{name}");
            assert_eq!(p["agent"]["wired"], true, "{name}: {p}");
            assert_eq!(p["agent"]["program_id"], added["program_id"], "{name}");
            pods += 1;
        }
        // The other nodes' pods, in the kernel's ipcache and the agent's alike.
        let kernel = node["ipcache"]["kernel"]
            .as_array()
            .expect("dp_ipcache")
            .len();
        let agent = node["ipcache"]["agent"]
            .as_array()
            .expect("status ipcache")
            .len();
        assert_eq!(kernel, agent, "{node}");
    }
    assert_eq!(pods, 6);
}

#[test]
fn pod_native_passes_and_its_routing_is_in_the_junit() {
    if skip_unless_root("netns clusters (namespaces, cgroups, bpf, iptables)") {
        return;
    }
    let _l = lock();
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, stderr, junit) = netns_suite("pod-native", &[], dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(
        junit.contains(r#"<property name="routing" value="native"/>"#),
        "{junit}"
    );
    assert!(
        stderr.contains("no VXLAN device on 3 nodes: nothing sent in UDP 8472"),
        "{stderr}"
    );
    assert!(stderr.contains("deleted from node-a"), "{stderr}");
}

#[test]
fn pod_churn_on_kernel_routing_is_skipped_with_the_reason() {
    if skip_unless_root("netns clusters (namespaces, cgroups, bpf, iptables)") {
        return;
    }
    let _l = lock();
    let dir = tempfile::tempdir().expect("temp dir");
    let suites = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../suites");
    let text = std::fs::read_to_string(suites.join("pod-native.yaml")).expect("pod-native");
    let kernel = text.replace("  routing: native\n", "");
    assert_ne!(kernel, text, "the suite names its routing");
    let file = dir.path().join("pod-kernel.yaml");
    std::fs::write(&file, kernel).expect("write the suite");
    let (code, stderr, junit) = netns_suite(file.to_str().expect("utf-8"), &[], dir.path());
    // 4: nothing failed, but some verdicts were skipped (harness/src/exit.rs).
    assert_eq!(code, 4, "{stderr}");
    assert!(
        junit.contains(
            "fault pod-churn needs pods the agent wires: this suite has topology.routing kernel"
        ),
        "{junit}"
    );
    assert!(junit.contains("<skipped"), "{junit}");
    assert!(!junit.contains("<failure"), "{junit}");
}

#[test]
fn sigint_in_the_middle_of_pod_churn_exits_130_and_leaves_nothing() {
    use std::io::{BufRead, BufReader};
    if skip_unless_root("netns clusters (namespaces, cgroups, bpf, iptables)") {
        return;
    }
    let _l = lock();
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let mut child = Command::new(PathBuf::from(env!("CARGO_BIN_EXE_harness")))
        .args(["suite", "pod-native", "--provider", "netns", "--seed"])
        .arg(SEED.to_string())
        .arg("--reports-dir")
        .arg(dir.path().join("r"))
        .env("CI", "1")
        .env("DP_HARNESS_STATE_DIR", &state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the harness");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut seen = Vec::new();
    let mut marker = None;
    for l in lines.by_ref() {
        let l = l.expect("a line");
        if marker.is_none() {
            marker = l
                .split("marker ")
                .nth(1)
                .and_then(|m| m.split([')', ';']).next())
                .map(str::to_owned);
        }
        let churning = l.contains("fault pod-churn");
        seen.push(l);
        if churning {
            break;
        }
    }
    let marker = marker.unwrap_or_else(|| panic!("no marker: {seen:?}"));
    // Seed 5 moves client-a to node-b first: its sandbox there appears in the middle of
    // the churn (after its delete on node-a, before its add and the next op).
    let moved = PathBuf::from(format!("/run/netns/{marker}-node-b-client-a"));
    let t = Instant::now();
    while !moved.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no sandbox {} appeared: {seen:?}",
            moved.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill(2) on the pid of the child this test started.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    seen.extend(lines.map_while(Result::ok));
    let status = child.wait().expect("the harness ends");
    let log = seen.join("\n");
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(
        log.contains("host-clean-after-down: Pass nothing of the run remains on the host"),
        "{log}"
    );
    common::assert_nothing_of(&marker);
}
