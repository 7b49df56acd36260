//! The command line: parses arguments, runs the command, maps the outcome to an exit
//! status (see [`crate::exit`]). anyhow lives here and nowhere else.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::cluster::Binaries;
use crate::exit::ExitStatus;
use crate::invariant::Verdict;
use crate::kernel::KernelArg;
use crate::provider::{self, DEFAULT_PROVIDER};
use crate::report::progress::Progress;
use crate::report::{github, history, junit};
use crate::run::{Event, Keep, Runner};
use crate::signal::Cancel;
use crate::suite::{self, FaultKind, InvariantName, Suite};

#[derive(Debug, Parser)]
#[command(
    name = "harness",
    version,
    about = "Chaos and conformance harness for the eBPF datapath",
    after_help = exit_help()
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

fn exit_help() -> String {
    let mut s = String::from("Exit status:\n");
    for e in ExitStatus::ALL {
        s.push_str(&format!("  {:>3}  {}\n", e.code(), e.meaning()));
    }
    s
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a suite (a name in suites/ or a path to a YAML file).
    Suite {
        name: String,
        #[command(flatten)]
        opts: RunOpts,
    },
    /// List the suites, providers, faults and invariants.
    List {
        #[arg(long)]
        suites_dir: Option<PathBuf>,
    },
    /// Remove whatever earlier runs left on this host (found by their markers).
    Clean {
        /// Only this provider's leftovers (default: every provider's).
        #[arg(long)]
        provider: Option<String>,
        /// Instead: prune the cached node images (least recently used first; images in
        /// use by a run are kept).
        #[arg(long)]
        images: bool,
        /// With --images: keep this many (default 4).
        #[arg(long, requires = "images", conflicts_with = "keep_bytes")]
        keep: Option<u32>,
        /// With --images: keep at most this many bytes (suffixes K, M, G: 20G).
        #[arg(long, requires = "images")]
        keep_bytes: Option<String>,
    },
    /// Print the host's state as JSON: network namespaces, links, cgroup and bpffs
    /// directories, mounts, processes of ours, the host's iptables rules, run state
    /// directories (what host-clean-after-down and ci/interrupts compare).
    HostSnapshot,
    /// Run the plan recorded in RUN_DIR/history.json again (on the exact kernel packages
    /// it ran on, unless --kernel says otherwise).
    Replay {
        run_dir: PathBuf,
        #[arg(long)]
        junit: Option<PathBuf>,
        /// As for `suite`.
        #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "cluster")]
        keep: Option<Keep>,
        #[arg(long)]
        reports_dir: Option<PathBuf>,
        /// The nodes' kernel instead of the recorded ones (as for `suite`).
        #[arg(long = "kernel", value_name = "[NODE:]SPEC")]
        kernels: Vec<KernelArg>,
    },
}

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

/// Parses the arguments, runs, returns the process exit status.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitStatus::BadInput.code()
            } else {
                0
            };
        }
    };
    run(cli).code()
}

fn run(cli: Cli) -> ExitStatus {
    match cli.command {
        Command::Suite { name, opts } => {
            let dir = opts.suites_dir.clone().unwrap_or_else(suite::default_dir);
            let file = suite::resolve(&name, &dir);
            let seed = opts.seed.unwrap_or_else(clock_seed);
            run_suite(&file, seed, &opts)
        }
        Command::Replay {
            run_dir,
            junit,
            keep,
            reports_dir,
            kernels,
        } => {
            let h = match history::read(&run_dir.join("history.json")) {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("harness: error: {e}");
                    return ExitStatus::BadInput;
                }
            };
            // The exact packages the nodes ran, else the kernels asked for.
            let kernels = if kernels.is_empty() {
                let exact = h.exact_kernels();
                if exact.is_empty() {
                    h.plan
                        .kernel_args
                        .iter()
                        .filter_map(|k| k.parse().ok())
                        .collect()
                } else {
                    exact
                        .into_iter()
                        .map(|(node, spec)| KernelArg {
                            node: Some(node),
                            spec,
                        })
                        .collect()
                }
            } else {
                kernels
            };
            let opts = RunOpts {
                provider: h.plan.provider.clone(),
                seed: Some(h.plan.seed),
                repeat: h.plan.repeat,
                datapath_mutant: h.plan.mutant.clone(),
                junit,
                keep,
                suites_dir: None,
                reports_dir: reports_dir.or(h.plan.reports_dir.clone()),
                kernels,
                junit_properties: h.plan.junit_properties.clone(),
                summary_md: None,
            };
            run_suite(&h.plan.suite_file, h.plan.seed, &opts)
        }
        Command::List { suites_dir } => {
            let dir = suites_dir.unwrap_or_else(suite::default_dir);
            println!("suites ({}):", dir.display());
            match suite::list(&dir) {
                Ok(files) => {
                    for f in files {
                        match Suite::load(&f) {
                            Ok(s) => println!("  {:<12} {}", s.name, s.description),
                            Err(e) => println!("  {} (invalid: {e})", f.display()),
                        }
                    }
                }
                Err(e) => println!("  cannot read {}: {e}", dir.display()),
            }
            println!(
                "providers: {} (default {DEFAULT_PROVIDER})",
                crate::provider::PROVIDERS.join(", ")
            );
            println!("faults: {}", FaultKind::ALL.map(|f| f.as_str()).join(", "));
            println!(
                "invariants: {}",
                InvariantName::ALL.map(|i| i.as_str()).join(", ")
            );
            ExitStatus::Passed
        }
        Command::HostSnapshot => {
            let snap = crate::observe::host::snapshot();
            match serde_json::to_string_pretty(&snap) {
                Ok(j) => {
                    println!("{j}");
                    ExitStatus::Passed
                }
                Err(e) => {
                    eprintln!("harness: error: {e}");
                    ExitStatus::HarnessError
                }
            }
        }
        Command::Clean {
            images: true,
            keep,
            keep_bytes,
            ..
        } => prune_images(keep, keep_bytes.as_deref()),
        Command::Clean { provider, .. } => {
            let names: Vec<&str> = match &provider {
                Some(p) => vec![p.as_str()],
                None => crate::provider::PROVIDERS.to_vec(),
            };
            let mut status = ExitStatus::Passed;
            for name in names {
                let Some(p) = provider::by_name(name) else {
                    eprintln!(
                        "harness: error: unknown provider `{name}` (known: {})",
                        crate::provider::PROVIDERS.join(", ")
                    );
                    return ExitStatus::BadInput;
                };
                match p.clean_leftovers() {
                    Ok(c) => {
                        for f in &c.found {
                            println!("{name}: found {f}");
                        }
                        for r in &c.removed {
                            println!("{name}: removed {r}");
                        }
                        for r in &c.problems {
                            eprintln!("harness: {name}: problem: {r}");
                        }
                        println!(
                            "harness clean: {name}: removed {} object(s)",
                            c.removed.len()
                        );
                        if !c.problems.is_empty() {
                            status = ExitStatus::HarnessError;
                        }
                    }
                    Err(e) => {
                        eprintln!("harness: error: {name}: {}", crate::run::chain(&e));
                        status = ExitStatus::HarnessError;
                    }
                }
            }
            status
        }
    }
}

/// `harness clean --images`: the image builder's own prune, which knows the cache.
fn prune_images(keep: Option<u32>, keep_bytes: Option<&str>) -> ExitStatus {
    let script = crate::provider::qemu::image::builder_script();
    let mut cmd = std::process::Command::new(&script);
    cmd.arg("--prune");
    if let Some(n) = keep {
        cmd.arg("--keep").arg(n.to_string());
    }
    if let Some(b) = keep_bytes {
        cmd.arg("--keep-bytes").arg(b);
    }
    match cmd.status() {
        Ok(s) if s.success() => ExitStatus::Passed,
        Ok(s) if s.code() == Some(2) => ExitStatus::BadInput,
        Ok(s) => {
            eprintln!("harness: error: {} --prune failed ({s})", script.display());
            ExitStatus::HarnessError
        }
        Err(e) => {
            eprintln!("harness: error: running {}: {e}", script.display());
            ExitStatus::HarnessError
        }
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        % 1_000_000_007
}

/// The binaries to deploy: $DP_HARNESS_BIN_DIR, else beside this executable (cargo puts
/// datapathd and dp-probe in the same target directory).
fn binaries() -> anyhow::Result<Binaries> {
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
fn build_siblings(dir: &std::path::Path) -> anyhow::Result<()> {
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
        let out = std::process::Command::new(&b.datapathd)
            .arg("mutants")
            .output()?;
        if !String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.split_whitespace().next() == Some(m))
        {
            anyhow::bail!(
                "unknown datapath mutant `{m}`; `datapathd mutants` lists: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
    }
    Ok(())
}

/// `--reports-dir`, else reports/ of the checkout the harness runs from; canonical.
fn reports_root(opts: &RunOpts) -> PathBuf {
    let dir = opts
        .reports_dir
        .clone()
        .unwrap_or_else(|| crate::checkout::path("reports"));
    crate::checkout::canonical(&dir)
}

fn run_suite(file: &std::path::Path, seed: u64, opts: &RunOpts) -> ExitStatus {
    let s = match Suite::load(file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("harness: error: {}", crate::run::chain(&e));
            return ExitStatus::BadInput;
        }
    };
    let Some(mut provider) = provider::by_name(&opts.provider) else {
        eprintln!(
            "harness: error: unknown provider `{}` (known: {})",
            opts.provider,
            crate::provider::PROVIDERS.join(", ")
        );
        return ExitStatus::BadInput;
    };
    if !opts.kernels.is_empty() && provider.facts().shared_kernel {
        eprintln!(
            "harness: error: --kernel: provider {} runs every node on this host's kernel; use --provider qemu",
            opts.provider
        );
        return ExitStatus::BadInput;
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
        eprintln!("harness: error: {e}");
        return ExitStatus::BadInput;
    }
    plan.junit_properties = opts.junit_properties.clone();
    plan.reports_dir = opts.reports_dir.as_deref().map(crate::checkout::canonical);
    let bins = match binaries()
        .and_then(|b| check_datapathd(&b, opts.datapath_mutant.as_deref()).map(|_| b))
    {
        Ok(b) => b,
        Err(e) => {
            eprintln!("harness: error: {e:#}");
            return if e.to_string().contains("unknown datapath mutant") {
                ExitStatus::BadInput
            } else {
                ExitStatus::HarnessError
            };
        }
    };
    if let Err(e) = provider.prepare(&plan.topology(&s)) {
        eprintln!("harness: error: {}", crate::run::chain(&e));
        return match e {
            crate::provider::ProviderError::KernelUnavailable { .. } => ExitStatus::BadInput,
            _ => ExitStatus::HarnessError,
        };
    }
    let run_name = format!("{}-{}-{}", s.name, seed, crate::provider::RunId::fresh());
    let run_dir = reports_root(opts).join(&run_name);
    if let Err(e) = std::fs::create_dir_all(&run_dir) {
        eprintln!("harness: error: cannot create {}: {e}", run_dir.display());
        return ExitStatus::HarnessError;
    }
    let cancel = Cancel::new();
    if let Err(e) = cancel.install() {
        eprintln!("harness: error: cannot install signal handlers: {e}");
        return ExitStatus::HarnessError;
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
        "harness: {} [{} {}] in {:.1} s (set-up {:.1} s, steps {:.1} s, teardown {:.1} s); exit {}: {}{}",
        s.name,
        result.facts.provider,
        result.facts.kernel,
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
    status
}
