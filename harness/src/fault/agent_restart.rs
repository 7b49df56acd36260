//! agent-restart-mid-attach (incident A): on the planned node, SIGKILL the running agent
//! after a planned delay; change the services while it is down; start it with the planned
//! `--failpoint` and prove it aborted there (SIGABRT and its own "failpoint X" line);
//! start it again and SIGKILL it a planned few ms into its start; start it for good and
//! wait for its ready line.

use std::time::Duration;

use super::{Fault, FaultError, FaultRecord};
use crate::cluster::datapath::READY_TIMEOUT;
use crate::node::Exit;
use crate::plan::RestartPlan;
use crate::run::Live;

const NAME: &str = "agent-restart-mid-attach";

pub struct AgentRestartMidAttach(pub RestartPlan);

impl Fault for AgentRestartMidAttach {
    fn name(&self) -> &'static str {
        NAME
    }

    fn inject(&self, live: &mut Live) -> Result<FaultRecord, FaultError> {
        let p = &self.0;
        let node = p.node.clone();
        let nerr = |what: &str| {
            let node = node.clone();
            let what = what.to_string();
            move |source| FaultError::Node {
                fault: NAME,
                node,
                what,
                source: Box::new(source),
            }
        };
        let not = |what: String| FaultError::NotProved {
            fault: NAME,
            node: node.clone(),
            what,
        };
        let cn = live
            .cluster
            .node(&node)
            .cloned()
            .ok_or_else(|| not("no such node".into()))?;
        let idx = live
            .agents
            .iter()
            .position(|a| a.node == node)
            .ok_or_else(|| not("no agent deployed".into()))?;
        let mut rec = FaultRecord::default();

        // 1. SIGKILL the running agent at a planned moment.
        if !live.cancel.sleep(Duration::from_millis(p.kill_after_ms)) {
            return Err(FaultError::Interrupted);
        }
        let pid = live.agents[idx].pid();
        let exit = live.agents[idx]
            .kill(libc::SIGKILL)
            .map_err(nerr("SIGKILL the agent"))?;
        if exit != Some(Exit::Signal(libc::SIGKILL)) {
            return Err(not(format!(
                "agent pid {pid:?} did not die by SIGKILL: {exit:?}"
            )));
        }
        rec.proof.push(format!(
            "agent pid {} SIGKILLed after {} ms: {}",
            pid.unwrap_or(0),
            p.kill_after_ms,
            Exit::Signal(9)
        ));

        // 2. Change the services while it is down.
        live.set_backends(&p.service_change.service, &p.service_change.backends)
            .map_err(nerr("write services"))?;
        rec.proof.push(format!(
            "service {} now has backends [{}] (written while the agent was down)",
            p.service_change.service,
            p.service_change.backends.join(", ")
        ));

        // 3. Start at the failpoint: it must abort there.
        live.agents[idx]
            .start(&cn, Some(&p.failpoint))
            .map_err(nerr("start at failpoint"))?;
        let stderr = live.agents[idx].current.as_ref().map(|r| r.stderr.clone());
        let exit = live.agents[idx]
            .wait_exit(Duration::from_secs(30))
            .map_err(nerr("wait for failpoint"))?;
        let log = stderr
            .and_then(|f| cn.node.read_file(&f).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let line = format!("datapathd: failpoint {}: aborting", p.failpoint);
        if exit != Some(Exit::Signal(libc::SIGABRT)) || !log.contains(&line) {
            let _ = live.agents[idx].kill(libc::SIGKILL);
            return Err(not(format!(
                "start with --failpoint {} ended with {exit:?}, log has `{line}`: {}",
                p.failpoint,
                log.contains(&line)
            )));
        }
        rec.proof.push(format!(
            "agent aborted at failpoint {}: {} and `{line}`",
            p.failpoint,
            Exit::Signal(6)
        ));

        // 4. Start and SIGKILL it a few ms in (mid-attach, or just after).
        live.agents[idx].start(&cn, None).map_err(nerr("start"))?;
        if !live
            .cancel
            .sleep(Duration::from_millis(p.start_kill_after_ms))
        {
            return Err(FaultError::Interrupted);
        }
        let out = live.agents[idx].current.as_ref().map(|r| r.stdout.clone());
        let exit = live.agents[idx]
            .kill(libc::SIGKILL)
            .map_err(nerr("SIGKILL mid-start"))?;
        let was_ready = out
            .and_then(|f| cn.node.read_file(&f).ok())
            .is_some_and(|b| {
                String::from_utf8_lossy(&b).contains(crate::cluster::datapath::READY_LINE)
            });
        match exit {
            Some(Exit::Signal(9)) => rec.proof.push(format!(
                "agent SIGKILLed {} ms into its start ({})",
                p.start_kill_after_ms,
                if was_ready {
                    "after it was ready"
                } else {
                    "before it was ready"
                }
            )),
            // It may have failed by itself before the signal; record what happened.
            other => rec.proof.push(format!(
                "agent ended {other:?} before the mid-start SIGKILL"
            )),
        }

        // 5. Start for good.
        live.agents[idx]
            .start(&cn, None)
            .map_err(nerr("final start"))?;
        match live.agents[idx]
            .wait_ready(&cn, READY_TIMEOUT)
            .map_err(nerr("wait ready"))?
        {
            None => rec.proof.push("agent restarted and ready".into()),
            Some(e) => {
                return Err(not(format!(
                    "the final start ended with {e} before it was ready"
                )))
            }
        }
        Ok(rec)
    }
}
