//! Issue 17, map pressure: a service change a full map cannot take is refused alone and
//! reported, the services already programmed keep answering, and the change is made once
//! there is room; the mutant map-pressure-flush takes every service down instead. The map
//! is made full by sizing it (`--max-services 2`), the same refusal a foreign writer's
//! entries cause. Needs root; see tests/common/mod.rs.

mod common;

use std::time::Duration;

use common::check::wait_programmed;
use common::probe;
use common::sandbox::{datapathd_cmd, AgentOpts, Sandbox};
use common::yaml::{self, Svc};

/// A change is in the maps within 1 s; a refused one is retried every 5 s. Allow for a
/// loaded machine.
const RECONCILE: Duration = Duration::from_secs(3);
const RETRY: Duration = Duration::from_secs(10);

fn pressure(sb: &Sandbox) -> serde_json::Value {
    let out = datapathd_cmd(&["status", "--json", "--bpffs", sb.bpffs_str()]);
    assert!(out.status.success(), "datapathd status: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    v["pressure"].clone()
}

fn answers(sb: &Sandbox, svc: &Svc) -> bool {
    probe::connect(&sb.netns, &sb.cgroup, &svc.addr(), "tcp", 3, 2000)
        .iter()
        .all(|a| a.ok)
}

/// Two services fill `--max-services 2`; a third is written.
fn full_then_one_more(sb: &mut Sandbox, mutant: Option<&str>) -> (Svc, Svc, Svc) {
    sb.start_backend("127.0.1.1", 8080);
    sb.start_backend("127.0.1.2", 8080);
    let web = Svc::new("web", "127.0.10.1", 80, "TCP", 8080).with_backends(&["127.0.1.1"]);
    let api = Svc::new("api", "127.0.10.2", 80, "TCP", 8080).with_backends(&["127.0.1.2"]);
    let more = Svc::new("more", "127.0.10.3", 80, "TCP", 8080).with_backends(&["127.0.1.1"]);
    sb.write_services("a.yaml", &yaml::file(&[web.clone(), api.clone()]));
    sb.start_agent(&AgentOpts {
        mutant: mutant.map(str::to_string),
        extra_args: vec!["--max-services".into(), "2".into()],
        ..AgentOpts::default()
    });
    wait_programmed(sb, &[web.clone(), api.clone()], RECONCILE)
        .expect("both services are programmed at start");
    assert!(
        pressure(sb).is_null(),
        "no pressure before the third service"
    );
    sb.write_services("b.yaml", &yaml::file(std::slice::from_ref(&more)));
    (web, api, more)
}

#[test]
fn a_change_that_does_not_fit_is_refused_alone_and_made_once_there_is_room() {
    if !common::can_run("a_change_that_does_not_fit_is_refused_alone_and_made_once_there_is_room") {
        return;
    }
    let mut sb = Sandbox::new("pressure");
    let (web, api, more) = full_then_one_more(&mut sb, None);

    let refused = common::wait_for(RECONCILE, || {
        let p = pressure(&sb);
        (!p.is_null()).then_some(p)
    })
    .unwrap_or_else(|| panic!("no pressure reported\n{}", sb.agent_logs()));
    assert_eq!(refused["full"][0]["map"], "dp_services", "{refused}");
    assert_eq!(refused["full"][0]["capacity"], 2, "{refused}");
    assert!(refused["resolved_at"].is_null(), "{refused}");
    let line = refused["refused"][0].as_str().unwrap_or_default();
    assert!(
        line.starts_with("service 127.0.10.3:80/tcp: change refused"),
        "{refused}"
    );
    assert!(
        sb.agent_logs()
            .contains("service 127.0.10.3:80/tcp: change refused"),
        "the refusal is logged\n{}",
        sb.agent_logs()
    );
    // What was programmed stays, and answers.
    wait_programmed(&sb, &[web.clone(), api.clone()], RECONCILE)
        .expect("the full map keeps both services");
    assert!(
        answers(&sb, &web) && answers(&sb, &api),
        "both still answer"
    );

    // Room again: the refused service is made without another change to it.
    sb.write_services("a.yaml", &yaml::file(std::slice::from_ref(&web)));
    wait_programmed(&sb, &[web.clone(), more.clone()], RETRY).unwrap_or_else(|| {
        panic!(
            "the refused service is not programmed once there is room\n{}",
            sb.agent_logs()
        )
    });
    assert!(
        answers(&sb, &more),
        "the service made after the pressure answers"
    );
    let over = pressure(&sb);
    assert!(over["resolved_at"].is_u64(), "the record is closed: {over}");
    assert!(sb.agent_logs().contains("map pressure gone"));
}

#[test]
fn the_mutant_map_pressure_flush_takes_every_service_down() {
    if !common::can_run("the_mutant_map_pressure_flush_takes_every_service_down") {
        return;
    }
    let mut sb = Sandbox::new("pressure-mutant");
    let (web, api, _more) = full_then_one_more(&mut sb, Some("map-pressure-flush"));
    common::wait_for(RECONCILE, || (!pressure(&sb).is_null()).then_some(()))
        .unwrap_or_else(|| panic!("no pressure reported\n{}", sb.agent_logs()));
    wait_programmed(&sb, &[], RECONCILE).unwrap_or_else(|| {
        panic!(
            "the mutant empties dp_services of its services\n{}",
            sb.agent_logs()
        )
    });
    assert!(
        !answers(&sb, &web) && !answers(&sb, &api),
        "nothing answers"
    );
}
