//! conn-disrupt fails honestly on real traffic (netns provider): held connections across
//! a partition whose step excuses no stall (no `recover-within-s`) stall past the bound,
//! and the verdict names each of them with its addresses. That it passes where
//! connections must survive is `harness suite sock-lb` (and partition, bpffs-remount).

mod common;

use std::path::Path;

#[test]
fn connections_across_a_cut_without_a_recovery_bound_are_named_as_stalled() {
    if common::skip_unless_root("netns clusters (namespaces, cgroups, bpf, iptables)") {
        return;
    }
    let _l = common::lock();
    let dir = tempfile::tempdir().expect("temp dir");
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/conn-disrupt-cut.yaml");
    let (code, stderr, junit) =
        common::netns_suite(suite.to_str().expect("utf-8"), &[], dir.path());
    assert_eq!(code, 1, "an invariant failed: {stderr}");
    assert!(
        junit.contains("conn-disrupt") && junit.contains("held connections broke"),
        "conn-disrupt is the failure: {junit}"
    );
    assert!(
        junit.contains("stalled")
            && junit.contains("-&gt; pod web-b1 10.244.2.3:8080 (local 10.244.1."),
        "each stalled connection is named with its addresses: {junit}"
    );
    // Connections that do not cross the cut (a pod to a service backend on its own node)
    // are not among the broken: the count is less than all.
    assert!(!junit.contains("8 of 8 held"), "{junit}");
}
