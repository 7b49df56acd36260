//! End to end on the netns provider, with the real datapathd, dp-probe, bpftool and kernel.
//! Needs root, a cgroup2 mount and bpffs (ci/setup). Each test compares the host before
//! and after: network namespaces, interfaces, cgroup and bpffs directories, state
//! directories, and bpf programs/maps/links of ours.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn harness() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_harness"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

mod common;
use common::lock;

fn words(argv: &[&str], field: usize) -> BTreeSet<String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .expect("run");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace().nth(field).map(|w| {
                w.trim_end_matches(':')
                    .split('@')
                    .next()
                    .unwrap()
                    .to_string()
            })
        })
        .collect()
}

fn mount_of(t: &str) -> PathBuf {
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[2] == t).then(|| PathBuf::from(f[1]))
        })
        .unwrap_or_else(|| panic!("no {t} mount (ci/setup mounts bpffs)"))
}

fn dir_entries(d: &Path) -> BTreeSet<String> {
    std::fs::read_dir(d)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// dp_* program, map and link ids in the kernel.
fn bpf_ids() -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    for kind in ["prog", "map", "link"] {
        let out = Command::new("bpftool")
            .args(["-j", kind, "show"])
            .output()
            .expect("bpftool");
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Array(vec![]));
        for o in v.as_array().cloned().unwrap_or_default() {
            let name = o["name"].as_str().unwrap_or("");
            if kind == "link" || name.starts_with("dp_") {
                s.insert(format!("{kind} {} {name}", o["id"]));
            }
        }
    }
    s
}

#[derive(Debug, PartialEq)]
struct Host {
    netns: BTreeSet<String>,
    links: BTreeSet<String>,
    cgroups: BTreeSet<String>,
    bpffs: BTreeSet<String>,
    state: BTreeSet<String>,
    bpf: BTreeSet<String>,
}

/// Names a netns run can create carry `dph-` (namespaces, state directories) or
/// `dp-harness-` (cgroup and bpffs directories); other tests running at the same time
/// (the qemu provider's, `dpq-`) are not ours to judge. Host interfaces are compared in
/// full: a netns run never creates one.
fn ours(set: BTreeSet<String>) -> BTreeSet<String> {
    set.into_iter()
        .filter(|n| n.starts_with("dph-") || n.starts_with("dp-harness-"))
        .collect()
}

fn host() -> Host {
    Host {
        netns: ours(words(&["ip", "netns", "list"], 0)),
        links: words(&["ip", "-o", "link", "show"], 1),
        cgroups: ours(dir_entries(&mount_of("cgroup2"))),
        bpffs: ours(dir_entries(&mount_of("bpf"))),
        state: ours(dir_entries(Path::new("/run/dp-harness"))),
        bpf: bpf_ids(),
    }
}

/// Waits (with a deadline) until the host is as before: cgroup bpf programs are freed
/// asynchronously after their cgroup is removed.
fn assert_clean(before: &Host) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let after = host();
        if &after == before {
            return;
        }
        if Instant::now() > deadline {
            assert_eq!(&after, before, "the run left something on the host");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(harness())
        .args(args)
        .arg("--reports-dir")
        .arg(dir)
        .env("CI", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run harness");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn history(dir: &Path) -> serde_json::Value {
    let run = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .next()
        .expect("a run directory")
        .path();
    serde_json::from_slice(&std::fs::read(run.join("history.json")).unwrap()).unwrap()
}

#[test]
fn sock_lb_passes_and_leaves_nothing_behind() {
    let _l = lock();
    let before = host();
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let reports = dir.path().join("r");
    let (code, _, err) = run(
        &[
            "suite",
            "sock-lb",
            "--provider",
            "netns",
            "--seed",
            "11",
            "--junit",
            junit.to_str().unwrap(),
        ],
        &reports,
    );
    assert_eq!(code, 0, "{err}");
    assert_clean(&before);
    let xml = std::fs::read_to_string(&junit).unwrap();
    for inv in [
        "service-connectivity",
        "one-program-per-hook",
        "no-orphan-bpf-objects",
        "host-clean-after-down",
    ] {
        assert!(
            xml.contains(&format!("::{inv}\"")),
            "no testcase for {inv}: {xml}"
        );
    }
    assert!(
        !xml.contains("<failure") && !xml.contains("<error"),
        "{xml}"
    );
    // The fault proved itself in the history.
    let h = history(&reports);
    let proof = serde_json::to_string(&h["events"]).unwrap();
    assert!(
        proof.contains("aborting") && proof.contains("SIGKILL"),
        "{proof}"
    );

    // Same seed again: the same plan.
    let reports2 = dir.path().join("r2");
    let (code, _, err) = run(
        &["suite", "sock-lb", "--provider", "netns", "--seed", "11"],
        &reports2,
    );
    assert_eq!(code, 0, "{err}");
    // Where the reports go is the run's, not the plan's decisions.
    let decided = |mut plan: serde_json::Value| {
        plan.as_object_mut().map(|p| p.remove("reports_dir"));
        plan
    };
    let h2 = history(&reports2);
    assert_eq!(decided(h["plan"].clone()), decided(h2["plan"].clone()));
    assert_eq!(
        h2["plan"]["reports_dir"].as_str(),
        std::fs::canonicalize(&reports2)
            .ok()
            .as_deref()
            .and_then(|p| p.to_str())
    );
    assert_clean(&before);
}

#[test]
fn every_sock_lb_mutant_is_caught_by_the_invariants_that_name_it() {
    use harness::invariant::one_program::NAME as OneProgramPerHook;
    use harness::invariant::service_connectivity::NAME as ServiceConnectivity;
    let _l = lock();
    let before = host();
    let dir = tempfile::tempdir().unwrap();
    let report = common::mutate("sock-lb", 3, dir.path());
    common::assert_caught_exactly(
        &report,
        3,
        &[
            (
                "stale-cgroup-prog",
                &[OneProgramPerHook, ServiceConnectivity],
            ),
            ("udp-reply-not-reversed", &[ServiceConnectivity]),
            ("getpeername-not-rewritten", &[ServiceConnectivity]),
        ],
    );
    let xml = common::row_junit(&report, "stale-cgroup-prog", 3);
    assert!(
        xml.contains("programs of ours attached (want 1)"),
        "evidence: {xml}"
    );
    let xml = common::row_junit(&report, "udp-reply-not-reversed", 3);
    assert!(
        xml.contains("dns (10.96.0.53:53) attempt")
            && xml.contains("instead of the service address"),
        "the UDP reply's source is the evidence: {xml}"
    );
    assert_clean(&before);
}

#[test]
fn interrupting_at_random_moments_leaves_nothing_behind() {
    let _l = lock();
    let before = host();
    let dir = tempfile::tempdir().unwrap();
    // Seeded delays (a small LCG): reproducible moments across set-up, steps and teardown.
    let mut x: u64 = 0x5eed;
    for i in 0..10 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_millis((x >> 33) % 3000);
        let child = Command::new(harness())
            .args([
                "suite",
                "sock-lb",
                "--provider",
                "netns",
                "--seed",
                &i.to_string(),
                "--reports-dir",
            ])
            .arg(dir.path().join(format!("r{i}")))
            .env("CI", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let out = child.wait_with_output().unwrap();
        let code = out.status.code();
        assert!(
            code == Some(130) || code == Some(0),
            "run {i} interrupted after {delay:?}: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_clean(&before);
    }
}

#[test]
fn bad_suite_exits_with_the_bad_input_status() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(&f, "name: x\ncolour: red\n").unwrap();
    let (code, _, err) = run(&["suite", f.to_str().unwrap()], dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad.yaml:2:1: at `colour`: unknown field `colour`"),
        "{err}"
    );
}

/// (pid, start time) of each process a state file lists.
fn listed_processes(state_root: &Path) -> Vec<(u32, u64, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(state_root).unwrap().flatten() {
        let Ok(text) = std::fs::read_to_string(e.path().join("state.json")) else {
            continue;
        };
        let st: serde_json::Value = serde_json::from_str(&text).unwrap();
        for p in st["processes"].as_array().unwrap() {
            v.push((
                p["pid"].as_u64().unwrap() as u32,
                p["start"].as_u64().unwrap(),
                p["what"].as_str().unwrap().to_string(),
            ));
        }
    }
    v
}

/// The start time of `pid` while it runs (a zombie has ended: None).
fn start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    if rest.starts_with('Z') {
        return None;
    }
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[test]
fn keep_running_leaves_agents_and_servers_up_until_harness_clean() {
    if common::skip_unless_root("a netns run") {
        return;
    }
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    // A state root of its own: this test's `harness clean` sees no other run.
    let root = dir.path().join("state");
    std::fs::create_dir_all(&root).unwrap();
    let out = Command::new(harness())
        .args(["suite", "smoke", "--provider", "netns", "--seed", "4"])
        .arg("--keep=running")
        .arg("--reports-dir")
        .arg(dir.path().join("r"))
        .env("DP_HARNESS_STATE_DIR", &root)
        .env("CI", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run harness");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let procs = listed_processes(&root);
    assert!(
        procs.iter().any(|p| p.2.contains("datapathd run"))
            && procs.iter().any(|p| p.2.contains("dp-probe serve")),
        "the agent and the servers should be listed: {procs:?}\n{err}"
    );
    for (pid, start, what) in &procs {
        assert_eq!(
            start_time(*pid),
            Some(*start),
            "{what} is not running\n{err}"
        );
    }
    let clean = Command::new(harness())
        .arg("clean")
        .env("DP_HARNESS_STATE_DIR", &root)
        .output()
        .expect("harness clean");
    let said = String::from_utf8_lossy(&clean.stdout);
    assert!(clean.status.success(), "{said}");
    assert!(
        said.contains("found dph-"),
        "clean says what it found: {said}"
    );
    for (pid, start, what) in &procs {
        assert!(
            said.contains(&format!("stopped process {pid} ")),
            "clean should say it stopped {what}: {said}"
        );
        assert_ne!(
            start_time(*pid),
            Some(*start),
            "{what} survived harness clean"
        );
    }
    let left: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "qemu")
        .collect();
    assert!(left.is_empty(), "state left: {left:?}");
}

#[test]
fn mutate_names_a_survivor_and_what_failed_instead() {
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    // sock-lb, but getpeername-not-rewritten is to be caught by an invariant that cannot
    // see it: one program per hook is still true of that mutant.
    let text = std::fs::read_to_string(repo().join("suites/sock-lb.yaml")).unwrap();
    let cut = text.find("must-catch:").expect("must-catch in sock-lb");
    let copy = format!(
        "{}must-catch:\n  - mutant: getpeername-not-rewritten\n    invariants: [one-program-per-hook]\n",
        &text[..cut]
    );
    let file = dir.path().join("blind.yaml");
    std::fs::write(&file, copy).unwrap();
    let junit = dir.path().join("mutate.xml");
    let out = Command::new(harness())
        .args([
            "mutate",
            file.to_str().unwrap(),
            "--provider",
            "netns",
            "--seed",
            "3",
        ])
        .arg("--junit")
        .arg(&junit)
        .arg("--reports-dir")
        .arg(dir.path().join("r"))
        .env("CI", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run harness");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a survivor is exit 1:\n{stdout}"
    );
    assert!(
        stdout.contains("survivor: getpeername-not-rewritten (seed 3) was not caught by one-program-per-hook; failed: service-connectivity"),
        "{stdout}"
    );
    assert!(
        stdout.contains("mutation score 0/1 (0 %); correct datapath passed 1/1 run(s)"),
        "{stdout}"
    );
    let xml = std::fs::read_to_string(&junit).expect("mutate's JUnit");
    assert!(
        xml.contains(r#"<testcase name="getpeername-not-rewritten""#)
            && xml
                .contains(r#"<failure message="named ones passed; failed: service-connectivity""#),
        "{xml}"
    );
}
