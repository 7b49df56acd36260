//! agent-restart-mid-attach (incident A): on the planned node, SIGKILL the running agent
//! after a planned delay; change the services while it is down; start it with the planned
//! `--failpoint` and prove it aborted there (SIGABRT and its own "failpoint X" line);
//! start it again and SIGKILL it a planned few ms into its start; start it for good and
//! wait for its ready line.

use std::time::Duration;

use rand::Rng;

use super::{Fault, FaultError, FaultRecord, PlanContext, Site, Started};
use crate::cluster::datapath::READY_TIMEOUT;
use crate::live::Live;
use crate::node::Exit;
use crate::provider::Machines;
use crate::suite::{FaultStep, Scenario, Suite};

const NAME: &str = "agent-restart-mid-attach";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct AgentRestartMidAttach(pub RestartPlan);

/// The start-up steps of datapathd at which `--failpoint` aborts it, in the order a start
/// reaches them (datapath/README.md). The run checks this list against
/// `datapathd failpoints` before it starts, so a drift is a harness error, not a silent
/// skip.
pub const FAILPOINTS: &[&str] = &[
    "after-pin-map:dp_services",
    "after-pin-map:dp_slots",
    "after-pin-map:dp_backends",
    "after-pin-map:dp_revnat",
    "after-pin-map:dp_meta",
    "after-load:connect4",
    "after-load:sendmsg4",
    "after-load:recvmsg4",
    "after-load:getpeername4",
    "after-attach:connect4",
    "after-pin-link:connect4",
    "after-attach:sendmsg4",
    "after-pin-link:sendmsg4",
    "after-attach:recvmsg4",
    "after-pin-link:recvmsg4",
    "after-attach:getpeername4",
    "after-pin-link:getpeername4",
    "before-first-fill",
    "after-first-fill",
];

/// Every decision of one agent-restart-mid-attach.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RestartPlan {
    pub node: String,
    /// SIGKILL the running agent after this many ms.
    pub kill_after_ms: u64,
    /// Then, with the agent down, the services change to this.
    pub service_change: ServiceChange,
    /// Then it is started with `--failpoint` this, and must die by SIGABRT there.
    pub failpoint: String,
    /// Then it is started again and SIGKILLed this many ms after the start (mid-attach or
    /// just after, whichever it reaches); the history records which.
    pub start_kill_after_ms: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServiceChange {
    pub service: String,
    pub backends: Vec<String>,
}

/// A non-empty subset of `all` that differs from `now` when `all` has more than one.
fn change_backends(
    rng: &mut rand_chacha::ChaCha8Rng,
    all: &[String],
    now: &[String],
) -> Vec<String> {
    if all.len() <= 1 {
        return all.to_vec();
    }
    loop {
        let pick: Vec<String> = all
            .iter()
            .filter(|_| rng.random_bool(0.5))
            .cloned()
            .collect();
        if !pick.is_empty() && pick != now {
            return pick;
        }
    }
}

impl Fault for AgentRestartMidAttach {
    const NAME: &'static str = NAME;
    const ABOUT: &'static str =
        "incident A: SIGKILL the agent, change a service while it is down, \
abort a start at a failpoint, kill the next one mid-attach, then start it for good";

    fn validate(suite: &Suite, _scenario: &Scenario, _step: &FaultStep) -> Result<(), String> {
        if suite.services.is_empty() {
            return Err("it changes a service while the agent is down: the suite has none".into());
        }
        Ok(())
    }

    fn plan(cx: &mut PlanContext<'_>, step: &FaultStep) -> Self {
        let node = cx.node(step);
        let kill_after_ms = cx.rng.random_range(0..400);
        let svc = &cx.suite.services[cx.rng.random_range(0..cx.suite.services.len())];
        let now = cx.backends.get(&svc.name).cloned().unwrap_or_default();
        let next = change_backends(cx.rng, &svc.backends, &now);
        cx.backends.insert(svc.name.clone(), next.clone());
        let failpoint = FAILPOINTS[cx.rng.random_range(0..FAILPOINTS.len())];
        let start_kill_after_ms = cx.rng.random_range(0..150);
        AgentRestartMidAttach(RestartPlan {
            node,
            kill_after_ms,
            service_change: ServiceChange {
                service: svc.name.clone(),
                backends: next,
            },
            failpoint: failpoint.to_string(),
            start_kill_after_ms,
        })
    }

    fn describe(&self) -> String {
        let r = &self.0;
        format!(
            "node={} kill-after={}ms failpoint={} change={}->[{}] start-kill-after={}ms",
            r.node,
            r.kill_after_ms,
            r.failpoint,
            r.service_change.service,
            r.service_change.backends.join(","),
            r.start_kill_after_ms
        )
    }

    fn start<'m>(
        &self,
        live: &mut Live,
        _machines: Option<&'m mut dyn Machines>,
    ) -> Result<Started<'m>, FaultError> {
        Ok(Started::ended(NAME, self.inject(live)?))
    }
}

impl AgentRestartMidAttach {
    fn inject(&self, live: &mut Live) -> Result<FaultRecord, FaultError> {
        let p = &self.0;
        let node = p.node.clone();
        let site = Site::new(NAME, &node);
        let cn = site.cluster_node(live)?;
        let idx = live
            .agents
            .iter()
            .position(|a| a.node == node)
            .ok_or_else(|| site.not_proved("no agent deployed"))?;
        let mut rec = FaultRecord::default();

        // 1. SIGKILL the running agent at a planned moment.
        if !live.cancel.sleep(Duration::from_millis(p.kill_after_ms)) {
            return Err(FaultError::Interrupted);
        }
        let pid = live.agents[idx].pid();
        let exit = live.agents[idx]
            .kill(libc::SIGKILL)
            .map_err(site.node_error("SIGKILL the agent"))?;
        if exit != Some(Exit::Signal(libc::SIGKILL)) {
            return Err(site.not_proved(format!(
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
            .map_err(site.node_error("write services"))?;
        rec.proof.push(format!(
            "service {} now has backends [{}] (written while the agent was down)",
            p.service_change.service,
            p.service_change.backends.join(", ")
        ));

        // 3. Start at the failpoint: it must abort there.
        live.agents[idx]
            .start(&cn, Some(&p.failpoint))
            .map_err(site.node_error("start at failpoint"))?;
        let stderr = live.agents[idx].current.as_ref().map(|r| r.stderr.clone());
        let exit = live.agents[idx]
            .wait_exit(Duration::from_secs(30))
            .map_err(site.node_error("wait for failpoint"))?;
        let log = stderr
            .and_then(|f| cn.node.read_file(&f).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let line = format!("datapathd: failpoint {}: aborting", p.failpoint);
        if exit != Some(Exit::Signal(libc::SIGABRT)) || !log.contains(&line) {
            let _ = live.agents[idx].kill(libc::SIGKILL);
            return Err(site.not_proved(format!(
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
        live.agents[idx]
            .start(&cn, None)
            .map_err(site.node_error("start"))?;
        if !live
            .cancel
            .sleep(Duration::from_millis(p.start_kill_after_ms))
        {
            return Err(FaultError::Interrupted);
        }
        let out = live.agents[idx].current.as_ref().map(|r| r.stdout.clone());
        let exit = live.agents[idx]
            .kill(libc::SIGKILL)
            .map_err(site.node_error("SIGKILL mid-start"))?;
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
            .map_err(site.node_error("final start"))?;
        match live.agents[idx]
            .wait_ready(&cn, READY_TIMEOUT)
            .map_err(site.node_error("wait ready"))?
        {
            None => rec.proof.push("agent restarted and ready".into()),
            Some(e) => {
                return Err(site.not_proved(format!(
                    "the final start ended with {e} before it was ready"
                )))
            }
        }
        Ok(rec)
    }
}
