//! Issue 12, point 4: kernel features are probed, not assumed. `datapathd features --json`
//! on this host's kernel (6.18: everything the datapath uses is there), the same choices
//! in the running agent's `status --json`, and the degraded paths forced with
//! `--assume-missing`. Needs root; see tests/common/mod.rs.

mod common;

use std::fs;

use common::probe;
use common::sandbox::{datapathd_cmd, AgentOpts, Sandbox};
use common::yaml::{self, Svc};
use serde_json::Value;

fn features_json(args: &[&str]) -> Value {
    let mut all = vec!["features", "--json"];
    all.extend_from_slice(args);
    let out = datapathd_cmd(&all);
    assert!(
        out.status.success(),
        "datapathd {} failed: {}{}",
        all.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "features --json is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Scratch cgroups (`datapathd-probe-<pid>`) whose process is gone: leaked. Those of live
/// processes are other agents probing right now (other tests, other runs on this host).
fn probe_cgroups_left() -> Vec<String> {
    fs::read_dir(common::sandbox::cgroup2_root())
        .expect("read the cgroup v2 root")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.strip_prefix("datapathd-probe-")
                .is_some_and(|pid| !std::path::Path::new("/proc").join(pid).exists())
        })
        .collect()
}

#[test]
fn features_reports_everything_available_on_this_kernel() {
    if !common::can_run("features_reports_everything_available_on_this_kernel") {
        return;
    }
    let f = features_json(&[]);
    assert_eq!(f["schema"], 1, "{f:#}");
    assert_eq!(f["source"], "probe");
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert_eq!(f["kernel_release"], release.trim());
    let features = f["features"].as_object().expect("features is an object");
    // Every feature the datapath uses, each probed on this kernel (6.18 has all).
    assert!(features.len() >= 30, "{} features: {f:#}", features.len());
    for name in [
        "link:tcx",
        "link:cgroup",
        "link:update",
        "attach:getpeername4",
        "map_type:sockhash",
        "prog_type:sk_msg",
        "helper:cgroup_sock_addr:bpf_set_retval",
        "helper:sched_cls:bpf_redirect_neigh",
        "btf:vmlinux",
    ] {
        assert!(features.contains_key(name), "{name} missing: {f:#}");
    }
    let unavailable: Vec<String> = features
        .iter()
        .filter(|(_, v)| v["available"] != true)
        .map(|(k, v)| format!("{k}: {}", v["how"]))
        .collect();
    assert!(
        unavailable.is_empty(),
        "unavailable on this host: {unavailable:#?}"
    );
    for (name, v) in features {
        let how = v["how"].as_str().expect("how is a string");
        assert!(how.starts_with("probe: "), "{name} was not probed: {how}");
    }
    let c = &f["choices"];
    assert_eq!(c["socket_lb"]["value"], "on", "{c:#}");
    assert_eq!(c["getpeername4"]["value"], "attached", "{c:#}");
    assert_eq!(c["fast_refuse"]["value"], "set_retval", "{c:#}");
    assert_eq!(c["accelerate"]["value"], "off", "{c:#}");
    assert_eq!(c["tc_attach"]["value"], "tcx", "{c:#}");
    assert!(
        probe_cgroups_left().is_empty(),
        "the probes left cgroups behind: {:?}",
        probe_cgroups_left()
    );

    // Forced: the decision follows the probe result, with the reason.
    let f = features_json(&["--assume-missing", "link:tcx"]);
    assert_eq!(f["features"]["link:tcx"]["available"], false);
    assert_eq!(f["choices"]["tc_attach"]["value"], "clsact", "{f:#}");
    let reason = f["choices"]["tc_attach"]["reason"]
        .as_str()
        .expect("reason");
    assert!(
        reason.contains("link:tcx unavailable (assumed missing"),
        "{reason}"
    );

    let bad = datapathd_cmd(&["features", "--assume-missing", "tcx"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("unknown feature `tcx`; valid: "),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn status_carries_the_running_agents_choices() {
    if !common::can_run("status_carries_the_running_agents_choices") {
        return;
    }
    let probed = features_json(&[]);
    let mut sb = Sandbox::new("feat");
    sb.start_agent(&AgentOpts::default());
    let s = sb.status();
    let f = &s["features"];
    assert_eq!(
        f["source"], "agent",
        "status must show the agent's record: {f:#}"
    );
    assert_eq!(f["choices"], probed["choices"], "{f:#}");
    assert_eq!(f["kernel_release"], probed["kernel_release"]);
    let problems = s["problems"].as_array().expect("problems");
    assert!(problems.is_empty(), "{problems:#?}");
    let text = datapathd_cmd(&["status", "--bpffs", sb.bpffs_str()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("choice tc_attach: tcx"), "{text}");
}

/// Without bpf_set_retval and getpeername4 (as on a 5.4..5.7 kernel for getpeername4,
/// before 5.18 for set_retval) the agent still runs: a service without backends answers
/// EPERM instead of ECONNREFUSED, no getpeername4 program is attached, and status
/// judges that as wanted.
#[test]
fn degraded_agent_runs_without_set_retval_and_getpeername4() {
    if !common::can_run("degraded_agent_runs_without_set_retval_and_getpeername4") {
        return;
    }
    let mut sb = Sandbox::new("feat-degr");
    let empty = Svc::new("empty", "127.0.10.9", 80, "TCP", 8080);
    sb.write_services("svc.yaml", &yaml::file(std::slice::from_ref(&empty)));
    sb.start_agent(&AgentOpts {
        extra_args: [
            "--assume-missing",
            "helper:cgroup_sock_addr:bpf_set_retval",
            "--assume-missing",
            "attach:getpeername4",
        ]
        .map(String::from)
        .to_vec(),
        ..AgentOpts::default()
    });
    let s = sb.status();
    let c = &s["features"]["choices"];
    assert_eq!(c["fast_refuse"]["value"], "eperm", "{c:#}");
    assert_eq!(c["getpeername4"]["value"], "skipped", "{c:#}");
    let problems = s["problems"].as_array().expect("problems");
    assert!(problems.is_empty(), "{problems:#?}");
    let gp = s["hooks"]
        .as_array()
        .expect("hooks")
        .iter()
        .find(|h| h["hook"] == "getpeername4")
        .expect("getpeername4 hook listed");
    assert_eq!(gp["ours"], 0, "{gp:#}");

    common::check::wait_programmed(
        &sb,
        std::slice::from_ref(&empty),
        std::time::Duration::from_secs(10),
    )
    .unwrap_or_else(|| panic!("service not programmed\n{}", sb.agent_logs()));
    let attempts = probe::connect(&sb.netns, &sb.cgroup, &empty.addr(), "tcp", 2, 2000);
    for a in &attempts {
        assert!(!a.ok, "a connect succeeded with no backend: {a:?}");
        assert_eq!(a.errno, Some(libc::EPERM), "without set_retval: {a:?}");
    }
}
