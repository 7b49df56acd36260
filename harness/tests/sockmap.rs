//! Incident C end to end on the netns provider: suite `sockmap` passes with the correct
//! datapath, with the acceleration counters in the report, and `harness mutate sockmap`
//! catches every mutant with exactly the invariants that name its bug, with the stale
//! keys as evidence.
//! Needs root, cgroup2, bpffs, bpftool and ss (ci/setup); uses datapathd and dp-probe
//! from this target directory (`cargo build` the workspace first).

mod common;
use common::{assert_caught_exactly, lock, mutate, netns_suite, row_junit, skip_unless_root};

fn suite(args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    netns_suite("sockmap", args, dir)
}

fn skip() -> bool {
    skip_unless_root("netns, cgroups, eBPF")
}

const INVARIANTS: [&str; 4] = [
    "payload-liveness",
    "sockhash-keys-live",
    "sockhash-bounded",
    "no-cross-delivery",
];

#[test]
fn sockmap_passes_with_the_correct_datapath_and_shows_acceleration() {
    if skip() {
        return;
    }
    let _l = lock();
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, err, xml) = suite(&[], dir.path());
    assert_eq!(code, 0, "{err}");
    for inv in INVARIANTS {
        assert!(
            xml.contains(&format!("::{inv}\"")),
            "no testcase for {inv}: {xml}"
        );
    }
    assert!(
        !xml.contains("<failure") && !xml.contains("<error"),
        "{xml}"
    );
    // Acceleration was on while it was judged: the kernel's own counters moved.
    let accel = xml
        .lines()
        .find(|l| {
            l.contains("dp_accel_stats (bpftool) during the probes") && l.contains("redirected +")
        })
        .unwrap_or_else(|| panic!("no acceleration counters in the report: {xml}"));
    assert!(!accel.contains("redirected +0"), "{accel}");
    assert!(
        xml.contains("datapathd status sockhash:") && xml.contains("insert_failed&quot;:0"),
        "the agent's counters as extra evidence: {xml}"
    );
    // The fault proved itself: keys planted, seen by bpftool, churned over.
    assert!(
        err.contains("planted key(s) with their decoys' cookies"),
        "{err}"
    );
    assert!(err.contains("churn of "), "{err}");
}

#[test]
fn every_sockmap_mutant_is_caught_by_the_invariants_that_name_it() {
    use harness::invariant::payload_liveness::NAME as PayloadLiveness;
    use harness::invariant::sockhash_bounded::NAME as SockhashBounded;
    use harness::invariant::sockhash_keys_live::NAME as SockhashKeysLive;
    if skip() {
        return;
    }
    let _l = lock();
    let dir = tempfile::tempdir().expect("temp dir");
    let report = mutate("sockmap", 5, dir.path());
    assert_caught_exactly(
        &report,
        5,
        &[
            (
                "sockmap-noexist",
                &[SockhashKeysLive, SockhashBounded, PayloadLiveness],
            ),
            ("sockmap-no-gc", &[SockhashKeysLive, SockhashBounded]),
            ("sockmap-key-port-order", &[SockhashKeysLive]),
            ("sockmap-active-only", &[SockhashKeysLive]),
        ],
    );
    let xml = row_junit(&report, "sockmap-noexist", 5);
    assert!(
        xml.contains("which is the socket 127.0.0.1:") && xml.contains("a stale key"),
        "the stale keys (pointing at the decoys) are the evidence: {xml}"
    );
    assert!(
        xml.contains("established and silent"),
        "requests on the leaked tuples hang: {xml}"
    );
    let xml = row_junit(&report, "sockmap-no-gc", 5);
    assert!(
        xml.contains("172.31.0.1:2") && xml.contains("a stale key"),
        "the orphan keys no connection replaced are the evidence: {xml}"
    );
}
