//! bpftool -j -f {prog,map,link} show and bpftool -j cgroup show PATH.

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::ObserveError;
use crate::node::{Node, Output};

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

const KERNEL_ARGS: [&[&str]; 3] = [
    &["-j", "-f", "prog", "show"],
    &["-j", "-f", "map", "show"],
    &["-j", "-f", "link", "show"],
];

/// Runs `bpftool` with each of `calls` on `node`, in one round trip.
fn bpftool_batch(node: &dyn Node, calls: &[&[&str]]) -> Result<Vec<Output>, ObserveError> {
    let argvs: Vec<Vec<String>> = calls
        .iter()
        .map(|args| {
            std::iter::once("bpftool")
                .chain(args.iter().copied())
                .map(str::to_string)
                .collect()
        })
        .collect();
    Ok(node.run_batch(&argvs, Duration::from_secs(30))?)
}

/// Parses one bpftool call's JSON (empty output is an empty list).
fn parse<T: DeserializeOwned>(
    node: &dyn Node,
    args: &[&str],
    out: &Output,
) -> Result<T, ObserveError> {
    let argv: Vec<&str> = std::iter::once("bpftool")
        .chain(args.iter().copied())
        .collect();
    if !out.success() {
        return Err(ObserveError::failed(node.name(), &argv, out));
    }
    let text = out.stdout_str();
    parse_json(&text).map_err(|e| ObserveError::unreadable(node.name(), argv.join(" "), &text, e))
}

/// bpftool's JSON output as `T` (empty output is an empty list).
pub fn parse_json<T: DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
    serde_json::from_str(if text.trim().is_empty() { "[]" } else { text })
}

fn kernel_of(node: &dyn Node, outs: &[Output]) -> Result<Kernel, ObserveError> {
    Ok(Kernel {
        progs: parse(node, KERNEL_ARGS[0], &outs[0])?,
        maps: parse(node, KERNEL_ARGS[1], &outs[1])?,
        links: parse(node, KERNEL_ARGS[2], &outs[2])?,
    })
}

/// The size of the map pinned at `pin` (its `max_entries`), as the kernel has it.
pub fn max_entries(node: &dyn Node, pin: &str) -> Result<u32, ObserveError> {
    let argv = ["bpftool", "-j", "map", "show", "pinned", pin];
    let text = super::run_ok(node, &argv, std::time::Duration::from_secs(30))?;
    parse_max_entries(&text)
        .map_err(|e| ObserveError::unreadable(node.name(), argv.join(" "), &text, e))
}

/// `max_entries` of `bpftool -j map show pinned PIN`.
pub fn parse_max_entries(text: &str) -> Result<u32, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Shown {
        max_entries: u32,
    }
    serde_json::from_str::<Shown>(text.trim()).map(|s| s.max_entries)
}

/// A pinned map's identity and shape, as `bpftool -j map show pinned PIN` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct MapShape {
    pub id: u32,
    pub bytes_value: u32,
    pub max_entries: u32,
}

/// The shape of the map pinned at `pin`.
pub fn map_shape(node: &dyn Node, pin: &str) -> Result<MapShape, ObserveError> {
    let argv = ["bpftool", "-j", "map", "show", "pinned", pin];
    let text = super::run_ok(node, &argv, std::time::Duration::from_secs(30))?;
    parse_map_shape(&text)
        .map_err(|e| ObserveError::unreadable(node.name(), argv.join(" "), &text, e))
}

/// `id`, `bytes_value` and `max_entries` of `bpftool -j map show pinned PIN`.
pub fn parse_map_shape(text: &str) -> Result<MapShape, serde_json::Error> {
    serde_json::from_str::<MapShape>(text.trim())
}

/// The kernel's programs, maps and links.
pub fn kernel(node: &dyn Node) -> Result<Kernel, ObserveError> {
    kernel_of(node, &bpftool_batch(node, &KERNEL_ARGS)?)
}

/// Programs attached directly to `cgroup` (not inherited), and the kernel's objects, in
/// one round trip.
///
/// bpftool 7 asks BPF_PROG_QUERY for each program's attach flags, a field kernels before
/// 6.0 refuse (EINVAL): there `cgroup show` fails (and `cgroup tree` lists nothing). Its
/// `effective` query does not ask for them; on the root cgroup (a VM node's), what is in
/// effect is exactly what is attached, so that is read instead. Elsewhere the failure
/// stands: an inherited program must not pass for an attached one.
pub fn observe(node: &dyn Node, cgroup: &Path) -> Result<(Vec<Attached>, Kernel), ObserveError> {
    let p = cgroup.display().to_string();
    let parent_procs = cgroup
        .parent()
        .map(|d| d.join("cgroup.procs").display().to_string())
        .unwrap_or_default();
    let show: &[&str] = &["-j", "cgroup", "show", &p];
    let effective: &[&str] = &["-j", "cgroup", "show", &p, "effective"];
    let mut calls = vec![show, effective];
    calls.extend(KERNEL_ARGS);
    let outs = bpftool_batch(node, &calls)?;
    let kernel = kernel_of(node, &outs[2..])?;
    match parse(node, show, &outs[0]) {
        Ok(attached) => Ok((attached, kernel)),
        Err(e) => {
            let is_root =
                !parent_procs.is_empty() && node.read_file(Path::new(&parent_procs)).is_err();
            // Unreadable output is never papered over by the fallback.
            if !is_root || e.is_harness_error() {
                return Err(e);
            }
            let attached = parse(node, effective, &outs[1])?;
            Ok((attached, kernel))
        }
    }
}
