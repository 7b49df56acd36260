//! The chaos and conformance harness for the eBPF datapath.
//!
//! Data flows one way: suite file -> plan (seeded) -> provider brings up a cluster ->
//! deploy datapath -> workload -> steps (faults, waits, checks) -> verdicts -> reports.
//! See ../shared/DESIGN.md and the README at the repository root.

pub mod checkout;
pub mod cli;
pub mod cluster;
pub mod errors;
pub mod event;
pub mod exit;
pub mod fault;
pub mod gate;
pub mod invariant;
pub mod kernel;
pub mod live;
pub mod mutate;
pub mod node;
pub mod observe;
pub mod plan;
pub mod provider;
pub mod registry;
pub mod report;
pub mod run;
pub mod signal;
pub mod state;
pub mod suite;
pub mod suite_run;

/// The workspace's one skip policy (a missing prerequisite fails under CI), for the unit
/// tests: the same code the harness's and the datapath's integration tests use.
#[cfg(test)]
pub(crate) use dp_test_support::skip as test_skip;
