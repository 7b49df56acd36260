//! Helpers shared by the harness's end-to-end tests.

pub mod skip;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Held while a test runs. Shared with datapath/agent's acceptance tests (same file):
/// global bpftool comparisons must not see another test's agent half-way.
pub struct Lock(#[allow(dead_code)] File);

pub fn lock() -> Lock {
    let p = std::env::temp_dir().join("datapath-acceptance.lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .expect("lock file");
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    Lock(f)
}

/// Runs `harness suite SUITE --provider netns --seed 5 ARGS` with its JUnit and reports in
/// `dir`; returns the exit status, stderr and the JUnit XML.
#[allow(dead_code)] // not every test file runs netns suites
pub fn netns_suite(suite: &str, args: &[&str], dir: &Path) -> (i32, String, String) {
    let junit = dir.join("junit.xml");
    let out = Command::new(PathBuf::from(env!("CARGO_BIN_EXE_harness")))
        .args(["suite", suite, "--provider", "netns", "--seed", "5"])
        .args(args)
        .arg("--junit")
        .arg(&junit)
        .arg("--reports-dir")
        .arg(dir.join("r"))
        .env("CI", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run harness");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into(),
        std::fs::read_to_string(&junit).unwrap_or_default(),
    )
}

/// True (and says why, or fails under CI: see [`skip`]) when not root.
#[allow(dead_code)]
pub fn skip_unless_root(needs: &str) -> bool {
    match skip::not_root(needs) {
        Some(why) => {
            skip::skip(&why);
            true
        }
        None => false,
    }
}
