//! Suite + seed -> the ordered, fully decided list of steps. One ChaCha generator, seeded
//! once, makes every choice (which node, which failpoint, which delays, which service
//! change) in plan order, so the same seed gives the same plan, byte for byte in JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use crate::fault::FaultPlan;
use crate::fault::{FaultError, PlanContext};
use crate::kernel::{KernelArg, KernelSpec};
use crate::suite::step::Condition;
use crate::suite::{InvariantName, Step, Suite};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub suite: String,
    pub suite_file: PathBuf,
    pub seed: u64,
    pub provider: String,
    pub mutant: Option<String>,
    pub repeat: Option<u32>,
    /// The suite's `topology.routing` (who wires pods, how pod traffic crosses nodes).
    #[serde(default)]
    pub routing: crate::suite::Routing,
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
        /// dp_sockhash's capacity when the suite sets it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_sockhash: Option<u32>,
        /// The agents' map layout when the suite sets one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent_layout: Option<u32>,
    },
    Fault {
        #[serde(flatten)]
        plan: FaultPlan,
        /// Invariants judged while the fault is active (absent in JSON when none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        during: Vec<InvariantName>,
        /// The step's `recover-within-s` (absent in JSON when unset).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recover_within_s: Option<u64>,
    },
    WaitFor {
        condition: Condition,
        timeout_s: u64,
    },
    Check {
        invariants: Vec<InvariantName>,
    },
}

/// Decides every step of `suite` with `seed`. Fails only when a fault's plan does not
/// serialize (a harness bug).
pub fn plan(
    suite: &Suite,
    suite_file: PathBuf,
    seed: u64,
    provider: &str,
    mutant: Option<&str>,
    repeat: Option<u32>,
) -> Result<Plan, FaultError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut scenarios = Vec::new();
    for sc in &suite.scenarios {
        let times = repeat.or(sc.repeat).unwrap_or(suite.repeat).max(1);
        for iteration in 1..=times {
            // Each iteration starts from the suite's services.
            let mut backends: BTreeMap<String, Vec<String>> = suite
                .services
                .iter()
                .map(|s| (s.name.clone(), s.backends.clone()))
                .collect();
            let mut steps = Vec::new();
            for st in &sc.steps {
                steps.push(match st {
                    Step::Deploy(d) => PlannedStep::Deploy {
                        accelerate: d.accelerate,
                        max_sockhash: d.max_sockhash,
                        agent_layout: d.agent_layout,
                    },
                    Step::WaitFor(w) => PlannedStep::WaitFor {
                        condition: w.condition,
                        timeout_s: w.timeout_s,
                    },
                    Step::Check(c) => PlannedStep::Check {
                        invariants: c.invariants.clone(),
                    },
                    Step::Fault(f) => {
                        let fault = crate::registry::fault(&f.name).ok_or_else(|| {
                            FaultError::Unsupported {
                                fault: "?",
                                reason: format!("no fault `{}` is registered", f.name),
                            }
                        })?;
                        let mut cx = PlanContext {
                            rng: &mut rng,
                            suite,
                            backends: &mut backends,
                        };
                        PlannedStep::Fault {
                            plan: fault.plan(&mut cx, f)?,
                            during: f.during.clone(),
                            recover_within_s: f.recover_within_s,
                        }
                    }
                });
            }
            scenarios.push(PlannedScenario {
                name: sc.name.clone(),
                iteration,
                steps,
            });
        }
    }
    Ok(Plan {
        suite: suite.name.clone(),
        suite_file,
        seed,
        provider: provider.to_string(),
        mutant: mutant.map(str::to_string),
        repeat,
        routing: suite.topology.routing,
        kernels: suite
            .topology
            .nodes
            .iter()
            .filter_map(|n| Some((n.name.clone(), n.kernel.clone()?)))
            .collect(),
        kernel_args: Vec::new(),
        junit_properties: Vec::new(),
        reports_dir: None,
        scenarios,
    })
}

impl PlannedStep {
    /// One line: the step with every planned parameter.
    pub fn describe(&self) -> String {
        match self {
            PlannedStep::Deploy {
                accelerate,
                max_sockhash,
                agent_layout,
            } => {
                let mut with = Vec::new();
                if *accelerate {
                    with.push(match max_sockhash {
                        Some(n) => {
                            format!("socket acceleration node <-> local pods, sockhash of {n}")
                        }
                        None => "socket acceleration node <-> local pods".into(),
                    });
                }
                if let Some(l) = agent_layout {
                    with.push(format!("agents at map layout {l}"));
                }
                if with.is_empty() {
                    "deploy".into()
                } else {
                    format!("deploy ({})", with.join("; "))
                }
            }
            PlannedStep::Fault {
                plan,
                during,
                recover_within_s,
            } => {
                let mut what = crate::registry::fault(&plan.fault)
                    .ok_or_else(|| format!("fault {} (not registered)", plan.fault))
                    .and_then(|f| f.describe(plan).map_err(|e| crate::errors::chain(&e)))
                    .unwrap_or_else(|e| e);
                if let Some(s) = recover_within_s {
                    what.push_str(&format!("; services back within {s} s of the heal"));
                }
                if during.is_empty() {
                    what
                } else {
                    format!(
                        "{what}; during it: {}",
                        during
                            .iter()
                            .map(|i| i.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            }
            PlannedStep::WaitFor {
                condition,
                timeout_s,
            } => format!("wait-for {condition:?} ({timeout_s} s)"),
            PlannedStep::Check { invariants } => format!(
                "check {}",
                invariants
                    .iter()
                    .map(|i| i.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

impl Plan {
    /// The topology the provider brings up: the suite's nodes and pods, with the plan's
    /// kernels.
    pub fn topology(&self, suite: &Suite) -> crate::cluster::Topology {
        let nodes = &suite.topology.nodes;
        crate::cluster::Topology {
            nodes: nodes.iter().map(|n| n.name.clone()).collect(),
            pods: nodes
                .iter()
                .flat_map(|n| {
                    n.pods.iter().map(|p| crate::cluster::PodSpec {
                        name: p.clone(),
                        node: n.name.clone(),
                    })
                })
                .collect(),
            kernels: self.kernels.clone(),
            routing: self.routing,
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
    use crate::fault::agent_restart::{AgentRestartMidAttach, RestartPlan, FAILPOINTS};
    use crate::fault::sockmap_leak::{SockmapLeak, SockmapLeakPlan, SOCKMAP_LEAK_PORTS};
    use crate::registry::Registry;
    use std::path::Path;

    fn sock_lb() -> Suite {
        Suite::load(&crate::suite::default_dir().join("sock-lb.yaml"), &Registry)
            .expect("sock-lb loads")
    }

    #[test]
    fn sockmap_leak_is_decided_from_the_seed() {
        let s = Suite::load(&crate::suite::default_dir().join("sockmap.yaml"), &Registry)
            .expect("sockmap loads");
        let leaks = |seed| -> Vec<SockmapLeakPlan> {
            plan(&s, "x".into(), seed, "netns", None, None)
                .expect("plans")
                .scenarios[0]
                .steps
                .iter()
                .filter_map(|st| match st {
                    PlannedStep::Fault { plan, .. } => {
                        plan.read::<SockmapLeak>().map(|r| r.expect("reads").0)
                    }
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
        let deploy = &plan(&s, "x".into(), 1, "netns", None, None)
            .expect("plans")
            .scenarios[0]
            .steps[0];
        assert_eq!(
            deploy,
            &PlannedStep::Deploy {
                accelerate: true,
                max_sockhash: None,
                agent_layout: None
            }
        );
        assert_eq!(
            serde_json::to_string(&PlannedStep::Deploy {
                accelerate: false,
                max_sockhash: None,
                agent_layout: None
            })
            .unwrap(),
            r#"{"step":"deploy"}"#,
            "histories without acceleration read as before"
        );
    }

    #[test]
    fn same_seed_same_plan() {
        let s = sock_lb();
        let a = plan(&s, "x".into(), 42, "netns", None, None).expect("plans");
        let b = plan(&s, "x".into(), 42, "netns", None, None).expect("plans");
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
            .map(|seed| plan(&s, "x".into(), seed, "netns", None, None).expect("plans"))
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
        )
        .expect("plans");
        assert_eq!(p.scenarios.len(), 3);
        let nodes: Vec<&str> = s.topology.nodes.iter().map(|n| n.name.as_str()).collect();
        for sc in &p.scenarios {
            let faults: Vec<RestartPlan> = sc
                .steps
                .iter()
                .filter_map(|st| match st {
                    PlannedStep::Fault { plan, .. } => plan
                        .read::<AgentRestartMidAttach>()
                        .map(|r| r.expect("reads").0),
                    _ => None,
                })
                .collect();
            assert_eq!(faults.len(), 1);
            let r = &faults[0];
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
        let mut p = plan(&s, "/a b/sock-lb.yaml".into(), 7, "qemu", None, None).expect("plans");
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
