//! GitHub output: the escaping GitHub requires, the annotations and the verdict table.

use super::*;
use crate::invariant::Judgement;
use crate::plan::{Plan, PlannedStep};
use crate::suite::InvariantName;

/// From JSON, so that fields the plan gains later take their defaults here.
fn plan() -> Plan {
    serde_json::from_value(serde_json::json!({
        "suite": "sock-lb",
        "suite_file": "suites/sock-lb.yaml",
        "seed": 5,
        "provider": "qemu",
        "mutant": "stale-cgroup-prog",
        "repeat": null,
        "scenarios": [],
    }))
    .expect("a plan")
}

fn facts() -> Facts {
    Facts {
        provider: "qemu".into(),
        kernel: "6.1.0-57-amd64".into(),
        accelerator: "kvm".into(),
        ..Facts::default()
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
        Event::ScenarioStarted {
            scenario: "restart".into(),
            iteration: 1,
            marker: "dph-1".into(),
            provider: "netns".into(),
        },
        Event::Step {
            scenario: "restart".into(),
            iteration: 1,
            index: 0,
            step: PlannedStep::Deploy {
                accelerate: false,
                max_sockhash: None,
                agent_layout: None,
            },
            ms: 1500,
            at_ms: 1500,
            detail: vec!["::warning::from a node's output".into()],
            error: None,
        },
        v(
            1,
            crate::invariant::one_program::NAME,
            Judgement::fail(
                "node-a: 2 programs, 50% stale",
                vec![
                    "node node-a hook connect4: 2 programs".into(),
                    "ids 7, 9".into(),
                ],
            ),
        ),
        v(
            1,
            crate::invariant::service_connectivity::NAME,
            Judgement::pass("ok"),
        ),
        Event::ScenarioStarted {
            scenario: "restart".into(),
            iteration: 2,
            marker: "dph-2".into(),
            provider: "netns".into(),
        },
        v(
            2,
            crate::invariant::one_program::NAME,
            Judgement::pass("one"),
        ),
        v(
            2,
            crate::invariant::service_connectivity::NAME,
            Judgement::unknown("cannot | observe"),
        ),
        Event::Up {
            scenario: "broken".into(),
            iteration: 1,
            ms: 5,
            error: Some(crate::event::ErrorReport {
                kind: crate::event::ErrorKind::Harness,
                message: "node n: not ready\nconsole tail".into(),
            }),
        },
    ]
}

fn run(events: &[Event]) -> String {
    let (p, f) = (plan(), facts());
    summary(&Run {
        plan: &p,
        facts: &f,
        events,
        status: ExitStatus::InvariantsFailed,
        replay: "harness suite suites/sock-lb.yaml --provider qemu --seed 5 --datapath-mutant stale-cgroup-prog",
    })
}

#[test]
fn messages_escape_percent_and_line_breaks() {
    assert_eq!(escape_data("50% of\r\nx"), "50%25 of%0D%0Ax");
    assert_eq!(
        escape_data("%0A"),
        "%250A",
        "an existing escape is escaped again"
    );
}

#[test]
fn properties_also_escape_colon_and_comma() {
    assert_eq!(
        escape_property("sock-lb: restart, 1%\n"),
        "sock-lb%3A restart%2C 1%25%0A"
    );
}

#[test]
fn a_failed_invariant_is_one_error_naming_suite_scenario_and_evidence() {
    let (p, f, ev) = (plan(), facts(), events());
    let r = Run {
        plan: &p,
        facts: &f,
        events: &ev,
        status: ExitStatus::InvariantsFailed,
        replay: "harness suite suites/sock-lb.yaml --provider qemu --seed 5 --datapath-mutant stale-cgroup-prog",
    };
    let a = annotations(&r);
    assert_eq!(
        a,
        vec![
            "::error title=sock-lb%3A restart%3A one-program-per-hook failed::\
             1 of 2 (#1) in sock-lb [qemu 6.1.0-57-amd64, mutant stale-cgroup-prog]: node-a: 2 programs, 50%25 stale\
             %0Anode node-a hook connect4: 2 programs%0Aids 7, 9"
                .to_string(),
            "::warning title=sock-lb%3A restart%3A service-connectivity could not be judged::\
             1 of 2 (#2) in sock-lb [qemu 6.1.0-57-amd64, mutant stale-cgroup-prog]: cannot | observe"
                .to_string(),
            "::error title=sock-lb%3A broken%3A the harness could not run it::\
             sock-lb [qemu 6.1.0-57-amd64, mutant stale-cgroup-prog]%0Aiteration 1: up: node n: not ready%0Aconsole tail"
                .to_string(),
        ]
    );
}

#[test]
fn groups_open_per_iteration_close_and_never_pass_a_command_through() {
    let (p, f, ev) = (plan(), facts(), events());
    let g = groups(&Run {
        plan: &p,
        facts: &f,
        events: &ev,
        status: ExitStatus::InvariantsFailed,
        replay: "harness suite suites/sock-lb.yaml --provider qemu --seed 5 --datapath-mutant stale-cgroup-prog",
    });
    let opened: Vec<&String> = g.iter().filter(|l| l.starts_with("::group::")).collect();
    assert_eq!(
        opened,
        [
            "::group::sock-lb [qemu 6.1.0-57-amd64, mutant stale-cgroup-prog]: restart #1",
            "::group::sock-lb [qemu 6.1.0-57-amd64, mutant stale-cgroup-prog]: restart #2",
            "::group::sock-lb [qemu 6.1.0-57-amd64, mutant stale-cgroup-prog]: broken #1",
        ]
    );
    assert_eq!(g.iter().filter(|l| *l == "::endgroup::").count(), 3);
    assert_eq!(g.last().map(String::as_str), Some("::endgroup::"));
    assert!(g.contains(&"step 1: deploy (1.5 s)".to_string()), "{g:#?}");
    assert!(
        g.contains(&"    : :warning::from a node's output".to_string()),
        "a node's output must not become an annotation: {g:#?}"
    );
}

#[test]
fn the_summary_is_a_markdown_table_of_verdicts() {
    assert_eq!(
        run(&events()),
        "### sock-lb [qemu 6.1.0-57-amd64, mutant stale-cgroup-prog]: exit 1 (an invariant failed)\n\
         \n\
         seed 5, accelerator kvm, datapath stale-cgroup-prog; replay: \
         `harness suite suites/sock-lb.yaml --provider qemu --seed 5 --datapath-mutant stale-cgroup-prog`\n\
         \n\
         | scenario | invariant | verdict | iterations | summary |\n\
         | --- | --- | --- | --- | --- |\n\
         | restart | one-program-per-hook | FAIL | 1 of 2 (#1) | node-a: 2 programs, 50% stale |\n\
         | restart | service-connectivity | unknown | 1 of 2 (#2) | cannot \\| observe |\n\
         | broken | set-up | ERROR | | iteration 1: up: node n: not ready console tail |\n\
         \n"
    );
}

#[test]
fn a_long_summary_stays_in_its_cell() {
    let long = "x".repeat(500);
    let table = run(&[v(
        1,
        crate::invariant::pod_to_pod::NAME,
        Judgement::pass(long),
    )]);
    let row = table
        .lines()
        .find(|l| l.starts_with("| restart |"))
        .expect("a row");
    assert!(row.ends_with("... |"), "{row}");
    assert!(row.len() < 250, "{row}");
    assert!(row.contains("| 1 passed |"), "{row}");
}
