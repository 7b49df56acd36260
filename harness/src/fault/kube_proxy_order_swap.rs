//! kube-proxy-order-swap (incident B): kube-proxy (the fixture, cluster/kube_proxy.rs) is
//! started on every node *after* the datapath, so its jumps land on top of `FORWARD`; then,
//! on the planned node and in the planned order: kube-proxy restarted alone, the agent
//! restarted alone, kube-proxy's rules flushed and re-added, and the reverse start order
//! (the agent's rules removed, kube-proxy's in place, the agent started last).
//!
//! Proof: after each action, `FORWARD` as iptables-save shows it (the chain each rule jumps
//! to, in order), and whether the datapath's chain came back to the top within
//! [`SETTLE`] (the correct agent restores it within seconds; a mutant never does: that is
//! the invariants' to judge, not the fault's). Heal: none is needed: kube-proxy stays
//! installed, as in a real cluster, and the checks that follow judge the result.

use std::time::{Duration, Instant};

use rand::seq::SliceRandom;

use super::{Fault, FaultError, FaultRecord, PlanContext, Started};
use crate::cluster::datapath::READY_TIMEOUT;
use crate::cluster::kube_proxy::KubeProxy;
use crate::cluster::ClusterNode;
use crate::errors::chain;
use crate::live::Live;
use crate::observe::iptables;
use crate::observe::iptables::{DATAPATH_CHAIN, KUBE_FORWARD};
use crate::provider::Machines;
use crate::suite::FaultStep;

const NAME: &str = "kube-proxy-order-swap";
/// How long the fault waits for the datapath's chain to be first again after an action.
pub const SETTLE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct KubeProxyOrderSwap(pub OrderSwapPlan);

/// Every decision of one kube-proxy-order-swap: kube-proxy is first started on every node
/// after the datapath; then on `node` the `actions` run in this (seeded) order.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OrderSwapPlan {
    pub node: String,
    /// kube-proxy version and mode of the fixture (`1.30/iptables`).
    pub kube_proxy: String,
    pub actions: Vec<OrderSwapAction>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OrderSwapAction {
    /// Restart kube-proxy alone (it ensures its jumps; present ones stay where they are).
    RestartKubeProxy,
    /// Restart the agent alone (SIGTERM, start, ready).
    RestartAgent,
    /// Remove kube-proxy's rules and start it again (its jumps go back on top).
    FlushAndReadd,
    /// The reverse order: the agent's rules removed (`datapathd cleanup`), kube-proxy's
    /// in place, then the agent started.
    AgentAfterKubeProxy,
}

impl OrderSwapAction {
    pub const ALL: [OrderSwapAction; 4] = [
        OrderSwapAction::RestartKubeProxy,
        OrderSwapAction::RestartAgent,
        OrderSwapAction::FlushAndReadd,
        OrderSwapAction::AgentAfterKubeProxy,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            OrderSwapAction::RestartKubeProxy => "restart-kube-proxy",
            OrderSwapAction::RestartAgent => "restart-agent",
            OrderSwapAction::FlushAndReadd => "flush-and-readd",
            OrderSwapAction::AgentAfterKubeProxy => "agent-after-kube-proxy",
        }
    }
}

impl Fault for KubeProxyOrderSwap {
    const NAME: &'static str = NAME;
    const ABOUT: &'static str = "incident B: kube-proxy (fixture) and the agent started in both \
orders, restarted alone, kube-proxy's rules flushed and re-added";

    fn plan(cx: &mut PlanContext<'_>, step: &FaultStep) -> Self {
        let node = cx.node(step);
        let mut actions = OrderSwapAction::ALL.to_vec();
        actions.shuffle(cx.rng);
        KubeProxyOrderSwap(OrderSwapPlan {
            node,
            kube_proxy: "1.30/iptables".into(),
            actions,
        })
    }

    fn describe(&self) -> String {
        let p = &self.0;
        format!(
            "node={} kube-proxy={} actions={}",
            p.node,
            p.kube_proxy,
            p.actions
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(",")
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

/// `FORWARD`'s jump targets in order (rules without a jump show as `-`).
fn forward_order(cn: &ClusterNode) -> Result<Vec<String>, String> {
    let (_, save) = iptables::save(cn.node.as_ref()).map_err(|e| e.report())?;
    Ok(save
        .filter()
        .chain("FORWARD")
        .iter()
        .map(|r| r.target().unwrap_or("-").to_string())
        .collect())
}

fn dp_first(order: &[String]) -> bool {
    order.first().map(String::as_str) == Some(DATAPATH_CHAIN)
        && order.iter().filter(|t| *t == DATAPATH_CHAIN).count() == 1
}

impl KubeProxyOrderSwap {
    fn not(&self, node: &str, what: String) -> FaultError {
        FaultError::NotProved {
            fault: NAME,
            node: node.to_string(),
            what,
        }
    }

    /// Records FORWARD now, then waits up to SETTLE for DP_FORWARD first and records that.
    fn settle(
        &self,
        live: &Live,
        cn: &ClusterNode,
        after: &str,
        rec: &mut FaultRecord,
    ) -> Result<(), FaultError> {
        let node = cn.name();
        let now = forward_order(cn).map_err(|e| self.not(node, e))?;
        rec.proof
            .push(format!("{node}: FORWARD after {after}: {}", now.join(", ")));
        let t = Instant::now();
        loop {
            let order = forward_order(cn).map_err(|e| self.not(node, e))?;
            if dp_first(&order) {
                rec.proof.push(format!(
                    "{node}: {DATAPATH_CHAIN} first again {} ms after {after}: {}",
                    t.elapsed().as_millis(),
                    order.join(", ")
                ));
                return Ok(());
            }
            if t.elapsed() >= SETTLE {
                rec.proof.push(format!(
                    "{node}: {DATAPATH_CHAIN} NOT first {} s after {after}: {}",
                    SETTLE.as_secs(),
                    order.join(", ")
                ));
                return Ok(());
            }
            if !live.cancel.sleep(Duration::from_millis(200)) {
                return Err(FaultError::Interrupted);
            }
        }
    }

    /// Starts kube-proxy and records FORWARD right after. A KUBE-FORWARD jump missing
    /// there is recorded, not raised: the fixture inserted it, so a concurrent writer (the
    /// datapath) deleted it, and forward-chain-order judges that as a failure.
    fn start_kube_proxy(
        &self,
        kp: &KubeProxy,
        cn: &ClusterNode,
        rec: &mut FaultRecord,
    ) -> Result<(), FaultError> {
        let node = cn.name();
        kp.start(cn.node.as_ref())
            .map_err(|e| self.not(node, format!("starting kube-proxy {kp}: {}", chain(&e))))?;
        let order = forward_order(cn).map_err(|e| self.not(node, e))?;
        if kp.jumps().iter().any(|j| j.to == KUBE_FORWARD)
            && !order.iter().any(|t| t == KUBE_FORWARD)
        {
            rec.proof.push(format!(
                "{node}: kube-proxy {kp} inserted its {KUBE_FORWARD} jump but FORWARD no longer has it: {}",
                order.join(", ")
            ));
        }
        Ok(())
    }

    fn restart_agent(
        &self,
        live: &mut Live,
        cn: &ClusterNode,
        idx: usize,
        cleanup: bool,
    ) -> Result<String, FaultError> {
        let node = cn.name();
        let nerr = |what: &'static str| {
            let node = node.to_string();
            move |source| FaultError::Node {
                fault: NAME,
                node,
                what: what.to_string(),
                source: Box::new(source),
            }
        };
        let pid = live.agents[idx].pid();
        let exit = live.agents[idx]
            .kill(libc::SIGTERM)
            .map_err(nerr("stopping the agent"))?;
        let mut what = format!("agent pid {} stopped ({exit:?})", pid.unwrap_or(0));
        if cleanup {
            let out = cn
                .node
                .check(
                    &[
                        &cn.datapathd.display().to_string(),
                        "cleanup",
                        "--bpffs",
                        &cn.bpffs.display().to_string(),
                        "--cgroup",
                        &cn.cgroup.display().to_string(),
                        "--forward-chain",
                    ],
                    Duration::from_secs(60),
                )
                .map_err(nerr("datapathd cleanup"))?;
            let order = forward_order(cn).map_err(|e| self.not(node, e))?;
            if order.iter().any(|t| t == DATAPATH_CHAIN) {
                return Err(self.not(
                    node,
                    format!(
                        "after cleanup FORWARD still jumps to {DATAPATH_CHAIN}: {}",
                        order.join(", ")
                    ),
                ));
            }
            what.push_str(&format!(
                ", its rules removed ({}; FORWARD: {})",
                out.stdout_str().trim(),
                order.join(", ")
            ));
        }
        live.agents[idx]
            .start(cn, None)
            .map_err(nerr("starting the agent"))?;
        match live.agents[idx]
            .wait_ready(cn, READY_TIMEOUT)
            .map_err(nerr("waiting for the agent"))?
        {
            None => {
                what.push_str(&format!(
                    ", started again and ready (pid {})",
                    live.agents[idx].pid().unwrap_or(0)
                ));
                Ok(what)
            }
            Some(e) => Err(self.not(
                node,
                format!("the agent ended with {e} before it was ready"),
            )),
        }
    }
}

impl KubeProxyOrderSwap {
    fn inject(&self, live: &mut Live) -> Result<FaultRecord, FaultError> {
        let p = &self.0;
        let kp: KubeProxy = p
            .kube_proxy
            .parse()
            .map_err(|e: String| self.not(&p.node, e))?;
        let mut rec = FaultRecord::default();

        // 1. kube-proxy starts after the datapath, on every node.
        for cn in live.cluster.nodes.clone() {
            self.start_kube_proxy(&kp, &cn, &mut rec)?;
            self.settle(
                live,
                &cn,
                &format!("kube-proxy {kp} started after the datapath"),
                &mut rec,
            )?;
        }

        // 2. On the planned node, the planned actions.
        let cn = live
            .cluster
            .node(&p.node)
            .cloned()
            .ok_or_else(|| self.not(&p.node, "no such node".into()))?;
        let idx = live
            .agents
            .iter()
            .position(|a| a.node == p.node)
            .ok_or_else(|| self.not(&p.node, "no agent deployed".into()))?;
        for action in &p.actions {
            let what = match action {
                OrderSwapAction::RestartKubeProxy => {
                    self.start_kube_proxy(&kp, &cn, &mut rec)?;
                    "kube-proxy restarted alone".to_string()
                }
                OrderSwapAction::RestartAgent => {
                    let w = self.restart_agent(live, &cn, idx, false)?;
                    format!("agent restarted alone ({w})")
                }
                OrderSwapAction::FlushAndReadd => {
                    kp.stop(cn.node.as_ref()).map_err(|e| {
                        self.not(&p.node, format!("stopping kube-proxy: {}", chain(&e)))
                    })?;
                    let order = forward_order(&cn).map_err(|e| self.not(&p.node, e))?;
                    if order.iter().any(|t| t.starts_with("KUBE-")) {
                        return Err(self.not(
                            &p.node,
                            format!(
                                "kube-proxy's rules not flushed: FORWARD {}",
                                order.join(", ")
                            ),
                        ));
                    }
                    rec.proof.push(format!(
                        "{}: kube-proxy's rules flushed: FORWARD {}",
                        p.node,
                        order.join(", ")
                    ));
                    self.start_kube_proxy(&kp, &cn, &mut rec)?;
                    "kube-proxy's rules flushed and re-added".to_string()
                }
                OrderSwapAction::AgentAfterKubeProxy => {
                    let w = self.restart_agent(live, &cn, idx, true)?;
                    format!("the agent started after kube-proxy ({w})")
                }
            };
            self.settle(live, &cn, &what, &mut rec)?;
        }
        Ok(rec)
    }
}
