//! The judge's eyes: the kernel's own view (bpftool JSON, ip, iptables-save, ss, the
//! filesystem) and real traffic (dp-probe), read through a node. Every command the
//! harness runs on a node to observe it, and every parser of their output, lives here;
//! invariants only judge what this returns, and faults prove themselves with it. Shares
//! no code with datapath/agent; the agent's own `status --json` is only ever a
//! cross-check.

pub mod bpf;
pub mod error;
pub mod features;
pub mod host;
pub mod iptables;
pub mod probe;
pub mod sockhash;
pub mod ss;

use std::time::Duration;

pub use error::ObserveError;

use crate::node::Node;

/// Runs `argv` on `node`; its standard output if it exited 0.
pub(crate) fn run_ok(
    node: &dyn Node,
    argv: &[&str],
    timeout: Duration,
) -> Result<String, ObserveError> {
    let out = node.run(argv, timeout)?;
    if !out.success() {
        return Err(ObserveError::failed(node.name(), argv, &out));
    }
    Ok(out.stdout_str())
}
