//! The chaos and conformance harness for the eBPF datapath.
//!
//! Data flows one way: suite file -> plan (seeded) -> provider brings up a cluster ->
//! deploy datapath -> workload -> steps (faults, waits, checks) -> verdicts -> reports.
//! See ../shared/DESIGN.md and the README at the repository root.

pub mod cli;
pub mod cluster;
pub mod exit;
pub mod node;
pub mod plan;
pub mod report;
pub mod run;
pub mod fault;
pub mod provider;
pub mod signal;
pub mod state;
pub mod suite;
pub mod invariant;
pub mod observe;
