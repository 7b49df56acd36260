//! `dp-probe bench`: N sequential TCP connect+request+response+close, latency summary.

use std::io::{self, Write};
use std::time::Duration;

use serde::Serialize;

use crate::cli::{BenchArgs, Proto};
use crate::connect::{attempt, Target};
use crate::{place, EXIT_FAILED, EXIT_OK, EXIT_SETUP};

/// The summary line `bench` prints. Percentiles are nearest-rank over the successful
/// attempts, in microseconds; null when none succeeded.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub to: String,
    pub count: u32,
    pub ok: u32,
    pub failed: u32,
    pub min_us: Option<u64>,
    pub median_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub max_us: Option<u64>,
    /// The first failure's text, if any, so a broken run says why.
    pub first_error: Option<String>,
}

pub fn run(args: &BenchArgs) -> u8 {
    if let Err(e) = place::enter(&args.place) {
        eprintln!("{}", e.report());
        return EXIT_SETUP;
    }
    let target = Target {
        to: args.to,
        proto: Proto::Tcp,
        payload: args.payload.clone(),
        timeout: Duration::from_millis(args.timeout_ms),
        bind: None,
    };
    let mut times = Vec::with_capacity(args.count as usize);
    let mut first_error = None;
    for _ in 0..args.count {
        let a = attempt(&target);
        if a.ok {
            times.push(a.elapsed_us);
        } else if first_error.is_none() {
            first_error = a.error;
        }
    }
    let s = summarize(args.to.to_string(), args.count, times, first_error);
    let line = serde_json::to_string(&s).unwrap_or_default();
    let mut out = io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() || s.failed > 0 {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}

pub fn summarize(
    to: String,
    count: u32,
    mut times: Vec<u64>,
    first_error: Option<String>,
) -> Summary {
    times.sort_unstable();
    let ok = u32::try_from(times.len()).unwrap_or(u32::MAX);
    Summary {
        to,
        count,
        ok,
        failed: count.saturating_sub(ok),
        min_us: times.first().copied(),
        median_us: nearest_rank(&times, 50),
        p99_us: nearest_rank(&times, 99),
        max_us: times.last().copied(),
        first_error,
    }
}

/// The smallest value with at least `pct` percent of the sorted values at or below it.
fn nearest_rank(sorted: &[u64], pct: usize) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (pct * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let s = summarize(
            "x".into(),
            101,
            (1..=100).rev().collect(),
            Some("boom".into()),
        );
        assert_eq!((s.ok, s.failed), (100, 1));
        assert_eq!(s.min_us, Some(1));
        assert_eq!(s.median_us, Some(50));
        assert_eq!(s.p99_us, Some(99));
        assert_eq!(s.max_us, Some(100));
        let one = summarize("x".into(), 1, vec![7], None);
        assert_eq!(
            (one.min_us, one.median_us, one.p99_us, one.max_us),
            (Some(7), Some(7), Some(7), Some(7))
        );
        let none = summarize("x".into(), 3, vec![], Some("refused".into()));
        assert_eq!((none.ok, none.failed, none.median_us), (0, 3, None));
    }
}
