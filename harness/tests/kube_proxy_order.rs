//! Incident B end to end on the netns provider (every node its own netfilter and
//! conntrack): the correct datapath keeps pods' external traffic flowing in every
//! kube-proxy / datapath start order, and the `kube-proxy-first` mutant is caught with
//! iptables evidence. Needs root, cgroup2, bpffs and iptables (ci/setup).

mod common;
use common::{lock, netns_suite, skip_unless_root};

fn suite(args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    netns_suite("kube-proxy-order", args, dir)
}

fn skip() -> bool {
    skip_unless_root("netns, cgroups, eBPF, iptables")
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
