//! Executes a plan: for each planned scenario iteration, provider up -> deploy -> steps ->
//! artifacts (on failure or interrupt, before cleanup) -> teardown -> host-clean judged.
//! Every step, decision and verdict becomes an [`Event`]; the reports consume them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cluster::datapath::{Agent, READY_TIMEOUT};
use crate::cluster::service::{self, ServiceState};
use crate::cluster::workload::{self, Server};
use crate::cluster::{in_parallel, in_parallel_mut, Binaries, Cluster, ClusterNode};
use crate::invariant::{self, host_clean, Judgement, Verdict};
use crate::node::NodeError;
use crate::observe::{bpf, features, host};
use crate::plan::{Plan, PlannedStep};
use crate::provider::{Provider, RunId, UpRequest};
use crate::report::{artifacts, progress::Progress};
use crate::signal::Cancel;
use crate::suite::step::Condition;
use crate::suite::{InvariantName, Suite};

/// One entry of the history.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "event")]
pub enum Event {
    ScenarioStarted {
        scenario: String,
        iteration: u32,
        marker: String,
    },
    Up {
        scenario: String,
        iteration: u32,
        ms: u64,
        error: Option<String>,
    },
    Step {
        scenario: String,
        iteration: u32,
        index: usize,
        step: PlannedStep,
        ms: u64,
        /// When the step ended, in ms since the run started (0 in older histories).
        #[serde(default)]
        at_ms: u64,
        detail: Vec<String>,
        error: Option<String>,
    },
    Verdict {
        scenario: String,
        iteration: u32,
        invariant: InvariantName,
        judgement: Judgement,
        ms: u64,
        /// When the verdict was reached, in ms since the run started (0 in older
        /// histories): `harness mutate` times a fault to the first failure with it.
        #[serde(default)]
        at_ms: u64,
    },
    Artifacts {
        scenario: String,
        iteration: u32,
        dir: PathBuf,
    },
    Down {
        scenario: String,
        iteration: u32,
        ms: u64,
        error: Option<String>,
    },
    Interrupted {
        scenario: String,
        iteration: u32,
    },
}

/// The running state of one scenario iteration.
pub struct Live {
    pub cluster: Cluster,
    pub agents: Vec<Agent>,
    pub servers: Vec<Server>,
    pub services: Vec<ServiceState>,
    pub cancel: Cancel,
    /// bpf objects seen on the run's cgroups and pins (for host-clean-after-down).
    pub seen: bpf::Kernel,
    /// The deployment accelerates node <-> local pod TCP (`deploy: {accelerate: true}`):
    /// agents run with `--accelerate`, servers in their pod cgroups. Faults that restart
    /// either keep it.
    pub accelerate: bool,
}

impl Live {
    /// Writes the current services to every node's services directory.
    pub fn write_services(&self) -> Result<(), NodeError> {
        let y = service::to_yaml(&self.services, &self.cluster.pods);
        for cn in &self.cluster.nodes {
            cn.node
                .write_file(&cn.services_dir.join("services.yaml"), y.as_bytes(), 0o644)?;
        }
        Ok(())
    }

    pub fn set_backends(&mut self, svc: &str, backends: &[String]) -> Result<(), NodeError> {
        if let Some(s) = self.services.iter_mut().find(|s| s.name == svc) {
            s.backends = backends.to_vec();
        }
        self.write_services()
    }

    /// Records the bpf objects attributable to the run right now.
    fn remember(&mut self) {
        let observed = in_parallel(&self.cluster.nodes, |cn| {
            bpf::observe(cn.node.as_ref(), &cn.cgroup)
        });
        for (cn, obs) in self.cluster.nodes.iter().zip(observed) {
            let Ok((att, k)) = obs else {
                continue;
            };
            let b = format!("{}/", cn.bpffs.display());
            for a in att.iter().filter(|a| a.name.starts_with(bpf::PREFIX)) {
                if let Some(p) = k.progs.iter().find(|p| p.id == a.id) {
                    push_unique(&mut self.seen.progs, p.clone(), |x| x.id);
                    for m in k.maps.iter().filter(|m| p.map_ids.contains(&m.id)) {
                        push_unique(&mut self.seen.maps, m.clone(), |x| x.id);
                    }
                }
            }
            for m in k
                .maps
                .iter()
                .filter(|m| m.pinned.iter().any(|p| p.starts_with(&b)))
            {
                push_unique(&mut self.seen.maps, m.clone(), |x| x.id);
            }
            for l in k
                .links
                .iter()
                .filter(|l| l.pinned.iter().any(|p| p.starts_with(&b)))
            {
                push_unique(&mut self.seen.links, l.clone(), |x| x.id);
            }
        }
    }

    /// Stops agents (SIGTERM, then SIGKILL) and servers, by pid.
    fn stop_processes(&mut self) {
        for a in &mut self.agents {
            let _ = a.kill(libc::SIGTERM);
        }
        workload::stop_servers(&mut self.servers);
    }
}

fn push_unique<T>(v: &mut Vec<T>, x: T, key: impl Fn(&T) -> u32) {
    if !v.iter().any(|y| key(y) == key(&x)) {
        v.push(x);
    }
}

/// What the nodes' kernels lack of `needs`, one line per node that lacks something. A
/// node whose features could not be probed is judged anyway (its probe error is in the
/// progress output): skipping on an unknown would hide a failure.
fn lacking(
    cluster: &Cluster,
    features: &[Result<features::KernelFeatures, String>],
    needs: &[features::KernelNeed],
) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .zip(features)
        .filter_map(|(cn, f)| {
            let missing = f.as_ref().ok()?.missing(needs);
            (!missing.is_empty()).then(|| {
                format!(
                    "node {}'s kernel lacks {}",
                    cn.name(),
                    missing
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        })
        .collect()
}

/// How the whole run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    HarnessError,
    Interrupted,
}

pub struct RunResult {
    pub events: Vec<Event>,
    pub outcome: Outcome,
    pub facts: crate::provider::Facts,
    pub limitations: Vec<crate::provider::Limitation>,
    pub wall: Duration,
}

/// What `--keep` leaves up after each scenario instead of tearing it down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Keep {
    /// Nodes, pods, pins and VMs; agents and servers stopped (`--keep`).
    Cluster,
    /// The cluster and its agents and servers, still running (`--keep=running`).
    Running,
}

pub struct Runner<'a> {
    pub plan: &'a Plan,
    pub suite: &'a Suite,
    pub provider: Box<dyn Provider>,
    pub binaries: Binaries,
    pub run_dir: PathBuf,
    pub cancel: Cancel,
    pub keep: Option<Keep>,
    pub progress: Progress,
    /// When the run started: events' `at_ms` count from here.
    pub started: Instant,
}

impl Runner<'_> {
    pub fn run(mut self) -> RunResult {
        let start = self.started;
        let mut events = Vec::new();
        let mut outcome = Outcome::Completed;
        for sc in &self.plan.scenarios {
            if self.cancel.is_cancelled() {
                outcome = Outcome::Interrupted;
                break;
            }
            match self.scenario(sc, &mut events) {
                Outcome::Completed => {}
                o => {
                    outcome = o;
                    break;
                }
            }
        }
        RunResult {
            events,
            outcome,
            facts: self.provider.facts(),
            limitations: self.provider.limitations(),
            wall: start.elapsed(),
        }
    }

    /// Why this provider cannot run `sc` at all, if it cannot: a fault below the node's
    /// userland on nodes that are not machines.
    fn cannot_run(&mut self, sc: &crate::plan::PlannedScenario) -> Option<String> {
        let mut faults: Vec<&str> = sc
            .steps
            .iter()
            .filter_map(|st| match st {
                PlannedStep::Fault(f) if f.needs_machines() => Some(f.kind().as_str()),
                _ => None,
            })
            .collect();
        faults.dedup();
        if faults.is_empty() || self.provider.machines().is_some() {
            return None;
        }
        let name = self.provider.name();
        Some(format!(
            "fault {} needs nodes that are machines; provider {name} cannot inject it{}",
            faults.join(", "),
            self.suite
                .providers
                .get(name)
                .map(|n| format!(" ({})", n.trim()))
                .unwrap_or_default()
        ))
    }

    fn scenario(&mut self, sc: &crate::plan::PlannedScenario, ev: &mut Vec<Event>) -> Outcome {
        let (name, it) = (sc.name.clone(), sc.iteration);
        if let Some(reason) = self.cannot_run(sc) {
            self.progress
                .line(&format!("scenario {name} #{it}: skipped: {reason}"));
            let mut checked: Vec<InvariantName> = Vec::new();
            for st in &sc.steps {
                if let PlannedStep::Check { invariants } = st {
                    for i in invariants {
                        if !checked.contains(i) {
                            checked.push(*i);
                        }
                    }
                }
            }
            for invariant in checked {
                ev.push(Event::Verdict {
                    scenario: name.clone(),
                    iteration: it,
                    invariant,
                    judgement: Judgement::skipped(reason.clone()),
                    ms: 0,
                    at_ms: ms(self.started),
                });
            }
            return Outcome::Completed;
        }
        let id = RunId::fresh();
        let marker = format!("dph-{id}");
        self.progress.line(&format!(
            "scenario {name} #{it}: up ({}, marker {marker})",
            self.provider.name()
        ));
        ev.push(Event::ScenarioStarted {
            scenario: name.clone(),
            iteration: it,
            marker: marker.clone(),
        });
        let before = host::snapshot();
        let topo = self.plan.topology(self.suite);
        let t = Instant::now();
        let up = self.provider.up(&UpRequest {
            run_id: &id,
            topology: &topo,
            binaries: &self.binaries,
            run_dir: &self.run_dir,
            cancel: &self.cancel,
        });
        let cluster = match up {
            Ok(c) => {
                ev.push(Event::Up {
                    scenario: name.clone(),
                    iteration: it,
                    ms: ms(t),
                    error: None,
                });
                c
            }
            Err(e) => {
                let msg = chain(&e);
                self.progress
                    .line(&format!("scenario {name} #{it}: up failed: {msg}"));
                ev.push(Event::Up {
                    scenario: name.clone(),
                    iteration: it,
                    ms: ms(t),
                    error: Some(msg),
                });
                let interrupted = matches!(e, crate::provider::ProviderError::Interrupted { .. })
                    || self.cancel.is_cancelled();
                self.down(&name, it, ev, &before, &marker, &bpf::Kernel::default());
                return if interrupted {
                    Outcome::Interrupted
                } else {
                    Outcome::HarnessError
                };
            }
        };
        let mut live = Live {
            cluster,
            agents: Vec::new(),
            servers: Vec::new(),
            services: self.suite.services.iter().map(ServiceState::from).collect(),
            cancel: self.cancel.clone(),
            seen: bpf::Kernel::default(),
            accelerate: false,
        };
        let mut outcome = Outcome::Completed;
        let mut failed = false;
        for (i, step) in sc.steps.iter().enumerate() {
            if self.cancel.is_cancelled() {
                outcome = Outcome::Interrupted;
                break;
            }
            let t = Instant::now();
            self.progress.line(&format!(
                "scenario {name} #{it}: step {}/{}: {}",
                i + 1,
                sc.steps.len(),
                describe(step)
            ));
            let r = self.step(&mut live, step, &name, it, ev);
            let (detail, error) = match r {
                Ok(d) => (d, None),
                Err(e) => (Vec::new(), Some(e)),
            };
            for d in &detail {
                self.progress.line(&format!("    {d}"));
            }
            self.progress
                .line(&format!("    ({:.1} s)", t.elapsed().as_secs_f64()));
            ev.push(Event::Step {
                scenario: name.clone(),
                iteration: it,
                index: i,
                step: step.clone(),
                ms: ms(t),
                at_ms: ms(self.started),
                detail,
                error: error.clone(),
            });
            if let Some(e) = error {
                self.progress.line(&format!(
                    "scenario {name} #{it}: step {} failed: {e}",
                    i + 1
                ));
                outcome = if self.cancel.is_cancelled() {
                    Outcome::Interrupted
                } else {
                    Outcome::HarnessError
                };
                break;
            }
            failed |= ev.iter().any(|e| matches!(e, Event::Verdict { scenario, iteration, judgement, .. } if scenario == &name && *iteration == it && judgement.verdict != Verdict::Pass));
        }
        if self.cancel.is_cancelled() {
            outcome = Outcome::Interrupted;
            ev.push(Event::Interrupted {
                scenario: name.clone(),
                iteration: it,
            });
        }
        if failed || outcome != Outcome::Completed {
            let dir = self.run_dir.join("artifacts").join(format!("{name}-{it}"));
            self.progress.line(&format!(
                "scenario {name} #{it}: taking artifacts to {}",
                dir.display()
            ));
            artifacts::collect(&live, &dir);
            ev.push(Event::Artifacts {
                scenario: name.clone(),
                iteration: it,
                dir,
            });
        }
        live.remember();
        if self.keep != Some(Keep::Running) {
            live.stop_processes();
        }
        if let Some(keep) = self.keep {
            let what = match keep {
                Keep::Cluster => "cluster left up, agents and servers stopped",
                Keep::Running => "cluster left up with its agents and servers running",
            };
            self.progress.line(&format!(
                "scenario {name} #{it}: --keep: {what} (marker {marker}; `harness clean` removes it)"
            ));
            for how in self.provider.keep() {
                self.progress.line(&format!("    {how}"));
            }
            return outcome;
        }
        self.progress.line(&format!("scenario {name} #{it}: down"));
        self.down(&name, it, ev, &before, &marker, &live.seen);
        outcome
    }

    fn down(
        &mut self,
        name: &str,
        it: u32,
        ev: &mut Vec<Event>,
        before: &host::HostSnapshot,
        marker: &str,
        seen: &bpf::Kernel,
    ) {
        let t = Instant::now();
        let r = self.provider.down();
        ev.push(Event::Down {
            scenario: name.into(),
            iteration: it,
            ms: ms(t),
            error: r.as_ref().err().map(|e| chain(e)),
        });
        // Cgroup bpf programs are freed asynchronously after rmdir: poll with a deadline.
        let t = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(10);
        let j = loop {
            let now = bpf::kernel(&crate::node::netns::NetnsNode::host());
            let j = match now {
                Ok(k) => host_clean::judge(before, &host::snapshot(), marker, seen, &k, &[]),
                Err(e) => Judgement::unknown(format!("cannot observe the host: {e}")),
            };
            if j.verdict == Verdict::Pass || Instant::now() >= deadline {
                break j;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        self.progress.line(&format!(
            "scenario {name} #{it}: host-clean-after-down: {:?} {}",
            j.verdict, j.summary
        ));
        ev.push(Event::Verdict {
            scenario: name.into(),
            iteration: it,
            invariant: InvariantName::HostCleanAfterDown,
            judgement: j,
            ms: ms(t),
            at_ms: ms(self.started),
        });
    }

    fn step(
        &mut self,
        live: &mut Live,
        step: &PlannedStep,
        name: &str,
        it: u32,
        ev: &mut Vec<Event>,
    ) -> Result<Vec<String>, String> {
        match step {
            PlannedStep::Deploy { accelerate } => {
                live.accelerate = *accelerate;
                live.write_services().map_err(|e| chain(&e))?;
                workload::start_servers(
                    &live.cluster,
                    &live.services,
                    &mut live.servers,
                    live.accelerate,
                )
                .map_err(|e| chain(&e))?;
                workload::start_external(&live.cluster, &mut live.servers)
                    .map_err(|e| chain(&e))?;
                let mut detail = vec![format!(
                    "{} backend servers ready{}",
                    live.servers.len(),
                    if live.accelerate {
                        " (in their pod cgroups)"
                    } else {
                        ""
                    }
                )];
                // Every node's agent starts at once; each is kept (for its logs and its
                // teardown) whether or not it became ready.
                let mut started: Vec<(ClusterNode, Agent)> = Vec::new();
                for cn in &live.cluster.nodes {
                    let mut a = Agent::new(cn.name(), self.plan.mutant.as_deref());
                    if live.accelerate {
                        let net = cn.net.as_ref().ok_or_else(|| {
                            format!(
                                "node {}: the provider gives no node address and pod CIDR, which acceleration needs",
                                cn.name()
                            )
                        })?;
                        a.extra_args = net.accelerate_args();
                        detail.push(format!(
                            "datapathd on {} accelerates {}",
                            cn.name(),
                            a.extra_args
                                .iter()
                                .filter(|x| *x != "--accelerate")
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                    started.push((cn.clone(), a));
                }
                let results = in_parallel_mut(&mut started, |(cn, a)| {
                    a.start(cn, None)?;
                    a.wait_ready(cn, READY_TIMEOUT)
                });
                live.agents.extend(started.into_iter().map(|(_, a)| a));
                for (cn, r) in live.cluster.nodes.iter().zip(results) {
                    if let Some(exit) = r.map_err(|e| chain(&e))? {
                        return Err(format!("datapathd on {} ended with {exit} before it was ready (see its log in the artifacts)", cn.name()));
                    }
                    detail.push(format!("datapathd ready on {}", cn.name()));
                }
                live.remember();
                Ok(detail)
            }
            PlannedStep::Fault(f) => {
                let fault = crate::fault::from_plan(f);
                let rec = fault
                    .inject_with(live, self.provider.machines())
                    .map_err(|e| chain(&e))?;
                live.remember();
                Ok(rec.proof)
            }
            PlannedStep::WaitFor {
                condition,
                timeout_s,
            } => {
                let deadline = Instant::now() + Duration::from_secs(*timeout_s);
                match condition {
                    Condition::AgentsReady => {
                        let cluster = &live.cluster;
                        let results = in_parallel_mut(&mut live.agents, |a| {
                            let cn = cluster
                                .node(&a.node)
                                .ok_or_else(|| format!("agent of an unknown node {}", a.node))?;
                            let left = deadline.saturating_duration_since(Instant::now());
                            match a.wait_ready(cn, left).map_err(|e| chain(&e))? {
                                Some(e) => {
                                    Err(format!("datapathd on {} ended with {e}", cn.name()))
                                }
                                None => Ok(()),
                            }
                        });
                        results.into_iter().collect::<Result<(), String>>()?;
                        Ok(vec!["every agent ready".into()])
                    }
                    Condition::ServicesReachable => {
                        let inv = invariant::service_connectivity::ServiceConnectivity;
                        loop {
                            let ctx = invariant::Context {
                                cluster: &live.cluster,
                                services: &live.services,
                            };
                            // Output the harness cannot read fails the step (exit 3).
                            let j =
                                invariant::Invariant::check(&inv, &ctx).map_err(|e| chain(&e))?;
                            if j.verdict == Verdict::Pass {
                                return Ok(vec!["every pod reaches every service".into()]);
                            }
                            if Instant::now() >= deadline
                                || !self.cancel.sleep(Duration::from_millis(200))
                            {
                                // Not an error: the checks that follow judge it.
                                return Ok(vec![format!(
                                    "not reachable within {timeout_s} s: {}",
                                    j.summary
                                )]);
                            }
                        }
                    }
                }
            }
            PlannedStep::Check { invariants } => {
                let mut detail = Vec::new();
                let checks: Vec<_> = invariants.iter().map(|i| invariant::by_name(*i)).collect();
                let features = if checks.iter().flatten().any(|c| !c.needs().is_empty()) {
                    in_parallel(&live.cluster.nodes, |cn| {
                        features::of(cn.node.as_ref()).map_err(|e| chain(&e))
                    })
                } else {
                    Vec::new()
                };
                for (cn, f) in live.cluster.nodes.iter().zip(&features) {
                    if let Err(e) = f {
                        detail.push(format!(
                            "{}: kernel features unknown ({e}): every invariant judged",
                            cn.name()
                        ));
                    }
                }
                for (inv, check) in invariants.iter().zip(checks) {
                    if self.cancel.is_cancelled() {
                        break;
                    }
                    let t = Instant::now();
                    let lacking = check
                        .as_ref()
                        .map(|c| lacking(&live.cluster, &features, c.needs()))
                        .unwrap_or_default();
                    let j = match check {
                        _ if !lacking.is_empty() => Judgement::skipped(lacking.join("; ")),
                        // A harness error (output it cannot read) fails the step: no
                        // verdict is recorded for it (exit 3, not 1).
                        Some(c) => c
                            .check(&invariant::Context {
                                cluster: &live.cluster,
                                services: &live.services,
                            })
                            .map_err(|e| format!("{inv}: {}", chain(&e)))?,
                        None => Judgement::unknown(format!(
                            "{inv} is judged after teardown, not in a check step"
                        )),
                    };
                    detail.push(format!("{inv}: {:?} {}", j.verdict, j.summary));
                    for e in j.evidence.iter().take(5) {
                        detail.push(format!("    {e}"));
                    }
                    ev.push(Event::Verdict {
                        scenario: name.into(),
                        iteration: it,
                        invariant: *inv,
                        judgement: j,
                        ms: ms(t),
                        at_ms: ms(self.started),
                    });
                }
                live.remember();
                Ok(detail)
            }
        }
    }
}

pub fn describe(s: &PlannedStep) -> String {
    match s {
        PlannedStep::Deploy { accelerate: false } => "deploy".into(),
        PlannedStep::Deploy { accelerate: true } => {
            "deploy (socket acceleration node <-> local pods)".into()
        }
        PlannedStep::Fault(crate::plan::FaultPlan::AgentRestartMidAttach(r)) => format!(
            "fault agent-restart-mid-attach node={} kill-after={}ms failpoint={} change={}->[{}] start-kill-after={}ms",
            r.node, r.kill_after_ms, r.failpoint, r.service_change.service, r.service_change.backends.join(","), r.start_kill_after_ms
        ),
        PlannedStep::Fault(crate::plan::FaultPlan::KubeProxyOrderSwap(p)) => format!(
            "fault kube-proxy-order-swap node={} kube-proxy={} actions={}",
            p.node,
            p.kube_proxy,
            p.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(",")
        ),
        PlannedStep::Fault(crate::plan::FaultPlan::NodeReboot(p)) => {
            format!("fault node-reboot node={}", p.node)
        }
        PlannedStep::Fault(crate::plan::FaultPlan::SockmapLeak(p)) => format!(
            "fault sockmap-leak node={} target={}:{} planted server-side={} client-side={} from port {} churn={} over ports {}-{} orphans={}",
            p.node,
            p.pod,
            p.port,
            p.server_keys,
            p.client_keys,
            p.base_port,
            p.churn,
            p.churn_range().start,
            p.churn_range().end - 1,
            p.orphan_keys
        ),
        PlannedStep::Fault(crate::plan::FaultPlan::LinkDegrade(p)) => format!(
            "fault link-degrade node={} delay={}ms loss={}% hold={}ms",
            p.node, p.delay_ms, p.loss_pct, p.hold_ms
        ),
        PlannedStep::WaitFor { condition, timeout_s } => format!("wait-for {condition:?} ({timeout_s} s)"),
        PlannedStep::Check { invariants } => format!(
            "check {}",
            invariants.iter().map(|i| i.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn ms(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

/// An error and its causes, each once.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
