//! no-invalid-drops: kube-proxy's INVALID DROP rule (first rule of `KUBE-FORWARD`) does not
//! count a single packet while pods talk to the external host through the masquerade.
//! With the datapath's accept chain first, masqueraded traffic never reaches it; with
//! KUBE-FORWARD first, every packet after the pod's SYN is INVALID to conntrack (the
//! replies bypassed it) and is dropped here. Evidence: `iptables-save -c` before and after
//! the probes, and the counters.

use super::pod_to_external::{ATTEMPTS, TIMEOUT_MS};
use super::{all_judged, merge, unknown_unless_harness, Context, Invariant, Judgement};
use crate::cluster::in_parallel;
use crate::observe::features::KernelNeed;
use crate::observe::iptables::{self, filter_section, Save, KUBE_FORWARD};
use crate::observe::{probe, ObserveError};
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

    fn check(&self, ctx: &Context<'_>) -> Result<Judgement, ObserveError> {
        let Some(ext) = &ctx.cluster.external else {
            return Ok(Judgement::unknown(
                "the cluster has no external host to probe (the provider did not bring one up)",
            ));
        };
        let save = |cn: &crate::cluster::ClusterNode| iptables::save(cn.node.as_ref());
        let before: Result<Vec<_>, ObserveError> =
            in_parallel(&ctx.cluster.nodes, save).into_iter().collect();
        let before = match before {
            Ok(b) => b,
            Err(e) => return unknown_unless_harness("cannot read iptables", e),
        };
        // The probes' own verdict belongs to pod-to-external; here they are the traffic.
        let probed = in_parallel(&ctx.cluster.pods, |pod| {
            probe::connect_external(ctx.cluster, pod, ext, ATTEMPTS, TIMEOUT_MS)
                .map_err(|e| (format!("{} -> {}: cannot probe", pod.name, ext.name), e))
        });
        if let Some(Err((what, e))) = probed.into_iter().find(Result::is_err) {
            return unknown_unless_harness(what, e);
        }
        let after = in_parallel(&ctx.cluster.nodes, save);
        let js = ctx.cluster.nodes.iter().zip(&before).zip(after).map(
            |((cn, (btext, bsave)), after)| match after {
                Ok((atext, asave)) => Ok(judge(cn.name(), (btext, bsave), (&atext, &asave))),
                Err(e) => unknown_unless_harness("cannot read iptables", e),
            },
        );
        Ok(merge(&all_judged(js)?))
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

    /// Recorded on node-a (testdata/README.md): with mutant kube-proxy-first, before and
    /// after one hung connection to the external host; and with kube-proxy after the
    /// datapath (no drop).
    const FIRST_BEFORE: &str = include_str!("testdata/iptables-save.kube-proxy-first.before.txt");
    const FIRST_AFTER: &str = include_str!("testdata/iptables-save.kube-proxy-first.after.txt");
    const KUBE_AFTER: &str = include_str!("testdata/iptables-save.kube-proxy-order.txt");

    #[test]
    fn recorded_drops_fail_and_none_pass() {
        let (b, a) = (parse(FIRST_BEFORE), parse(FIRST_AFTER));
        let j = judge("node-a", (FIRST_BEFORE, &b), (FIRST_AFTER, &a));
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.summary
                .contains("INVALID DROP counted 13 packet(s) during the probes (66 -> 79)"),
            "{}",
            j.summary
        );
        let k = parse(KUBE_AFTER);
        let j = judge("node-a", (KUBE_AFTER, &k), (KUBE_AFTER, &k));
        assert_eq!(j.verdict, Verdict::Pass);
        assert!(
            j.summary.contains("unchanged during the probes (0 -> 0)"),
            "{}",
            j.summary
        );
    }
}
