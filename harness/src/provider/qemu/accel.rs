//! Which accelerator QEMU uses: KVM when a short probe boot proves it works, TCG
//! otherwise. /dev/kvm can exist and still hang a guest (PVM host kernels), so the probe
//! boots the image's initramfs with `dp.probe` and waits for its console marker.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::image::NodeImage;

/// How long a KVM guest may take to print the probe marker. A working KVM needs well
/// under a second; a hanging one never prints it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
const PROBE_MARKER: &str = "DP-PROBE-OK";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// QEMU's `-accel` value.
    pub fn qemu_arg(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            // tb-size caps the translation cache (without it one VM grew to 1.3 GB).
            Accel::Tcg => "tcg,tb-size=256",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl AccelChoice {
    /// `$DP_HARNESS_ACCEL` (kvm, tcg or auto), else auto.
    pub fn from_env() -> Self {
        match std::env::var("DP_HARNESS_ACCEL").as_deref() {
            Ok("kvm") => AccelChoice::Kvm,
            Ok("tcg") => AccelChoice::Tcg,
            _ => AccelChoice::Auto,
        }
    }
}

/// The accelerator chosen and why, for the report.
#[derive(Debug, Clone)]
pub struct AccelDecision {
    pub accel: Accel,
    pub reason: String,
}

/// Decides the accelerator. The probe's result is cached per host boot and QEMU binary
/// (a hanging probe costs its whole timeout), under `cache_dir`.
pub fn decide(
    choice: AccelChoice,
    qemu: &str,
    image: &NodeImage,
    work_dir: &Path,
    cache_dir: &Path,
) -> AccelDecision {
    match choice {
        AccelChoice::Kvm => {
            return AccelDecision {
                accel: Accel::Kvm,
                reason: "asked for kvm".into(),
            }
        }
        AccelChoice::Tcg => {
            return AccelDecision {
                accel: Accel::Tcg,
                reason: "asked for tcg".into(),
            }
        }
        AccelChoice::Auto => {}
    }
    if !Path::new("/dev/kvm").exists() {
        return AccelDecision {
            accel: Accel::Tcg,
            reason: "no /dev/kvm".into(),
        };
    }
    let key = probe_key(qemu);
    let cache = cache_dir.join("kvm-probe");
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Some(rest) = text.strip_prefix(&format!("{key} ")) {
            let works = rest.trim() == "works";
            return AccelDecision {
                accel: if works { Accel::Kvm } else { Accel::Tcg },
                reason: format!(
                    "KVM probe (cached for this host boot): {}",
                    if works { "works" } else { "hangs or fails" }
                ),
            };
        }
    }
    let (works, detail) = probe_kvm(qemu, image, work_dir);
    let _ = std::fs::create_dir_all(cache_dir);
    let _ = std::fs::write(
        &cache,
        format!("{key} {}\n", if works { "works" } else { "fails" }),
    );
    AccelDecision {
        accel: if works { Accel::Kvm } else { Accel::Tcg },
        reason: format!("KVM probe: {detail}"),
    }
}

/// Host boot id and QEMU binary identity: a new boot or a new QEMU probes again.
fn probe_key(qemu: &str) -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let meta = which(qemu)
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| format!("{}-{:?}", m.len(), m.modified().ok()))
        .unwrap_or_default();
    format!("{}|{}", boot.trim(), meta.replace(' ', "_"))
}

/// Finds an executable on PATH.
pub fn which(bin: &str) -> Option<PathBuf> {
    if bin.contains('/') {
        return Path::new(bin).is_file().then(|| PathBuf::from(bin));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(bin))
            .find(|p| p.is_file())
    })
}

/// Boots the image's initramfs under KVM with `dp.probe`; true when the marker appears
/// in time. The probe VM is killed by its PID.
fn probe_kvm(qemu: &str, image: &NodeImage, work_dir: &Path) -> (bool, String) {
    let console = work_dir.join("kvm-probe.console");
    let _ = std::fs::remove_file(&console);
    let started = Instant::now();
    let child = Command::new(qemu)
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-accel", "kvm", "-m", "128", "-smp", "1", "-no-reboot"])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initramfs)
        .args(["-append", "console=ttyS0 quiet mitigations=off dp.probe"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (false, format!("could not start {qemu}: {e}")),
    };
    loop {
        let seen = std::fs::read_to_string(&console)
            .map(|t| t.contains(PROBE_MARKER))
            .unwrap_or(false);
        if seen {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&console);
            return (
                true,
                format!("guest reached its init in {:.1?}", started.elapsed()),
            );
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            let _ = std::fs::remove_file(&console);
            return (
                false,
                format!(
                    "QEMU exited ({status}) without the marker: {}",
                    err.lines().last().unwrap_or("").trim()
                ),
            );
        }
        if started.elapsed() > PROBE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&console);
            return (
                false,
                format!("no marker within {PROBE_TIMEOUT:?} (KVM present but the guest hangs)"),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
