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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct() {
        let mut codes: Vec<i32> = ExitStatus::ALL.iter().map(|s| s.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), ExitStatus::ALL.len());
        assert_eq!(ExitStatus::Passed.code(), 0);
    }
}
