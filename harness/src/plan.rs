//! Suite + seed -> the ordered, fully decided list of steps. One ChaCha generator, seeded
//! once, makes every choice (which node, which failpoint, which delays, which service
//! change) in plan order, so the same seed gives the same plan, byte for byte in JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::kernel::{KernelArg, KernelSpec};
use crate::suite::step::{Condition, FaultKind};
use crate::suite::{InvariantName, Step, Suite};

/// The start-up steps of datapathd at which `--failpoint` aborts it, in the order a start
/// reaches them (datapath/README.md). The run checks this list against
/// `datapathd failpoints` before it starts, so a drift is a harness error, not a silent
/// skip.
pub const FAILPOINTS: &[&str] = &[
    "after-pin-map:dp_services",
    "after-pin-map:dp_slots",
    "after-pin-map:dp_backends",
    "after-pin-map:dp_revnat",
    "after-pin-map:dp_meta",
    "after-load:connect4",
    "after-load:sendmsg4",
    "after-load:recvmsg4",
    "after-load:getpeername4",
    "after-attach:connect4",
    "after-pin-link:connect4",
    "after-attach:sendmsg4",
    "after-pin-link:sendmsg4",
    "after-attach:recvmsg4",
    "after-pin-link:recvmsg4",
    "after-attach:getpeername4",
    "after-pin-link:getpeername4",
    "before-first-fill",
    "after-first-fill",
];

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub suite: String,
    pub suite_file: PathBuf,
    pub seed: u64,
    pub provider: String,
    pub mutant: Option<String>,
    pub repeat: Option<u32>,
    /// The kernel of each node that asks for one: the suite's, overridden by `--kernel`.
    #[serde(default)]
    pub kernels: BTreeMap<String, KernelSpec>,
    /// `--kernel` as given (recorded for the replay line).
    #[serde(default)]
    pub kernel_args: Vec<String>,
    /// `--junit-property KEY=VALUE`, in order.
    #[serde(default)]
    pub junit_properties: Vec<(String, String)>,
    /// `--reports-dir`, canonical, when given.
    #[serde(default)]
    pub reports_dir: Option<PathBuf>,
    pub scenarios: Vec<PlannedScenario>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PlannedScenario {
    pub name: String,
    /// 1-based.
    pub iteration: u32,
    pub steps: Vec<PlannedStep>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "step")]
pub enum PlannedStep {
    Deploy {
        /// Socket acceleration of node <-> local pod TCP (absent in JSON when off, so
        /// histories of other suites read as before).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        accelerate: bool,
    },
    Fault(FaultPlan),
    WaitFor {
        condition: Condition,
        timeout_s: u64,
    },
    Check {
        invariants: Vec<InvariantName>,
    },
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "fault")]
pub enum FaultPlan {
    AgentRestartMidAttach(RestartPlan),
    KubeProxyOrderSwap(OrderSwapPlan),
    NodeReboot(NodeRebootPlan),
    LinkDegrade(LinkDegradePlan),
    SockmapLeak(SockmapLeakPlan),
}

/// Every decision of one sockmap-leak (incident C). On `node`, stale sockhash keys are
/// planted for the connections `node address:port` <-> `pod:port` whose node-side ports
/// are `base_port ..`: first `server_keys` keys as the pod's server socket will compute
/// them, then `client_keys` as the node's client socket will; then `churn` short
/// connections from `node address:base_port ..` (cycling over `churn_ports` ports, the
/// planted ones first) to the pod.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SockmapLeakPlan {
    pub node: String,
    /// A pod on `node` whose server answers TCP on `port`.
    pub pod: String,
    pub port: u16,
    pub base_port: u16,
    pub server_keys: u16,
    pub client_keys: u16,
    pub churn: u32,
    pub churn_ports: u16,
    /// Server-side keys planted on the block's last ports, which the churn leaves out:
    /// no connection ever replaces them, so only the agent's garbage collector removes
    /// them (0 in older histories).
    #[serde(default)]
    pub orphan_keys: u16,
}

impl SockmapLeakPlan {
    /// The node-side ports the churn cycles over: the block without its orphans.
    pub fn churn_range(&self) -> std::ops::Range<u16> {
        self.base_port..self.base_port + self.churn_ports - self.orphan_keys
    }
}

/// The node-side ports the sockmap-leak fault uses: below Linux's ephemeral range
/// (32768-60999), so no connection of anyone else's takes them by chance.
pub const SOCKMAP_LEAK_PORTS: std::ops::Range<u16> = 20000..30000;

/// Every decision of one node-reboot.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeRebootPlan {
    pub node: String,
}

/// Every decision of one link-degrade: netem on `node`'s cluster link for `hold_ms`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinkDegradePlan {
    pub node: String,
    pub delay_ms: u32,
    /// Loss in percent.
    pub loss_pct: u32,
    pub hold_ms: u64,
}

/// Every decision of one kube-proxy-order-swap: kube-proxy is first started on every node
/// after the datapath; then on `node` the `actions` run in this (seeded) order.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OrderSwapPlan {
    pub node: String,
    /// kube-proxy version and mode of the fixture (`1.30/iptables`).
    pub kube_proxy: String,
    pub actions: Vec<OrderSwapAction>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OrderSwapAction {
    /// Restart kube-proxy alone (it ensures its jumps; present ones stay where they are).
    RestartKubeProxy,
    /// Restart the agent alone (SIGTERM, start, ready).
    RestartAgent,
    /// Remove kube-proxy's rules and start it again (its jumps go back on top).
    FlushAndReadd,
    /// The reverse order: the agent's rules removed (`datapathd cleanup`), kube-proxy's
    /// in place, then the agent started.
    AgentAfterKubeProxy,
}

impl OrderSwapAction {
    pub const ALL: [OrderSwapAction; 4] = [
        OrderSwapAction::RestartKubeProxy,
        OrderSwapAction::RestartAgent,
        OrderSwapAction::FlushAndReadd,
        OrderSwapAction::AgentAfterKubeProxy,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            OrderSwapAction::RestartKubeProxy => "restart-kube-proxy",
            OrderSwapAction::RestartAgent => "restart-agent",
            OrderSwapAction::FlushAndReadd => "flush-and-readd",
            OrderSwapAction::AgentAfterKubeProxy => "agent-after-kube-proxy",
        }
    }
}

impl FaultPlan {
    pub fn kind(&self) -> FaultKind {
        match self {
            FaultPlan::AgentRestartMidAttach(_) => FaultKind::AgentRestartMidAttach,
            FaultPlan::KubeProxyOrderSwap(_) => FaultKind::KubeProxyOrderSwap,
            FaultPlan::NodeReboot(_) => FaultKind::NodeReboot,
            FaultPlan::LinkDegrade(_) => FaultKind::LinkDegrade,
            FaultPlan::SockmapLeak(_) => FaultKind::SockmapLeak,
        }
    }

    /// Does it act below the node's userland (its kernel restarts, its links), so that
    /// only a provider whose nodes are machines can inject it?
    pub fn needs_machines(&self) -> bool {
        matches!(self, FaultPlan::NodeReboot(_) | FaultPlan::LinkDegrade(_))
    }
}

/// Every decision of one agent-restart-mid-attach.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RestartPlan {
    pub node: String,
    /// SIGKILL the running agent after this many ms.
    pub kill_after_ms: u64,
    /// Then, with the agent down, the services change to this.
    pub service_change: ServiceChange,
    /// Then it is started with `--failpoint` this, and must die by SIGABRT there.
    pub failpoint: String,
    /// Then it is started again and SIGKILLed this many ms after the start (mid-attach or
    /// just after, whichever it reaches); the history records which.
    pub start_kill_after_ms: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServiceChange {
    pub service: String,
    pub backends: Vec<String>,
}

/// Decides every step of `suite` with `seed`.
pub fn plan(
    suite: &Suite,
    suite_file: PathBuf,
    seed: u64,
    provider: &str,
    mutant: Option<&str>,
    repeat: Option<u32>,
) -> Plan {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let nodes: Vec<&str> = suite
        .topology
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    let mut scenarios = Vec::new();
    for sc in &suite.scenarios {
        let times = repeat.or(sc.repeat).unwrap_or(suite.repeat).max(1);
        for iteration in 1..=times {
            // Each iteration starts from the suite's services.
            let mut current: BTreeMap<&str, Vec<String>> = suite
                .services
                .iter()
                .map(|s| (s.name.as_str(), s.backends.clone()))
                .collect();
            let mut steps = Vec::new();
            for st in &sc.steps {
                steps.push(match st {
                    Step::Deploy(d) => PlannedStep::Deploy {
                        accelerate: d.accelerate,
                    },
                    Step::WaitFor(w) => PlannedStep::WaitFor {
                        condition: w.condition,
                        timeout_s: w.timeout_s,
                    },
                    Step::Check(c) => PlannedStep::Check {
                        invariants: c.invariants.clone(),
                    },
                    Step::Fault(f) => match f.name {
                        FaultKind::AgentRestartMidAttach => {
                            let node = match &f.node {
                                Some(n) => n.clone(),
                                None => nodes.choose(&mut rng).copied().unwrap_or("").to_string(),
                            };
                            let kill_after_ms = rng.random_range(0..400);
                            let svc = &suite.services[rng.random_range(0..suite.services.len())];
                            let now = current.get(svc.name.as_str()).cloned().unwrap_or_default();
                            let next = change_backends(&mut rng, &svc.backends, &now);
                            current.insert(svc.name.as_str(), next.clone());
                            let failpoint = FAILPOINTS[rng.random_range(0..FAILPOINTS.len())];
                            let start_kill_after_ms = rng.random_range(0..150);
                            PlannedStep::Fault(FaultPlan::AgentRestartMidAttach(RestartPlan {
                                node,
                                kill_after_ms,
                                service_change: ServiceChange {
                                    service: svc.name.clone(),
                                    backends: next,
                                },
                                failpoint: failpoint.to_string(),
                                start_kill_after_ms,
                            }))
                        }
                        FaultKind::KubeProxyOrderSwap => {
                            let node = match &f.node {
                                Some(n) => n.clone(),
                                None => nodes.choose(&mut rng).copied().unwrap_or("").to_string(),
                            };
                            let mut actions = OrderSwapAction::ALL.to_vec();
                            actions.shuffle(&mut rng);
                            PlannedStep::Fault(FaultPlan::KubeProxyOrderSwap(OrderSwapPlan {
                                node,
                                kube_proxy: "1.30/iptables".into(),
                                actions,
                            }))
                        }
                        FaultKind::NodeReboot => {
                            let node = match &f.node {
                                Some(n) => n.clone(),
                                None => nodes.choose(&mut rng).copied().unwrap_or("").to_string(),
                            };
                            PlannedStep::Fault(FaultPlan::NodeReboot(NodeRebootPlan { node }))
                        }
                        FaultKind::LinkDegrade => {
                            let node = match &f.node {
                                Some(n) => n.clone(),
                                None => nodes.choose(&mut rng).copied().unwrap_or("").to_string(),
                            };
                            PlannedStep::Fault(FaultPlan::LinkDegrade(LinkDegradePlan {
                                node,
                                delay_ms: rng.random_range(50..200),
                                loss_pct: rng.random_range(5..30),
                                hold_ms: rng.random_range(500..2000),
                            }))
                        }
                        FaultKind::SockmapLeak => PlannedStep::Fault(FaultPlan::SockmapLeak(
                            plan_sockmap_leak(&mut rng, suite, f.node.as_deref()),
                        )),
                    },
                });
            }
            scenarios.push(PlannedScenario {
                name: sc.name.clone(),
                iteration,
                steps,
            });
        }
    }
    Plan {
        suite: suite.name.clone(),
        suite_file,
        seed,
        provider: provider.to_string(),
        mutant: mutant.map(str::to_string),
        repeat,
        kernels: suite.topology().kernels,
        kernel_args: Vec::new(),
        junit_properties: Vec::new(),
        reports_dir: None,
        scenarios,
    }
}

/// The pods that serve TCP, with the target port of the first TCP service each backs,
/// per node (suite order).
pub fn tcp_servers(suite: &Suite) -> Vec<(&str, &str, u16)> {
    let mut out = Vec::new();
    for n in &suite.topology.nodes {
        for p in &n.pods {
            if let Some(s) = suite
                .services
                .iter()
                .find(|s| s.protocol == crate::suite::Protocol::Tcp && s.backends.contains(p))
            {
                out.push((n.name.as_str(), p.as_str(), s.target_port));
            }
        }
    }
    out
}

/// Decides a sockmap-leak: the node (given, or from the seed among nodes with a local
/// TCP server), the pod, the ports, how many keys of each side, how much churn. The suite
/// was validated to have such a pod (an empty node name otherwise; the fault then says so).
fn plan_sockmap_leak(rng: &mut ChaCha8Rng, suite: &Suite, node: Option<&str>) -> SockmapLeakPlan {
    let servers: Vec<(&str, &str, u16)> = tcp_servers(suite)
        .into_iter()
        .filter(|(n, _, _)| node.is_none_or(|want| want == *n))
        .collect();
    let (node, pod, port) = servers.choose(rng).copied().unwrap_or(("", "", 0));
    let churn_ports: u16 = 1000;
    // A block of ports for this fault, aligned so that the whole block fits in the range.
    let blocks = (SOCKMAP_LEAK_PORTS.end - SOCKMAP_LEAK_PORTS.start) / churn_ports;
    let base_port = SOCKMAP_LEAK_PORTS.start + rng.random_range(0..blocks) * churn_ports;
    SockmapLeakPlan {
        node: node.to_string(),
        pod: pod.to_string(),
        port,
        base_port,
        server_keys: rng.random_range(2..=4),
        client_keys: rng.random_range(1..=3),
        // Thousands of short connections: each port is reused two or three times.
        churn: rng.random_range(2000..=3000),
        churn_ports,
        orphan_keys: rng.random_range(1..=3),
    }
}

/// A non-empty subset of `all` that differs from `now` when `all` has more than one.
fn change_backends(rng: &mut ChaCha8Rng, all: &[String], now: &[String]) -> Vec<String> {
    if all.len() <= 1 {
        return all.to_vec();
    }
    loop {
        let pick: Vec<String> = all
            .iter()
            .filter(|_| rng.random_bool(0.5))
            .cloned()
            .collect();
        if !pick.is_empty() && pick != now {
            return pick;
        }
    }
}

impl Plan {
    /// The topology the provider brings up: the suite's, with the plan's kernels.
    pub fn topology(&self, suite: &Suite) -> crate::cluster::Topology {
        crate::cluster::Topology {
            kernels: self.kernels.clone(),
            ..suite.topology()
        }
    }

    /// Applies `--kernel` arguments: one without a node is every node's kernel, one with
    /// a node is that node's (given later, it wins). A node the topology lacks is an error.
    pub fn set_kernels(&mut self, suite: &Suite, args: &[KernelArg]) -> Result<(), String> {
        for a in args {
            match &a.node {
                None => {
                    for n in &suite.topology.nodes {
                        self.kernels.insert(n.name.clone(), a.spec.clone());
                    }
                }
                Some(node) if suite.topology.nodes.iter().any(|n| &n.name == node) => {
                    self.kernels.insert(node.clone(), a.spec.clone());
                }
                Some(node) => {
                    return Err(format!(
                        "--kernel {a}: suite {} has no node `{node}` (nodes: {})",
                        suite.name,
                        suite
                            .topology
                            .nodes
                            .iter()
                            .map(|n| n.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
            }
            self.kernel_args.push(a.to_string());
        }
        Ok(())
    }

    /// The command that runs this plan again: this harness binary and the suite file by
    /// their canonical paths, and every flag that changes the run. `exact` are the
    /// kernels the nodes really booted (node -> exact package), when the provider knows
    /// them: they pin the replay to the same packages; else `--kernel` is repeated as given.
    pub fn replay_command(&self, exact: &BTreeMap<String, KernelSpec>) -> String {
        // A binary rebuilt while it runs (`cargo run` building its siblings) is
        // "<path> (deleted)" to the kernel; the path is what a replay runs.
        let program = std::env::current_exe()
            .map(|p| {
                let text = p.to_string_lossy();
                let live = text.strip_suffix(" (deleted)").map(PathBuf::from);
                crate::checkout::canonical(&live.unwrap_or(p))
            })
            .unwrap_or_else(|_| PathBuf::from("harness"));
        let mut args: Vec<String> = vec![
            program.display().to_string(),
            "suite".into(),
            crate::checkout::canonical(&self.suite_file)
                .display()
                .to_string(),
            "--provider".into(),
            self.provider.clone(),
            "--seed".into(),
            self.seed.to_string(),
        ];
        if let Some(r) = self.repeat {
            args.extend(["--repeat".into(), r.to_string()]);
        }
        if let Some(m) = &self.mutant {
            args.extend(["--datapath-mutant".into(), m.clone()]);
        }
        let distinct: std::collections::BTreeSet<&KernelSpec> = exact.values().collect();
        if exact.is_empty() {
            for k in &self.kernel_args {
                args.extend(["--kernel".into(), k.clone()]);
            }
        } else if let (1, Some(k)) = (distinct.len(), distinct.first()) {
            args.extend(["--kernel".into(), k.to_string()]);
        } else {
            for (node, k) in exact {
                args.extend(["--kernel".into(), format!("{node}:{k}")]);
            }
        }
        for (k, v) in &self.junit_properties {
            args.extend(["--junit-property".into(), format!("{k}={v}")]);
        }
        if let Some(d) = &self.reports_dir {
            args.extend(["--reports-dir".into(), d.display().to_string()]);
        }
        args.iter()
            .map(|a| shlex::try_quote(a).map_or_else(|_| a.clone(), |q| q.into_owned()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn sock_lb() -> Suite {
        Suite::load(&crate::suite::default_dir().join("sock-lb.yaml")).expect("sock-lb loads")
    }

    #[test]
    fn sockmap_leak_is_decided_from_the_seed() {
        let s =
            Suite::load(&crate::suite::default_dir().join("sockmap.yaml")).expect("sockmap loads");
        let leaks = |seed| -> Vec<SockmapLeakPlan> {
            plan(&s, "x".into(), seed, "netns", None, None).scenarios[0]
                .steps
                .iter()
                .filter_map(|st| match st {
                    PlannedStep::Fault(FaultPlan::SockmapLeak(p)) => Some(p.clone()),
                    _ => None,
                })
                .collect()
        };
        let all: Vec<SockmapLeakPlan> = (0..16).flat_map(leaks).collect();
        assert_eq!(all.len(), 16, "one leak per plan");
        for p in &all {
            let pod_node = s
                .topology
                .nodes
                .iter()
                .find(|n| n.pods.contains(&p.pod))
                .map(|n| n.name.as_str());
            assert_eq!(pod_node, Some(p.node.as_str()), "{p:?}: a local pod");
            assert_eq!(p.port, 8080);
            assert!(SOCKMAP_LEAK_PORTS.contains(&p.base_port));
            assert!(SOCKMAP_LEAK_PORTS.contains(&(p.base_port + p.churn_ports - 1)));
            assert!(p.server_keys + p.client_keys < p.churn_ports);
            assert!(p.churn >= 2000, "thousands of connections: {p:?}");
        }
        assert_eq!(leaks(3), leaks(3));
        assert!(all.windows(2).any(|w| w[0] != w[1]), "seeds differ");
        let deploy = &plan(&s, "x".into(), 1, "netns", None, None).scenarios[0].steps[0];
        assert_eq!(deploy, &PlannedStep::Deploy { accelerate: true });
        assert_eq!(
            serde_json::to_string(&PlannedStep::Deploy { accelerate: false }).unwrap(),
            r#"{"step":"deploy"}"#,
            "histories without acceleration read as before"
        );
    }

    #[test]
    fn same_seed_same_plan() {
        let s = sock_lb();
        let a = plan(&s, "x".into(), 42, "netns", None, None);
        let b = plan(&s, "x".into(), 42, "netns", None, None);
        assert_eq!(a, b);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
    }

    #[test]
    fn seeds_differ_somewhere() {
        let s = sock_lb();
        let plans: Vec<Plan> = (0..8)
            .map(|seed| plan(&s, "x".into(), seed, "netns", None, None))
            .collect();
        assert!(plans.windows(2).any(|w| w[0].scenarios != w[1].scenarios));
    }

    #[test]
    fn repeat_overrides_and_each_fault_is_fully_decided() {
        let s = sock_lb();
        let p = plan(
            &s,
            "x".into(),
            7,
            "netns",
            Some("stale-cgroup-prog"),
            Some(3),
        );
        assert_eq!(p.scenarios.len(), 3);
        let nodes: Vec<&str> = s.topology.nodes.iter().map(|n| n.name.as_str()).collect();
        for sc in &p.scenarios {
            let faults: Vec<&RestartPlan> = sc
                .steps
                .iter()
                .filter_map(|st| match st {
                    PlannedStep::Fault(FaultPlan::AgentRestartMidAttach(r)) => Some(r),
                    _ => None,
                })
                .collect();
            assert_eq!(faults.len(), 1);
            let r = faults[0];
            assert!(nodes.contains(&r.node.as_str()));
            assert!(FAILPOINTS.contains(&r.failpoint.as_str()));
            let svc = s
                .services
                .iter()
                .find(|x| x.name == r.service_change.service)
                .unwrap();
            assert!(!r.service_change.backends.is_empty());
            assert_ne!(
                r.service_change.backends, svc.backends,
                "the services change"
            );
        }
        assert!(p
            .replay_command(&BTreeMap::new())
            .ends_with("--seed 7 --repeat 3 --datapath-mutant stale-cgroup-prog"));
        let _ = Path::new("");
    }

    #[test]
    fn kernels_apply_to_every_node_then_per_node_and_the_replay_pins_exact_packages() {
        let s = sock_lb();
        let mut p = plan(&s, "/a b/sock-lb.yaml".into(), 7, "qemu", None, None);
        let args: Vec<KernelArg> = ["6.1", "node-b:5.10"]
            .iter()
            .map(|a| a.parse().expect("arg"))
            .collect();
        p.set_kernels(&s, &args).expect("known nodes");
        let k = |n: &str| p.kernels.get(n).map(ToString::to_string);
        assert_eq!(k("node-a").as_deref(), Some("6.1"));
        assert_eq!(k("node-b").as_deref(), Some("5.10"));
        assert_eq!(k("node-c").as_deref(), Some("6.1"));
        let e = p
            .set_kernels(&s, &["node-x:6.1".parse().expect("arg")])
            .expect_err("no such node");
        assert!(e.contains("node-x") && e.contains("node-a"), "{e}");

        let asked = p.replay_command(&BTreeMap::new());
        assert!(asked.contains(" '/a b/sock-lb.yaml' "), "{asked}");
        assert!(
            asked.ends_with("--kernel 6.1 --kernel node-b:5.10"),
            "{asked}"
        );
        let pkg = |v: &str| -> KernelSpec { v.parse().expect("package") };
        let same: BTreeMap<String, KernelSpec> = ["node-a", "node-b"]
            .iter()
            .map(|n| (n.to_string(), pkg("linux-image-6.1.0-57-amd64=6.1.192-3")))
            .collect();
        assert!(p
            .replay_command(&same)
            .ends_with("--kernel 'linux-image-6.1.0-57-amd64=6.1.192-3'"));
        let mut mixed = same.clone();
        mixed.insert(
            "node-b".into(),
            pkg("linux-image-5.10.0-32-amd64=5.10.223-1"),
        );
        let r = p.replay_command(&mixed);
        assert!(
            r.ends_with(
                "--kernel 'node-a:linux-image-6.1.0-57-amd64=6.1.192-3' \
                 --kernel 'node-b:linux-image-5.10.0-32-amd64=5.10.223-1'"
            ),
            "{r}"
        );
    }
}
