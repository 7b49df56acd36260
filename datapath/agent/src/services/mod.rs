//! Desired services: Kubernetes `Service` and `EndpointSlice` objects read from YAML files
//! in a directory, turned into what the maps must hold, with kube-proxy's semantics.
//!
//! - Files: `*.yaml`, `*.yml` and `*.json` directly in the directory (not below it); names
//!   starting with `.` (editor and ConfigMap-mount temporaries) are skipped; symlinks are
//!   followed. Several objects per file, `---` separated. Files are read in name order.
//! - A file or a document that cannot be parsed becomes a [`ServiceFileProblem`] naming the
//!   file and line; the other documents and files are still served.
//! - A `Service` contributes one [`DesiredService`] per entry of `spec.ports` that has an
//!   IPv4 cluster IP (`spec.clusterIPs`, else `spec.clusterIP`). Headless (`None`) and
//!   `ExternalName` services are skipped quietly (nothing to balance); a service without an
//!   IPv4 cluster IP is reported.
//! - Backends come from the `EndpointSlice`s of the same namespace whose label
//!   `kubernetes.io/service-name` names the service, with `addressType: IPv4`: each endpoint
//!   whose `conditions.ready` is not `false` gives its first address (the addresses of one
//!   endpoint are fungible, so kube-proxy uses the first) with the slice port whose name
//!   equals the service port's name (unnamed = `""`). A slice without `ports` (or a slice
//!   port without `port`) falls back to the service port's numeric `targetPort` (default:
//!   `port`), as the endpoints controller would have filled it in. Backends are sorted and
//!   deduplicated. A service whose slices give no ready backend is still desired, with no
//!   backends: connects to it must fail fast rather than go elsewhere.

mod documents;
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

/// Something in a services file that was not served as written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ServiceFileProblem {
    pub file: PathBuf,
    /// 1-based: the line of the error when the parser knows it, otherwise the first line of
    /// the object's document; 0 when it concerns the whole file (it could not be read).
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for ServiceFileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
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
                problems.push(&file, 0, format!("cannot read the file: {e}"));
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
    fn push(&mut self, file: &Path, line: usize, reason: String) {
        self.0.push(ServiceFileProblem {
            file: file.to_owned(),
            line,
            reason,
        });
    }

    fn into_sorted(mut self) -> Vec<ServiceFileProblem> {
        self.0.sort();
        self.0.dedup();
        self.0
    }
}

#[cfg(test)]
mod tests;
