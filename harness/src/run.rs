//! Executes a plan: for each planned scenario iteration, provider up -> deploy -> steps ->
//! artifacts (on failure or interrupt, before cleanup) -> teardown -> host-clean judged.
//! Everything it does, decides and judges is an [`Event`]; the reports consume them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cluster::datapath::{Agent, READY_TIMEOUT};
use crate::cluster::service::ServiceState;
use crate::cluster::{in_parallel, in_parallel_mut, workload, Binaries, Cluster, ClusterNode};
use crate::event::{ErrorKind, ErrorReport, Event, Events};
use crate::fault::FaultError;
use crate::invariant::{self, host_clean, Judgement, Verdict};
use crate::live::Live;
use crate::node::NodeError;
use crate::observe::{bpf, features, host};
use crate::plan::{Plan, PlannedScenario, PlannedStep};
use crate::provider::{Provider, ProviderError, RunId, UpRequest};
use crate::signal::Cancel;
use crate::suite::step::Condition;
use crate::suite::{FaultName, InvariantName, Suite};

/// Why a step could not be done (a harness error, or an interruption).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Fault(#[from] FaultError),
    #[error(
        "datapathd on {node} ended with {exit} before it was ready (see its log in the artifacts)"
    )]
    AgentEnded { node: String, exit: String },
    #[error("node {0}: the provider gives no node address and pod CIDR, which acceleration needs")]
    NoNodeNetwork(String),
    #[error("an agent of node {0}, which the cluster does not have")]
    UnknownNode(String),
    #[error("fault {0} is not registered")]
    UnknownFault(FaultName),
    /// What a check observed could not be read (a tool's or dp-probe's output drifted):
    /// a harness error, never a verdict.
    #[error("{invariant}")]
    Unreadable {
        invariant: InvariantName,
        #[source]
        source: crate::observe::ObserveError,
    },
    #[error(transparent)]
    Pod(#[from] crate::cluster::pods::PodError),
    #[error("interrupted")]
    Interrupted,
}

impl StepError {
    fn kind(&self) -> ErrorKind {
        match self {
            StepError::Interrupted | StepError::Fault(FaultError::Interrupted) => {
                ErrorKind::Interrupted
            }
            _ => ErrorKind::Harness,
        }
    }
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
    /// Where every event goes (and is kept).
    pub events: Events,
    /// When the run started: events' `at_ms` count from here.
    pub started: Instant,
}

impl Runner<'_> {
    pub fn run(mut self) -> RunResult {
        let mut outcome = Outcome::Completed;
        for sc in &self.plan.scenarios {
            if self.cancel.is_cancelled() {
                outcome = Outcome::Interrupted;
                break;
            }
            match self.scenario(sc) {
                Outcome::Completed => {}
                o => {
                    outcome = o;
                    break;
                }
            }
        }
        RunResult {
            events: std::mem::take(&mut self.events.all),
            outcome,
            facts: self.provider.facts(),
            limitations: self.provider.limitations(),
            wall: self.started.elapsed(),
        }
    }

    /// Why this provider cannot run `sc` at all, if it cannot: a fault that needs nodes
    /// that are machines, on a provider whose nodes are not.
    fn cannot_run(&mut self, sc: &PlannedScenario) -> Option<String> {
        let agent_pods: Vec<&str> = sc
            .steps
            .iter()
            .filter_map(|st| match st {
                PlannedStep::Fault { plan, .. } => crate::registry::fault(&plan.fault),
                _ => None,
            })
            .filter(|f| f.needs().pod_routing)
            .map(|f| f.name())
            .collect();
        if let (Some(f), true) = (agent_pods.first(), self.plan.routing.is_kernel()) {
            return Some(format!(
                "fault {f} needs pods the agent wires: this suite has topology.routing kernel \
                 (native or vxlan give the agent the pods)"
            ));
        }
        let mut faults: Vec<&str> = sc
            .steps
            .iter()
            .filter_map(|st| match st {
                PlannedStep::Fault { plan, .. } => crate::registry::fault(&plan.fault),
                _ => None,
            })
            .filter(|f| f.needs().machines)
            .map(|f| f.name())
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

    fn scenario(&mut self, sc: &PlannedScenario) -> Outcome {
        let (name, it) = (sc.name.clone(), sc.iteration);
        if let Some(reason) = self.cannot_run(sc) {
            self.events.emit(Event::ScenarioSkipped {
                scenario: name.clone(),
                iteration: it,
                reason: reason.clone(),
            });
            let mut judged: Vec<&InvariantName> = Vec::new();
            for st in &sc.steps {
                let named = match st {
                    PlannedStep::Check { invariants } => invariants,
                    PlannedStep::Fault { during, .. } => during,
                    _ => continue,
                };
                for i in named {
                    if !judged.contains(&i) {
                        judged.push(i);
                    }
                }
            }
            for invariant in judged {
                self.events.emit(Event::Verdict {
                    scenario: name.clone(),
                    iteration: it,
                    invariant: invariant.clone(),
                    judgement: Judgement::skipped(reason.clone()),
                    ms: 0,
                    at_ms: ms(self.started),
                    during: None,
                });
            }
            return Outcome::Completed;
        }
        let id = RunId::fresh();
        let marker = self.provider.marker(&id);
        self.events.emit(Event::ScenarioStarted {
            scenario: name.clone(),
            iteration: it,
            marker: marker.clone(),
            provider: self.provider.name().to_owned(),
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
                self.events.emit(Event::Up {
                    scenario: name.clone(),
                    iteration: it,
                    ms: ms(t),
                    error: None,
                });
                c
            }
            Err(e) => {
                let interrupted =
                    matches!(e, ProviderError::Interrupted { .. }) || self.cancel.is_cancelled();
                let kind = if interrupted {
                    ErrorKind::Interrupted
                } else {
                    ErrorKind::Harness
                };
                self.events.emit(Event::Up {
                    scenario: name.clone(),
                    iteration: it,
                    ms: ms(t),
                    error: Some(ErrorReport::new(kind, &e)),
                });
                self.down(&name, it, &before, &marker, &bpf::Kernel::default());
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
            hold_connections: holds_connections(sc),
            healed: None,
        };
        let mut outcome = Outcome::Completed;
        for (i, step) in sc.steps.iter().enumerate() {
            if self.cancel.is_cancelled() {
                outcome = Outcome::Interrupted;
                break;
            }
            self.events.emit(Event::StepStarted {
                scenario: name.clone(),
                iteration: it,
                index: i,
                of: sc.steps.len(),
                description: step.describe(),
            });
            let t = Instant::now();
            let r = self.step(&mut live, step, &name, it, i);
            let (detail, error) = match r {
                Ok(d) => (d, None),
                Err(e) => {
                    let kind = if self.cancel.is_cancelled() {
                        ErrorKind::Interrupted
                    } else {
                        e.kind()
                    };
                    (Vec::new(), Some(ErrorReport::new(kind, &e)))
                }
            };
            let failed_step = error.as_ref().map(|e| e.kind);
            self.events.emit(Event::Step {
                scenario: name.clone(),
                iteration: it,
                index: i,
                step: step.clone(),
                ms: ms(t),
                at_ms: ms(self.started),
                detail,
                error,
            });
            if let Some(kind) = failed_step {
                outcome = match kind {
                    ErrorKind::Interrupted => Outcome::Interrupted,
                    ErrorKind::Harness => Outcome::HarnessError,
                };
                break;
            }
        }
        if self.cancel.is_cancelled() {
            outcome = Outcome::Interrupted;
            self.events.emit(Event::Interrupted {
                scenario: name.clone(),
                iteration: it,
            });
        }
        let failed = self.events.all.iter().any(|e| {
            matches!(e, Event::Verdict { scenario, iteration, judgement, .. }
                if scenario == &name && *iteration == it && judgement.verdict != Verdict::Pass)
        });
        self.events.scenario_ending(&name, it, &live);
        if failed || outcome != Outcome::Completed {
            self.events.scenario_failed(&name, it, &live);
        }
        live.remember();
        if self.keep != Some(Keep::Running) {
            live.stop_processes();
        }
        if let Some(keep) = self.keep {
            self.events.emit(Event::Kept {
                scenario: name.clone(),
                iteration: it,
                marker,
                running: keep == Keep::Running,
                how: self.provider.keep(),
            });
            return outcome;
        }
        self.down(&name, it, &before, &marker, &live.seen);
        outcome
    }

    fn down(
        &mut self,
        name: &str,
        it: u32,
        before: &host::HostSnapshot,
        marker: &str,
        seen: &bpf::Kernel,
    ) {
        let t = Instant::now();
        let r = self.provider.down();
        self.events.emit(Event::Down {
            scenario: name.into(),
            iteration: it,
            ms: ms(t),
            error: r
                .as_ref()
                .err()
                .map(|e| ErrorReport::new(ErrorKind::Harness, e)),
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
        self.events.emit(Event::Verdict {
            scenario: name.into(),
            iteration: it,
            invariant: host_clean::NAME,
            judgement: j,
            ms: ms(t),
            at_ms: ms(self.started),
            during: None,
        });
    }

    fn step(
        &mut self,
        live: &mut Live,
        step: &PlannedStep,
        name: &str,
        it: u32,
        index: usize,
    ) -> Result<Vec<String>, StepError> {
        match step {
            PlannedStep::Deploy {
                accelerate,
                max_sockhash,
                agent_layout,
            } => self.deploy(live, *accelerate, *max_sockhash, *agent_layout),
            PlannedStep::Fault {
                plan,
                during,
                recover_within_s,
            } => {
                let fault = crate::registry::fault(&plan.fault)
                    .ok_or_else(|| StepError::UnknownFault(plan.fault.clone()))?;
                let started = fault.start(plan, live, self.provider.machines())?;
                self.events.emit(Event::FaultStarted {
                    scenario: name.into(),
                    iteration: it,
                    index,
                    fault: plan.fault.clone(),
                    proof: started.proof,
                    at_ms: ms(self.started),
                });
                let mut judge = Judge {
                    events: &mut self.events,
                    cancel: &self.cancel,
                    started: self.started,
                    scenario: name,
                    iteration: it,
                };
                let judged = judge.all(live, during, Some(&plan.fault));
                // Healed here, or by the guard's drop on an early return.
                let healed = started.heal.heal();
                self.events.emit(Event::FaultHealed {
                    scenario: name.into(),
                    iteration: it,
                    index,
                    fault: plan.fault.clone(),
                    proof: healed.as_ref().cloned().unwrap_or_default(),
                    error: healed
                        .as_ref()
                        .err()
                        .map(|e| ErrorReport::new(ErrorKind::Harness, e)),
                    at_ms: ms(self.started),
                });
                let healed = healed.map(|_| {
                    live.healed = Some(invariant::recovers_within::Healed {
                        fault: plan.fault.clone(),
                        at: Instant::now(),
                        within: recover_within_s.map(Duration::from_secs),
                    });
                });
                live.remember();
                // The proofs are in the fault's own events.
                healed?;
                judged
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
                                .ok_or_else(|| StepError::UnknownNode(a.node.clone()))?;
                            let left = deadline.saturating_duration_since(Instant::now());
                            match a.wait_ready(cn, left)? {
                                Some(e) => Err(StepError::AgentEnded {
                                    node: cn.name().to_owned(),
                                    exit: e.to_string(),
                                }),
                                None => Ok(()),
                            }
                        });
                        results.into_iter().collect::<Result<(), StepError>>()?;
                        Ok(vec!["every agent ready".into()])
                    }
                    Condition::ServicesReachable => {
                        let inv = invariant::service_connectivity::ServiceConnectivity;
                        loop {
                            let ctx = invariant::Context {
                                cluster: &live.cluster,
                                services: &live.services,
                                healed: live.healed.as_ref(),
                            };
                            // Output the harness cannot read fails the step (exit 3).
                            let j = invariant::Invariant::check(&inv, &ctx).map_err(|source| {
                                StepError::Unreadable {
                                    invariant: invariant::Invariant::name(&inv),
                                    source,
                                }
                            })?;
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
                let mut judge = Judge {
                    events: &mut self.events,
                    cancel: &self.cancel,
                    started: self.started,
                    scenario: name,
                    iteration: it,
                };
                let detail = judge.all(live, invariants, None)?;
                live.remember();
                Ok(detail)
            }
        }
    }

    /// Writes the services, starts the backends and every node's agent.
    fn deploy(
        &mut self,
        live: &mut Live,
        accelerate: bool,
        max_sockhash: Option<u32>,
        agent_layout: Option<u32>,
    ) -> Result<Vec<String>, StepError> {
        live.accelerate = accelerate;
        live.write_services()?;
        // The agent wires the pods (routing native or vxlan): a server can only bind its
        // pod's address once the pod is added, after the agents are ready.
        let agent_wires_pods = !self.plan.routing.is_kernel();
        let mut detail = Vec::new();
        if let Some(l) = agent_layout {
            detail.push(format!(
                "every datapathd starts at map layout {l} (--layout {l})"
            ));
        }
        if !agent_wires_pods {
            detail.push(start_workload(live)?);
        }
        // Every node's agent starts at once; each is kept (for its logs and its
        // teardown) whether or not it became ready.
        let mut started: Vec<(ClusterNode, Agent)> = Vec::new();
        for cn in &live.cluster.nodes {
            let mut a = Agent::new(cn.name(), self.plan.mutant.as_deref());
            if live.accelerate {
                let net = cn
                    .net
                    .as_ref()
                    .ok_or_else(|| StepError::NoNodeNetwork(cn.name().to_owned()))?;
                a.extra_args = net.accelerate_args();
                detail.push(format!(
                    "datapathd on {} accelerates {}{}",
                    cn.name(),
                    a.extra_args
                        .iter()
                        .filter(|x| *x != "--accelerate")
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                    max_sockhash.map_or(String::new(), |n| format!(" (sockhash of {n})"))
                ));
                if let Some(n) = max_sockhash {
                    a.extra_args
                        .extend(["--max-sockhash".to_string(), n.to_string()]);
                }
            }
            if let Some(l) = agent_layout {
                a.extra_args.extend(["--layout".to_string(), l.to_string()]);
            }
            started.push((cn.clone(), a));
        }
        let results = in_parallel_mut(&mut started, |(cn, a)| {
            a.start(cn, None)?;
            a.wait_ready(cn, READY_TIMEOUT)
        });
        live.agents.extend(started.into_iter().map(|(_, a)| a));
        for (cn, r) in live.cluster.nodes.iter().zip(results) {
            if let Some(exit) = r? {
                return Err(StepError::AgentEnded {
                    node: cn.name().to_owned(),
                    exit: exit.to_string(),
                });
            }
            detail.push(format!("datapathd ready on {}", cn.name()));
        }
        if agent_wires_pods {
            detail.extend(crate::cluster::pods::add_all(&mut live.cluster)?);
            detail.push(start_workload(live)?);
        }
        if live.hold_connections {
            detail.push(crate::cluster::hold::start(
                &live.cluster,
                &live.services,
                &mut live.servers,
            )?);
        }
        live.remember();
        Ok(detail)
    }
}

/// Starts the pods' backend servers and the external host's.
fn start_workload(live: &mut Live) -> Result<String, StepError> {
    workload::start_servers(
        &live.cluster,
        &live.services,
        &mut live.servers,
        live.accelerate,
    )?;
    workload::start_external(&live.cluster, &mut live.servers)?;
    Ok(format!(
        "{} backend servers ready{}",
        live.servers.len(),
        if live.accelerate {
            " (in their pod cgroups)"
        } else {
            ""
        }
    ))
}

/// Does an invariant the scenario judges (in a check or a fault's `during`) need held
/// connections? Then the deploy opens them; nothing else in the scenario changes.
fn holds_connections(sc: &PlannedScenario) -> bool {
    sc.steps
        .iter()
        .flat_map(|st| match st {
            PlannedStep::Check { invariants } => invariants.as_slice(),
            PlannedStep::Fault { during, .. } => during.as_slice(),
            _ => &[],
        })
        .filter_map(crate::registry::invariant)
        .any(|i| i.suite_needs().held_connections)
}

/// Judges invariants on a live cluster and emits their verdicts.
struct Judge<'r> {
    events: &'r mut Events,
    cancel: &'r Cancel,
    started: Instant,
    scenario: &'r str,
    iteration: u32,
}

impl Judge<'_> {
    /// Judges `invariants` in order (skipped where a node's kernel lacks what one needs);
    /// `during`: the fault active meanwhile. Returns notes for the step's detail; an
    /// observation the harness cannot read ends it with an error (no verdict for it).
    fn all(
        &mut self,
        live: &Live,
        invariants: &[InvariantName],
        during: Option<&FaultName>,
    ) -> Result<Vec<String>, StepError> {
        let mut detail = Vec::new();
        let checks: Vec<_> = invariants
            .iter()
            .map(|i| crate::registry::invariant(i))
            .collect();
        let features = if checks.iter().flatten().any(|c| !c.needs().is_empty()) {
            in_parallel(&live.cluster.nodes, |cn| {
                features::of(cn.node.as_ref()).map_err(|e| crate::errors::chain(&e))
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
                .map(|c| lacking(&live.cluster, &features, c.needs()))
                .unwrap_or_default();
            let j = match check {
                _ if !lacking.is_empty() => Judgement::skipped(lacking.join("; ")),
                Some(c) => c
                    .check(&invariant::Context {
                        cluster: &live.cluster,
                        services: &live.services,
                        healed: live.healed.as_ref(),
                    })
                    .map_err(|source| StepError::Unreadable {
                        invariant: inv.clone(),
                        source,
                    })?,
                None => Judgement::unknown(format!("no invariant {inv} is registered")),
            };
            self.events.emit(Event::Verdict {
                scenario: self.scenario.into(),
                iteration: self.iteration,
                invariant: inv.clone(),
                judgement: j,
                ms: ms(t),
                at_ms: ms(self.started),
                during: during.cloned(),
            });
        }
        Ok(detail)
    }
}

/// What the nodes' kernels lack of `needs`, one line per node that lacks something. A
/// node whose features could not be probed is judged anyway (its probe error is in the
/// step's detail): skipping on an unknown would hide a failure.
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

fn ms(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests;
