//! The command line: parses arguments, runs the command, maps the outcome to an exit
//! status (see [`crate::exit`]). anyhow lives here and nowhere else.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::exit::ExitStatus;
use crate::provider::DEFAULT_PROVIDER;

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
        #[arg(long, default_value = DEFAULT_PROVIDER)]
        provider: String,
    },
    /// Run the plan recorded in RUN_DIR/history.json again.
    Replay {
        run_dir: PathBuf,
        #[arg(long)]
        junit: Option<PathBuf>,
        #[arg(long)]
        keep: bool,
        #[arg(long)]
        reports_dir: Option<PathBuf>,
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
    /// Leave the cluster up after the run (for debugging; `harness clean` removes it).
    #[arg(long)]
    pub keep: bool,
    /// Directory holding the suites (default: suites/ of the repository).
    #[arg(long)]
    pub suites_dir: Option<PathBuf>,
    /// Where runs are written (default: reports/ of the repository).
    #[arg(long)]
    pub reports_dir: Option<PathBuf>,
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
        _ => {
            eprintln!("harness: not implemented yet");
            ExitStatus::HarnessError
        }
    }
}
