//! Acceptance 1 and 2 (issue 2): socket load balancing with real sockets, and backends
//! that come and go. Needs root; see tests/common/mod.rs.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::check::wait_programmed;
use common::probe::{self, Attempt};
use common::sandbox::{AgentOpts, Sandbox};
use common::yaml::{self, Svc};

/// The contract: a change in the services directory is in the maps within 1 s. Allow for
/// a loaded machine, and print what was measured.
const RECONCILE: Duration = Duration::from_secs(3);

fn backends_seen(attempts: &[Attempt]) -> BTreeSet<String> {
    attempts.iter().filter_map(|a| a.backend.clone()).collect()
}

fn all_ok(what: &str, attempts: &[Attempt]) {
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| !a.ok).collect();
    assert!(
        failed.is_empty(),
        "{what}: {} of {} attempts failed: {failed:#?}",
        failed.len(),
        attempts.len()
    );
}

#[test]
fn tcp_and_udp_reach_a_backend_and_look_like_the_service() {
    if !common::can_run("tcp_and_udp_reach_a_backend_and_look_like_the_service") {
        return;
    }
    let mut sb = Sandbox::new("lb");
    sb.start_backend("127.0.1.1", 8080);
    let web = Svc::new("web", "127.0.10.1", 80, "TCP", 8080).with_backends(&["127.0.1.1"]);
    let dns = Svc::new("dns", "127.0.10.2", 53, "UDP", 8080).with_backends(&["127.0.1.1"]);
    sb.write_services("svc.yaml", &yaml::file(&[web.clone(), dns.clone()]));
    sb.start_agent(&AgentOpts::default());

    // TCP: connect() to the service reaches the backend, the request and its answer
    // travel, and getpeername() still shows the service address.
    let tcp = probe::connect(&sb.netns, &sb.cgroup, &web.addr(), "tcp", 5, 2000);
    all_ok("TCP to the service", &tcp);
    for a in &tcp {
        assert_eq!(a.backend.as_deref(), Some("127.0.1.1:8080"), "{a:?}");
        assert_eq!(
            a.echo.as_deref(),
            Some(format!("hello {}", web.addr()).as_str()),
            "{a:?}"
        );
        assert_eq!(
            a.peer.as_deref(),
            Some("127.0.10.1:80"),
            "getpeername() must show the service: {a:?}"
        );
    }

    // UDP: an unconnected sendto() to the service reaches the backend, and the reply
    // appears to come from the service address.
    let udp = probe::connect(&sb.netns, &sb.cgroup, &dns.addr(), "udp", 5, 2000);
    all_ok("UDP to the service", &udp);
    for a in &udp {
        assert_eq!(a.backend.as_deref(), Some("127.0.1.1:8080"), "{a:?}");
        assert_eq!(
            a.peer.as_deref(),
            Some("127.0.10.2:53"),
            "the reply must come from the service: {a:?}"
        );
    }

    // Control: the same connect from outside the cgroup is not translated (nothing
    // listens on the service address itself), so the success above is the datapath's.
    let outside = probe::connect_from(&sb.netns, None, &web.addr(), "tcp", 1, 1000);
    assert!(
        !outside[0].ok,
        "outside the cgroup the service address must not answer: {:?}",
        outside[0]
    );
    assert_eq!(
        outside[0].errno,
        Some(libc::ECONNREFUSED),
        "{:?}",
        outside[0]
    );
}

#[test]
fn backends_scale_one_three_zero_two() {
    if !common::can_run("backends_scale_one_three_zero_two") {
        return;
    }
    let mut sb = Sandbox::new("scale");
    // All three run throughout: reaching one that is not a current endpoint would show.
    for ip in ["127.0.1.1", "127.0.1.2", "127.0.1.3"] {
        sb.start_backend(ip, 8080);
    }
    let svc = |ips: &[&str]| Svc::new("web", "127.0.10.1", 80, "TCP", 8080).with_backends(ips);
    let first = svc(&["127.0.1.1"]);
    sb.write_services("web.yaml", &yaml::file(std::slice::from_ref(&first)));
    sb.start_agent(&AgentOpts::default());
    wait_programmed(&sb, std::slice::from_ref(&first), RECONCILE)
        .expect("the first services are programmed at start");

    for (step, ips, tries) in [
        ("1 backend", vec!["127.0.1.1"], 20),
        (
            "3 backends",
            vec!["127.0.1.1", "127.0.1.2", "127.0.1.3"],
            60,
        ),
        ("0 backends", vec![], 3),
        ("2 backends", vec!["127.0.1.2", "127.0.1.3"], 40),
    ] {
        let s = svc(&ips);
        sb.write_services("web.yaml", &yaml::file(std::slice::from_ref(&s)));
        let took = wait_programmed(&sb, std::slice::from_ref(&s), RECONCILE).unwrap_or_else(|| {
            panic!(
                "{step}: not in the maps within {RECONCILE:?}\n{}",
                sb.agent_logs()
            )
        });
        eprintln!("{step}: reconciled in {took:?}");

        let attempts = probe::connect(&sb.netns, &sb.cgroup, &s.addr(), "tcp", tries, 2000);
        if ips.is_empty() {
            for a in &attempts {
                assert!(!a.ok, "{step}: a connect succeeded with no backend: {a:?}");
                assert!(
                    matches!(a.errno, Some(libc::ECONNREFUSED | libc::EPERM)),
                    "{step}: expected ECONNREFUSED or EPERM, got {a:?}"
                );
                assert!(
                    a.elapsed_us < 500_000,
                    "{step}: the failure must be fast, took {} us",
                    a.elapsed_us
                );
            }
            continue;
        }
        all_ok(step, &attempts);
        let current: BTreeSet<String> = s.live_backends().into_iter().collect();
        let seen = backends_seen(&attempts);
        assert!(
            seen.is_subset(&current),
            "{step}: reached {seen:?}, current backends are {current:?}"
        );
        assert_eq!(
            seen, current,
            "{step}: {tries} connects should reach every current backend"
        );
    }
}
