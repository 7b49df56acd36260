//! Acceptance: a dp-probe whose JSON has drifted (a field renamed) makes the run a harness
//! error (exit 3) that names the field, never a failed probe (a false verdict, exit 1).
//! The run is the real one on the netns provider (suite `smoke`), with the real datapathd
//! and dp-probe, except that `dp-probe connect`'s lines go through `sed` on the way out
//! (`DP_HARNESS_BIN_DIR` points at a directory with that wrapper).
//! Needs root, cgroup2 and bpffs (ci/setup), like tests/netns.rs.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::{Command, Stdio};

mod common;
use common::{lock, skip_unless_root};

/// Runs `harness suite SUITE --provider netns` with dp-probe's `connect` output renamed
/// (`"ok":` -> `"okay":`); its exit status and stderr.
fn run_with_renamed_field(suite: &str) -> (Option<i32>, String) {
    // The binaries a plain run deploys (built beside this test's target directory).
    let real = harness::suite_run::binaries().expect("datapathd, dp-probe and dp-remote built");
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin dir");
    symlink(&real.datapathd, bin.join("datapathd")).expect("link datapathd");
    symlink(&real.dp_remote, bin.join("dp-remote")).expect("link dp-remote");
    // Only `connect` is rewritten: `serve` must keep its `ready` line unbuffered.
    let wrapper = format!(
        "#!/bin/bash\n\
         set -o pipefail\n\
         real='{}'\n\
         if [ \"$1\" = connect ]; then\n\
           \"$real\" \"$@\" | sed 's/\"ok\":/\"okay\":/'\n\
           exit $?\n\
         fi\n\
         exec \"$real\" \"$@\"\n",
        real.dp_probe.display()
    );
    let probe = bin.join("dp-probe");
    std::fs::write(&probe, wrapper).expect("write the wrapper");
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let out = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["suite", suite, "--provider", "netns", "--seed", "5"])
        .arg("--reports-dir")
        .arg(dir.path().join("r"))
        .env("DP_HARNESS_BIN_DIR", &bin)
        .env("CI", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run harness");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// smoke waits for its services to be reachable (service-connectivity's check) before
/// any check step: the wait fails.
#[test]
fn a_renamed_field_in_dp_probe_output_is_a_harness_error() {
    if skip_unless_root("netns, cgroups, eBPF") {
        return;
    }
    let _l = lock();
    let (code, stderr) = run_with_renamed_field("smoke");
    assert_eq!(
        code,
        Some(3),
        "a drifted wire format must be a harness error (3), not failed invariants (1):\n{stderr}"
    );
    assert!(
        stderr.contains("step 2 failed") && stderr.contains("unknown field `okay`"),
        "the wait-for step fails naming the renamed field:\n{stderr}"
    );
}

/// kube-proxy-order's first check step runs pod-to-external (dp-probe connect) with no
/// wait on services before it: the check step fails, no verdict is recorded for it.
#[test]
fn a_renamed_field_fails_the_check_step_not_the_invariant() {
    if skip_unless_root("netns, cgroups, eBPF") {
        return;
    }
    let _l = lock();
    let (code, stderr) = run_with_renamed_field("kube-proxy-order");
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("pod-to-external: node node-a: `")
            && stderr.contains("unknown field `okay`"),
        "the check step names the invariant and the renamed field:\n{stderr}"
    );
    assert!(
        !stderr.contains("pod-to-external: Fail"),
        "no verdict for an output the harness cannot read:\n{stderr}"
    );
}
