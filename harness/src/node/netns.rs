//! A node that is a network namespace on the host: commands run through
//! `nsenter --net=PATH` (which execs, so the pid we hold is the program's; unlike
//! `ip netns exec` it does not remount /sys, so the cgroup2 mount stays visible). Files
//! are the host's files: the node shares the host's mount namespace.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Exit, Node, NodeError, Output, Process, SpawnSpec};

pub struct NetnsNode {
    name: String,
    netns: PathBuf,
    /// Every process spawned is recorded here (pid, start time) before anything else.
    state: Option<crate::state::StateFile>,
}

impl NetnsNode {
    /// A node whose commands run in the network namespace bound at `netns`
    /// (`/run/netns/NAME`).
    pub fn new(name: &str, netns: &Path) -> NetnsNode {
        NetnsNode {
            name: name.to_string(),
            netns: netns.to_path_buf(),
            state: None,
        }
    }

    /// Records every spawned process in `state`.
    pub fn with_state(mut self, state: crate::state::StateFile) -> NetnsNode {
        self.state = Some(state);
        self
    }

    pub fn netns(&self) -> &Path {
        &self.netns
    }

    /// The host itself (no namespace switch): for the judge's host-wide observations.
    pub fn host() -> NetnsNode {
        NetnsNode::new("host", Path::new(""))
    }

    /// The command for `argv`; behind the gate when the node records its processes.
    fn command(&self, argv: &[&str]) -> Command {
        let new = |program: &str| match &self.state {
            Some(_) => crate::gate::command(program),
            None => Command::new(program),
        };
        let mut cmd = if self.netns.as_os_str().is_empty() {
            let mut c = new(argv[0]);
            c.args(&argv[1..]);
            c
        } else {
            let mut c = new("nsenter");
            c.arg(format!("--net={}", self.netns.display()))
                .arg("--")
                .args(argv);
            c
        };
        // Own process group: a Ctrl-C at the terminal reaches the harness only, which
        // then stops its children itself, in order.
        cmd.process_group(0);
        cmd
    }

    /// Starts `cmd` (from [`NetnsNode::command`]), recorded in the run's state first when
    /// the node has one; stdin is null (or end-of-file).
    fn start(&self, cmd: &mut Command, argv: &[&str]) -> Result<Child, NodeError> {
        let spawned = match &self.state {
            Some(st) => {
                let what = format!("{}: {}", self.name, argv.join(" "));
                crate::gate::spawn(cmd, st, &what, crate::gate::Stdin::Closed)
            }
            None => cmd.stdin(Stdio::null()).spawn(),
        };
        spawned.map_err(|source| NodeError::Spawn {
            node: self.name.clone(),
            command: argv.join(" "),
            source,
        })
    }

    /// Forgets a reaped child in the run's state.
    fn reaped(&self, pid: u32, start: Option<u64>) {
        if let Some(st) = &self.state {
            crate::gate::reaped(st, pid, start);
        }
    }

    fn file_err(&self, what: &'static str, path: &Path, source: std::io::Error) -> NodeError {
        NodeError::File {
            node: self.name.clone(),
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Reads a pipe to its end on a thread.
fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        buf
    })
}

impl Node for NetnsNode {
    fn name(&self) -> &str {
        &self.name
    }

    fn record_sandbox(&self, netns: &str, cgroup: &Path) -> Result<(), NodeError> {
        let Some(st) = &self.state else {
            return Ok(());
        };
        st.update(|s| {
            if !s.netns.iter().any(|n| n == netns) {
                s.netns.push(netns.to_string());
            }
            if !s.cgroups.iter().any(|c| c == cgroup) {
                s.cgroups.push(cgroup.to_path_buf());
            }
        })
        .map_err(|source| {
            self.file_err(
                "cannot record a pod sandbox in the run's state",
                Path::new(netns),
                source,
            )
        })
    }

    fn run(&self, argv: &[&str], timeout: Duration) -> Result<Output, NodeError> {
        let start = Instant::now();
        let mut cmd = self.command(argv);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = self.start(&mut cmd, argv)?;
        let started = crate::state::start_time(child.id());
        let out = drain(child.stdout.take());
        let err = drain(child.stderr.take());
        let deadline = start + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = crate::state::kill_pid(child.id(), libc::SIGKILL);
                    let _ = child.wait();
                    self.reaped(child.id(), started);
                    let _ = out.join();
                    let _ = err.join();
                    return Err(NodeError::Timeout {
                        node: self.name.clone(),
                        command: argv.join(" "),
                        after: timeout,
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(source) => {
                    return Err(NodeError::Spawn {
                        node: self.name.clone(),
                        command: argv.join(" "),
                        source,
                    })
                }
            }
        };
        self.reaped(child.id(), started);
        Ok(Output {
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
            exit: Exit::from_std(status),
            duration: start.elapsed(),
        })
    }

    fn spawn(&self, spec: &SpawnSpec) -> Result<Box<dyn Process>, NodeError> {
        let argv: Vec<&str> = spec.argv.iter().map(String::as_str).collect();
        let open = |p: &Path| {
            if let Some(dir) = p.parent() {
                fs::create_dir_all(dir).map_err(|e| self.file_err("cannot create", dir, e))?;
            }
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| self.file_err("cannot open", p, e))
        };
        let stdout = open(&spec.stdout)?;
        let stderr = open(&spec.stderr)?;
        let mut cmd = self.command(&argv);
        cmd.stdout(stdout).stderr(stderr);
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        let child = self.start(&mut cmd, &argv)?;
        Ok(Box::new(LocalProcess {
            node: self.name.clone(),
            start: crate::state::start_time(child.id()),
            child,
            exit: None,
            state: self.state.clone(),
        }))
    }

    fn read_file(&self, path: &Path) -> Result<Vec<u8>, NodeError> {
        fs::read(path).map_err(|e| self.file_err("cannot read", path, e))
    }

    fn write_file(&self, path: &Path, data: &[u8], mode: u32) -> Result<(), NodeError> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| self.file_err("cannot create", dir, e))?;
        }
        // Write beside and rename: a watcher never sees half a file.
        let tmp = path.with_extension("tmp~");
        fs::write(&tmp, data).map_err(|e| self.file_err("cannot write", &tmp, e))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
            .map_err(|e| self.file_err("cannot chmod", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| self.file_err("cannot rename to", path, e))
    }
}

/// A child process of the harness.
pub struct LocalProcess {
    node: String,
    child: Child,
    /// Its start time, with which the run's state file lists it.
    start: Option<u64>,
    exit: Option<Exit>,
    /// The run's state file, which forgets the process once it is reaped.
    state: Option<crate::state::StateFile>,
}

impl Process for LocalProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(&mut self, signal: i32) -> Result<(), NodeError> {
        if self.exit.is_some() {
            return Ok(());
        }
        // Reap first if it already ended: never signal a pid that may have been reused.
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        crate::state::kill_pid(self.child.id(), signal).map_err(|source| NodeError::Signal {
            node: self.node.clone(),
            pid: self.child.id(),
            source,
        })
    }

    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<Exit>, NodeError> {
        if let Some(e) = self.exit {
            return Ok(Some(e));
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => {
                    self.exit = Some(Exit::from_std(s));
                    if let Some(st) = &self.state {
                        crate::gate::reaped(st, self.child.id(), self.start);
                    }
                    return Ok(self.exit);
                }
                Ok(None) if Instant::now() >= deadline => return Ok(None),
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(source) => {
                    return Err(NodeError::Signal {
                        node: self.node.clone(),
                        pid: self.child.id(),
                        source,
                    })
                }
            }
        }
    }
}
