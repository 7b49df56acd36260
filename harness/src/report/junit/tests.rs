//! JUnit shape: a golden file, and validation against the Surefire schema.

use std::path::PathBuf;

use super::*;
use crate::invariant::Judgement;
use crate::plan::Plan;
use crate::provider::NodeFacts;
use crate::suite::InvariantName;

fn plan() -> Plan {
    Plan {
        suite: "sock-lb".into(),
        suite_file: "suites/sock-lb.yaml".into(),
        seed: 5,
        provider: "netns".into(),
        mutant: Some("stale-cgroup-prog".into()),
        repeat: None,
        routing: crate::suite::Routing::Vxlan,
        kernels: Default::default(),
        kernel_args: Vec::new(),
        junit_properties: Vec::new(),
        reports_dir: None,
        scenarios: Vec::new(),
    }
}

fn v(it: u32, inv: InvariantName, j: Judgement) -> Event {
    Event::Verdict {
        scenario: "restart".into(),
        iteration: it,
        invariant: inv,
        judgement: j,
        ms: 10,
        at_ms: 0,
        during: None,
    }
}

fn events() -> Vec<Event> {
    vec![
        v(
            1,
            crate::invariant::one_program::NAME,
            Judgement::fail(
                "node-a: 2 programs",
                vec!["node node-a hook connect4: 2 programs of ours attached (want 1)".into()],
            ),
        ),
        v(
            2,
            crate::invariant::one_program::NAME,
            Judgement::fail("node-a: 2 programs", vec!["again".into()]),
        ),
        v(
            1,
            crate::invariant::service_connectivity::NAME,
            Judgement::fail(
                "client-a cannot reach web",
                vec!["answered by web-a2".into()],
            ),
        ),
        v(
            2,
            crate::invariant::service_connectivity::NAME,
            Judgement::pass("ok"),
        ),
        v(
            1,
            crate::invariant::no_orphan::NAME,
            Judgement::unknown("cannot observe"),
        ),
        v(
            1,
            crate::invariant::host_clean::NAME,
            Judgement::pass("clean"),
        ),
        v(
            2,
            crate::invariant::host_clean::NAME,
            Judgement::pass("clean"),
        ),
        Event::Up {
            scenario: "broken".into(),
            iteration: 1,
            ms: 5,
            error: Some(crate::event::ErrorReport {
                kind: crate::event::ErrorKind::Harness,
                message: "provider netns: no cgroup2 mount".into(),
            }),
        },
    ]
}

fn xml() -> String {
    let mut facts = Facts {
        provider: "netns".into(),
        accelerator: "none".into(),
        shared_kernel: true,
        ..Facts::default()
    };
    facts.set_nodes(vec![NodeFacts {
        name: "node-a".into(),
        kernel_release: "6.18.0".into(),
        kernel_package: None,
    }]);
    let limits = vec![Limitation {
        invariant: crate::invariant::no_orphan::NAME,
        reason: "shared kernel".into(),
    }];
    to_xml(&build(&plan(), &facts, &limits, &events(), &meta())).expect("serializes")
}

fn meta() -> RunMeta {
    RunMeta {
        run_dir: "/work/reports/sock-lb-5-abc".into(),
        replay: "harness suite /work/suites/sock-lb.yaml --provider netns --seed 5".into(),
        started: chrono::DateTime::parse_from_rfc3339("2026-12-06T10:00:00+00:00").expect("a time"),
    }
}

fn golden() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/junit.xml")
}

#[test]
fn junit_matches_the_golden_file() {
    let x = xml();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden().parent().unwrap()).unwrap();
        std::fs::write(golden(), &x).unwrap();
    }
    let want = std::fs::read_to_string(golden()).expect("golden file (UPDATE_GOLDEN=1 writes it)");
    assert_eq!(x, want);
}

#[test]
fn junit_shape() {
    let x = xml();
    assert!(x.contains(r#"<property name="seed" value="5"/>"#), "{x}");
    assert!(x.contains(r#"<property name="datapath-variant" value="stale-cgroup-prog"/>"#));
    assert!(
        x.contains(r#"<property name="routing" value="vxlan"/>"#),
        "{x}"
    );
    assert!(x.contains(r#"<testcase name="restart::one-program-per-hook""#));
    assert!(
        x.contains("<rerunFailure"),
        "an earlier failing iteration is a rerun failure"
    );
    assert!(
        x.contains("<flakyFailure"),
        "a pass after a failure is flaky"
    );
    assert!(
        x.contains(r#"<testcase name="broken::setup""#),
        "a set-up failure is its own testcase"
    );
    assert!(!x.contains("disabled="));
}

#[test]
fn a_pass_with_evidence_shows_it_in_system_out() {
    let mut pass = Judgement::pass("node-a: 100 requests answered");
    pass.evidence
        .push("node node-a: dp_accel_stats during the probes: redirected +200".into());
    let events = vec![
        v(1, crate::invariant::payload_liveness::NAME, pass),
        v(
            1,
            crate::invariant::service_connectivity::NAME,
            Judgement::pass("ok"),
        ),
    ];
    let x = to_xml(&build(&plan(), &Facts::default(), &[], &events, &meta())).expect("serializes");
    assert!(
        x.contains("<system-out>iteration 1: node-a: 100 requests answered\nnode node-a: dp_accel_stats during the probes: redirected +200</system-out>"),
        "{x}"
    );
    assert_eq!(
        x.matches("<system-out>").count(),
        1,
        "a pass without evidence has no system-out: {x}"
    );
}

#[test]
fn junit_validates_against_the_schema() {
    // The Surefire schema (MIT, Gregory Boissinot), kept in the repository so that the
    // test runs from any clone.
    let xsd = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/junit-10.xsd");
    assert!(xsd.exists(), "schema not found at {}", xsd.display());
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("j.xml");
    std::fs::write(&f, xml()).unwrap();
    let out = std::process::Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(&xsd)
        .arg(&f)
        .output()
        .expect("xmllint (libxml2-utils; ci/setup installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
