//! The run's events: everything the runner does, decides and judges, in order. They are
//! the backbone of the reports: the progress output and the artifact collection consume
//! them as they happen; the history, the JUnit and the GitHub summary are built from
//! the whole list.

use std::path::PathBuf;

use crate::invariant::Judgement;
use crate::live::Live;
use crate::plan::PlannedStep;
use crate::suite::{FaultName, InvariantName};

/// One entry of the history.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "event")]
pub enum Event {
    ScenarioStarted {
        scenario: String,
        iteration: u32,
        marker: String,
        #[serde(default)]
        provider: String,
    },
    /// The provider cannot run the scenario at all (a fault it cannot inject); its
    /// invariants follow as skipped verdicts.
    ScenarioSkipped {
        scenario: String,
        iteration: u32,
        reason: String,
    },
    Up {
        scenario: String,
        iteration: u32,
        ms: u64,
        error: Option<ErrorReport>,
    },
    StepStarted {
        scenario: String,
        iteration: u32,
        index: usize,
        /// How many steps the scenario has.
        of: usize,
        description: String,
    },
    /// A fault was injected and proved; it is active until its `FaultHealed`.
    FaultStarted {
        scenario: String,
        iteration: u32,
        index: usize,
        fault: FaultName,
        proof: Vec<String>,
        at_ms: u64,
    },
    FaultHealed {
        scenario: String,
        iteration: u32,
        index: usize,
        fault: FaultName,
        proof: Vec<String>,
        error: Option<ErrorReport>,
        at_ms: u64,
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
        error: Option<ErrorReport>,
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
        /// Judged while this fault was active (a fault step's `during`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        during: Option<FaultName>,
    },
    Artifacts {
        scenario: String,
        iteration: u32,
        dir: PathBuf,
    },
    /// `--keep`: the cluster is left up instead of torn down.
    Kept {
        scenario: String,
        iteration: u32,
        marker: String,
        /// Agents and servers left running too (`--keep=running`).
        running: bool,
        /// How to reach what was kept, as the provider says it.
        how: Vec<String>,
    },
    Down {
        scenario: String,
        iteration: u32,
        ms: u64,
        error: Option<ErrorReport>,
    },
    Interrupted {
        scenario: String,
        iteration: u32,
    },
}

impl Event {
    /// The scenario and iteration it belongs to.
    pub fn scenario(&self) -> (&str, u32) {
        match self {
            Event::ScenarioStarted {
                scenario,
                iteration,
                ..
            }
            | Event::ScenarioSkipped {
                scenario,
                iteration,
                ..
            }
            | Event::Up {
                scenario,
                iteration,
                ..
            }
            | Event::StepStarted {
                scenario,
                iteration,
                ..
            }
            | Event::FaultStarted {
                scenario,
                iteration,
                ..
            }
            | Event::FaultHealed {
                scenario,
                iteration,
                ..
            }
            | Event::Step {
                scenario,
                iteration,
                ..
            }
            | Event::Verdict {
                scenario,
                iteration,
                ..
            }
            | Event::Artifacts {
                scenario,
                iteration,
                ..
            }
            | Event::Kept {
                scenario,
                iteration,
                ..
            }
            | Event::Down {
                scenario,
                iteration,
                ..
            }
            | Event::Interrupted {
                scenario,
                iteration,
            } => (scenario, *iteration),
        }
    }
}

/// An error as the events carry it: what kind of ending it is, and the whole message
/// (the error and its causes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorReport {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The harness could not do what the step asked (boot, deploy, inject, observe).
    Harness,
    /// SIGINT/SIGTERM stopped it.
    Interrupted,
}

impl ErrorReport {
    pub fn new(kind: ErrorKind, e: &dyn std::error::Error) -> ErrorReport {
        ErrorReport {
            kind,
            message: crate::errors::chain(e),
        }
    }
}

impl std::fmt::Display for ErrorReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Takes the events as they happen.
pub trait Consumer {
    fn event(&mut self, event: &Event);
    /// A scenario failed or was interrupted and its cluster is still up: take from it
    /// what is needed later. Returns the directory written, if any (an `Artifacts` event
    /// follows).
    fn scenario_failed(
        &mut self,
        _scenario: &str,
        _iteration: u32,
        _live: &Live,
    ) -> Option<PathBuf> {
        None
    }
    /// Every scenario, pass or fail, while its cluster is still up: take what the report
    /// always holds (every pod's wiring). Returns the directory written, if any.
    fn scenario_ending(
        &mut self,
        _scenario: &str,
        _iteration: u32,
        _live: &Live,
    ) -> Option<PathBuf> {
        None
    }
}

/// The events so far, and the consumers each new one goes to.
#[derive(Default)]
pub struct Events {
    pub all: Vec<Event>,
    consumers: Vec<Box<dyn Consumer>>,
}

impl Events {
    pub fn new(consumers: Vec<Box<dyn Consumer>>) -> Events {
        Events {
            all: Vec::new(),
            consumers,
        }
    }

    pub fn emit(&mut self, event: Event) {
        for c in &mut self.consumers {
            c.event(&event);
        }
        self.all.push(event);
    }

    /// Lets every consumer take what it needs from a failed scenario's cluster.
    pub fn scenario_ending(&mut self, scenario: &str, iteration: u32, live: &Live) {
        let dirs: Vec<PathBuf> = self
            .consumers
            .iter_mut()
            .filter_map(|c| c.scenario_ending(scenario, iteration, live))
            .collect();
        for dir in dirs {
            self.emit(Event::Artifacts {
                scenario: scenario.to_owned(),
                iteration,
                dir,
            });
        }
    }

    pub fn scenario_failed(&mut self, scenario: &str, iteration: u32, live: &Live) {
        let dirs: Vec<PathBuf> = self
            .consumers
            .iter_mut()
            .filter_map(|c| c.scenario_failed(scenario, iteration, live))
            .collect();
        for dir in dirs {
            self.emit(Event::Artifacts {
                scenario: scenario.to_owned(),
                iteration,
                dir,
            });
        }
    }
}
