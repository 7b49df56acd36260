//! pod-to-pod: every pod reaches every other pod's server directly (no service address)
//! with payload, and the answer names that pod: across nodes this is the cluster network
//! and the pod CIDR routes; on one node, the node's own forwarding. One remote command
//! per pod probes all its targets (`dp-probe connect` once per target, from the pod's
//! netns and cgroup). With the agent's pod datapath in VXLAN mode, the probes must also be
//! seen encapsulated: every node's `dp_vxlan` sent and received packets while they ran
//! (`ip -s -j link` before and after); in native mode no node has a VXLAN device at all,
//! so no pod packet left a node in UDP 8472.

use dp_wire::Attempt;

use super::{all_judged, merge, unknown_unless_harness, Context, Invariant, Judgement};
use crate::observe::pods::{vxlan_devices, IpLink};
use crate::observe::probe::{self, PodServer};
use crate::observe::ObserveError;
use crate::suite::InvariantName;
use crate::suite::Routing;

pub const NAME: InvariantName = InvariantName::new("pod-to-pod");
pub struct PodToPod;

/// The VXLAN devices of one node before and after the probes.
pub struct Encap<'a> {
    pub node: &'a str,
    /// Pods on this node probed, or were probed from, pods on another node: its dp_vxlan
    /// must have carried packets. A node without pods (pod-churn can empty one) has
    /// nothing to carry.
    pub carries: bool,
    pub before: &'a [IpLink],
    pub after: &'a [IpLink],
}

/// Pure judgement of encapsulation: `vxlan` (every node with cross-node pod traffic
/// counted tx and rx packets on dp_vxlan during the probes) or native (no VXLAN device anywhere). `None` for kernel
/// routing (nothing to prove).
pub fn judge_encap(mode: Routing, nodes: &[Encap<'_>]) -> Option<Judgement> {
    let mut bad = Vec::new();
    let mut seen = Vec::new();
    match mode {
        Routing::Kernel => return None,
        Routing::Native => {
            for n in nodes {
                for l in n.after {
                    bad.push(format!(
                        "{}: VXLAN device {} in native mode",
                        n.node, l.ifname
                    ));
                }
            }
        }
        Routing::Vxlan => {
            for n in nodes {
                let count = |ls: &[IpLink]| {
                    ls.iter()
                        .find(|l| l.ifname == "dp_vxlan")
                        .and_then(|l| l.stats64.clone())
                };
                match (count(n.before), count(n.after)) {
                    (Some(b), Some(a)) => {
                        let (tx, rx) = (
                            a.tx.packets.saturating_sub(b.tx.packets),
                            a.rx.packets.saturating_sub(b.rx.packets),
                        );
                        if !n.carries {
                            seen.push(format!("{} (no pods) dp_vxlan +{tx} tx +{rx} rx", n.node));
                            continue;
                        }
                        if tx == 0 || rx == 0 {
                            bad.push(format!(
                                "{}: dp_vxlan sent {tx} and received {rx} packets during the probes",
                                n.node
                            ));
                        }
                        seen.push(format!("{} dp_vxlan +{tx} tx +{rx} rx", n.node));
                    }
                    _ => bad.push(format!("{}: no dp_vxlan with counters", n.node)),
                }
            }
        }
    }
    Some(if bad.is_empty() {
        Judgement::pass(match mode {
            Routing::Vxlan => format!("encapsulated: {}", seen.join(", ")),
            _ => format!(
                "no VXLAN device on {} nodes: nothing sent in UDP 8472",
                nodes.len()
            ),
        })
    } else {
        Judgement::fail("pod traffic not carried as the routing mode says", bad)
    })
}

/// Pure judgement of one pod's probes.
pub fn judge(from: &str, results: &[(PodServer, Vec<Attempt>)], expected: usize) -> Judgement {
    let mut bad = Vec::new();
    for (t, attempts) in results {
        let what = format!("{from} -> {} ({}, {})", t.pod, t.addr, t.node);
        match attempts.first() {
            None => bad.push(format!("{what}: no attempt reported")),
            Some(a) if !a.ok => bad.push(format!(
                "{what}: failed: {} {}",
                a.errno.map(|v| v.to_string()).unwrap_or_default(),
                a.error.as_deref().unwrap_or("")
            )),
            Some(a) if a.backend.as_deref() != Some(t.pod.as_str()) => bad.push(format!(
                "{what}: answered by {} instead",
                a.backend.as_deref().unwrap_or("nobody")
            )),
            Some(_) => {}
        }
    }
    if results.len() != expected {
        return Judgement::unknown(format!(
            "{from}: {} of {expected} targets reported",
            results.len()
        ));
    }
    if bad.is_empty() {
        Judgement::pass(format!(
            "{from}: reaches all {expected} pod servers with payload"
        ))
    } else {
        Judgement::fail(format!("{from} cannot reach every pod"), bad)
    }
}

impl Invariant for PodToPod {
    fn name(&self) -> InvariantName {
        NAME
    }

    fn about(&self) -> &'static str {
        "every pod reaches every other pod's server directly, across nodes, with payload"
    }

    fn check(&self, ctx: &Context<'_>) -> Result<Judgement, ObserveError> {
        let all = probe::pod_servers(ctx.cluster, ctx.services);
        let mode = ctx
            .cluster
            .nodes
            .iter()
            .find_map(|cn| cn.net.as_ref()?.pod_routing.as_ref().map(|r| r.mode))
            .unwrap_or(Routing::Kernel);
        let vxlan = || crate::cluster::in_parallel(&ctx.cluster.nodes, vxlan_devices);
        let before = if mode.is_kernel() {
            Vec::new()
        } else {
            vxlan()
        };
        let nodes: std::collections::BTreeSet<&str> =
            ctx.cluster.pods.iter().map(|p| p.node.as_str()).collect();
        // Every pod probes every other pod's server: a node carries cross-node traffic when
        // it hosts a pod and another node hosts one too.
        let carries = |node: &str| nodes.contains(node) && nodes.len() > 1;
        let js = std::thread::scope(|s| {
            let handles: Vec<_> = ctx
                .cluster
                .pods
                .iter()
                .map(|pod| {
                    let to: Vec<PodServer> =
                        all.iter().filter(|t| t.pod != pod.name).cloned().collect();
                    s.spawn(move || match probe::connect_each(ctx.cluster, pod, &to) {
                        Ok(r) => Ok(judge(&pod.name, &r, to.len())),
                        Err(e) => unknown_unless_harness(format!("{}: cannot probe", pod.name), e),
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Ok(Judgement::unknown("a probe thread panicked")))
                })
                .collect::<Vec<_>>()
        });
        let mut js = all_judged(js)?;
        let mut encap_line = String::new();
        if !mode.is_kernel() {
            let after = vxlan();
            let mut views = Vec::new();
            for ((cn, b), a) in ctx.cluster.nodes.iter().zip(before).zip(after) {
                match (b, a) {
                    (Ok(b), Ok(a)) => views.push((cn.name(), b, a)),
                    (Err(e), _) | (_, Err(e)) => {
                        js.push(unknown_unless_harness(
                            format!("{}: cannot read its VXLAN devices", cn.name()),
                            e,
                        )?);
                    }
                }
            }
            let encaps: Vec<Encap<'_>> = views
                .iter()
                .map(|(n, b, a)| Encap {
                    node: n,
                    carries: carries(n),
                    before: b,
                    after: a,
                })
                .collect();
            if let Some(j) = judge_encap(mode, &encaps) {
                encap_line = format!("; {}", j.summary);
                js.push(j);
            }
        }
        let mut j = merge(&js);
        if j.verdict == super::Verdict::Pass {
            j.summary = format!(
                "{} pods reach {} pod servers on {} nodes with payload{encap_line}",
                ctx.cluster.pods.len(),
                all.len(),
                nodes.len()
            );
        }
        Ok(j)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Verdict;
    use super::*;
    use crate::suite::Protocol;

    fn server(pod: &str, node: &str, addr: &str) -> PodServer {
        PodServer {
            pod: pod.into(),
            node: node.into(),
            addr: addr.parse().unwrap(),
            proto: Protocol::Tcp,
        }
    }

    /// Recorded: `connect_each`'s batch from client-a (netns provider, suite sockmap;
    /// testdata/README.md): web-b1 on the other node answering, and a port of web-a1
    /// nobody listens on (refused).
    const BATCH: &str = include_str!("testdata/pod-to-pod.batch.txt");

    fn recorded() -> Vec<(PodServer, Vec<Attempt>)> {
        let to = [
            server("web-b1", "node-b", "10.244.2.3:8080"),
            server("web-a1", "node-a", "10.244.1.3:9"),
        ];
        probe::split_by_target("node-a", BATCH, &to).expect("recorded output reads")
    }

    #[test]
    fn recorded_batch_judges_per_target() {
        let r = recorded();
        assert_eq!(r.len(), 2);
        let j = judge("client-a", &r, 2);
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(j.evidence.len(), 1, "{:?}", j.evidence);
        assert!(
            j.evidence[0].contains(
                "client-a -> web-a1 (10.244.1.3:9, node-a): failed: 111 connect: Connection refused"
            ),
            "{:?}",
            j.evidence
        );
        assert_eq!(judge("client-a", &r[..1], 1).verdict, Verdict::Pass);
        assert_eq!(judge("client-a", &r[..1], 2).verdict, Verdict::Unknown);
    }

    #[test]
    fn a_wrong_pod_answering_fails() {
        let mut r = recorded();
        r.truncate(1);
        r[0].1[0].backend = Some("web-b2".into());
        let j = judge("c", &r, 1);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(j.evidence[0].contains("answered by web-b2 instead"));
    }

    /// Recorded: dp_vxlan's counters around three pings through it (testdata/README.md).
    #[test]
    fn vxlan_counters_prove_encapsulation_and_native_has_no_vxlan_device() {
        let before: Vec<IpLink> =
            crate::observe::bpf::parse_json(include_str!("testdata/pods/vxlan.before.json"))
                .expect("recorded output reads");
        let after: Vec<IpLink> =
            crate::observe::bpf::parse_json(include_str!("testdata/pods/vxlan.after.json"))
                .expect("recorded output reads");
        let grew = [Encap {
            node: "node-a",
            carries: true,
            before: &before,
            after: &after,
        }];
        let j = judge_encap(Routing::Vxlan, &grew).expect("judged");
        assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
        assert!(j.summary.contains("node-a dp_vxlan +"), "{}", j.summary);
        let idle = [Encap {
            node: "node-a",
            carries: true,
            before: &after,
            after: &after,
        }];
        let j = judge_encap(Routing::Vxlan, &idle).expect("judged");
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(
            j.evidence,
            vec!["node-a: dp_vxlan sent 0 and received 0 packets during the probes"]
        );
        // A node pod-churn emptied carries nothing: idle is right there.
        let emptied = [Encap {
            node: "node-c",
            carries: false,
            before: &after,
            after: &after,
        }];
        let j = judge_encap(Routing::Vxlan, &emptied).expect("judged");
        assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
        assert!(j.summary.contains("node-c (no pods)"), "{}", j.summary);
        let j = judge_encap(Routing::Native, &grew).expect("judged");
        assert_eq!(
            j.evidence,
            vec!["node-a: VXLAN device dp_vxlan in native mode"]
        );
        let none = [Encap {
            node: "node-a",
            carries: true,
            before: &[],
            after: &[],
        }];
        assert_eq!(
            judge_encap(Routing::Native, &none).expect("judged").verdict,
            Verdict::Pass
        );
        assert!(judge_encap(Routing::Kernel, &none).is_none());
    }
}
