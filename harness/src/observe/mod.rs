//! The judge's eyes: the kernel's own view (bpftool JSON, ip, iptables-save, ss, the
//! filesystem) and real traffic (dp-probe), read through a node. Every command the
//! harness runs on a node to observe it, and every parser of their output, lives here;
//! invariants only judge what this returns, and faults prove themselves with it. Shares
//! no code with datapath/agent; the agent's own `status --json` is only ever a
//! cross-check.

pub mod bpf;
pub mod error;
pub mod features;
pub mod hold;
pub mod host;
pub mod iptables;
pub mod pods;
pub mod probe;
pub mod reach;
pub mod sockhash;
pub mod ss;
pub mod tc;

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

#[cfg(test)]
mod tests {
    /// observe/ is below the invariants (they judge what it returns) and the faults prove
    /// themselves with it: neither may reach into invariant/ (it was a circle once).
    #[test]
    fn observe_and_faults_do_not_use_invariants() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        // Spelled in two pieces so that this file does not match itself.
        let needle = ["crate::", "invariant"].concat();
        let mut checked = 0;
        for dir in ["observe", "fault"] {
            for entry in std::fs::read_dir(src.join(dir)).expect("source directory") {
                let path = entry.expect("directory entry").path();
                if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).expect("source file");
                    assert!(!text.contains(&needle), "{} uses {needle}", path.display());
                    checked += 1;
                }
            }
        }
        assert!(checked > 10, "only {checked} files checked");
    }
}
