//! What the datapath's tests (datapath/agent) and the harness's tests share, written once:
//! the skip policy ([`skip`]) and the lock that serializes tests whose checks read the
//! whole kernel ([`acceptance_lock`]). A dev-dependency only; nothing here ships.

pub mod skip;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Held while a test that starts agents or judges the whole kernel runs. Every such test,
/// in every test binary of both crates, takes the same lock file: global bpftool
/// comparisons (every `dp_*` map, every link) must not see another test's agent half-way
/// through its start. Released when dropped (closing the file releases the flock).
#[must_use = "the lock is released as soon as it is dropped"]
pub struct AcceptanceLock {
    _file: File,
}

/// Where the lock lives: one file for all test binaries of the workspace.
pub fn lock_path() -> PathBuf {
    std::env::temp_dir().join("datapath-acceptance.lock")
}

/// Waits for and takes the acceptance lock.
pub fn acceptance_lock() -> AcceptanceLock {
    lock_file(&lock_path())
}

/// Waits for and takes an exclusive flock on `path`, creating the file.
fn lock_file(path: &Path) -> AcceptanceLock {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open the test lock {}: {e}", path.display()));
    // SAFETY: flock on a descriptor we own; released when the file is closed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        rc,
        0,
        "flock {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    AcceptanceLock { _file: file }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lock excludes: while held, a non-blocking flock on the same file fails; after
    /// the drop it succeeds. On a file of its own, not the shared one other tests may hold.
    #[test]
    fn the_lock_is_exclusive_until_dropped() {
        let path =
            std::env::temp_dir().join(format!("dp-test-support-{}.lock", std::process::id()));
        let try_lock = || {
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            // SAFETY: flock on a descriptor we own.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
        };
        let held = lock_file(&path);
        assert!(!try_lock(), "a second holder got the lock");
        drop(held);
        assert!(try_lock(), "the lock stayed held after the drop");
        std::fs::remove_file(&path).unwrap();
    }
}
