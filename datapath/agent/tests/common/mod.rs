//! Shared helpers of the datapath's acceptance tests (datapath/agent/tests/*.rs).
//!
//! Every test runs in a [`sandbox::Sandbox`]: its own network namespace, a fresh cgroup v2
//! directory, its own bpffs directory and its own services directory, all with unique
//! names and all removed on drop, also when the test fails. Backends are `dp-probe serve`
//! on 127.0.0.x inside the namespace; clients are `dp-probe connect --netns --cgroup`;
//! service addresses are in 127.0.0.0/8, so nothing ever leaves the namespace.
//!
//! The tests need root, bpffs, cgroup v2, bpftool and the `dp-probe` binary built next to
//! `datapathd` (`cargo nextest run --workspace` builds both). Without root they skip with
//! a message, except under CI, where that is a failure (the workspace's one skip policy,
//! test-support/src/skip.rs).
#![allow(dead_code)] // Each test file uses a different part of these helpers.

pub mod bpftool;
pub mod check;
pub mod probe;
pub mod sandbox;
pub mod yaml;

pub use dp_test_support::skip;

use std::time::{Duration, Instant};

/// Polls `cond` every 50 ms until it returns `Some`, or gives up after `limit` with `None`.
pub fn wait_for<T>(limit: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True when the test may run; otherwise says why (a failure under CI, see [`skip`]).
pub fn can_run(test: &str) -> bool {
    match skip::not_root(
        "BPF programs, cgroups, network namespaces; run as root, e.g. `sudo -E cargo nextest run --workspace`",
    ) {
        Some(why) => {
            skip::skip(&format!("{test}: {why}"));
            false
        }
        None => true,
    }
}
