//! The harness's end of `dp-remote serve` (harness/remote): one long-lived helper per VM,
//! started over the node's ControlMaster, with many requests in flight on its one
//! channel. Node operations (commands, batches, files, spawns, waits) go through it, so
//! the guest starts only the commands themselves; see harness/remote/src/lib.rs for why.

use std::collections::HashMap;
use std::io::{BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::Duration;

use dp_remote::wire::{read_header, read_payload, write_frame, Op, Reply, Request, Response};

use super::error::{QemuError, Result};

/// Added to a request's own timeout before the harness stops waiting for its answer.
const ANSWER_MARGIN: Duration = Duration::from_secs(10);

type Answer = (Reply, Vec<Vec<u8>>);
type Pending = Arc<Mutex<HashMap<u64, mpsc::Sender<Answer>>>>;

/// A running helper on one node.
pub struct Remote {
    node: String,
    stdin: Mutex<ChildStdin>,
    pending: Pending,
    /// Why the channel ended, once it has.
    gone: Arc<Mutex<Option<String>>>,
    next_id: AtomicU64,
    ssh: Mutex<Child>,
    /// The run's state file listing the ssh client (pid, start time), forgotten once
    /// the client is reaped.
    recorded: Option<(crate::state::StateFile, Option<u64>)>,
}

impl Remote {
    /// Starts `helper` (a path on the node) through the ControlMaster at `control`; its
    /// ssh client is recorded in the run's `state` before it runs (crate::gate).
    pub fn start(
        node: &str,
        control: &Path,
        helper: &Path,
        state: Option<&crate::state::StateFile>,
    ) -> Result<Remote> {
        // As the openssh crate runs its own commands over the master (`-p 9`: never a
        // fresh connection if the master is gone).
        let mut cmd = match state {
            Some(_) => crate::gate::command("ssh"),
            None => Command::new("ssh"),
        };
        cmd.arg("-S")
            .arg(control)
            .args(["-o", "BatchMode=yes", "-T", "-p", "9", "none", "--"])
            .arg(helper)
            .arg("serve");
        Remote::over(node, cmd, helper, state)
    }

    /// Starts `cmd`, which must speak the helper's protocol on its stdin and stdout (the
    /// ssh command above; tests run dp-remote directly).
    pub fn over(
        node: &str,
        mut cmd: Command,
        helper: &Path,
        state: Option<&crate::state::StateFile>,
    ) -> Result<Remote> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        let spawned = match state {
            Some(st) => crate::gate::spawn(
                &mut cmd,
                st,
                &format!("ssh to {node}: dp-remote serve"),
                crate::gate::Stdin::Kept,
            ),
            None => cmd.stdin(Stdio::piped()).spawn(),
        };
        let mut ssh = spawned.map_err(|source| QemuError::RemoteStart {
            node: node.to_owned(),
            helper: helper.to_owned(),
            reason: source.to_string(),
        })?;
        let (Some(stdin), Some(stdout)) = (ssh.stdin.take(), ssh.stdout.take()) else {
            let _ = ssh.kill();
            let _ = ssh.wait();
            return Err(QemuError::RemoteStart {
                node: node.to_owned(),
                helper: helper.to_owned(),
                reason: "no pipes to ssh".into(),
            });
        };
        let pending: Pending = Arc::default();
        let gone: Arc<Mutex<Option<String>>> = Arc::default();
        {
            let (pending, gone) = (Arc::clone(&pending), Arc::clone(&gone));
            std::thread::Builder::new()
                .name(format!("dp-remote-{node}"))
                .spawn(move || {
                    let mut r = BufReader::new(stdout);
                    let why = loop {
                        let h: Response = match read_header(&mut r) {
                            Ok(Some(h)) => h,
                            Ok(None) => break "the helper's channel closed".to_owned(),
                            Err(e) => break format!("reading the helper's answer: {e}"),
                        };
                        let mut payloads = Vec::with_capacity(h.payloads.len());
                        for &len in &h.payloads {
                            match read_payload(&mut r, len) {
                                Ok(p) => payloads.push(p),
                                Err(_) => break,
                            }
                        }
                        if payloads.len() != h.payloads.len() {
                            break "the helper's answer was cut short".to_owned();
                        }
                        let tx = pending
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&h.id);
                        if let Some(tx) = tx {
                            let _ = tx.send((h.reply, payloads));
                        }
                    };
                    *gone.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
                    // Dropping the senders wakes every caller still waiting.
                    pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clear();
                })
                .map_err(|source| QemuError::RemoteStart {
                    node: node.to_owned(),
                    helper: helper.to_owned(),
                    reason: source.to_string(),
                })?;
        }
        let remote = Remote {
            node: node.to_owned(),
            stdin: Mutex::new(stdin),
            pending,
            gone,
            next_id: AtomicU64::new(1),
            recorded: state.map(|st| (st.clone(), crate::state::start_time(ssh.id()))),
            ssh: Mutex::new(ssh),
        };
        // Proves the helper runs (a missing binary shows here, not at the first command).
        remote
            .call(
                Op::Kill { pid: 0, signal: 0 },
                &[],
                Duration::from_secs(60),
                "start dp-remote",
            )
            .map_err(|e| QemuError::RemoteStart {
                node: node.to_owned(),
                helper: helper.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(remote)
    }

    /// Whether the channel has ended (the helper or its SSH channel died).
    pub fn is_gone(&self) -> bool {
        self.gone
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Sends `op` and waits for its answer, at most `timeout` plus a margin (the helper
    /// enforces the operation's own timeout). `what` names it in errors.
    pub fn call(&self, op: Op, payload: &[u8], timeout: Duration, what: &str) -> Result<Answer> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        if let Some(why) = self
            .gone
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Err(self.lost(what, why));
        }
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        // The reader may have ended between the check above and the insert, after it
        // cleared the pending map: nobody would answer this request.
        if let Some(why) = self
            .gone
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            self.forget(id);
            return Err(self.lost(what, why));
        }
        let req = Request {
            id,
            op,
            payload: payload.len(),
        };
        let sent = {
            let mut w = self.stdin.lock().unwrap_or_else(PoisonError::into_inner);
            write_frame(&mut *w, &req, &[payload]).and_then(|()| w.flush())
        };
        if let Err(e) = sent {
            self.forget(id);
            return Err(self.lost(what, format!("sending the request: {e}")));
        }
        match rx.recv_timeout(timeout + ANSWER_MARGIN) {
            Ok(a) => Ok(a),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.forget(id);
                Err(QemuError::SshTimeout {
                    node: self.node.clone(),
                    command: what.to_owned(),
                    timeout,
                })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let why = self
                    .gone
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
                    .unwrap_or_else(|| "the helper's channel closed".into());
                Err(self.lost(what, why))
            }
        }
    }

    fn forget(&self, id: u64) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    fn lost(&self, what: &str, why: String) -> QemuError {
        QemuError::RemoteLost {
            node: self.node.clone(),
            command: what.to_owned(),
            reason: why,
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        // Our own ssh client, by its handle: the helper sees its stdin close and exits;
        // processes it spawned live on in their own sessions.
        let mut ssh = self.ssh.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = ssh.kill();
        let _ = ssh.wait();
        if let Some((st, start)) = &self.recorded {
            crate::gate::reaped(st, ssh.id(), *start);
        }
    }
}

/// The workspace's dp-remote, beside the test binary's `deps/` directory (`cargo build`
/// builds it; the README's test command runs that first).
#[cfg(test)]
pub(crate) fn test_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .join("dp-remote");
    assert!(
        p.is_file(),
        "{} not found: run `cargo build` first (the README's test command does)",
        p.display()
    );
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Remote {
        let h = test_binary();
        let mut cmd = Command::new(&h);
        cmd.arg("serve");
        Remote::over("local", cmd, &h, None).expect("dp-remote starts")
    }

    fn run(argv: &[&str]) -> Op {
        Op::Run {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            timeout_ms: 10_000,
        }
    }

    #[test]
    fn answers_find_their_callers_when_many_are_in_flight() {
        let r = local();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|i| {
                    let r = &r;
                    s.spawn(move || {
                        // Later requests finish first: answers come back out of order.
                        let script = format!("sleep 0.{}; echo {i}", 16 - i);
                        let (reply, out) = r
                            .call(
                                run(&["sh", "-c", &script]),
                                &[],
                                Duration::from_secs(10),
                                "t",
                            )
                            .expect("answered");
                        assert!(matches!(reply, Reply::Ran { .. }));
                        assert_eq!(String::from_utf8_lossy(&out[0]).trim(), i.to_string());
                    })
                })
                .collect();
            for h in handles {
                h.join().expect("caller thread");
            }
        });
    }

    #[test]
    fn a_helper_that_dies_fails_its_callers_at_once_instead_of_hanging() {
        let r = local();
        // The helper's own pid is its parent's child: kill it from inside.
        let e = r
            .call(
                run(&["sh", "-c", "kill -9 $PPID; sleep 5"]),
                &[],
                Duration::from_secs(60),
                "suicide",
            )
            .expect_err("the channel ended");
        // Without the wake-up the call would end in a timeout (70 s), which is no
        // transport error.
        assert!(e.is_transport(), "{e}");
        assert!(r.is_gone());
        let again = r
            .call(run(&["true"]), &[], Duration::from_secs(5), "after")
            .expect_err("still gone");
        assert!(again.is_transport(), "{again}");
    }
}
