//! The runner and the fault lifecycle on a fake provider whose nodes answer every
//! command with nothing: what is tested is the order of the run's events, not the
//! datapath (the suites do that on real nodes).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::cluster::{Cluster, ClusterNode};
use crate::fault::noop::Noop;
use crate::fault::{Fault, FaultPlan};
use crate::node::{Exit, Node, NodeError, Output, Process, SpawnSpec};
use crate::provider::{Cleaned, Facts, Limitation};
use crate::suite::FaultName;

/// A node that runs nothing: every command "succeeds" with no output and is recorded;
/// it has no files.
/// `cancel_on`: a command that, when run, interrupts the run (as Ctrl-C would).
struct FakeNode {
    name: String,
    ran: Arc<Mutex<Vec<String>>>,
    cancel_on: Option<(&'static str, Cancel)>,
}

impl Node for FakeNode {
    fn name(&self) -> &str {
        &self.name
    }
    fn run(&self, argv: &[&str], _timeout: Duration) -> Result<Output, NodeError> {
        let line = argv.join(" ");
        if let Some((cmd, cancel)) = &self.cancel_on {
            if line.starts_with(cmd) {
                cancel.cancel();
            }
        }
        self.ran.lock().expect("lock").push(line);
        Ok(Output {
            stdout: Vec::new(),
            stderr: Vec::new(),
            exit: Exit::Code(0),
            duration: Duration::ZERO,
        })
    }
    fn spawn(&self, _spec: &SpawnSpec) -> Result<Box<dyn Process>, NodeError> {
        Err(NodeError::Other {
            node: self.name.clone(),
            message: "the fake node starts no process".into(),
        })
    }
    fn read_file(&self, path: &Path) -> Result<Vec<u8>, NodeError> {
        Err(NodeError::Other {
            node: self.name.clone(),
            message: format!("the fake node has no file {}", path.display()),
        })
    }
    fn write_file(&self, _path: &Path, _data: &[u8], _mode: u32) -> Result<(), NodeError> {
        Ok(())
    }
}

struct FakeProvider {
    ran: Arc<Mutex<Vec<String>>>,
    cancel_on: Option<(&'static str, Cancel)>,
    downs: Arc<Mutex<u32>>,
}

impl Provider for FakeProvider {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn up(&mut self, req: &UpRequest<'_>) -> Result<Cluster, ProviderError> {
        let nodes = req
            .topology
            .nodes
            .iter()
            .map(|n| ClusterNode {
                node: Arc::new(FakeNode {
                    name: n.clone(),
                    ran: self.ran.clone(),
                    cancel_on: self.cancel_on.clone(),
                }),
                cgroup: format!("/fake/{n}/cgroup").into(),
                bpffs: format!("/fake/{n}/bpffs").into(),
                services_dir: format!("/fake/{n}/services").into(),
                work_dir: format!("/fake/{n}/work").into(),
                datapathd: "/fake/datapathd".into(),
                dp_probe: "/fake/dp-probe".into(),
                net: None,
            })
            .collect();
        Ok(Cluster {
            nodes,
            pods: Vec::new(),
            external: None,
            pod_net: Default::default(),
        })
    }
    fn down(&mut self) -> Result<(), ProviderError> {
        *self.downs.lock().expect("lock") += 1;
        Ok(())
    }
    fn facts(&self) -> Facts {
        Facts::default()
    }
    fn limitations(&self) -> Vec<Limitation> {
        Vec::new()
    }
    fn clean_leftovers(&self) -> Result<Cleaned, ProviderError> {
        Ok(Cleaned::default())
    }
}

const SUITE: &str = "\
name: lifecycle
topology:
  nodes:
    - name: node-a
      pods: [pod-a]
services: []
scenarios:
  - name: noop
    steps:
      - deploy: {}
      - fault: {name: noop, during: [forward-chain-order]}
      - check: {invariants: [forward-chain-order]}
";

/// The plan of SUITE without its deploy step (the fake nodes run no agent).
fn plan_and_suite() -> (Plan, Suite) {
    let suite = Suite::parse(
        Path::new("lifecycle.yaml"),
        SUITE,
        &crate::registry::Registry,
    )
    .expect("the suite with a noop fault and a during check is valid");
    let mut plan =
        crate::plan::plan(&suite, "lifecycle.yaml".into(), 5, "fake", None, None).expect("plans");
    plan.scenarios[0].steps.remove(0);
    (plan, suite)
}

fn run(cancel_on: Option<&'static str>) -> (RunResult, Vec<String>, u32) {
    let (plan, suite) = plan_and_suite();
    let cancel = Cancel::new();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let downs = Arc::new(Mutex::new(0));
    let dir = tempfile::tempdir().expect("tempdir");
    let result = Runner {
        plan: &plan,
        suite: &suite,
        provider: Box::new(FakeProvider {
            ran: ran.clone(),
            cancel_on: cancel_on.map(|c| (c, cancel.clone())),
            downs: downs.clone(),
        }),
        binaries: Binaries {
            datapathd: "/fake/datapathd".into(),
            dp_probe: "/fake/dp-probe".into(),
            dp_remote: "/fake/dp-remote".into(),
        },
        run_dir: dir.path().to_path_buf(),
        cancel,
        keep: None,
        events: Events::new(Vec::new()),
        started: Instant::now(),
    }
    .run();
    let ran = ran.lock().expect("lock").clone();
    let downs = *downs.lock().expect("lock");
    (result, ran, downs)
}

/// The kind of each event, in order (`verdict` with the fault it was judged during).
fn kinds(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            Event::ScenarioStarted { .. } => "scenario-started".into(),
            Event::ScenarioSkipped { .. } => "scenario-skipped".into(),
            Event::Up { .. } => "up".into(),
            Event::StepStarted { .. } => "step-started".into(),
            Event::FaultStarted { .. } => "fault-started".into(),
            Event::FaultHealed { .. } => "fault-healed".into(),
            Event::Step { .. } => "step".into(),
            Event::Verdict {
                invariant, during, ..
            } => match during {
                Some(f) => format!("verdict {invariant} during {f}"),
                None => format!("verdict {invariant}"),
            },
            Event::Artifacts { .. } => "artifacts".into(),
            Event::Kept { .. } => "kept".into(),
            Event::Down { .. } => "down".into(),
            Event::Interrupted { .. } => "interrupted".into(),
        })
        .collect()
}

#[test]
fn a_fault_is_started_judged_during_and_healed_then_the_checks_follow() {
    let (r, ran, downs) = run(None);
    assert_eq!(r.outcome, Outcome::Completed, "{:?}", kinds(&r.events));
    assert_eq!(
        kinds(&r.events),
        [
            "scenario-started",
            "up",
            "step-started",
            "fault-started",
            "verdict forward-chain-order during noop",
            "fault-healed",
            "step",
            "step-started",
            "verdict forward-chain-order",
            "step",
            "down",
            "verdict host-clean-after-down",
        ]
    );
    assert!(
        ran.iter().any(|c| c.starts_with("iptables-save")),
        "the check observed the node: {ran:?}"
    );
    assert_eq!(downs, 1);
    let healed = r.events.iter().find_map(|e| match e {
        Event::FaultHealed {
            fault,
            proof,
            error,
            ..
        } => Some((fault.clone(), proof.clone(), error.clone())),
        _ => None,
    });
    assert_eq!(
        healed,
        Some((
            FaultName::new("noop"),
            vec!["nothing to heal".to_string()],
            None
        ))
    );
}

#[test]
fn interrupted_during_a_fault_the_fault_is_healed_and_the_cluster_taken_down() {
    // Ctrl-C while the `during` check observes the node.
    let (r, _, downs) = run(Some("iptables-save"));
    assert_eq!(r.outcome, Outcome::Interrupted);
    let k = kinds(&r.events);
    let started = k
        .iter()
        .position(|e| e == "fault-started")
        .expect("started");
    let healed = k.iter().position(|e| e == "fault-healed").expect("healed");
    assert!(started < healed, "{k:?}");
    assert!(k.contains(&"interrupted".to_string()), "{k:?}");
    assert!(
        !k.contains(&"verdict forward-chain-order".to_string()),
        "no check after the interruption: {k:?}"
    );
    assert_eq!(downs, 1, "taken down after the interruption");
}

#[test]
fn a_heal_guard_heals_when_dropped_and_once() {
    let healed = Arc::new(Mutex::new(0));
    let h = healed.clone();
    drop(crate::fault::Heal::with("test", move || {
        *h.lock().expect("lock") += 1;
        Ok(Vec::new())
    }));
    assert_eq!(*healed.lock().expect("lock"), 1, "dropped: healed");
    let h = healed.clone();
    let guard = crate::fault::Heal::with("test", move || {
        *h.lock().expect("lock") += 1;
        Ok(vec!["proof".into()])
    });
    assert_eq!(guard.heal().expect("heals"), vec!["proof".to_string()]);
    assert_eq!(
        *healed.lock().expect("lock"),
        2,
        "healed once, not again on drop"
    );
}

#[test]
fn a_fault_plan_reads_back_as_its_fault_and_refuses_what_it_does_not_know() {
    let (plan, _) = plan_and_suite();
    let PlannedStep::Fault {
        plan: p, during, ..
    } = &plan.scenarios[0].steps[0]
    else {
        panic!("the fault step comes first: {:?}", plan.scenarios[0].steps);
    };
    assert_eq!(during, &[crate::invariant::forward_chain_order::NAME]);
    let noop: Noop = p.read::<Noop>().expect("a noop plan").expect("reads");
    assert_eq!(noop.node, "node-a", "the only node, chosen from the seed");
    let mut odd: FaultPlan = p.clone();
    odd.params.insert("colour".into(), "red".into());
    assert!(
        matches!(odd.read::<Noop>(), Some(Err(FaultError::Plan { .. }))),
        "an unknown parameter is an error"
    );
    assert_eq!(
        p.read::<crate::fault::node_reboot::NodeReboot>()
            .map(|r| r.is_ok()),
        None,
        "not a node-reboot plan"
    );
    assert_eq!(
        plan.scenarios[0].steps[0].describe(),
        format!(
            "fault {} node=node-a; during it: forward-chain-order",
            Noop::NAME
        )
    );
}
