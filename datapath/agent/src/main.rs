//! datapathd: the datapath's node agent. See datapath/README.md for the contract.

mod cgroup;
mod cleanup;
mod cli;
mod ebpf_object;
mod failpoint;
mod features;
mod hooks;
mod iptables;
mod layout;
mod loader;
mod maps;
mod masq;
mod masq_migrate;
mod mutant;
mod netlink;
mod netsync;
mod nftgen;
mod pinned_record;
mod pins;
mod pods;
mod prereq;
mod pressure;
mod programming;
mod quarantine;
mod run;
mod services;
mod sockgc;
mod status;
mod sys;
mod tc_attach;

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if let Err(e) = prereq::lift_memlock_limit() {
        tracing::warn!("{e}");
    }
    match cli::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("datapathd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
