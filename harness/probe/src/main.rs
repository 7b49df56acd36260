//! `dp-probe`: see the crate documentation in lib.rs for the subcommands and exit statuses.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // clap prints its own message and exits with status 2 on bad arguments.
    let cli = dp_probe::cli::Cli::parse();
    ExitCode::from(dp_probe::run(cli))
}
