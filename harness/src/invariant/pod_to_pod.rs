//! pod-to-pod: every pod reaches every other pod's server directly (no service address)
//! with payload, and the answer names that pod: across nodes this is the cluster network
//! and the pod CIDR routes; on one node, the node's own forwarding. One remote command
//! per pod probes all its targets (`dp-probe connect` once per target, from the pod's
//! netns and cgroup).

use dp_wire::Attempt;

use super::{all_judged, merge, unknown_unless_harness, Context, Invariant, Judgement};
use crate::observe::probe::{self, PodServer};
use crate::observe::ObserveError;
use crate::suite::InvariantName;

pub const NAME: InvariantName = InvariantName::new("pod-to-pod");
pub struct PodToPod;

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
        let nodes: std::collections::BTreeSet<&str> =
            ctx.cluster.pods.iter().map(|p| p.node.as_str()).collect();
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
        let mut j = merge(&all_judged(js)?);
        if j.verdict == super::Verdict::Pass {
            j.summary = format!(
                "{} pods reach {} pod servers on {} nodes with payload",
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
}
