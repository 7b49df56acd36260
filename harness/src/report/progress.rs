//! Progress: an indicatif spinner on a terminal (which step, which fault, which check),
//! plain log lines otherwise (CI). Every line also goes to the run's harness.log. It is a
//! consumer of the run's events.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressStyle};

use crate::event::{Consumer, Event};

#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
    log: Option<Arc<Mutex<std::fs::File>>>,
}

impl Progress {
    pub fn new(log: Option<&Path>) -> Progress {
        let tty = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        let bar = tty.then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(std::time::Duration::from_secs(1));
            b
        });
        let log = log
            .and_then(|p| std::fs::File::create(p).ok())
            .map(|f| Arc::new(Mutex::new(f)));
        Progress { bar, log }
    }

    pub fn line(&self, s: &str) {
        match &self.bar {
            Some(b) => {
                b.println(s);
                if !s.starts_with(' ') {
                    b.set_message(s.to_string());
                }
            }
            None => eprintln!("harness: {s}"),
        }
        if let Some(l) = &self.log {
            if let Ok(mut f) = l.lock() {
                let _ = writeln!(f, "{s}");
            }
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// The progress output is the events, as lines.
impl Consumer for Progress {
    fn event(&mut self, event: &Event) {
        for l in lines(event) {
            self.line(&l);
        }
    }
}

/// What a person watching a run reads of `event`.
pub fn lines(event: &Event) -> Vec<String> {
    match event {
        Event::ScenarioStarted {
            scenario,
            iteration,
            marker,
            provider,
        } => vec![format!(
            "scenario {scenario} #{iteration}: up ({provider}, marker {marker})"
        )],
        Event::ScenarioSkipped {
            scenario,
            iteration,
            reason,
        } => vec![format!(
            "scenario {scenario} #{iteration}: skipped: {reason}"
        )],
        Event::Up {
            scenario,
            iteration,
            error: Some(e),
            ..
        } => vec![format!("scenario {scenario} #{iteration}: up failed: {e}")],
        Event::Up { .. } => Vec::new(),
        Event::StepStarted {
            scenario,
            iteration,
            index,
            of,
            description,
        } => vec![format!(
            "scenario {scenario} #{iteration}: step {}/{of}: {description}",
            index + 1
        )],
        Event::FaultStarted { fault, proof, .. } => std::iter::once(format!("    {fault} active:"))
            .chain(proof.iter().map(|p| format!("      {p}")))
            .collect(),
        Event::FaultHealed {
            fault,
            proof,
            error,
            ..
        } => match error {
            Some(e) => vec![format!("    {fault} NOT healed: {e}")],
            None => std::iter::once(format!("    {fault} healed:"))
                .chain(proof.iter().map(|p| format!("      {p}")))
                .collect(),
        },
        Event::Step {
            scenario,
            iteration,
            index,
            ms,
            detail,
            error,
            ..
        } => {
            let mut out: Vec<String> = detail.iter().map(|d| format!("    {d}")).collect();
            out.push(format!("    ({:.1} s)", *ms as f64 / 1000.0));
            if let Some(e) = error {
                out.push(format!(
                    "scenario {scenario} #{iteration}: step {} failed: {e}",
                    index + 1
                ));
            }
            out
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
            std::iter::once(format!(
                "    {invariant}{when}: {:?} {}",
                judgement.verdict, judgement.summary
            ))
            .chain(
                judgement
                    .evidence
                    .iter()
                    .take(5)
                    .map(|e| format!("        {e}")),
            )
            .collect()
        }
        Event::Artifacts {
            scenario,
            iteration,
            dir,
        } => vec![format!(
            "scenario {scenario} #{iteration}: artifacts in {}",
            dir.display()
        )],
        Event::Kept {
            scenario,
            iteration,
            marker,
            running,
            how,
        } => {
            let what = if *running {
                "cluster left up with its agents and servers running"
            } else {
                "cluster left up, agents and servers stopped"
            };
            std::iter::once(format!(
                "scenario {scenario} #{iteration}: --keep: {what} (marker {marker}; `harness clean` removes it)"
            ))
            .chain(how.iter().map(|h| format!("    {h}")))
            .collect()
        }
        Event::Down {
            scenario,
            iteration,
            ms,
            error,
        } => vec![match error {
            Some(e) => format!("scenario {scenario} #{iteration}: down failed: {e}"),
            None => format!(
                "scenario {scenario} #{iteration}: down ({:.1} s)",
                *ms as f64 / 1000.0
            ),
        }],
        Event::Interrupted {
            scenario,
            iteration,
        } => vec![format!("scenario {scenario} #{iteration}: interrupted")],
    }
}
