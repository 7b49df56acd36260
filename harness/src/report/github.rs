//! GitHub Actions output, a consumer of the run's events. Under `GITHUB_ACTIONS=true`:
//! the run's log once more, one collapsible `::group::` per scenario iteration (the live
//! progress lines stay plain: they come before the events are complete); one `::error`
//! annotation per failed invariant (`::warning` when it could not be judged, `::error` for
//! a set-up the harness could not do) naming suite, scenario and evidence; and a markdown
//! table of the verdicts appended to `$GITHUB_STEP_SUMMARY`. `--summary-md PATH` writes
//! the same table anywhere.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::event::Event;
use crate::exit::ExitStatus;
use crate::invariant::{merge, Judgement, Verdict};
use crate::plan::Plan;
use crate::provider::Facts;

/// Evidence lines carried by one annotation (GitHub shows the first few lines anyway).
const EVIDENCE_LINES: usize = 10;
/// A table cell's text is cut here: the table is an overview, the JUnit has the rest.
const CELL_CHARS: usize = 160;

#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("error writing the verdict summary to {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What one run produced, as the consumers see it.
pub struct Run<'a> {
    pub plan: &'a Plan,
    pub facts: &'a Facts,
    pub events: &'a [Event],
    pub status: ExitStatus,
    /// The command that runs it again ([`Plan::replay_command`]).
    pub replay: &'a str,
}

/// Prints the groups and annotations when running under GitHub Actions, appends the
/// table to `$GITHUB_STEP_SUMMARY` there, and writes it to `summary_md` when given.
pub fn publish(run: &Run, summary_md: Option<&Path>) -> Result<(), GithubError> {
    let table = summary(run);
    if let Some(path) = summary_md {
        std::fs::write(path, &table).map_err(|source| GithubError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    }
    if std::env::var("GITHUB_ACTIONS").as_deref() != Ok("true") {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    for line in groups(run).iter().chain(&annotations(run)) {
        let _ = writeln!(out, "{line}");
    }
    if let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY").map(PathBuf::from) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(table.as_bytes()))
            .map_err(|source| GithubError::Write { path, source })?;
    }
    Ok(())
}

/// A workflow command's message: GitHub decodes `%25`, `%0D`, `%0A`.
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// A workflow command's property value (`title=...`): also `:` and `,`, which end it.
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// A line of free text inside a group: never read as a workflow command.
fn plain(s: &str) -> String {
    let body = s.trim_start();
    match body.strip_prefix("::") {
        Some(rest) => format!("{}: :{rest}", &s[..s.len() - body.len()]),
        None => s.to_string(),
    }
}

/// `sock-lb [qemu 6.1.0-57-amd64]`: the suite and where it ran, as the JUnit names it.
fn title(run: &Run) -> String {
    super::junit::suite_name(run.plan, run.facts)
}

/// One group per scenario iteration: set-up, each step with its details, each verdict.
pub fn groups(run: &Run) -> Vec<String> {
    let mut lines = Vec::new();
    let mut open = None::<(String, u32)>;
    for e in run.events {
        let (scenario, iteration) = e.scenario();
        if open.as_ref() != Some(&(scenario.to_string(), iteration)) {
            if open.is_some() {
                lines.push("::endgroup::".into());
            }
            lines.push(format!(
                "::group::{}: {scenario} #{iteration}",
                escape_data(&title(run))
            ));
            open = Some((scenario.to_string(), iteration));
        }
        match e {
            Event::ScenarioStarted { marker, .. } => {
                lines.push(format!("started (marker {marker})"));
            }
            Event::Up { ms, error, .. } | Event::Down { ms, error, .. } => {
                let what = if matches!(e, Event::Up { .. }) {
                    "up"
                } else {
                    "down"
                };
                match error {
                    None => lines.push(format!("{what} ({:.1} s)", secs(*ms))),
                    Some(err) => {
                        lines.push(format!("{what} failed ({:.1} s):", secs(*ms)));
                        lines.extend(err.message.lines().map(|l| plain(&format!("    {l}"))));
                    }
                }
            }
            Event::Step {
                index,
                step,
                ms,
                detail,
                error,
                ..
            } => {
                lines.push(plain(&format!(
                    "step {}: {} ({:.1} s)",
                    index + 1,
                    step.describe(),
                    secs(*ms)
                )));
                lines.extend(detail.iter().map(|d| plain(&format!("    {d}"))));
                if let Some(err) = error {
                    lines.push(plain(&format!("    failed: {err}")));
                }
            }
            Event::Verdict {
                invariant,
                judgement,
                during,
                ..
            } => {
                let when = during
                    .as_ref()
                    .map(|f| format!(" (during {f})"))
                    .unwrap_or_default();
                lines.push(plain(&format!(
                    "{invariant}{when}: {} {}",
                    verdict_word(judgement.verdict),
                    judgement.summary
                )));
            }
            Event::Artifacts { dir, .. } => {
                lines.push(format!("artifacts: {}", dir.display()));
            }
            Event::Interrupted { .. } => lines.push("interrupted".into()),
            Event::ScenarioSkipped { reason, .. } => {
                lines.push(plain(&format!("skipped: {reason}")));
            }
            Event::FaultStarted { fault, proof, .. } => {
                lines.push(plain(&format!("{fault} active:")));
                lines.extend(proof.iter().map(|p| plain(&format!("    {p}"))));
            }
            Event::FaultHealed {
                fault,
                proof,
                error,
                ..
            } => match error {
                Some(err) => lines.push(plain(&format!("{fault} NOT healed: {err}"))),
                None => {
                    lines.push(plain(&format!("{fault} healed:")));
                    lines.extend(proof.iter().map(|p| plain(&format!("    {p}"))));
                }
            },
            Event::Kept { marker, .. } => {
                lines.push(format!(
                    "kept up (marker {marker}; `harness clean` removes it)"
                ));
            }
            Event::StepStarted { .. } => {}
        }
    }
    if open.is_some() {
        lines.push("::endgroup::".into());
    }
    lines
}

/// One annotation per (scenario, invariant) that did not pass, all iterations merged
/// worst-first; one per scenario whose set-up, a step or teardown failed.
pub fn annotations(run: &Run) -> Vec<String> {
    let suite = &run.plan.suite;
    let mut lines = Vec::new();
    for ((scenario, invariant), row) in rows(run.events) {
        let j = &row.judgement;
        let (cmd, what) = match j.verdict {
            Verdict::Fail => ("error", "failed"),
            Verdict::Unknown => ("warning", "could not be judged"),
            _ => continue,
        };
        let mut msg = format!("{} in {}: {}", iterations_text(&row), title(run), j.summary);
        for e in j.evidence.iter().take(EVIDENCE_LINES) {
            msg.push('\n');
            msg.push_str(e);
        }
        if j.evidence.len() > EVIDENCE_LINES {
            msg.push_str(&format!(
                "\n... {} more evidence lines in the JUnit",
                j.evidence.len() - EVIDENCE_LINES
            ));
        }
        lines.push(format!(
            "::{cmd} title={}::{}",
            escape_property(&format!("{suite}: {scenario}: {invariant} {what}")),
            escape_data(&msg)
        ));
    }
    for (scenario, errors) in setup_errors(run.events) {
        lines.push(format!(
            "::error title={}::{}",
            escape_property(&format!(
                "{suite}: {scenario}: the harness could not run it"
            )),
            escape_data(&format!("{}\n{}", title(run), errors.join("\n")))
        ));
    }
    lines
}

/// The markdown verdict table, with a heading that says what ran and how it ended.
pub fn summary(run: &Run) -> String {
    let p = run.plan;
    let mut s = format!(
        "### {}: exit {} ({})\n\nseed {}, accelerator {}, datapath {}; replay: `{}`\n\n",
        md_cell(&title(run)),
        run.status.code(),
        run.status.meaning(),
        p.seed,
        md_cell(&run.facts.accelerator),
        p.mutant.as_deref().unwrap_or("correct"),
        run.replay.replace('`', "'")
    );
    s.push_str("| scenario | invariant | verdict | iterations | summary |\n");
    s.push_str("| --- | --- | --- | --- | --- |\n");
    for ((scenario, invariant), row) in rows(run.events) {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            md_cell(&scenario),
            invariant,
            verdict_word(row.judgement.verdict),
            iterations_text(&row),
            md_cell(&row.judgement.summary)
        ));
    }
    for (scenario, errors) in setup_errors(run.events) {
        s.push_str(&format!(
            "| {} | set-up | ERROR | | {} |\n",
            md_cell(&scenario),
            md_cell(&errors.join("; "))
        ));
    }
    s.push('\n');
    s
}

/// A (scenario, invariant)'s verdicts over its iterations.
struct Row {
    judgement: Judgement,
    /// Iterations judged, and those among them that did not pass.
    judged: Vec<u32>,
    not_passed: Vec<u32>,
}

fn rows(events: &[Event]) -> BTreeMap<(String, String), Row> {
    let mut per: BTreeMap<(String, String), Vec<(u32, Judgement)>> = BTreeMap::new();
    for e in events {
        if let Event::Verdict {
            scenario,
            iteration,
            invariant,
            judgement,
            ..
        } = e
        {
            per.entry((scenario.clone(), invariant.as_str().to_string()))
                .or_default()
                .push((*iteration, judgement.clone()));
        }
    }
    per.into_iter()
        .map(|(k, js)| {
            let mut judged: Vec<u32> = js.iter().map(|(i, _)| *i).collect();
            judged.dedup();
            let mut not_passed: Vec<u32> = js
                .iter()
                .filter(|(_, j)| j.verdict != Verdict::Pass)
                .map(|(i, _)| *i)
                .collect();
            not_passed.dedup();
            let all: Vec<Judgement> = js.into_iter().map(|(_, j)| j).collect();
            let row = Row {
                judgement: merge(&all),
                judged,
                not_passed,
            };
            (k, row)
        })
        .collect()
}

/// scenario -> "iteration N: error" for each set-up, step or teardown that failed.
fn setup_errors(events: &[Event]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in events {
        let (scenario, iteration) = e.scenario();
        let err = match e {
            Event::Up {
                error: Some(err), ..
            } => format!("up: {err}"),
            Event::Step {
                error: Some(err),
                index,
                ..
            } => format!("step {}: {err}", index + 1),
            Event::Down {
                error: Some(err), ..
            } => format!("down: {err}"),
            Event::Interrupted { .. } => "interrupted (SIGINT/SIGTERM)".into(),
            _ => continue,
        };
        out.entry(scenario.to_string())
            .or_default()
            .push(format!("iteration {iteration}: {err}"));
    }
    out
}

fn iterations_text(row: &Row) -> String {
    if row.not_passed.is_empty() {
        return format!("{} passed", row.judged.len());
    }
    let which: Vec<String> = row.not_passed.iter().map(|i| format!("#{i}")).collect();
    format!(
        "{} of {} ({})",
        row.not_passed.len(),
        row.judged.len(),
        which.join(", ")
    )
}

/// FAIL stands out in the table; every other verdict as it is named.
fn verdict_word(v: Verdict) -> String {
    match v {
        Verdict::Fail => "FAIL".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Text that stays inside one markdown table cell: one line, no column break, bounded.
fn md_cell(s: &str) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let cut: String = one_line.chars().take(CELL_CHARS).collect();
    let cut = if cut.len() < one_line.len() {
        format!("{cut}...")
    } else {
        cut
    };
    cut.replace('\\', "\\\\").replace('|', "\\|")
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

#[cfg(test)]
mod tests;
