//! link-degrade: tc netem (delay and loss) on a node's cluster link for a while, proved by
//! the netem qdisc on the link and by a pod on that node reaching a pod server on another
//! node no sooner than the added delay; then healed, and the heal proved by the qdisc
//! being gone. Providers without machines (netns) cannot do it and say so.

use std::time::{Duration, Instant};

use super::{Fault, FaultError, FaultRecord};
use crate::observe::probe;
use crate::plan::LinkDegradePlan;
use crate::provider::Machines;
use crate::run::Live;

const NAME: &str = "link-degrade";

pub struct LinkDegrade(pub LinkDegradePlan);

impl Fault for LinkDegrade {
    fn name(&self) -> &'static str {
        NAME
    }

    fn inject(&self, live: &mut Live) -> Result<FaultRecord, FaultError> {
        self.inject_with(live, None)
    }

    fn inject_with(
        &self,
        live: &mut Live,
        machines: Option<&mut dyn Machines>,
    ) -> Result<FaultRecord, FaultError> {
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
        let not = |what: String| FaultError::NotProved {
            fault: NAME,
            node: node.clone(),
            what,
        };
        let perr = |what: &str| {
            let (node, what) = (node.clone(), what.to_owned());
            move |source| FaultError::Provider {
                fault: NAME,
                node,
                what,
                source: Box::new(source),
            }
        };
        let cn = live
            .cluster
            .node(&node)
            .cloned()
            .ok_or_else(|| not("no such node".into()))?;
        // A client on the node and a TCP server on another node: the degraded path.
        let from = live
            .cluster
            .pods
            .iter()
            .find(|x| x.node == node)
            .cloned()
            .ok_or_else(|| not("no pod on the node to measure from".into()))?;
        let to = probe::pod_servers(&live.cluster, &live.services)
            .into_iter()
            .find(|t| t.node != node && t.proto == crate::suite::Protocol::Tcp)
            .ok_or_else(|| not("no TCP pod server on another node to measure to".into()))?;
        let rtt = |what: &str| -> Result<u64, FaultError> {
            let r = probe::connect_each(&live.cluster, &from, std::slice::from_ref(&to))
                .map_err(|e| not(format!("{what}: {}", e.report())))?;
            let us = r
                .first()
                .and_then(|(_, a)| a.first())
                .filter(|a| a.ok)
                .map(|a| a.elapsed_us)
                .ok_or_else(|| not(format!("{what}: {} -> {} failed: {r:?}", from.name, to.pod)))?;
            Ok(us)
        };
        let mut rec = FaultRecord::default();
        let base = rtt("before")?;

        let delay = format!("{}ms", p.delay_ms);
        let loss = format!("{}%", p.loss_pct);
        machines
            .link_netem(&node, &["delay", &delay, "loss", &loss])
            .map_err(perr("adding netem"))?;
        let qdisc = cn
            .node
            .run(
                &["tc", "qdisc", "show", "dev", "eth0"],
                Duration::from_secs(30),
            )
            .map(|o| o.stdout_str())
            .unwrap_or_default();
        if !qdisc.contains("netem") {
            let _ = machines.link_heal(&node);
            return Err(not(format!("no netem on eth0 after adding it: {qdisc}")));
        }
        // Loss may eat a SYN: several tries, the fastest counts.
        let t = Instant::now();
        let mut slow = None;
        for _ in 0..3 {
            if let Ok(us) = rtt("degraded") {
                slow = Some(slow.map_or(us, |s: u64| s.min(us)));
            }
        }
        if !live
            .cancel
            .sleep(Duration::from_millis(p.hold_ms).saturating_sub(t.elapsed()))
        {
            let _ = machines.link_heal(&node);
            return Err(FaultError::Interrupted);
        }
        machines.link_heal(&node).map_err(perr("healing"))?;
        let Some(slow) = slow else {
            return Err(not("no connection got through the degraded link".into()));
        };
        if slow < u64::from(p.delay_ms) * 1000 {
            return Err(not(format!(
                "{} -> {} took {slow} us with {delay} of netem delay",
                from.name, to.pod
            )));
        }
        rec.proof.push(format!(
            "netem delay {delay} loss {loss} on {node}'s eth0 for {} ms: {} -> {} ({}) took \
             {:.1} ms (before: {:.1} ms)",
            p.hold_ms,
            from.name,
            to.pod,
            to.node,
            slow as f64 / 1000.0,
            base as f64 / 1000.0
        ));
        let qdisc = cn
            .node
            .run(
                &["tc", "qdisc", "show", "dev", "eth0"],
                Duration::from_secs(30),
            )
            .map(|o| o.stdout_str())
            .unwrap_or_default();
        if qdisc.contains("netem") {
            return Err(not(format!("netem still on eth0 after healing: {qdisc}")));
        }
        rec.proof.push("healed: no netem on eth0".into());
        Ok(rec)
    }
}
