//! rules-exactly-once: on every node, the datapath's iptables rules are each present
//! exactly once: one jump to `DP_FORWARD` in `FORWARD`, and in `DP_FORWARD` one accept for
//! traffic from pod interfaces (`-i PREFIX+`) and one for traffic to them (`-o PREFIX+`),
//! with no duplicate rule (restarts and reorders must not pile copies up).

use std::collections::BTreeMap;

use super::forward_chain_order::{forward_listing, DATAPATH_CHAIN};
use super::{Context, Invariant, Judgement};
use crate::observe::iptables::Save;
use crate::suite::InvariantName;

pub const NAME: InvariantName = InvariantName::new("rules-exactly-once");
pub struct RulesExactlyOnce;

pub fn judge(node: &str, save: &Save) -> Judgement {
    let f = save.filter();
    let mut bad = Vec::new();
    let jumps = f.positions("FORWARD", DATAPATH_CHAIN);
    if jumps.len() != 1 {
        bad.push(format!(
            "{} jumps to {DATAPATH_CHAIN} in FORWARD (want 1) at {jumps:?}",
            jumps.len()
        ));
    }
    if !f.has_chain(DATAPATH_CHAIN) {
        bad.push(format!("chain {DATAPATH_CHAIN} does not exist"));
    }
    let ours = f.chain(DATAPATH_CHAIN);
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &ours {
        *seen.entry(r.line.as_str()).or_default() += 1;
    }
    for (line, n) in seen.iter().filter(|(_, n)| **n > 1) {
        bad.push(format!("{n} copies of `{line}`"));
    }
    for dir in ["-i", "-o"] {
        let n = ours
            .iter()
            .filter(|r| {
                r.target() == Some("ACCEPT")
                    && r.spec
                        .windows(2)
                        .any(|w| w[0] == dir && w[1].ends_with('+'))
            })
            .count();
        if n != 1 {
            bad.push(format!(
                "{n} `{dir} PREFIX+ -j ACCEPT` rules in {DATAPATH_CHAIN} (want 1)"
            ));
        }
    }
    if bad.is_empty() {
        Judgement::pass(format!(
            "node {node}: one jump to {DATAPATH_CHAIN}, its {} rules once each",
            ours.len()
        ))
    } else {
        let mut evidence: Vec<String> = bad.iter().map(|b| format!("node {node}: {b}")).collect();
        evidence.push(format!("node {node}: FORWARD:\n{}", forward_listing(save)));
        evidence.push(format!(
            "node {node}: {DATAPATH_CHAIN}:\n{}",
            ours.iter()
                .map(|r| r.line.clone())
                .collect::<Vec<_>>()
                .join("\n")
        ));
        Judgement::fail(
            format!("node {node}: the datapath's iptables rules are not each present exactly once"),
            evidence,
        )
    }
}

impl Invariant for RulesExactlyOnce {
    fn name(&self) -> InvariantName {
        NAME
    }

    fn about(&self) -> &'static str {
        "the datapath's iptables rules are each present exactly once"
    }

    fn check(&self, ctx: &Context<'_>) -> Result<Judgement, crate::observe::ObserveError> {
        super::judge_iptables_per_node(ctx, judge)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Verdict;
    use super::*;
    use crate::observe::iptables::parse;

    const GOOD: &str = "*filter\n:FORWARD ACCEPT [0:0]\n:DP_FORWARD - [0:0]\n\
[0:0] -A FORWARD -m comment --comment \"datapathd: pod forwarding\" -j DP_FORWARD\n\
[0:0] -A DP_FORWARD -i lxc+ -m comment --comment \"datapathd: traffic from pods\" -j ACCEPT\n\
[0:0] -A DP_FORWARD -o lxc+ -m comment --comment \"datapathd: traffic to pods\" -j ACCEPT\nCOMMIT\n";

    #[test]
    fn once_passes() {
        assert_eq!(judge("n", &parse(GOOD)).verdict, Verdict::Pass);
    }

    #[test]
    fn duplicates_and_missing_fail() {
        let dup_jump = GOOD.replace("COMMIT", "[0:0] -A FORWARD -j DP_FORWARD\nCOMMIT");
        let j = judge("n", &parse(&dup_jump));
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.evidence[0].contains("2 jumps to DP_FORWARD in FORWARD (want 1) at [1, 2]"),
            "{:?}",
            j.evidence
        );
        let dup_rule = GOOD.replace(
            "COMMIT",
            "[0:0] -A DP_FORWARD -o lxc+ -m comment --comment \"datapathd: traffic to pods\" -j ACCEPT\nCOMMIT",
        );
        let j = judge("n", &parse(&dup_rule));
        assert!(
            j.evidence.iter().any(|e| e.contains("2 copies of")),
            "{:?}",
            j.evidence
        );
        assert_eq!(
            judge("n", &parse("*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n")).verdict,
            Verdict::Fail
        );
    }

    /// Recorded on node-a with kube-proxy installed (testdata/README.md).
    const RECORDED: &str = include_str!("testdata/iptables-save.kube-proxy-order.txt");

    #[test]
    fn recorded_rules_pass_and_a_duplicated_rule_fails() {
        let j = judge("node-a", &parse(RECORDED));
        assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
        assert_eq!(
            j.summary,
            "node node-a: one jump to DP_FORWARD, its 2 rules once each"
        );
        let rule = RECORDED
            .lines()
            .find(|l| l.contains("-A DP_FORWARD -i p+"))
            .expect("the pods' rule");
        let doubled = RECORDED.replacen(rule, &format!("{rule}\n{rule}"), 1);
        let j = judge("node-a", &parse(&doubled));
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.evidence[0].contains("2 copies of `-A DP_FORWARD -i p+"),
            "{:?}",
            j.evidence
        );
    }
}
