//! bpftool -j -f {prog,map,link} show and bpftool -j cgroup show PATH.

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::node::Node;

/// Our objects' names start with this (datapath/README.md).
pub const PREFIX: &str = "dp_";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Map {
    pub id: u32,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub pinned: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Prog {
    pub id: u32,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub map_ids: Vec<u32>,
    #[serde(default)]
    pub pinned: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub id: u32,
    #[serde(default)]
    pub prog_id: u32,
    #[serde(default)]
    pub pinned: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Attached {
    pub id: u32,
    pub attach_type: String,
    #[serde(default)]
    pub attach_flags: String,
    #[serde(default)]
    pub name: String,
}

/// Everything bpftool says, at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Kernel {
    pub progs: Vec<Prog>,
    pub maps: Vec<Map>,
    pub links: Vec<Link>,
}

fn bpftool<T: DeserializeOwned>(node: &dyn Node, args: &[&str]) -> Result<T, String> {
    let mut argv = vec!["bpftool"];
    argv.extend_from_slice(args);
    let out = node
        .run(&argv, Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!(
            "node {}: `{}` failed ({}): {}",
            node.name(),
            argv.join(" "),
            out.exit,
            out.stderr_str().trim()
        ));
    }
    let text = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        b"[]".to_vec()
    } else {
        out.stdout
    };
    serde_json::from_slice(&text).map_err(|e| format!("`{}`: unexpected JSON: {e}", argv.join(" ")))
}

pub fn kernel(node: &dyn Node) -> Result<Kernel, String> {
    Ok(Kernel {
        progs: bpftool(node, &["-j", "-f", "prog", "show"])?,
        maps: bpftool(node, &["-j", "-f", "map", "show"])?,
        links: bpftool(node, &["-j", "-f", "link", "show"])?,
    })
}

/// Programs attached directly to `cgroup` (not inherited).
pub fn cgroup(node: &dyn Node, cgroup: &Path) -> Result<Vec<Attached>, String> {
    let p = cgroup.display().to_string();
    bpftool(node, &["-j", "cgroup", "show", &p])
}
