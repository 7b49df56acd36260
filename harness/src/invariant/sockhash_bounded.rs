//! sockhash-bounded (incident C): a node's `dp_sockhash` holds at most two entries per
//! live accelerated connection (one per end). Thousands of leaked keys were the incident's
//! signature. Inputs: the entry count of the pinned map (bpftool) and the number of
//! ESTABLISHED connections whose both ends are in the node's accelerated prefixes.
//!
//! Not yet registered as an `Invariant` (see sockhash_keys_live.rs).

use super::Judgement;

pub fn judge(node: &str, entries: usize, live_accelerated: usize, sample: &[String]) -> Judgement {
    let bound = 2 * live_accelerated;
    if entries <= bound {
        Judgement::pass(format!(
            "node {node}: dp_sockhash holds {entries} entr(ies), bound 2 x {live_accelerated} live accelerated connection(s)"
        ))
    } else {
        let mut evidence = vec![format!(
            "node {node}: {entries} entries > 2 x {live_accelerated} live accelerated connection(s)"
        )];
        evidence.extend(sample.iter().take(20).cloned());
        Judgement::fail(
            format!("node {node}: dp_sockhash holds {entries} entries, more than {bound}"),
            evidence,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariant::Verdict;

    #[test]
    fn twice_the_connections_is_the_limit() {
        assert_eq!(judge("n", 4, 2, &[]).verdict, Verdict::Pass);
        let j = judge("n", 5, 2, &["k".into()]);
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(j.evidence.len(), 2);
    }
}
