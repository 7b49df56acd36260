//! JUnit XML (quick-junit): one testsuite per run, one testcase per scenario x invariant.
//! The testsuite's name carries the suite, provider, kernel and datapath variant, so that
//! the cells of a matrix stay apart on a dashboard (`sock-lb [qemu 6.1.0-57-amd64]`);
//! properties give the seed, every node's kernel and package, the accelerator, the
//! replay line, the run's report directory and the user's `--junit-property`s. A scenario repeated N times gives
//! one testcase whose earlier failing iterations are rerun failures; a pass after a
//! failure is marked flaky (the exit status still says an invariant failed). Unknown is
//! an error (the harness could not judge). A set-up failure is its own testcase.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use quick_junit::{
    NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestRerun, TestSuite,
};

use crate::event::Event;
use crate::invariant::{merge, Judgement, Verdict};
use crate::plan::Plan;
use crate::provider::{Facts, Limitation};

/// Where and when the run happened.
#[derive(Debug, Clone)]
pub struct RunMeta {
    pub run_dir: PathBuf,
    /// The command that runs it again ([`Plan::replay_command`]).
    pub replay: String,
    pub started: chrono::DateTime<chrono::FixedOffset>,
}

/// `sock-lb [qemu 6.1.0-57-amd64]`, `sock-lb [qemu 5.10.0-32-amd64+6.1.0-57-amd64, mutant
/// stale-cgroup-prog]`: one name per cell of a matrix.
pub fn suite_name(plan: &Plan, facts: &Facts) -> String {
    let mut cell = vec![plan.provider.clone()];
    if !facts.kernel.is_empty() {
        cell[0] = format!("{} {}", plan.provider, facts.kernel);
    }
    if let Some(m) = &plan.mutant {
        cell.push(format!("mutant {m}"));
    }
    format!("{} [{}]", plan.suite, cell.join(", "))
}

pub fn build(
    plan: &Plan,
    facts: &Facts,
    limits: &[Limitation],
    events: &[Event],
    meta: &RunMeta,
) -> Report {
    let mut suite = TestSuite::new(suite_name(plan, facts));
    suite.set_timestamp(meta.started);
    suite.add_properties([
        Property::new("seed", plan.seed.to_string()),
        Property::new("provider", plan.provider.clone()),
        Property::new("kernel", facts.kernel.clone()),
        Property::new("routing", plan.routing.to_string()),
    ]);
    for n in &facts.nodes {
        suite.add_property(Property::new(
            format!("kernel.{}", n.name),
            n.kernel_release.clone(),
        ));
        if let Some(p) = &n.kernel_package {
            suite.add_property(Property::new(
                format!("kernel-package.{}", n.name),
                p.to_string(),
            ));
        }
    }
    suite.add_properties([
        Property::new("accelerator", facts.accelerator.clone()),
        Property::new(
            "datapath-variant",
            plan.mutant.clone().unwrap_or_else(|| "correct".into()),
        ),
        Property::new("replay", meta.replay.clone()),
        Property::new("report-dir", meta.run_dir.display().to_string()),
    ]);
    for (k, v) in &plan.junit_properties {
        suite.add_property(Property::new(k.clone(), v.clone()));
    }
    // (scenario, invariant) -> iteration -> (judgements, ms)
    let mut cases: BTreeMap<(String, String), PerIteration> = BTreeMap::new();
    let mut setup: BTreeMap<String, Vec<(u32, String)>> = BTreeMap::new();
    for e in events {
        match e {
            Event::Verdict {
                scenario,
                iteration,
                invariant,
                judgement,
                ms,
                during,
                ..
            } => {
                // Judged while a fault was active: its own testcase.
                let name = match during {
                    Some(f) => format!("{invariant} during {f}"),
                    None => invariant.to_string(),
                };
                let c = cases
                    .entry((scenario.clone(), name))
                    .or_default()
                    .entry(*iteration)
                    .or_default();
                c.0.push(judgement.clone());
                c.1 += ms;
            }
            Event::Up {
                scenario,
                iteration,
                error: Some(err),
                ..
            }
            | Event::Step {
                scenario,
                iteration,
                error: Some(err),
                ..
            }
            | Event::Down {
                scenario,
                iteration,
                error: Some(err),
                ..
            }
            | Event::FaultHealed {
                scenario,
                iteration,
                error: Some(err),
                ..
            } => {
                setup
                    .entry(scenario.clone())
                    .or_default()
                    .push((*iteration, err.message.clone()));
            }
            Event::Interrupted {
                scenario,
                iteration,
            } => {
                setup
                    .entry(scenario.clone())
                    .or_default()
                    .push((*iteration, "interrupted (SIGINT/SIGTERM)".into()));
            }
            _ => {}
        }
    }
    for ((scenario, inv), iters) in cases {
        let runs: Vec<(u32, Judgement, u64)> = iters
            .into_iter()
            .map(|(i, (js, ms))| (i, merge(&js), ms))
            .collect();
        let total: u64 = runs.iter().map(|r| r.2).sum();
        let (last_i, last, _) =
            runs.last()
                .cloned()
                .unwrap_or((0, Judgement::unknown("not judged"), 0));
        let earlier: Vec<TestRerun> = runs[..runs.len().saturating_sub(1)]
            .iter()
            .filter(|r| !matches!(r.1.verdict, Verdict::Pass | Verdict::Skipped))
            .map(|(i, j, ms)| {
                let mut r = TestRerun::new(kind(j.verdict));
                r.set_type(format!("{:?}", j.verdict).to_lowercase())
                    .set_message(format!("iteration {i}: {}", j.summary))
                    .set_description(format!("{} ms\n{}", ms, j.evidence.join("\n")));
                r
            })
            .collect();
        let status = if last.verdict == Verdict::Pass {
            TestCaseStatus::Success {
                flaky_runs: earlier,
            }
        } else if last.verdict == Verdict::Skipped {
            let mut s = TestCaseStatus::skipped();
            s.set_message(format!("{inv}: {}", last.summary));
            s
        } else {
            let mut s = TestCaseStatus::non_success(kind(last.verdict));
            s.set_type(format!("{:?}", last.verdict).to_lowercase())
                .set_message(format!("{inv}: iteration {last_i}: {}", last.summary))
                .set_description(last.evidence.join("\n"))
                .add_reruns(earlier);
            s
        };
        let mut tc = TestCase::new(format!("{scenario}::{inv}"), status);
        tc.set_classname(format!("{}.{scenario}", plan.suite))
            .set_time(Duration::from_millis(total));
        let mut out = Vec::new();
        if let Some(l) = limits.iter().find(|l| l.invariant.as_str() == inv) {
            out.push(format!(
                "provider {} cannot judge this for real: {}",
                plan.provider, l.reason
            ));
        }
        // A pass with evidence (e.g. the counters that show socket acceleration was on
        // while it was judged) keeps it where a dashboard shows it.
        if last.verdict == Verdict::Pass && !last.evidence.is_empty() {
            out.push(format!("iteration {last_i}: {}", last.summary));
            out.extend(last.evidence.iter().cloned());
        }
        if !out.is_empty() {
            tc.set_system_out(out.join("\n"));
        }
        suite.add_test_case(tc);
    }
    for (scenario, errs) in setup {
        let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
        s.set_type("harness-error")
            .set_message(format!("{scenario}: the harness could not run it"))
            .set_description(
                errs.iter()
                    .map(|(i, e)| format!("iteration {i}: {e}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
        let mut tc = TestCase::new(format!("{scenario}::setup"), s);
        tc.set_classname(format!("{}.{scenario}", plan.suite));
        suite.add_test_case(tc);
    }
    if suite.test_cases.is_empty() {
        let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
        s.set_type("harness-error")
            .set_message("nothing was judged");
        suite.add_test_case(TestCase::new("setup", s));
    }
    let mut report = Report::new("harness");
    report.add_test_suite(suite);
    report
}

/// The XML text. quick-junit writes `disabled` on testsuite, which the Surefire schema
/// (harness/tests/data/junit-10.xsd) does not allow: it is dropped here.
pub fn to_xml(report: &Report) -> Result<String, quick_junit::SerializeError> {
    let xml = report.to_string()?;
    let mut out = String::with_capacity(xml.len());
    for line in xml.lines() {
        if line.trim_start().starts_with("<testsuite ") {
            if let Some(i) = line.find(" disabled=\"") {
                if let Some(j) = line[i + 11..].find('"') {
                    out.push_str(&line[..i]);
                    out.push_str(&line[i + 11 + j + 1..]);
                    out.push('\n');
                    continue;
                }
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

/// iteration -> (judgements, ms)
type PerIteration = BTreeMap<u32, (Vec<Judgement>, u64)>;

fn kind(v: Verdict) -> NonSuccessKind {
    match v {
        Verdict::Fail => NonSuccessKind::Failure,
        _ => NonSuccessKind::Error,
    }
}

#[cfg(test)]
mod tests;
