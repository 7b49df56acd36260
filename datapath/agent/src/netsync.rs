//! The node-network half of `datapathd run` (incident B): the BPF masquerade on the uplink
//! and the `DP_FORWARD` chain. Started before `ready` (first attach and first reconcile
//! happen synchronously, so their errors fail the start), then kept in sync by a thread:
//! the pod interface map every [`POD_SCAN`], the chain order every [`CHAIN_PERIOD`].

use std::{
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use tracing::{error, info, warn};

use crate::{
    iptables::{ForwardChain, Iptables, IptablesError, JumpPolicy},
    masq::{self, Masq, MasqError, MasqOptions},
};

/// How often pod interfaces are rescanned.
pub const POD_SCAN: Duration = Duration::from_secs(1);
/// How often the chain and its position in FORWARD are reconciled (Cilium: 30 min; ours:
/// seconds, so an order kube-proxy broke is restored before connections notice). With
/// iptables-nft a period only reads the table when the ruleset's generation moved.
pub const CHAIN_PERIOD: Duration = Duration::from_secs(2);
/// A full read of the table at least this often, even when the generation stands still.
pub const CHAIN_FULL_PERIOD: Duration = Duration::from_secs(30);

/// A marker directory under the instance's bpffs directory, `forward-chain/<prefix>`:
/// `status` and `cleanup` look at iptables only when it exists (or when asked), so they
/// never touch the iptables of a network namespace this agent did not manage.
pub fn chain_marker(bpffs: &Path) -> PathBuf {
    bpffs.join("forward-chain")
}

/// The inode of this process's network namespace: markers record it, so a `status` or
/// `cleanup` run from another namespace (the host's, say) never acts on iptables or
/// interfaces there.
pub fn netns_ino() -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino())
}

/// The pod interface prefix a `run --forward-chain` in *this* network namespace recorded.
pub fn managed_prefix(bpffs: &Path) -> Option<String> {
    let here = netns_ino();
    std::fs::read_dir(chain_marker(bpffs))
        .ok()?
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let (ino, prefix) = name.split_once('-')?;
            (ino.parse::<u64>().ok()? == here).then(|| prefix.to_string())
        })
}

#[derive(Debug, thiserror::Error)]
pub enum NetSyncError {
    #[error("starting the masquerade")]
    Masq(#[from] MasqError),
    #[error("installing the {} chain", crate::iptables::CHAIN)]
    Chain(#[from] IptablesError),
    #[error("creating {path}")]
    Marker {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the node-network thread")]
    Thread(#[source] std::io::Error),
}

pub struct NetSyncOptions {
    pub masq: Option<MasqOptions>,
    /// Manage DP_FORWARD for interfaces `<prefix>+`.
    pub forward_chain: Option<String>,
    pub policy: JumpPolicy,
}

/// Start what was asked for; `Ok(None)` when nothing was.
pub fn start(
    bpffs: &Path,
    opts: NetSyncOptions,
) -> Result<Option<thread::JoinHandle<()>>, NetSyncError> {
    let masq = opts
        .masq
        .as_ref()
        .map(|m| masq::start(bpffs, m))
        .transpose()?;
    if let Some(m) = &masq {
        info!(mode = ?m.mode, "masquerade running");
    }
    let chain = match &opts.forward_chain {
        Some(prefix) => {
            let marker = chain_marker(bpffs).join(format!("{}-{prefix}", netns_ino()));
            std::fs::create_dir_all(&marker).map_err(|source| NetSyncError::Marker {
                path: marker.display().to_string(),
                source,
            })?;
            let chain = ForwardChain {
                ipt: Iptables::detect()?,
                prefix: prefix.clone(),
                policy: opts.policy,
            };
            let changes = chain.reconcile()?;
            info!(iptables = %chain.ipt.version, policy = ?chain.policy, ?changes, "DP_FORWARD reconciled");
            Some(chain)
        }
        None => None,
    };
    if masq.is_none() && chain.is_none() {
        return Ok(None);
    }
    let handle = thread::Builder::new()
        .name("netsync".into())
        .spawn(move || keep_in_sync(masq, chain))
        .map_err(NetSyncError::Thread)?;
    Ok(Some(handle))
}

/// Whether a period must read the table: always with iptables-legacy (no generation);
/// with iptables-nft when the generation moved since the last clean read, or at least
/// every [`CHAIN_FULL_PERIOD`].
fn chain_read_due(seen: Option<u32>, now: Option<u32>, since_full: Duration) -> bool {
    match (seen, now) {
        (Some(a), Some(b)) => a != b || since_full >= CHAIN_FULL_PERIOD,
        _ => true,
    }
}

fn keep_in_sync(masq: Option<Masq>, chain: Option<ForwardChain>) {
    let mut last_chain = Instant::now();
    let mut last_full = Instant::now();
    let nft = chain
        .as_ref()
        .is_some_and(|c| c.ipt.version.contains("nf_tables"));
    // The generation after the last reconcile that changed nothing.
    let mut clean_at: Option<u32> = None;
    loop {
        thread::sleep(POD_SCAN);
        if let Some(m) = &masq {
            if let Err(e) = m.sync_pods() {
                warn!("pod interface scan failed: {e}");
            }
        }
        if let Some(c) = &chain {
            // The kube-proxy-first mutant never reconciles after start.
            if c.policy.reconciles() && last_chain.elapsed() >= CHAIN_PERIOD {
                last_chain = Instant::now();
                let before = nft.then(crate::nftgen::generation).and_then(Result::ok);
                if !chain_read_due(clean_at, before, last_full.elapsed()) {
                    continue;
                }
                last_full = Instant::now();
                clean_at = None;
                match c.reconcile() {
                    Ok(ch) if ch.any() => info!(changes = ?ch, "DP_FORWARD restored"),
                    Ok(_) => clean_at = before,
                    Err(e) => error!("reconciling DP_FORWARD failed: {e}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_read_when_the_generation_moves_or_is_unknown() {
        let quiet = Duration::from_secs(1);
        assert!(!chain_read_due(Some(5), Some(5), quiet), "nothing changed");
        assert!(chain_read_due(Some(5), Some(6), quiet), "someone wrote");
        assert!(chain_read_due(None, Some(6), quiet), "no clean read yet");
        assert!(chain_read_due(Some(5), None, quiet), "legacy or unreadable");
        assert!(
            chain_read_due(Some(5), Some(5), CHAIN_FULL_PERIOD),
            "a full read is due"
        );
    }
}
