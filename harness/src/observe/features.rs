//! What a node's kernel can do for BPF, from `bpftool feature probe kernel -j` run on the
//! node (bpftool's own probes: one load per program type, map type and helper; not the
//! agent's). Invariants say what they need ([`KernelNeed`]); one a kernel lacks is skipped
//! with the reason instead of judged.
//!
//! A kernel build's features do not change, so the probe runs once per kernel release in
//! a process and its result is kept on disk (`~/.cache/dp-harness/features/<release>.json`):
//! under TCG the probe's thousands of loads cost seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use crate::node::Node;

/// One thing an invariant needs from the kernel, in bpftool's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelNeed {
    /// A program type (`cgroup_sock_addr`, `sock_ops`, `sk_msg`, `sched_cls`).
    ProgType(&'static str),
    /// A map type (`sockhash`).
    MapType(&'static str),
    /// A helper callable from a program type: (program type, helper).
    Helper(&'static str, &'static str),
}

impl std::fmt::Display for KernelNeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ProgType(p) => write!(f, "BPF program type {p}"),
            Self::MapType(m) => write!(f, "BPF map type {m}"),
            Self::Helper(p, h) => write!(f, "helper {h} in {p} programs"),
        }
    }
}

/// What socket acceleration is made of: sock_ops inserting into a sockhash, sk_msg
/// redirecting (the needs of every incident-C invariant).
pub const SOCKET_ACCELERATION: &[KernelNeed] = &[
    KernelNeed::ProgType("sock_ops"),
    KernelNeed::ProgType("sk_msg"),
    KernelNeed::MapType("sockhash"),
    KernelNeed::Helper("sock_ops", "bpf_sock_hash_update"),
    KernelNeed::Helper("sk_msg", "bpf_msg_redirect_hash"),
];

/// A kernel's BPF features as bpftool reports them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KernelFeatures {
    pub prog_types: BTreeSet<String>,
    pub map_types: BTreeSet<String>,
    /// program type -> helpers available to it.
    pub helpers: BTreeMap<String, BTreeSet<String>>,
}

/// Observing a node's features fails like any observation (the run then judges every
/// invariant, as if nothing were lacking).
pub type FeaturesError = super::ObserveError;

impl KernelFeatures {
    /// Parses `bpftool feature probe kernel -j`: `have_<x>_prog_type`, `have_<x>_map_type`
    /// booleans and `<prog type>_available_helpers` lists.
    pub fn from_bpftool(json: &str) -> Result<Self, serde_json::Error> {
        #[derive(serde::Deserialize)]
        struct Probe {
            #[serde(default)]
            program_types: BTreeMap<String, bool>,
            #[serde(default)]
            map_types: BTreeMap<String, bool>,
            #[serde(default)]
            helpers: BTreeMap<String, Vec<String>>,
        }
        let p: Probe = serde_json::from_str(json)?;
        let have = |m: BTreeMap<String, bool>, suffix: &str| -> BTreeSet<String> {
            m.into_iter()
                .filter(|(_, yes)| *yes)
                .filter_map(|(k, _)| {
                    Some(k.strip_prefix("have_")?.strip_suffix(suffix)?.to_owned())
                })
                .collect()
        };
        Ok(Self {
            prog_types: have(p.program_types, "_prog_type"),
            map_types: have(p.map_types, "_map_type"),
            helpers: p
                .helpers
                .into_iter()
                .filter_map(|(k, v)| {
                    Some((
                        k.strip_suffix("_available_helpers")?.to_owned(),
                        v.into_iter().collect(),
                    ))
                })
                .collect(),
        })
    }

    pub fn has(&self, need: KernelNeed) -> bool {
        match need {
            KernelNeed::ProgType(p) => self.prog_types.contains(p),
            KernelNeed::MapType(m) => self.map_types.contains(m),
            KernelNeed::Helper(p, h) => self.helpers.get(p).is_some_and(|hs| hs.contains(h)),
        }
    }

    /// The needs this kernel lacks.
    pub fn missing(&self, needs: &[KernelNeed]) -> Vec<KernelNeed> {
        needs.iter().copied().filter(|n| !self.has(*n)).collect()
    }
}

fn disk_cache(release: &str) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let safe: String = release
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-.+_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    Some(
        base.join("dp-harness/features")
            .join(format!("{safe}.json")),
    )
}

/// The features of `node`'s kernel (probed once per release, see the module's doc).
pub fn of(node: &dyn Node) -> Result<KernelFeatures, FeaturesError> {
    static KNOWN: Mutex<BTreeMap<String, KernelFeatures>> = Mutex::new(BTreeMap::new());
    let release = node
        .read_file(std::path::Path::new("/proc/sys/kernel/osrelease"))
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())?;
    if let Some(f) = KNOWN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&release)
    {
        return Ok(f.clone());
    }
    let cached = disk_cache(&release)
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str::<KernelFeatures>(&t).ok());
    let features = match cached {
        Some(f) => f,
        None => {
            let argv = ["bpftool", "feature", "probe", "kernel", "-j"];
            let text = super::run_ok(node, &argv, Duration::from_secs(120))?;
            let f = KernelFeatures::from_bpftool(&text)
                .map_err(|e| FeaturesError::unreadable(node.name(), argv.join(" "), &text, e))?;
            if let Some(p) = disk_cache(&release) {
                let _ = p.parent().map(std::fs::create_dir_all);
                if let Ok(text) = serde_json::to_string(&f) {
                    let tmp = p.with_extension("json.tmp");
                    if std::fs::write(&tmp, text).is_ok() {
                        let _ = std::fs::rename(&tmp, &p);
                    }
                }
            }
            f
        }
    };
    KNOWN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(release, features.clone());
    Ok(features)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBE: &str = r#"{"system_config":{},"program_types":{"have_sched_cls_prog_type":true,
        "have_sock_ops_prog_type":true,"have_sk_msg_prog_type":false},
        "map_types":{"have_sockhash_map_type":true,"have_hash_map_type":true},
        "helpers":{"sock_ops_available_helpers":["bpf_sock_hash_update"],
        "sk_msg_available_helpers":[]},"misc":{}}"#;

    #[test]
    fn bpftool_json_reads_as_sets_and_what_lacks_is_named() {
        let f = KernelFeatures::from_bpftool(PROBE).expect("parses");
        assert!(f.has(KernelNeed::ProgType("sock_ops")));
        assert!(!f.has(KernelNeed::ProgType("sk_msg")));
        assert!(!f.has(KernelNeed::ProgType("cgroup_sock_addr")));
        assert!(f.has(KernelNeed::MapType("sockhash")));
        assert!(f.has(KernelNeed::Helper("sock_ops", "bpf_sock_hash_update")));
        assert!(!f.has(KernelNeed::Helper("sk_msg", "bpf_msg_redirect_hash")));
        let missing = f.missing(&[
            KernelNeed::ProgType("sock_ops"),
            KernelNeed::ProgType("sk_msg"),
            KernelNeed::Helper("sk_msg", "bpf_msg_redirect_hash"),
        ]);
        assert_eq!(
            missing.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "BPF program type sk_msg",
                "helper bpf_msg_redirect_hash in sk_msg programs"
            ]
        );
    }

    #[test]
    fn this_hosts_bpftool_output_parses() {
        let Ok(out) = std::process::Command::new("bpftool")
            .args(["feature", "probe", "kernel", "-j"])
            .output()
        else {
            return crate::test_skip::skip("bpftool not installed (ci/setup installs it)");
        };
        if !out.status.success() {
            return crate::test_skip::skip("bpftool feature probe failed (it needs root)");
        }
        let f =
            KernelFeatures::from_bpftool(&String::from_utf8_lossy(&out.stdout)).expect("parses");
        assert!(f.has(KernelNeed::ProgType("sched_cls")), "{f:?}");
        assert!(f.has(KernelNeed::MapType("hash")), "{f:?}");
    }
}
