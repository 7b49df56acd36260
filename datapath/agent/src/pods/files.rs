//! The files between `pod add|del` (the CNI side), the agent and the harness:
//! * `DIR/NAME.json` ([`PodFile`]): written by `pod add` (atomically), removed by `pod del`;
//!   the agent wires every pod that has one.
//! * `DIR/.wired/NAME.json` ([`Wired`]): written by the agent once the pod is wired,
//!   removed once it is unwired; `pod add|del` wait for it, and the agent reads it after a
//!   restart to find pods whose file went while it was down.
//! * `--ipcache DIR/*.json` ([`IpcacheFile`]): one file per node, written by the harness.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid {what}")]
    Parse {
        path: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// A pod name as Kubernetes allows it (DNS subdomain: lower-case alphanumerics, `-`, `.`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PodName(String);

impl PodName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host veth's name: `lxc` + 12 hex digits of the name's FNV-1a hash (stable across
    /// versions and machines, 15 bytes: the kernel's limit).
    pub fn host_veth(&self) -> String {
        format!("lxc{:012x}", fnv1a(self.0.as_bytes()) & 0xffff_ffff_ffff)
    }

    /// A temporary name for the pod end until it is moved into the pod and renamed `eth0`.
    pub fn temp_peer(&self) -> String {
        format!("dpt{:012x}", fnv1a(self.0.as_bytes()) & 0xffff_ffff_ffff)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl TryFrom<String> for PodName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
        if ok {
            Ok(PodName(s))
        } else {
            Err(format!("`{s}` is not a pod name (lower-case letters, digits, `-` and `.`, starting with a letter or digit, at most 253)"))
        }
    }
}

impl From<PodName> for String {
    fn from(n: PodName) -> String {
        n.0
    }
}

impl std::str::FromStr for PodName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PodName::try_from(s.to_string())
    }
}

impl std::fmt::Display for PodName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `DIR/NAME.json`: what `pod add` made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodFile {
    pub name: PodName,
    pub address: Ipv4Addr,
    pub netns: PathBuf,
    pub host_veth: String,
    pub pod_mac: String,
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
}

/// What `pod add` prints and the agent records once the pod is wired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wired {
    pub name: PodName,
    pub address: Ipv4Addr,
    pub netns: PathBuf,
    pub host_veth: String,
    pub ifindex: u32,
    pub host_mac: String,
    pub pod_mac: String,
    pub program_id: u32,
    /// "tcx" or "clsact".
    pub attach: String,
}

pub fn pod_path(dir: &Path, name: &PodName) -> PathBuf {
    dir.join(format!("{name}.json"))
}

pub fn wired_dir(dir: &Path) -> PathBuf {
    dir.join(".wired")
}

pub fn wired_path(dir: &Path, name: &PodName) -> PathBuf {
    wired_dir(dir).join(format!("{name}.json"))
}

/// Writes `value` as JSON to `path` atomically (a temporary file renamed over it), so a
/// reader never sees half a file.
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), FileError> {
    let err = |source| FileError::Write {
        path: path.display().to_string(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("pod");
    // A dot-name without `.json`: never read as a pod file.
    let tmp = dir.join(format!(".{file}.tmp-{}", std::process::id()));
    let json = serde_json::to_vec(value).map_err(|e| err(std::io::Error::other(e)))?;
    std::fs::write(&tmp, json).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

pub fn read_json<T: for<'de> Deserialize<'de>>(
    path: &Path,
    what: &'static str,
) -> Result<Option<T>, FileError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(FileError::Read {
                path: path.display().to_string(),
                source,
            })
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| FileError::Parse {
            path: path.display().to_string(),
            what,
            source,
        })
}

/// `*.json` files directly in `dir` (dot-files skipped), sorted by name.
fn json_files(dir: &Path) -> Result<Vec<PathBuf>, FileError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(FileError::Read {
                path: dir.display().to_string(),
                source,
            })
        }
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension().is_some_and(|x| x == "json")
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The pod files of `dir` by name; unreadable ones are returned as problems.
pub fn read_pods(dir: &Path) -> Result<(BTreeMap<PodName, PodFile>, Vec<String>), FileError> {
    let mut pods = BTreeMap::new();
    let mut problems = Vec::new();
    for path in json_files(dir)? {
        match read_json::<PodFile>(&path, "pod file") {
            Ok(Some(p)) => {
                let expect = pod_path(dir, &p.name);
                if expect != path {
                    problems.push(format!(
                        "{}: its name `{}` does not match the file name",
                        path.display(),
                        p.name
                    ));
                    continue;
                }
                pods.insert(p.name.clone(), p);
            }
            Ok(None) => {}
            Err(e) => problems.push(format!("{:#}", anyhow::Error::from(e))),
        }
    }
    Ok((pods, problems))
}

/// The agent's wired records in `dir/.wired/`.
pub fn read_wired(dir: &Path) -> Result<BTreeMap<PodName, Wired>, FileError> {
    let mut out = BTreeMap::new();
    for path in json_files(&wired_dir(dir))? {
        if let Ok(Some(w)) = read_json::<Wired>(&path, "wired record") {
            out.insert(w.name.clone(), w);
        }
    }
    Ok(out)
}

/// One node's pods (`--ipcache DIR/*.json`).
#[derive(Clone, Debug, Deserialize)]
pub struct IpcacheFile {
    pub node: String,
    pub node_addr: Ipv4Addr,
    #[serde(default)]
    pub pods: Vec<IpcachePod>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct IpcachePod {
    #[allow(dead_code)]
    pub name: String,
    pub address: Ipv4Addr,
}

/// Pod address -> node address for every pod of a node other than `own` in `dir`; a
/// pod address listed by two nodes goes to the later file (by name), with a problem.
pub fn read_ipcache(
    dir: &Path,
    own: Ipv4Addr,
) -> Result<(BTreeMap<Ipv4Addr, Ipv4Addr>, Vec<String>), FileError> {
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for path in json_files(dir)? {
        let f = match read_json::<IpcacheFile>(&path, "ipcache file") {
            Ok(Some(f)) => f,
            Ok(None) => continue,
            Err(e) => {
                problems.push(format!("{:#}", anyhow::Error::from(e)));
                continue;
            }
        };
        if f.node_addr == own {
            continue;
        }
        for p in f.pods {
            if let Some(old) = out.insert(p.address, f.node_addr) {
                if old != f.node_addr {
                    problems.push(format!(
                        "{}: pod address {} is also listed for node {old}; node {} ({}) wins",
                        path.display(),
                        p.address,
                        f.node,
                        f.node_addr
                    ));
                }
            }
        }
    }
    Ok((out, problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_short_and_distinct() {
        let a: PodName = "web-a1".parse().expect("name");
        let b: PodName = "web-a2".parse().expect("name");
        assert_eq!(a.host_veth(), a.host_veth());
        assert_eq!(a.host_veth().len(), 15);
        assert!(a.host_veth().starts_with("lxc"));
        assert_ne!(a.host_veth(), b.host_veth());
        assert_eq!(a.temp_peer().len(), 15);
        assert!("Web".parse::<PodName>().is_err());
        assert!("".parse::<PodName>().is_err());
        assert!("-a".parse::<PodName>().is_err());
    }

    #[test]
    fn ipcache_keeps_other_nodes_and_reports_a_conflict() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("a.json"),
            r#"{"node":"a","node_addr":"172.31.0.1","pods":[{"name":"p1","address":"10.244.0.1"}]}"#,
        )
        .expect("write");
        std::fs::write(
            dir.path().join("b.json"),
            r#"{"node":"b","node_addr":"172.31.0.2","pods":[{"name":"p2","address":"10.244.0.2"},{"name":"p3","address":"10.244.0.3"}]}"#,
        )
        .expect("write");
        std::fs::write(
            dir.path().join("c.json"),
            r#"{"node":"c","node_addr":"172.31.0.3","pods":[{"name":"p3","address":"10.244.0.3"}]}"#,
        )
        .expect("write");
        std::fs::write(dir.path().join("bad.json"), "{").expect("write");
        let (m, problems) =
            read_ipcache(dir.path(), "172.31.0.1".parse().expect("addr")).expect("read");
        let got: Vec<(String, String)> = m
            .iter()
            .map(|(a, n)| (a.to_string(), n.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("10.244.0.2".into(), "172.31.0.2".into()),
                ("10.244.0.3".into(), "172.31.0.3".into())
            ]
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("bad.json")));
    }
}
