//! Running `datapathd` on a node: start (optionally at a failpoint, optionally a mutant),
//! wait for its ready line, kill it by pid, and keep every start's logs.

use std::path::PathBuf;
use std::time::Duration;

use super::ClusterNode;
use crate::node::{wait_for_line, Exit, NodeError, Process, SpawnSpec};

/// The line datapathd prints once it is serving.
pub const READY_LINE: &str = "datapathd: ready";
/// How long a start may take to print it. Generous: the wait ends as soon as the line
/// appears, and under TCG three agents starting at once on two host cores take ~30 s
/// (the verifier and iptables-nft run emulated).
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// One start of the agent.
pub struct AgentRun {
    pub proc: Box<dyn Process>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub failpoint: Option<String>,
}

/// The agent of one node, across its restarts.
pub struct Agent {
    pub node: String,
    pub mutant: Option<String>,
    /// Flags every start adds (`--accelerate ...` when the suite deploys with
    /// acceleration), so that restarts by faults keep the deployment's configuration.
    pub extra_args: Vec<String>,
    pub starts: u32,
    pub current: Option<AgentRun>,
    /// Logs of every start, for artifacts.
    pub logs: Vec<PathBuf>,
}

impl Agent {
    pub fn new(node: &str, mutant: Option<&str>) -> Agent {
        Agent {
            node: node.to_string(),
            mutant: mutant.map(str::to_string),
            extra_args: Vec::new(),
            starts: 0,
            current: None,
            logs: Vec::new(),
        }
    }

    /// Starts datapathd on `cn` (does not wait).
    pub fn start(&mut self, cn: &ClusterNode, failpoint: Option<&str>) -> Result<(), NodeError> {
        self.starts += 1;
        let n = self.starts;
        let mut argv = vec![
            cn.datapathd.display().to_string(),
            "run".into(),
            "--cgroup".into(),
            cn.cgroup.display().to_string(),
            "--services".into(),
            cn.services_dir.display().to_string(),
            "--bpffs".into(),
            cn.bpffs.display().to_string(),
        ];
        if let Some(net) = &cn.net {
            argv.extend(net.agent_args());
        }
        argv.extend(self.extra_args.iter().cloned());
        if let Some(m) = &self.mutant {
            argv.push("--mutant".into());
            argv.push(m.clone());
        }
        if let Some(f) = failpoint {
            argv.push("--failpoint".into());
            argv.push(f.to_string());
        }
        let stdout = cn.work_dir.join(format!("datapathd-{n}.out"));
        let stderr = cn.work_dir.join(format!("datapathd-{n}.log"));
        self.logs.push(stdout.clone());
        self.logs.push(stderr.clone());
        let proc = cn.node.spawn(&SpawnSpec {
            argv,
            stdout: stdout.clone(),
            stderr: stderr.clone(),
            env: vec![("RUST_LOG".into(), "info".into())],
        })?;
        self.current = Some(AgentRun {
            proc,
            stdout,
            stderr,
            failpoint: failpoint.map(str::to_string),
        });
        Ok(())
    }

    /// Waits for the ready line. Ok(None) when ready; Ok(Some(exit)) when it ended first.
    pub fn wait_ready(
        &mut self,
        cn: &ClusterNode,
        timeout: Duration,
    ) -> Result<Option<Exit>, NodeError> {
        let Some(run) = self.current.as_mut() else {
            return Ok(Some(Exit::Unknown));
        };
        if wait_for_line(
            cn.node.as_ref(),
            run.proc.as_mut(),
            &run.stdout,
            READY_LINE,
            timeout,
        )? {
            Ok(None)
        } else {
            Ok(Some(run.proc.try_wait()?.unwrap_or(Exit::Unknown)))
        }
    }

    /// Sends `signal` to the running agent and waits for it to end.
    pub fn kill(&mut self, signal: i32) -> Result<Option<Exit>, NodeError> {
        let Some(mut run) = self.current.take() else {
            return Ok(None);
        };
        run.proc.kill(signal)?;
        let exit = run.proc.wait_timeout(Duration::from_secs(10))?;
        if exit.is_none() {
            run.proc.kill(libc::SIGKILL)?;
            return run.proc.wait_timeout(Duration::from_secs(10));
        }
        Ok(exit)
    }

    /// Waits for the current run to end by itself (a failpoint abort).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<Exit>, NodeError> {
        let Some(run) = self.current.as_mut() else {
            return Ok(None);
        };
        let e = run.proc.wait_timeout(timeout)?;
        if e.is_some() {
            self.current = None;
        }
        Ok(e)
    }

    pub fn pid(&self) -> Option<u32> {
        self.current.as_ref().map(|r| r.proc.pid())
    }
}
