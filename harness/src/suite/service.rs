//! `services:` a virtual address and port, and the pods that serve it.

use std::net::Ipv4Addr;

pub const EXPECTED: &str = "services: [{name: web, vip: 10.96.0.10, port: 80, protocol: tcp|udp, \
target-port: 8080, backends: [pod, ...]}]";

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
    /// Kubernetes' spelling.
    pub fn k8s(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServiceSpec {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    pub target_port: u16,
    pub backends: Vec<String>,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}
