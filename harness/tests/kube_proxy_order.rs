//! Incident B end to end on the netns provider (every node its own netfilter and
//! conntrack): the correct datapath keeps pods' external traffic flowing in every
//! kube-proxy / datapath start order, and the `kube-proxy-first` mutant is caught with
//! iptables evidence. Needs root, cgroup2, bpffs and iptables (ci/setup).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;
use common::lock;

/// Runs `harness suite kube-proxy-order --provider netns ARGS`; returns the exit status,
/// stderr and the JUnit XML.
fn suite(args: &[&str], dir: &Path) -> (i32, String, String) {
    let junit = dir.join("junit.xml");
    let out = Command::new(PathBuf::from(env!("CARGO_BIN_EXE_harness")))
        .args([
            "suite",
            "kube-proxy-order",
            "--provider",
            "netns",
            "--seed",
            "5",
        ])
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

fn skip() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI must run this as root");
        eprintln!("SKIPPED: needs root (netns, cgroups, eBPF, iptables)");
        return true;
    }
    false
}

#[test]
fn kube_proxy_order_passes_with_the_correct_datapath() {
    if skip() {
        return;
    }
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    let (code, err, xml) = suite(&[], dir.path());
    assert_eq!(code, 0, "{err}");
    for inv in [
        "pod-to-external",
        "forward-chain-order",
        "rules-exactly-once",
        "no-invalid-drops",
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
}

#[test]
fn the_kube_proxy_first_mutant_is_caught() {
    if skip() {
        return;
    }
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    let (code, err, xml) = suite(&["--datapath-mutant", "kube-proxy-first"], dir.path());
    assert_eq!(code, 1, "invariants-failed status expected: {err}");
    assert!(
        xml.contains(r#"<failure message="forward-chain-order"#)
            || xml.contains(r#"<failure message="pod-to-external"#)
            || xml.contains(r#"<failure message="no-invalid-drops"#),
        "the failure names an incident-B invariant: {xml}"
    );
    assert!(
        xml.contains("INVALID") || xml.contains("KUBE-FORWARD"),
        "iptables evidence in the report: {xml}"
    );
}
