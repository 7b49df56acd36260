//! The run's private cluster network: a network namespace made for the run, holding a
//! bridge and one tap per VM. Each tap is opened inside that namespace (setns on a thread
//! of its own) and its fd handed to QEMU, which runs in the root namespace so that its
//! SSH forward stays on the host's 127.0.0.1 while cluster traffic stays in the namespace.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;

use super::error::{QemuError, Result};

/// Runs a command, failing with its stderr when it exits non-zero.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let command = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|source| QemuError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(QemuError::CommandFailed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The namespace and bridge of one run. Deleting the namespace removes the bridge and
/// every tap in it.
#[derive(Debug)]
pub struct ClusterNet {
    pub netns: String,
    pub bridge: String,
    deleted: bool,
}

impl ClusterNet {
    /// Creates namespace `netns` with bridge `bridge` up in it.
    pub fn create(netns: &str, bridge: &str) -> Result<Self> {
        run(Command::new("ip").args(["netns", "add", netns]))?;
        let net = Self {
            netns: netns.to_owned(),
            bridge: bridge.to_owned(),
            deleted: false,
        };
        run(Command::new("ip").args([
            "-n",
            netns,
            "link",
            "add",
            bridge,
            "type",
            "bridge",
            "stp_state",
            "0",
        ]))?;
        run(Command::new("ip").args(["-n", netns, "link", "set", bridge, "up"]))?;
        run(Command::new("ip").args(["-n", netns, "link", "set", "lo", "up"]))?;
        Ok(net)
    }

    /// Opens tap `name` inside the namespace, enslaves it to the bridge and brings it up.
    /// The tap lives as long as an fd to it is open (QEMU's, once handed over).
    pub fn open_tap(&self, name: &str) -> Result<OwnedFd> {
        let fd = open_tap_in(&self.netns, name)?;
        run(Command::new("ip").args([
            "-n",
            &self.netns,
            "link",
            "set",
            name,
            "master",
            &self.bridge,
            "up",
        ]))?;
        Ok(fd)
    }

    /// Runs `argv` inside the namespace (tc netem on a tap, for link faults).
    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .args(argv))
    }

    /// Deletes the namespace, its bridge and its taps.
    pub fn delete(&mut self) -> Result<()> {
        if self.deleted {
            return Ok(());
        }
        self.deleted = true;
        delete_netns(&self.netns)
    }
}

impl Drop for ClusterNet {
    fn drop(&mut self) {
        let _ = self.delete();
    }
}

/// Deletes a namespace by name; one that is already gone is not an error.
pub fn delete_netns(netns: &str) -> Result<()> {
    if !std::path::Path::new("/run/netns").join(netns).exists() {
        return Ok(());
    }
    run(Command::new("ip").args(["netns", "delete", netns])).map(|_| ())
}

/// Opens /dev/net/tun as tap `name` (IFF_TAP | IFF_NO_PI) inside namespace `netns`, on a
/// thread of its own so that the caller's namespace never changes.
fn open_tap_in(netns: &str, name: &str) -> Result<OwnedFd> {
    let ns_path = std::path::Path::new("/run/netns").join(netns);
    let name_owned = name.to_owned();
    let netns_owned = netns.to_owned();
    let worker = std::thread::spawn(move || -> Result<OwnedFd> {
        let err = |call: &'static str, source: std::io::Error| QemuError::Netns {
            netns: netns_owned.clone(),
            call,
            source,
        };
        let ns = File::open(&ns_path).map_err(|e| err("open /run/netns", e))?;
        // SAFETY: setns on this thread only; the thread ends right after.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(err("setns", std::io::Error::last_os_error()));
        }
        let tun = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| err("open /dev/net/tun", e))?;
        // SAFETY: ifreq is plain old data; zero is a valid value for every field.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        let bytes = name_owned.as_bytes();
        if bytes.len() >= ifr.ifr_name.len() {
            return Err(err(
                "TUNSETIFF",
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "tap name too long"),
            ));
        }
        for (dst, src) in ifr.ifr_name.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads an ifreq we own, on an fd we own.
        if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &ifr) } != 0 {
            return Err(err("TUNSETIFF", std::io::Error::last_os_error()));
        }
        Ok(OwnedFd::from(tun))
    });
    worker.join().unwrap_or_else(|_| {
        Err(QemuError::Netns {
            netns: netns.to_owned(),
            call: "the tap thread",
            source: std::io::Error::other("panicked"),
        })
    })
}
