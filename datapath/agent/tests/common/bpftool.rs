//! The independent witness: what `bpftool -j` says the kernel holds. Shares no code with
//! the agent, so a bug in the agent's own view (`datapathd status`) cannot hide itself.
//! The models are the harness's (harness/src/observe/bpf.rs), the same the harness judges
//! with; what it does not model yet (a link's cgroup, `cgroup tree`, map dumps) is here.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::de::DeserializeOwned;
use serde::Deserialize;

pub use harness::observe::bpf::{Attached, Map, Prog, PREFIX};

/// Is this kernel object name one of ours?
pub fn is_ours(name: &str) -> bool {
    name.starts_with(PREFIX)
}

/// A link with the cgroup it is attached to (bpftool's `cgroup_id`, for cgroup links).
/// The harness's `observe::bpf::Link` does not carry the target, which the acceptance
/// checks compare with the sandbox's cgroup.
#[derive(Debug, Clone, Deserialize)]
pub struct CgroupLink {
    pub id: u32,
    #[serde(default)]
    pub prog_id: u32,
    #[serde(default)]
    pub cgroup_id: Option<u64>,
    #[serde(default)]
    pub pinned: Vec<String>,
}

/// One cgroup of `bpftool cgroup tree`.
#[derive(Debug, Clone, Deserialize)]
pub struct CgroupEntry {
    pub cgroup: String,
    #[serde(default)]
    pub programs: Vec<Attached>,
}

fn bpftool<T: DeserializeOwned>(args: &[&str]) -> Result<T, String> {
    let out = Command::new("bpftool")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run bpftool (install it: ci/setup does): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "bpftool {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // An empty listing prints `[]`, but some versions print nothing at all.
    let text = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        b"[]".as_slice()
    } else {
        &out.stdout
    };
    serde_json::from_slice(text).map_err(|e| {
        format!(
            "bpftool {}: unexpected JSON ({e}): {}",
            args.join(" "),
            String::from_utf8_lossy(text)
        )
    })
}

fn must<T>(r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Every map in the kernel, with pinned paths.
pub fn maps() -> Vec<Map> {
    must(try_maps())
}

pub fn try_maps() -> Result<Vec<Map>, String> {
    bpftool(&["-j", "-f", "map", "show"])
}

pub fn try_progs() -> Result<Vec<Prog>, String> {
    bpftool(&["-j", "-f", "prog", "show"])
}

pub fn try_links() -> Result<Vec<CgroupLink>, String> {
    bpftool(&["-j", "-f", "link", "show"])
}

/// Programs attached directly to this cgroup (not inherited).
pub fn try_cgroup_show(cgroup: &Path) -> Result<Vec<Attached>, String> {
    let path = cgroup.to_str().ok_or("a cgroup path that is not UTF-8")?;
    bpftool(&["-j", "cgroup", "show", path])
}

/// Every cgroup that has programs attached, with them.
pub fn try_cgroup_tree() -> Result<Vec<CgroupEntry>, String> {
    bpftool(&["-j", "cgroup", "tree"])
}

/// The bytes of one `bpftool -j map dump` entry's `key` or `value` (`["0x7f", ...]`).
fn dump_bytes(entry: &serde_json::Value, field: &str) -> Result<Vec<u8>, String> {
    entry[field]
        .as_array()
        .ok_or(format!("map dump entry without {field}: {entry}"))?
        .iter()
        .map(|b| {
            b.as_str()
                .and_then(|s| u8::from_str_radix(s.trim_start_matches("0x"), 16).ok())
                .ok_or(format!("map dump: bad byte {b} in {entry}"))
        })
        .collect()
}

/// One map entry: key and value bytes.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Every (key, value) of a pinned map, as bytes.
pub fn try_dump_pinned(path: &Path) -> Result<Vec<Entry>, String> {
    let path = path.to_str().ok_or("a map pin path that is not UTF-8")?;
    let entries: Vec<serde_json::Value> = bpftool(&["-j", "map", "dump", "pinned", path])?;
    entries
        .iter()
        .map(|e| Ok((dump_bytes(e, "key")?, dump_bytes(e, "value")?)))
        .collect()
}

fn u32_ne(b: &[u8]) -> u32 {
    u32::from_ne_bytes(b[..4].try_into().expect("4 bytes"))
}

/// `a.b.c.d:port` of an address and a port stored in network byte order (as the maps hold
/// them: `bpf_sock_addr` order).
fn socket_addr(b: &[u8]) -> String {
    format!(
        "{}.{}.{}.{}:{}",
        b[0],
        b[1],
        b[2],
        b[3],
        u16::from_be_bytes([b[4], b[5]])
    )
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "TCP".to_owned(),
        17 => "UDP".to_owned(),
        other => format!("proto{other}"),
    }
}

/// The services the kernel's pinned maps under `maps_dir` hold, decoded independently of the
/// agent from `dp_services`, `dp_slots` and `dp_backends` (layouts in datapath/README.md):
/// `vip:port/PROTO` -> the backends of its slots, sorted (duplicates kept, so they show).
pub fn services_in_maps(maps_dir: &Path) -> Result<BTreeMap<String, Vec<String>>, String> {
    let services = try_dump_pinned(&maps_dir.join("dp_services"))?;
    let slots: BTreeMap<(u32, u32), u32> = try_dump_pinned(&maps_dir.join("dp_slots"))?
        .into_iter()
        .map(|(k, v)| ((u32_ne(&k[..4]), u32_ne(&k[4..8])), u32_ne(&v)))
        .collect();
    let backends: BTreeMap<u32, String> = try_dump_pinned(&maps_dir.join("dp_backends"))?
        .into_iter()
        .map(|(k, v)| (u32_ne(&k), socket_addr(&v)))
        .collect();
    let mut out = BTreeMap::new();
    for (k, v) in services {
        let (count, id) = (u32_ne(&v[..4]), u32_ne(&v[4..8]));
        let mut list = Vec::new();
        for slot in 0..count {
            let b = slots
                .get(&(id, slot))
                .ok_or(format!("service {} has no slot {slot}", socket_addr(&k)))?;
            list.push(backends.get(b).cloned().ok_or(format!(
                "slot {slot} of {} names missing backend {b}",
                socket_addr(&k)
            ))?);
        }
        list.sort();
        out.insert(format!("{}/{}", socket_addr(&k), proto_name(k[6])), list);
    }
    Ok(out)
}
