//! Providers bring a cluster up and take it down: one trait, one file per implementation.
//!
//! - `netns` (netns.rs): every node is a network namespace with its own cgroup subtree and
//!   bpffs directory on the host kernel. Fast; shares one kernel, so it states which
//!   invariants it cannot judge for real ([`Provider::limitations`]).
//! - `qemu` (qemu/): disposable VMs, one kernel per node.
//!
//! Contract for implementations:
//! - Everything `up` creates carries the run's marker (see [`RunId`]) and is recorded in a
//!   state file *before* it is created, so `down` (and `harness clean` after a crash)
//!   removes exactly what this run made, also when `up` failed or was interrupted half-way.
//! - `down` is idempotent: a second call, or a call after a failed `up`, is fine.
//! - `up` polls [`UpRequest::cancel`] between steps and returns
//!   [`ProviderError::Interrupted`] when it is set.
//! - Processes are killed by pid, never by name.

pub mod netns;
pub mod qemu;

use std::path::{Path, PathBuf};

use crate::cluster::{Binaries, Cluster, ClusterNode, Pod, Topology};
use crate::signal::Cancel;

/// The provider used when `--provider` is not given. The single place to change it.
pub const DEFAULT_PROVIDER: &str = "qemu";

/// Every provider name `--provider` accepts.
pub const PROVIDERS: &[&str] = &["netns", "qemu"];

/// The marker of one run: a short lowercase id that goes into the names of everything the
/// run creates (interface names are at most 15 bytes, so it stays short) and into the
/// state file that lists them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RunId(pub String);

impl RunId {
    /// A fresh id: 6 hex digits from the clock and the pid.
    pub fn fresh() -> RunId {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mix = (nanos as u64) ^ (u64::from(std::process::id()) << 20);
        let mix = mix ^ (mix >> 29);
        RunId(format!("{:06x}", mix & 0xff_ffff))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything `up` needs.
pub struct UpRequest<'a> {
    pub run_id: &'a RunId,
    pub topology: &'a Topology,
    /// Host paths of the binaries to make available on the nodes.
    pub binaries: &'a Binaries,
    /// The run's directory on the host (reports/<run>/); providers may keep logs there.
    pub run_dir: &'a Path,
    pub cancel: &'a Cancel,
}

/// What a provider can say about the cluster it made, for reports.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Facts {
    pub provider: String,
    /// `uname -r` of the nodes' kernel; several joined by `+` when the nodes differ.
    pub kernel: String,
    /// Each node's kernel, in topology order.
    #[serde(default)]
    pub nodes: Vec<NodeFacts>,
    /// "none", "kvm", "tcg", ...
    pub accelerator: String,
    /// True when all nodes run on one kernel (netns): per-kernel objects are shared.
    pub shared_kernel: bool,
}

/// One node's kernel, as the provider booted it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeFacts {
    pub name: String,
    /// `uname -r`.
    pub kernel_release: String,
    /// The exact package it came from, when it came from one.
    pub kernel_package: Option<crate::kernel::KernelSpec>,
}

impl Facts {
    /// Sets `nodes` and the `kernel` summary from them.
    pub fn set_nodes(&mut self, nodes: Vec<NodeFacts>) {
        let mut releases: Vec<&str> = nodes.iter().map(|n| n.kernel_release.as_str()).collect();
        releases.sort_unstable();
        releases.dedup();
        self.kernel = releases.join("+");
        self.nodes = nodes;
    }

    /// node -> the exact package its kernel came from (nodes without one left out).
    pub fn exact_kernels(&self) -> std::collections::BTreeMap<String, crate::kernel::KernelSpec> {
        self.nodes
            .iter()
            .filter_map(|n| Some((n.name.clone(), n.kernel_package.clone()?)))
            .collect()
    }
}

/// An invariant this provider cannot judge for real, and why. The run reports such an
/// invariant's verdict as it is but annotates it with the reason.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Limitation {
    pub invariant: crate::suite::InvariantName,
    pub reason: String,
}

/// What `clean_leftovers` found and removed, one line per run found and per object.
#[derive(Debug, Clone, Default)]
pub struct Cleaned {
    /// Each run's state found: whose it is, whether it is live, what it lists.
    pub found: Vec<String>,
    pub removed: Vec<String>,
    pub problems: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("provider {provider}: {tool} not found: {hint}")]
    MissingTool {
        provider: &'static str,
        tool: String,
        hint: String,
    },
    #[error("provider {provider}: {what}")]
    Prerequisite {
        provider: &'static str,
        what: String,
    },
    #[error("provider {provider}: {what}")]
    Node {
        provider: &'static str,
        what: String,
        #[source]
        source: crate::node::NodeError,
    },
    #[error("provider {provider}: {what} {path}")]
    Io {
        provider: &'static str,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("provider {provider}: {what}")]
    Other {
        provider: &'static str,
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("provider {provider}: interrupted")]
    Interrupted { provider: &'static str },
    /// A kernel the run asks for cannot be had: bad usage, said before anything boots.
    #[error("provider {provider}: {message}")]
    KernelUnavailable {
        provider: &'static str,
        spec: String,
        message: String,
    },
}

/// A way to get a cluster. `Send` so a run can hand it to a cleanup path.
pub trait Provider: Send {
    /// Its `--provider` name.
    fn name(&self) -> &'static str;

    /// The marker every host object of run `id` carries (namespaces, interfaces,
    /// cgroups, state directories, process command lines): what host-clean-after-down
    /// attributes leftovers by.
    fn marker(&self, id: &RunId) -> String {
        format!("dph-{id}")
    }

    /// Gets ready for clusters of `topology` before the first is brought up (qemu: builds
    /// or finds the node image of every kernel asked for), so that an unavailable kernel
    /// is said at once, and each scenario's set-up time is its own.
    fn prepare(&mut self, topology: &Topology) -> Result<(), ProviderError> {
        let _ = topology;
        Ok(())
    }

    /// Brings up nodes and pods (network, cgroups, bpffs directories; not the datapath).
    fn up(&mut self, req: &UpRequest<'_>) -> Result<Cluster, ProviderError>;

    /// Removes everything this provider made for the run. Idempotent.
    fn down(&mut self) -> Result<(), ProviderError>;

    /// Leaves the cluster up for a person to look at (`--keep`) instead of [`down`]:
    /// nothing of it is stopped when the provider is dropped or brings up the next one;
    /// `harness clean` removes it later. Returns how to reach it, one line per node.
    ///
    /// [`down`]: Provider::down
    fn keep(&mut self) -> Vec<String> {
        Vec::new()
    }

    /// Kernel, accelerator, ... (valid after `up`; best effort before).
    fn facts(&self) -> Facts;

    /// Invariants this provider cannot judge for real.
    fn limitations(&self) -> Vec<Limitation>;

    /// Finds what earlier runs of this provider left (by their marker and state files)
    /// and removes it. For `harness clean`; must not touch objects of a live run.
    fn clean_leftovers(&self) -> Result<Cleaned, ProviderError>;

    /// The machine layer under the nodes (reboot, links), for faults that need it.
    /// `None`: this provider cannot do such faults, and they say so instead of passing.
    fn machines(&mut self) -> Option<&mut dyn Machines> {
        None
    }
}

/// Faults below the node's userland: what only a provider whose nodes are machines (VMs)
/// can do. Node names are the suite's.
pub trait Machines {
    /// Reboots `node` (a new kernel: bpffs, processes and pods are gone) and brings it
    /// back to what `up` made: the node's directories, its `pods` (same names, addresses
    /// and cgroups) and the pod routes. Returns the time until it answered again.
    fn reboot(
        &mut self,
        node: &ClusterNode,
        pods: &[Pod],
        timeout: std::time::Duration,
    ) -> Result<std::time::Duration, ProviderError>;
    /// Takes the node's cluster link down (`false`: a partition) or up again.
    fn set_link(&mut self, node: &str, up: bool) -> Result<(), ProviderError>;
    /// Degrades the node's cluster link with tc netem (`["delay", "100ms"]`, `["loss",
    /// "30%"]`) on the node's side of it (its egress).
    fn link_netem(&mut self, node: &str, args: &[&str]) -> Result<(), ProviderError>;
    /// Removes any netem from the node's link and brings it up.
    fn link_heal(&mut self, node: &str) -> Result<(), ProviderError>;
}

/// Builds the provider named `name`.
pub fn by_name(name: &str) -> Option<Box<dyn Provider>> {
    match name {
        "netns" => Some(Box::new(netns::NetnsProvider::new())),
        "qemu" => Some(Box::new(qemu::QemuProvider::new())),
        _ => None,
    }
}
