//! A VM node driven over SSH (the qemu provider's nodes): commands, long-running
//! processes and files through the node's ControlMaster session. The session lives in a
//! slot shared with the provider, which replaces it when the node reboots.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Exit, Node, NodeError, Output, Process, SpawnSpec};
use crate::provider::qemu::ssh::{shell_quote, RemoteOutput, SshSession, SshSlot};
use crate::provider::qemu::QemuError;

/// Where spawned processes keep their pid and exit status on the node.
const PROCS_DIR: &str = "/var/lib/dp-harness/procs";

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

    fn session(&self, command: &str) -> Result<Arc<SshSession>, NodeError> {
        self.slot.get(&self.name).map_err(|e| NodeError::Spawn {
            node: self.name.clone(),
            command: command.to_owned(),
            source: std::io::Error::other(e),
        })
    }

    /// Runs a shell script on the node; SSH failures become node errors.
    fn script(
        &self,
        script: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
        command: &str,
    ) -> Result<RemoteOutput, NodeError> {
        self.session(command)?
            .run(script, stdin, timeout)
            .map_err(|e| self.error(e, command, timeout))
    }

    fn error(&self, e: QemuError, command: &str, timeout: Duration) -> NodeError {
        match e {
            QemuError::SshTimeout { .. } => NodeError::Timeout {
                node: self.name.clone(),
                command: command.to_owned(),
                after: timeout,
            },
            other => NodeError::Spawn {
                node: self.name.clone(),
                command: command.to_owned(),
                source: std::io::Error::other(other),
            },
        }
    }
}

/// A remote status as an [`Exit`]: bash reports a command killed by signal N as 128+N.
fn exit_of(status: Option<i32>) -> Exit {
    match status {
        Some(c) if c > 128 && c <= 128 + 64 => Exit::Signal(c - 128),
        Some(c) => Exit::Code(c),
        None => Exit::Unknown,
    }
}

/// argv as one shell command line.
fn command_line(argv: &[&str]) -> String {
    argv.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Node for SshNode {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(&self, argv: &[&str], timeout: Duration) -> Result<Output, NodeError> {
        let line = command_line(argv);
        let out = self.script(&line, None, timeout, &argv.join(" "))?;
        Ok(Output {
            exit: exit_of(out.status),
            stdout: out.stdout,
            stderr: out.stderr,
            duration: out.duration,
        })
    }

    fn spawn(&self, spec: &SpawnSpec) -> Result<Box<dyn Process>, NodeError> {
        let command = spec.argv.join(" ");
        let argv: Vec<&str> = spec.argv.iter().map(String::as_str).collect();
        let env: String = spec
            .env
            .iter()
            .map(|(k, v)| format!("{} ", shell_quote(&format!("{k}={v}"))))
            .collect();
        let out = shell_quote(&spec.stdout.to_string_lossy());
        let err = shell_quote(&spec.stderr.to_string_lossy());
        // A waiter in its own session starts the process, records its pid, waits for it
        // and records its status, so that both outlive this SSH command.
        let waiter = format!(
            "env {env}\"$@\" >{out} 2>{err} </dev/null & p=$!; echo $p > \"$0/pid\"; \
             wait $p; echo $? > \"$0/status.tmp\"; mv \"$0/status.tmp\" \"$0/status\""
        );
        let script = format!(
            "set -e\nmkdir -p \"$(dirname {out})\" \"$(dirname {err})\" {PROCS_DIR}\n\
             d=$(mktemp -d {PROCS_DIR}/p.XXXXXX)\n\
             setsid -f bash -c {} \"$d\" {} </dev/null >/dev/null 2>&1\n\
             for i in $(seq 500); do [ -s \"$d/pid\" ] && break; sleep 0.01; done\n\
             echo \"$d\"; cat \"$d/pid\"\n",
            shell_quote(&waiter),
            command_line(&argv)
        );
        let o = self.script(&script, None, Duration::from_secs(30), &command)?;
        let text = o.stdout_str();
        let mut lines = text.lines();
        let dir = lines.next().unwrap_or("").trim().to_owned();
        let pid = lines.next().and_then(|l| l.trim().parse::<u32>().ok());
        match (o.status, pid) {
            (Some(0), Some(pid)) if !dir.is_empty() => Ok(Box::new(SshProcess {
                node: self.name.clone(),
                slot: Arc::clone(&self.slot),
                pid,
                dir,
                command,
            })),
            _ => Err(NodeError::Failed {
                node: self.name.clone(),
                command,
                exit: exit_of(o.status),
                stderr: format!("could not start it: {}", o.stderr_str().trim()),
            }),
        }
    }

    fn read_file(&self, path: &Path) -> Result<Vec<u8>, NodeError> {
        let command = format!("cat {}", path.display());
        let out = self.script(
            &format!("cat {}", shell_quote(&path.to_string_lossy())),
            None,
            Duration::from_secs(60),
            &command,
        )?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(NodeError::File {
                node: self.name.clone(),
                what: "cannot read",
                path: path.to_owned(),
                source: std::io::Error::other(out.stderr_str().trim().to_owned()),
            })
        }
    }

    fn write_file(&self, path: &Path, data: &[u8], mode: u32) -> Result<(), NodeError> {
        self.session("write_file")?
            .write_file(path, data, mode)
            .map_err(|e| NodeError::File {
                node: self.name.clone(),
                what: "cannot write",
                path: path.to_owned(),
                source: std::io::Error::other(e),
            })
    }
}

/// A process started by [`SshNode::spawn`]; its status is read from the node.
struct SshProcess {
    node: String,
    slot: Arc<SshSlot>,
    pid: u32,
    dir: String,
    command: String,
}

impl SshProcess {
    fn run(&self, script: &str) -> Result<RemoteOutput, NodeError> {
        let timeout = Duration::from_secs(30);
        self.slot
            .get(&self.node)
            .and_then(|s| s.run(script, None, timeout))
            .map_err(|e| match e {
                QemuError::SshTimeout { .. } => NodeError::Timeout {
                    node: self.node.clone(),
                    command: script.to_owned(),
                    after: timeout,
                },
                other => NodeError::Spawn {
                    node: self.node.clone(),
                    command: script.to_owned(),
                    source: std::io::Error::other(other),
                },
            })
    }
}

impl Process for SshProcess {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn kill(&mut self, signal: i32) -> Result<(), NodeError> {
        let out = self.run(&format!("kill -s {signal} {}", self.pid))?;
        if out.success() {
            return Ok(());
        }
        // Already gone is not an error for the caller, who waits next.
        if out.stderr_str().contains("No such process") {
            return Ok(());
        }
        Err(NodeError::Signal {
            node: self.node.clone(),
            pid: self.pid,
            source: std::io::Error::other(out.stderr_str().trim().to_owned()),
        })
    }

    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<Exit>, NodeError> {
        let deadline = Instant::now() + timeout;
        let script = format!("cat {}/status 2>/dev/null || true", shell_quote(&self.dir));
        loop {
            let out = self.run(&script)?;
            if let Ok(code) = out.stdout_str().trim().parse::<i32>() {
                return Ok(Some(exit_of(Some(code))));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(100));
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
    use super::{command_line, exit_of};
    use crate::node::Exit;

    #[test]
    fn argv_is_quoted_for_the_remote_shell() {
        assert_eq!(
            command_line(&["echo", "a b", "it's", "$HOME"]),
            r#"'echo' 'a b' 'it'\''s' '$HOME'"#
        );
    }

    #[test]
    fn statuses_above_128_are_signals() {
        assert_eq!(exit_of(Some(0)), Exit::Code(0));
        assert_eq!(exit_of(Some(127)), Exit::Code(127));
        assert_eq!(exit_of(Some(137)), Exit::Signal(9));
        assert_eq!(exit_of(None), Exit::Unknown);
    }
}
