//! One run of a suite, as `harness suite` does it and `harness mutate`/`soak` repeat it:
//! load, plan, check the binaries, run, write the history, JUnit and summaries, and say
//! what happened ([`SuiteRun`]). It prints as the command line does (this is still the
//! command line's edge: anyhow for errors that only become messages).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;

use crate::cluster::Binaries;
use crate::errors::chain;
use crate::event::{Event, Events};
use crate::exit::ExitStatus;
use crate::invariant::Verdict;
use crate::kernel::KernelArg;
use crate::provider::DEFAULT_PROVIDER;
use crate::provider::{self, Facts};
use crate::registry::Registry;
use crate::report::progress::Progress;
use crate::report::{artifacts, github, history, junit};
use crate::run::Keep;
use crate::run::Runner;
use crate::signal::Cancel;
use crate::suite::Suite;

/// The options of one suite run (the command line's `suite`, `replay`, `mutate`, `soak`).
#[derive(Debug, Clone, Args)]
pub struct RunOpts {
    /// Where the cluster comes from.
    #[arg(long, default_value = DEFAULT_PROVIDER)]
    pub provider: String,
    /// Seed for every random choice (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run each scenario N times (overrides the suite's repeat).
    #[arg(long)]
    pub repeat: Option<u32>,
    /// Run the datapath's deliberately broken variant NAME (`datapathd mutants`).
    #[arg(long)]
    pub datapath_mutant: Option<String>,
    /// Also write the JUnit XML here.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Leave the cluster up after the run, for debugging: `--keep` stops the agents and
    /// servers, `--keep=running` leaves them running too. `harness clean` removes it all.
    #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "cluster")]
    pub keep: Option<Keep>,
    /// Directory holding the suites (default: suites/ of the repository).
    #[arg(long)]
    pub suites_dir: Option<PathBuf>,
    /// Where runs are written (default: reports/ of the checkout the harness runs from).
    #[arg(long)]
    pub reports_dir: Option<PathBuf>,
    /// The nodes' kernel (qemu): a Debian kernel series (5.10, 6.1, 6.12, ...), `newest`
    /// (sid's), an exact package `linux-image-<release>=<version>`, or a linux-image-*.deb;
    /// `NODE:SPEC` for one node. Overrides the suite's per-node kernels. Repeatable.
    #[arg(long = "kernel", value_name = "[NODE:]SPEC")]
    pub kernels: Vec<KernelArg>,
    /// An extra property of the JUnit testsuite (for dashboards). Repeatable.
    #[arg(long = "junit-property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub junit_properties: Vec<(String, String)>,
    /// Also write the markdown table of verdicts here (under GitHub Actions it goes to
    /// $GITHUB_STEP_SUMMARY as well).
    #[arg(long)]
    pub summary_md: Option<PathBuf>,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

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

/// What `check_datapathd` found wrong with the datapathd to deploy.
#[derive(Debug, thiserror::Error)]
enum DatapathdCheck {
    #[error("cannot run {}", path.display())]
    Run {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{} failpoints` does not list `{failpoint}`, which the plan may choose", path.display())]
    MissingFailpoint {
        path: PathBuf,
        failpoint: &'static str,
    },
    #[error("unknown datapath mutant `{mutant}`; `datapathd mutants` lists: {}", listed.join(", "))]
    UnknownMutant { mutant: String, listed: Vec<String> },
    #[error("{0:#}")]
    Mutants(anyhow::Error),
}

/// Checks that datapathd knows the failpoints and the mutant the plan uses.
fn check_datapathd(b: &Binaries, mutant: Option<&str>) -> Result<(), DatapathdCheck> {
    let out = std::process::Command::new(&b.datapathd)
        .arg("failpoints")
        .output()
        .map_err(|source| DatapathdCheck::Run {
            path: b.datapathd.clone(),
            source,
        })?;
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    for f in crate::fault::agent_restart::FAILPOINTS {
        if !listed.iter().any(|l| l == f) {
            return Err(DatapathdCheck::MissingFailpoint {
                path: b.datapathd.clone(),
                failpoint: f,
            });
        }
    }
    if let Some(m) = mutant {
        let listed = datapathd_mutants(b).map_err(DatapathdCheck::Mutants)?;
        if !listed.iter().any(|l| l == m) {
            return Err(DatapathdCheck::UnknownMutant {
                mutant: m.to_owned(),
                listed,
            });
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
    let s = match Suite::load(file, &Registry) {
        Ok(s) => s,
        Err(e) => return SuiteRun::early(ExitStatus::BadInput, chain(&e)),
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
    let mut plan = match crate::plan::plan(
        &s,
        crate::checkout::canonical(file),
        seed,
        &opts.provider,
        opts.datapath_mutant.as_deref(),
        opts.repeat,
    ) {
        Ok(p) => p,
        Err(e) => return SuiteRun::early(ExitStatus::HarnessError, chain(&e)),
    };
    if let Err(e) = plan.set_kernels(&s, &opts.kernels) {
        return SuiteRun::early(ExitStatus::BadInput, e.to_string());
    }
    plan.junit_properties = opts.junit_properties.clone();
    plan.reports_dir = opts.reports_dir.as_deref().map(crate::checkout::canonical);
    let bins = match binaries() {
        Ok(b) => b,
        Err(e) => return SuiteRun::early(ExitStatus::HarnessError, format!("{e:#}")),
    };
    match check_datapathd(&bins, opts.datapath_mutant.as_deref()) {
        Ok(()) => {}
        Err(e @ DatapathdCheck::UnknownMutant { .. }) => {
            return SuiteRun::early(ExitStatus::BadInput, e.to_string())
        }
        Err(e) => return SuiteRun::early(ExitStatus::HarnessError, chain(&e)),
    }
    if let Err(e) = provider.prepare(&plan.topology(&s)) {
        let status = match e {
            crate::provider::ProviderError::KernelUnavailable { .. } => ExitStatus::BadInput,
            _ => ExitStatus::HarnessError,
        };
        return SuiteRun::early(status, chain(&e));
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
        events: Events::new(vec![
            Box::new(progress.clone()),
            Box::new(artifacts::Collector {
                run_dir: run_dir.clone(),
            }),
        ]),
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
        eprintln!("harness: {}", chain(&e));
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
