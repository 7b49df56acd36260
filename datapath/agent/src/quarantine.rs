//! The mutant `quarantine-never-restored`: a backend quarantine without its restore. The
//! correct agent never judges backends itself: which endpoints serve is the control
//! plane's word (EndpointSlice readiness, as kube-proxy reads it). Datapaths that do check
//! backends from the node (Cilium's socket-LB quarantine, Envoy's outlier ejection) must
//! also put a backend back once it answers again; this one tries every TCP backend from the
//! node, takes out any that does not answer and never tries it again. Nothing shows while
//! the network is whole; across a partition every backend on the far side goes out, and
//! after the heal a service whose backends were all there answers nobody on this node.

use std::collections::BTreeSet;
use std::net::{SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::services::{DesiredState, Protocol};

/// How often the backends are tried.
const PERIOD: Duration = Duration::from_secs(1);
/// How long one backend has to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct Quarantine {
    out: BTreeSet<SocketAddrV4>,
    last: Option<Instant>,
}

impl Quarantine {
    pub fn new() -> Quarantine {
        Quarantine {
            out: BTreeSet::new(),
            last: None,
        }
    }

    /// Tries the TCP backends of `state` that are still in, once a period; whether one
    /// went out now (the maps must then be reconciled).
    pub fn sweep(&mut self, state: &DesiredState) -> bool {
        if self.last.is_some_and(|t| t.elapsed() < PERIOD) {
            return false;
        }
        self.last = Some(Instant::now());
        let mut went_out = false;
        for s in state.services.iter().filter(|s| s.proto == Protocol::Tcp) {
            for b in &s.backends {
                // The bug: out once, out for good; nobody ever tries it again.
                if self.out.contains(b) {
                    continue;
                }
                if let Err(e) = TcpStream::connect_timeout(&(*b).into(), CONNECT_TIMEOUT) {
                    warn!(backend = %b, service = %s.name, "backend does not answer ({e}); quarantined");
                    self.out.insert(*b);
                    went_out = true;
                }
            }
        }
        went_out
    }

    /// `state` without the quarantined backends.
    pub fn apply(&self, mut state: DesiredState) -> DesiredState {
        for s in &mut state.services {
            s.backends.retain(|b| !self.out.contains(b));
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::DesiredService;

    fn state(backends: &[SocketAddrV4]) -> DesiredState {
        DesiredState {
            services: vec![DesiredService {
                name: "default/api".into(),
                addr: "10.96.0.20".parse().unwrap(),
                port: 80,
                proto: Protocol::Tcp,
                backends: backends.to_vec(),
            }],
        }
    }

    #[test]
    fn a_backend_that_does_not_answer_goes_out_and_stays_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
        let up = match listener.local_addr().expect("its address") {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("not IPv4: {other}"),
        };
        // A port nobody listens on: bound, then closed.
        let down = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
            match l.local_addr().expect("its address") {
                std::net::SocketAddr::V4(a) => a,
                other => panic!("not IPv4: {other}"),
            }
        };
        let mut q = Quarantine::new();
        assert!(q.sweep(&state(&[up, down])));
        assert_eq!(q.apply(state(&[up, down])).services[0].backends, [up]);
        // Listening again does not bring it back: the mutant's bug.
        let _again = std::net::TcpListener::bind(down).expect("the same port again");
        q.last = None;
        assert!(!q.sweep(&state(&[up, down])));
        assert_eq!(q.apply(state(&[up, down])).services[0].backends, [up]);
    }
}
