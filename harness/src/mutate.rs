//! The harness's own score: `harness mutate` (the mutation score) and `harness soak` (the
//! false-alarm rate). Both repeat one suite run ([`crate::suite_run::run_suite`]) in
//! this process and judge the runs' verdicts, never their text.
//!
//! mutate: on each seed, the correct datapath and then every mutant of the suite's
//! `must-catch`, on the same plan and cluster shape. The correct datapath must pass
//! everything; a mutant is caught when an invariant its entry names fails. A harness error
//! or only an unrelated invariant failing is no catch (the row says which failed).
//!
//! soak: the correct datapath over N seeds; every failing verdict is a false alarm of its
//! invariant, every run that could not finish a harness error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use crate::event::Event;
use crate::exit::ExitStatus;
use crate::invariant::Verdict;
use crate::plan::PlannedStep;
use crate::signal::Cancel;
use crate::suite::{InvariantName, Suite, KNOWN_MUTANTS};
use crate::suite_run::RunOpts;
use crate::suite_run::{binaries, datapathd_mutants, run_suite, SuiteRun};

#[derive(Debug, thiserror::Error)]
pub enum MutateError {
    #[error(transparent)]
    Suite(#[from] crate::suite::SuiteError),
    #[error("suite {suite} lists no must-catch mutant: nothing to mutate")]
    NothingToCatch { suite: String },
    #[error("--datapath-mutant makes no sense here: mutate runs every mutant of must-catch, soak only the correct datapath")]
    MutantGiven,
    #[error("the datapath to deploy cannot be checked: {0}")]
    Datapathd(String),
    #[error("must-catch names `{mutant}`, which `datapathd mutants` does not list ({listed})")]
    NotBuilt { mutant: String, listed: String },
}

impl MutateError {
    pub fn status(&self) -> ExitStatus {
        match self {
            MutateError::Datapathd(_) | MutateError::NotBuilt { .. } => ExitStatus::HarnessError,
            _ => ExitStatus::BadInput,
        }
    }
}

/// Which datapath a run deployed.
#[derive(Debug, Clone, PartialEq)]
pub enum Variant {
    Correct,
    Mutant {
        name: String,
        /// The invariants its must-catch entry names.
        named: Vec<InvariantName>,
    },
}

impl Variant {
    pub fn label(&self) -> &str {
        match self {
            Variant::Correct => "(correct datapath)",
            Variant::Mutant { name, .. } => name,
        }
    }
}

/// What one run came to, judged against its variant.
#[derive(Debug, Clone, PartialEq)]
pub enum Fate {
    /// The correct datapath passed every invariant.
    Passed,
    /// The correct datapath failed these invariants.
    FalseAlarm { failed: Vec<InvariantName> },
    /// A mutant: `by` are the named invariants that failed, `also` the others that did.
    Caught {
        by: Vec<InvariantName>,
        also: Vec<InvariantName>,
    },
    /// A mutant none of whose named invariants failed; `failed` are those that did.
    Survived { failed: Vec<InvariantName> },
    /// The run could not be judged: a harness error, an interruption, or (correct
    /// datapath) verdicts that were unknown.
    NotJudged { status: ExitStatus, why: String },
}

/// One run of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub variant: Variant,
    pub seed: u64,
    pub fate: Fate,
    /// From the start of the fault to the first verdict that made the fate (a catch or a
    /// false alarm), in ms; negative when it came before the fault; None without a fault.
    pub fault_to_failure_ms: Option<i64>,
    pub run_dir: Option<PathBuf>,
    pub replay: Option<String>,
    /// `provider kernel` of the run, when it ran.
    pub cell: Option<String>,
}

/// Every row of a `harness mutate`.
#[derive(Debug, Clone)]
pub struct MutationReport {
    pub suite: String,
    pub provider: String,
    pub rows: Vec<Row>,
}

/// Invariants whose verdict was Fail, in the order they first failed.
pub fn failed_invariants(events: &[Event]) -> Vec<InvariantName> {
    let mut v: Vec<InvariantName> = Vec::new();
    for e in events {
        if let Event::Verdict {
            invariant,
            judgement,
            ..
        } = e
        {
            if judgement.verdict == Verdict::Fail && !v.contains(invariant) {
                v.push(invariant.clone());
            }
        }
    }
    v
}

/// From the start of the fault of the scenario iteration where the first failure of one
/// of `which` happened, to that failure (ms; negative when it came first).
pub fn fault_to_failure_ms(
    events: &[Event],
    which: impl Fn(&InvariantName) -> bool,
) -> Option<i64> {
    let (sc, it, fail_at) = events.iter().find_map(|e| match e {
        Event::Verdict {
            scenario,
            iteration,
            invariant,
            judgement,
            at_ms,
            ..
        } if judgement.verdict == Verdict::Fail && which(invariant) => {
            Some((scenario, *iteration, *at_ms))
        }
        _ => None,
    })?;
    let fault_start = events.iter().find_map(|e| match e {
        Event::Step {
            scenario,
            iteration,
            step: PlannedStep::Fault { .. },
            ms,
            at_ms,
            ..
        } if scenario == sc && *iteration == it => Some(at_ms.saturating_sub(*ms)),
        _ => None,
    })?;
    Some(fail_at as i64 - fault_start as i64)
}

/// The first error a run's events carry (set-up, a step, teardown).
fn first_error(events: &[Event]) -> Option<String> {
    events.iter().find_map(|e| match e {
        Event::Up {
            error: Some(err), ..
        }
        | Event::Step {
            error: Some(err), ..
        }
        | Event::Down {
            error: Some(err), ..
        } => Some(err.message.clone()),
        _ => None,
    })
}

/// Judges one run of `variant`.
pub fn judge(variant: &Variant, run: &SuiteRun) -> (Fate, Option<i64>) {
    let events: &[Event] = run.finished.as_ref().map_or(&[], |f| &f.events);
    let failed = failed_invariants(events);
    let not_judged = |status: ExitStatus| {
        let why = run
            .error
            .clone()
            .or_else(|| first_error(events))
            .unwrap_or_else(|| status.meaning().to_string());
        (Fate::NotJudged { status, why }, None)
    };
    match (variant, run.status) {
        (_, s @ (ExitStatus::HarnessError | ExitStatus::Interrupted | ExitStatus::BadInput)) => {
            not_judged(s)
        }
        (Variant::Correct, ExitStatus::Passed) => (Fate::Passed, None),
        (Variant::Correct, ExitStatus::InvariantsFailed) => (
            Fate::FalseAlarm { failed },
            fault_to_failure_ms(events, |_| true),
        ),
        (Variant::Correct, s) => not_judged(s),
        (Variant::Mutant { named, .. }, _) => {
            let (by, also): (Vec<_>, Vec<_>) =
                failed.iter().cloned().partition(|i| named.contains(i));
            if by.is_empty() {
                (Fate::Survived { failed }, None)
            } else {
                (
                    Fate::Caught { by, also },
                    fault_to_failure_ms(events, |i| named.contains(i)),
                )
            }
        }
    }
}

/// Checks what mutate needs before anything runs: a suite with must-catch, and a
/// datapathd that builds every mutant it names.
pub fn prepare(file: &Path, opts: &RunOpts) -> Result<Suite, MutateError> {
    if opts.datapath_mutant.is_some() {
        return Err(MutateError::MutantGiven);
    }
    let suite = Suite::load(file, &crate::registry::Registry)?;
    if suite.must_catch.is_empty() {
        return Err(MutateError::NothingToCatch { suite: suite.name });
    }
    let bins = binaries().map_err(|e| MutateError::Datapathd(format!("{e:#}")))?;
    let listed = datapathd_mutants(&bins).map_err(|e| MutateError::Datapathd(format!("{e:#}")))?;
    for m in &suite.must_catch {
        if !listed.contains(&m.mutant) {
            return Err(MutateError::NotBuilt {
                mutant: m.mutant.clone(),
                listed: listed.join(", "),
            });
        }
    }
    for l in listed
        .iter()
        .filter(|l| !KNOWN_MUTANTS.contains(&l.as_str()))
    {
        eprintln!("harness: warning: datapathd builds mutant `{l}`, which suites cannot name yet (suite::KNOWN_MUTANTS)");
    }
    Ok(suite)
}

/// `harness mutate`: every seed, the correct datapath then every must-catch mutant.
pub fn mutate(
    file: &Path,
    suite: &Suite,
    opts: &RunOpts,
    seeds: &[u64],
    cancel: &Cancel,
) -> MutationReport {
    let mut variants = vec![Variant::Correct];
    variants.extend(suite.must_catch.iter().map(|m| Variant::Mutant {
        name: m.mutant.clone(),
        named: m.invariants.clone(),
    }));
    let mut rows = Vec::new();
    'seeds: for &seed in seeds {
        for v in &variants {
            if cancel.is_cancelled() {
                break 'seeds;
            }
            eprintln!("harness mutate: {} seed {seed}: {}", suite.name, v.label());
            let mut o = opts.clone();
            o.seed = Some(seed);
            o.datapath_mutant = match v {
                Variant::Correct => None,
                Variant::Mutant { name, .. } => Some(name.clone()),
            };
            // The per-run JUnit and summary stay in each run's directory.
            o.junit = None;
            o.summary_md = None;
            let run = run_suite(file, seed, &o, cancel);
            let (fate, ms) = judge(v, &run);
            rows.push(Row {
                variant: v.clone(),
                seed,
                fate,
                fault_to_failure_ms: ms,
                run_dir: run.finished.as_ref().map(|f| f.run_dir.clone()),
                replay: run.finished.as_ref().map(|f| f.replay.clone()),
                cell: run
                    .finished
                    .as_ref()
                    .map(|f| format!("{} {}", f.facts.provider, f.facts.kernel)),
            });
        }
    }
    MutationReport {
        suite: suite.name.clone(),
        provider: opts.provider.clone(),
        rows,
    }
}

fn names(v: &[InvariantName]) -> String {
    if v.is_empty() {
        "nothing".into()
    } else {
        v.iter().map(|i| i.as_str()).collect::<Vec<_>>().join(", ")
    }
}

fn timing(ms: Option<i64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 0 => format!("before the fault ({:.1} s)", ms as f64 / 1000.0),
        Some(ms) => format!("+{:.1} s", ms as f64 / 1000.0),
    }
}

impl Fate {
    /// The result column and the invariants column.
    fn columns(&self) -> (&'static str, String) {
        match self {
            Fate::Passed => ("pass", "every invariant passed".into()),
            Fate::FalseAlarm { failed } => ("FALSE ALARM", format!("failed: {}", names(failed))),
            Fate::Caught { by, also } if also.is_empty() => ("caught", names(by)),
            Fate::Caught { by, also } => (
                "caught",
                format!("{} (also failed: {})", names(by), names(also)),
            ),
            Fate::Survived { failed } => (
                "SURVIVED",
                format!("named ones passed; failed: {}", names(failed)),
            ),
            Fate::NotJudged { status, why } => (
                "NOT JUDGED",
                format!("exit {}: {}", status.code(), one_line(why)),
            ),
        }
    }
}

fn one_line(s: &str) -> String {
    let l = s.lines().next().unwrap_or("");
    if l.len() > 160 {
        format!("{}...", &l[..l.floor_char_boundary(157)])
    } else {
        l.to_string()
    }
}

impl MutationReport {
    pub fn mutants(&self) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| matches!(r.variant, Variant::Mutant { .. }))
            .collect()
    }

    /// The row of `mutant` on `seed`.
    pub fn row(&self, mutant: &str, seed: u64) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.seed == seed && r.variant.label() == mutant)
    }

    pub fn score(&self) -> (usize, usize) {
        let m = self.mutants();
        let caught = m
            .iter()
            .filter(|r| matches!(r.fate, Fate::Caught { .. }))
            .count();
        (caught, m.len())
    }

    /// 0 when every mutant was caught and the correct datapath passed; 1 for a survivor
    /// or a false alarm; else why the rest could not be judged.
    pub fn status(&self, cancel: &Cancel) -> ExitStatus {
        if cancel.is_cancelled() {
            return ExitStatus::Interrupted;
        }
        let wrong = self
            .rows
            .iter()
            .any(|r| matches!(r.fate, Fate::Survived { .. } | Fate::FalseAlarm { .. }));
        if wrong {
            return ExitStatus::InvariantsFailed;
        }
        match self.rows.iter().find_map(|r| match &r.fate {
            Fate::NotJudged { status, .. } => Some(*status),
            _ => None,
        }) {
            Some(ExitStatus::Inconclusive) => ExitStatus::Inconclusive,
            Some(_) => ExitStatus::HarnessError,
            None if self.rows.is_empty() => ExitStatus::HarnessError,
            None => ExitStatus::Passed,
        }
    }

    /// The table, the score, and each survivor, false alarm and unjudged run by name.
    pub fn render(&self) -> String {
        let mut t = tabular(
            &[
                "mutant",
                "seed",
                "result",
                "caught by (named invariants that failed)",
                "fault -> first failure",
            ],
            self.rows
                .iter()
                .map(|r| {
                    let (res, invs) = r.fate.columns();
                    vec![
                        r.variant.label().to_string(),
                        r.seed.to_string(),
                        res.to_string(),
                        invs,
                        timing(r.fault_to_failure_ms),
                    ]
                })
                .collect(),
        );
        let (caught, total) = self.score();
        let correct: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| r.variant == Variant::Correct)
            .collect();
        let passed = correct.iter().filter(|r| r.fate == Fate::Passed).count();
        t.push_str(&format!(
            "mutation score {caught}/{total}{}; correct datapath passed {passed}/{} run(s)\n",
            if total > 0 {
                format!(" ({:.0} %)", 100.0 * caught as f64 / total as f64)
            } else {
                String::new()
            },
            correct.len()
        ));
        for r in &self.rows {
            let what = match &r.fate {
                Fate::Survived { failed } => format!(
                    "survivor: {} (seed {}) was not caught by {}; failed: {}",
                    r.variant.label(),
                    r.seed,
                    match &r.variant {
                        Variant::Mutant { named, .. } => names(named),
                        Variant::Correct => String::new(),
                    },
                    names(failed)
                ),
                Fate::FalseAlarm { failed } => format!(
                    "false alarm: the correct datapath (seed {}) failed {}",
                    r.seed,
                    names(failed)
                ),
                Fate::NotJudged { status, why } => format!(
                    "not judged: {} (seed {}): exit {}: {}",
                    r.variant.label(),
                    r.seed,
                    status.code(),
                    one_line(why)
                ),
                _ => continue,
            };
            t.push_str(&what);
            if let Some(d) = &r.run_dir {
                t.push_str(&format!(" (report {})", d.display()));
            }
            t.push('\n');
        }
        t
    }

    /// JUnit: one testsuite, a testcase for the correct datapath and one per mutant (its
    /// seeds together: any survivor fails it), with the user's `--junit-property`s.
    pub fn junit(&self, extra: &[(String, String)]) -> Report {
        let cell = self
            .rows
            .iter()
            .find_map(|r| r.cell.clone())
            .unwrap_or_else(|| self.provider.clone());
        let mut suite = TestSuite::new(format!("mutate {} [{}]", self.suite, cell.trim()));
        let (caught, total) = self.score();
        suite.add_properties([
            Property::new("provider", self.provider.clone()),
            Property::new(
                "seeds",
                dedup(self.rows.iter().map(|r| r.seed.to_string())).join(","),
            ),
            Property::new("mutation-score", format!("{caught}/{total}")),
        ]);
        for (k, v) in extra {
            suite.add_property(Property::new(k.clone(), v.clone()));
        }
        let mut by_variant: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
        let mut order = Vec::new();
        for r in &self.rows {
            let k = r.variant.label().to_string();
            if !by_variant.contains_key(&k) {
                order.push(k.clone());
            }
            by_variant.entry(k).or_default().push(r);
        }
        for k in order {
            let rows = &by_variant[&k];
            let lines: Vec<String> = rows
                .iter()
                .map(|r| {
                    let (res, invs) = r.fate.columns();
                    format!(
                        "seed {}: {res}: {invs}; fault -> first failure {}{}{}",
                        r.seed,
                        timing(r.fault_to_failure_ms),
                        r.run_dir
                            .as_ref()
                            .map(|d| format!("; report {}", d.display()))
                            .unwrap_or_default(),
                        r.replay
                            .as_ref()
                            .map(|c| format!("; replay: {c}"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            let bad = rows
                .iter()
                .find(|r| matches!(r.fate, Fate::Survived { .. } | Fate::FalseAlarm { .. }));
            let unjudged = rows
                .iter()
                .find(|r| matches!(r.fate, Fate::NotJudged { .. }));
            let status = match (bad, unjudged) {
                (Some(r), _) => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    s.set_message(r.fate.columns().1);
                    s
                }
                (None, Some(r)) => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
                    s.set_message(r.fate.columns().1);
                    s
                }
                (None, None) => TestCaseStatus::success(),
            };
            let mut case = TestCase::new(k, status);
            case.set_classname(format!("mutate.{}", self.suite));
            case.set_system_out(lines.join("\n"));
            suite.add_test_case(case);
        }
        let mut report = Report::new("harness mutate");
        report.add_test_suite(suite);
        report
    }
}

fn dedup(it: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for s in it {
        if !v.contains(&s) {
            v.push(s);
        }
    }
    v
}

/// Left-aligned columns, two spaces apart.
fn tabular(head: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut t = line(head.iter().map(|h| h.to_string()).collect());
    for r in rows {
        t.push_str(&line(r));
    }
    t
}

/// Per invariant over a soak: how often it was judged and how.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub passed: u32,
    pub false_alarms: u32,
    pub unknown: u32,
    pub skipped: u32,
    /// Seeds of the runs where it failed.
    pub failed_seeds: Vec<u64>,
}

/// Every run of a `harness soak`.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    pub suite: String,
    pub runs: u32,
    pub per_invariant: BTreeMap<InvariantName, Tally>,
    /// (seed, why) of each run that could not finish.
    pub harness_errors: Vec<(u64, String)>,
}

impl SoakReport {
    pub fn add(&mut self, seed: u64, run: &SuiteRun) {
        self.runs += 1;
        let events: &[Event] = run.finished.as_ref().map_or(&[], |f| &f.events);
        for e in events {
            if let Event::Verdict {
                invariant,
                judgement,
                ..
            } = e
            {
                let t = self.per_invariant.entry(invariant.clone()).or_default();
                match judgement.verdict {
                    Verdict::Pass => t.passed += 1,
                    Verdict::Fail => {
                        t.false_alarms += 1;
                        if !t.failed_seeds.contains(&seed) {
                            t.failed_seeds.push(seed);
                        }
                    }
                    Verdict::Unknown => t.unknown += 1,
                    Verdict::Skipped => t.skipped += 1,
                }
            }
        }
        if matches!(
            run.status,
            ExitStatus::HarnessError | ExitStatus::BadInput | ExitStatus::Interrupted
        ) {
            let why = run
                .error
                .clone()
                .or_else(|| first_error(events))
                .unwrap_or_else(|| run.status.meaning().to_string());
            self.harness_errors.push((seed, one_line(&why)));
        }
    }

    pub fn false_alarms(&self) -> u32 {
        self.per_invariant.values().map(|t| t.false_alarms).sum()
    }

    pub fn status(&self, cancel: &Cancel) -> ExitStatus {
        if cancel.is_cancelled() {
            ExitStatus::Interrupted
        } else if self.false_alarms() > 0 {
            ExitStatus::InvariantsFailed
        } else if !self.harness_errors.is_empty() || self.runs == 0 {
            ExitStatus::HarnessError
        } else if self.per_invariant.values().any(|t| t.unknown > 0) {
            ExitStatus::Inconclusive
        } else {
            ExitStatus::Passed
        }
    }

    pub fn render(&self) -> String {
        let mut t = tabular(
            &[
                "invariant",
                "verdicts",
                "pass",
                "false alarms",
                "unknown",
                "skipped",
                "failed on seeds",
            ],
            self.per_invariant
                .iter()
                .map(|(i, t)| {
                    vec![
                        i.as_str().to_string(),
                        (t.passed + t.false_alarms + t.unknown + t.skipped).to_string(),
                        t.passed.to_string(),
                        t.false_alarms.to_string(),
                        t.unknown.to_string(),
                        t.skipped.to_string(),
                        if t.failed_seeds.is_empty() {
                            "-".into()
                        } else {
                            t.failed_seeds
                                .iter()
                                .map(|s| s.to_string())
                                .collect::<Vec<_>>()
                                .join(",")
                        },
                    ]
                })
                .collect(),
        );
        t.push_str(&format!(
            "soak {}: {} run(s) of the correct datapath: {} false alarm(s), {} harness error(s)\n",
            self.suite,
            self.runs,
            self.false_alarms(),
            self.harness_errors.len()
        ));
        for (seed, why) in &self.harness_errors {
            t.push_str(&format!("harness error (seed {seed}): {why}\n"));
        }
        t
    }
}

/// `harness soak`: the correct datapath on `runs` seeds from `first_seed` on.
pub fn soak(
    file: &Path,
    suite: &Suite,
    opts: &RunOpts,
    first_seed: u64,
    runs: u32,
    cancel: &Cancel,
) -> SoakReport {
    let mut report = SoakReport {
        suite: suite.name.clone(),
        ..SoakReport::default()
    };
    for i in 0..u64::from(runs) {
        if cancel.is_cancelled() {
            break;
        }
        let seed = first_seed.wrapping_add(i);
        eprintln!(
            "harness soak: {} run {}/{runs} seed {seed}",
            suite.name,
            i + 1
        );
        let mut o = opts.clone();
        o.seed = Some(seed);
        o.junit = None;
        o.summary_md = None;
        let run = run_suite(file, seed, &o, cancel);
        report.add(seed, &run);
    }
    report
}

#[cfg(test)]
mod tests;
