//! Helpers shared by the harness's end-to-end tests.

/// Held while a test runs; the same lock as datapath/agent's acceptance tests take: global
/// bpftool comparisons must not see another test's agent half-way.
pub use dp_test_support::acceptance_lock as lock;
/// The workspace's one skip policy (test-support/src/skip.rs).
pub use dp_test_support::skip;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs `harness suite SUITE --provider netns --seed 5 ARGS` with its JUnit and reports in
/// `dir`; returns the exit status, stderr and the JUnit XML.
#[allow(dead_code)] // not every test file runs netns suites
pub fn netns_suite(suite: &str, args: &[&str], dir: &Path) -> (i32, String, String) {
    let junit = dir.join("junit.xml");
    let out = Command::new(PathBuf::from(env!("CARGO_BIN_EXE_harness")))
        .args(["suite", suite, "--provider", "netns", "--seed", "5"])
        .args(args)
        .arg("--junit")
        .arg(&junit)
        .arg("--reports-dir")
        .arg(dir.join("r"))
        .env("CI", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run harness");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into(),
        std::fs::read_to_string(&junit).unwrap_or_default(),
    )
}

/// True (and says why, or fails under CI: see [`skip`]) when not root.
#[allow(dead_code)]
pub fn skip_unless_root(needs: &str) -> bool {
    match skip::not_root(needs) {
        Some(why) => {
            skip::skip(&why);
            true
        }
        None => false,
    }
}

/// `harness mutate SUITE --provider netns --seed SEED`, through the library (as the
/// command runs it), with its reports in `dir`.
#[allow(dead_code)] // not every test file runs mutate
pub fn mutate(suite: &str, seed: u64, dir: &Path) -> harness::mutate::MutationReport {
    let opts = harness::cli::RunOpts {
        provider: "netns".into(),
        seed: Some(seed),
        repeat: None,
        datapath_mutant: None,
        junit: None,
        keep: None,
        suites_dir: None,
        reports_dir: Some(dir.join("r")),
        kernels: Vec::new(),
        junit_properties: Vec::new(),
        summary_md: None,
    };
    let file = harness::suite::resolve(suite, &harness::suite::default_dir());
    let s = harness::mutate::prepare(&file, &opts)
        .unwrap_or_else(|e| panic!("mutate {suite} cannot start: {e}"));
    let cancel = harness::signal::Cancel::new();
    let report = harness::mutate::mutate(&file, &s, &opts, &[seed], &cancel);
    eprintln!("{}", report.render());
    report
}

/// The correct datapath passed on `seed`, and each mutant was caught by exactly the
/// invariants given (those its must-catch entry names that failed), in any order.
#[allow(dead_code)]
pub fn assert_caught_exactly(
    report: &harness::mutate::MutationReport,
    seed: u64,
    expected: &[(&str, &[harness::suite::InvariantName])],
) {
    use harness::mutate::{Fate, Variant};
    let table = report.render();
    let correct = report
        .rows
        .iter()
        .find(|r| r.variant == Variant::Correct && r.seed == seed)
        .unwrap_or_else(|| panic!("no run of the correct datapath:\n{table}"));
    assert_eq!(correct.fate, Fate::Passed, "the correct datapath:\n{table}");
    assert_eq!(
        report.mutants().len(),
        expected.len(),
        "one row per must-catch mutant:\n{table}"
    );
    for (mutant, want) in expected {
        let row = report
            .row(mutant, seed)
            .unwrap_or_else(|| panic!("no row for {mutant}:\n{table}"));
        match &row.fate {
            Fate::Caught { by, .. } => {
                let mut got = by.clone();
                got.sort();
                let mut want = want.to_vec();
                want.sort();
                assert_eq!(got, want, "{mutant} caught by other invariants:\n{table}");
            }
            other => panic!("{mutant} not caught: {other:?}\n{table}"),
        }
    }
}

/// The JUnit XML the run of `variant` (a mutant's name, or `(correct datapath)`) wrote in
/// its report directory.
#[allow(dead_code)]
pub fn row_junit(report: &harness::mutate::MutationReport, variant: &str, seed: u64) -> String {
    let dir = report
        .row(variant, seed)
        .and_then(|r| r.run_dir.clone())
        .unwrap_or_else(|| panic!("no report directory for {variant}"));
    std::fs::read_to_string(dir.join("junit.xml")).expect("the run's junit.xml")
}

/// Starts `cmd` (its stderr piped), sends it SIGINT as soon as a stderr line contains
/// `when` (the progress line of the moment to interrupt), and waits for it. Returns its
/// exit code and every stderr line.
#[allow(dead_code)] // only the tests that interrupt a fault use it
pub fn interrupt_when(mut cmd: Command, when: &str) -> (Option<i32>, Vec<String>) {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the harness");
    let mut seen = Vec::new();
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    for l in lines.by_ref() {
        let l = l.expect("a line");
        let now = l.contains(when);
        seen.push(l);
        if now {
            // SAFETY: kill(2) on the pid of the child this function started.
            assert_eq!(
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
                0
            );
            break;
        }
    }
    seen.extend(lines.map_while(Result::ok));
    let status = child.wait().expect("the harness ends");
    (status.code(), seen)
}

/// Nothing of the run with `marker` (`dph-<id>`) is left on the host: no network
/// namespace, no interface, no cgroup or bpffs directory (`dp-harness-<id>`).
#[allow(dead_code)] // only the tests that interrupt a run use it
pub fn assert_nothing_of(marker: &str) {
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(!netns.contains(marker), "namespaces left: {netns}");
    let id = marker.trim_start_matches("dph-");
    let links = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains(id), "interfaces left: {links}");
    for dir in ["/sys/fs/cgroup", "/sys/fs/bpf"] {
        let left: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.contains(id))
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "{dir}: {left:?} left");
    }
}
