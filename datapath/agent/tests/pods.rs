//! Issue 18: pod networking in the datapath (dp_from_cont, dp_from_ovl, dp_endpoints,
//! dp_ipcache, `pod add|del`). Needs root; see tests/common/mod.rs.
//!
//! World: two *nodes* (network namespaces A and B) joined by a veth underlay `upl0`
//! (172.31.0.1 and .2), an agent in each (`nsenter --net`), and pods (namespaces) added
//! with `datapathd pod add` inside the node. Pod addresses come from one cluster CIDR
//! (10.244.0.0/16), no per-node CIDR: only the datapath routes between nodes. Every name
//! is `dpt-pods-<pid>-<n>`, so the sandbox sweep of a later run removes what a killed run
//! left.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::probe;
use common::sandbox::{bpffs_root, cgroup2_root, datapathd, Proc};
use common::wait_for;

static SEQ: AtomicU32 = AtomicU32::new(0);

fn unique() -> String {
    format!(
        "dpt-pods-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", args[0]))
}

fn sh_ok(args: &[&str]) -> String {
    let out = sh(args);
    assert!(
        out.status.success(),
        "`{}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A network namespace of ours, deleted on drop.
struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    fn new() -> Netns {
        let name = unique();
        sh_ok(&["ip", "netns", "add", &name]);
        let ns = Netns {
            path: PathBuf::from("/run/netns").join(&name),
            name,
        };
        sh_ok(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> &str {
        self.path.to_str().expect("utf-8")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

/// One node: its namespace, cgroup, bpffs directory, scratch directory and agent.
struct Node {
    ns: Netns,
    addr: &'static str,
    gateway: &'static str,
    cgroup: PathBuf,
    bpffs: PathBuf,
    dir: PathBuf,
    agent: Option<Proc>,
    runs: u32,
    /// More `run` arguments (`--tc-attach clsact`).
    extra: Vec<&'static str>,
}

impl Node {
    fn new(addr: &'static str, gateway: &'static str) -> Node {
        let ns = Netns::new();
        let cgroup = cgroup2_root().join(&ns.name);
        std::fs::create_dir(&cgroup).expect("mkdir cgroup");
        let dir = std::env::temp_dir().join(&ns.name);
        std::fs::create_dir_all(dir.join("services")).expect("mkdir services");
        Node {
            bpffs: bpffs_root().join(&ns.name),
            ns,
            addr,
            gateway,
            cgroup,
            dir,
            agent: None,
            runs: 0,
            extra: Vec::new(),
        }
    }

    fn pods(&self) -> PathBuf {
        self.dir.join("pods")
    }

    /// `cmd` in the node's namespace.
    fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["nsenter".to_string(), format!("--net={}", self.ns.path())];
        full.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        sh(&refs)
    }

    fn exec_ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "`{}` in the node failed: {}{}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn dp(&self, args: &[&str]) -> Output {
        let bin = datapathd();
        let mut full = vec![bin.to_str().expect("utf-8")];
        full.extend_from_slice(args);
        self.exec(&full)
    }

    fn start(&mut self, routing: &str, ipcache: &Path, mutant: Option<&str>) {
        let n = self.runs;
        self.runs += 1;
        let out = self.dir.join(format!("agent-{n}.out"));
        let err = self.dir.join(format!("agent-{n}.err"));
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.ns.path()))
            .arg(datapathd())
            .args(["run", "--cgroup"])
            .arg(&self.cgroup)
            .arg("--services")
            .arg(self.dir.join("services"))
            .arg("--bpffs")
            .arg(&self.bpffs)
            .args(["--uplink", "upl0", "--node-addr", self.addr])
            .args([
                "--pod-cidr",
                "10.244.0.0/16",
                "--cluster-cidr",
                "10.244.0.0/16",
            ])
            .args(["--routing", routing, "--pods"])
            .arg(self.pods())
            .arg("--ipcache")
            .arg(ipcache)
            .args(["--gateway", self.gateway]);
        if let Some(m) = mutant {
            cmd.args(["--mutant", m]);
        }
        cmd.args(&self.extra);
        let child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("agent stdout"))
            .stderr(std::fs::File::create(&err).expect("agent stderr"))
            .spawn()
            .expect("start datapathd");
        let mut proc = Proc {
            what: format!("datapathd {}", self.ns.name),
            child,
        };
        let ready = wait_for(Duration::from_secs(60), || {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if text.lines().any(|l| l.trim() == "datapathd: ready") {
                Some(true)
            } else if !proc.running() {
                Some(false)
            } else {
                None
            }
        });
        self.agent = Some(proc);
        assert_eq!(ready, Some(true), "datapathd not ready\n{}", self.log());
    }

    fn stop(&mut self) {
        if let Some(mut p) = self.agent.take() {
            p.signal(libc::SIGTERM);
            p.wait_exit(Duration::from_secs(10))
                .expect("datapathd did not exit on SIGTERM");
        }
    }

    fn log(&self) -> String {
        (0..self.runs)
            .map(|n| {
                let err = self.dir.join(format!("agent-{n}.err"));
                format!(
                    "--- agent {} run {n} ---\n{}",
                    self.ns.name,
                    std::fs::read_to_string(err).unwrap_or_default()
                )
            })
            .collect()
    }

    /// `pod add`: a fresh pod namespace; the printed JSON.
    fn add_pod(&self, name: &str, addr: &str) -> (Netns, serde_json::Value) {
        let ns = Netns::new();
        let pods = self.pods();
        let out = self.dp(&[
            "pod",
            "add",
            "--pods",
            pods.to_str().expect("utf-8"),
            "--name",
            name,
            "--netns",
            ns.path(),
            "--addr",
            addr,
            "--timeout-s",
            "20",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "pod add {name}: {stdout}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
        (ns, json(&stdout))
    }

    fn del_pod(&self, name: &str) -> String {
        let pods = self.pods();
        let out = self.dp(&[
            "pod",
            "del",
            "--pods",
            pods.to_str().expect("utf-8"),
            "--name",
            name,
            "--timeout-s",
            "20",
        ]);
        assert!(
            out.status.success(),
            "pod del {name}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn status(&self) -> serde_json::Value {
        let bpffs = self.bpffs.to_str().expect("utf-8");
        let out = self.dp(&["status", "--json", "--bpffs", bpffs]);
        assert!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        json(&String::from_utf8_lossy(&out.stdout))
    }

    /// `bpftool map dump pinned` of one of the pod maps: (key as a dotted address, value
    /// bytes).
    fn map_entries(&self, map: &str) -> Vec<(String, Vec<u8>)> {
        let pin = self.bpffs.join("pods/maps").join(map);
        let out = sh_ok(&[
            "bpftool",
            "-j",
            "map",
            "dump",
            "pinned",
            pin.to_str().expect("utf-8"),
        ]);
        let bytes = |v: &serde_json::Value| -> Vec<u8> {
            v.as_array()
                .expect("bytes")
                .iter()
                .map(|b| {
                    let s = b.as_str().expect("hex byte");
                    u8::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex")
                })
                .collect()
        };
        json(&out)
            .as_array()
            .expect("array")
            .iter()
            .map(|e| {
                let k = bytes(&e["key"]);
                (
                    format!("{}.{}.{}.{}", k[0], k[1], k[2], k[3]),
                    bytes(&e["value"]),
                )
            })
            .collect()
    }

    /// The node address `dp_ipcache` holds for `pod`.
    fn ipcache_node(&self, pod: &str) -> Option<String> {
        self.map_entries("dp_ipcache")
            .into_iter()
            .find(|(k, _)| k == pod)
            .map(|(_, v)| format!("{}.{}.{}.{}", v[0], v[1], v[2], v[3]))
    }

    /// `bpftool map dump pinned` of one of the pod maps: keys as dotted addresses.
    fn map_keys(&self, map: &str) -> Vec<String> {
        let pin = self.bpffs.join("pods/maps").join(map);
        let out = sh_ok(&[
            "bpftool",
            "-j",
            "map",
            "dump",
            "pinned",
            pin.to_str().expect("utf-8"),
        ]);
        json(&out)
            .as_array()
            .expect("array")
            .iter()
            .map(|e| {
                let k: Vec<u8> = e["key"]
                    .as_array()
                    .expect("key bytes")
                    .iter()
                    .map(|b| {
                        let s = b.as_str().expect("hex byte");
                        u8::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex")
                    })
                    .collect();
                format!("{}.{}.{}.{}", k[0], k[1], k[2], k[3])
            })
            .collect()
    }

    fn link_exists(&self, name: &str) -> bool {
        self.exec(&["ip", "link", "show", name]).status.success()
    }

    fn routes(&self) -> String {
        self.exec_ok(&["ip", "-4", "route", "show"])
    }

    fn neighbours(&self) -> String {
        self.exec_ok(&["ip", "-4", "neigh", "show"])
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.agent = None;
        let bin = datapathd();
        let bpffs = self.bpffs.to_str().unwrap_or_default().to_string();
        let _ = self.exec(&[
            bin.to_str().unwrap_or("datapathd"),
            "cleanup",
            "--bpffs",
            &bpffs,
        ]);
        let _ = std::fs::remove_dir_all(&self.bpffs);
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
        let _ = wait_for(Duration::from_secs(5), || {
            std::fs::remove_dir(&self.cgroup).ok()
        });
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Two nodes on a veth underlay and the ipcache directory both read.
struct World {
    a: Node,
    b: Node,
    ipcache: PathBuf,
    _lock: dp_test_support::AcceptanceLock,
}

impl World {
    fn new() -> World {
        let lock = dp_test_support::acceptance_lock();
        let a = Node::new("172.31.0.1", "10.244.255.1");
        let b = Node::new("172.31.0.2", "10.244.255.2");
        sh_ok(&[
            "ip",
            "link",
            "add",
            "upl0",
            "netns",
            a.ns.path(),
            "type",
            "veth",
            "peer",
            "name",
            "upl0",
            "netns",
            b.ns.path(),
        ]);
        for n in [&a, &b] {
            n.exec_ok(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", n.addr),
                "dev",
                "upl0",
            ]);
            n.exec_ok(&["ip", "link", "set", "upl0", "up"]);
        }
        let ipcache = a.dir.join("ipcache");
        std::fs::create_dir_all(&ipcache).expect("mkdir ipcache");
        World {
            a,
            b,
            ipcache,
            _lock: lock,
        }
    }

    fn start(&mut self, routing: &str, mutant_a: Option<&str>) {
        let ipc = self.ipcache.clone();
        self.a.start(routing, &ipc, mutant_a);
        self.b.start(routing, &ipc, None);
    }

    /// What the harness does on every pod change: one file per node.
    fn write_ipcache(&self, node: &Node, pods: &[(&str, &str)]) {
        self.write_ipcache_for(&node.ns.name, node.addr, pods);
    }

    fn write_ipcache_for(&self, node: &str, node_addr: &str, pods: &[(&str, &str)]) {
        let pods: Vec<serde_json::Value> = pods
            .iter()
            .map(|(n, a)| serde_json::json!({"name": n, "address": a}))
            .collect();
        let v = serde_json::json!({"node": node, "node_addr": node_addr, "pods": pods});
        let file = self.ipcache.join(format!("{node_addr}.json"));
        let tmp = self.ipcache.join(format!(".{node_addr}.tmp"));
        std::fs::write(&tmp, v.to_string()).expect("write ipcache");
        std::fs::rename(&tmp, file).expect("rename ipcache");
    }

    fn logs(&self) -> String {
        format!("{}{}", self.a.log(), self.b.log())
    }
}

fn serve(pod: &Netns, addr: &str) -> Proc {
    probe::serve(addr, &pod.path, &[addr], &[])
}

fn tcp_ok(from: &Netns, to: &str, w: &World) {
    let attempts = probe::connect_from(&from.path, None, to, "tcp", 3, 3000);
    let failed: Vec<_> = attempts.iter().filter(|a| !a.ok).collect();
    assert!(
        !attempts.is_empty() && failed.is_empty(),
        "TCP with payload {} -> {to}: {failed:#?}\n{}",
        from.name,
        w.logs()
    );
}

fn pod_neighbour(pod: &Netns, gateway: &str) -> Option<String> {
    let out = sh(&["ip", "-n", &pod.name, "-j", "neigh", "show", gateway]);
    json(&String::from_utf8_lossy(&out.stdout))
        .as_array()?
        .iter()
        .find(|n| n["dst"] == gateway && n["lladdr"].is_string())
        .map(|n| n["lladdr"].as_str().unwrap_or_default().to_string())
}

fn vxlan_packets(node: &Node) -> (u64, u64) {
    let out = node.exec_ok(&["ip", "-s", "-j", "link", "show", "dp_vxlan"]);
    let v = json(&out);
    let s = &v[0]["stats64"];
    (
        s["tx"]["packets"].as_u64().expect("tx"),
        s["rx"]["packets"].as_u64().expect("rx"),
    )
}

/// (1) wiring, (2) TCP local and across nodes, (3) delete and restart cleanup, in `routing`.
fn pod_to_pod(routing: &str, attach: &'static str) {
    let mut w = World::new();
    w.a.extra = vec!["--tc-attach", attach];
    w.b.extra = vec!["--tc-attach", attach];
    w.start(routing, None);
    let (a1, j1) = w.a.add_pod("web-a1", "10.244.0.11");
    let (a2, _j2) = w.a.add_pod("web-a2", "10.244.0.12");
    let (b1, _) = w.b.add_pod("web-b1", "10.244.1.21");
    w.write_ipcache(
        &w.a,
        &[("web-a1", "10.244.0.11"), ("web-a2", "10.244.0.12")],
    );
    w.write_ipcache(&w.b, &[("web-b1", "10.244.1.21")]);

    // (1) The pod's gateway resolves to its host veth's MAC; the host veth has no address.
    let veth = j1["host_veth"].as_str().expect("host_veth").to_string();
    assert!(veth.starts_with("lxc") && veth.len() <= 15, "{j1}");
    assert_eq!(j1["attach"], attach, "{j1}");
    assert!(j1["program_id"].as_u64().unwrap_or(0) > 0, "{j1}");
    let addrs =
        w.a.exec_ok(&["ip", "-4", "-j", "addr", "show", "dev", &veth]);
    assert!(
        json(&addrs)[0]["addr_info"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "the host veth has an address: {addrs}"
    );
    let ping = sh(&[
        "ip",
        "netns",
        "exec",
        &a1.name,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        w.a.gateway,
    ]);
    assert!(
        ping.status.success(),
        "pod -> gateway ping failed\n{}",
        w.logs()
    );
    assert_eq!(
        pod_neighbour(&a1, w.a.gateway).as_deref(),
        j1["host_mac"].as_str(),
        "the gateway's MAC in the pod is the host veth's"
    );
    let st = w.a.status();
    assert_eq!(st["routing"], routing, "{st:#}");
    let pods = st["pods"].as_array().expect("pods");
    assert_eq!(pods.len(), 2, "{st:#}");
    assert!(pods.iter().all(|p| p["wired"] == true), "{st:#}");

    // (2) TCP with payload: local pod -> pod, and across nodes both ways.
    let _s2 = serve(&a2, "10.244.0.12:8080");
    let _sb = serve(&b1, "10.244.1.21:8080");
    let _s1 = serve(&a1, "10.244.0.11:8080");
    tcp_ok(&a1, "10.244.0.12:8080", &w);
    let vx_before = (routing == "vxlan").then(|| vxlan_packets(&w.a));
    wait_for(Duration::from_secs(5), || {
        (w.a.map_keys("dp_ipcache")
            .contains(&"10.244.1.21".to_string())
            && w.b
                .map_keys("dp_ipcache")
                .contains(&"10.244.0.11".to_string()))
        .then_some(())
    })
    .unwrap_or_else(|| panic!("ipcache never filled\n{}", w.logs()));
    tcp_ok(&a1, "10.244.1.21:8080", &w);
    tcp_ok(&b1, "10.244.0.11:8080", &w);
    let mtu = |ns: &Netns| {
        let out = sh_ok(&["ip", "-n", &ns.name, "-j", "link", "show", "eth0"]);
        json(&out)[0]["mtu"].as_u64().expect("mtu")
    };
    let want_mtu = if routing == "vxlan" { 1450 } else { 1500 };
    assert_eq!(mtu(&a1), want_mtu, "the pod's MTU (uplink 1500, {routing})");
    if let Some((tx0, rx0)) = vx_before {
        let (tx1, rx1) = vxlan_packets(&w.a);
        assert!(
            tx1 > tx0 && rx1 > rx0,
            "dp_vxlan counters did not grow: tx {tx0}->{tx1}, rx {rx0}->{rx1}"
        );
        assert!(
            !w.a.routes().contains("10.244.1.21"),
            "vxlan mode installs no per-pod route to remote pods"
        );
    } else {
        assert!(
            w.a.routes().contains("10.244.1.21 via 172.31.0.2 dev upl0"),
            "native route missing:\n{}",
            w.a.routes()
        );
    }

    // An agent restart takes the pod over: one program on its veth (the new one), still
    // wired, traffic still flows.
    let before = w.b.status();
    w.b.stop();
    let ipc = w.ipcache.clone();
    w.b.start(routing, &ipc, None);
    let after = w.b.status();
    let (p0, p1) = (&before["pods"][0], &after["pods"][0]);
    assert_eq!(p1["wired"], true, "{after:#}");
    assert_ne!(
        p0["program_id"], p1["program_id"],
        "a new program after the restart"
    );
    tcp_ok(&a1, "10.244.1.21:8080", &w);

    // (3) pod del leaves nothing of the pod.
    let veth2 = _j2["host_veth"].as_str().expect("veth").to_string();
    w.a.del_pod("web-a2");
    assert!(!w.a.link_exists(&veth2), "veth {veth2} left");
    assert!(
        !w.a.routes().contains("10.244.0.12"),
        "route left:\n{}",
        w.a.routes()
    );
    assert!(!w.a.neighbours().contains("10.244.0.12"), "neighbour left");
    assert!(
        !w.a.map_keys("dp_endpoints")
            .contains(&"10.244.0.12".to_string()),
        "endpoint left"
    );
    w.write_ipcache(&w.a, &[("web-a1", "10.244.0.11")]);
    wait_for(Duration::from_secs(5), || {
        (!w.b
            .map_keys("dp_ipcache")
            .contains(&"10.244.0.12".to_string()))
        .then_some(())
    })
    .unwrap_or_else(|| panic!("ipcache entry of the deleted pod left on node B"));
    assert!(
        w.a.del_pod("web-a2").contains("unknown"),
        "a second del is a no-op"
    );

    // A pod file removed while the agent is down: the next agent cleans the pod.
    w.a.stop();
    std::fs::remove_file(w.a.pods().join("web-a1.json")).expect("remove pod file");
    let ipc = w.ipcache.clone();
    w.a.start(routing, &ipc, None);
    assert!(
        !w.a.link_exists(&veth),
        "veth {veth} left after restart\n{}",
        w.logs()
    );
    assert!(!w.a.routes().contains("10.244.0.11"), "route left");
    assert!(!w
        .a
        .map_keys("dp_endpoints")
        .contains(&"10.244.0.11".to_string()));
    drop((a1, a2, b1));
}

#[test]
fn native_pod_networking() {
    if !common::can_run("native_pod_networking") {
        return;
    }
    pod_to_pod("native", "tcx");
}

#[test]
fn native_pod_networking_with_clsact() {
    if !common::can_run("native_pod_networking_with_clsact") {
        return;
    }
    pod_to_pod("native", "clsact");
}

#[test]
fn vxlan_pod_networking() {
    if !common::can_run("vxlan_pod_networking") {
        return;
    }
    pod_to_pod("vxlan", "tcx");
}

#[test]
fn mutant_arp_responder_off_leaves_the_gateway_unresolved() {
    if !common::can_run("mutant_arp_responder_off_leaves_the_gateway_unresolved") {
        return;
    }
    let mut w = World::new();
    w.start("native", Some("arp-responder-off"));
    let (a1, _) = w.a.add_pod("web-a1", "10.244.0.11");
    let ping = sh(&[
        "ip",
        "netns",
        "exec",
        &a1.name,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        w.a.gateway,
    ]);
    assert!(
        !ping.status.success(),
        "the gateway answered without the ARP responder"
    );
    assert_eq!(
        pod_neighbour(&a1, w.a.gateway),
        None,
        "the pod resolved its gateway although nothing should answer its ARP"
    );
    let neigh = sh_ok(&["ip", "-n", &a1.name, "neigh", "show", w.a.gateway]);
    assert!(
        neigh.contains("FAILED") || neigh.contains("INCOMPLETE"),
        "the pod's neighbour entry for the gateway: {neigh:?}"
    );
}

#[test]
fn mutant_ipcache_stale_on_move_keeps_the_old_node() {
    if !common::can_run("mutant_ipcache_stale_on_move_keeps_the_old_node") {
        return;
    }
    let mut w = World::new();
    // A runs the mutant, B the correct agent; both see one pod of the other's move to a
    // third node (172.31.0.3, only in the ipcache files).
    w.start("native", Some("ipcache-stale-on-move"));
    w.write_ipcache(&w.a, &[("x-a", "10.244.0.50")]);
    w.write_ipcache(&w.b, &[("x-b", "10.244.1.50")]);
    let filled = wait_for(Duration::from_secs(5), || {
        (w.a.ipcache_node("10.244.1.50").as_deref() == Some("172.31.0.2")
            && w.b.ipcache_node("10.244.0.50").as_deref() == Some("172.31.0.1"))
        .then_some(())
    });
    assert!(filled.is_some(), "ipcache never filled\n{}", w.logs());
    w.write_ipcache(&w.a, &[]);
    w.write_ipcache(&w.b, &[]);
    w.write_ipcache_for(
        "node-c",
        "172.31.0.3",
        &[
            ("x-a", "10.244.0.50"),
            ("x-b", "10.244.1.50"),
            ("x-new", "10.244.2.60"),
        ],
    );
    let moved = wait_for(Duration::from_secs(5), || {
        (w.b.ipcache_node("10.244.0.50").as_deref() == Some("172.31.0.3")).then_some(())
    });
    assert!(
        moved.is_some(),
        "the correct agent did not follow the move\n{}",
        w.logs()
    );
    assert!(
        w.b.routes().contains("10.244.0.50 via 172.31.0.3 dev upl0"),
        "{}",
        w.b.routes()
    );
    // The mutant read the new files once it has the pod that only they list.
    let read = wait_for(Duration::from_secs(5), || {
        w.a.ipcache_node("10.244.2.60").map(|_| ())
    });
    assert!(
        read.is_some(),
        "the mutant never read the new files\n{}",
        w.logs()
    );
    assert_eq!(
        w.a.ipcache_node("10.244.1.50").as_deref(),
        Some("172.31.0.2"),
        "the mutant should keep the old node"
    );
    assert!(
        w.a.routes().contains("10.244.1.50 via 172.31.0.2 dev upl0"),
        "{}",
        w.a.routes()
    );
}

#[test]
fn mutant_endpoint_kept_on_delete_leaves_the_entry() {
    if !common::can_run("mutant_endpoint_kept_on_delete_leaves_the_entry") {
        return;
    }
    let mut w = World::new();
    w.start("native", Some("endpoint-kept-on-delete"));
    let (_a1, j1) = w.a.add_pod("web-a1", "10.244.0.11");
    let veth = j1["host_veth"].as_str().expect("veth").to_string();
    w.a.del_pod("web-a1");
    assert!(
        !w.a.link_exists(&veth),
        "the veth goes even under the mutant"
    );
    assert!(
        !w.a.routes().contains("10.244.0.11"),
        "the route goes even under the mutant"
    );
    assert!(
        w.a.map_keys("dp_endpoints")
            .contains(&"10.244.0.11".to_string()),
        "the mutant should leave the dp_endpoints entry"
    );
}

#[test]
fn pod_add_without_a_confirming_agent_fails_and_leaves_nothing() {
    if !common::can_run("pod_add_without_a_confirming_agent_fails_and_leaves_nothing") {
        return;
    }
    let mut w = World::new();
    let pods = w.a.pods();
    let pods = pods.to_str().expect("utf-8").to_string();
    let pod = Netns::new();
    let add = |w: &World, addr: &str| {
        w.a.dp(&[
            "pod",
            "add",
            "--pods",
            &pods,
            "--name",
            "lonely",
            "--netns",
            pod.path(),
            "--addr",
            addr,
            "--timeout-s",
            "1",
        ])
    };
    // Bad flags: exit 2.
    assert_eq!(add(&w, "not-an-address").status.code(), Some(2));
    // No agent ever ran here: no dp_host, exit 1 at once.
    let out = add(&w, "10.244.0.99");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("dp_host"));
    // An agent that set the node up and then stopped: no confirmation, exit 1, and the
    // half-made veth and the pod file are removed.
    w.start("native", None);
    w.a.stop();
    let out = add(&w, "10.244.0.99");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let veth_gone = !w.a.exec_ok(&["ip", "link", "show"]).contains("lxc");
    assert!(veth_gone, "the half-made veth is left");
    assert!(
        !w.a.pods().join("lonely.json").exists(),
        "the pod file is left"
    );
    let ns_links = sh_ok(&["ip", "-n", &pod.name, "link", "show"]);
    assert!(
        !ns_links.contains("eth0"),
        "the pod's eth0 is left: {ns_links}"
    );
}

#[test]
fn a_pod_that_moves_keeps_its_address_and_is_local_on_its_new_node() {
    if !common::can_run("a_pod_that_moves_keeps_its_address_and_is_local_on_its_new_node") {
        return;
    }
    let mut w = World::new();
    w.start("native", None);
    let (a1, _) = w.a.add_pod("web-a1", "10.244.0.11");
    let (b1, _) = w.b.add_pod("web-b1", "10.244.1.21");
    w.write_ipcache(&w.a, &[("web-a1", "10.244.0.11")]);
    w.write_ipcache(&w.b, &[("web-b1", "10.244.1.21")]);
    let filled = wait_for(Duration::from_secs(5), || {
        (w.a.ipcache_node("10.244.1.21").as_deref() == Some("172.31.0.2")).then_some(())
    });
    assert!(filled.is_some(), "ipcache never filled\n{}", w.logs());
    {
        let _s = serve(&b1, "10.244.1.21:8080");
        tcp_ok(&a1, "10.244.1.21:8080", &w);
    }
    // web-b1 moves to A with its address; the ipcache files still say B.
    w.b.del_pod("web-b1");
    drop(b1);
    let (moved, j) = w.a.add_pod("web-b1", "10.244.1.21");
    let veth = j["host_veth"].as_str().expect("veth").to_string();
    let local = wait_for(Duration::from_secs(5), || {
        w.a.ipcache_node("10.244.1.21").is_none().then_some(())
    });
    assert!(
        local.is_some(),
        "a local pod left in dp_ipcache\n{}",
        w.logs()
    );
    let routes = w.a.routes();
    assert!(
        routes.contains(&format!("10.244.1.21 dev {veth} scope link"))
            && !routes.contains("10.244.1.21 via"),
        "the moved pod's route on its new node:\n{routes}"
    );
    let _s = serve(&moved, "10.244.1.21:8080");
    tcp_ok(&a1, "10.244.1.21:8080", &w);
    // The files catch up: B now sends to A.
    w.write_ipcache(
        &w.a,
        &[("web-a1", "10.244.0.11"), ("web-b1", "10.244.1.21")],
    );
    w.write_ipcache(&w.b, &[]);
    let followed = wait_for(Duration::from_secs(5), || {
        (w.b.ipcache_node("10.244.1.21").as_deref() == Some("172.31.0.1")).then_some(())
    });
    assert!(
        followed.is_some(),
        "node B did not follow the move\n{}",
        w.logs()
    );
    let status = w.a.status();
    assert!(
        status["pods"]
            .as_array()
            .expect("pods")
            .iter()
            .all(|p| p["wired"] == true),
        "{status:#}"
    );
}

/// A bpffs of the test's own (the node's pins live there), unmounted on drop.
struct OwnBpffs {
    mount: PathBuf,
}

impl OwnBpffs {
    fn new() -> OwnBpffs {
        let mount = std::env::temp_dir().join(format!("{}-bpf", unique()));
        std::fs::create_dir_all(&mount).expect("mkdir mount point");
        let b = OwnBpffs { mount };
        b.mount();
        b
    }
    fn mount(&self) {
        sh_ok(&[
            "mount",
            "-t",
            "bpf",
            "bpf",
            self.mount.to_str().expect("utf-8"),
        ]);
    }
    fn umount(&self) {
        sh_ok(&["umount", self.mount.to_str().expect("utf-8")]);
    }
}

impl Drop for OwnBpffs {
    fn drop(&mut self) {
        let _ = sh(&["umount", self.mount.to_str().unwrap_or_default()]);
        let _ = std::fs::remove_dir(&self.mount);
    }
}

#[test]
fn pod_links_come_back_after_a_bpffs_remount_and_deleted_pods_stay_gone() {
    if !common::can_run("pod_links_come_back_after_a_bpffs_remount_and_deleted_pods_stay_gone") {
        return;
    }
    let fs = OwnBpffs::new();
    let mut w = World::new();
    w.a.bpffs = fs.mount.join("inst");
    w.start("native", None);
    let (a1, j1) = w.a.add_pod("web-a1", "10.244.0.11");
    let (a2, j2) = w.a.add_pod("web-a2", "10.244.0.12");
    let pin = |j: &serde_json::Value| {
        w.a.bpffs
            .join("pods/links")
            .join(j["host_veth"].as_str().expect("veth"))
    };
    let (pin1, pin2) = (pin(&j1), pin(&j2));
    assert!(pin1.exists() && pin2.exists(), "tcx link pins of both pods");
    // Pods that exist when an agent starts are among the pins it finds then.
    w.a.stop();
    let ipc = w.ipcache.clone();
    w.a.start("native", &ipc, None);

    fs.umount();
    assert!(!pin1.exists());
    fs.mount();
    let back = wait_for(Duration::from_secs(5), || {
        (pin1.exists() && pin2.exists()).then_some(())
    });
    assert!(back.is_some(), "pod link pins not made again\n{}", w.logs());
    let status = w.a.status();
    assert!(
        status["pods"]
            .as_array()
            .expect("pods")
            .iter()
            .all(|p| p["wired"] == true),
        "{status:#}"
    );
    {
        let _s = serve(&a2, "10.244.0.12:8080");
        tcp_ok(&a1, "10.244.0.12:8080", &w);
    }

    // A deleted pod's pin is not made again: after another pod was added (the agent ran
    // passes since), it is still gone.
    w.a.del_pod("web-a2");
    assert!(!pin2.exists(), "the deleted pod's link pin is left");
    let (_a3, _) = w.a.add_pod("web-a3", "10.244.0.13");
    assert!(!pin2.exists(), "the deleted pod's link pin came back");
    drop((a1, a2));
    w.a.stop();
}
