//! A node of the cluster under test, as the harness drives it: run a command, start a
//! long-running process, move files. One trait, one file per implementation
//! (`netns.rs` here; the qemu provider's VM nodes implement it over SSH).
//!
//! Commands are argv vectors, never shell strings: an implementation that needs a shell
//! (SSH) quotes them itself. A command that runs and exits non-zero is *not* an error of
//! [`Node::run`]; its [`Output`] says so. Errors are for "could not run it at all" and
//! "it did not finish in time", and each names the node and the command.

pub mod netns;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Exit {
    /// It called exit(code).
    Code(i32),
    /// It was killed by this signal (e.g. 9 for SIGKILL, 6 for SIGABRT).
    Signal(i32),
    /// The node cannot tell (a remote process whose status was lost).
    Unknown,
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    pub fn from_std(status: std::process::ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(s)) => Exit::Signal(s),
            (None, None) => Exit::Unknown,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s} ({})", signal_name(*s)),
            Exit::Unknown => f.write_str("unknown exit"),
        }
    }
}

/// The conventional name of a signal number, for messages and evidence.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// What a finished command gave.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: Exit,
    pub duration: Duration,
}

impl Output {
    pub fn success(&self) -> bool {
        self.exit.success()
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A long-running process to start on a node. Its stdout and stderr go to files *on the
/// node* (read them back with [`Node::read_file`]), so a VM node can keep them across an
/// SSH reconnect and the harness can collect them as artifacts.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub argv: Vec<String>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

/// A process started by [`Node::spawn`]. Dropping the handle does not kill the process:
/// call [`Process::kill`] and [`Process::wait_timeout`] (the harness always does, by pid).
pub trait Process: Send {
    /// Its pid as the node sees it.
    fn pid(&self) -> u32;
    /// Sends `signal` to this process only (never to a group, never by name).
    fn kill(&mut self, signal: i32) -> Result<(), NodeError>;
    /// Waits up to `timeout`; `Ok(None)` if it is still running then.
    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<Exit>, NodeError>;
    /// Its exit if it has already ended, without waiting.
    fn try_wait(&mut self) -> Result<Option<Exit>, NodeError> {
        self.wait_timeout(Duration::ZERO)
    }
}

/// Errors of a node: each names the node and the command or path.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {node}: cannot start `{command}`")]
    Spawn {
        node: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("node {node}: `{command}` did not finish within {after:?}")]
    Timeout {
        node: String,
        command: String,
        after: Duration,
    },
    #[error("node {node}: `{command}` failed ({exit}): {stderr}")]
    Failed {
        node: String,
        command: String,
        exit: Exit,
        stderr: String,
    },
    #[error("node {node}: {what} {path}")]
    File {
        node: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("node {node}: cannot signal pid {pid}")]
    Signal {
        node: String,
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("node {node}: {message}")]
    Other { node: String, message: String },
}

/// Quotes a string for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One node. `Send + Sync` so checks can run on several nodes from threads.
pub trait Node: Send + Sync {
    /// Its name in the suite (`node-a`).
    fn name(&self) -> &str;

    /// Runs `argv` on the node and waits up to `timeout`. A non-zero exit is returned in
    /// [`Output::exit`], not as an error; on timeout the command is killed and
    /// [`NodeError::Timeout`] returned.
    fn run(&self, argv: &[&str], timeout: Duration) -> Result<Output, NodeError>;

    /// Starts a long-running process (see [`SpawnSpec`]).
    fn spawn(&self, spec: &SpawnSpec) -> Result<Box<dyn Process>, NodeError>;

    /// Copies the local file `local` to `remote` on the node with mode `mode`.
    fn copy_to(&self, local: &Path, remote: &Path, mode: u32) -> Result<(), NodeError> {
        let data = std::fs::read(local).map_err(|source| NodeError::File {
            node: self.name().to_string(),
            what: "cannot read local file",
            path: local.to_path_buf(),
            source,
        })?;
        self.write_file(remote, &data, mode)
    }

    /// Records a pod sandbox (network namespace `/run/netns/<netns>`, cgroup) about to be
    /// made on the node at run time, where the run's state must list it before it exists
    /// (a node that shares the host: `harness clean` removes it after a killed run). A
    /// VM's sandboxes go with the VM: nothing to record.
    fn record_sandbox(&self, _netns: &str, _cgroup: &Path) -> Result<(), NodeError> {
        Ok(())
    }

    /// Reads a file on the node.
    fn read_file(&self, path: &Path) -> Result<Vec<u8>, NodeError>;

    /// Writes (creates or replaces) a file on the node, creating its parent directories.
    fn write_file(&self, path: &Path, data: &[u8], mode: u32) -> Result<(), NodeError>;

    /// Runs several commands one after the other, each within `timeout`, and returns each
    /// one's output (a failing command does not stop the next). A VM node does it in one
    /// round trip; the default runs them one by one. For commands that observe or probe:
    /// a VM node runs the batch again when the SSH transport failed.
    fn run_batch(
        &self,
        argvs: &[Vec<String>],
        timeout: Duration,
    ) -> Result<Vec<Output>, NodeError> {
        argvs
            .iter()
            .map(|argv| {
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                self.run(&argv, timeout)
            })
            .collect()
    }

    /// Waits until a line equal to `line` appears in `file` on the node, `proc` ends, or
    /// `timeout` passes (see [`wait_for_line`]). A VM node waits on the node itself, in
    /// one round trip; the default polls.
    fn wait_for_line(
        &self,
        proc: &mut dyn Process,
        file: &Path,
        line: &str,
        timeout: Duration,
    ) -> Result<bool, NodeError> {
        poll_for_line(self, proc, file, line, timeout)
    }

    /// Like [`Node::run`], but a non-zero exit is [`NodeError::Failed`].
    fn check(&self, argv: &[&str], timeout: Duration) -> Result<Output, NodeError> {
        let out = self.run(argv, timeout)?;
        if out.success() {
            Ok(out)
        } else {
            Err(NodeError::Failed {
                node: self.name().to_string(),
                command: argv.join(" "),
                exit: out.exit,
                stderr: out.stderr_str().trim().chars().take(2000).collect(),
            })
        }
    }
}

/// Waits until a line equal to `line` appears in `file` on `node`, the process ends, or
/// `timeout` passes. Returns Ok(true) when the line appeared, Ok(false) when the process
/// ended first (its exit is then available from `proc`).
pub fn wait_for_line(
    node: &dyn Node,
    proc: &mut dyn Process,
    file: &Path,
    line: &str,
    timeout: Duration,
) -> Result<bool, NodeError> {
    node.wait_for_line(proc, file, line, timeout)
}

/// Does `data` hold a line equal to `line` (surrounding blanks ignored)?
pub fn has_line(data: &[u8], line: &str) -> bool {
    String::from_utf8_lossy(data)
        .lines()
        .any(|l| l.trim() == line)
}

/// [`Node::wait_for_line`] by polling: read the file, check the process, sleep briefly.
pub fn poll_for_line<N: Node + ?Sized>(
    node: &N,
    proc: &mut dyn Process,
    file: &Path,
    line: &str,
    timeout: Duration,
) -> Result<bool, NodeError> {
    let deadline = Instant::now() + timeout;
    loop {
        if node.read_file(file).is_ok_and(|d| has_line(&d, line)) {
            return Ok(true);
        }
        if proc.try_wait()?.is_some() {
            // One more read: the line may have been written just before the exit.
            return Ok(node.read_file(file).is_ok_and(|d| has_line(&d, line)));
        }
        if Instant::now() >= deadline {
            return Err(NodeError::Timeout {
                node: node.name().to_string(),
                command: format!("wait for `{line}` in {}", file.display()),
                after: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
