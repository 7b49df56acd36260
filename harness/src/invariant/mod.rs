//! Invariants: what must hold, judged from observations. One trait, one file each, each
//! listed once in crate::registry. The judgement itself is a pure function of observe/'s
//! typed observations (unit-tested on recorded real output, testdata/); `check` only asks
//! observe/ for them. What could not be observed gives Unknown, never Pass; output the
//! harness cannot read is a harness error, never a verdict.

pub mod conn_disrupt;
pub mod datapath_pinned;
pub mod forward_chain_order;
pub mod host_clean;
pub mod no_cross_delivery;
pub mod no_invalid_drops;
pub mod no_orphan;
pub mod one_program;
pub mod payload_liveness;
pub mod pod_delete_cleanup;
pub mod pod_to_external;
pub mod pod_to_pod;
pub mod pod_wiring;
pub mod recovers_within;
pub mod rules_exactly_once;
pub mod service_connectivity;
pub mod sockhash_bounded;
pub mod sockhash_keys_live;

use crate::cluster::service::ServiceState;
use crate::cluster::Cluster;
use crate::observe::ObserveError;
use crate::suite::{InvariantName, Needs};

/// Pass, fail or unknown, with the evidence behind it; skipped when this cluster cannot
/// have what the invariant needs (a kernel feature, a fault its provider cannot inject):
/// said with the reason, never counted as a pass.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Skipped,
    Unknown,
    Fail,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Judgement {
    pub verdict: Verdict,
    pub summary: String,
    pub evidence: Vec<String>,
}

impl Judgement {
    pub fn pass(summary: impl Into<String>) -> Judgement {
        Judgement {
            verdict: Verdict::Pass,
            summary: summary.into(),
            evidence: Vec::new(),
        }
    }
    pub fn fail(summary: impl Into<String>, evidence: Vec<String>) -> Judgement {
        Judgement {
            verdict: Verdict::Fail,
            summary: summary.into(),
            evidence,
        }
    }
    pub fn skipped(reason: impl Into<String>) -> Judgement {
        Judgement {
            verdict: Verdict::Skipped,
            summary: reason.into(),
            evidence: Vec::new(),
        }
    }
    pub fn unknown(summary: impl Into<String>) -> Judgement {
        Judgement {
            verdict: Verdict::Unknown,
            summary: summary.into(),
            evidence: Vec::new(),
        }
    }
}

/// Worst first: fail > unknown > skipped > pass. An empty list is unknown (nothing was judged).
pub fn merge(js: &[Judgement]) -> Judgement {
    let Some(worst) = js.iter().map(|j| j.verdict).max() else {
        return Judgement::unknown("not judged");
    };
    let mut evidence = Vec::new();
    let mut summaries = Vec::new();
    for j in js.iter().filter(|j| j.verdict == worst) {
        summaries.push(j.summary.clone());
        evidence.extend(j.evidence.iter().cloned());
    }
    summaries.dedup();
    Judgement {
        verdict: worst,
        summary: summaries.join("; "),
        evidence,
    }
}

/// What a check sees of the run.
pub struct Context<'a> {
    pub cluster: &'a Cluster,
    pub services: &'a [ServiceState],
    /// The last fault step healed before this check (recovers-within counts from it).
    pub healed: Option<&'a recovers_within::Healed>,
}

pub trait Invariant: Sync {
    fn name(&self) -> InvariantName;
    /// One line for `harness list`.
    fn about(&self) -> &'static str;
    /// What it needs of the suite (a deployment with socket acceleration, ...); a suite
    /// that names it without that is refused when it loads.
    fn suite_needs(&self) -> Needs {
        Needs::default()
    }
    /// What it needs from every node's kernel; a node that lacks it makes the verdict
    /// Skipped with the reason (observe::features).
    fn needs(&self) -> &'static [crate::observe::features::KernelNeed] {
        &[]
    }
    /// Observes and judges. What could not be observed is Unknown; an error is output
    /// the harness cannot read (a harness error: see [`ObserveError::is_harness_error`]).
    fn check(&self, ctx: &Context<'_>) -> Result<Judgement, ObserveError>;
}

/// Unknown, saying `what` could not be observed and why; unless the harness could not
/// read the output, which is its own error and no verdict.
pub fn unknown_unless_harness(
    what: impl std::fmt::Display,
    e: ObserveError,
) -> Result<Judgement, ObserveError> {
    if e.is_harness_error() {
        return Err(e);
    }
    Ok(Judgement::unknown(format!("{what}: {}", e.report())))
}

/// The judgements, or the first harness error among them.
pub fn all_judged(
    results: impl IntoIterator<Item = Result<Judgement, ObserveError>>,
) -> Result<Vec<Judgement>, ObserveError> {
    results.into_iter().collect()
}

/// Runs `judge_node` for every node at once (one thread each: probes on slow VMs add up)
/// and returns the judgements in node order, or the first harness error. A node with
/// nothing to judge gives `None`.
pub fn per_node<F>(ctx: &Context<'_>, judge_node: F) -> Result<Vec<Judgement>, ObserveError>
where
    F: Fn(&crate::cluster::ClusterNode) -> Result<Option<Judgement>, ObserveError> + Sync,
{
    std::thread::scope(|s| {
        let handles: Vec<_> = ctx
            .cluster
            .nodes
            .iter()
            .map(|cn| {
                let f = &judge_node;
                (cn.name(), s.spawn(move || f(cn)))
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|(node, h)| {
                h.join()
                    .unwrap_or_else(|_| {
                        Ok(Some(Judgement::unknown(format!(
                            "node {node}: the check's thread panicked"
                        ))))
                    })
                    .transpose()
            })
            .collect()
    })
}

/// Judges every node's `iptables-save -c` with `judge`, all nodes at once; a node whose
/// rules cannot be read is Unknown.
pub fn judge_iptables_per_node(
    ctx: &Context<'_>,
    judge: impl Fn(&str, &crate::observe::iptables::Save) -> Judgement + Sync,
) -> Result<Judgement, ObserveError> {
    let js =
        crate::cluster::in_parallel(
            &ctx.cluster.nodes,
            |cn| match crate::observe::iptables::save(cn.node.as_ref()) {
                Ok((_, save)) => Ok(judge(cn.name(), &save)),
                Err(e) => unknown_unless_harness("cannot read iptables", e),
            },
        );
    Ok(merge(&all_judged(js)?))
}

/// Recorded real output the judges are unit-tested on (testdata/README.md says how each
/// was recorded), shared by the invariants that read the same recording.
#[cfg(test)]
pub(crate) mod recorded {
    use crate::observe::bpf::{parse_json, Attached, Kernel};

    /// node-a's bpffs directory in the recorded sockmap run (netns provider).
    pub const BPFFS: &str = "/sys/fs/bpf/dp-harness-1ac319/node-a";

    /// node-a of that run: `bpftool -j cgroup show` of the node's cgroup and `bpftool -j
    /// -f {prog,map,link} show`.
    pub fn bpf() -> (Vec<Attached>, Kernel) {
        let read = "recorded bpftool output reads";
        let attached = parse_json(include_str!("testdata/bpf.cgroup-show.json")).expect(read);
        let kernel = Kernel {
            progs: parse_json(include_str!("testdata/bpf.prog-show.json")).expect(read),
            maps: parse_json(include_str!("testdata/bpf.map-show.json")).expect(read),
            links: parse_json(include_str!("testdata/bpf.link-show.json")).expect(read),
        };
        (attached, kernel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_is_worst_first() {
        let p = Judgement::pass("p");
        let u = Judgement::unknown("u");
        let f = Judgement::fail("f", vec!["e".into()]);
        assert_eq!(merge(&[p.clone(), u.clone()]).verdict, Verdict::Unknown);
        assert_eq!(
            merge(&[u.clone(), f.clone(), p.clone()]).verdict,
            Verdict::Fail
        );
        assert_eq!(
            merge(&[f.clone(), p.clone()]).evidence,
            vec!["e".to_string()]
        );
        assert_eq!(merge(&[p.clone(), p]).verdict, Verdict::Pass);
        assert_eq!(merge(&[]).verdict, Verdict::Unknown);
    }
}
