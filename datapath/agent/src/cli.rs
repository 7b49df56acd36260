//! The command line: argument parsing and dispatch. Errors from the modules are typed;
//! here they get the context a user needs.

use std::{io::Write as _, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};

use crate::{
    cleanup,
    failpoint::Failpoint,
    features::{self, Feature, Report, Requested},
    hooks::Hook,
    iptables::{self, ForwardChain, Iptables, JumpPolicy},
    layout::DEFAULT_BPFFS_DIR,
    maps::Sizes,
    masq::{Cidr, MasqOptions, PortRange, TcMode},
    mutant::Mutant,
    netsync::{self, NetSyncOptions},
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
    Run(Box<RunArgs>),
    /// Report what the kernel holds for this instance.
    Status(StatusArgs),
    /// Probe the running kernel's eBPF features and print them with the choices `run`
    /// would make (without starting anything).
    Features(FeaturesArgs),
    /// Remove every object of this instance (links, legacy attachments, maps, pins).
    Cleanup(CleanupArgs),
    /// List the failpoint names accepted by `run --failpoint`, one per line.
    Failpoints,
    /// List the mutants accepted by `run --mutant`, one per line: the name, then what it
    /// breaks.
    Mutants,
    /// Add or delete a pod the way a CNI plugin would (needs `run --routing` in this
    /// network namespace).
    #[command(subcommand)]
    Pod(crate::pods::cli::PodCommand),
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
    /// Masquerade pod traffic leaving the cluster on this interface (tc programs; needs
    /// --node-addr and --pod-cidr).
    #[arg(long, value_name = "IFACE")]
    pub uplink: Option<String>,
    /// The node's address: the source masqueraded packets get.
    #[arg(long, value_name = "ADDR")]
    pub node_addr: Option<std::net::Ipv4Addr>,
    /// A pod CIDR (repeatable, at most 4): sources that are masqueraded.
    #[arg(long = "pod-cidr", value_name = "CIDR", value_parser = parse_cidr)]
    pub pod_cidrs: Vec<Cidr>,
    /// A cluster CIDR (repeatable, at most 4): destinations that are not masqueraded.
    #[arg(long = "cluster-cidr", value_name = "CIDR", value_parser = parse_cidr)]
    pub cluster_cidrs: Vec<Cidr>,
    /// Source ports the masquerade allocates (keep it outside the node's ephemeral range).
    #[arg(long, value_name = "MIN-MAX", default_value = "61000-65535", value_parser = parse_ports)]
    pub masq_ports: PortRange,
    /// Capacity of each masquerade NAT map (LRU).
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    pub max_masq: u32,
    /// The masquerade maps' layout: 1 (the previous release's) or 2 (the next one's, the
    /// default). NAT maps pinned in the other layout are migrated, entry by entry.
    #[arg(long, value_name = "N", default_value_t = datapath_common::MASQ_LAYOUT_VERSION,
          value_parser = clap::value_parser!(u32).range(i64::from(datapath_common::MASQ_LAYOUT_OLDEST)..=i64::from(datapath_common::MASQ_LAYOUT_VERSION)))]
    pub layout: u32,
    /// How the tc programs attach: tcx (kernel 6.6+), clsact, or auto.
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = parse_tc_mode)]
    pub tc_attach: TcMode,
    /// Pod host-side interfaces are named PREFIX* (scanned for the masquerade; `-i PREFIX+`
    /// and `-o PREFIX+` in DP_FORWARD).
    #[arg(long, value_name = "PREFIX", default_value = "lxc")]
    pub pod_iface_prefix: String,
    /// Accelerate TCP connections whose two addresses are in these prefixes (repeatable,
    /// at most 8; IPv4): sock_ops puts both ends into dp_sockhash and sk_msg moves the
    /// payload socket to socket. Pass the node's address/32 and its local pod CIDR.
    #[arg(long = "accelerate", value_name = "CIDR", value_parser = parse_cidr)]
    pub accelerate: Vec<Cidr>,
    /// Capacity of dp_sockhash (two entries per accelerated connection).
    #[arg(long, value_name = "N", default_value_t = Sizes::default().sockhash)]
    pub max_sockhash: u32,
    /// How often stale dp_sockhash keys are garbage-collected, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub sockhash_gc_ms: u64,
    /// Install and keep the iptables chain DP_FORWARD (accept pod traffic), jumped to
    /// first from FORWARD.
    #[arg(long)]
    pub forward_chain: bool,
    /// Treat this kernel feature as missing whatever the probe would say (repeatable; the
    /// names of `datapathd features`): exercises the degraded paths on a kernel that has
    /// everything.
    #[arg(long = "assume-missing", value_name = "FEATURE", value_parser = features::parse_feature)]
    pub assume_missing: Vec<Feature>,
    #[command(flatten)]
    pub pods: crate::pods::cli::PodsRunArgs,
}

#[derive(Debug, Args)]
pub struct FeaturesArgs {
    /// Print JSON (the shape is documented in datapath/README.md).
    #[arg(long)]
    pub json: bool,
    /// The `--tc-attach` whose choice to report.
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = parse_tc_mode)]
    pub tc_attach: TcMode,
    /// As `run --assume-missing`.
    #[arg(long = "assume-missing", value_name = "FEATURE", value_parser = features::parse_feature)]
    pub assume_missing: Vec<Feature>,
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
    /// Inspect DP_FORWARD for interfaces PREFIX+ even if no `run --forward-chain` left its
    /// marker under --bpffs.
    #[arg(long, value_name = "PREFIX")]
    pub forward_chain: Option<String>,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    #[arg(long, value_name = "PATH", default_value = DEFAULT_BPFFS_DIR)]
    pub bpffs: PathBuf,
    /// Also detach programs of ours attached to this cgroup without a pinned link.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Remove DP_FORWARD and its jump even if no `run --forward-chain` left its marker.
    #[arg(long)]
    pub forward_chain: bool,
}

fn parse_mutant(s: &str) -> Result<Mutant, String> {
    s.parse()
        .map_err(|e: crate::mutant::UnknownMutant| e.to_string())
}

fn parse_failpoint(s: &str) -> Result<Failpoint, String> {
    s.parse()
        .map_err(|e: crate::failpoint::UnknownFailpoint| e.to_string())
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse()
}

fn parse_ports(s: &str) -> Result<PortRange, String> {
    s.parse()
}

fn parse_tc_mode(s: &str) -> Result<TcMode, String> {
    s.parse()
}

/// The masquerade and chain options of `run`, checked.
fn net_options(a: &RunArgs) -> Result<Option<NetSyncOptions>> {
    let masq = match &a.uplink {
        Some(uplink) => Some(MasqOptions {
            uplink: uplink.clone(),
            node_addr: a.node_addr.ok_or(crate::masq::MasqError::NoNodeAddr)?,
            pod_cidrs: a.pod_cidrs.clone(),
            cluster_cidrs: a.cluster_cidrs.clone(),
            ports: a.masq_ports,
            pod_prefix: a.pod_iface_prefix.clone(),
            mode: a.tc_attach,
            max_entries: positive("max-masq", a.max_masq)?,
            mutations: a.mutant.map(Mutant::bpf_mutations).unwrap_or(0),
            layout: a.layout,
            recreate_maps: a.mutant == Some(Mutant::UpgradeRecreatesMaps),
        }),
        None => None,
    };
    let policy = match a.mutant {
        Some(Mutant::KubeProxyFirst) => JumpPolicy::AppendOnce,
        Some(Mutant::ForwardJumpAppended) => JumpPolicy::MoveByAppend,
        Some(Mutant::ForwardJumpDuplicated) => JumpPolicy::KeepFirstNoDelete,
        _ => JumpPolicy::KeepFirst,
    };
    let forward_chain = a.forward_chain.then(|| a.pod_iface_prefix.clone());
    if masq.is_none() && forward_chain.is_none() {
        return Ok(None);
    }
    Ok(Some(NetSyncOptions {
        masq,
        forward_chain,
        policy,
    }))
}

fn positive(flag: &str, n: u32) -> Result<u32> {
    anyhow::ensure!(n > 0, "--{flag} must be at least 1");
    Ok(n)
}

/// `status`'s features: the running agent's record, or a fresh probe (with a problem
/// saying so) when there is none.
fn status_features(bpffs: &std::path::Path) -> Result<(Report, Option<String>)> {
    let problem = match features::record::read(bpffs) {
        Ok(Some(r)) => return Ok((r, None)),
        Ok(None) => format!(
            "no features report recorded under {} (no agent ran here since the last cleanup): probed now",
            bpffs.display()
        ),
        Err(e) => format!("{:#}: probed now", anyhow::Error::from(e)),
    };
    let req = Requested {
        tc_attach: TcMode::Auto,
        masquerade: false,
        accelerate: false,
    };
    let probes = features::probe::probe_all(&[]);
    let release = crate::prereq::kernel_release()?;
    Ok((Report::new(release, "probe", &probes, req), Some(problem)))
}

/// Prints `value` as pretty JSON or as `text` renders it.
fn print<T: serde::Serialize>(value: &T, json: bool, text: impl Fn(&T) -> String) -> Result<()> {
    let out = if json {
        let mut t = serde_json::to_string_pretty(value).context("encoding JSON")?;
        t.push('\n');
        t
    } else {
        text(value)
    };
    std::io::stdout()
        .write_all(out.as_bytes())
        .context("writing to stdout")
}

pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(a) => {
            let sizes = Sizes {
                services: positive("max-services", a.max_services)?,
                backends: positive("max-backends", a.max_backends)?,
                slots: positive("max-slots", a.max_slots)?,
                revnat: positive("max-revnat", a.max_revnat)?,
                sockhash: positive("max-sockhash", a.max_sockhash)?,
            };
            anyhow::ensure!(
                a.accelerate.len() <= datapath_common::ACCEL_MAX_CIDRS,
                "at most {} --accelerate prefixes are supported, got {}",
                datapath_common::ACCEL_MAX_CIDRS,
                a.accelerate.len()
            );
            let net = net_options(&a)?;
            let pods = a.pods.options(
                net.as_ref().and_then(|n| n.masq.as_ref()),
                a.mutant,
                a.max_masq,
            )?;
            run::run(RunOptions {
                cgroup: a.cgroup,
                services: a.services,
                bpffs: a.bpffs,
                mutant: a.mutant,
                failpoint: a.failpoint,
                sizes,
                net,
                accelerate: a.accelerate,
                sockhash_gc: std::time::Duration::from_millis(a.sockhash_gc_ms),
                assume_missing: a.assume_missing,
                pods,
            })
        }
        Command::Features(a) => {
            crate::prereq::require_root()?;
            let req = Requested {
                tc_attach: a.tc_attach,
                masquerade: false,
                accelerate: false,
            };
            let probes = features::probe::probe_all(&a.assume_missing);
            let release = crate::prereq::kernel_release()?;
            let report = Report::new(release, "probe", &probes, req);
            print(&report, a.json, Report::render_text)
        }
        Command::Status(a) => {
            let (report, problem) = status_features(&a.bpffs)?;
            let skipped: Vec<Hook> = if report.uses_getpeername4() {
                vec![]
            } else {
                vec![Hook::Getpeername4]
            };
            let mut s = status::collect(&a.bpffs, a.cgroup.as_deref(), &skipped)
                .context("collecting status")?;
            s.problems.extend(problem);
            s.features = Some(report);
            s.masquerade = crate::masq::status(&a.bpffs);
            s.pod_networking = crate::pods::status::collect(&a.bpffs);
            if let Some(prefix) = a
                .forward_chain
                .clone()
                .or_else(|| netsync::managed_prefix(&a.bpffs))
            {
                let chain = ForwardChain {
                    ipt: Iptables::detect().context("inspecting DP_FORWARD")?,
                    prefix,
                    policy: JumpPolicy::KeepFirst,
                };
                s.forward_chain = Some(iptables::status(&chain).context("inspecting DP_FORWARD")?);
            }
            print(&s, a.json, status::render_text)
        }
        Command::Cleanup(a) => {
            // The masquerade's tc attachments and our iptables chain first: the instance
            // directory that records them goes in cleanup::cleanup.
            let (tcx_links, filters) = crate::masq::cleanup(&a.bpffs);
            let (pod_links, pod_devices) = crate::pods::cleanup(&a.bpffs);
            if pod_links + pod_devices > 0 {
                tracing::info!(
                    links = pod_links,
                    devices = pod_devices,
                    "removed pod networking"
                );
            }
            if a.forward_chain || netsync::managed_prefix(&a.bpffs).is_some() {
                let ipt = Iptables::detect().context("removing DP_FORWARD")?;
                let n = iptables::remove(&ipt).context("removing DP_FORWARD")?;
                tracing::info!(rules = n, "removed DP_FORWARD and its jump");
            }
            let mut r = cleanup::cleanup(&a.bpffs, a.cgroup.as_deref()).context("cleaning up")?;
            r.links += tcx_links + pod_links;
            r.detached += filters;
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
        Command::Pod(p) => crate::pods::cli::dispatch(p),
        Command::Mutants => {
            // NAME, then what it breaks: the harness reads the first word.
            for m in Mutant::ALL {
                println!("{:<26} {}", m.name(), m.description());
            }
            Ok(())
        }
    }
}
