//! Boot-to-ready benchmark (not a test): boots clusters of 1 and 3 VMs several times and
//! prints the median time from QEMU's start to the console marker and to SSH, per VM, and
//! the wall time of the whole boot.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{QemuCluster, QemuConfig, Result};

/// One cluster size's results.
#[derive(Debug, Clone)]
pub struct BootStats {
    pub vms: usize,
    pub rounds: usize,
    pub accel: String,
    pub median_marker: Duration,
    pub median_ssh_ready: Duration,
    pub median_wall: Duration,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Boots `vms` VMs in parallel `rounds` times (after one unmeasured boot that builds or
/// finds the image and settles the KVM probe).
pub fn boot_to_ready(vms: usize, rounds: usize, artifacts: &Path) -> Result<BootStats> {
    let names: Vec<String> = (0..vms).map(|i| format!("bench{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let config = QemuConfig::new(&refs, artifacts);
    drop(QemuCluster::boot(&QemuConfig::new(&refs[..1], artifacts))?);
    let (mut marker, mut ready, mut wall) = (Vec::new(), Vec::new(), Vec::new());
    let mut accel = String::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let mut cluster = QemuCluster::boot(&config)?;
        wall.push(started.elapsed());
        accel = cluster.accel.accel.name().to_owned();
        for n in cluster.nodes() {
            marker.push(n.boot_time);
            ready.push(n.ready_time);
        }
        cluster.teardown()?;
    }
    Ok(BootStats {
        vms,
        rounds,
        accel,
        median_marker: median(marker),
        median_ssh_ready: median(ready),
        median_wall: median(wall),
    })
}

impl std::fmt::Display for BootStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} VM(s) in parallel, {} rounds, {}: per VM to console marker {:.1}s, to SSH {:.1}s (medians); whole cluster ready {:.1}s (median wall, includes image lookup and keys)",
            self.vms,
            self.rounds,
            self.accel,
            self.median_marker.as_secs_f64(),
            self.median_ssh_ready.as_secs_f64(),
            self.median_wall.as_secs_f64()
        )
    }
}
