//! The harness's own chaos test, `ci/interrupts`, under nextest: netns runs interrupted at
//! seeded moments with SIGINT, SIGTERM and SIGKILL (+ `harness clean`, in a state root of
//! their own), each followed by a comparison of the host with its state before. Slow (a
//! minute or so), so ignored by default: `cargo nextest run -p harness --run-ignored only
//! -E 'test(interrupted_runs)'`; `ci/interrupts --runs 50` is the full version.

mod common;

use std::path::PathBuf;
use std::process::Command;

#[test]
#[ignore = "slow: a dozen harness runs interrupted on purpose (ci/interrupts)"]
fn interrupted_runs_leave_nothing_behind() {
    if common::skip_unless_root("interrupting harness runs (namespaces, cgroups, pins)") {
        return;
    }
    let _l = common::lock();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tempfile::tempdir().expect("a scratch directory");
    let run = Command::new(repo.join("ci/interrupts"))
        .args([
            "--runs",
            "12",
            "--seed",
            "19",
            "--providers",
            "netns",
            "--no-build",
        ])
        .arg("--harness")
        .arg(env!("CARGO_BIN_EXE_harness"))
        .arg("--out")
        .arg(out.path())
        .current_dir(&repo)
        .output()
        .expect("run ci/interrupts");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "ci/interrupts found leftovers or bad exits:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("interrupts per signal:"), "{stdout}");
    assert!(stdout.contains("\nleftovers: 0\n"), "{stdout}");
}
