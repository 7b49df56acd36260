//! Helpers shared by the harness's end-to-end tests.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;

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
