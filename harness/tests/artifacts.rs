//! Issue 16, acceptance 5: after a failed run (netns provider, the `stale-cgroup-prog`
//! mutant), every `*.json` under the run's artifacts parses, and every node's directory
//! holds `ss` for the node's namespace and each of its pods', and dmesg. Needs root
//! (a netns run); without it the test fails under CI and skips elsewhere.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Every file under `dir`, recursively.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir)
        .expect("read an artifact directory")
        .flatten()
    {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The one run directory under `reports`.
fn run_dir(reports: &Path) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(reports)
        .expect("the reports directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(runs.len(), 1, "one run directory: {runs:?}");
    runs.into_iter().next().unwrap()
}

#[test]
fn a_failed_runs_artifacts_parse_and_hold_ss_and_dmesg_for_every_node() {
    if common::skip_unless_root("a netns run") {
        return;
    }
    let _l = common::lock();
    let dir = tempfile::tempdir().unwrap();
    // A state root of its own: nothing of this run may be left in it.
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let reports = dir.path().join("r");
    let out = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["suite", "sock-lb", "--provider", "netns", "--seed", "5"])
        .args(["--datapath-mutant", "stale-cgroup-prog"])
        .arg("--reports-dir")
        .arg(&reports)
        .env("DP_HARNESS_STATE_DIR", &state)
        .env("CI", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run harness");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the mutant fails the run:\n{err}"
    );

    let artifacts = run_dir(&reports).join("artifacts");
    let mut files = Vec::new();
    files_under(&artifacts, &mut files);
    let json: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert!(!json.is_empty(), "no JSON artifacts at all: {files:?}");
    for f in &json {
        let text = std::fs::read(f).unwrap();
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&text) {
            panic!(
                "{} does not parse: {e}\n{}",
                f.display(),
                String::from_utf8_lossy(&text)
            );
        }
    }

    let suite = harness::suite::Suite::load(&repo_suite("sock-lb"), &harness::registry::Registry)
        .expect("sock-lb loads");
    let topology = &suite.topology;
    let iterations: Vec<PathBuf> = std::fs::read_dir(&artifacts)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(!iterations.is_empty(), "no failed iteration took artifacts");
    for it in &iterations {
        for node in &topology.nodes {
            let d = it.join(&node.name);
            let has = |name: &str| {
                let p = d.join(name);
                assert!(
                    p.is_file() && std::fs::metadata(&p).unwrap().len() > 0,
                    "{} is missing or empty",
                    p.display()
                );
                std::fs::read_to_string(&p).unwrap()
            };
            // ss prints its header even with no sockets; the node's own namespace has
            // the agent's and servers' sockets in other namespaces, so the header is what
            // every listing must show.
            assert!(has("ss.txt").contains("State"), "{}: ss.txt", d.display());
            for pod in &node.pods {
                let f = format!("ss-pod-{pod}.txt");
                let text = has(&f);
                assert!(text.contains("State"), "{}: {f}:\n{text}", d.display());
            }
            has("dmesg.txt");
            let status: serde_json::Value =
                serde_json::from_str(&has("datapathd-status.json")).unwrap();
            assert_eq!(status["schema"], 1, "{}: the agent's status", d.display());
            // The index names what ran and how it ended.
            let index: serde_json::Value = serde_json::from_str(&has("commands.json")).unwrap();
            let commands = index["commands"].as_array().expect("commands");
            let ss_ok = commands
                .iter()
                .filter(|c| c["argv"].as_array().unwrap().iter().any(|a| a == "ss"))
                .filter(|c| c["exit"]["code"] == 0)
                .count();
            let pods = node.pods.len();
            assert_eq!(ss_ok, 1 + pods, "{}: {index:#}", d.display());
        }
    }

    // The artifacts show the failure itself: some node's kept cgroup listing has the
    // stale program beside the live one on a hook.
    let stale = files
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "bpftool-cgroup.json"))
        .any(|p| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            let mut per_hook = std::collections::BTreeMap::<String, usize>::new();
            for a in v.as_array().into_iter().flatten() {
                if a["name"].as_str().is_some_and(|n| n.starts_with("dp_")) {
                    *per_hook.entry(a["attach_type"].to_string()).or_default() += 1;
                }
            }
            per_hook.values().any(|n| *n > 1)
        });
    assert!(
        stale,
        "no node's bpftool-cgroup.json shows two programs of ours on one hook"
    );

    let left: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "qemu")
        .collect();
    assert!(left.is_empty(), "state left: {left:?}\n{err}");
}

fn repo_suite(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../suites")
        .join(format!("{name}.yaml"))
}
