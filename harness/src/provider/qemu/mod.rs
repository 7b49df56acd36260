//! The qemu provider: a disposable cluster of VMs, one kernel per node.
//!
//! Every node is a QEMU VM booting the cached node image (see images/README.md): the
//! uncompressed kernel via PVH, an initramfs that mounts the host's root over virtio-9p
//! read-only under a tmpfs overlay, and dropbear with a host key made for the run. KVM is
//! used when a short probe boot proves it works, TCG otherwise.
//!
//! Per VM: the serial console goes to `<artifacts>/<node>.console` (kept), SSH goes
//! through `-netdev user,restrict=on` with a forward on 127.0.0.1, and a second NIC is a
//! tap on the run's bridge inside a network namespace made for the run (the cluster
//! network, isolated from the host). Readiness is the console marker, then SSH.
//!
//! Every object carries the run's marker `dpq-<id>`: the netns name, the bridge and tap
//! names, QEMU's `-name guest=dpq-<id>-<node>` and the state directory
//! `<state root>/dpq-<id>`. Teardown kills QEMU by PID and removes the namespace and the
//! state directory; [`clean_leftovers`] finds what runs that died left behind.

pub mod accel;
pub mod bench;
pub mod cpio;
pub mod error;
pub mod image;
pub mod machines;
pub mod net;
pub mod node;
pub mod pod;
pub mod provider;
pub mod remote;
pub mod ssh;
pub mod vm;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::kernel::KernelSpec;

pub use accel::{Accel, AccelChoice, AccelDecision};
pub use error::{QemuError, Result};
pub use image::{BootMethod, NodeImage};
pub use provider::QemuProvider;
pub use ssh::{RemoteOutput, SshSession, SshSlot};

use error::tail_file;
use net::ClusterNet;
use ssh::SshTarget;
use vm::VmSpec;

/// Printed by the guest's init when dropbear listens.
const READY_MARKER: &str = "DP-HARNESS-READY";
/// Printed by the guest's init when it cannot go on.
const FAILED_MARKER: &str = "DP-HARNESS-FAILED";
/// Prefix of every object a run makes.
pub const RUN_PREFIX: &str = "dpq-";
/// Attempts at an SSH port before giving up (QEMU fails when the port was taken).
const PORT_ATTEMPTS: u32 = 8;
/// Lines of console attached to an error.
const CONSOLE_TAIL: usize = 40;

/// How to make a cluster.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// Node names, in order; node i gets cluster address `cluster_base + 11 + i` and pod
    /// CIDR `10.244.<i+1>.0/24`.
    pub nodes: Vec<String>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// The image's kernel: a Debian series or a .deb, bzImage or vmlinux; the
    /// builder's default (Debian's 6.1) when `None`.
    pub kernel: Option<KernelSpec>,
    /// The module tree for a `kernel` given as bzImage or vmlinux.
    pub modules: Option<PathBuf>,
    /// Nodes that boot their own kernel instead of `kernel`/`image` (by node name).
    pub node_kernels: BTreeMap<String, KernelSpec>,
    /// A prebuilt image directory; skips the builder.
    pub image: Option<PathBuf>,
    /// The host directory holding the binaries the nodes run (datapathd, dp-probe,
    /// dp-remote), shared read-only with every guest at [`GUEST_BIN_SHARE`].
    pub bin_dir: Option<PathBuf>,
    /// Where consoles and QEMU logs are written and kept.
    pub artifacts_dir: PathBuf,
    /// Time from QEMU's start to the ready marker, per VM.
    pub boot_timeout: Duration,
    /// Time from the marker to an established SSH ControlMaster.
    pub ssh_timeout: Duration,
    pub accel: AccelChoice,
    /// The cluster network's /24 (inside the run's namespace and the VMs only).
    pub cluster_base: Ipv4Addr,
    pub qemu_binary: String,
    /// The run's id (the harness's); a fresh one when `None`. Objects are named
    /// `dpq-<id>`, so keep it short (interface names have 15 bytes).
    pub run_id: Option<String>,
    /// The SSH forward's port for the first node's first attempt (tests use a taken one
    /// to exercise the retry); free ports are picked otherwise.
    pub first_ssh_port: Option<u16>,
}

impl QemuConfig {
    /// Nodes `names`, 256 MiB and one vCPU each, artifacts in `artifacts_dir`.
    pub fn new(names: &[&str], artifacts_dir: &Path) -> Self {
        Self {
            nodes: names.iter().map(|s| (*s).to_owned()).collect(),
            memory_mib: 256,
            cpus: 1,
            kernel: None,
            modules: None,
            node_kernels: BTreeMap::new(),
            image: None,
            bin_dir: None,
            artifacts_dir: artifacts_dir.to_owned(),
            boot_timeout: Duration::from_secs(120),
            ssh_timeout: Duration::from_secs(60),
            accel: AccelChoice::from_env(),
            cluster_base: Ipv4Addr::new(192, 168, 100, 0),
            qemu_binary: "qemu-system-x86_64".to_owned(),
            run_id: None,
            first_ssh_port: None,
        }
    }
}

/// One VM of the cluster.
pub struct VmNode {
    pub name: String,
    pub index: usize,
    /// The node's address on the cluster network (its `eth0`).
    pub cluster_ip: Ipv4Addr,
    /// The pods' subnet of this node: `10.244.<index+1>.0/24`.
    pub pod_cidr: String,
    /// The host port forwarded to the guest's port 22 on 127.0.0.1.
    pub ssh_port: u16,
    /// Serial console, kept as an artifact.
    pub console: PathBuf,
    pub qemu_log: PathBuf,
    pub tap: String,
    /// QEMU start to the console's ready marker.
    pub boot_time: Duration,
    /// QEMU start to an established SSH session.
    pub ready_time: Duration,
    /// What it boots.
    pub image: NodeImage,
    spec: VmSpec,
    child: Option<Child>,
    started: Instant,
    ssh: Arc<SshSlot>,
    ssh_target: Option<SshTarget>,
    host_pubkey: String,
}

impl VmNode {
    /// QEMU's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The node's current SSH session.
    pub fn ssh(&self) -> Result<Arc<SshSession>> {
        self.ssh.get(&self.name)
    }

    /// Where the node's session lives, also after a reboot replaces it.
    pub fn ssh_slot(&self) -> Arc<SshSlot> {
        Arc::clone(&self.ssh)
    }
}

/// A running cluster of VMs. Dropping it tears it down.
pub struct QemuCluster {
    pub run_id: String,
    pub accel: AccelDecision,
    /// The first node's image (each node has its own, [`VmNode::image`]); the
    /// accelerator is probed with it.
    pub image: NodeImage,
    /// Each node's image, in node order, until [`QemuCluster::start`] hands them out.
    images: Vec<NodeImage>,
    pub state_dir: PathBuf,
    /// `state_dir/state.json`: every process and the namespace of the run, listed before
    /// each exists (crate::state), for teardown and `harness clean`.
    pub state: crate::state::StateFile,
    pub artifacts_dir: PathBuf,
    nodes: Vec<VmNode>,
    net: Option<ClusterNet>,
    rt: Arc<tokio::runtime::Runtime>,
    key: PathBuf,
    known_hosts: PathBuf,
    torn_down: bool,
    /// dp-remote on the host ([`QemuCluster::start_helpers`]); started again after a
    /// reboot.
    helper: Option<PathBuf>,
    /// [`QemuConfig::bin_dir`], canonical.
    bin_dir: Option<PathBuf>,
}

/// Where runs keep their state (state file, keys, initrds, SSH control sockets):
/// `qemu/` under the harness's state root (crate::state::root, which
/// `$DP_HARNESS_STATE_DIR` overrides).
pub fn state_root() -> PathBuf {
    crate::state::root().join("qemu")
}

/// Host paths the guest does not see at the same path (it has tmpfs over them);
/// everything else is the host's own file through the 9p root.
pub const GUEST_HIDDEN: &[&str] = &["/root/", "/tmp/", "/run/", "/var/tmp/", "/var/log/"];
/// Where the guest mounts [`QemuConfig::bin_dir`].
pub const GUEST_BIN_SHARE: &str = "/run/dp/bin";

/// Does the guest see `host_path` (an absolute path) at the same path?
pub fn guest_sees(host_path: &Path) -> bool {
    let text = host_path.to_string_lossy();
    !GUEST_HIDDEN.iter().any(|p| text.starts_with(p))
}

/// Each node's image, in node order: its own kernel's, else the cluster's default (the
/// prebuilt `image`, else one built from `kernel`), built only when some node needs it.
fn node_images(config: &QemuConfig) -> Result<Vec<NodeImage>> {
    let mut default: Option<NodeImage> = None;
    let mut images = Vec::new();
    for name in &config.nodes {
        let image = match config.node_kernels.get(name) {
            Some(spec) => NodeImage::for_kernel(spec)?,
            None => match &default {
                Some(i) => i.clone(),
                None => {
                    let i = match &config.image {
                        Some(dir) => NodeImage::open(dir)?,
                        None => {
                            NodeImage::build(config.kernel.as_ref(), config.modules.as_deref())?
                        }
                    };
                    default.insert(i).clone()
                }
            },
        };
        images.push(image);
    }
    Ok(images)
}

/// The user's cache directory for the harness.
fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("dp-harness")
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> QemuError {
    let path = path.to_owned();
    move |source| QemuError::Io { what, path, source }
}

/// A short id, unique enough among the runs on one machine.
fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mix = (nanos as u64) ^ (u64::from(std::process::id()) << 32) ^ (nanos >> 64) as u64;
    format!("{:08x}", (mix ^ (mix >> 29)) as u32)
}

fn require_tool(tool: &str, hint: &'static str) -> Result<()> {
    if accel::which(tool).is_none() {
        return Err(QemuError::ToolMissing {
            tool: tool.to_owned(),
            hint,
        });
    }
    Ok(())
}

impl QemuCluster {
    /// Boots `config.nodes` in parallel and returns once every node printed its ready
    /// marker and answers over SSH. On error, whatever was started is torn down (the
    /// consoles stay in the artifacts directory).
    pub fn boot(config: &QemuConfig) -> Result<Self> {
        Self::boot_cancellable(config, &|| false)
    }

    /// [`QemuCluster::boot`], giving up with [`QemuError::Interrupted`] (and tearing down)
    /// as soon as `cancelled` returns true.
    pub fn boot_cancellable(config: &QemuConfig, cancelled: &dyn Fn() -> bool) -> Result<Self> {
        if accel::which(&config.qemu_binary).is_none() {
            return Err(QemuError::QemuMissing {
                binary: config.qemu_binary.clone(),
            });
        }
        require_tool("ip", "install iproute2")?;
        require_tool("ssh", "install openssh-client")?;
        require_tool("ssh-keygen", "install openssh-client")?;
        require_tool("dropbearkey", "install dropbear-bin (ci/setup does)")?;
        let images = node_images(config)?;
        let Some(image) = images.first().cloned() else {
            return Err(QemuError::NoNodes);
        };
        let bin_dir = config
            .bin_dir
            .as_deref()
            .map(|d| std::fs::canonicalize(d).map_err(io_err("cannot find", d)))
            .transpose()?;

        let run_id = config.run_id.clone().unwrap_or_else(new_run_id);
        let marker = format!("{RUN_PREFIX}{run_id}");
        let state_dir = state_root().join(&marker);
        let state = crate::state::StateFile::create_in(&state_dir, &marker)
            .map_err(io_err("creating the state file in", &state_dir))?;
        std::fs::create_dir_all(&config.artifacts_dir)
            .map_err(io_err("creating", &config.artifacts_dir))?;

        let mut cluster = QemuCluster {
            accel: AccelDecision {
                accel: Accel::Tcg,
                reason: String::new(),
            },
            image,
            images,
            state_dir: state_dir.clone(),
            state,
            artifacts_dir: config.artifacts_dir.clone(),
            nodes: Vec::new(),
            net: None,
            rt: ssh::runtime()?,
            key: state_dir.join("id_ed25519"),
            known_hosts: state_dir.join("known_hosts"),
            torn_down: false,
            helper: None,
            bin_dir,
            run_id,
        };
        cluster.accel = accel::decide(
            config.accel,
            &config.qemu_binary,
            &cluster.image,
            &state_dir,
            &cache_dir(),
        );
        if cancelled() {
            return Err(QemuError::Interrupted);
        }
        cluster.start(config, &marker)?;
        cluster.wait_ready(config, cancelled)?;
        Ok(cluster)
    }

    /// Makes the keys, the network and the per-VM initrds, and starts every QEMU.
    fn start(&mut self, config: &QemuConfig, marker: &str) -> Result<()> {
        let sd = self.state_dir.clone();
        net::run(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", marker, "-f"])
                .arg(&self.key),
        )?;
        let client_pub = std::fs::read(sd.join("id_ed25519.pub"))
            .map_err(io_err("reading", &sd.join("id_ed25519.pub")))?;
        std::fs::write(&self.known_hosts, b"").map_err(io_err("writing", &self.known_hosts))?;

        let id = &self.run_id;
        self.state
            .update(|s| s.netns.push(marker.to_owned()))
            .map_err(io_err("writing", &sd.join("state.json")))?;
        self.net = Some(ClusterNet::create(marker, &format!("dpq{id}br"))?);
        let base = config.cluster_base.octets();
        let hosts: String = config
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{}.{}.{}.{} {n}\\n", base[0], base[1], base[2], 11 + i))
            .collect();
        let mut initramfs: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
        let images = std::mem::take(&mut self.images);
        for (i, (name, image)) in config.nodes.iter().zip(images).enumerate() {
            if !initramfs.contains_key(&image.initramfs) {
                let data =
                    std::fs::read(&image.initramfs).map_err(io_err("reading", &image.initramfs))?;
                initramfs.insert(image.initramfs.clone(), data);
            }
            let image_gz = &initramfs[&image.initramfs];
            let cluster_ip = Ipv4Addr::new(base[0], base[1], base[2], 11 + i as u8);
            let hostkey = sd.join(format!("{name}.hostkey"));
            net::run(
                Command::new("dropbearkey")
                    .args(["-t", "ed25519", "-f"])
                    .arg(&hostkey),
            )?;
            let pubout = net::run(
                Command::new("dropbearkey")
                    .arg("-y")
                    .arg("-f")
                    .arg(&hostkey),
            )?;
            let host_pubkey = pubout
                .lines()
                .find(|l| l.starts_with("ssh-"))
                .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
                .unwrap_or_default();
            let hostkey_bytes = std::fs::read(&hostkey).map_err(io_err("reading", &hostkey))?;

            let mgmt_mac = format!("52:54:00:d0:{:02x}:{:02x}", i / 256, i % 256);
            let cluster_mac = format!("52:54:00:d1:{:02x}:{:02x}", i / 256, i % 256);
            let modules = image
                .modules
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let conf = [
                ("DP_NODE", name.clone()),
                ("DP_RUN", marker.to_owned()),
                ("DP_MGMT_MAC", mgmt_mac.clone()),
                ("DP_CLUSTER_MAC", cluster_mac.clone()),
                ("DP_CLUSTER_IF", "eth0".to_owned()),
                ("DP_CLUSTER_ADDR", format!("{cluster_ip}/24")),
                ("DP_HOSTS", hosts.clone()),
                ("DP_MODULES_DIR", modules),
                (
                    "DP_BIN_SHARE",
                    if self.bin_dir.is_some() { "1" } else { "" }.to_owned(),
                ),
            ]
            .iter()
            .map(|(k, v)| format!("{k}={}\n", ssh::shell_quote(v)))
            .collect::<String>();
            let mut a = cpio::Newc::default();
            a.dir("dp", 0o755)
                .file("dp/config", 0o644, conf.as_bytes())
                .file("dp/authorized_keys", 0o600, &client_pub)
                .file("dp/hostkey", 0o600, &hostkey_bytes);
            // The uncompressed per-VM cpio goes first: after the gzipped one, the
            // kernel rejects it.
            let mut initrd = a.finish();
            initrd.extend_from_slice(image_gz);
            let initrd_path = sd.join(format!("{name}.initrd"));
            std::fs::write(&initrd_path, initrd).map_err(io_err("writing", &initrd_path))?;

            let tap = format!("dpq{id}n{i}");
            let tap_fd = self.net.as_ref().map(|n| n.open_tap(&tap)).transpose()?;
            let Some(tap_fd) = tap_fd else { continue };
            let console = config.artifacts_dir.join(format!("{name}.console"));
            let qemu_log = config.artifacts_dir.join(format!("{name}.qemu.log"));
            let spec = VmSpec {
                name: name.clone(),
                guest_name: format!("{marker}-{name}"),
                memory_mib: config.memory_mib,
                cpus: config.cpus,
                accel: self.accel.accel,
                mgmt_mac,
                cluster_mac,
                initrd: initrd_path,
                console: console.clone(),
                qemu_log: qemu_log.clone(),
                qmp: sd.join(format!("{name}.qmp")),
                append: format!("console=ttyS0 quiet mitigations=off dp.run={marker}"),
                tap: tap_fd,
                bin_share: self.bin_dir.clone(),
            };
            let port = match (i, config.first_ssh_port) {
                (0, Some(p)) => p,
                _ => vm::free_port()?,
            };
            let started = Instant::now();
            let child = vm::spawn(&config.qemu_binary, &image, &spec, port, &self.state)?;
            self.nodes.push(VmNode {
                name: name.clone(),
                index: i,
                cluster_ip,
                pod_cidr: format!("10.244.{}.0/24", i + 1),
                ssh_port: port,
                console,
                qemu_log,
                tap,
                boot_time: Duration::ZERO,
                ready_time: Duration::ZERO,
                image,
                spec,
                child: Some(child),
                started,
                ssh: Arc::default(),
                ssh_target: None,
                host_pubkey,
            });
        }
        Ok(())
    }

    /// Waits for every VM's marker (restarting a QEMU whose SSH port was taken), then
    /// connects SSH to each, in parallel.
    fn wait_ready(&mut self, config: &QemuConfig, cancelled: &dyn Fn() -> bool) -> Result<()> {
        let mut connecting = Vec::new();
        let mut pending: Vec<usize> = (0..self.nodes.len()).collect();
        let mut attempts = vec![1u32; self.nodes.len()];
        while !pending.is_empty() {
            if cancelled() {
                return Err(QemuError::Interrupted);
            }
            let mut still = Vec::new();
            for &i in &pending {
                let node = &mut self.nodes[i];
                let console = vm::read_text(&node.console);
                let ready = format!("{READY_MARKER} node={} run=", node.name);
                if console.contains(&ready) {
                    node.boot_time = node.started.elapsed();
                    let target = SshTarget {
                        node: node.name.clone(),
                        port: node.ssh_port,
                        key: self.key.clone(),
                        known_hosts: self.known_hosts.clone(),
                        control_dir: self.state_dir.clone(),
                    };
                    node.ssh_target = Some(target.clone());
                    self.write_known_hosts()?;
                    let timeout = config.ssh_timeout;
                    connecting.push((
                        i,
                        self.rt.spawn(async move { target.connect(timeout).await }),
                    ));
                    continue;
                }
                if let Some(line) = console.lines().find(|l| l.contains(FAILED_MARKER)) {
                    return Err(QemuError::GuestFailed {
                        node: node.name.clone(),
                        reason: line.trim().to_owned(),
                        console: node.console.clone(),
                        console_tail: error::tail(&console, CONSOLE_TAIL),
                    });
                }
                let exited = match node.child.as_mut().map(Child::try_wait) {
                    Some(Ok(Some(status))) => Some(status.to_string()),
                    Some(Err(e)) => Some(format!("unknown: {e}")),
                    _ => None,
                };
                if let Some(status) = exited {
                    if let Some(c) = &node.child {
                        crate::gate::reaped(&self.state, c.id(), None);
                    }
                    let log = vm::read_text(&node.qemu_log);
                    if log.contains(vm::PORT_TAKEN) {
                        if attempts[i] >= PORT_ATTEMPTS {
                            return Err(QemuError::PortTaken {
                                node: node.name.clone(),
                                port: node.ssh_port,
                                attempts: attempts[i],
                            });
                        }
                        attempts[i] += 1;
                        node.ssh_port = vm::free_port()?;
                        node.started = Instant::now();
                        node.child = Some(vm::spawn(
                            &config.qemu_binary,
                            &node.image,
                            &node.spec,
                            node.ssh_port,
                            &self.state,
                        )?);
                        still.push(i);
                        continue;
                    }
                    node.child = None;
                    return Err(QemuError::QemuExited {
                        node: node.name.clone(),
                        status,
                        stderr_tail: error::tail(&log, 20),
                        console: node.console.clone(),
                        console_tail: error::tail(&console, CONSOLE_TAIL),
                    });
                }
                if node.started.elapsed() > config.boot_timeout {
                    return Err(QemuError::NotReady {
                        node: node.name.clone(),
                        timeout: config.boot_timeout,
                        console: node.console.clone(),
                        console_tail: tail_file(&node.console, CONSOLE_TAIL),
                    });
                }
                still.push(i);
            }
            pending = still;
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for (i, handle) in connecting {
            let name = self.nodes[i].name.clone();
            let port = self.nodes[i].ssh_port;
            let session = self.rt.block_on(handle).unwrap_or_else(|_| {
                Err(QemuError::SshConnectTimeout {
                    node: name.clone(),
                    port,
                    timeout: config.ssh_timeout,
                })
            })?;
            let node = &mut self.nodes[i];
            node.ready_time = node.started.elapsed();
            node.ssh.set(Some(Arc::new(SshSession::new(
                &name,
                session,
                self.rt.clone(),
                Some(self.state.clone()),
            ))));
        }
        Ok(())
    }

    /// Pins every node's host key to its current port.
    fn write_known_hosts(&self) -> Result<()> {
        let text: String = self
            .nodes
            .iter()
            .map(|n| format!("[127.0.0.1]:{} {}\n", n.ssh_port, n.host_pubkey))
            .collect();
        std::fs::write(&self.known_hosts, text).map_err(io_err("writing", &self.known_hosts))
    }

    /// Starts every node's dp-remote helper (harness/remote) from `host_path`, in
    /// parallel; from then on the nodes' commands, files and waits go through it.
    pub fn start_helpers(&mut self, host_path: &Path) -> Result<()> {
        self.helper = Some(host_path.to_owned());
        let this = &*self;
        let indices: Vec<usize> = (0..this.nodes.len()).collect();
        crate::cluster::in_parallel(&indices, |&i| this.start_helper(i))
            .into_iter()
            .collect::<Result<Vec<()>>>()?;
        Ok(())
    }

    fn start_helper(&self, idx: usize) -> Result<()> {
        let Some(host_path) = &self.helper else {
            return Ok(());
        };
        let session = self.nodes[idx].ssh()?;
        session.start_remote(&self.guest_path(host_path)?)
    }

    /// The path at which the guests see the host's binary `host_path`: in the binaries
    /// share when it lies there, else the host's own path through the 9p root.
    pub fn guest_path(&self, host_path: &Path) -> Result<PathBuf> {
        let abs = std::fs::canonicalize(host_path).map_err(io_err("cannot find", host_path))?;
        if let (Some(dir), Some(name)) = (&self.bin_dir, abs.file_name()) {
            if abs.parent() == Some(dir.as_path()) {
                return Ok(Path::new(GUEST_BIN_SHARE).join(name));
            }
        }
        if guest_sees(&abs) {
            return Ok(abs);
        }
        Err(QemuError::HiddenFromGuest {
            path: abs,
            shared: self.bin_dir.clone(),
        })
    }

    pub fn nodes(&self) -> &[VmNode] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Result<&VmNode> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| QemuError::NoSuchNode {
                node: name.to_owned(),
            })
    }

    /// The namespace holding the cluster bridge and taps.
    pub fn netns(&self) -> Option<&str> {
        self.net.as_ref().map(|n| n.netns.as_str())
    }

    /// Runs `argv` inside the cluster network's namespace (e.g. `tc qdisc ... dev <tap>`).
    pub fn netns_exec(&self, argv: &[&str]) -> Result<String> {
        match &self.net {
            Some(n) => n.exec(argv),
            None => Err(QemuError::NoSuchNode {
                node: "cluster network".into(),
            }),
        }
    }

    /// The tap of `node` on the cluster bridge, as named inside the run's namespace.
    pub fn tap_of(&self, node: &str) -> Result<String> {
        Ok(self.node(node)?.tap.clone())
    }

    /// Degrades `node`'s cluster link with netem (`args` as for `tc qdisc ... netem`,
    /// e.g. `["delay", "100ms"]` or `["loss", "30%"]`) on the guest's `eth0` egress. In the
    /// guest, because host kernels may lack sch_netem (this one does); the root qdisc does
    /// not touch the datapath's clsact hooks, and SSH (mgmt0) is not affected.
    pub fn link_netem(&self, node: &str, args: &[&str]) -> Result<()> {
        let quoted: Vec<String> = args.iter().map(|a| ssh::shell_quote(a)).collect();
        let script = format!(
            "modprobe sch_netem 2>/dev/null; tc qdisc replace dev eth0 root netem {}",
            quoted.join(" ")
        );
        self.node(node)?
            .ssh()?
            .check(&script, Duration::from_secs(30))
            .map(|_| ())
    }

    /// Removes the netem of `node`'s cluster link (none there is fine).
    pub fn link_heal(&self, node: &str) -> Result<()> {
        self.node(node)?
            .ssh()?
            .check(
                "tc qdisc del dev eth0 root 2>/dev/null || true",
                Duration::from_secs(30),
            )
            .map(|_| ())
    }

    /// Cuts (`up` false) or restores `node`'s cluster link: its tap goes down in the run's
    /// namespace, a partition of that node from all others.
    pub fn set_link(&self, node: &str, up: bool) -> Result<()> {
        let tap = self.tap_of(node)?;
        let state = if up { "up" } else { "down" };
        self.netns_exec(&["ip", "link", "set", &tap, state])
            .map(|_| ())
    }

    /// Routes every node's pod CIDR through that node's cluster address on every other
    /// node (native routing over the cluster network).
    pub fn install_pod_routes(&self) -> Result<()> {
        let routes: Vec<(String, Ipv4Addr)> = self
            .nodes
            .iter()
            .map(|n| (n.pod_cidr.clone(), n.cluster_ip))
            .collect();
        for node in &self.nodes {
            let script: String = routes
                .iter()
                .filter(|(_, via)| *via != node.cluster_ip)
                .map(|(cidr, via)| format!("ip route replace {cidr} via {via} dev eth0\n"))
                .collect();
            if !script.is_empty() {
                node.ssh()?.check(&script, Duration::from_secs(30))?;
            }
        }
        Ok(())
    }

    /// Creates pod `pod` on node `node` with the `host`-th address of the node's pod
    /// CIDR (10.244.<node+1>.<host>) and cgroup `cgroup` (a path on the node), and
    /// returns that address.
    pub fn add_pod(&self, node: &str, pod: &str, host: u8, cgroup: &Path) -> Result<Ipv4Addr> {
        Ok(self.add_pods(node, &[(pod, host, cgroup)])?[0])
    }

    /// [`QemuCluster::add_pod`] for several pods of one node, in one remote script.
    pub fn add_pods(&self, node: &str, pods: &[(&str, u8, &Path)]) -> Result<Vec<Ipv4Addr>> {
        let n = self.node(node)?;
        let plans: Vec<pod::PodPlan<'_>> = pods
            .iter()
            .map(|&(name, host, cgroup)| pod::PodPlan {
                name,
                ip: Ipv4Addr::new(10, 244, n.index as u8 + 1, host),
                cgroup,
            })
            .collect();
        if !plans.is_empty() {
            n.ssh()?
                .check(&pod::create_script(&plans), Duration::from_secs(60))?;
        }
        Ok(plans.iter().map(|p| p.ip).collect())
    }

    /// Reboots `name` (the guest's kernel restarts; QEMU, its tap and port stay) and
    /// waits until it is ready again and answers over SSH.
    pub fn reboot(&mut self, name: &str, timeout: Duration) -> Result<Duration> {
        let idx = self
            .nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| QemuError::NoSuchNode {
                node: name.to_owned(),
            })?;
        let ready = format!("{READY_MARKER} node={name} run=");
        let before = vm::read_text(&self.nodes[idx].console)
            .matches(&ready)
            .count();
        let started = Instant::now();
        if let Ok(s) = self.nodes[idx].ssh() {
            // The connection dies with the kernel: no answer is expected.
            let _ = s.run(
                "(sleep 0.2; /run/dp/busybox reboot -f) >/dev/null 2>&1 &",
                None,
                Duration::from_secs(10),
            );
        }
        if let Some(s) = self.nodes[idx].ssh.set(None) {
            s.close();
        }
        loop {
            let console = vm::read_text(&self.nodes[idx].console);
            if console.matches(&ready).count() > before {
                break;
            }
            if started.elapsed() > timeout {
                return Err(QemuError::NotReady {
                    node: name.to_owned(),
                    timeout,
                    console: self.nodes[idx].console.clone(),
                    console_tail: error::tail(&console, CONSOLE_TAIL),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let target = self.nodes[idx]
            .ssh_target
            .clone()
            .ok_or_else(|| QemuError::NoSuchNode {
                node: name.to_owned(),
            })?;
        let left = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(10));
        let session = self.rt.block_on(target.connect(left))?;
        self.nodes[idx].ssh.set(Some(Arc::new(SshSession::new(
            name,
            session,
            self.rt.clone(),
            Some(self.state.clone()),
        ))));
        self.start_helper(idx)?;
        Ok(started.elapsed())
    }

    /// Kills every QEMU by its PID, removes the namespace (bridge and taps with it) and
    /// the state directory. Consoles stay in the artifacts directory. Idempotent.
    pub fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        for node in &mut self.nodes {
            if let Some(s) = node.ssh.set(None) {
                s.close();
            }
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Whatever else the state lists and still runs (a ControlMaster that did not
        // exit, the external host's server): by pid and start time.
        let (_, problems) = crate::state::stop_processes(&self.state.get().processes);
        let mut first_err = problems.first().map(|p| QemuError::Io {
            what: "stopping the run's processes",
            path: self.state_dir.clone(),
            source: std::io::Error::other(p.clone()),
        });
        if let Some(mut net) = self.net.take() {
            if let Err(e) = net.delete() {
                first_err.get_or_insert(e);
            }
        }
        // The taps' fds held here die with the nodes.
        self.nodes.clear();
        if let Err(e) = std::fs::remove_dir_all(&self.state_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                first_err.get_or_insert(QemuError::Io {
                    what: "removing",
                    path: self.state_dir.clone(),
                    source: e,
                });
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl QemuCluster {
    /// Leaves the VMs running for a person to look at (`--keep`): closes the harness's
    /// SSH sessions and forgets the QEMU processes without stopping them. The state
    /// directory stays, so `harness clean` removes them once this process has ended.
    /// Returns how to reach each node.
    pub fn keep(mut self) -> Vec<String> {
        for node in &mut self.nodes {
            if let Some(s) = node.ssh.set(None) {
                s.close();
            }
            // Dropping a Child neither kills nor waits for it.
            node.child.take();
        }
        self.torn_down = true;
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "{}: ssh -i {} -o UserKnownHostsFile={} -p {} root@127.0.0.1 (console {})",
                    n.name,
                    self.key.display(),
                    self.known_hosts.display(),
                    n.ssh_port,
                    n.console.display()
                )
            })
            .collect()
    }
}

impl Drop for QemuCluster {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

/// What [`clean_leftovers`] found and did, one line each.
#[derive(Debug, Default)]
pub struct Cleaned {
    pub found: Vec<String>,
    pub removed: Vec<String>,
    pub problems: Vec<String>,
}

/// Removes what runs that died left behind, as their state files list it: processes by
/// pid and start time (QEMU, ssh, the external host's server), the run's namespace, its
/// state directory. Runs whose owner process still lives are left alone; nothing is
/// found by name.
pub fn clean_leftovers() -> Result<Cleaned> {
    let mut cleaned = Cleaned::default();
    for path in crate::state::all_in(&state_root()) {
        let st = match crate::state::StateFile::open(&path) {
            Ok(sf) => sf.get(),
            Err(e) => {
                cleaned
                    .problems
                    .push(format!("unreadable state file {}: {e}", path.display()));
                continue;
            }
        };
        cleaned.found.push(crate::provider::netns::found_line(&st));
        if st.owner_alive() {
            continue;
        }
        let (stopped, problems) = crate::state::stop_processes(&st.processes);
        cleaned
            .removed
            .extend(stopped.into_iter().map(|s| format!("{}: {s}", st.marker)));
        cleaned.problems.extend(problems);
        for ns in &st.netns {
            if Path::new("/run/netns").join(ns).exists() {
                match net::delete_netns(ns) {
                    Ok(()) => cleaned
                        .removed
                        .push(format!("{}: network namespace {ns}", st.marker)),
                    Err(e) => cleaned.problems.push(e.to_string()),
                }
            }
        }
        if let Some(dir) = path.parent() {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => cleaned.removed.push(format!(
                    "{}: state directory {}",
                    st.marker,
                    dir.display()
                )),
                Err(e) => cleaned
                    .problems
                    .push(format!("removing {}: {e}", dir.display())),
            }
        }
    }
    // A directory without a state file: a run killed before it wrote one (nothing of
    // it exists yet), or an older harness's layout, which names no start times.
    if let Ok(entries) = std::fs::read_dir(state_root()) {
        for e in entries.flatten() {
            let dir = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with(RUN_PREFIX) || dir.join("state.json").exists() {
                continue;
            }
            if dir.join("owner").exists() {
                cleaned.problems.push(format!(
                    "{}: written by an older harness (no state.json), left alone",
                    dir.display()
                ));
            } else if std::fs::remove_dir_all(&dir).is_ok() {
                cleaned
                    .removed
                    .push(format!("{name}: empty state directory {}", dir.display()));
            }
        }
    }
    Ok(cleaned)
}
