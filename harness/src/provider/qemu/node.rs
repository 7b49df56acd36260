//! A VM node driven over SSH (the qemu provider's nodes): every operation is a request
//! to the node's dp-remote helper (harness/remote), one long-lived process on the node's
//! ControlMaster: a command is one fork/exec on the node, and files, waits and signals
//! start no process at all. The session lives in a slot shared with the provider, which
//! replaces it when the node reboots.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dp_remote::wire::{Ended, Op, Reply};

use super::remote::Remote;
use super::ssh::SshSlot;
use super::QemuError;
use crate::node::{Exit, Node, NodeError, Output, Process, SpawnSpec};

/// A node reached over SSH.
pub struct SshNode {
    name: String,
    slot: Arc<SshSlot>,
}

impl SshNode {
    pub fn new(name: &str, slot: Arc<SshSlot>) -> Self {
        Self {
            name: name.to_owned(),
            slot,
        }
    }

    fn remote(&self, command: &str) -> Result<Arc<Remote>, NodeError> {
        remote_of(&self.slot, &self.name, command)
    }

    /// Sends `op`; a request that only reads or waits (`idempotent`) is sent once more
    /// when the channel, not the operation, failed (under load a ControlMaster now and
    /// then drops a session, which would end a whole run as a harness error).
    fn call(
        &self,
        op: Op,
        payload: &[u8],
        timeout: Duration,
        command: &str,
        idempotent: bool,
    ) -> Result<(Reply, Vec<Vec<u8>>), NodeError> {
        let first = self
            .remote(command)?
            .call(op.clone(), payload, timeout, command);
        match first {
            Err(e) if idempotent && e.is_transport() => self
                .remote(command)?
                .call(op, payload, timeout, command)
                .map_err(|e| node_error(&self.name, e, command, timeout)),
            r => r.map_err(|e| node_error(&self.name, e, command, timeout)),
        }
    }
}

fn remote_of(slot: &SshSlot, node: &str, command: &str) -> Result<Arc<Remote>, NodeError> {
    slot.get(node)
        .and_then(|s| s.require_remote())
        .map_err(|e| NodeError::Spawn {
            node: node.to_owned(),
            command: command.to_owned(),
            source: std::io::Error::other(e),
        })
}

fn node_error(node: &str, e: QemuError, command: &str, timeout: Duration) -> NodeError {
    match e {
        QemuError::SshTimeout { .. } => NodeError::Timeout {
            node: node.to_owned(),
            command: command.to_owned(),
            after: timeout,
        },
        other => NodeError::Spawn {
            node: node.to_owned(),
            command: command.to_owned(),
            source: std::io::Error::other(other),
        },
    }
}

/// An answer the operation does not expect: the helper and the harness disagree.
fn unexpected(node: &str, command: &str, reply: &Reply) -> NodeError {
    match reply {
        Reply::Error { message, .. } => NodeError::Other {
            node: node.to_owned(),
            message: format!("`{command}`: {message}"),
        },
        other => NodeError::Other {
            node: node.to_owned(),
            message: format!("`{command}`: unexpected answer from dp-remote: {other:?}"),
        },
    }
}

fn exit_of(e: Ended) -> Exit {
    match e {
        Ended::Code(c) => Exit::Code(c),
        Ended::Signal(s) => Exit::Signal(s),
        Ended::TimedOut | Ended::Unknown => Exit::Unknown,
    }
}

/// The outputs of a `Run` or `Batch` answer, one per command; a command stopped at its
/// timeout is [`NodeError::Timeout`].
fn outputs(
    node: &str,
    argvs: &[Vec<String>],
    timeout: Duration,
    reply: Reply,
    payloads: Vec<Vec<u8>>,
) -> Result<Vec<Output>, NodeError> {
    let what = || {
        argvs
            .iter()
            .map(|a| a.join(" "))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let Reply::Ran { ended, ms } = reply else {
        return Err(unexpected(node, &what(), &reply));
    };
    if ended.len() != argvs.len() || payloads.len() != 2 * argvs.len() {
        return Err(unexpected(node, &what(), &Reply::Ran { ended, ms }));
    }
    let mut payloads = payloads.into_iter();
    ended
        .into_iter()
        .zip(ms)
        .zip(argvs)
        .map(|((e, ms), argv)| {
            let (stdout, stderr) = (
                payloads.next().unwrap_or_default(),
                payloads.next().unwrap_or_default(),
            );
            if e == Ended::TimedOut {
                return Err(NodeError::Timeout {
                    node: node.to_owned(),
                    command: argv.join(" "),
                    after: timeout,
                });
            }
            Ok(Output {
                exit: exit_of(e),
                stdout,
                stderr,
                duration: Duration::from_millis(ms),
            })
        })
        .collect()
}

impl Node for SshNode {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(&self, argv: &[&str], timeout: Duration) -> Result<Output, NodeError> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let command = argv.join(" ");
        let op = Op::Run {
            argv: argv.clone(),
            env: Vec::new(),
            timeout_ms: timeout.as_millis() as u64,
        };
        let (reply, payloads) = self.call(op, &[], timeout, &command, false)?;
        outputs(&self.name, &[argv], timeout, reply, payloads).map(|mut v| v.remove(0))
    }

    fn run_batch(
        &self,
        argvs: &[Vec<String>],
        timeout: Duration,
    ) -> Result<Vec<Output>, NodeError> {
        if argvs.is_empty() {
            return Ok(Vec::new());
        }
        let what = argvs
            .iter()
            .map(|a| a.join(" "))
            .collect::<Vec<_>>()
            .join("; ");
        let op = Op::Batch {
            argvs: argvs.to_vec(),
            timeout_ms: timeout.as_millis() as u64,
        };
        let total = timeout * argvs.len() as u32;
        let (reply, payloads) = self.call(op, &[], total, &what, true)?;
        outputs(&self.name, argvs, timeout, reply, payloads)
    }

    fn wait_for_line(
        &self,
        proc: &mut dyn Process,
        file: &Path,
        line: &str,
        timeout: Duration,
    ) -> Result<bool, NodeError> {
        // The wait runs on the node, in the helper: no process, no round trip per poll.
        let command = format!("wait for `{line}` in {}", file.display());
        let op = Op::WaitForLine {
            path: file.to_string_lossy().into_owned(),
            line: line.to_owned(),
            pid: proc.pid(),
            timeout_ms: timeout.as_millis() as u64,
        };
        match self.call(op, &[], timeout, &command, true)? {
            (Reply::Line { found }, _) => Ok(found),
            (Reply::TimedOut, _) => Err(NodeError::Timeout {
                node: self.name.clone(),
                command,
                after: timeout,
            }),
            (other, _) => Err(unexpected(&self.name, &command, &other)),
        }
    }

    fn spawn(&self, spec: &SpawnSpec) -> Result<Box<dyn Process>, NodeError> {
        let command = spec.argv.join(" ");
        let op = Op::Spawn {
            argv: spec.argv.clone(),
            env: spec.env.clone(),
            stdout: spec.stdout.to_string_lossy().into_owned(),
            stderr: spec.stderr.to_string_lossy().into_owned(),
        };
        match self.call(op, &[], Duration::from_secs(30), &command, false)? {
            (Reply::Spawned { pid }, _) => Ok(Box::new(SshProcess {
                node: self.name.clone(),
                slot: Arc::clone(&self.slot),
                pid,
                command,
            })),
            (other, _) => Err(NodeError::Failed {
                node: self.name.clone(),
                command: command.clone(),
                exit: Exit::Unknown,
                stderr: format!(
                    "could not start it: {}",
                    match other {
                        Reply::Error { message, .. } => message,
                        o => format!("{o:?}"),
                    }
                ),
            }),
        }
    }

    fn read_file(&self, path: &Path) -> Result<Vec<u8>, NodeError> {
        let command = format!("read {}", path.display());
        let op = Op::ReadFile {
            path: path.to_string_lossy().into_owned(),
        };
        match self.call(op, &[], Duration::from_secs(60), &command, true)? {
            (Reply::Data, mut p) if p.len() == 1 => Ok(p.remove(0)),
            (Reply::Error { message, .. }, _) => Err(NodeError::File {
                node: self.name.clone(),
                what: "cannot read",
                path: path.to_owned(),
                source: std::io::Error::other(message),
            }),
            (other, _) => Err(unexpected(&self.name, &command, &other)),
        }
    }

    fn write_file(&self, path: &Path, data: &[u8], mode: u32) -> Result<(), NodeError> {
        let command = format!("write {}", path.display());
        let op = Op::WriteFile {
            path: path.to_string_lossy().into_owned(),
            mode,
        };
        match self.call(op, data, Duration::from_secs(60), &command, true)? {
            (Reply::Done, _) => Ok(()),
            (Reply::Error { message, .. }, _) => Err(NodeError::File {
                node: self.name.clone(),
                what: "cannot write",
                path: path.to_owned(),
                source: std::io::Error::other(message),
            }),
            (other, _) => Err(unexpected(&self.name, &command, &other)),
        }
    }
}

/// A process started by [`SshNode::spawn`]; the helper that started it is its parent
/// and keeps its exit status.
struct SshProcess {
    node: String,
    slot: Arc<SshSlot>,
    pid: u32,
    command: String,
}

impl SshProcess {
    fn call(&self, op: Op, timeout: Duration, what: &str) -> Result<Reply, NodeError> {
        remote_of(&self.slot, &self.node, what)?
            .call(op, &[], timeout, what)
            .map(|(r, _)| r)
            .map_err(|e| node_error(&self.node, e, what, timeout))
    }
}

impl Process for SshProcess {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn kill(&mut self, signal: i32) -> Result<(), NodeError> {
        let what = format!("kill -s {signal} {}", self.pid);
        let op = Op::Kill {
            pid: self.pid,
            signal,
        };
        match self.call(op, Duration::from_secs(30), &what)? {
            Reply::Done => Ok(()),
            Reply::Error { message, .. } => Err(NodeError::Signal {
                node: self.node.clone(),
                pid: self.pid,
                source: std::io::Error::other(message),
            }),
            other => Err(unexpected(&self.node, &what, &other)),
        }
    }

    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<Exit>, NodeError> {
        let what = format!("wait for {} (pid {})", self.command, self.pid);
        let op = Op::WaitExit {
            pid: self.pid,
            timeout_ms: timeout.as_millis() as u64,
        };
        match self.call(op, timeout, &what)? {
            Reply::Exit { ended } => Ok(ended.map(exit_of)),
            other => Err(unexpected(&self.node, &what, &other)),
        }
    }
}

impl std::fmt::Debug for SshProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {} (pid {})", self.command, self.node, self.pid)
    }
}

#[cfg(test)]
mod tests {
    use super::{exit_of, outputs};
    use crate::node::{Exit, NodeError};
    use dp_remote::wire::{Ended, Reply};
    use std::time::Duration;

    #[test]
    fn batch_answers_become_one_output_per_command() {
        let argvs = vec![vec!["a".to_string()], vec!["b".to_string()]];
        let reply = Reply::Ran {
            ended: vec![Ended::Code(0), Ended::Signal(9)],
            ms: vec![1, 2],
        };
        let payloads = vec![b"out".to_vec(), Vec::new(), Vec::new(), b"err".to_vec()];
        let outs = outputs("n", &argvs, Duration::from_secs(1), reply, payloads).unwrap();
        assert_eq!(outs[0].stdout, b"out");
        assert_eq!(outs[1].exit, Exit::Signal(9));
        assert_eq!(outs[1].stderr, b"err");
        // A short answer is the helper's error, not a silent empty output.
        let short = Reply::Ran {
            ended: vec![Ended::Code(0)],
            ms: vec![1],
        };
        assert!(outputs("n", &argvs, Duration::from_secs(1), short, Vec::new()).is_err());
    }

    #[test]
    fn a_command_stopped_at_its_timeout_is_a_timeout() {
        let argvs = vec![vec!["sleep".to_string(), "9".to_string()]];
        let reply = Reply::Ran {
            ended: vec![Ended::TimedOut],
            ms: vec![1000],
        };
        let r = outputs(
            "n",
            &argvs,
            Duration::from_secs(1),
            reply,
            vec![vec![], vec![]],
        );
        assert!(matches!(r, Err(NodeError::Timeout { .. })));
        assert_eq!(exit_of(Ended::Unknown), Exit::Unknown);
    }
}
