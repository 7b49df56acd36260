//! Desired services: Kubernetes `Service` and `EndpointSlice` objects read from files in a
//! directory, turned into what the maps must hold, with kube-proxy's semantics.
//!
//! - Files: `*.yaml`, `*.yml` and `*.json` directly in the directory (not below it); names
//!   starting with `.` (editor and ConfigMap-mount temporaries) are skipped; symlinks are
//!   followed. Files are read in name order.
//! - A file holds what Kubernetes and kubectl print ([`documents`]): one or more documents
//!   (`---` separated; JSON is read as the YAML it is), each a `Service`, an `EndpointSlice`,
//!   or a list of them (`kind: List` as `kubectl get svc,endpointslices -A -o yaml` prints
//!   it, `ServiceList`, `EndpointSliceList`). Server-side fields (`metadata.managedFields`,
//!   `status`, `resourceVersion`, `uid`, ...) are read and ignored; objects of other kinds are
//!   skipped with a [`Severity::Note`].
//! - Anything that cannot be parsed or served becomes a [`ServiceFileProblem`] naming the
//!   file, line, document (and list item) and field; the other objects, documents and files
//!   are still served.
//! - A `Service` contributes one [`DesiredService`] per entry of `spec.ports` that has an
//!   IPv4 cluster IP (`spec.clusterIPs`, else `spec.clusterIP`); its backends are chosen from
//!   its EndpointSlices as kube-proxy chooses them: the rules, with their sources in
//!   kube-proxy's code, are the table in [`endpoints`].

mod documents;
mod endpoints;
mod files;
mod resolve;
mod watch;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use watch::DirWatcher;

/// Everything the maps must hold, sorted by service name (then address, port, protocol), so
/// two loads of the same files compare equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DesiredState {
    pub services: Vec<DesiredService>,
}

/// One service port: a virtual address, port and protocol, and the backends behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredService {
    /// `namespace/name:portname`, as kube-proxy names a service port; `namespace/name` when
    /// the port has no name.
    pub name: String,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Protocol,
    /// Sorted, no duplicates; empty when no endpoint is ready.
    pub backends: Vec<SocketAddrV4>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// The outcome of one load: what to serve, and what could not be (or was ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LoadReport {
    pub state: DesiredState,
    /// In file and line order.
    pub problems: Vec<ServiceFileProblem>,
}

/// Something in a services file that was not served as written, or was skipped on purpose.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ServiceFileProblem {
    pub file: PathBuf,
    /// 1-based: the line of the error when the parser knows it, otherwise the first line of
    /// the object's document; 0 when it concerns the whole file (it could not be read).
    pub line: usize,
    /// 1-based index of the document in the file (`---` separated); 0 for the whole file.
    pub document: usize,
    /// The object's index in the document's `items` when the document is a list.
    pub item: Option<usize>,
    pub severity: Severity,
    pub reason: String,
}

/// How much a [`ServiceFileProblem`] matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Not served as written: the file is wrong (or asks for what this datapath cannot do).
    Error,
    /// Skipped on purpose, nothing is wrong (objects of other kinds in a `kubectl get` dump).
    Note,
}

impl fmt::Display for ServiceFileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line != 0 {
            write!(f, ":{}", self.line)?;
        }
        if self.document != 0 {
            write!(f, ": document {}", self.document)?;
        }
        if let Some(i) = self.item {
            write!(f, ", items[{i}]")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Where an object (or a problem) is: file, line, document and list item.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Place {
    file: PathBuf,
    line: usize,
    document: usize,
    item: Option<usize>,
}

impl Place {
    fn file(file: &Path) -> Place {
        Place {
            file: file.to_owned(),
            line: 0,
            document: 0,
            item: None,
        }
    }

    fn at_line(&self, line: usize) -> Place {
        Place {
            line,
            ..self.clone()
        }
    }
}

/// Reads every services file in `dir` and computes the desired state.
///
/// Fails only when the directory itself cannot be listed; everything wrong inside a file
/// is a problem in the report, and the rest is still served.
pub fn load_dir(dir: &Path) -> std::io::Result<LoadReport> {
    let mut problems = Problems::default();
    let mut objects = documents::Objects::default();
    for (file, _) in files::service_files(dir)? {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            // Removed between listing and reading: it no longer exists, nothing to serve.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                problems.error(&Place::file(&file), format!("cannot read the file: {e}"));
                continue;
            }
        };
        documents::parse_file(&file, &text, &mut objects, &mut problems);
    }
    let state = resolve::desired_state(objects, &mut problems);
    Ok(LoadReport {
        state,
        problems: problems.into_sorted(),
    })
}

/// Collects problems while loading.
#[derive(Debug, Default)]
struct Problems(Vec<ServiceFileProblem>);

impl Problems {
    fn push(&mut self, at: &Place, severity: Severity, reason: String) {
        self.0.push(ServiceFileProblem {
            file: at.file.clone(),
            line: at.line,
            document: at.document,
            item: at.item,
            severity,
            reason,
        });
    }

    fn error(&mut self, at: &Place, reason: String) {
        self.push(at, Severity::Error, reason);
    }

    fn note(&mut self, at: &Place, reason: String) {
        self.push(at, Severity::Note, reason);
    }

    fn into_sorted(mut self) -> Vec<ServiceFileProblem> {
        self.0.sort();
        self.0.dedup();
        self.0
    }
}

#[cfg(test)]
mod tests;
