//! link-degrade: tc netem (delay and loss) on a node's cluster link for a while, proved by
//! the netem qdisc on the link and by a pod on that node reaching a pod server on another
//! node no sooner than the added delay; held for the planned time (the step's `during`
//! checks run in it), then healed, and the heal proved by the qdisc being gone. Providers
//! without machines (netns) cannot do it: the scenario is skipped with the reason.

use std::time::{Duration, Instant};

use rand::Rng;

use super::{Fault, FaultError, Heal, PlanContext, Site, Started};
use crate::live::Live;
use crate::observe::{probe, tc};
use crate::provider::Machines;
use crate::suite::{FaultStep, Needs};

const NAME: &str = "link-degrade";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct LinkDegrade(pub LinkDegradePlan);

/// Every decision of one link-degrade: netem on `node`'s cluster link for `hold_ms`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinkDegradePlan {
    pub node: String,
    pub delay_ms: u32,
    /// Loss in percent.
    pub loss_pct: u32,
    pub hold_ms: u64,
}

impl Fault for LinkDegrade {
    const NAME: &'static str = NAME;
    const ABOUT: &'static str = "tc netem delay and loss on a node's cluster link for a while";

    fn needs() -> Needs {
        Needs {
            machines: true,
            ..Needs::default()
        }
    }

    fn plan(cx: &mut PlanContext<'_>, step: &FaultStep) -> Self {
        let node = cx.node(step);
        LinkDegrade(LinkDegradePlan {
            node,
            delay_ms: cx.rng.random_range(50..200),
            loss_pct: cx.rng.random_range(5..30),
            hold_ms: cx.rng.random_range(500..2000),
        })
    }

    fn describe(&self) -> String {
        let p = &self.0;
        format!(
            "node={} delay={}ms loss={}% hold={}ms",
            p.node, p.delay_ms, p.loss_pct, p.hold_ms
        )
    }

    fn start<'m>(
        &self,
        live: &mut Live,
        machines: Option<&'m mut dyn Machines>,
    ) -> Result<Started<'m>, FaultError> {
        let p = &self.0;
        let node = p.node.clone();
        let Some(machines) = machines else {
            return Err(FaultError::Unsupported {
                fault: NAME,
                reason: "its nodes have no link of their own to degrade; run it with \
                         --provider qemu"
                    .into(),
            });
        };
        let site = Site::new(NAME, &node);
        let perr = |what: &str| {
            let (node, what) = (node.clone(), what.to_owned());
            move |source| FaultError::Provider {
                fault: NAME,
                node,
                what,
                source: Box::new(source),
            }
        };
        let cn = site.cluster_node(live)?;
        // A client on the node and a TCP server on another node: the degraded path.
        let from = live
            .cluster
            .pods
            .iter()
            .find(|x| x.node == node)
            .cloned()
            .ok_or_else(|| site.not_proved("no pod on the node to measure from"))?;
        let to = probe::pod_servers(&live.cluster, &live.services)
            .into_iter()
            .find(|t| t.node != node && t.proto == crate::suite::Protocol::Tcp)
            .ok_or_else(|| site.not_proved("no TCP pod server on another node to measure to"))?;
        let rtt = |what: &str| -> Result<u64, FaultError> {
            let r = probe::connect_each(&live.cluster, &from, std::slice::from_ref(&to))
                .map_err(|e| site.not_proved(format!("{what}: {}", e.report())))?;
            let us = r
                .first()
                .and_then(|(_, a)| a.first())
                .filter(|a| a.ok)
                .map(|a| a.elapsed_us)
                .ok_or_else(|| {
                    site.not_proved(format!("{what}: {} -> {} failed: {r:?}", from.name, to.pod))
                })?;
            Ok(us)
        };
        let base = rtt("before")?;

        let delay = format!("{}ms", p.delay_ms);
        let loss = format!("{}%", p.loss_pct);
        let eth0 = |n: &crate::cluster::ClusterNode| {
            tc::qdiscs(n.node.as_ref(), "eth0").map_err(|e| e.report())
        };
        machines
            .link_netem(&node, &["delay", &delay, "loss", &loss])
            .map_err(perr("adding netem"))?;
        let started = Instant::now();
        let hold = Duration::from_millis(p.hold_ms);
        let cancel = live.cancel.clone();
        // From here on the guard removes the netem, however the step ends.
        let heal_node = node.clone();
        let heal_err = perr("healing");
        let heal = Heal::with(NAME, move || {
            // Held for the planned time (the `during` checks ran in it), unless interrupted.
            cancel.sleep(hold.saturating_sub(started.elapsed()));
            machines.link_heal(&heal_node).map_err(heal_err)?;
            let qdiscs = eth0(&cn).map_err(|e| FaultError::NotProved {
                fault: NAME,
                node: heal_node.clone(),
                what: format!("cannot read eth0's qdiscs after healing: {e}"),
            })?;
            if tc::has_netem(&qdiscs) {
                return Err(FaultError::NotProved {
                    fault: NAME,
                    node: heal_node,
                    what: format!("netem still on eth0 after healing: {qdiscs:?}"),
                });
            }
            Ok(vec![format!(
                "healed after {:.1} s: no netem on {heal_node}'s eth0",
                started.elapsed().as_secs_f64()
            )])
        });
        let qdiscs = eth0(
            live.cluster
                .node(&node)
                .ok_or_else(|| site.not_proved("no such node"))?,
        )
        .map_err(|e| site.not_proved(format!("cannot read eth0's qdiscs: {e}")))?;
        if !tc::has_netem(&qdiscs) {
            return Err(site.not_proved(format!("no netem on eth0 after adding it: {qdiscs:?}")));
        }
        // Loss may eat a SYN: several tries, the fastest counts.
        let mut slow = None;
        for _ in 0..3 {
            if let Ok(us) = rtt("degraded") {
                slow = Some(slow.map_or(us, |s: u64| s.min(us)));
            }
        }
        let Some(slow) = slow else {
            return Err(site.not_proved("no connection got through the degraded link"));
        };
        if slow < u64::from(p.delay_ms) * 1000 {
            return Err(site.not_proved(format!(
                "{} -> {} took {slow} us with {delay} of netem delay",
                from.name, to.pod
            )));
        }
        Ok(Started {
            proof: vec![format!(
                "netem delay {delay} loss {loss} on {node}'s eth0, held {} ms: {} -> {} ({}) took \
                 {:.1} ms (before: {:.1} ms)",
                p.hold_ms,
                from.name,
                to.pod,
                to.node,
                slow as f64 / 1000.0,
                base as f64 / 1000.0
            )],
            heal,
        })
    }
}
