//! The command line: argument parsing and dispatch. Errors from the modules are typed;
//! here they get the context a user needs.

use std::{io::Write as _, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};

use crate::{
    cleanup,
    failpoint::Failpoint,
    layout::DEFAULT_BPFFS_DIR,
    maps::Sizes,
    mutant::Mutant,
    run::{self, RunOptions},
    status,
};

/// datapathd: the datapath's node agent (eBPF socket load balancing on a cgroup v2).
#[derive(Debug, Parser)]
#[command(name = "datapathd", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load, attach, program the maps from DIR, and keep them in sync until SIGTERM.
    Run(RunArgs),
    /// Report what the kernel holds for this instance.
    Status(StatusArgs),
    /// Remove every object of this instance (links, legacy attachments, maps, pins).
    Cleanup(CleanupArgs),
    /// List the failpoint names accepted by `run --failpoint`, one per line.
    Failpoints,
    /// List the mutants accepted by `run --mutant`, one per line.
    Mutants,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// cgroup v2 directory to attach the programs to.
    #[arg(long, value_name = "PATH")]
    pub cgroup: PathBuf,
    /// Directory of Kubernetes Service and EndpointSlice YAML files.
    #[arg(long, value_name = "DIR")]
    pub services: PathBuf,
    /// This instance's directory on bpffs (maps/ and links/ go under it).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_BPFFS_DIR)]
    pub bpffs: PathBuf,
    /// Run a deliberately broken variant (see `datapathd mutants`).
    #[arg(long, value_name = "NAME", value_parser = parse_mutant)]
    pub mutant: Option<Mutant>,
    /// Abort the process at this start-up step (see `datapathd failpoints`).
    #[arg(long, value_name = "NAME", value_parser = parse_failpoint)]
    pub failpoint: Option<Failpoint>,
    /// Capacity of dp_services (changing it replaces the pinned maps).
    #[arg(long, value_name = "N", default_value_t = Sizes::default().services)]
    pub max_services: u32,
    /// Capacity of dp_backends.
    #[arg(long, value_name = "N", default_value_t = Sizes::default().backends)]
    pub max_backends: u32,
    /// Capacity of dp_slots (the sum of all services' backend counts).
    #[arg(long, value_name = "N", default_value_t = Sizes::default().slots)]
    pub max_slots: u32,
    /// Capacity of dp_revnat (LRU; one entry per translated socket and backend).
    #[arg(long, value_name = "N", default_value_t = Sizes::default().revnat)]
    pub max_revnat: u32,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON (the shape is documented in datapath/README.md).
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_name = "PATH", default_value = DEFAULT_BPFFS_DIR)]
    pub bpffs: PathBuf,
    /// cgroup to inspect; by default, the one the pinned links are attached to.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    #[arg(long, value_name = "PATH", default_value = DEFAULT_BPFFS_DIR)]
    pub bpffs: PathBuf,
    /// Also detach programs of ours attached to this cgroup without a pinned link.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
}

fn parse_mutant(s: &str) -> Result<Mutant, String> {
    s.parse()
        .map_err(|e: crate::mutant::UnknownMutant| e.to_string())
}

fn parse_failpoint(s: &str) -> Result<Failpoint, String> {
    s.parse()
        .map_err(|e: crate::failpoint::UnknownFailpoint| e.to_string())
}

fn positive(flag: &str, n: u32) -> Result<u32> {
    anyhow::ensure!(n > 0, "--{flag} must be at least 1");
    Ok(n)
}

pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(a) => {
            let sizes = Sizes {
                services: positive("max-services", a.max_services)?,
                backends: positive("max-backends", a.max_backends)?,
                slots: positive("max-slots", a.max_slots)?,
                revnat: positive("max-revnat", a.max_revnat)?,
            };
            run::run(RunOptions {
                cgroup: a.cgroup,
                services: a.services,
                bpffs: a.bpffs,
                mutant: a.mutant,
                failpoint: a.failpoint,
                sizes,
            })
        }
        Command::Status(a) => {
            let s = status::collect(&a.bpffs, a.cgroup.as_deref()).context("collecting status")?;
            let text = if a.json {
                let mut t = serde_json::to_string_pretty(&s).context("encoding status")?;
                t.push('\n');
                t
            } else {
                status::render_text(&s)
            };
            std::io::stdout()
                .write_all(text.as_bytes())
                .context("writing to stdout")
        }
        Command::Cleanup(a) => {
            let r = cleanup::cleanup(&a.bpffs, a.cgroup.as_deref()).context("cleaning up")?;
            println!(
                "datapathd: cleanup removed {} link(s), {} other attachment(s), {} pin(s)",
                r.links, r.detached, r.pins
            );
            Ok(())
        }
        Command::Failpoints => {
            for f in Failpoint::all() {
                println!("{f}");
            }
            Ok(())
        }
        Command::Mutants => {
            for m in Mutant::ALL {
                println!("{m}");
            }
            Ok(())
        }
    }
}
