//! forward-chain-order: on every node, the datapath's accept chain (`DP_FORWARD`) is jumped
//! to from `FORWARD` before kube-proxy's `KUBE-FORWARD` (whose first rule drops conntrack
//! INVALID packets) whenever both exist. Incident B: with KUBE-FORWARD first, masqueraded
//! pod connections establish and then carry nothing.
//!
//! It also fails when kube-proxy is installed (its `KUBE-FORWARD` chain exists) but
//! `FORWARD` no longer jumps to it: something (a datapath deleting rules by number while
//! kube-proxy inserts) removed another component's rule.

use super::{Context, Invariant, Judgement};
use crate::observe::features::KernelNeed;
use crate::observe::iptables::Save;
pub use crate::observe::iptables::{DATAPATH_CHAIN, KUBE_FORWARD};
use crate::observe::ObserveError;
use crate::suite::InvariantName;

pub const NAME: InvariantName = InvariantName::new("forward-chain-order");
pub struct ForwardChainOrder;

/// `FORWARD` as evidence: one line per rule, numbered.
pub fn forward_listing(save: &Save) -> String {
    save.filter()
        .chain("FORWARD")
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{:>3} [{}:{}] {}", i + 1, r.packets, r.bytes, r.line))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn judge(node: &str, save: &Save) -> Judgement {
    let f = save.filter();
    let dp = f.positions("FORWARD", DATAPATH_CHAIN);
    let kube = f.positions("FORWARD", KUBE_FORWARD);
    let listing = || {
        vec![format!(
            "node {node}: iptables -S FORWARD (as iptables-save -c):\n{}",
            forward_listing(save)
        )]
    };
    match (dp.first(), kube.first()) {
        (None, _) => Judgement::fail(format!("node {node}: no jump to {DATAPATH_CHAIN} in FORWARD"), listing()),
        (Some(_), None) if f.has_chain(KUBE_FORWARD) => Judgement::fail(
            format!("node {node}: kube-proxy's chain {KUBE_FORWARD} exists but FORWARD no longer jumps to it (another component's rule was deleted)"),
            listing(),
        ),
        (Some(d), None) => Judgement::pass(format!("node {node}: {DATAPATH_CHAIN} is rule {d} of FORWARD; no {KUBE_FORWARD}")),
        (Some(d), Some(k)) if d < k => {
            Judgement::pass(format!("node {node}: {DATAPATH_CHAIN} (rule {d}) precedes {KUBE_FORWARD} (rule {k})"))
        }
        (Some(d), Some(k)) => Judgement::fail(
            format!("node {node}: {KUBE_FORWARD} (rule {k}, INVALID drop) runs before {DATAPATH_CHAIN} (rule {d}) in FORWARD"),
            listing(),
        ),
    }
}

impl Invariant for ForwardChainOrder {
    fn name(&self) -> InvariantName {
        NAME
    }

    fn about(&self) -> &'static str {
        "DP_FORWARD precedes KUBE-FORWARD in FORWARD"
    }

    /// The datapath with its DP_FORWARD chain runs only where its tc masquerade loads.
    fn needs(&self) -> &'static [KernelNeed] {
        &[KernelNeed::ProgType("sched_cls")]
    }

    fn check(&self, ctx: &Context<'_>) -> Result<Judgement, ObserveError> {
        super::judge_iptables_per_node(ctx, judge)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Verdict;
    use super::*;
    use crate::observe::iptables::parse;

    /// A filter table whose FORWARD holds `forward`; KUBE-FORWARD exists when
    /// `kube_proxy_installed`.
    fn save_with(forward: &[&str], kube_proxy_installed: bool) -> Save {
        let mut t = String::from("*filter\n:FORWARD ACCEPT [0:0]\n:DP_FORWARD - [0:0]\n");
        if kube_proxy_installed {
            t.push_str(":KUBE-FORWARD - [0:0]\n");
        }
        for r in forward {
            t.push_str(&format!("[0:0] -A FORWARD {r}\n"));
        }
        t.push_str("COMMIT\n");
        parse(&t)
    }

    fn save(forward: &[&str]) -> Save {
        save_with(forward, forward.iter().any(|r| r.contains(KUBE_FORWARD)))
    }

    #[test]
    fn kube_proxys_jump_deleted_under_it_fails() {
        let j = judge("n", &save_with(&["-j DP_FORWARD"], true));
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(j.summary.contains("no longer jumps to it"), "{}", j.summary);
    }

    #[test]
    fn datapath_first_passes_kube_first_fails_missing_fails() {
        assert_eq!(
            judge("n", &save(&["-j DP_FORWARD", "-j KUBE-FORWARD"])).verdict,
            Verdict::Pass
        );
        assert_eq!(judge("n", &save(&["-j DP_FORWARD"])).verdict, Verdict::Pass);
        let j = judge(
            "n",
            &save(&[
                "-m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
                "-j DP_FORWARD",
            ]),
        );
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.summary
                .contains("KUBE-FORWARD (rule 1, INVALID drop) runs before DP_FORWARD (rule 2)"),
            "{}",
            j.summary
        );
        assert!(
            j.evidence[0].contains("  1 [0:0] -A FORWARD"),
            "{:?}",
            j.evidence
        );
        assert_eq!(
            judge("n", &save(&["-j KUBE-FORWARD"])).verdict,
            Verdict::Fail
        );
    }

    /// Recorded on node-a (netns provider, testdata/README.md): kube-proxy installed after
    /// the datapath (suite kube-proxy-order), and with mutant kube-proxy-first.
    const KUBE_AFTER: &str = include_str!("testdata/iptables-save.kube-proxy-order.txt");
    const KUBE_FIRST: &str = include_str!("testdata/iptables-save.kube-proxy-first.after.txt");

    #[test]
    fn recorded_orders_are_judged() {
        let j = judge("node-a", &parse(KUBE_AFTER));
        assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
        assert_eq!(
            j.summary,
            "node node-a: DP_FORWARD (rule 1) precedes KUBE-FORWARD (rule 3)"
        );
        let j = judge("node-a", &parse(KUBE_FIRST));
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(
            j.summary,
            "node node-a: KUBE-FORWARD (rule 2, INVALID drop) runs before DP_FORWARD (rule 5) in FORWARD"
        );
        assert!(
            j.evidence[0].contains("-j KUBE-FORWARD"),
            "{:?}",
            j.evidence
        );
    }
}
