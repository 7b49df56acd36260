//! What a suite is checked against besides its own structure: which faults and
//! invariants exist and what each needs. crate::registry implements it; the suite module
//! itself knows no fault or invariant, so that adding one touches only its own file and
//! the registry.

use super::step::{FaultName, FaultStep, InvariantName, Needs};
use super::{Scenario, Suite};

pub trait Catalog {
    /// Every fault a suite may name, in the order `harness list` shows them.
    fn fault_names(&self) -> Vec<String>;
    /// Every invariant a check step may name.
    fn invariant_names(&self) -> Vec<String>;
    /// What fault `name` needs; `None` when there is no such fault.
    fn fault_needs(&self, name: &FaultName) -> Option<Needs>;
    /// What invariant `name` needs; `None` when no check step can name it.
    fn invariant_needs(&self, name: &InvariantName) -> Option<Needs>;
    /// Invariants judged by the runner after every teardown: known to must-catch
    /// entries, never named in a check.
    fn judged_after_teardown(&self) -> Vec<InvariantName>;
    /// The fault's own rules for `step` of `scenario`, beyond its needs (`Err`: why not).
    fn validate_fault(
        &self,
        suite: &Suite,
        scenario: &Scenario,
        step: &FaultStep,
    ) -> Result<(), String>;
}
