//! Starting a host process so that it is recorded before it can outlive the harness.
//!
//! A child is started as `sh -c 'read -r _ || exit 125; exec "$@"' sh PROGRAM ARGS...`
//! with a pipe as its stdin: it waits for one line before it becomes PROGRAM (same pid,
//! same start time). The harness records (pid, start time) in the run's state file and
//! only then writes that line. If the harness dies in between, the pipe closes, `read`
//! fails and the child exits without ever running PROGRAM: there is no moment at which
//! a process of the run exists and the state file does not list it.

use std::ffi::OsStr;
use std::io::Write as _;
use std::process::{Child, Command, Stdio};

use crate::state::StateFile;

const GATE: &str = "read -r _ || exit 125; exec \"$@\"";

/// `program` behind the gate; add its arguments, stdout and stderr, then [`spawn`].
/// Leave stdin alone: the gate uses it.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", GATE, "sh"]).arg(program);
    c
}

/// What to do with the child's stdin once it runs its program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdin {
    /// Closed: the program reads end-of-file.
    Closed,
    /// Kept in `Child::stdin` for the caller (a protocol on stdin).
    Kept,
}

/// Starts `cmd` (made by [`command`]), records it in `state` as `what`, then lets it run.
/// When recording fails, the child is stopped before it ran anything and the error is
/// returned.
pub fn spawn(
    cmd: &mut Command,
    state: &StateFile,
    what: &str,
    stdin: Stdin,
) -> std::io::Result<Child> {
    let mut child = cmd.stdin(Stdio::piped()).spawn()?;
    let pid = child.id();
    let recorded = crate::state::start_time(pid)
        .ok_or_else(|| std::io::Error::other(format!("process {pid} vanished at its start")))
        .and_then(|start| state.add_process(pid, start, what));
    let go = recorded.and_then(|()| {
        let w = child
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no stdin pipe to the gate"))?;
        w.write_all(b"\n")?;
        w.flush()
    });
    if let Err(e) = go {
        // Closing stdin makes the gate exit 125 without running the program.
        drop(child.stdin.take());
        let _ = child.wait();
        return Err(e);
    }
    if stdin == Stdin::Closed {
        drop(child.stdin.take());
    }
    Ok(child)
}

/// Forgets `pid` in `state` once it has been reaped.
pub fn reaped(state: &StateFile, pid: u32, start: Option<u64>) {
    match start {
        Some(s) => state.forget_process(pid, s),
        None => {
            let _ = state.update(|s| s.processes.retain(|p| p.pid != pid));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gated_child_is_recorded_before_it_runs_its_program() {
        let dir = tempfile::tempdir().unwrap();
        let sf = StateFile::create_in(dir.path(), "t").unwrap();
        let mut cmd = command("sh");
        cmd.args(["-c", "echo ran; exit 7"]).stdout(Stdio::piped());
        let child = spawn(&mut cmd, &sf, "test child", Stdin::Closed).unwrap();
        let st = StateFile::open(&dir.path().join("state.json"))
            .unwrap()
            .get();
        assert_eq!(st.processes.len(), 1);
        assert_eq!(st.processes[0].pid, child.id());
        assert_eq!(st.processes[0].what, "test child");
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(7));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    }

    #[test]
    fn a_gate_whose_harness_is_gone_exits_without_running_its_program() {
        // The harness side closes the pipe without the line, as its death would.
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let mut child = command("touch")
            .arg(&marker)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdin.take());
        assert_eq!(child.wait().unwrap().code(), Some(125));
        assert!(!marker.exists(), "the program ran without its go");
    }
}
