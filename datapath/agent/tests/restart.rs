//! Acceptance 3 and 4 (issue 2), incident A: the agent dies at every failpoint of its
//! start, a new agent starts with changed services, and then exactly one program of ours
//! runs per hook, it reads the live maps, no map of ours is left unreferenced, and every
//! service reaches a live backend. The `stale-cgroup-prog` mutant must fail the same
//! check: that proves the check can see the bug. Needs root; see tests/common/mod.rs.

mod common;

use std::time::Duration;

use common::check::{check, check_within, wait_programmed};
use common::probe;
use common::sandbox::{datapathd_cmd, AgentOpts, Sandbox};
use common::yaml::{self, Svc};

const MUTANT: &str = "stale-cgroup-prog";

/// Three generations of services: the healthy start, the start that crashes, and the
/// final start. Each moves every service to new backends, and the last adds one.
fn generation(n: u8) -> Vec<Svc> {
    let b = |last: u8| format!("127.0.{n}.{last}");
    let (b1, b2) = (b(1), b(2));
    let mut v = vec![
        Svc::new("web", "127.0.10.1", 80, "TCP", 8080).with_backends(&[&b1, &b2]),
        Svc::new("dns", "127.0.10.2", 53, "UDP", 8080).with_backends(&[&b1]),
    ];
    if n == 3 {
        v[1] = Svc::new("dns", "127.0.10.2", 53, "UDP", 8080).with_backends(&[&b2, &b1]);
        v.push(Svc::new("api", "127.0.10.3", 81, "TCP", 8080).with_backends(&[&b2]));
    }
    v
}

fn failpoints() -> Vec<String> {
    let out = datapathd_cmd(&["failpoints"]);
    assert!(
        out.status.success(),
        "datapathd failpoints: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(!list.is_empty(), "datapathd lists no failpoints");
    list
}

/// Healthy start (generation 1), SIGKILL, a start that dies at `failpoint` (generation 2),
/// then a final start (generation 3) with the earlier backends gone. Returns the
/// sandbox, still holding everything, for judging.
fn crash_and_restart(failpoint: &str, mutant: Option<&str>) -> Sandbox {
    let opts = AgentOpts {
        mutant: mutant.map(str::to_owned),
        failpoint: None,
        ..AgentOpts::default()
    };
    let mut sb = Sandbox::new(if mutant.is_some() {
        "restart-mutant"
    } else {
        "restart"
    });

    let gen1 = generation(1);
    for ip in ["127.0.1.1", "127.0.1.2"] {
        sb.start_backend(ip, 8080);
    }
    sb.write_services("svc.yaml", &yaml::file(&gen1));
    sb.start_agent(&opts);
    // The healthy start really serves (otherwise a later failure would prove nothing).
    let a = probe::connect(&sb.netns, &sb.cgroup, &gen1[0].addr(), "tcp", 1, 2000);
    assert!(
        a[0].ok,
        "generation 1 does not serve: {:?}\n{}",
        a[0],
        sb.agent_logs()
    );
    sb.stop_agent(libc::SIGKILL);

    sb.write_services("svc.yaml", &yaml::file(&generation(2)));
    sb.crash_agent_at(failpoint, mutant);

    for id in sb.backend_ids() {
        sb.stop_backend(&id);
    }
    let gen3 = generation(3);
    for ip in ["127.0.3.1", "127.0.3.2"] {
        sb.start_backend(ip, 8080);
    }
    sb.write_services("svc.yaml", &yaml::file(&gen3));
    sb.start_agent(&opts);
    sb
}

#[test]
fn after_a_crash_at_every_failpoint_one_program_per_hook_serves_live_backends() {
    if !common::can_run(
        "after_a_crash_at_every_failpoint_one_program_per_hook_serves_live_backends",
    ) {
        return;
    }
    let mut failures = Vec::new();
    for fp in failpoints() {
        let sb = crash_and_restart(&fp, None);
        let gen3 = generation(3);
        if wait_programmed(&sb, &gen3, Duration::from_secs(5)).is_none() {
            failures.push(format!(
                "[{fp}] the maps do not hold generation 3 within 5 s"
            ));
        }
        let v = check_within(&sb, &gen3, Duration::from_secs(5));
        eprintln!("[{fp}] {} violation(s)", v.len());
        if !v.is_empty() {
            failures.push(format!("[{fp}]\n  {}\n{}", v.join("\n  "), sb.agent_logs()));
        }
    }
    assert!(
        failures.is_empty(),
        "restart invariants violated:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_stale_cgroup_prog_mutant_fails_the_same_check() {
    if !common::can_run("the_stale_cgroup_prog_mutant_fails_the_same_check") {
        return;
    }
    let mut missed = Vec::new();
    for fp in failpoints() {
        let sb = crash_and_restart(&fp, Some(MUTANT));
        // No patience: the bug is permanent, and waiting could only hide nothing.
        let v = check(&sb, &generation(3));
        eprintln!(
            "[{fp}] mutant: {} violation(s):\n  {}",
            v.len(),
            v.join("\n  ")
        );
        // The incident's signature: more than one program of ours on a hook, in the
        // kernel's own listing, as the harness's one-program-per-hook judges it (none on
        // a hook is another failure: `0 programs of ours attached`).
        let duplicate = v.iter().any(|m| {
            m.starts_with("one-program-per-hook:")
                && m.contains("programs of ours attached (want 1)")
                && !m.contains(": 0 programs of ours")
        });
        if !duplicate {
            missed.push(format!(
                "[{fp}] the check did not report the stale program: {v:#?}"
            ));
        }
    }
    assert!(
        missed.is_empty(),
        "the check missed the mutant:\n{}",
        missed.join("\n")
    );
}
