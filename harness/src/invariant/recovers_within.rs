//! recovers-within: after a fault is healed, every pod reaches every service again within
//! the bound its fault step sets (`recover-within-s`), and the time it took is reported
//! (the summary and evidence, which the JUnit carries). Checked by rounds, from the heal
//! on: every pod probes every service once (`dp-probe connect`, real traffic), again and
//! again, until a round where all of them answered or the bound has passed. The time is
//! counted from the end of the heal to the end of the first round that all answered.
//! Reaching is all it asks; whether the answer came from a right backend is
//! service-connectivity's question.

use std::time::{Duration, Instant};

use dp_wire::Attempt;

use super::{Context, Invariant, Judgement};
use crate::cluster::in_parallel;
use crate::observe::features::KernelNeed;
use crate::observe::{probe, ObserveError};
use crate::suite::{FaultName, InvariantName, Needs};

pub const NAME: InvariantName = InvariantName::new("recovers-within");
pub struct RecoversWithin;

/// The pause between two rounds that did not all answer.
const BETWEEN_ROUNDS: Duration = Duration::from_millis(200);

/// The last fault step that healed, as the runner records it for this invariant.
#[derive(Debug, Clone)]
pub struct Healed {
    pub fault: FaultName,
    /// When its heal ended (proved).
    pub at: Instant,
    /// Its step's `recover-within-s`, if it set one.
    pub within: Option<Duration>,
}

/// One round of probes: when it ended (counted from the heal) and what did not answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    pub after: Duration,
    /// `pod -> service: why`, one per pair that did not answer.
    pub failed: Vec<String>,
    /// Pairs that could not be probed at all (the harness's trouble, not the datapath's).
    pub unprobed: Vec<String>,
}

impl Round {
    fn all_answered(&self) -> bool {
        self.failed.is_empty() && self.unprobed.is_empty()
    }
}

/// The rounds after the heal of `fault`, judged against `within`.
pub fn judge(fault: &FaultName, within: Duration, rounds: &[Round]) -> Judgement {
    let evidence: Vec<String> = rounds
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "round {} ended {:.1} s after the heal: {} not answering{}",
                i + 1,
                r.after.as_secs_f64(),
                r.failed.len(),
                if r.unprobed.is_empty() {
                    String::new()
                } else {
                    format!(", {} not probed", r.unprobed.len())
                }
            )
        })
        .collect();
    let bound = within.as_secs_f64();
    match rounds.iter().find(|r| r.all_answered()) {
        Some(r) if r.after <= within => Judgement {
            verdict: super::Verdict::Pass,
            summary: format!(
                "every pod reached every service {:.1} s after {fault} healed (bound {bound:.0} s)",
                r.after.as_secs_f64()
            ),
            evidence,
        },
        Some(r) => Judgement::fail(
            format!(
                "every pod reached every service only {:.1} s after {fault} healed (bound \
                 {bound:.0} s)",
                r.after.as_secs_f64()
            ),
            evidence,
        ),
        None => {
            let Some(last) = rounds.last() else {
                return Judgement::unknown(format!("no round of probes after {fault} healed"));
            };
            if last.failed.is_empty() {
                let mut j = Judgement::unknown(format!(
                    "could not probe every service after {fault} healed"
                ));
                j.evidence = evidence;
                j.evidence.extend(last.unprobed.iter().cloned());
                return j;
            }
            let mut evidence = evidence;
            evidence.extend(last.failed.iter().cloned());
            Judgement::fail(
                format!(
                    "{} pod -> service pairs still not answering {:.1} s after {fault} healed \
                     (bound {bound:.0} s)",
                    last.failed.len(),
                    last.after.as_secs_f64()
                ),
                evidence,
            )
        }
    }
}

/// Why one attempt did not answer, or `None` when it did.
fn failure(a: &Attempt) -> Option<String> {
    (!a.ok).then(|| {
        format!(
            "{} {}",
            a.errno.as_ref().map(|v| v.to_string()).unwrap_or_default(),
            a.error.as_deref().unwrap_or("")
        )
        .trim()
        .to_owned()
    })
}

/// Every pod probes every service once. Output the harness cannot read ends the check (a
/// harness error); a probe that could not run is "not probed".
fn round(ctx: &Context<'_>, healed_at: Instant) -> Result<Round, ObserveError> {
    let per_pod = in_parallel(&ctx.cluster.pods, |pod| {
        let mut failed = Vec::new();
        let mut unprobed = Vec::new();
        match probe::connect_services(ctx.cluster, pod, ctx.services, 1) {
            Ok(results) => {
                for (svc, r) in ctx.services.iter().zip(results) {
                    let what = format!("{} -> {} ({})", pod.name, svc.name, svc.addr());
                    match r {
                        Ok(attempts) if attempts.is_empty() => {
                            unprobed.push(format!("{what}: no attempt reported"))
                        }
                        Ok(attempts) => {
                            if let Some(why) = attempts.iter().find_map(failure) {
                                failed.push(format!("{what}: {why}"));
                            }
                        }
                        Err(e) if e.is_harness_error() => return Err(e),
                        Err(e) => unprobed.push(format!("{what}: {}", e.report())),
                    }
                }
            }
            Err(e) if e.is_harness_error() => return Err(e),
            Err(e) => unprobed.push(format!(
                "{}: cannot probe its services: {}",
                pod.name,
                e.report()
            )),
        }
        Ok((failed, unprobed))
    });
    let mut round = Round {
        after: healed_at.elapsed(),
        failed: Vec::new(),
        unprobed: Vec::new(),
    };
    for r in per_pod {
        let (failed, unprobed) = r?;
        round.failed.extend(failed);
        round.unprobed.extend(unprobed);
    }
    Ok(round)
}

impl Invariant for RecoversWithin {
    fn name(&self) -> InvariantName {
        NAME
    }

    fn suite_needs(&self) -> Needs {
        Needs {
            recovery_bound: true,
            ..Needs::default()
        }
    }

    fn about(&self) -> &'static str {
        "after a heal, every pod reaches every service again within the fault step's \
         recover-within-s; reports the time it took"
    }

    /// Services are reached through the socket LB.
    fn needs(&self) -> &'static [KernelNeed] {
        &[KernelNeed::ProgType("cgroup_sock_addr")]
    }

    fn check(&self, ctx: &Context<'_>) -> Result<Judgement, ObserveError> {
        let Some(healed) = ctx.healed else {
            return Ok(Judgement::unknown(
                "no fault was healed before this check (name recovers-within in a check \
                 after a fault step with recover-within-s)",
            ));
        };
        let Some(within) = healed.within else {
            return Ok(Judgement::unknown(format!(
                "the step of fault {} sets no recover-within-s",
                healed.fault
            )));
        };
        let deadline = healed.at + within;
        let mut rounds = Vec::new();
        loop {
            let r = round(ctx, healed.at)?;
            let done = r.all_answered();
            rounds.push(r);
            if done || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(BETWEEN_ROUNDS);
        }
        Ok(judge(&healed.fault, within, &rounds))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Verdict;
    use super::*;

    const FAULT: FaultName = FaultName::new("partition");

    fn round(after_ms: u64, failed: &[&str]) -> Round {
        Round {
            after: Duration::from_millis(after_ms),
            failed: failed.iter().map(|s| s.to_string()).collect(),
            unprobed: Vec::new(),
        }
    }

    #[test]
    fn answering_within_the_bound_passes_with_the_time_it_took() {
        let rounds = [
            round(2100, &["client-a -> api (10.96.0.20:80): 111 connect"]),
            round(2600, &[]),
        ];
        let j = judge(&FAULT, Duration::from_secs(10), &rounds);
        assert_eq!(j.verdict, Verdict::Pass);
        assert_eq!(
            j.summary,
            "every pod reached every service 2.6 s after partition healed (bound 10 s)"
        );
        assert_eq!(
            j.evidence,
            [
                "round 1 ended 2.1 s after the heal: 1 not answering",
                "round 2 ended 2.6 s after the heal: 0 not answering"
            ]
        );
    }

    #[test]
    fn still_failing_at_the_bound_fails_naming_the_pairs() {
        let rounds = [
            round(2000, &["client-a -> api (10.96.0.20:80): 111 connect"]),
            round(10_400, &["client-a -> api (10.96.0.20:80): 111 connect"]),
        ];
        let j = judge(&FAULT, Duration::from_secs(10), &rounds);
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(
            j.summary,
            "1 pod -> service pairs still not answering 10.4 s after partition healed (bound 10 s)"
        );
        assert_eq!(
            j.evidence.last().map(String::as_str),
            Some("client-a -> api (10.96.0.20:80): 111 connect")
        );
    }

    #[test]
    fn answering_only_after_the_bound_fails() {
        let j = judge(&FAULT, Duration::from_secs(1), &[round(1500, &[])]);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(j.summary.contains("only 1.5 s after"), "{}", j.summary);
    }

    #[test]
    fn probes_that_could_not_run_are_unknown_not_a_pass() {
        let r = Round {
            after: Duration::from_millis(500),
            failed: Vec::new(),
            unprobed: vec!["client-a: cannot probe its services: timeout".into()],
        };
        let j = judge(&FAULT, Duration::from_secs(5), &[r]);
        assert_eq!(j.verdict, Verdict::Unknown);
        assert_eq!(
            judge(&FAULT, Duration::from_secs(5), &[]).verdict,
            Verdict::Unknown
        );
    }

    /// Recorded dp-probe output (testdata/README.md): answered attempts are no failure, a
    /// refused one is, with its errno and error.
    #[test]
    fn recorded_attempts_fail_only_when_refused() {
        let parse = |text: &str| {
            crate::observe::probe::parse_attempts("node-a", "dp-probe connect", text)
                .expect("recorded dp-probe output reads")
        };
        let answered = parse(include_str!("testdata/service-connectivity.connect.txt"));
        assert!(!answered.is_empty());
        assert!(
            answered.iter().all(|a| failure(a).is_none()),
            "{answered:?}"
        );
        let refused = parse(include_str!("testdata/refused.connect.txt"));
        let why = refused
            .iter()
            .find_map(failure)
            .expect("a refused attempt is a failure");
        assert!(why.starts_with("111 "), "{why}");
    }
}
