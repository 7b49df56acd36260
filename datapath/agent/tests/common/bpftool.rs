//! The independent witness: what `bpftool -j` says the kernel holds. Shares no code with
//! the agent, so a bug in the agent's own view (`datapathd status`) cannot hide itself.

use std::path::Path;
use std::process::{Command, Stdio};

use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Every object of ours has a kernel name starting with this.
pub const PREFIX: &str = "dp_";

#[derive(Debug, Clone, Deserialize)]
pub struct Map {
    pub id: u32,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub map_type: String,
    /// With `-f`: where it is pinned on bpffs.
    #[serde(default)]
    pub pinned: Vec<String>,
}

impl Map {
    pub fn is_ours(&self) -> bool {
        self.name.starts_with(PREFIX)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Prog {
    pub id: u32,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub prog_type: String,
    #[serde(default)]
    pub map_ids: Vec<u32>,
    #[serde(default)]
    pub pinned: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Link {
    pub id: u32,
    #[serde(rename = "type", default)]
    pub link_type: String,
    #[serde(default)]
    pub prog_id: u32,
    #[serde(default)]
    pub cgroup_id: Option<u64>,
    #[serde(default)]
    pub attach_type: Option<String>,
    #[serde(default)]
    pub pinned: Vec<String>,
}

/// One entry of `bpftool cgroup show PATH`.
#[derive(Debug, Clone, Deserialize)]
pub struct Attached {
    pub id: u32,
    pub attach_type: String,
    #[serde(default)]
    pub attach_flags: String,
    #[serde(default)]
    pub name: String,
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

pub fn try_links() -> Result<Vec<Link>, String> {
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
