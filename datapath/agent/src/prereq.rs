//! Checks that the machine can run the datapath, each failing with the fix to apply.

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

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
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Kernels before 5.11 charge BPF maps and programs to RLIMIT_MEMLOCK (later ones to the
/// memory cgroup); its default of 8 MiB makes BPF_MAP_CREATE fail with EPERM on 5.10.
/// Lifted for this process, as every BPF loader does.
pub fn lift_memlock_limit() -> Result<(), String> {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct it is given and nothing else.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        return Err(format!(
            "cannot lift RLIMIT_MEMLOCK ({}): on kernels before 5.11 BPF maps may fail to be created with EPERM",
            io::Error::last_os_error()
        ));
    }
    Ok(())
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

/// The running kernel's release (`uname -r`), for reports only: what the kernel can do is
/// probed (features.rs), never inferred from this.
pub fn kernel_release() -> Result<String, PrereqError> {
    let path = Path::new("/proc/sys/kernel/osrelease");
    Ok(std::fs::read_to_string(path)
        .map_err(|source| PrereqError::Read {
            path: path.to_path_buf(),
            source,
        })?
        .trim()
        .to_string())
}
