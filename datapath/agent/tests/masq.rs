//! Issue 6 (incident B): the BPF masquerade, the DP_FORWARD chain and its order against
//! kube-proxy's INVALID drop. Needs root; see tests/common/mod.rs.
//!
//! World: the sandbox's namespace is the *node*; a *pod* namespace hangs off it by a veth
//! `lxct0` (routed Calico-style, as the qemu provider wires pods), and an *external* host
//! namespace by the uplink veth `upl0` (192.168.77.1 node, .2 external). The external host
//! has no route to the pod CIDR, so only a working masquerade brings answers back. The
//! agent runs inside the node namespace (`nsenter --net`), so its tc programs and iptables
//! rules exist only there.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::probe::{self, Attempt};
use common::sandbox::{datapathd, Agent, Proc, Sandbox};
use common::wait_for;

const NODE_ADDR: &str = "192.168.77.1";
const EXT_ADDR: &str = "192.168.77.2";
const POD_ADDR: &str = "10.244.0.5";
const SERVER: &str = "192.168.77.2:8080";

static SEQ: AtomicU32 = AtomicU32::new(0);

fn sh(args: &[&str]) -> std::process::Output {
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

/// A network namespace of ours, deleted on drop (its veth ends go with it).
struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    fn new(name: String) -> Netns {
        sh_ok(&["ip", "netns", "add", &name]);
        let ns = Netns {
            path: PathBuf::from("/run/netns").join(&name),
            name,
        };
        sh_ok(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

/// The node (the sandbox's namespace), a pod and an external host.
struct World {
    sb: Sandbox,
    pod: Netns,
    ext: Netns,
    server: Option<Proc>,
    agents: Vec<Agent>,
}

impl World {
    fn new(tag: &str) -> World {
        let sb = Sandbox::new(tag);
        let n = format!(
            "dpm-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let pod = Netns::new(format!("{n}-pod"));
        let ext = Netns::new(format!("{n}-ext"));
        let node = sb.netns_name.clone();
        let w = World {
            sb,
            pod,
            ext,
            server: None,
            agents: Vec::new(),
        };
        let (p, e) = (w.pod.name.as_str(), w.ext.name.as_str());
        for cmd in [
            // pod <-> node: routed, gateway 169.254.1.1 on the node side.
            format!("ip -n {node} link add lxct0 type veth peer name eth0 netns {p}"),
            format!("ip -n {p} addr add {POD_ADDR}/32 dev eth0"),
            format!("ip -n {p} link set eth0 up"),
            format!("ip -n {p} route add 169.254.1.1 dev eth0 scope link"),
            format!("ip -n {p} route add default via 169.254.1.1 dev eth0"),
            format!("ip -n {node} link set lxct0 up"),
            format!("ip -n {node} addr add 169.254.1.1/32 dev lxct0 scope link"),
            format!("ip -n {node} route add {POD_ADDR}/32 dev lxct0"),
            // node <-> external host: the uplink.
            format!("ip -n {node} link add upl0 type veth peer name eth0 netns {e}"),
            format!("ip -n {node} addr add {NODE_ADDR}/24 dev upl0"),
            format!("ip -n {node} link set upl0 up"),
            format!("ip -n {e} addr add {EXT_ADDR}/24 dev eth0"),
            format!("ip -n {e} link set eth0 up"),
            format!("ip netns exec {node} sysctl -qw net.ipv4.ip_forward=1"),
        ] {
            let args: Vec<&str> = cmd.split_whitespace().collect();
            sh_ok(&args);
        }
        w
    }

    fn node(&self) -> &str {
        &self.sb.netns_name
    }

    fn serve(&mut self) {
        let p = probe::serve(SERVER, &self.ext.path, &[SERVER], &[]);
        self.server = Some(p);
    }

    /// iptables in the node namespace.
    fn ipt(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", self.node(), "iptables", "-w", "5"];
        full.extend_from_slice(args);
        sh_ok(&full)
    }

    fn forward(&self) -> Vec<String> {
        self.ipt(&["-S", "FORWARD"])
            .lines()
            .filter(|l| l.starts_with("-A "))
            .map(str::to_string)
            .collect()
    }

    /// kube-proxy's filter FORWARD footprint (iptables mode), inserted at the top as it does.
    fn kube_proxy(&self) {
        self.ipt(&["-N", "KUBE-FORWARD"]);
        self.ipt(&[
            "-A",
            "KUBE-FORWARD",
            "-m",
            "conntrack",
            "--ctstate",
            "INVALID",
            "-j",
            "DROP",
        ]);
        self.ipt(&[
            "-A",
            "KUBE-FORWARD",
            "-m",
            "comment",
            "--comment",
            "kubernetes forwarding rules",
            "-m",
            "mark",
            "--mark",
            "0x4000/0x4000",
            "-j",
            "ACCEPT",
        ]);
        self.ipt(&[
            "-A",
            "KUBE-FORWARD",
            "-m",
            "comment",
            "--comment",
            "kubernetes forwarding conntrack rule",
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-j",
            "ACCEPT",
        ]);
        self.ipt(&[
            "-I",
            "FORWARD",
            "1",
            "-m",
            "comment",
            "--comment",
            "kubernetes forwarding rules",
            "-j",
            "KUBE-FORWARD",
        ]);
    }

    /// Packets counted by KUBE-FORWARD's INVALID DROP rule.
    fn invalid_drops(&self) -> u64 {
        let out = self.ipt(&["-t", "filter", "-L", "KUBE-FORWARD", "-v", "-x", "-n"]);
        out.lines()
            .find(|l| l.contains("INVALID") && l.contains("DROP"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no INVALID DROP rule in KUBE-FORWARD:\n{out}"))
    }

    fn start_agent(&mut self, extra: &[&str]) {
        let n = self.agents.len();
        let stdout = self.sb.dir.join(format!("masq-agent-{n}.out"));
        let stderr = self.sb.dir.join(format!("masq-agent-{n}.err"));
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.sb.netns.display()))
            .arg(datapathd())
            .args(["run", "--cgroup", self.sb.cgroup_str(), "--services"])
            .arg(&self.sb.services)
            .args(["--bpffs", self.sb.bpffs_str()])
            .args(["--uplink", "upl0", "--node-addr", NODE_ADDR])
            .args([
                "--pod-cidr",
                "10.244.0.0/24",
                "--cluster-cidr",
                "10.244.0.0/16",
            ])
            .args(["--pod-iface-prefix", "lxc", "--forward-chain"])
            .args(extra);
        let child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("agent stdout"))
            .stderr(std::fs::File::create(&stderr).expect("agent stderr"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nsenter datapathd: {e}"));
        let mut agent = Agent {
            proc: Proc {
                what: format!("datapathd (masq) #{n}"),
                child,
            },
            stdout,
            stderr,
        };
        let ready = wait_for(Duration::from_secs(30), || {
            let out = std::fs::read_to_string(&agent.stdout).unwrap_or_default();
            if out.lines().any(|l| l.trim() == "datapathd: ready") {
                Some(true)
            } else if !agent.proc.running() {
                Some(false)
            } else {
                None
            }
        });
        assert_eq!(ready, Some(true), "datapathd not ready\n{}", agent.log());
        self.agents.push(agent);
    }

    fn logs(&self) -> String {
        self.agents
            .iter()
            .map(Agent::log)
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn connect(&self, count: u32, timeout_ms: u32) -> Vec<Attempt> {
        probe::connect_from(&self.pod.path, None, SERVER, "tcp", count, timeout_ms)
    }

    fn status(&self) -> serde_json::Value {
        let out = sh(&[
            "nsenter",
            &format!("--net={}", self.sb.netns.display()),
            datapathd().to_str().expect("utf-8 path"),
            "status",
            "--json",
            "--bpffs",
            self.sb.bpffs_str(),
        ]);
        assert!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    fn cleanup(&self) -> String {
        sh_ok(&[
            "nsenter",
            &format!("--net={}", self.sb.netns.display()),
            datapathd().to_str().expect("utf-8 path"),
            "cleanup",
            "--bpffs",
            self.sb.bpffs_str(),
            "--cgroup",
            self.sb.cgroup_str(),
        ])
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Processes first (by their own pid), then the tc/iptables state inside the node
        // namespace goes with the namespace; bpffs pins with the sandbox's cleanup.
        self.agents.clear();
        self.server = None;
        if self.sb.netns.exists() {
            let _ = sh(&[
                "nsenter",
                &format!("--net={}", self.sb.netns.display()),
                datapathd().to_str().unwrap_or("datapathd"),
                "cleanup",
                "--bpffs",
                self.sb.bpffs_str(),
            ]);
        }
    }
}

fn all_ok(what: &str, attempts: &[Attempt], w: &World) {
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| !a.ok).collect();
    assert!(
        failed.is_empty(),
        "{what}: {} of {} failed: {failed:#?}\nFORWARD: {:#?}\n{}",
        failed.len(),
        attempts.len(),
        w.forward(),
        w.logs()
    );
}

/// The jump to DP_FORWARD is rule 1 of FORWARD, and exactly once.
fn chain_first(w: &World) -> bool {
    let f = w.forward();
    f.first().is_some_and(|l| l.ends_with("-j DP_FORWARD"))
        && f.iter().filter(|l| l.ends_with("-j DP_FORWARD")).count() == 1
}

#[test]
fn pod_to_external_through_the_bpf_masquerade() {
    if !common::can_run("pod_to_external_through_the_bpf_masquerade") {
        return;
    }
    let mut w = World::new("masq");
    w.serve();
    // Without the agent the external host cannot answer the pod (no route back).
    let before = w.connect(1, 1000);
    assert!(
        !before[0].ok,
        "no masquerade yet, yet it worked: {before:?}"
    );

    w.start_agent(&[]);
    let got = w.connect(5, 3000);
    all_ok("pod -> external", &got, &w);
    for a in &got {
        let seen = a.seen_as.as_deref().unwrap_or("");
        assert!(
            seen.starts_with(&format!("{NODE_ADDR}:")),
            "the external server must see the node's address, saw {seen:?}: {a:?}"
        );
        let port: u16 = seen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        assert!(port >= 61000, "masquerade port outside the range: {a:?}");
    }
    let st = w.status();
    let m = &st["masquerade"];
    assert_eq!(m["node_addr"], NODE_ADDR, "{m:#}");
    assert_eq!(m["uplink"], "upl0", "{m:#}");
    assert!(m["nat_entries"].as_u64().unwrap_or(0) >= 5, "{m:#}");
    assert_eq!(m["pods"][0]["address"], POD_ADDR, "{m:#}");
    assert_eq!(m["pods"][0]["interface"], "lxct0", "{m:#}");
    assert_eq!(
        st["forward_chain"]["first"], true,
        "{:#}",
        st["forward_chain"]
    );

    // A restart keeps one attachment per direction and traffic keeps flowing.
    w.agents[0].proc.signal(libc::SIGTERM);
    assert!(w.agents[0]
        .proc
        .wait_exit(Duration::from_secs(10))
        .is_some());
    w.start_agent(&[]);
    all_ok("pod -> external after a restart", &w.connect(3, 3000), &w);
    let st = w.status();
    assert!(
        st["masquerade"]["problems"]
            .as_array()
            .is_some_and(|p| p.is_empty()),
        "{:#}",
        st["masquerade"]
    );

    // cleanup removes the chain, the jump and the tc programs: traffic stops.
    w.agents[0].proc.signal(libc::SIGTERM);
    w.agents[1].proc.signal(libc::SIGTERM);
    for a in &mut w.agents {
        a.proc.wait_exit(Duration::from_secs(10));
    }
    w.cleanup();
    assert!(
        !w.forward().iter().any(|l| l.contains("DP_FORWARD")),
        "{:?}",
        w.forward()
    );
    let after = w.connect(1, 1000);
    assert!(
        !after[0].ok,
        "masquerade still active after cleanup: {after:?}"
    );
}

#[test]
fn clsact_attachment_works_and_is_replaced_on_restart() {
    if !common::can_run("clsact_attachment_works_and_is_replaced_on_restart") {
        return;
    }
    let mut w = World::new("masq-clsact");
    w.serve();
    w.start_agent(&["--tc-attach", "clsact"]);
    all_ok("pod -> external (clsact)", &w.connect(3, 3000), &w);
    w.agents[0].proc.signal(libc::SIGKILL);
    w.agents[0].proc.wait_exit(Duration::from_secs(10));
    // The filters outlive the agent.
    all_ok("pod -> external, agent dead", &w.connect(2, 3000), &w);
    w.start_agent(&["--tc-attach", "clsact"]);
    let filters = sh_ok(&[
        "ip",
        "netns",
        "exec",
        w.node(),
        "tc",
        "filter",
        "show",
        "dev",
        "upl0",
        "egress",
    ]);
    let ours = filters
        .lines()
        .filter(|l| l.contains("dp_masq_egress"))
        .count();
    assert_eq!(ours, 1, "one filter of ours on egress: {filters}");
    all_ok(
        "pod -> external after restart (clsact)",
        &w.connect(2, 3000),
        &w,
    );
}

#[test]
fn chain_stays_first_and_once_after_someone_prepends() {
    if !common::can_run("chain_stays_first_and_once_after_someone_prepends") {
        return;
    }
    let mut w = World::new("masq-order");
    w.start_agent(&[]);
    assert!(chain_first(&w), "{:?}", w.forward());
    let rules = w.ipt(&["-S", "DP_FORWARD"]);
    assert_eq!(
        rules.lines().filter(|l| l.starts_with("-A")).count(),
        2,
        "{rules}"
    );
    // Someone else prepends.
    w.ipt(&["-N", "OTHER"]);
    w.ipt(&["-I", "FORWARD", "1", "-j", "OTHER"]);
    let restored = wait_for(Duration::from_secs(10), || chain_first(&w).then_some(()));
    assert!(
        restored.is_some(),
        "not restored: {:?}\n{}",
        w.forward(),
        w.logs()
    );
    assert_eq!(w.forward().len(), 2, "{:?}", w.forward());
    // A restart adds nothing twice.
    w.agents[0].proc.signal(libc::SIGTERM);
    w.agents[0].proc.wait_exit(Duration::from_secs(10));
    w.start_agent(&[]);
    assert!(chain_first(&w), "{:?}", w.forward());
    assert_eq!(w.forward().len(), 2, "{:?}", w.forward());
    let rules = w.ipt(&["-S", "DP_FORWARD"]);
    assert_eq!(
        rules.lines().filter(|l| l.starts_with("-A")).count(),
        2,
        "{rules}"
    );
}

/// The agent must never delete another component's rule, even when that component
/// inserts at the top of FORWARD while the agent reorders (a delete by rule number races
/// with the insert and removes the wrong rule: seen on the qemu tier as a vanished
/// KUBE-FORWARD jump).
#[test]
fn others_rules_survive_prepends_racing_the_reorder() {
    if !common::can_run("others_rules_survive_prepends_racing_the_reorder") {
        return;
    }
    let mut w = World::new("masq-race");
    w.start_agent(&[]);
    w.ipt(&["-N", "OTHER"]);
    // Prepend for a few reconcile periods, so reorders run while numbers keep moving.
    let until = std::time::Instant::now() + Duration::from_secs(8);
    let mut inserted = 0;
    while std::time::Instant::now() < until {
        let comment = format!("other {inserted}");
        w.ipt(&[
            "-I",
            "FORWARD",
            "1",
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            "OTHER",
        ]);
        inserted += 1;
    }
    let settled = wait_for(Duration::from_secs(10), || chain_first(&w).then_some(()));
    assert!(
        settled.is_some(),
        "not first: {:?}\n{}",
        w.forward(),
        w.logs()
    );
    let forward = w.forward();
    let others = forward.iter().filter(|l| l.ends_with("-j OTHER")).count();
    let ours = forward
        .iter()
        .filter(|l| l.ends_with("-j DP_FORWARD"))
        .count();
    assert_eq!(
        (others, ours),
        (inserted, 1),
        "FORWARD lost another component's rules or kept extra jumps of ours:\n{}",
        forward.join("\n")
    );
}

#[test]
fn kube_proxy_first_is_healed_by_the_agent() {
    if !common::can_run("kube_proxy_first_is_healed_by_the_agent") {
        return;
    }
    let mut w = World::new("masq-kp");
    w.serve();
    w.start_agent(&[]);
    // kube-proxy starts last: its KUBE-FORWARD goes first...
    w.kube_proxy();
    // ... and the agent puts DP_FORWARD back in front within seconds.
    let restored = wait_for(Duration::from_secs(10), || chain_first(&w).then_some(()));
    assert!(
        restored.is_some(),
        "not restored: {:?}\n{}",
        w.forward(),
        w.logs()
    );
    let drops = w.invalid_drops();
    all_ok("pod -> external with kube-proxy", &w.connect(5, 3000), &w);
    assert_eq!(
        w.invalid_drops(),
        drops,
        "INVALID DROP counted packets of a working flow"
    );
}

#[test]
fn mutant_kube_proxy_first_hangs_established_connections() {
    if !common::can_run("mutant_kube_proxy_first_hangs_established_connections") {
        return;
    }
    let mut w = World::new("masq-mut");
    w.serve();
    w.kube_proxy();
    w.start_agent(&["--mutant", "kube-proxy-first"]);
    let f = w.forward();
    assert!(
        f[0].contains("KUBE-FORWARD") && f[1].contains("DP_FORWARD"),
        "{f:?}"
    );
    let before = w.invalid_drops();
    let got = w.connect(1, 3000);
    let a = &got[0];
    assert!(!a.ok, "the mutant must break the flow: {a:?}");
    // The connection was established (connect returned, the peer is known), then the
    // request hung until the deadline: the signature of the incident.
    assert!(
        a.peer.is_some() && a.local.is_some(),
        "connection not established: {a:?}"
    );
    assert_eq!(a.errno, Some(libc::ETIMEDOUT), "{a:?}");
    let after = w.invalid_drops();
    assert!(
        after > before,
        "INVALID DROP counter did not grow ({before} -> {after})"
    );
    // The mutant never reorders: for longer than the correct agent's period (2 s), the
    // jump stays second.
    let reordered = wait_for(Duration::from_secs(5), || chain_first(&w).then_some(()));
    assert!(reordered.is_none(), "{:?}", w.forward());
}

/// A `dp-probe hold` from the pod to the external server: one long-lived TCP connection
/// through the masquerade, a request every 100 ms, one JSON line per event in a file.
struct Hold {
    /// Killed on drop.
    _proc: Proc,
    out: PathBuf,
}

impl Hold {
    fn start(w: &World) -> Hold {
        let out = w.sb.dir.join(format!(
            "hold-{}.jsonl",
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let child = Command::new(probe::binary())
            .args(["hold", "--to", SERVER, "--interval-ms", "100", "--netns"])
            .arg(&w.pod.path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("hold output"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dp-probe hold: {e}"));
        Hold {
            _proc: Proc {
                what: "dp-probe hold".into(),
                child,
            },
            out,
        }
    }

    fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn count(&self, event: &str) -> usize {
        self.events().iter().filter(|e| e["event"] == event).count()
    }

    /// Waits until `n` more answers than `after` came back; panics (with the events) when
    /// the connection ended or stalled for 10 s instead.
    fn answers_after(&self, after: usize, n: usize, what: &str) -> usize {
        let got = wait_for(Duration::from_secs(10), || {
            if self.count("ended") > 0 {
                return Some(Err(()));
            }
            let a = self.count("answered");
            (a >= after + n).then_some(Ok(a))
        });
        match got {
            Some(Ok(a)) => a,
            _ => panic!(
                "{what}: the held connection did not keep answering: {:#?}",
                self.events()
            ),
        }
    }
}

/// Stops the running agent (SIGTERM, as an upgrade does) and starts the next one with `args`.
fn replace_agent(w: &mut World, args: &[&str]) {
    let last = w.agents.len() - 1;
    w.agents[last].proc.signal(libc::SIGTERM);
    assert!(
        w.agents[last]
            .proc
            .wait_exit(Duration::from_secs(10))
            .is_some(),
        "agent did not stop on SIGTERM"
    );
    w.start_agent(args);
}

/// The pinned NAT maps' layout, value size and capacity as `status` reports them.
fn nat_shape(w: &World) -> (u64, u64, u64) {
    let m = &w.status()["masquerade"];
    let n = |k: &str| {
        m[k].as_u64()
            .unwrap_or_else(|| panic!("status masquerade.{k}: {m:#}"))
    };
    (n("map_layout"), n("nat_value_size"), n("nat_capacity"))
}

#[test]
fn masquerade_flows_survive_an_upgrade_and_a_downgrade() {
    if !common::can_run("masquerade_flows_survive_an_upgrade_and_a_downgrade") {
        return;
    }
    let mut w = World::new("masq-upgrade");
    w.serve();
    w.start_agent(&["--layout", "1", "--max-masq", "1000"]);
    assert_eq!(nat_shape(&w), (1, 8, 1000));
    let hold = Hold::start(&w);
    let a = hold.answers_after(0, 3, "at layout 1");

    replace_agent(&mut w, &["--layout", "2", "--max-masq", "1000"]);
    assert_eq!(nat_shape(&w), (2, 12, 2000), "upgraded maps");
    assert!(
        w.logs()
            .contains("migrating: entries copied into the new map"),
        "{}",
        w.logs()
    );
    let a = hold.answers_after(a, 5, "after the upgrade 1 -> 2");
    all_ok("a new flow at layout 2", &w.connect(2, 3000), &w);

    replace_agent(&mut w, &["--layout", "1", "--max-masq", "1000"]);
    assert_eq!(nat_shape(&w), (1, 8, 1000), "downgraded maps");
    hold.answers_after(a, 5, "after the downgrade 2 -> 1");
    all_ok("a new flow at layout 1", &w.connect(2, 3000), &w);
    // Only the current maps remain pinned: no pending pin, no second copy.
    let maps: Vec<String> = std::fs::read_dir(w.sb.bpffs.join("masq/maps"))
        .expect("masq maps dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert!(
        !maps.iter().any(|m| m.ends_with("-next")),
        "pending pins left: {maps:?}"
    );
}

#[test]
fn mutant_upgrade_recreates_maps_resets_held_flows() {
    if !common::can_run("mutant_upgrade_recreates_maps_resets_held_flows") {
        return;
    }
    let mut w = World::new("masq-upgrade-mutant");
    w.serve();
    w.start_agent(&["--layout", "1"]);
    let hold = Hold::start(&w);
    hold.answers_after(0, 3, "at layout 1");
    replace_agent(
        &mut w,
        &["--layout", "2", "--mutant", "upgrade-recreates-maps"],
    );
    assert_eq!(nat_shape(&w).0, 2);
    let ended = wait_for(Duration::from_secs(10), || {
        (hold.count("ended") > 0).then_some(())
    });
    assert!(
        ended.is_some(),
        "the held connection survived empty NAT maps: {:#?}",
        hold.events()
    );
}

#[test]
fn a_downgrade_whose_flows_do_not_fit_is_refused_and_the_datapath_keeps_running() {
    if !common::can_run(
        "a_downgrade_whose_flows_do_not_fit_is_refused_and_the_datapath_keeps_running",
    ) {
        return;
    }
    let mut w = World::new("masq-shrink");
    w.serve();
    // Layout 2 doubles the capacity: 8 entries; layout 1 would hold 4.
    w.start_agent(&["--layout", "2", "--max-masq", "4"]);
    all_ok("short flows", &w.connect(6, 3000), &w);
    let entries = w.status()["masquerade"]["nat_entries"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        entries > 4,
        "precondition: more flows than layout 1 holds, got {entries}"
    );
    let hold = Hold::start(&w);
    let a = hold.answers_after(0, 2, "at layout 2");

    let last = w.agents.len() - 1;
    w.agents[last].proc.signal(libc::SIGTERM);
    assert!(w.agents[last]
        .proc
        .wait_exit(Duration::from_secs(10))
        .is_some());
    let out = sh(&[
        "nsenter",
        &format!("--net={}", w.sb.netns.display()),
        datapathd().to_str().expect("utf-8 path"),
        "run",
        "--cgroup",
        w.sb.cgroup_str(),
        "--services",
        w.sb.services.to_str().expect("utf-8 path"),
        "--bpffs",
        w.sb.bpffs_str(),
        "--uplink",
        "upl0",
        "--node-addr",
        NODE_ADDR,
        "--pod-cidr",
        "10.244.0.0/24",
        "--cluster-cidr",
        "10.244.0.0/16",
        "--layout",
        "1",
        "--max-masq",
        "4",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("refusing to migrate dp_masq_")
            && err.contains("do not fit the new capacity 4"),
        "{err}"
    );
    assert_eq!(nat_shape(&w), (2, 12, 8), "the maps must be untouched");
    hold.answers_after(a, 3, "after the refused downgrade");
}
