//! SSH to a VM through the `openssh` crate (process-mux: one ControlMaster per node, 0.3 s
//! per command), over the node's forward on 127.0.0.1. The harness is synchronous, so a
//! session blocks on a small tokio runtime shared by the run's sessions.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use openssh::{KnownHosts, Session, SessionBuilder, Stdio};
use tokio::io::AsyncWriteExt;
use tokio::runtime::Runtime;

use dp_remote::wire::{Ended, Op, Reply};

use super::error::{QemuError, Result};
use super::remote::Remote;

/// PATH for remote commands: dropbear's default omits the sbin directories.
const REMOTE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Longest script passed on the remote command line; longer ones go on stdin.
const MAX_INLINE_SCRIPT: usize = 2048;

/// Ends the stderr of every remote command: the command's exit status.
const RC_TRAILER: &str = "__dp_harness_rc=";

/// Splits the status trailer off a remote command's stderr; `None` when it is missing
/// (the command or the shell was killed).
fn split_status(mut stderr: Vec<u8>) -> (Vec<u8>, Option<i32>) {
    let text = String::from_utf8_lossy(&stderr);
    let Some(pos) = text.rfind(&format!("\n{RC_TRAILER}")) else {
        return (stderr, None);
    };
    let status = text[pos + 1 + RC_TRAILER.len()..].trim().parse().ok();
    stderr.truncate(pos);
    (stderr, status)
}

/// What a remote command did.
#[derive(Debug, Clone)]
pub struct RemoteOutput {
    /// The exit status; `None` when the command was killed by a signal.
    pub status: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub duration: Duration,
}

impl RemoteOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// The runtime that the run's SSH sessions block on.
pub fn runtime() -> Result<Arc<Runtime>> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("dp-harness-ssh")
        .enable_all()
        .build()
        .map(Arc::new)
        .map_err(QemuError::Runtime)
}

/// How to reach one node.
#[derive(Debug, Clone)]
pub struct SshTarget {
    pub node: String,
    pub port: u16,
    pub key: std::path::PathBuf,
    pub known_hosts: std::path::PathBuf,
    pub control_dir: std::path::PathBuf,
}

impl SshTarget {
    fn builder(&self, connect_timeout: Duration) -> SessionBuilder {
        let mut b = SessionBuilder::default();
        b.user("root".to_owned())
            .port(self.port)
            .keyfile(&self.key)
            .config_file("/dev/null")
            .user_known_hosts_file(&self.known_hosts)
            .known_hosts_check(KnownHosts::Strict)
            .control_directory(&self.control_dir)
            .connect_timeout(connect_timeout.max(Duration::from_secs(1)))
            .server_alive_interval(Duration::from_secs(5));
        b
    }

    /// Connects (starts the ControlMaster), retrying until `timeout`: slirp accepts the
    /// TCP connection before the guest is up, so an early try can fail or hang.
    pub async fn connect(&self, timeout: Duration) -> Result<Session> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = self.builder(left.min(Duration::from_secs(10)));
            match tokio::time::timeout(left, attempt.connect("127.0.0.1")).await {
                Ok(Ok(session)) => return Ok(session),
                Ok(Err(e)) => last = Some(e),
                Err(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(match last {
            Some(source) => QemuError::SshConnect {
                node: self.node.clone(),
                port: self.port,
                source,
            },
            None => QemuError::SshConnectTimeout {
                node: self.node.clone(),
                port: self.port,
                timeout,
            },
        })
    }
}

/// A live SSH session to one node. Commands share it (a read lock each); closing it
/// waits for them.
pub struct SshSession {
    node: String,
    session: RwLock<Option<Session>>,
    rt: Arc<Runtime>,
    /// The node's dp-remote helper once started ([`SshSession::start_remote`]), and the
    /// path it was started from (to start it again if its channel ends).
    remote: Mutex<Option<(PathBuf, Arc<Remote>)>>,
    /// The run's state file: the ControlMaster and helper channels are listed in it.
    state: Option<crate::state::StateFile>,
}

/// The current session of a node, replaced when the node reboots; shared by the provider
/// and the node handles it gives out.
#[derive(Default)]
pub struct SshSlot(RwLock<Option<Arc<SshSession>>>);

impl SshSlot {
    /// The current session, or an error naming the node when there is none (not yet
    /// connected, rebooting, or torn down).
    pub fn get(&self, node: &str) -> Result<Arc<SshSession>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| QemuError::NotConnected {
                node: node.to_owned(),
            })
    }

    pub fn set(&self, session: Option<Arc<SshSession>>) -> Option<Arc<SshSession>> {
        std::mem::replace(
            &mut *self
                .0
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            session,
        )
    }
}

impl SshSession {
    /// A session whose ControlMaster (started by the openssh crate, detached from us) is
    /// recorded in `state` as soon as it is known.
    pub fn new(
        node: &str,
        session: Session,
        rt: Arc<Runtime>,
        state: Option<crate::state::StateFile>,
    ) -> Self {
        if let Some(st) = &state {
            if let Some(pid) = master_pid(session.control_socket()) {
                if let Some(start) = crate::state::start_time(pid) {
                    let _ = st.add_process(pid, start, &format!("ssh ControlMaster to {node}"));
                }
            }
        }
        Self {
            node: node.to_owned(),
            session: RwLock::new(Some(session)),
            rt,
            remote: Mutex::new(None),
            state,
        }
    }

    /// Starts the node's helper (`helper`, a path on the node: harness/remote); from then
    /// on [`SshSession::run`] and the node's operations go through it.
    pub fn start_remote(&self, helper: &Path) -> Result<()> {
        let r = self.spawn_remote(helper)?;
        *self.remote.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((helper.to_owned(), Arc::new(r)));
        Ok(())
    }

    fn spawn_remote(&self, helper: &Path) -> Result<Remote> {
        let control = {
            let guard = self.session.read().unwrap_or_else(PoisonError::into_inner);
            let session = guard.as_ref().ok_or_else(|| QemuError::NotConnected {
                node: self.node.clone(),
            })?;
            session.control_socket().to_owned()
        };
        Remote::start(&self.node, &control, helper, self.state.as_ref())
    }

    /// The helper, started again when its channel has ended; `None` if it was never
    /// started (plain SSH then).
    pub fn remote(&self) -> Result<Option<Arc<Remote>>> {
        let mut slot = self.remote.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_ref() {
            None => Ok(None),
            Some((_, r)) if !r.is_gone() => Ok(Some(Arc::clone(r))),
            Some((helper, _)) => {
                let helper = helper.clone();
                let r = Arc::new(self.spawn_remote(&helper)?);
                *slot = Some((helper, Arc::clone(&r)));
                Ok(Some(r))
            }
        }
    }

    /// The helper, or an error naming the node when none was started.
    pub fn require_remote(&self) -> Result<Arc<Remote>> {
        self.remote()?.ok_or_else(|| QemuError::RemoteStart {
            node: self.node.clone(),
            helper: PathBuf::from("dp-remote"),
            reason: "the node's helper was never started".into(),
        })
    }

    /// `script` through the helper: one bash, nothing around it.
    fn run_remote(
        &self,
        remote: &Remote,
        script: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<RemoteOutput> {
        let started = Instant::now();
        let (reply, mut payloads) = remote.call(
            Op::Run {
                argv: vec!["bash".into(), "-c".into(), script.to_owned()],
                env: Vec::new(),
                timeout_ms: timeout.as_millis() as u64,
            },
            stdin.unwrap_or_default(),
            timeout,
            script,
        )?;
        let ended = match reply {
            Reply::Ran { ended, .. } if ended.len() == 1 && payloads.len() == 2 => ended[0],
            // Not the channel's fault: the helper and the harness disagree (no retry).
            other => {
                return Err(QemuError::RemoteFailed {
                    node: self.node.clone(),
                    command: script.to_owned(),
                    status: "no status".into(),
                    stderr: format!("unexpected answer from dp-remote: {other:?}"),
                })
            }
        };
        let stderr = payloads.pop().unwrap_or_default();
        let stdout = payloads.pop().unwrap_or_default();
        let status = match ended {
            Ended::Code(c) => Some(c),
            // As bash reports a command killed by a signal.
            Ended::Signal(s) => Some(128 + s),
            Ended::Unknown => None,
            Ended::TimedOut => {
                return Err(QemuError::SshTimeout {
                    node: self.node.clone(),
                    command: script.to_owned(),
                    timeout,
                })
            }
        };
        Ok(RemoteOutput {
            status,
            stdout,
            stderr,
            duration: started.elapsed(),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Runs `script` with bash on the node, `stdin` fed to it, within `timeout` (enforced
    /// on both ends: the remote `timeout` kills the command, the local one stops waiting).
    pub fn run(
        &self,
        script: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<RemoteOutput> {
        if let Some(remote) = self.remote()? {
            return self.run_remote(&remote, script, stdin, timeout);
        }
        let guard = self
            .session
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let session = guard.as_ref().ok_or_else(|| QemuError::NotConnected {
            node: self.node.clone(),
        })?;
        let secs = timeout.as_secs().max(1);
        let err = |source| QemuError::Ssh {
            node: self.node.clone(),
            command: script.to_owned(),
            source,
        };
        let started = Instant::now();
        // A long script goes on stdin: dropbear refuses command lines over a few KB (the
        // session then ends with "the remote process has terminated").
        let script_on_stdin = stdin.is_none() && script.len() > MAX_INLINE_SCRIPT;
        let stdin = if script_on_stdin {
            Some(script.as_bytes())
        } else {
            stdin
        };
        let fut = async {
            // The wrapper reports the script's status on stderr and exits 0, because the
            // crate turns a remote exit status of 127 into an error without the output.
            let run = if script_on_stdin {
                format!("s=$(cat); timeout -k 2 {secs} bash -c \"$s\" </dev/null")
            } else {
                format!("timeout -k 2 {secs} bash -c \"$1\"")
            };
            let wrapper = format!(
                "export PATH={REMOTE_PATH}; {run}; \
                 rc=$?; printf '\\n{RC_TRAILER}%d\\n' \"$rc\" >&2; exit 0"
            );
            let mut cmd = session.command("bash");
            cmd.arg("-c")
                .arg(wrapper)
                .arg("dp-remote")
                .arg(if script_on_stdin { "-" } else { script })
                .stdin(if stdin.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd.spawn().await.map_err(err)?;
            if let Some(data) = stdin {
                if let Some(mut w) = child.stdin().take() {
                    // A command that does not read its stdin closes it early: not our error.
                    let _ = w.write_all(data).await;
                    let _ = w.shutdown().await;
                }
            }
            let out = child.wait_with_output().await.map_err(err)?;
            let (stderr, status) = split_status(out.stderr);
            Ok(RemoteOutput {
                status,
                stdout: out.stdout,
                stderr,
                duration: started.elapsed(),
            })
        };
        let result = self
            .rt
            .block_on(async { tokio::time::timeout(timeout + Duration::from_secs(5), fut).await });
        match result {
            // `timeout` exits 124 when it had to stop the command.
            Ok(Ok(out)) if out.status == Some(124) && out.duration >= timeout => {
                Err(QemuError::SshTimeout {
                    node: self.node.clone(),
                    command: script.to_owned(),
                    timeout,
                })
            }
            Ok(r) => r,
            Err(_) => Err(QemuError::SshTimeout {
                node: self.node.clone(),
                command: script.to_owned(),
                timeout,
            }),
        }
    }

    /// Runs `script` and fails unless it exits 0.
    pub fn check(&self, script: &str, timeout: Duration) -> Result<RemoteOutput> {
        let out = self.run(script, None, timeout)?;
        if !out.success() {
            return Err(QemuError::RemoteFailed {
                node: self.node.clone(),
                command: script.to_owned(),
                status: out
                    .status
                    .map_or_else(|| "killed".to_owned(), |c| c.to_string()),
                stderr: out.stderr_str().trim().to_owned(),
            });
        }
        Ok(out)
    }

    /// Writes `data` to `path` on the node through `cat` (no sftp needed): the way the
    /// helper itself gets onto a node. Node operations use the helper (node/ssh.rs).
    pub fn write_file(&self, path: &Path, data: &[u8], mode: u32) -> Result<()> {
        let p = shell_quote(&path.to_string_lossy());
        let script = format!(
            "mkdir -p \"$(dirname {p})\" && cat > {p}.dp-tmp && chmod {mode:o} {p}.dp-tmp \
             && mv -f {p}.dp-tmp {p}"
        );
        let out = self.run(&script, Some(data), Duration::from_secs(60))?;
        if !out.success() {
            return Err(QemuError::RemoteFailed {
                node: self.node.clone(),
                command: script,
                status: format!("{:?}", out.status),
                stderr: out.stderr_str().trim().to_owned(),
            });
        }
        Ok(())
    }

    /// Reads `path` on the node with `cat` (through the helper once it runs).
    pub fn read_file(&self, path: &Path) -> Result<Vec<u8>> {
        let script = format!("cat {}", shell_quote(&path.to_string_lossy()));
        Ok(self.check(&script, Duration::from_secs(60))?.stdout)
    }

    /// Ends the ControlMaster (after the commands in flight).
    pub fn close(&self) {
        // The helper's ssh client first: it holds a channel of the master.
        drop(
            self.remote
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let taken = self
            .session
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(s) = taken {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), s.close()).await });
        }
    }
}

impl Drop for SshSession {
    fn drop(&mut self) {
        self.close();
    }
}

pub use crate::node::shell_quote;

/// The pid of the ControlMaster listening on `control` (`ssh -O check` says
/// "Master running (pid=N)").
fn master_pid(control: &Path) -> Option<u32> {
    let out = std::process::Command::new("ssh")
        .arg("-S")
        .arg(control)
        .args(["-O", "check", "none"])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let rest = &text[text.find("(pid=")? + 5..];
    rest[..rest.find(')')?].parse().ok()
}
