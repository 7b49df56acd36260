//! Faults: what is injected, where (decided by the plan from the seed), the proof that it
//! took effect, and its heal. One file per fault, each a type that implements [`Fault`]
//! and is listed once in crate::registry; the list, `harness list`, suite validation,
//! planning and the step's description all come from there. A fault that cannot prove it
//! happened is a harness error, not a pass.
//!
//! A fault's life: [`Fault::plan`] decides every parameter from the seed (the value is the
//! fault, serialized into the plan); [`Fault::start`] injects and proves it and returns
//! a [`Heal`] guard; the runner judges the step's `during` invariants while the fault is
//! active, then heals it. The guard heals on drop too, so an interrupted or failed step
//! never leaves a fault in place.

pub mod agent_restart;
pub mod agent_upgrade;
pub mod bpffs_remount;
pub mod kube_proxy_order_swap;
pub mod link_degrade;
pub mod map_pressure;
pub mod node_reboot;
pub mod noop;
pub mod partition;
pub mod pod_churn;
pub mod sockmap_leak;

use std::collections::BTreeMap;
use std::marker::PhantomData;

use rand_chacha::ChaCha8Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::live::Live;
use crate::provider::Machines;
use crate::suite::{FaultName, FaultStep, Needs, Scenario, Suite};

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("fault {fault} on node {node}: {what}")]
    NotProved {
        fault: &'static str,
        node: String,
        what: String,
    },
    #[error("fault {fault} on node {node}: {what}")]
    Node {
        fault: &'static str,
        node: String,
        what: String,
        #[source]
        source: Box<crate::node::NodeError>,
    },
    #[error("fault {fault}: this provider cannot do it: {reason}")]
    Unsupported { fault: &'static str, reason: String },
    #[error("fault {fault} on node {node}: {what}")]
    Provider {
        fault: &'static str,
        node: String,
        what: String,
        #[source]
        source: Box<crate::provider::ProviderError>,
    },
    /// The plan holds parameters this fault does not read (a history from another
    /// version of the harness, or an edited one).
    #[error("fault {fault}: its planned parameters do not read: {source}")]
    Plan {
        fault: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("fault interrupted")]
    Interrupted,
}

/// A fault at work on one node: the errors it returns name both, and the node is looked
/// up in the live cluster once.
#[derive(Debug, Clone)]
pub struct Site {
    pub fault: &'static str,
    pub node: String,
}

impl Site {
    pub fn new(fault: &'static str, node: &str) -> Site {
        Site {
            fault,
            node: node.to_owned(),
        }
    }

    /// The fault could not be shown to have taken effect (or to have healed).
    pub fn not_proved(&self, what: impl Into<String>) -> FaultError {
        FaultError::NotProved {
            fault: self.fault,
            node: self.node.clone(),
            what: what.into(),
        }
    }

    /// For `map_err`: a command of the fault on the node failed while doing `what`.
    pub fn node_error(&self, what: &str) -> impl FnOnce(crate::node::NodeError) -> FaultError {
        let (fault, node, what) = (self.fault, self.node.clone(), what.to_owned());
        move |source| FaultError::Node {
            fault,
            node,
            what,
            source: Box::new(source),
        }
    }

    /// The node the fault acts on, as the live cluster has it.
    pub fn cluster_node(&self, live: &Live) -> Result<crate::cluster::ClusterNode, FaultError> {
        live.cluster
            .node(&self.node)
            .cloned()
            .ok_or_else(|| self.not_proved("no such node"))
    }
}

/// What planning a fault sees: the seeded generator (every choice comes from it, in plan
/// order), the suite, and the backends each service has at this point of the scenario
/// (faults that change services plan from, and update, this).
pub struct PlanContext<'a> {
    pub rng: &'a mut ChaCha8Rng,
    pub suite: &'a Suite,
    pub backends: &'a mut BTreeMap<String, Vec<String>>,
}

impl PlanContext<'_> {
    /// The step's node, or one chosen from the seed.
    pub fn node(&mut self, step: &FaultStep) -> String {
        use rand::seq::IndexedRandom;
        match &step.node {
            Some(n) => n.clone(),
            None => {
                let nodes: Vec<&str> = self
                    .suite
                    .topology
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect();
                nodes.choose(self.rng).copied().unwrap_or("").to_string()
            }
        }
    }
}

/// One fault. The implementing type is the fault's fully decided plan: it is serialized
/// into the plan and the history, and read back for a replay.
pub trait Fault: Serialize + DeserializeOwned + Sized + 'static {
    /// Its name in suites (kebab-case).
    const NAME: &'static str;
    /// One line for `harness list`.
    const ABOUT: &'static str;
    /// What it needs of the suite and the provider.
    fn needs() -> Needs {
        Needs::default()
    }
    /// Rules for a step of `scenario` beyond [`Fault::needs`] (`Err`: why the suite is wrong).
    fn validate(_suite: &Suite, _scenario: &Scenario, _step: &FaultStep) -> Result<(), String> {
        Ok(())
    }
    /// Decides every parameter from the seed.
    fn plan(cx: &mut PlanContext<'_>, step: &FaultStep) -> Self;
    /// One line: what will be done, with every planned parameter.
    fn describe(&self) -> String;
    /// Injects the fault and proves it took effect. `machines` is the provider's machine
    /// layer (`None` when its nodes are not machines). What is left to undo goes into the
    /// returned guard.
    fn start<'m>(
        &self,
        live: &mut Live,
        machines: Option<&'m mut dyn Machines>,
    ) -> Result<Started<'m>, FaultError>;
}

/// The proof lines of an injection, gathered as it goes.
#[derive(Debug, Clone, Default)]
pub struct FaultRecord {
    /// One line per thing done and proved (which process died how, where).
    pub proof: Vec<String>,
}

/// A fault that is active: the proof that it took effect, and its heal.
pub struct Started<'m> {
    pub proof: Vec<String>,
    pub heal: Heal<'m>,
}

impl Started<'_> {
    /// A fault whose injection already ended (a restart, a reboot): its proof, nothing
    /// left to heal.
    pub fn ended(fault: &'static str, record: FaultRecord) -> Self {
        Started {
            proof: record.proof,
            heal: Heal::nothing(fault),
        }
    }
}

type HealFn<'m> = Box<dyn FnOnce() -> Result<Vec<String>, FaultError> + 'm>;

/// Undoes a fault: explicitly with [`Heal::heal`] (which returns the proof of the heal),
/// or when dropped (an interrupted or failed step).
#[must_use = "a fault is healed when its guard is healed or dropped"]
pub struct Heal<'m> {
    fault: &'static str,
    action: Option<HealFn<'m>>,
}

impl<'m> Heal<'m> {
    /// A fault whose injection already ended (a restart, a reboot): nothing left to undo.
    pub fn nothing(fault: &'static str) -> Heal<'m> {
        Heal {
            fault,
            action: None,
        }
    }

    /// Heals with `action`, which proves the heal in its lines.
    pub fn with(
        fault: &'static str,
        action: impl FnOnce() -> Result<Vec<String>, FaultError> + 'm,
    ) -> Heal<'m> {
        Heal {
            fault,
            action: Some(Box::new(action)),
        }
    }

    pub fn heal(mut self) -> Result<Vec<String>, FaultError> {
        match self.action.take() {
            Some(a) => a(),
            None => Ok(vec![format!("{}: nothing left to heal", self.fault)]),
        }
    }
}

impl Drop for Heal<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.action.take() {
            if let Err(e) = a() {
                eprintln!(
                    "harness: healing {} after the step ended early failed: {}",
                    self.fault,
                    crate::errors::chain(&e)
                );
            }
        }
    }
}

/// A planned fault as the plan and the history hold it: its name and its parameters
/// (the fault type's fields).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FaultPlan {
    pub fault: FaultName,
    #[serde(flatten)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

impl FaultPlan {
    /// The parameters as fault `F` (`None` when the plan is of another fault).
    pub fn read<F: Fault>(&self) -> Option<Result<F, FaultError>> {
        (self.fault.as_str() == F::NAME).then(|| {
            serde_json::from_value(serde_json::Value::Object(self.params.clone())).map_err(
                |source| FaultError::Plan {
                    fault: F::NAME.into(),
                    source,
                },
            )
        })
    }
}

/// A registered fault, whatever its type: what the registry holds.
pub trait AnyFault: Sync {
    fn name(&self) -> &'static str;
    fn about(&self) -> &'static str;
    fn needs(&self) -> Needs;
    fn validate(&self, suite: &Suite, scenario: &Scenario, step: &FaultStep) -> Result<(), String>;
    fn plan(&self, cx: &mut PlanContext<'_>, step: &FaultStep) -> Result<FaultPlan, FaultError>;
    fn describe(&self, plan: &FaultPlan) -> Result<String, FaultError>;
    fn start<'m>(
        &self,
        plan: &FaultPlan,
        live: &mut Live,
        machines: Option<&'m mut dyn Machines>,
    ) -> Result<Started<'m>, FaultError>;
}

/// The registry's handle on fault `F`.
pub struct Entry<F>(PhantomData<fn() -> F>);

/// The registry entry of fault `F` (crate::registry lists these).
pub const fn entry<F: Fault>() -> Entry<F> {
    Entry(PhantomData)
}

impl<F: Fault> Entry<F> {
    fn read(&self, plan: &FaultPlan) -> Result<F, FaultError> {
        plan.read::<F>().unwrap_or_else(|| {
            Err(FaultError::Plan {
                fault: F::NAME.into(),
                source: serde::de::Error::custom(format!(
                    "the plan is of fault {}, not {}",
                    plan.fault,
                    F::NAME
                )),
            })
        })
    }
}

impl<F: Fault> AnyFault for Entry<F> {
    fn name(&self) -> &'static str {
        F::NAME
    }
    fn about(&self) -> &'static str {
        F::ABOUT
    }
    fn needs(&self) -> Needs {
        F::needs()
    }
    fn validate(&self, suite: &Suite, scenario: &Scenario, step: &FaultStep) -> Result<(), String> {
        F::validate(suite, scenario, step)
    }
    fn plan(&self, cx: &mut PlanContext<'_>, step: &FaultStep) -> Result<FaultPlan, FaultError> {
        let value = serde_json::to_value(F::plan(cx, step)).map_err(|source| FaultError::Plan {
            fault: F::NAME.into(),
            source,
        })?;
        let serde_json::Value::Object(params) = value else {
            return Err(FaultError::Plan {
                fault: F::NAME.into(),
                source: serde::de::Error::custom("a fault's plan must serialize to a map"),
            });
        };
        Ok(FaultPlan {
            fault: FaultName::new(F::NAME),
            params,
        })
    }
    fn describe(&self, plan: &FaultPlan) -> Result<String, FaultError> {
        Ok(format!("fault {} {}", F::NAME, self.read(plan)?.describe()))
    }
    fn start<'m>(
        &self,
        plan: &FaultPlan,
        live: &mut Live,
        machines: Option<&'m mut dyn Machines>,
    ) -> Result<Started<'m>, FaultError> {
        self.read(plan)?.start(live, machines)
    }
}
