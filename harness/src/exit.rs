//! Exit statuses of `harness`, all in one place. The CLI maps every outcome to one of these;
//! nothing else calls `std::process::exit`.
//!
//! | status | meaning |
//! | --- | --- |
//! | 0 | every invariant of every scenario passed |
//! | 1 | at least one invariant failed (the datapath is wrong) |
//! | 2 | bad usage or a bad suite file (nothing was started) |
//! | 3 | harness error: could not boot the cluster, deploy, inject a fault, or clean up |
//! | 4 | inconclusive: no invariant failed, but at least one could not be judged (unknown), or every verdict was skipped |
//! | 130 | interrupted by SIGINT or SIGTERM (artifacts taken, cleaned up) |
//!
//! A flaky invariant (failed in one iteration of a repeated scenario, passed in a later
//! one) is exit 1, not 0, unlike nextest's default for retries: iterations are not retries
//! of one test but different seeded runs of a chaos scenario, and an invariant the datapath
//! breaks only sometimes is what the harness exists to find (incidents A-C are races). The
//! JUnit marks it flaky (`flakyFailure` under a passing testcase) and the last line names
//! it, so that a dashboard tells it from an invariant that always fails.

use crate::event::Event;
use crate::invariant::Verdict;
use crate::run::Outcome;

/// One documented exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Passed,
    InvariantsFailed,
    BadInput,
    HarnessError,
    Inconclusive,
    Interrupted,
}

impl ExitStatus {
    pub const ALL: [ExitStatus; 6] = [
        ExitStatus::Passed,
        ExitStatus::InvariantsFailed,
        ExitStatus::BadInput,
        ExitStatus::HarnessError,
        ExitStatus::Inconclusive,
        ExitStatus::Interrupted,
    ];

    pub const fn code(self) -> i32 {
        match self {
            ExitStatus::Passed => 0,
            ExitStatus::InvariantsFailed => 1,
            ExitStatus::BadInput => 2,
            ExitStatus::HarnessError => 3,
            ExitStatus::Inconclusive => 4,
            ExitStatus::Interrupted => 130,
        }
    }

    pub const fn meaning(self) -> &'static str {
        match self {
            ExitStatus::Passed => "every invariant passed",
            ExitStatus::InvariantsFailed => "an invariant failed",
            ExitStatus::BadInput => "bad usage or bad suite file",
            ExitStatus::HarnessError => "harness error (could not boot, deploy, inject or clean)",
            ExitStatus::Inconclusive => "no invariant failed, but some could not be judged",
            ExitStatus::Interrupted => "interrupted (SIGINT/SIGTERM)",
        }
    }
}

impl ExitStatus {
    /// The status of a run that ended with `outcome` and emitted `events`.
    pub fn of(outcome: Outcome, events: &[Event]) -> ExitStatus {
        let verdicts: Vec<Verdict> = events
            .iter()
            .filter_map(|e| match e {
                Event::Verdict { judgement, .. } => Some(judgement.verdict),
                _ => None,
            })
            .collect();
        match outcome {
            Outcome::Interrupted => ExitStatus::Interrupted,
            Outcome::HarnessError => ExitStatus::HarnessError,
            // Flaky included: an earlier iteration's failure counts (see the module doc).
            Outcome::Completed if verdicts.contains(&Verdict::Fail) => ExitStatus::InvariantsFailed,
            Outcome::Completed
                if !verdicts.contains(&Verdict::Pass) || verdicts.contains(&Verdict::Unknown) =>
            {
                ExitStatus::Inconclusive
            }
            Outcome::Completed => ExitStatus::Passed,
        }
    }
}

/// `scenario::invariant` of every invariant that failed in an iteration and passed in the
/// last one (what the JUnit reports as flaky).
pub fn flaky(events: &[Event]) -> Vec<String> {
    let mut last: std::collections::BTreeMap<(String, String), (bool, Verdict)> =
        Default::default();
    for e in events {
        if let Event::Verdict {
            scenario,
            invariant,
            judgement,
            ..
        } = e
        {
            let entry = last
                .entry((scenario.clone(), invariant.as_str().to_string()))
                .or_insert((false, judgement.verdict));
            entry.0 |= judgement.verdict == Verdict::Fail;
            entry.1 = judgement.verdict;
        }
    }
    last.into_iter()
        .filter(|(_, (failed, now))| *failed && *now == Verdict::Pass)
        .map(|((s, i), _)| format!("{s}::{i}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariant::Judgement;

    fn verdict(it: u32, j: Judgement) -> Event {
        Event::Verdict {
            scenario: "restart".into(),
            iteration: it,
            invariant: crate::invariant::service_connectivity::NAME,
            judgement: j,
            ms: 1,
            at_ms: 0,
            during: None,
        }
    }

    #[test]
    fn a_flaky_invariant_is_exit_1_and_named() {
        let events = vec![
            verdict(1, Judgement::fail("no answer", vec![])),
            verdict(2, Judgement::pass("ok")),
        ];
        assert_eq!(
            ExitStatus::of(Outcome::Completed, &events),
            ExitStatus::InvariantsFailed
        );
        assert_eq!(flaky(&events), vec!["restart::service-connectivity"]);
        // Failing to the end is not flaky; passing throughout is exit 0.
        let failing = vec![
            verdict(1, Judgement::pass("ok")),
            verdict(2, Judgement::fail("x", vec![])),
        ];
        assert!(flaky(&failing).is_empty());
        let passing = vec![
            verdict(1, Judgement::pass("ok")),
            verdict(2, Judgement::pass("ok")),
        ];
        assert_eq!(
            ExitStatus::of(Outcome::Completed, &passing),
            ExitStatus::Passed
        );
    }

    #[test]
    fn codes_are_distinct() {
        let mut codes: Vec<i32> = ExitStatus::ALL.iter().map(|s| s.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), ExitStatus::ALL.len());
        assert_eq!(ExitStatus::Passed.code(), 0);
    }
}
