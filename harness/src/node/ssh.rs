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

    /// Like [`SshNode::script`] for a script that only reads or waits (safe to run
    /// twice): retried once when the SSH transport, not the script, failed. Under load the
    /// ControlMaster now and then refuses a new session (ssh exits 255), which would end
    /// a whole run as a harness error.
    fn read_script(
        &self,
        script: &str,
        timeout: Duration,
        command: &str,
    ) -> Result<RemoteOutput, NodeError> {
        let session = self.session(command)?;
        match session.run(script, None, timeout) {
            Err(e) if e.is_transport() => self
                .session(command)?
                .run(script, None, timeout)
                .map_err(|e| self.error(e, command, timeout)),
            r => r.map_err(|e| self.error(e, command, timeout)),
        }
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

/// Starts each command's part of a batch's output: `<marker> <status> <stdout bytes>
/// <stderr bytes>`, then the stdout and stderr bytes.
const BATCH_PART: &str = "__dp_batch_part";

/// One command's part of a batch: (status, stdout, stderr).
type BatchPart = (i32, Vec<u8>, Vec<u8>);

/// Splits a batch's output into `n` parts; `None` if it is malformed.
fn split_batch(mut data: &[u8], n: usize) -> Option<Vec<BatchPart>> {
    let mut parts = Vec::with_capacity(n);
    for _ in 0..n {
        let eol = data.iter().position(|&b| b == b'\n')?;
        let header = std::str::from_utf8(&data[..eol]).ok()?;
        let mut words = header.split_whitespace();
        if words.next()? != BATCH_PART {
            return None;
        }
        let rc: i32 = words.next()?.parse().ok()?;
        let out_len: usize = words.next()?.parse().ok()?;
        let err_len: usize = words.next()?.parse().ok()?;
        let body = &data[eol + 1..];
        if body.len() < out_len + err_len {
            return None;
        }
        parts.push((
            rc,
            body[..out_len].to_vec(),
            body[out_len..out_len + err_len].to_vec(),
        ));
        data = &body[out_len + err_len..];
    }
    Some(parts)
}

/// `s` with the characters special to a basic regular expression escaped.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '.' | '[' | ']' | '\\' | '*' | '^' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out
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
        let secs = timeout.as_secs().max(1);
        let mut script = String::from("d=$(mktemp -d /run/dp-batch.XXXXXX) || exit 1\n");
        for (i, argv) in argvs.iter().enumerate() {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            script.push_str(&format!(
                "timeout -k 2 {secs} {} >\"$d/{i}.out\" 2>\"$d/{i}.err\" </dev/null; echo $? >\"$d/{i}.rc\"\n",
                command_line(&argv)
            ));
        }
        script.push_str(&format!(
            "for i in $(seq 0 {}); do printf '{BATCH_PART} %s %s %s\\n' \"$(cat \"$d/$i.rc\")\" \
             \"$(stat -c %s \"$d/$i.out\")\" \"$(stat -c %s \"$d/$i.err\")\"; \
             cat \"$d/$i.out\" \"$d/$i.err\"; done\nrm -rf \"$d\"\n",
            argvs.len() - 1
        ));
        let total = timeout * argvs.len() as u32 + Duration::from_secs(5);
        let out = self.read_script(&script, total, &what)?;
        let parts = split_batch(&out.stdout, argvs.len()).ok_or_else(|| NodeError::Failed {
            node: self.name.clone(),
            command: what.clone(),
            exit: exit_of(out.status),
            stderr: format!("its output could not be split: {}", out.stderr_str().trim()),
        })?;
        parts
            .into_iter()
            .zip(argvs)
            .map(|((rc, stdout, stderr), argv)| {
                // `timeout` exits 124 when it had to stop the command.
                if rc == 124 {
                    return Err(NodeError::Timeout {
                        node: self.name.clone(),
                        command: argv.join(" "),
                        after: timeout,
                    });
                }
                Ok(Output {
                    exit: exit_of(Some(rc)),
                    stdout,
                    stderr,
                    duration: out.duration,
                })
            })
            .collect()
    }

    fn wait_for_line(
        &self,
        proc: &mut dyn Process,
        file: &Path,
        line: &str,
        timeout: Duration,
    ) -> Result<bool, NodeError> {
        // The loop runs on the node: one round trip instead of two per poll.
        let f = shell_quote(&file.to_string_lossy());
        let pattern = shell_quote(&format!("^[[:space:]]*{}[[:space:]]*$", regex_escape(line)));
        let script = format!(
            "has() {{ grep -q -- {pattern} {f} 2>/dev/null; }}\n\
             end=$(( SECONDS + {secs} ))\n\
             while :; do\n\
               has && exit 0\n\
               kill -0 {pid} 2>/dev/null || {{ has && exit 0; exit 3; }}\n\
               [ $SECONDS -ge $end ] && exit 4\n\
               sleep 0.05\n\
             done\n",
            secs = timeout.as_secs().max(1),
            pid = proc.pid()
        );
        let command = format!("wait for `{line}` in {}", file.display());
        let out = self.read_script(&script, timeout + Duration::from_secs(10), &command)?;
        match out.status {
            Some(0) => Ok(true),
            Some(3) => Ok(false),
            Some(4) => Err(NodeError::Timeout {
                node: self.name.clone(),
                command,
                after: timeout,
            }),
            other => Err(NodeError::Failed {
                node: self.name.clone(),
                command,
                exit: exit_of(other),
                stderr: out.stderr_str().trim().to_owned(),
            }),
        }
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
        let out = self.read_script(
            &format!("cat {}", shell_quote(&path.to_string_lossy())),
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
        // The loop runs on the node (one round trip); it gives up a little before the
        // SSH command's own limit.
        let status = format!("{}/status", shell_quote(&self.dir));
        let polls = (timeout.min(Duration::from_secs(25)).as_millis() / 50).max(1);
        let script = format!(
            "for i in $(seq {polls}); do [ -s {status} ] && break; sleep 0.05; done; \
             cat {status} 2>/dev/null || true"
        );
        let script = if timeout.is_zero() {
            format!("cat {status} 2>/dev/null || true")
        } else {
            script
        };
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.run(&script)?;
            if let Ok(code) = out.stdout_str().trim().parse::<i32>() {
                return Ok(Some(exit_of(Some(code))));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
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
    use super::{command_line, exit_of, split_batch};
    use crate::node::Exit;

    #[test]
    fn argv_is_quoted_for_the_remote_shell() {
        assert_eq!(
            command_line(&["echo", "a b", "it's", "$HOME"]),
            r#"'echo' 'a b' 'it'\''s' '$HOME'"#
        );
    }

    #[test]
    fn a_batch_splits_by_the_lengths_it_announces() {
        let data = b"__dp_batch_part 0 3 0\nab\n__dp_batch_part 2 0 5\noops\n";
        let parts = split_batch(data, 2).expect("well formed");
        assert_eq!(parts[0], (0, b"ab\n".to_vec(), Vec::new()));
        assert_eq!(parts[1], (2, Vec::new(), b"oops\n".to_vec()));
        // Output that looks like a marker is just output.
        let tricky = b"__dp_batch_part 0 22 0\n__dp_batch_part 9 9 9\n";
        assert_eq!(split_batch(tricky, 1).expect("one part")[0].1.len(), 22);
        assert!(split_batch(b"__dp_batch_part 0 10 0\nshort", 1).is_none());
        assert!(split_batch(data, 3).is_none());
    }

    #[test]
    fn statuses_above_128_are_signals() {
        assert_eq!(exit_of(Some(0)), Exit::Code(0));
        assert_eq!(exit_of(Some(127)), Exit::Code(127));
        assert_eq!(exit_of(Some(137)), Exit::Signal(9));
        assert_eq!(exit_of(None), Exit::Unknown);
    }
}
