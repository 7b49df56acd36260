//! Incident B end to end on the netns provider (every node its own netfilter and
//! conntrack): the correct datapath keeps pods' external traffic flowing in every
//! kube-proxy / datapath start order, and `harness mutate kube-proxy-order` catches every
//! mutant with exactly the invariants that name its bug (iptables evidence). Needs root, cgroup2, bpffs and iptables (ci/setup).

mod common;
use common::{assert_caught_exactly, lock, mutate, netns_suite, row_junit, skip_unless_root};

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
fn every_kube_proxy_order_mutant_is_caught_by_the_invariants_that_name_it() {
    use harness::invariant::forward_chain_order::NAME as ForwardChainOrder;
    use harness::invariant::no_invalid_drops::NAME as NoInvalidDrops;
    use harness::invariant::pod_to_external::NAME as PodToExternal;
    use harness::invariant::rules_exactly_once::NAME as RulesExactlyOnce;
    if skip() {
        return;
    }
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    let report = mutate("kube-proxy-order", 5, dir.path());
    assert_caught_exactly(
        &report,
        5,
        &[
            (
                "kube-proxy-first",
                &[ForwardChainOrder, PodToExternal, NoInvalidDrops],
            ),
            (
                "forward-jump-appended",
                &[ForwardChainOrder, PodToExternal, NoInvalidDrops],
            ),
            ("forward-jump-duplicated", &[RulesExactlyOnce]),
            ("masq-reply-port-kept", &[PodToExternal]),
        ],
    );
    let xml = row_junit(&report, "kube-proxy-first", 5);
    assert!(
        xml.contains("INVALID") && xml.contains("KUBE-FORWARD"),
        "iptables evidence in the report: {xml}"
    );
}
