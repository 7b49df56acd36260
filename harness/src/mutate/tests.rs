//! Judging runs of mutate and soak from recorded events (no cluster).

use super::*;
use crate::fault::node_reboot::{NodeReboot, NodeRebootPlan};
use crate::invariant::Judgement;
use crate::suite_run::{Finished, SuiteRun};

fn verdict(inv: InvariantName, v: Verdict, at_ms: u64) -> Event {
    Event::Verdict {
        scenario: "s".into(),
        iteration: 1,
        invariant: inv,
        judgement: Judgement {
            verdict: v,
            summary: String::new(),
            evidence: Vec::new(),
        },
        ms: 5,
        at_ms,
        during: None,
    }
}

fn fault_plan(f: NodeReboot) -> crate::fault::FaultPlan {
    let serde_json::Value::Object(params) = serde_json::to_value(f).expect("serializes") else {
        panic!("a map");
    };
    crate::fault::FaultPlan {
        fault: crate::suite::FaultName::new(<NodeReboot as crate::fault::Fault>::NAME),
        params,
    }
}

fn fault(at_ms: u64, ms: u64) -> Event {
    Event::Step {
        scenario: "s".into(),
        iteration: 1,
        index: 2,
        step: PlannedStep::Fault {
            plan: fault_plan(NodeReboot(NodeRebootPlan {
                node: "node-a".into(),
            })),
            during: Vec::new(),
            recover_within_s: None,
        },
        ms,
        at_ms,
        detail: Vec::new(),
        error: None,
    }
}

fn run(status: ExitStatus, events: Vec<Event>) -> SuiteRun {
    SuiteRun {
        status,
        error: None,
        finished: Some(Finished {
            events,
            facts: Default::default(),
            run_dir: "/r".into(),
            replay: "harness suite ...".into(),
        }),
    }
}

fn mutant(named: &[InvariantName]) -> Variant {
    Variant::Mutant {
        name: "m".into(),
        named: named.to_vec(),
    }
}

use crate::invariant::one_program::NAME as One;
use crate::invariant::service_connectivity::NAME as Svc;

#[test]
fn a_named_invariant_failing_is_a_catch_timed_from_the_fault() {
    let events = vec![
        verdict(Svc, Verdict::Pass, 1000),
        fault(4000, 1000),
        verdict(One, Verdict::Fail, 5500),
        verdict(Svc, Verdict::Fail, 6000),
    ];
    let (fate, ms) = judge(&mutant(&[Svc]), &run(ExitStatus::InvariantsFailed, events));
    assert_eq!(
        fate,
        Fate::Caught {
            by: vec![Svc],
            also: vec![One]
        }
    );
    assert_eq!(ms, Some(3000), "from the fault's start (3000) to 6000");
}

#[test]
fn only_unrelated_failures_or_a_harness_error_are_no_catch() {
    let events = vec![fault(4000, 1000), verdict(One, Verdict::Fail, 5500)];
    let (fate, _) = judge(
        &mutant(&[Svc]),
        &run(ExitStatus::InvariantsFailed, events.clone()),
    );
    assert_eq!(fate, Fate::Survived { failed: vec![One] });
    let (fate, _) = judge(&mutant(&[One]), &run(ExitStatus::HarnessError, events));
    assert!(
        matches!(
            fate,
            Fate::NotJudged {
                status: ExitStatus::HarnessError,
                ..
            }
        ),
        "{fate:?}"
    );
    let (fate, _) = judge(&mutant(&[One]), &run(ExitStatus::Passed, vec![]));
    assert_eq!(fate, Fate::Survived { failed: vec![] });
}

#[test]
fn a_failure_before_the_fault_is_negative_and_the_correct_one_must_pass() {
    let events = vec![verdict(Svc, Verdict::Fail, 1000), fault(4000, 1000)];
    assert_eq!(fault_to_failure_ms(&events, |_| true), Some(-2000));
    let (fate, _) = judge(
        &Variant::Correct,
        &run(ExitStatus::InvariantsFailed, events),
    );
    assert_eq!(fate, Fate::FalseAlarm { failed: vec![Svc] });
    let (fate, _) = judge(&Variant::Correct, &run(ExitStatus::Passed, vec![]));
    assert_eq!(fate, Fate::Passed);
    let (fate, _) = judge(&Variant::Correct, &run(ExitStatus::Inconclusive, vec![]));
    assert!(matches!(
        fate,
        Fate::NotJudged {
            status: ExitStatus::Inconclusive,
            ..
        }
    ));
}

fn row(variant: Variant, fate: Fate) -> Row {
    Row {
        variant,
        seed: 5,
        fate,
        fault_to_failure_ms: Some(1500),
        run_dir: None,
        replay: None,
        cell: Some("netns 6.18".into()),
    }
}

#[test]
fn the_exit_status_names_survivors_and_false_alarms() {
    let cancel = Cancel::new();
    let caught = row(
        mutant(&[Svc]),
        Fate::Caught {
            by: vec![Svc],
            also: vec![],
        },
    );
    let mut r = MutationReport {
        suite: "sock-lb".into(),
        provider: "netns".into(),
        rows: vec![row(Variant::Correct, Fate::Passed), caught],
    };
    assert_eq!(r.status(&cancel), ExitStatus::Passed);
    assert!(r
        .render()
        .contains("mutation score 1/1 (100 %); correct datapath passed 1/1 run(s)"));
    r.rows
        .push(row(mutant(&[Svc]), Fate::Survived { failed: vec![One] }));
    assert_eq!(r.status(&cancel), ExitStatus::InvariantsFailed);
    let text = r.render();
    assert!(
        text.contains("survivor: m (seed 5) was not caught by service-connectivity; failed: one-program-per-hook"),
        "{text}"
    );
    let xml = crate::report::junit::to_xml(&r.junit(&[])).expect("xml");
    assert!(
        xml.contains(r#"<testsuite name="mutate sock-lb [netns 6.18]""#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<failure message="named ones passed; failed: one-program-per-hook""#),
        "{xml}"
    );
}

#[test]
fn soak_counts_false_alarms_per_invariant() {
    let cancel = Cancel::new();
    let mut s = SoakReport::default();
    s.add(
        1,
        &run(ExitStatus::Passed, vec![verdict(Svc, Verdict::Pass, 1)]),
    );
    s.add(
        2,
        &run(
            ExitStatus::InvariantsFailed,
            vec![verdict(Svc, Verdict::Fail, 1)],
        ),
    );
    assert_eq!(s.per_invariant[&Svc].false_alarms, 1);
    assert_eq!(s.per_invariant[&Svc].failed_seeds, vec![2]);
    assert_eq!(s.status(&cancel), ExitStatus::InvariantsFailed);
    assert!(s
        .render()
        .contains("2 run(s) of the correct datapath: 1 false alarm(s), 0 harness error(s)"));
}
