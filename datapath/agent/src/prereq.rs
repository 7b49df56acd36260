//! Checks that the machine can run the datapath, each failing with the fix to apply.

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use crate::hooks::Hook;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Kernel features beyond the hooks themselves, with the first release that has them.
const FEATURES: [(&str, (u32, u32)); 2] = [
    ("bpf_link attachment of cgroup programs", (5, 7)),
    (
        "bpf_set_retval (fast ECONNREFUSED for services without backends)",
        (5, 18),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum PrereqError {
    #[error("datapathd must run as root (it loads eBPF programs and attaches them to cgroups); effective uid is {euid}")]
    NotRoot { euid: u32 },
    #[error("{path} is not on a bpf filesystem (found {found}); mount one with `mount -t bpf bpf /sys/fs/bpf` or pass --bpffs DIR under a bpffs mount")]
    NoBpffs { path: PathBuf, found: String },
    #[error("no cgroup v2 filesystem is mounted (see /proc/mounts); mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`")]
    NoCgroup2,
    #[error("cgroup {path} does not exist (cgroup v2 is mounted at {mounts}); create it with mkdir under that mount")]
    CgroupMissing { path: PathBuf, mounts: String },
    #[error("{path} is not a cgroup v2 directory (cgroup v2 is mounted at {mounts})")]
    NotCgroup2 { path: PathBuf, mounts: String },
    #[error("kernel {release} is too old for {what}: it needs Linux {}.{} or newer", need.0, need.1)]
    KernelTooOld {
        release: String,
        what: String,
        need: (u32, u32),
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub fn require_root() -> Result<(), PrereqError> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(PrereqError::NotRoot { euid });
    }
    Ok(())
}

fn fs_magic(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: statfs writes into the zeroed struct we pass; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

fn magic_name(magic: i64) -> String {
    match magic {
        BPF_FS_MAGIC => "bpf".into(),
        CGROUP2_SUPER_MAGIC => "cgroup2".into(),
        0x0102_1994 => "tmpfs".into(),
        0x6265_6572 => "sysfs".into(),
        0xef53 => "ext4".into(),
        m => format!("filesystem magic {m:#x}"),
    }
}

/// `dir` (which may not exist yet) must live on bpffs: its nearest existing ancestor is.
pub fn check_bpffs(dir: &Path) -> Result<(), PrereqError> {
    let mut probe = dir;
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p,
            None => break,
        }
    }
    let magic = fs_magic(probe).map_err(|source| PrereqError::Read {
        path: probe.to_path_buf(),
        source,
    })?;
    if magic != BPF_FS_MAGIC {
        return Err(PrereqError::NoBpffs {
            path: dir.to_path_buf(),
            found: magic_name(magic),
        });
    }
    Ok(())
}

/// Mount points of cgroup v2, from /proc/mounts.
pub fn cgroup2_mounts() -> Result<Vec<PathBuf>, PrereqError> {
    let path = Path::new("/proc/mounts");
    let text = std::fs::read_to_string(path).map_err(|source| PrereqError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, mnt, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount(mnt)))
        })
        .collect())
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub fn check_cgroup(path: &Path) -> Result<(), PrereqError> {
    let mounts = cgroup2_mounts()?;
    if mounts.is_empty() {
        return Err(PrereqError::NoCgroup2);
    }
    let mounts_text = mounts
        .iter()
        .map(|m| m.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if !path.is_dir() {
        return Err(PrereqError::CgroupMissing {
            path: path.to_path_buf(),
            mounts: mounts_text,
        });
    }
    let magic = fs_magic(path).map_err(|source| PrereqError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if magic != CGROUP2_SUPER_MAGIC {
        return Err(PrereqError::NotCgroup2 {
            path: path.to_path_buf(),
            mounts: mounts_text,
        });
    }
    Ok(())
}

/// The running kernel's release string and (major, minor).
pub fn kernel_version() -> Result<(String, (u32, u32)), PrereqError> {
    let path = Path::new("/proc/sys/kernel/osrelease");
    let release = std::fs::read_to_string(path)
        .map_err(|source| PrereqError::Read {
            path: path.to_path_buf(),
            source,
        })?
        .trim()
        .to_string();
    Ok((release.clone(), parse_release(&release)))
}

fn parse_release(release: &str) -> (u32, u32) {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// Every hook and feature the datapath uses must exist in the running kernel.
pub fn check_kernel() -> Result<(), PrereqError> {
    let (release, have) = kernel_version()?;
    check_kernel_version(&release, have)
}

fn check_kernel_version(release: &str, have: (u32, u32)) -> Result<(), PrereqError> {
    let hooks = Hook::ALL
        .iter()
        .map(|h| (format!("hook cgroup/{}", h.name()), h.min_kernel()));
    let features = FEATURES.iter().map(|(what, v)| (what.to_string(), *v));
    for (what, need) in hooks.chain(features) {
        if have < need {
            return Err(PrereqError::KernelTooOld {
                release: release.to_string(),
                what,
                need,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_releases() {
        assert_eq!(parse_release("6.18.44-fc-v782"), (6, 18));
        assert_eq!(parse_release("5.4.0-150-generic"), (5, 4));
        assert_eq!(parse_release("garbage"), (0, 0));
    }

    #[test]
    fn old_kernels_name_the_missing_hook() {
        let err = check_kernel_version("5.4.0", (5, 4)).expect_err("5.4 is too old");
        assert_eq!(
            err.to_string(),
            "kernel 5.4.0 is too old for hook cgroup/getpeername4: it needs Linux 5.8 or newer"
        );
        let err = check_kernel_version("5.15.0", (5, 15)).expect_err("5.15 lacks set_retval");
        assert!(err.to_string().contains("bpf_set_retval"));
        assert!(check_kernel_version("6.18.44", (6, 18)).is_ok());
    }
}
