//! One QEMU process: its command line, its start (with the SSH port chosen here and a
//! retry when the port turns out to be taken), and what its console and stderr say.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use super::accel::Accel;
use super::error::{QemuError, Result};
use super::image::NodeImage;

/// The fd number the cluster tap has in QEMU (`-netdev tap,fd=3`).
const TAP_FD: i32 = 3;
/// What QEMU prints when the SSH forward's port is taken.
pub const PORT_TAKEN: &str = "Could not set up host forwarding rule";

/// Everything needed to (re)start one VM.
#[derive(Debug)]
pub struct VmSpec {
    pub name: String,
    /// `dpq-<run>-<node>`: the run's marker in QEMU's command line, so that a cleanup of
    /// leftovers can find the processes of runs that died.
    pub guest_name: String,
    pub memory_mib: u32,
    pub cpus: u32,
    pub accel: Accel,
    pub mgmt_mac: String,
    pub cluster_mac: String,
    pub initrd: PathBuf,
    pub console: PathBuf,
    pub qemu_log: PathBuf,
    pub qmp: PathBuf,
    pub append: String,
    pub tap: OwnedFd,
    /// A host directory shared read-only with the guest (mount tag `dpbin`, mounted at
    /// [`super::GUEST_BIN_SHARE`]): the harness's binaries reach the guest through it
    /// wherever the checkout is, without passing through guest memory.
    pub bin_share: Option<PathBuf>,
}

/// `path` as a value inside a QEMU option list, where a comma is written twice.
fn qemu_opt_value(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// A free TCP port on 127.0.0.1 (free now; QEMU may still lose a race for it).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|source| QemuError::Io {
        what: "binding a probe socket on",
        path: PathBuf::from("127.0.0.1:0"),
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| QemuError::Io {
            what: "reading the address of",
            path: PathBuf::from("127.0.0.1:0"),
            source,
        })
}

/// Starts QEMU for `spec` with the SSH forward on `port`, recorded in the run's `state`
/// before it runs (crate::gate). The console file is truncated.
pub fn spawn(
    qemu: &str,
    image: &NodeImage,
    spec: &VmSpec,
    port: u16,
    state: &crate::state::StateFile,
) -> Result<Child> {
    let log = std::fs::File::create(&spec.qemu_log).map_err(|source| QemuError::Io {
        what: "creating",
        path: spec.qemu_log.clone(),
        source,
    })?;
    let _ = std::fs::remove_file(&spec.qmp);
    // A console left by an earlier run must not show its ready marker to this one.
    let _ = std::fs::remove_file(&spec.console);
    let mut cmd = crate::gate::command(qemu);
    cmd.args(["-name", &format!("guest={}", spec.guest_name)])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-accel", spec.accel.qemu_arg()])
        .args(["-m", &spec.memory_mib.to_string()])
        .args(["-smp", &spec.cpus.to_string()])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&spec.initrd)
        .args(["-append", &spec.append])
        .arg("-serial")
        .arg(format!("file:{}", spec.console.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", spec.qmp.display()))
        .args(["-device", "virtio-rng-pci"])
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .args(spec.bin_share.iter().flat_map(|dir| {
            [
                "-virtfs".to_owned(),
                format!(
                    "local,path={},mount_tag=dpbin,security_model=none,readonly=on",
                    qemu_opt_value(dir)
                ),
            ]
        }))
        .args([
            "-netdev",
            &format!("user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22"),
        ])
        .args([
            "-device",
            &format!("virtio-net-pci,netdev=mgmt,mac={},romfile=", spec.mgmt_mac),
        ])
        .args(["-netdev", &format!("tap,id=cluster,fd={TAP_FD}")])
        .args([
            "-device",
            &format!(
                "virtio-net-pci,netdev=cluster,mac={},romfile=",
                spec.cluster_mac
            ),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    let tap = spec.tap.as_raw_fd();
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec. The gate's
    // shell keeps fd 3 open across its exec of QEMU.
    unsafe {
        cmd.pre_exec(move || {
            if tap == TAP_FD {
                if libc::fcntl(TAP_FD, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(tap, TAP_FD) != TAP_FD {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let what = format!("qemu {}", spec.guest_name);
    crate::gate::spawn(&mut cmd, state, &what, crate::gate::Stdin::Closed).map_err(|source| {
        QemuError::Spawn {
            command: format!("{qemu} (node {})", spec.name),
            source,
        }
    })
}

/// Reads a file that may not exist yet as text.
pub fn read_text(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
