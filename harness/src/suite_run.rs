//! One run of a suite, as `harness suite` does it and `harness mutate`/`soak` repeat it:
//! load, plan, check the binaries, run, write the history, JUnit and summaries, and say
//! what happened ([`SuiteRun`]). It prints as the command line does (this is still the
//! command line's edge: anyhow for errors that only become messages).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::cli::RunOpts;
use crate::cluster::Binaries;
use crate::exit::ExitStatus;
use crate::invariant::Verdict;
use crate::provider::{self, Facts};
use crate::report::progress::Progress;
use crate::report::{github, history, junit};
use crate::run::{Event, Runner};
use crate::signal::Cancel;
use crate::suite::Suite;

/// What one run of a suite came to.
#[derive(Debug)]
pub struct SuiteRun {
    pub status: ExitStatus,
    /// Why it could not run or ended in a harness error, when it is known before the
    /// events (bad suite, missing binaries, a provider that cannot prepare).
    pub error: Option<String>,
    /// Present once the runner ran.
    pub finished: Option<Finished>,
}

#[derive(Debug)]
pub struct Finished {
    pub events: Vec<Event>,
    pub facts: Facts,
    pub run_dir: PathBuf,
    pub replay: String,
}

impl SuiteRun {
    fn early(status: ExitStatus, error: String) -> SuiteRun {
        eprintln!("harness: error: {error}");
        SuiteRun {
            status,
            error: Some(error),
            finished: None,
        }
    }
}

/// A seed from the clock, when none is given.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        % 1_000_000_007
}

/// The binaries to deploy: $DP_HARNESS_BIN_DIR, else beside this executable (cargo puts
/// datapathd and dp-probe in the same target directory).
pub fn binaries() -> anyhow::Result<Binaries> {
    let dir = match std::env::var_os("DP_HARNESS_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe()?
            .parent()
            .map(|p| {
                if p.ends_with("deps") {
                    p.parent().unwrap_or(p).to_path_buf()
                } else {
                    p.to_path_buf()
                }
            })
            .unwrap_or_default(),
    };
    let b = Binaries {
        datapathd: dir.join("datapathd"),
        dp_probe: dir.join("dp-probe"),
        dp_remote: dir.join("dp-remote"),
    };
    let missing = [&b.datapathd, &b.dp_probe, &b.dp_remote]
        .iter()
        .any(|p| !p.is_file());
    if missing && std::env::var_os("DP_HARNESS_BIN_DIR").is_none() {
        build_siblings(&dir)?;
    }
    for (p, pkg) in [
        (&b.datapathd, "datapath-agent"),
        (&b.dp_probe, "dp-probe"),
        (&b.dp_remote, "dp-remote"),
    ] {
        if !p.is_file() {
            anyhow::bail!(
                "{} not found: build it with `cargo build -p {pkg}` (or set DP_HARNESS_BIN_DIR)",
                p.display()
            );
        }
    }
    Ok(b)
}

/// Builds datapathd and dp-probe when the harness was started by `cargo run` (which
/// builds only the harness) on a checkout where they were never built: the same
/// `cargo build` as the README's test command (default members, so the same feature
/// resolution and nothing rebuilt twice), into the harness's own target directory.
fn build_siblings(dir: &Path) -> anyhow::Result<()> {
    let (Some(cargo), Some(manifest_dir)) = (
        std::env::var_os("CARGO"),
        std::env::var_os("CARGO_MANIFEST_DIR"),
    ) else {
        return Ok(());
    };
    let workspace = PathBuf::from(manifest_dir).join("..").join("Cargo.toml");
    let release = dir.file_name().is_some_and(|n| n == "release");
    let mut cmd = std::process::Command::new(&cargo);
    cmd.arg("build").arg("--manifest-path").arg(&workspace);
    if release {
        cmd.arg("--release");
    }
    if let Some(target) = dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    eprintln!(
        "harness: datapathd, dp-probe or dp-remote not built yet: running `cargo build{}` (once)",
        if release { " --release" } else { "" }
    );
    let status = cmd
        .status()
        .with_context(|| format!("running {}", PathBuf::from(&cargo).display()))?;
    if !status.success() {
        anyhow::bail!(
            "`cargo build` of datapathd and dp-probe failed ({status}); see its output above"
        );
    }
    Ok(())
}

/// Checks that datapathd knows the failpoints and the mutant the plan uses.
fn check_datapathd(b: &Binaries, mutant: Option<&str>) -> anyhow::Result<()> {
    let out = std::process::Command::new(&b.datapathd)
        .arg("failpoints")
        .output()?;
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    for f in crate::plan::FAILPOINTS {
        if !listed.iter().any(|l| l == f) {
            anyhow::bail!(
                "`{} failpoints` does not list `{f}`, which the plan may choose",
                b.datapathd.display()
            );
        }
    }
    if let Some(m) = mutant {
        let listed = datapathd_mutants(b)?;
        if !listed.iter().any(|l| l == m) {
            anyhow::bail!(
                "unknown datapath mutant `{m}`; `datapathd mutants` lists: {}",
                listed.join(", ")
            );
        }
    }
    Ok(())
}

/// The mutants `datapathd mutants` lists (the first word of each line).
pub fn datapathd_mutants(b: &Binaries) -> anyhow::Result<Vec<String>> {
    let out = std::process::Command::new(&b.datapathd)
        .arg("mutants")
        .output()
        .with_context(|| format!("running {} mutants", b.datapathd.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "`{} mutants` failed ({}): {}",
            b.datapathd.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// `--reports-dir`, else reports/ of the checkout the harness runs from; canonical.
fn reports_root(opts: &RunOpts) -> PathBuf {
    let dir = opts
        .reports_dir
        .clone()
        .unwrap_or_else(|| crate::checkout::path("reports"));
    crate::checkout::canonical(&dir)
}

/// Runs the suite in `file` with `seed` and `opts`; `cancel` is the caller's (its signal
/// handlers installed once).
pub fn run_suite(file: &Path, seed: u64, opts: &RunOpts, cancel: &Cancel) -> SuiteRun {
    let s = match Suite::load(file) {
        Ok(s) => s,
        Err(e) => return SuiteRun::early(ExitStatus::BadInput, crate::run::chain(&e)),
    };
    let Some(mut provider) = provider::by_name(&opts.provider) else {
        return SuiteRun::early(
            ExitStatus::BadInput,
            format!(
                "unknown provider `{}` (known: {})",
                opts.provider,
                crate::provider::PROVIDERS.join(", ")
            ),
        );
    };
    if !opts.kernels.is_empty() && provider.facts().shared_kernel {
        return SuiteRun::early(
            ExitStatus::BadInput,
            format!(
                "--kernel: provider {} runs every node on this host's kernel; use --provider qemu",
                opts.provider
            ),
        );
    }
    let mut plan = crate::plan::plan(
        &s,
        crate::checkout::canonical(file),
        seed,
        &opts.provider,
        opts.datapath_mutant.as_deref(),
        opts.repeat,
    );
    if let Err(e) = plan.set_kernels(&s, &opts.kernels) {
        return SuiteRun::early(ExitStatus::BadInput, e.to_string());
    }
    plan.junit_properties = opts.junit_properties.clone();
    plan.reports_dir = opts.reports_dir.as_deref().map(crate::checkout::canonical);
    let bins = match binaries()
        .and_then(|b| check_datapathd(&b, opts.datapath_mutant.as_deref()).map(|_| b))
    {
        Ok(b) => b,
        Err(e) => {
            let status = if e.to_string().contains("unknown datapath mutant") {
                ExitStatus::BadInput
            } else {
                ExitStatus::HarnessError
            };
            return SuiteRun::early(status, format!("{e:#}"));
        }
    };
    if let Err(e) = provider.prepare(&plan.topology(&s)) {
        let status = match e {
            crate::provider::ProviderError::KernelUnavailable { .. } => ExitStatus::BadInput,
            _ => ExitStatus::HarnessError,
        };
        return SuiteRun::early(status, crate::run::chain(&e));
    }
    let run_name = format!("{}-{}-{}", s.name, seed, crate::provider::RunId::fresh());
    let run_dir = reports_root(opts).join(&run_name);
    if let Err(e) = std::fs::create_dir_all(&run_dir) {
        return SuiteRun::early(
            ExitStatus::HarnessError,
            format!("cannot create {}: {e}", run_dir.display()),
        );
    }
    let started = chrono::Local::now().fixed_offset();
    let progress = Progress::new(Some(&run_dir.join("harness.log")));
    progress.line(&format!("run {} -> {}", run_name, run_dir.display()));
    progress.line(&format!(
        "replay with: {}",
        plan.replay_command(&Default::default())
    ));
    let result = Runner {
        plan: &plan,
        suite: &s,
        provider,
        binaries: bins,
        run_dir: run_dir.clone(),
        cancel: cancel.clone(),
        keep: opts.keep,
        progress: progress.clone(),
        started: std::time::Instant::now(),
    }
    .run();
    progress.finish();
    let verdicts: Vec<Verdict> = result
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Verdict { judgement, .. } => Some(judgement.verdict),
            _ => None,
        })
        .collect();
    let status = ExitStatus::of(result.outcome, &result.events);
    let flaky = crate::exit::flaky(&result.events);
    let replay = plan.replay_command(&result.facts.exact_kernels());
    let outcome = format!("{:?}", status);
    let _ = history::write(
        &run_dir.join("history.json"),
        &plan,
        &replay,
        &result,
        &outcome,
    );
    let meta = junit::RunMeta {
        run_dir: run_dir.clone(),
        replay: replay.clone(),
        started,
    };
    let report = junit::build(
        &plan,
        &result.facts,
        &result.limitations,
        &result.events,
        &meta,
    );
    let xml = junit::to_xml(&report).unwrap_or_default();
    let _ = std::fs::write(run_dir.join("junit.xml"), &xml);
    if let Some(j) = &opts.junit {
        if let Err(e) = std::fs::write(j, &xml) {
            eprintln!(
                "harness: error writing JUnit output to {}: {e}",
                j.display()
            );
        }
    }
    let run = github::Run {
        plan: &plan,
        facts: &result.facts,
        events: &result.events,
        status,
        replay: &replay,
    };
    if let Err(e) = github::publish(&run, opts.summary_md.as_deref()) {
        eprintln!("harness: {}", crate::run::chain(&e));
    }
    let (mut up, mut steps, mut down) = (0u64, 0u64, 0u64);
    for e in &result.events {
        match e {
            Event::Up { ms, .. } => up += ms,
            Event::Step { ms, .. } => steps += ms,
            Event::Down { ms, .. } => down += ms,
            _ => {}
        }
    }
    let skipped = verdicts.iter().filter(|v| **v == Verdict::Skipped).count();
    eprintln!(
        "harness: {} in {:.1} s (set-up {:.1} s, steps {:.1} s, teardown {:.1} s); exit {}: {}{}",
        junit::suite_name(&plan, &result.facts),
        result.wall.as_secs_f64(),
        up as f64 / 1000.0,
        steps as f64 / 1000.0,
        down as f64 / 1000.0,
        status.code(),
        status.meaning(),
        if skipped > 0 {
            format!(" ({skipped} verdict(s) skipped: see the JUnit)")
        } else {
            String::new()
        }
    );
    if !flaky.is_empty() {
        eprintln!(
            "harness: flaky (failed in an iteration, passed in a later one; still exit {}): {}",
            status.code(),
            flaky.join(", ")
        );
    }
    eprintln!("harness: report {}", run_dir.display());
    eprintln!("harness: replay with: {replay}");
    SuiteRun {
        status,
        error: None,
        finished: Some(Finished {
            events: result.events,
            facts: result.facts,
            run_dir,
            replay,
        }),
    }
}
