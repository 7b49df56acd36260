//! pod-to-external: every pod reaches the external host (outside the cluster, on the
//! underlay) over TCP with payload both ways, and the host sees the connection coming from
//! an address other than the pod's (the datapath's masquerade). Incident B shows here as
//! an attempt whose connect succeeded (peer and local known) and whose request then timed
//! out: established, then nothing.

use dp_wire::Attempt;

use super::{all_judged, merge, unknown_unless_harness, Context, Invariant, Judgement};
use crate::cluster::in_parallel;
use crate::cluster::{ExternalHost, Pod};
use crate::observe::features::KernelNeed;
use crate::observe::{probe, ObserveError};
use crate::suite::InvariantName;

pub const ATTEMPTS: u32 = 3;
/// Per attempt; a hung connection costs this much.
pub const TIMEOUT_MS: u32 = 3000;

pub const NAME: InvariantName = InvariantName::new("pod-to-external");
pub struct PodToExternal;

pub fn judge(pod: &Pod, ext: &ExternalHost, attempts: &[Attempt]) -> Judgement {
    if attempts.is_empty() {
        return Judgement::unknown(format!("{} -> {}: no attempt reported", pod.name, ext.name));
    }
    let mut bad = Vec::new();
    for (i, a) in attempts.iter().enumerate() {
        let what = format!(
            "{} ({}) -> {} ({}) attempt {}",
            pod.name,
            pod.ip,
            ext.name,
            ext.addr,
            i + 1
        );
        if !a.ok {
            let why = format!(
                "{} {}",
                a.errno.map(|v| v.to_string()).unwrap_or_default(),
                a.error.as_deref().unwrap_or("")
            );
            match (&a.local, &a.peer) {
                (Some(local), Some(peer)) => bad.push(format!(
                    "{what}: established as {local} -> {peer} but no payload came back ({})",
                    why.trim()
                )),
                _ => bad.push(format!("{what}: failed: {}", why.trim())),
            }
            continue;
        }
        let seen_ip = a
            .seen_as
            .as_deref()
            .and_then(|s| s.rsplit_once(':'))
            .map(|(ip, _)| ip);
        match seen_ip {
            Some(ip) if ip == pod.ip.to_string() => bad.push(format!(
                "{what}: the external host saw the pod's own address {ip}: not masqueraded"
            )),
            Some(_) => {}
            None => bad.push(format!(
                "{what}: the answer did not say which address the host saw"
            )),
        }
    }
    if bad.is_empty() {
        Judgement::pass(format!(
            "{} -> {}: {} answers with payload",
            pod.name,
            ext.name,
            attempts.len()
        ))
    } else {
        Judgement::fail(
            format!(
                "{} cannot reach the external host {} with payload",
                pod.name, ext.addr
            ),
            bad,
        )
    }
}

impl Invariant for PodToExternal {
    fn name(&self) -> InvariantName {
        NAME
    }

    fn about(&self) -> &'static str {
        "every pod reaches the external host with payload (masquerade)"
    }

    /// Pod traffic leaves through the BPF masquerade (tc), replies come back by redirect_neigh.
    fn needs(&self) -> &'static [KernelNeed] {
        &[
            KernelNeed::ProgType("sched_cls"),
            KernelNeed::Helper("sched_cls", "bpf_l4_csum_replace"),
            KernelNeed::Helper("sched_cls", "bpf_redirect_neigh"),
        ]
    }

    fn check(&self, ctx: &Context<'_>) -> Result<Judgement, ObserveError> {
        let Some(ext) = &ctx.cluster.external else {
            return Ok(Judgement::unknown(
                "the cluster has no external host (the provider did not bring one up)",
            ));
        };
        let js = in_parallel(&ctx.cluster.pods, |pod| {
            match probe::connect_external(ctx.cluster, pod, ext, ATTEMPTS, TIMEOUT_MS) {
                Ok(a) => Ok(judge(pod, ext, &a)),
                Err(e) => {
                    unknown_unless_harness(format!("{} -> {}: cannot probe", pod.name, ext.name), e)
                }
            }
        });
        Ok(merge(&all_judged(js)?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Verdict;
    use super::*;

    fn pod() -> Pod {
        Pod {
            name: "client-a".into(),
            node: "node-a".into(),
            ip: "10.244.1.2".parse().unwrap(),
            netns: "/run/netns/p".into(),
            cgroup: "/sys/fs/cgroup/p".into(),
        }
    }
    fn ext() -> ExternalHost {
        ExternalHost {
            name: "external".into(),
            addr: "172.31.0.250:8080".parse().unwrap(),
            netns: "/run/netns/x".into(),
            on_host: None,
        }
    }
    /// Recorded: `dp-probe connect --count 3` from client-a to the external host of the
    /// netns provider through the masquerade (testdata/README.md says how).
    const CONNECT: &str = include_str!("testdata/pod-to-external.connect.txt");

    fn recorded() -> Vec<Attempt> {
        probe::parse_attempts("node-a", "dp-probe connect", CONNECT).expect("recorded output reads")
    }

    #[test]
    fn masqueraded_answers_pass() {
        let j = judge(&pod(), &ext(), &recorded());
        assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
        assert!(
            j.summary.ends_with("3 answers with payload"),
            "{}",
            j.summary
        );
    }

    /// Recorded: incident B with mutant kube-proxy-first: established, then silent.
    const HUNG: &str = include_str!("testdata/pod-to-external.hung.connect.txt");

    #[test]
    fn established_then_hung_fails_with_the_signature() {
        let a = probe::parse_attempts("node-a", "dp-probe connect", HUNG).expect("reads");
        let j = judge(&pod(), &ext(), &a);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.evidence.iter().any(|e| e.contains(
                "established as 10.244.1.2:52232 -> 172.31.0.250:8080 but no payload came back \
                 (110 timed out waiting for the answer)"
            )),
            "{:?}",
            j.evidence
        );
    }

    #[test]
    fn unmasqueraded_fails_and_nothing_is_unknown() {
        let mut a = recorded();
        a[1].seen_as = Some(format!("{}:40000", pod().ip));
        let j = judge(&pod(), &ext(), &a);
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(j.evidence.len(), 1);
        assert!(j.evidence[0].contains("attempt 2: the external host saw the pod's own address"));
        assert_eq!(judge(&pod(), &ext(), &[]).verdict, Verdict::Unknown);
    }
}
