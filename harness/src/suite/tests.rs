//! Suite parsing: the real suites load; each kind of mistake gives its message with file,
//! line, column, key path and expected form.

use std::path::Path;

use super::*;
use crate::registry::Registry;

const GOOD: &str = "\
name: t
topology:
  nodes:
    - name: node-a
      pods: [client, web]
services:
  - name: web
    vip: 10.96.0.10
    port: 80
    target-port: 8080
    backends: [web]
scenarios:
  - name: s
    steps:
      - deploy: {}
      - check:
          invariants: [service-connectivity]
";

fn err(text: &str) -> String {
    match Suite::parse(Path::new("t.yaml"), text, &Registry) {
        Ok(s) => panic!("expected an error, got {s:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_repository_suites_load() {
    let dir = default_dir();
    let files = list(&dir).expect("suites dir");
    assert!(files.len() >= 2, "{files:?}");
    for f in files {
        let s = Suite::load(&f, &crate::registry::Registry)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!s.scenarios.is_empty());
    }
}

#[test]
fn good_minimal_suite() {
    let s = Suite::parse(Path::new("t.yaml"), GOOD, &Registry).expect("parses");
    assert_eq!(s.repeat, 1);
    assert_eq!(s.services[0].protocol, Protocol::Tcp);
    assert_eq!(
        s.scenarios[0].steps[0],
        Step::Deploy(step::DeployStep {
            accelerate: false,
            max_sockhash: None,
            agent_layout: None
        })
    );
    assert_eq!(
        s.topology.nodes.iter().map(|n| n.pods.len()).sum::<usize>(),
        2
    );
}

#[test]
fn unknown_top_level_key() {
    let e = err(&GOOD.replace("name: t\n", "name: t\ncolour: red\n"));
    assert!(
        e.starts_with("t.yaml:2:1: at `colour`: unknown field `colour`, expected one of `name`"),
        "{e}"
    );
    assert!(e.contains("expected form: a suite:"), "{e}");
}

#[test]
fn unknown_key_in_a_service_names_its_path_and_line() {
    let e = err(&GOOD.replace("    port: 80\n", "    port: 80\n    prot: tcp\n"));
    assert!(
        e.starts_with("t.yaml:10:5: at `services[0].prot`: unknown field `prot`"),
        "{e}"
    );
    assert!(
        e.contains("expected form: services: [{name: web, vip:"),
        "{e}"
    );
}

#[test]
fn wrong_type_for_port() {
    let e = err(&GOOD.replace("port: 80", "port: eighty"));
    assert!(
        e.starts_with(
            "t.yaml:9:11: at `services[0].port`: invalid type: string \"eighty\", expected u16"
        ),
        "{e}"
    );
}

#[test]
fn port_out_of_range() {
    let e = err(&GOOD.replace("port: 80", "port: 70000"));
    assert!(
        e.contains("at `services[0].port`: invalid value: integer `70000`, expected u16"),
        "{e}"
    );
}

#[test]
fn bad_vip() {
    let e = err(&GOOD.replace("10.96.0.10", "10.96.0"));
    assert!(
        e.contains("t.yaml:8:10: at `services[0].vip`: invalid IPv4 address syntax"),
        "{e}"
    );
}

#[test]
fn unknown_step_kind() {
    let e = err(&GOOD.replace("- deploy: {}", "- deploi: {}"));
    assert!(e.contains("t.yaml:15:9: at `scenarios[0].steps[0].deploi`: unknown variant `deploi`, expected one of `deploy`, `fault`, `wait-for`, `check`"), "{e}");
    assert!(e.contains("expected form: a step is one of"), "{e}");
}

#[test]
fn unknown_invariant() {
    let e = err(&GOOD.replace("[service-connectivity]", "[service-conectivity]"));
    assert!(e.contains("t.yaml:17:24: at `scenarios[0].steps[1].check.invariants[0]`: unknown invariant `service-conectivity` (known: service-connectivity, "), "{e}");
}

#[test]
fn unknown_fault() {
    let e = err(&GOOD.replace(
        "      - check:\n",
        "      - fault:\n          name: reboot\n      - check:\n",
    ));
    assert!(e.contains("at `scenarios[0].steps[1].fault.name`: unknown fault `reboot` (known: agent-restart-mid-attach, "), "{e}");
    assert!(e.contains("t.yaml:17:"), "located: {e}");
}

#[test]
fn missing_field() {
    let e = err(&GOOD.replace("    target-port: 8080\n", ""));
    assert!(
        e.contains("at `services[0]`: missing field `target-port`"),
        "{e}"
    );
}

#[test]
fn backend_that_is_not_a_pod() {
    let e = err(&GOOD.replace("backends: [web]", "backends: [wbe]"));
    assert!(e.starts_with("t.yaml:11:16: at `services[0].backends[0]`: backend `wbe` is not a pod of the topology (pods: client, web)"), "{e}");
}

#[test]
fn pod_named_twice() {
    let e = err(&GOOD.replace("pods: [client, web]", "pods: [web, web]"));
    assert!(
        e.contains("at `topology.nodes[0].pods[1]`: pod `web` is named twice"),
        "{e}"
    );
}

#[test]
fn scenario_must_start_with_deploy() {
    let e = err(&GOOD.replace("      - deploy: {}\n", ""));
    assert!(
        e.contains("at `scenarios[0].steps[0]`: scenario `s` must start with a `deploy` step"),
        "{e}"
    );
}

#[test]
fn not_yaml_at_all() {
    let e = err("name: [unclosed\n");
    assert!(e.starts_with("t.yaml:"), "{e}");
    assert!(e.contains("expected form"), "{e}");
}

#[test]
fn deploy_accelerate_parses_and_defaults_off() {
    let s = Suite::parse(
        Path::new("t.yaml"),
        &GOOD.replace("- deploy: {}", "- deploy: {accelerate: true}"),
        &Registry,
    )
    .expect("parses");
    assert_eq!(
        s.scenarios[0].steps[0],
        Step::Deploy(step::DeployStep {
            accelerate: true,
            max_sockhash: None,
            agent_layout: None
        })
    );
    let e = err(&GOOD.replace("- deploy: {}", "- deploy: {accelerated: true}"));
    assert!(
        e.contains("at `scenarios[0].steps[0].deploy.accelerated`: unknown field `accelerated`, expected one of `accelerate`, `max-sockhash`, `agent-layout`"),
        "{e}"
    );
}

#[test]
fn max_sockhash_needs_acceleration_and_is_located() {
    let e = err(&GOOD.replace("- deploy: {}", "- deploy: {max-sockhash: 64}"));
    assert!(e.starts_with("t.yaml:"), "{e}");
    assert!(
        e.contains("scenarios[0].steps[0].deploy.max-sockhash") && e.contains("accelerate: true"),
        "{e}"
    );
    let e = err(&GOOD.replace(
        "- deploy: {}",
        "- deploy: {accelerate: true, max-sockhash: 0}",
    ));
    assert!(e.contains("at least 1"), "{e}");
    let s = Suite::parse(
        Path::new("t.yaml"),
        &GOOD.replace(
            "- deploy: {}",
            "- deploy: {accelerate: true, max-sockhash: 64}",
        ),
        &Registry,
    )
    .expect("parses");
    assert_eq!(
        s.scenarios[0].steps[0],
        Step::Deploy(step::DeployStep {
            accelerate: true,
            max_sockhash: Some(64),
            agent_layout: None
        })
    );
}

#[test]
fn agent_layout_parses_and_zero_is_located() {
    let s = Suite::parse(
        Path::new("t.yaml"),
        &GOOD.replace("- deploy: {}", "- deploy: {agent-layout: 1}"),
        &Registry,
    )
    .expect("parses");
    assert_eq!(
        s.scenarios[0].steps[0],
        Step::Deploy(step::DeployStep {
            accelerate: false,
            max_sockhash: None,
            agent_layout: Some(1)
        })
    );
    let e = err(&GOOD.replace("- deploy: {}", "- deploy: {agent-layout: 0}"));
    assert!(e.starts_with("t.yaml:"), "{e}");
    assert!(
        e.contains("scenarios[0].steps[0].deploy.agent-layout") && e.contains("counts from 1"),
        "{e}"
    );
}

#[test]
fn sockmap_leak_needs_an_accelerated_deploy() {
    let e = err(&GOOD.replace(
        "      - check:\n",
        "      - fault:\n          name: sockmap-leak\n      - check:\n",
    ));
    assert!(
        e.starts_with("t.yaml:17:17: at `scenarios[0].steps[1].fault.name`: fault sockmap-leak in scenario `s` needs the scenario's deploy step to be `deploy: {accelerate: true}`"),
        "{e}"
    );
}

#[test]
fn sockmap_leak_needs_a_local_tcp_server_on_its_node() {
    let text = GOOD
        .replace("- deploy: {}", "- deploy: {accelerate: true}")
        .replace("      pods: [client, web]\n", "      pods: [client, web]\n    - name: node-b\n      pods: [other]\n")
        .replace(
            "      - check:\n",
            "      - fault:\n          name: sockmap-leak\n          node: node-b\n      - check:\n",
        );
    let e = err(&text);
    assert!(
        e.contains("at `scenarios[0].steps[1].fault.name`: fault sockmap-leak needs a pod that backs a TCP service on node `node-b`"),
        "{e}"
    );
}

#[test]
fn sockhash_invariants_need_an_accelerated_deploy() {
    let e = err(&GOOD.replace(
        "[service-connectivity]",
        "[service-connectivity, sockhash-keys-live]",
    ));
    assert!(
        e.contains("at `scenarios[0].steps[1].check.invariants[1]`: invariant sockhash-keys-live judges socket acceleration: scenario `s` must start with `deploy: {accelerate: true}`"),
        "{e}"
    );
}

#[test]
fn a_node_may_name_its_kernel_and_a_wrong_one_is_located() {
    let s = Suite::parse(
        Path::new("t.yaml"),
        &GOOD.replace(
            "    - name: node-a\n",
            "    - name: node-a\n      kernel: \"5.10\"\n",
        ),
        &Registry,
    )
    .expect("parses");
    assert_eq!(
        s.topology.nodes[0].kernel.as_ref().map(ToString::to_string),
        Some("5.10".to_owned())
    );
    let e = err(&GOOD.replace(
        "    - name: node-a\n",
        "    - name: node-a\n      kernel: 4.x\n",
    ));
    assert!(e.contains("t.yaml:"), "{e}");
    assert!(e.contains("topology.nodes[0].kernel"), "{e}");
    assert!(e.contains("Debian kernel series"), "{e}");
}

#[test]
fn must_catch_names_known_mutants_and_checked_invariants() {
    let with = |entry: &str| format!("{GOOD}must-catch:\n{entry}");
    let ok =
        with("  - mutant: getpeername-not-rewritten\n    invariants: [service-connectivity]\n");
    let s = Suite::parse(Path::new("t.yaml"), &ok, &Registry).expect("parses");
    assert_eq!(s.must_catch[0].mutant, "getpeername-not-rewritten");

    let e = err(&with(
        "  - mutant: stale-prog\n    invariants: [service-connectivity]\n",
    ));
    assert!(
        e.starts_with("t.yaml:19:13: at `must-catch[0].mutant`: unknown mutant `stale-prog` (known: stale-cgroup-prog,"),
        "{e}"
    );
    assert!(
        e.contains("expected form: must-catch: [{mutant: NAME"),
        "{e}"
    );

    let e = err(&with(
        "  - mutant: stale-cgroup-prog\n    invariants: [one-program-per-hook]\n",
    ));
    assert!(
        e.contains("t.yaml:20:") && e.contains("at `must-catch[0].invariants[0]`: invariant one-program-per-hook is not checked by any scenario of this suite, so it can never catch `stale-cgroup-prog` (checked: host-clean-after-down, service-connectivity)"),
        "{e}"
    );

    let e = err(&with(
        "  - mutant: stale-cgroup-prog\n    invariants: [no-such-check]\n",
    ));
    assert!(
        e.contains("at `must-catch[0].invariants[0]`: unknown invariant `no-such-check` (known: "),
        "{e}"
    );

    let twice = "  - mutant: stale-cgroup-prog\n    invariants: [service-connectivity]\n";
    let e = err(&with(&format!("{twice}{twice}")));
    assert!(
        e.contains("at `must-catch[1].mutant`: mutant `stale-cgroup-prog` is listed twice"),
        "{e}"
    );
}

#[test]
fn recovers_within_needs_a_bounded_fault_step_before_it() {
    let with = |fault: &str| {
        GOOD.replace(
            "      - check:\n          invariants: [service-connectivity]\n",
            &format!("{fault}      - check:\n          invariants: [recovers-within]\n"),
        )
    };
    let e = err(&with(""));
    assert!(
        e.contains("t.yaml:17:24:") && e.contains("judges the recovery after a fault's heal"),
        "{e}"
    );
    let e = err(&with("      - fault: {name: noop}\n"));
    assert!(e.contains("recover-within-s"), "{e}");
    Suite::parse(
        Path::new("t.yaml"),
        &with("      - fault: {name: noop, recover-within-s: 10}\n"),
        &Registry,
    )
    .expect("a bounded fault step before the check");
}

#[test]
fn routing_defaults_to_kernel_and_a_wrong_one_is_located() {
    let s = Suite::parse(Path::new("t.yaml"), GOOD, &Registry).expect("parses");
    assert_eq!(s.topology.routing, Routing::Kernel);
    let vx = GOOD.replace("topology:\n", "topology:\n  routing: vxlan\n");
    let s = Suite::parse(Path::new("t.yaml"), &vx, &Registry).expect("parses");
    assert_eq!(s.topology.routing, Routing::Vxlan);
    let e = err(&GOOD.replace("topology:\n", "topology:\n  routing: ipip\n"));
    assert!(
        e.starts_with("t.yaml:3:12: at `topology.routing`: unknown variant `ipip`"),
        "{e}"
    );
    assert!(e.contains("routing optional: kernel"), "{e}");
}

#[test]
fn node_reboot_is_refused_where_the_agent_wires_pods() {
    let text = GOOD
        .replace("topology:\n", "topology:\n  routing: native\n")
        .replace(
            "      - check:\n",
            "      - fault:\n          name: node-reboot\n      - check:\n",
        );
    let e = err(&text);
    assert!(
        e.contains("at `scenarios[0].steps[1].fault.name`")
            && e.contains("fault node-reboot: it re-creates pods with kernel routes; not with topology.routing native"),
        "{e}"
    );
}
