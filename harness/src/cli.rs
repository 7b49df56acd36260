//! The command line: parses arguments, runs the command, maps the outcome to an exit
//! status (see [`crate::exit`]). anyhow lives here and nowhere else.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::exit::ExitStatus;
use crate::kernel::KernelArg;
use crate::provider::{self, DEFAULT_PROVIDER};
use crate::registry::{self, Registry};
use crate::report::history;
use crate::run::Keep;
use crate::signal::Cancel;
use crate::suite::{self, Suite};
pub use crate::suite_run::RunOpts;
use crate::suite_run::{clock_seed, run_suite};

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
    /// The mutation score: the correct datapath and every mutant of the suite's
    /// must-catch, on the same seeds; exit 0 only when every mutant is caught and the
    /// correct datapath passed (a survivor or a false alarm: exit 1).
    Mutate {
        name: String,
        #[command(flatten)]
        opts: RunOpts,
        /// Run K seeds (from --seed, else from the clock, upwards).
        #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
        seeds: Option<u32>,
    },
    /// The false-alarm rate: the correct datapath over N seeds (from --seed, else from the
    /// clock, upwards); prints false alarms and harness errors per invariant.
    Soak {
        name: String,
        #[command(flatten)]
        opts: RunOpts,
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        runs: u32,
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
            match installed_cancel() {
                Ok(cancel) => run_suite(&file, seed, &opts, &cancel).status,
                Err(status) => status,
            }
        }
        Command::Mutate { name, opts, seeds } => {
            score(&name, &opts, true, |file, suite, cancel| {
                let first = opts.seed.unwrap_or_else(clock_seed);
                let seeds: Vec<u64> = (0..u64::from(seeds.unwrap_or(1)))
                    .map(|i| first.wrapping_add(i))
                    .collect();
                let r = crate::mutate::mutate(file, suite, &opts, &seeds, cancel);
                let table = r.render();
                print!("{table}");
                if let Some(j) = &opts.junit {
                    write_junit(j, &r.junit(&opts.junit_properties));
                }
                if let Some(md) = &opts.summary_md {
                    let text = format!("### harness mutate {}\n```\n{table}```\n", suite.name);
                    if let Err(e) = std::fs::write(md, text) {
                        eprintln!("harness: error writing {}: {e}", md.display());
                    }
                }
                r.status(cancel)
            })
        }
        Command::Soak { name, opts, runs } => score(&name, &opts, false, |file, suite, cancel| {
            let first = opts.seed.unwrap_or_else(clock_seed);
            let r = crate::mutate::soak(file, suite, &opts, first, runs, cancel);
            print!("{}", r.render());
            r.status(cancel)
        }),
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
            match installed_cancel() {
                Ok(cancel) => run_suite(&h.plan.suite_file, h.plan.seed, &opts, &cancel).status,
                Err(status) => status,
            }
        }
        Command::List { suites_dir } => {
            let dir = suites_dir.unwrap_or_else(suite::default_dir);
            println!("suites ({}):", dir.display());
            match suite::list(&dir) {
                Ok(files) => {
                    for f in files {
                        match Suite::load(&f, &Registry) {
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
            println!("faults:");
            for f in registry::FAULTS {
                let needs = f.needs();
                let mut wants = Vec::new();
                if needs.machines {
                    wants.push("nodes that are machines");
                }
                if needs.acceleration {
                    wants.push("deploy: {accelerate: true}");
                }
                if needs.tcp_server {
                    wants.push("a pod serving TCP on its node");
                }
                let wants = if wants.is_empty() {
                    String::new()
                } else {
                    format!(" (needs {})", wants.join(", "))
                };
                println!("  {:<26} {}{wants}", f.name(), f.about());
            }
            println!("invariants:");
            for i in registry::INVARIANTS {
                println!("  {:<26} {}", i.name().as_str(), i.about());
            }
            for i in registry::AFTER_TEARDOWN {
                println!("  {:<26} judged after every teardown", i.as_str());
            }
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
                        eprintln!("harness: error: {name}: {}", crate::errors::chain(&e));
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

/// Resolves and checks the suite for `mutate`/`soak` (`mutants`: it must list must-catch
/// mutants that datapathd builds), then runs `f` with a cancel flag.
fn score(
    name: &str,
    opts: &RunOpts,
    mutants: bool,
    f: impl FnOnce(&std::path::Path, &Suite, &Cancel) -> ExitStatus,
) -> ExitStatus {
    let dir = opts.suites_dir.clone().unwrap_or_else(suite::default_dir);
    let file = suite::resolve(name, &dir);
    let checked = if opts.datapath_mutant.is_some() {
        Err(crate::mutate::MutateError::MutantGiven)
    } else {
        Suite::load(&file, &Registry).map_err(Into::into)
    };
    let checked = checked.and_then(|s| {
        if mutants {
            crate::mutate::prepare(&file, opts)
        } else {
            Ok(s)
        }
    });
    let s = match checked {
        Ok(s) => s,
        Err(e) => {
            eprintln!("harness: error: {}", crate::errors::chain(&e));
            return e.status();
        }
    };
    match installed_cancel() {
        Ok(cancel) => f(&file, &s, &cancel),
        Err(status) => status,
    }
}

fn write_junit(path: &std::path::Path, report: &quick_junit::Report) {
    let xml = crate::report::junit::to_xml(report).unwrap_or_default();
    if let Err(e) = std::fs::write(path, xml) {
        eprintln!(
            "harness: error writing JUnit output to {}: {e}",
            path.display()
        );
    }
}

/// A cancel flag with the SIGINT/SIGTERM handlers installed, once per process.
fn installed_cancel() -> Result<Cancel, ExitStatus> {
    let cancel = Cancel::new();
    match cancel.install() {
        Ok(()) => Ok(cancel),
        Err(e) => {
            eprintln!("harness: error: cannot install signal handlers: {e}");
            Err(ExitStatus::HarnessError)
        }
    }
}
