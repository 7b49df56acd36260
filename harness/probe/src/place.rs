//! Putting the probe where it should run: a cgroup (joined first, by path, while the mount
//! namespace still shows it) and then a network namespace (setns, no remount).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::cli::Placement;

#[derive(Debug)]
pub enum PlaceError {
    Cgroup { path: PathBuf, source: io::Error },
    Netns { path: PathBuf, source: io::Error },
}

impl fmt::Display for PlaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlaceError::Cgroup { path, .. } => {
                write!(
                    f,
                    "cannot join cgroup {} (writing our pid to its cgroup.procs)",
                    path.display()
                )
            }
            PlaceError::Netns { path, .. } => {
                write!(f, "cannot enter network namespace {}", path.display())
            }
        }
    }
}

impl std::error::Error for PlaceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PlaceError::Cgroup { source, .. } | PlaceError::Netns { source, .. } => Some(source),
        }
    }
}

impl PlaceError {
    /// The message and its cause, for stderr.
    pub fn report(&self) -> String {
        match self {
            PlaceError::Cgroup { source, .. } | PlaceError::Netns { source, .. } => {
                format!("dp-probe: {self}: {source}")
            }
        }
    }
}

/// Joins the cgroup, then enters the network namespace. Call before any thread or socket
/// exists: setns changes only the calling thread, and threads spawned later inherit it.
pub fn enter(place: &Placement) -> Result<(), PlaceError> {
    if let Some(cgroup) = &place.cgroup {
        join_cgroup(cgroup)?;
    }
    if let Some(netns) = &place.netns {
        enter_netns(netns)?;
    }
    Ok(())
}

pub fn join_cgroup(dir: &Path) -> Result<(), PlaceError> {
    let err = |source| PlaceError::Cgroup {
        path: dir.to_owned(),
        source,
    };
    let mut procs = OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
        .map_err(err)?;
    // One write(2) with the whole number: the kernel parses each write on its own.
    procs
        .write_all(format!("{}\n", std::process::id()).as_bytes())
        .map_err(err)
}

pub fn enter_netns(path: &Path) -> Result<(), PlaceError> {
    let err = |source| PlaceError::Netns {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(err)?;
    // SAFETY: setns on a file descriptor we own; it changes only this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_paths_are_named() {
        let e = join_cgroup(Path::new("/nonexistent/dp-probe-test")).expect_err("no such cgroup");
        assert!(
            e.report().contains("/nonexistent/dp-probe-test"),
            "{}",
            e.report()
        );
        let e = enter_netns(Path::new("/nonexistent/netns")).expect_err("no such netns");
        assert!(e
            .report()
            .contains("cannot enter network namespace /nonexistent/netns"));
    }

    #[test]
    fn a_regular_file_is_not_a_netns() {
        // /proc/self/status is no namespace file: setns must fail with EINVAL, not succeed.
        let e = enter_netns(Path::new("/proc/self/status")).expect_err("not a namespace");
        let PlaceError::Netns { source, .. } = e else {
            panic!("wrong variant")
        };
        assert_eq!(source.raw_os_error(), Some(libc::EINVAL));
    }
}
