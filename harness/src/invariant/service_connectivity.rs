//! service-connectivity: every pod reaches every service with payload; the answer comes
//! from a backend the service has *now*; getpeername() (TCP) and the reply's source (UDP)
//! show the service address. Traffic is real: `dp-probe connect` from the pod's netns and
//! cgroup.

use dp_wire::Attempt;

use super::{all_judged, merge, unknown_unless_harness, Context, Invariant, Judgement};
use crate::cluster::in_parallel;
use crate::cluster::service::ServiceState;
use crate::observe::features::KernelNeed;
use crate::observe::{probe, ObserveError};
use crate::suite::InvariantName;

/// Attempts per pod and service: several, because TCP picks a random slot.
pub const ATTEMPTS: u32 = 6;

pub const NAME: InvariantName = InvariantName::new("service-connectivity");
pub struct ServiceConnectivity;

pub fn judge(pod: &str, svc: &ServiceState, attempts: &[Attempt]) -> Judgement {
    let mut bad = Vec::new();
    if attempts.is_empty() {
        return Judgement::unknown(format!("{pod} -> {}: no attempt reported", svc.name));
    }
    for (i, a) in attempts.iter().enumerate() {
        let what = format!("{pod} -> {} ({}) attempt {}", svc.name, svc.addr(), i + 1);
        if !a.ok {
            bad.push(format!(
                "{what}: failed: {} {}",
                a.errno.map(|v| v.to_string()).unwrap_or_default(),
                a.error.as_deref().unwrap_or("")
            ));
            continue;
        }
        match a.backend.as_deref() {
            Some(b) if svc.backends.iter().any(|x| x == b) => {}
            other => bad.push(format!(
                "{what}: answered by {} which is not a current backend (now: {})",
                other.unwrap_or("nobody"),
                svc.backends.join(", ")
            )),
        }
        if a.peer.as_deref() != Some(svc.addr().as_str()) {
            bad.push(format!(
                "{what}: peer address is {} instead of the service address",
                a.peer.as_deref().unwrap_or("unknown")
            ));
        }
    }
    if bad.is_empty() {
        Judgement::pass(format!(
            "{pod} -> {}: {} answers from live backends",
            svc.name,
            attempts.len()
        ))
    } else {
        Judgement::fail(
            format!("{pod} cannot reach {} through a live backend", svc.name),
            bad,
        )
    }
}

impl Invariant for ServiceConnectivity {
    fn name(&self) -> InvariantName {
        NAME
    }

    fn about(&self) -> &'static str {
        "every pod reaches every service (TCP and UDP) with payload, replies from the service address"
    }

    /// Socket-LB rewrites connect()/sendmsg() in cgroup sock_addr programs.
    fn needs(&self) -> &'static [KernelNeed] {
        &[KernelNeed::ProgType("cgroup_sock_addr")]
    }

    fn check(&self, ctx: &Context<'_>) -> Result<Judgement, ObserveError> {
        let per_pod = in_parallel(&ctx.cluster.pods, |pod| {
            match probe::connect_services(ctx.cluster, pod, ctx.services, ATTEMPTS) {
                Ok(results) => ctx
                    .services
                    .iter()
                    .zip(results)
                    .map(|(svc, r)| match r {
                        Ok(a) => Ok(judge(&pod.name, svc, &a)),
                        Err(e) => unknown_unless_harness(
                            format!("{} -> {}: cannot probe", pod.name, svc.name),
                            e,
                        ),
                    })
                    .collect(),
                Err(e) => vec![unknown_unless_harness(
                    format!("{}: cannot probe its services", pod.name),
                    e,
                )],
            }
        });
        Ok(merge(&all_judged(per_pod.into_iter().flatten())?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Verdict;
    use super::*;
    use crate::suite::Protocol;

    /// Recorded: `dp-probe connect --count 6` from a client pod to a service of the
    /// netns provider (testdata/README.md says how).
    const CONNECT: &str = include_str!("testdata/service-connectivity.connect.txt");

    fn recorded() -> Vec<Attempt> {
        probe::parse_attempts("node-a", "dp-probe connect", CONNECT).expect("recorded output reads")
    }

    fn svc() -> ServiceState {
        let a = &recorded()[0];
        ServiceState {
            name: "web".into(),
            vip: a.to.rsplit_once(':').unwrap().0.parse().unwrap(),
            port: a.to.rsplit_once(':').unwrap().1.parse().unwrap(),
            protocol: Protocol::Tcp,
            target_port: 8080,
            backends: recorded()
                .iter()
                .filter_map(|a| a.backend.clone())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn answers_from_live_backends_pass() {
        let j = judge("client-a", &svc(), &recorded());
        assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
        assert!(
            j.summary.ends_with("6 answers from live backends"),
            "{}",
            j.summary
        );
    }

    #[test]
    fn a_removed_backend_answering_fails() {
        let mut svc = svc();
        let gone = svc.backends.remove(0);
        let j = judge("client-a", &svc, &recorded());
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.evidence.iter().any(|e| e.contains(&format!(
                "answered by {gone} which is not a current backend"
            ))),
            "{:?}",
            j.evidence
        );
    }

    #[test]
    fn backend_address_as_peer_fails() {
        let mut a = recorded();
        a.truncate(1);
        a[0].peer = Some("10.244.1.3:8080".into());
        let j = judge("c", &svc(), &a);
        assert!(j.evidence[0]
            .contains("peer address is 10.244.1.3:8080 instead of the service address"));
    }

    #[test]
    fn refused_fails_and_nothing_is_unknown() {
        let refused = probe::parse_attempts(
            "node-a",
            "dp-probe connect",
            include_str!("testdata/refused.connect.txt"),
        )
        .expect("recorded output reads");
        let j = judge("c", &svc(), &refused);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(j.evidence[0].contains("failed: 111"), "{:?}", j.evidence);
        assert_eq!(judge("c", &svc(), &[]).verdict, Verdict::Unknown);
    }
}
