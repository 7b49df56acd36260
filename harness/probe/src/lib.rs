//! `dp-probe`: the workload tool that the datapath's tests and the harness use to make real
//! traffic, from inside a network namespace and a cgroup when asked.
//!
//! - `serve`: answers every TCP request line and every UDP datagram with one JSON line
//!   naming the backend (`--id`), so a client can tell which backend it reached.
//! - `connect`: one or more attempts against an address, one JSON object per attempt.
//! - `bench`: sequential connect+request+response+close, latency percentiles as JSON.
//! - `hold`: one long-lived TCP connection, a request/answer every interval, one JSON line
//!   per event (hold.rs), until the connection ends.
//! - `plant-sockhash`, `churn`, `reqresp`: socket-acceleration workloads (sockmap.rs).
//! - `fill-map`, `clear-map`: a foreign writer that fills the datapath's service maps to
//!   their limit and removes exactly what it wrote (pressure.rs).
//!
//! It is deployed to nodes and VMs as well, so it stays small: std, clap, serde_json, libc.
//!
//! Exit statuses: [`EXIT_OK`] every attempt succeeded, [`EXIT_FAILED`] at least one attempt
//! failed, [`EXIT_USAGE`] bad arguments (clap's own status), [`EXIT_SETUP`] the probe could
//! not put itself where it was asked to run (cgroup, network namespace, bind).

pub mod bench;
pub mod cli;
pub mod connect;
pub mod hold;
pub mod place;
pub mod pressure;
pub mod serve;
pub mod sock;
pub mod sockmap;
pub mod wire;

/// Every attempt succeeded (or `serve` ended, which it does not do by itself).
pub const EXIT_OK: u8 = 0;
/// At least one attempt failed; the JSON on stdout says how.
pub const EXIT_FAILED: u8 = 1;
/// Bad arguments; the same status clap uses for its own errors.
pub const EXIT_USAGE: u8 = 2;
/// Could not join the cgroup, enter the network namespace or bind a socket.
pub const EXIT_SETUP: u8 = 3;

/// Runs one parsed command line and returns the process exit status.
pub fn run(cli: cli::Cli) -> u8 {
    match cli.command {
        cli::Command::Serve(args) => serve::run(&args),
        cli::Command::Connect(args) => connect::run(&args),
        cli::Command::Bench(args) => bench::run(&args),
        cli::Command::Hold(args) => hold::run(&args),
        cli::Command::PlantSockhash(args) => sockmap::plant(&args),
        cli::Command::Churn(args) => sockmap::churn(&args),
        cli::Command::Reqresp(args) => sockmap::reqresp(&args),
        cli::Command::FillMap(args) => pressure::fill(&args),
        cli::Command::ClearMap(args) => pressure::clear(&args),
        cli::Command::FillSockhash(args) => pressure::fill_sockhash(&args),
    }
}
