//! The netns provider: a cluster on the host kernel.
//!
//! - An underlay namespace `dph-<id>-u` holds a bridge; node *i* is a namespace
//!   `dph-<id>-<node>` with `eth0` on that bridge (172.31.0.*i*/24).
//! - Pod *j* of node *i* is a namespace `dph-<id>-<node>-<pod>` with `eth0` =
//!   10.244.*i*.*j*/24 (gateway 10.244.*i*.1 on the node's side `p<j>`); nodes route each
//!   other's pod /24 over the underlay. Veth pairs are created inside our namespaces
//!   (`ip -n`), so no interface ever appears in the host namespace.
//! - Node *i* has the cgroup `<cgroup2 mount>/dp-harness-<id>/<node>` (pods' cgroups are
//!   below it, so the node's socket LB applies to them) and a bpffs of its own mounted at
//!   `<bpffs mount>/dp-harness-<id>/<node>` (as a machine has its /sys/fs/bpf, so a fault
//!   can unmount one node's pins), its datapath directory `datapathd` below it.
//!
//! Everything is listed in the run's state file (crate::state) before it is made.
//! Commands use `ip` and `nsenter --net=`, never `ip netns exec` (it remounts /sys and
//! hides the cgroup2 mount).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Cleaned, Facts, Limitation, NodeFacts, Provider, ProviderError, UpRequest};
use crate::cluster::pods::{pod_address, pod_gateway, PodRouting, CLUSTER_CIDR};
use crate::cluster::{Cluster, ClusterNode, ExternalHost, NodeNet, Pod};
use crate::node::netns::NetnsNode;
use crate::state::{self, State, StateFile};

const NAME: &str = "netns";
/// The external host's address on the underlay, and the port its server listens on.
const EXTERNAL_ADDR: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 250);
const EXTERNAL_PORT: u16 = 8080;
pub struct NetnsProvider {
    state: Option<StateFile>,
    /// The nodes of the last `up`, for facts.
    nodes: Vec<String>,
}

impl NetnsProvider {
    pub fn new() -> NetnsProvider {
        NetnsProvider {
            state: None,
            nodes: Vec::new(),
        }
    }
}

impl Default for NetnsProvider {
    fn default() -> Self {
        Self::new()
    }
}

/// The first mount of filesystem type `fstype` in /proc/mounts.
pub fn mount_of(fstype: &str) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[2] == fstype).then(|| PathBuf::from(f[1]))
    })
}

fn sh(argv: &[&str]) -> Result<String, ProviderError> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|e| ProviderError::Other {
            provider: NAME,
            what: format!("cannot run `{}`", argv.join(" ")),
            source: Some(Box::new(e)),
        })?;
    if !out.status.success() {
        return Err(ProviderError::Other {
            provider: NAME,
            what: format!(
                "`{}` failed: {}",
                argv.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            source: None,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn need_tool(tool: &str, hint: &str) -> Result<(), ProviderError> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(ProviderError::MissingTool {
            provider: NAME,
            tool: tool.into(),
            hint: hint.into(),
        })
    }
}

/// Whether a filesystem is mounted exactly at `path` (/proc/self/mounts).
pub fn mounted_at(path: &Path) -> bool {
    let target = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_whitespace().nth(1) == Some(target.as_ref()))
    })
}

/// Checks what the provider needs before it touches anything.
pub fn prerequisites() -> Result<(PathBuf, PathBuf), ProviderError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ProviderError::Prerequisite {
            provider: NAME,
            what: "must run as root (network namespaces, cgroups, bpffs)".into(),
        });
    }
    need_tool("ip", "install iproute2 (ci/setup does)")?;
    need_tool("nsenter", "install util-linux (ci/setup does)")?;
    need_tool("bpftool", "install bpftool (ci/setup does)")?;
    let cg = mount_of("cgroup2").ok_or(ProviderError::Prerequisite {
        provider: NAME,
        what: "no cgroup2 mount in /proc/mounts".into(),
    })?;
    let bpf = mount_of("bpf").ok_or(ProviderError::Prerequisite {
        provider: NAME,
        what: "no bpf filesystem mounted (mount -t bpf bpf /sys/fs/bpf; ci/setup does)".into(),
    })?;
    Ok((cg, bpf))
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ProviderError {
    let path = path.to_path_buf();
    move |source| ProviderError::Io {
        provider: NAME,
        what,
        path,
        source,
    }
}

impl NetnsProvider {
    fn up_inner(&mut self, req: &UpRequest<'_>, sf: &StateFile) -> Result<Cluster, ProviderError> {
        let (cg_root, bpf_root) = prerequisites()?;
        let id = req.run_id.as_str();
        let check = || {
            if req.cancel.is_cancelled() {
                Err(ProviderError::Interrupted { provider: NAME })
            } else {
                Ok(())
            }
        };
        let rec = |f: &dyn Fn(&mut State)| {
            sf.update(|s| f(s))
                .map_err(io("cannot write state file", &sf.dir()))
        };
        let run_cg = cg_root.join(format!("dp-harness-{id}"));
        let run_bpf = bpf_root.join(format!("dp-harness-{id}"));
        let work = sf.dir().join("nodes");
        rec(&|s| {
            s.cgroups.push(run_cg.clone());
            s.bpffs.push(run_bpf.clone());
            s.datapathd = Some(req.binaries.datapathd.clone());
        })?;
        std::fs::create_dir_all(&run_cg).map_err(io("cannot create cgroup", &run_cg))?;
        std::fs::create_dir_all(&run_bpf).map_err(io("cannot create bpffs directory", &run_bpf))?;

        let underlay = format!("dph-{id}-u");
        rec(&|s| s.netns.push(underlay.clone()))?;
        sh(&["ip", "netns", "add", &underlay])?;
        let u = underlay.as_str();
        sh(&["ip", "-n", u, "link", "add", "br0", "type", "bridge"])?;
        sh(&["ip", "-n", u, "link", "set", "br0", "up"])?;
        sh(&["ip", "-n", u, "link", "set", "lo", "up"])?;

        let mut nodes = Vec::new();
        let mut pods = Vec::new();
        let topo = req.topology;
        let routed_by_kernel = topo.routing.is_kernel();
        for (i, name) in topo.nodes.iter().enumerate() {
            check()?;
            let ni = i + 1;
            let ns = format!("dph-{id}-{name}");
            rec(&|s| s.netns.push(ns.clone()))?;
            sh(&["ip", "netns", "add", &ns])?;
            let n = ns.as_str();
            let under_if = format!("n{ni}");
            sh(&[
                "ip", "-n", u, "link", "add", &under_if, "type", "veth", "peer", "name", "eth0",
                "netns", n,
            ])?;
            sh(&[
                "ip", "-n", u, "link", "set", &under_if, "master", "br0", "up",
            ])?;
            sh(&["ip", "-n", n, "link", "set", "lo", "up"])?;
            sh(&[
                "ip",
                "-n",
                n,
                "addr",
                "add",
                &format!("172.31.0.{ni}/24"),
                "dev",
                "eth0",
            ])?;
            sh(&["ip", "-n", n, "link", "set", "eth0", "up"])?;
            let netns_path = PathBuf::from(format!("/run/netns/{ns}"));
            let sysctl = |k: &str| {
                let p = format!("/proc/sys/{}", k.replace('.', "/"));
                sh(&[
                    "nsenter",
                    &format!("--net={}", netns_path.display()),
                    "--",
                    "sh",
                    "-c",
                    &format!("echo 1 > {p}"),
                ])
            };
            sysctl("net.ipv4.ip_forward")?;
            // With the agent's pod datapath, the agent routes pods (per-pod /32 routes or
            // VXLAN); there is no per-node pod CIDR to route.
            for (k, _) in topo.nodes.iter().enumerate() {
                if k != i && routed_by_kernel {
                    let other = k + 1;
                    sh(&[
                        "ip",
                        "-n",
                        n,
                        "route",
                        "add",
                        &format!("10.244.{other}.0/24"),
                        "via",
                        &format!("172.31.0.{other}"),
                    ])?;
                }
            }
            let node_cg = run_cg.join(name);
            let node_mount = run_bpf.join(name);
            let node_bpf = node_mount.join("datapathd");
            let node_work = work.join(name);
            rec(&|s| {
                s.cgroups.push(node_cg.clone());
                s.agents.push((node_bpf.clone(), node_cg.clone()));
                s.dirs.push(node_work.clone());
            })?;
            std::fs::create_dir_all(&node_cg).map_err(io("cannot create cgroup", &node_cg))?;
            rec(&|s| s.mounts.push(node_mount.clone()))?;
            std::fs::create_dir_all(&node_mount)
                .map_err(io("cannot create bpffs directory", &node_mount))?;
            sh(&["mount", "-t", "bpf", "bpf", &node_mount.to_string_lossy()])?;
            std::fs::create_dir_all(node_work.join("services"))
                .map_err(io("cannot create", &node_work))?;
            let pod_routing = (!routed_by_kernel).then(|| PodRouting {
                mode: topo.routing,
                gateway: pod_gateway(ni),
                pods_dir: node_work.join("pods"),
                ipcache_dir: node_work.join("ipcache"),
            });
            if let Some(r) = &pod_routing {
                for d in [&r.pods_dir, &r.ipcache_dir] {
                    std::fs::create_dir_all(d).map_err(io("cannot create", d))?;
                }
            }
            let node = NetnsNode::new(name, &netns_path).with_state(sf.clone());
            nodes.push(ClusterNode {
                node: Arc::new(node),
                cgroup: node_cg.clone(),
                bpffs: node_bpf,
                services_dir: node_work.join("services"),
                work_dir: node_work,
                datapathd: req.binaries.datapathd.clone(),
                dp_probe: req.binaries.dp_probe.clone(),
                net: Some(NodeNet {
                    uplink: "eth0".into(),
                    addr: Ipv4Addr::new(172, 31, 0, ni as u8),
                    pod_cidr: if routed_by_kernel {
                        format!("10.244.{ni}.0/24")
                    } else {
                        CLUSTER_CIDR.into()
                    },
                    cluster_cidr: CLUSTER_CIDR.into(),
                    pod_iface_prefix: if routed_by_kernel { "p" } else { "lxc" }.into(),
                    pod_routing,
                }),
            });
            for (j, p) in topo.pods.iter().filter(|p| &p.node == name).enumerate() {
                check()?;
                if !routed_by_kernel {
                    // The runtime's part only: the agent wires the pod at deploy
                    // (cluster::pods), from the address the pod keeps wherever it runs.
                    let index = topo.pods.iter().position(|q| q.name == p.name).unwrap_or(0);
                    let pns = format!("dph-{id}-{name}-{}", p.name);
                    let pod_cg = node_cg.join(&p.name);
                    rec(&|s| {
                        s.netns.push(pns.clone());
                        s.cgroups.push(pod_cg.clone());
                    })?;
                    sh(&["ip", "netns", "add", &pns])?;
                    sh(&["ip", "-n", &pns, "link", "set", "lo", "up"])?;
                    std::fs::create_dir_all(&pod_cg)
                        .map_err(io("cannot create cgroup", &pod_cg))?;
                    pods.push(Pod {
                        name: p.name.clone(),
                        node: name.clone(),
                        ip: pod_address(index),
                        netns: PathBuf::from(format!("/run/netns/{pns}")),
                        cgroup: pod_cg,
                    });
                    continue;
                }
                let pj = j + 2; // .1 is the gateway
                let pns = format!("dph-{id}-{name}-{}", p.name);
                rec(&|s| s.netns.push(pns.clone()))?;
                sh(&["ip", "netns", "add", &pns])?;
                let host_if = format!("p{pj}");
                let ip = Ipv4Addr::new(10, 244, ni as u8, pj as u8);
                sh(&[
                    "ip", "-n", n, "link", "add", &host_if, "type", "veth", "peer", "name", "eth0",
                    "netns", &pns,
                ])?;
                sh(&[
                    "ip",
                    "-n",
                    n,
                    "addr",
                    "add",
                    &format!("10.244.{ni}.1/32"),
                    "dev",
                    &host_if,
                ])?;
                sh(&["ip", "-n", n, "link", "set", &host_if, "up"])?;
                sh(&[
                    "ip",
                    "-n",
                    n,
                    "route",
                    "add",
                    &format!("{ip}/32"),
                    "dev",
                    &host_if,
                    "src",
                    &format!("10.244.{ni}.1"),
                ])?;
                sh(&["ip", "-n", &pns, "link", "set", "lo", "up"])?;
                sh(&[
                    "ip",
                    "-n",
                    &pns,
                    "addr",
                    "add",
                    &format!("{ip}/32"),
                    "dev",
                    "eth0",
                ])?;
                sh(&["ip", "-n", &pns, "link", "set", "eth0", "up"])?;
                sh(&[
                    "ip",
                    "-n",
                    &pns,
                    "route",
                    "add",
                    &format!("10.244.{ni}.1"),
                    "dev",
                    "eth0",
                    "scope",
                    "link",
                ])?;
                sh(&[
                    "ip",
                    "-n",
                    &pns,
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("10.244.{ni}.1"),
                    "dev",
                    "eth0",
                ])?;
                let pod_cg = node_cg.join(&p.name);
                rec(&|s| s.cgroups.push(pod_cg.clone()))?;
                std::fs::create_dir_all(&pod_cg).map_err(io("cannot create cgroup", &pod_cg))?;
                pods.push(Pod {
                    name: p.name.clone(),
                    node: name.clone(),
                    ip,
                    netns: PathBuf::from(format!("/run/netns/{pns}")),
                    cgroup: pod_cg,
                });
            }
        }
        // The external host: a namespace on the underlay that is not a node (no route to
        // any pod CIDR: only the masquerade brings its answers back).
        check()?;
        let ext = format!("dph-{id}-x");
        rec(&|s| s.netns.push(ext.clone()))?;
        sh(&["ip", "netns", "add", &ext])?;
        sh(&[
            "ip", "-n", u, "link", "add", "x0", "type", "veth", "peer", "name", "eth0", "netns",
            &ext,
        ])?;
        sh(&["ip", "-n", u, "link", "set", "x0", "master", "br0", "up"])?;
        sh(&["ip", "-n", &ext, "link", "set", "lo", "up"])?;
        sh(&[
            "ip",
            "-n",
            &ext,
            "addr",
            "add",
            &format!("{EXTERNAL_ADDR}/24"),
            "dev",
            "eth0",
        ])?;
        sh(&["ip", "-n", &ext, "link", "set", "eth0", "up"])?;
        Ok(Cluster {
            pod_net: Default::default(),
            nodes,
            pods,
            external: Some(ExternalHost {
                name: "external".into(),
                addr: std::net::SocketAddrV4::new(EXTERNAL_ADDR, EXTERNAL_PORT),
                netns: PathBuf::from(format!("/run/netns/{ext}")),
                on_host: None,
            }),
        })
    }
}

/// Removes everything `st` lists. Best effort: every step is tried, problems collected.
pub fn teardown(st: &State) -> Cleaned {
    let mut c = Cleaned::default();
    // 1. Processes we started, by pid, only if still the same process.
    let (stopped, problems) = state::stop_processes(&st.processes);
    c.removed.extend(stopped);
    c.problems.extend(problems);
    // 2. The datapath's pins and attachments, with its own cleanup.
    if let Some(d) = &st.datapathd {
        for (bpffs, cg) in &st.agents {
            if bpffs.exists() || cg.exists() {
                let out = Command::new(d)
                    .arg("cleanup")
                    .arg("--bpffs")
                    .arg(bpffs)
                    .arg("--cgroup")
                    .arg(cg)
                    .output();
                match out {
                    Ok(o) if o.status.success() => c
                        .removed
                        .push(format!("datapath state {}", bpffs.display())),
                    Ok(o) => c.problems.push(format!(
                        "datapathd cleanup {}: {}",
                        bpffs.display(),
                        String::from_utf8_lossy(&o.stderr).trim()
                    )),
                    Err(e) => c.problems.push(format!("datapathd cleanup: {e}")),
                }
            }
        }
    }
    // 3. Namespaces (their veths go with them), pods first.
    for ns in st.netns.iter().rev() {
        if Path::new("/run/netns").join(ns).exists() {
            match sh(&["ip", "netns", "del", ns]) {
                Ok(_) => c.removed.push(format!("netns {ns}")),
                Err(e) => c.problems.push(e.to_string()),
            }
        }
    }
    // 4. cgroups, deepest first; a cgroup with a dying process is busy for a moment.
    for cg in st.cgroups.iter().rev() {
        if !cg.exists() {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::remove_dir(cg) {
                Ok(()) => {
                    c.removed.push(format!("cgroup {}", cg.display()));
                    break;
                }
                Err(e) if Instant::now() >= deadline => {
                    c.problems.push(format!("rmdir {}: {e}", cg.display()));
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    // 5. The nodes' own bpffs mounts (what a node's pins were on), deepest first.
    for m in st.mounts.iter().rev() {
        if mounted_at(m) {
            match sh(&["umount", &m.to_string_lossy()]) {
                Ok(_) => c.removed.push(format!("mount {}", m.display())),
                Err(e) => c.problems.push(e.to_string()),
            }
        }
    }
    // 6. bpffs directories (pins that datapathd cleanup left are unlinked too).
    for b in st.bpffs.iter().rev() {
        if b.exists() {
            match std::fs::remove_dir_all(b) {
                Ok(()) => c.removed.push(format!("bpffs {}", b.display())),
                Err(e) => c.problems.push(format!("rm {}: {e}", b.display())),
            }
        }
    }
    for d in st.dirs.iter().rev() {
        if d.exists() {
            if let Err(e) = std::fs::remove_dir_all(d) {
                c.problems.push(format!("rm {}: {e}", d.display()));
            }
        }
    }
    c
}

/// One line on a run's state found by `clean`: whose, live or not, what it lists.
pub fn found_line(st: &State) -> String {
    let live = st.processes.iter().filter(|p| p.alive()).count();
    format!(
        "{}: harness pid {} {}; lists {} process(es) ({live} running), {} namespace(s), {} cgroup(s), {} bpffs dir(s)",
        st.marker,
        st.owner.0,
        if st.owner_alive() {
            "still running: a live run, left alone"
        } else {
            "gone"
        },
        st.processes.len(),
        st.netns.len(),
        st.cgroups.len(),
        st.bpffs.len()
    )
}

impl Provider for NetnsProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn up(&mut self, req: &UpRequest<'_>) -> Result<Cluster, ProviderError> {
        let marker = format!("dph-{}", req.run_id);
        let sf = StateFile::create(&marker)
            .map_err(io("cannot create state file under", &state::root()))?;
        self.state = Some(sf.clone());
        self.nodes = req.topology.nodes.clone();
        self.up_inner(req, &sf)
    }

    fn down(&mut self) -> Result<(), ProviderError> {
        let Some(sf) = self.state.take() else {
            return Ok(());
        };
        let cleaned = teardown(&sf.get());
        if cleaned.problems.is_empty() {
            sf.remove()
                .map_err(io("cannot remove state directory", &sf.dir()))?;
            Ok(())
        } else {
            // Keep the state file: `harness clean` retries.
            Err(ProviderError::Other {
                provider: NAME,
                what: format!("teardown left: {}", cleaned.problems.join("; ")),
                source: None,
            })
        }
    }

    fn keep(&mut self) -> Vec<String> {
        // Forgotten here, listed in its state file: `harness clean` removes it once this
        // process has ended.
        let Some(sf) = self.state.take() else {
            return Vec::new();
        };
        let st = sf.get();
        let mut how: Vec<String> = st
            .netns
            .iter()
            .map(|ns| format!("{ns}: nsenter --net=/run/netns/{ns}"))
            .collect();
        let running = st.processes.iter().filter(|p| p.alive()).count();
        how.push(format!(
            "{running} process(es) still running, listed in {}",
            sf.dir().join("state.json").display()
        ));
        how
    }

    fn facts(&self) -> Facts {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let mut facts = Facts {
            provider: NAME.into(),
            accelerator: "none".into(),
            shared_kernel: true,
            ..Facts::default()
        };
        // Every node is the host: its kernel, whatever the suite asked for.
        facts.set_nodes(
            self.nodes
                .iter()
                .map(|n| NodeFacts {
                    name: n.clone(),
                    kernel_release: kernel.clone(),
                    kernel_package: None,
                })
                .collect(),
        );
        if self.nodes.is_empty() {
            facts.kernel = kernel;
        }
        facts
    }

    fn limitations(&self) -> Vec<Limitation> {
        vec![Limitation {
            invariant: crate::suite::InvariantName::new("no-orphan-bpf-objects"),
            reason: "all nodes share the host kernel: only objects attributable to this run \
                     (its cgroups, bpffs directories and agent pids) are judged"
                .into(),
        }]
    }

    fn clean_leftovers(&self) -> Result<Cleaned, ProviderError> {
        let mut all = Cleaned::default();
        for path in state::all() {
            let Ok(sf) = StateFile::open(&path) else {
                all.problems
                    .push(format!("unreadable state file {}", path.display()));
                continue;
            };
            let st = sf.get();
            if !st.marker.starts_with("dph-") {
                continue;
            }
            all.found.push(found_line(&st));
            if st.owner_alive() {
                continue;
            }
            let c = teardown(&st);
            all.removed
                .extend(c.removed.into_iter().map(|r| format!("{}: {r}", st.marker)));
            if c.problems.is_empty() {
                let _ = sf.remove();
            } else {
                all.problems.extend(c.problems);
            }
        }
        Ok(all)
    }
}
