//! The command-line half of pod networking: `run`'s `--routing/--pods/--ipcache/--gateway`
//! and `pod add|del`.

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};

use super::{cni, files::PodName, PodsError, PodsOptions, Routing};
use crate::{masq::MasqOptions, mutant::Mutant};

#[derive(Debug, Args)]
pub struct PodsRunArgs {
    /// Pod networking: `native` (per-pod /32 routes to the node that holds the pod) or
    /// `vxlan` (dp_vxlan, UDP 8472). Needs --pods, --ipcache, --gateway, --uplink and
    /// --node-addr.
    #[arg(long, value_name = "MODE", value_parser = parse_routing)]
    pub routing: Option<Routing>,
    /// Directory of pod files (`pod add` writes them; polled every 200 ms).
    #[arg(long, value_name = "DIR")]
    pub pods: Option<PathBuf>,
    /// Directory of ipcache files (one per node: its address and its pods).
    #[arg(long, value_name = "DIR")]
    pub ipcache: Option<PathBuf>,
    /// The pods' gateway, held by dp_host as a /32 (each node its own).
    #[arg(long, value_name = "ADDR")]
    pub gateway: Option<Ipv4Addr>,
}

fn parse_routing(s: &str) -> Result<Routing, String> {
    s.parse()
}

impl PodsRunArgs {
    /// The checked options, `None` without `--routing`.
    pub fn options(
        &self,
        masq: Option<&MasqOptions>,
        mutant: Option<Mutant>,
        max_entries: u32,
    ) -> Result<Option<PodsOptions>, PodsError> {
        let Some(routing) = self.routing else {
            if self.pods.is_some() || self.ipcache.is_some() || self.gateway.is_some() {
                return Err(PodsError::Incomplete("--routing"));
            }
            return Ok(None);
        };
        let masq = masq.ok_or(PodsError::NoUplink)?;
        Ok(Some(PodsOptions {
            routing,
            pods_dir: self.pods.clone().ok_or(PodsError::Incomplete("--pods"))?,
            ipcache_dir: self
                .ipcache
                .clone()
                .ok_or(PodsError::Incomplete("--ipcache"))?,
            gateway: self.gateway.ok_or(PodsError::Incomplete("--gateway"))?,
            uplink: masq.uplink.clone(),
            node_addr: masq.node_addr,
            mode: masq.mode,
            max_entries,
            mutations: mutant.map(Mutant::bpf_mutations).unwrap_or(0),
            ipcache_stale_on_move: mutant == Some(Mutant::IpcacheStaleOnMove),
            endpoint_kept_on_delete: mutant == Some(Mutant::EndpointKeptOnDelete),
        }))
    }
}

#[derive(Debug, Subcommand)]
pub enum PodCommand {
    /// Create the pod's veth and network (address, gateway route), hand it to the agent
    /// and print its wiring as one JSON line once the agent confirms.
    Add(PodAddArgs),
    /// Remove the pod's file and wait until the agent removed all of its wiring.
    Del(PodDelArgs),
}

#[derive(Debug, Args)]
pub struct PodAddArgs {
    #[arg(long, value_name = "DIR")]
    pub pods: PathBuf,
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub name: PodName,
    /// The pod's network namespace (a path, e.g. /run/netns/NAME); made by the caller.
    #[arg(long, value_name = "PATH")]
    pub netns: PathBuf,
    /// The pod's IPv4 address (a /32 on its eth0).
    #[arg(long, value_name = "ADDR")]
    pub addr: Ipv4Addr,
    /// The pod's cgroup (recorded only).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    #[arg(long, value_name = "N", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout_s: u64,
}

#[derive(Debug, Args)]
pub struct PodDelArgs {
    #[arg(long, value_name = "DIR")]
    pub pods: PathBuf,
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub name: PodName,
    #[arg(long, value_name = "N", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout_s: u64,
}

fn parse_name(s: &str) -> Result<PodName, String> {
    s.parse()
}

pub fn dispatch(cmd: PodCommand) -> Result<()> {
    crate::prereq::require_root()?;
    match cmd {
        PodCommand::Add(a) => {
            let w = cni::add(&cni::AddArgs {
                pods: a.pods,
                name: a.name,
                netns: a.netns,
                addr: a.addr,
                cgroup: a.cgroup,
                timeout: Duration::from_secs(a.timeout_s),
            })?;
            println!("{}", serde_json::to_string(&w).context("encoding JSON")?);
            Ok(())
        }
        PodCommand::Del(a) => {
            if cni::del(&a.pods, &a.name, Duration::from_secs(a.timeout_s))? {
                println!("datapathd: pod {} deleted", a.name);
            } else {
                println!("datapathd: pod {} unknown: nothing to delete", a.name);
            }
            Ok(())
        }
    }
}
