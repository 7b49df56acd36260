//! Errors of the qemu provider: each names the node, the command or the path it is about,
//! with the cause in `#[source]` and not repeated in the message.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("{binary} not found: install qemu-system-x86 (ci/setup does)")]
    QemuMissing { binary: String },

    #[error("{tool} not found: {hint}")]
    ToolMissing { tool: String, hint: &'static str },

    #[error("kernel not found: {path}")]
    KernelMissing { path: PathBuf },

    /// The kernel asked for does not exist or is not a kernel (the builder's exit 2):
    /// bad input, not a harness failure.
    #[error("no node image for kernel {spec}: {message}")]
    KernelUnavailable { spec: String, message: String },

    #[error(
        "image builder not found at {path} (set DP_HARNESS_IMAGES_DIR to the repository's images/)"
    )]
    ImageBuilderMissing { path: PathBuf },

    #[error("image build with {script} failed ({status}):\n{stderr_tail}")]
    ImageBuild {
        script: PathBuf,
        status: String,
        stderr_tail: String,
    },

    #[error("image directory {dir} lacks {file}")]
    ImageIncomplete { dir: PathBuf, file: &'static str },

    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("running `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },

    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },

    #[error("{call} in network namespace {netns}")]
    Netns {
        netns: String,
        call: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("node {node}: no free port for the SSH forward after {attempts} attempts (last: {port}): QEMU said \"Could not set up host forwarding rule\"")]
    PortTaken {
        node: String,
        port: u16,
        attempts: u32,
    },

    #[error("node {node}: QEMU exited ({status}) before the guest was ready\nQEMU stderr:\n{stderr_tail}\nconsole {console}:\n{console_tail}")]
    QemuExited {
        node: String,
        status: String,
        stderr_tail: String,
        console: PathBuf,
        console_tail: String,
    },

    #[error("node {node}: not ready after {timeout:?} (no ready marker on the console)\nconsole {console}:\n{console_tail}")]
    NotReady {
        node: String,
        timeout: Duration,
        console: PathBuf,
        console_tail: String,
    },

    #[error("node {node}: the guest's init failed: {reason}\nconsole {console}:\n{console_tail}")]
    GuestFailed {
        node: String,
        reason: String,
        console: PathBuf,
        console_tail: String,
    },

    #[error("node {node}: SSH to 127.0.0.1:{port} failed")]
    SshConnect {
        node: String,
        port: u16,
        #[source]
        source: openssh::Error,
    },

    #[error("node {node}: SSH to 127.0.0.1:{port} not established within {timeout:?}")]
    SshConnectTimeout {
        node: String,
        port: u16,
        timeout: Duration,
    },

    #[error("node {node}: `{command}` over SSH")]
    Ssh {
        node: String,
        command: String,
        #[source]
        source: openssh::Error,
    },

    #[error("node {node}: `{command}` over SSH timed out after {timeout:?}")]
    SshTimeout {
        node: String,
        command: String,
        timeout: Duration,
    },

    #[error("node {node}: `{command}` exited {status}: {stderr}")]
    RemoteFailed {
        node: String,
        command: String,
        status: String,
        stderr: String,
    },

    #[error("node {node}: cannot start the helper {helper}: {reason}")]
    RemoteStart {
        node: String,
        helper: PathBuf,
        reason: String,
    },

    #[error("node {node}: `{command}`: the helper's channel ended: {reason}")]
    RemoteLost {
        node: String,
        command: String,
        reason: String,
    },

    #[error("node {node}: no SSH session (not connected, rebooting or torn down)")]
    NotConnected { node: String },

    #[error("{path} is hidden from the guests (their /root, /tmp, /run are their own) and is not in the binaries share{}", shared.as_ref().map(|d| format!(" ({})", d.display())).unwrap_or_default())]
    HiddenFromGuest {
        path: PathBuf,
        shared: Option<PathBuf>,
    },
    #[error("a cluster needs at least one node")]
    NoNodes,
    #[error("interrupted while booting")]
    Interrupted,

    #[error("no node named {node} in this cluster")]
    NoSuchNode { node: String },

    #[error("starting the SSH runtime")]
    Runtime(#[source] std::io::Error),
}

pub type Result<T, E = QemuError> = std::result::Result<T, E>;

/// The last `lines` lines of a text, for attaching logs to errors.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

/// The last `lines` lines of a file, or a note saying why there are none.
pub(crate) fn tail_file(path: &std::path::Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) if bytes.is_empty() => "(empty)".to_owned(),
        Ok(bytes) => tail(&String::from_utf8_lossy(&bytes), lines),
        Err(e) => format!("(unreadable: {e})"),
    }
}

impl QemuError {
    /// The SSH transport failed (the ControlMaster refused or lost the session: ssh exits
    /// 255), as opposed to the remote command failing or timing out.
    pub fn is_transport(&self) -> bool {
        matches!(self, QemuError::RemoteLost { .. })
            || matches!(
                self,
                QemuError::Ssh {
                    source: openssh::Error::RemoteProcessTerminated | openssh::Error::Disconnected,
                    ..
                }
            )
    }
}
