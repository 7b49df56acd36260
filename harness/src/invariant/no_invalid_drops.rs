//! no-invalid-drops: kube-proxy's INVALID DROP rule (first rule of `KUBE-FORWARD`) does not
//! count a single packet while pods talk to the external host through the masquerade.
//! With the datapath's accept chain first, masqueraded traffic never reaches it; with
//! KUBE-FORWARD first, every packet after the pod's SYN is INVALID to conntrack (the
//! replies bypassed it) and is dropped here. Evidence: `iptables-save -c` before and after
//! the probes, and the counters.

use super::forward_chain_order::KUBE_FORWARD;
use super::pod_to_external::{self, ATTEMPTS};
use super::{merge, Context, Invariant, Judgement};
use crate::cluster::in_parallel;
use crate::observe::features::KernelNeed;
use crate::observe::iptables::{self, filter_section, Save};
use crate::suite::InvariantName;

pub const NAME: InvariantName = InvariantName::new("no-invalid-drops");
pub struct NoInvalidDrops;

/// Judges one node from its iptables before and after the probes (texts for evidence).
pub fn judge(node: &str, before: (&str, &Save), after: (&str, &Save)) -> Judgement {
    match (before.1.invalid_drops(KUBE_FORWARD), after.1.invalid_drops(KUBE_FORWARD)) {
        (None, None) => Judgement::pass(format!(
            "node {node}: no INVALID DROP rule in {KUBE_FORWARD} (kube-proxy absent, nftables mode or be_liberal)"
        )),
        (b, Some(a)) if a > b.unwrap_or(0) => {
            let b = b.unwrap_or(0);
            Judgement::fail(
                format!("node {node}: {KUBE_FORWARD}'s INVALID DROP counted {} packet(s) during the probes ({b} -> {a})", a - b),
                vec![
                    format!("node {node}: INVALID DROP packets before {b}, after {a}"),
                    format!("node {node}: iptables-save -c (filter) before the probes:\n{}", filter_section(before.0)),
                    format!("node {node}: iptables-save -c (filter) after the probes:\n{}", filter_section(after.0)),
                ],
            )
        }
        (b, a) => Judgement::pass(format!(
            "node {node}: INVALID DROP counter unchanged during the probes ({} -> {})",
            b.map_or("none".into(), |v| v.to_string()),
            a.map_or("none".into(), |v| v.to_string())
        )),
    }
}

impl Invariant for NoInvalidDrops {
    fn name(&self) -> InvariantName {
        NAME
    }

    fn about(&self) -> &'static str {
        "kube-proxy's INVALID DROP counts nothing during pod-to-external probes"
    }

    /// The INVALID drops come from the BPF masquerade bypassing conntrack.
    fn needs(&self) -> &'static [KernelNeed] {
        &[KernelNeed::ProgType("sched_cls")]
    }

    fn check(&self, ctx: &Context<'_>) -> Judgement {
        let Some(ext) = &ctx.cluster.external else {
            return Judgement::unknown(
                "the cluster has no external host to probe (the provider did not bring one up)",
            );
        };
        let save = |cn: &crate::cluster::ClusterNode| {
            iptables::save(cn.node.as_ref())
                .map_err(|e| format!("node {}: cannot read iptables: {e}", cn.name()))
        };
        let before: Result<Vec<_>, String> =
            in_parallel(&ctx.cluster.nodes, save).into_iter().collect();
        let before = match before {
            Ok(b) => b,
            Err(e) => return Judgement::unknown(e),
        };
        // The probes' own verdict belongs to pod-to-external; here they are the traffic.
        let probed = in_parallel(&ctx.cluster.pods, |pod| {
            pod_to_external::probe(ctx, pod, ext, ATTEMPTS)
                .map_err(|e| format!("{} -> {}: cannot probe: {e}", pod.name, ext.name))
        });
        if let Some(Err(e)) = probed.into_iter().find(Result::is_err) {
            return Judgement::unknown(e);
        }
        let after = in_parallel(&ctx.cluster.nodes, save);
        let js: Vec<Judgement> = ctx
            .cluster
            .nodes
            .iter()
            .zip(&before)
            .zip(after)
            .map(|((cn, (btext, bsave)), after)| match after {
                Ok((atext, asave)) => judge(cn.name(), (btext, bsave), (&atext, &asave)),
                Err(e) => Judgement::unknown(e),
            })
            .collect();
        merge(&js)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Verdict;
    use super::*;
    use crate::observe::iptables::parse;

    fn save(drops: u64) -> String {
        format!(
            "*filter\n:FORWARD ACCEPT [0:0]\n:KUBE-FORWARD - [0:0]\n[{drops}:{}] -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\nCOMMIT\n",
            drops * 60
        )
    }

    #[test]
    fn growth_fails_with_counters_and_saves() {
        let (b, a) = (save(0), save(7));
        let j = judge("node-a", (&b, &parse(&b)), (&a, &parse(&a)));
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.summary
                .contains("counted 7 packet(s) during the probes (0 -> 7)"),
            "{}",
            j.summary
        );
        assert!(j.evidence[2]
            .contains("[7:420] -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"));
    }

    #[test]
    fn unchanged_or_absent_passes() {
        let b = save(3);
        assert_eq!(
            judge("n", (&b, &parse(&b)), (&b, &parse(&b))).verdict,
            Verdict::Pass
        );
        let none = "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n";
        assert_eq!(
            judge("n", (none, &parse(none)), (none, &parse(none))).verdict,
            Verdict::Pass
        );
    }
}
