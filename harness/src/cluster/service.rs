//! Services as the datapath reads them: Kubernetes Service + EndpointSlice YAML, written
//! to every node's services directory.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::Pod;
use crate::suite::{Protocol, ServiceSpec};

/// A service as it is now: the suite's definition with the current backend pods.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServiceState {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub target_port: u16,
    pub backends: Vec<String>,
}

impl From<&ServiceSpec> for ServiceState {
    fn from(s: &ServiceSpec) -> Self {
        ServiceState {
            name: s.name.clone(),
            vip: s.vip,
            port: s.port,
            protocol: s.protocol,
            target_port: s.target_port,
            backends: s.backends.clone(),
        }
    }
}

impl ServiceState {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.vip, self.port)
    }
}

/// All services as one multi-document YAML file.
pub fn to_yaml(services: &[ServiceState], pods: &[Pod]) -> String {
    let mut y = String::new();
    for s in services {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {n}\n  namespace: harness\nspec:\n  \
             clusterIP: {vip}\n  ports:\n  - name: p\n    port: {port}\n    protocol: {proto}\n    \
             targetPort: {tp}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
             name: {n}-1\n  namespace: harness\n  labels:\n    kubernetes.io/service-name: {n}\n\
             addressType: IPv4\nports:\n- name: p\n  port: {tp}\n  protocol: {proto}\nendpoints:",
            n = s.name,
            vip = s.vip,
            port = s.port,
            proto = s.protocol.k8s(),
            tp = s.target_port
        );
        let ips: Vec<Ipv4Addr> = s
            .backends
            .iter()
            .filter_map(|b| pods.iter().find(|p| &p.name == b).map(|p| p.ip))
            .collect();
        if ips.is_empty() {
            y.push_str(" []\n");
        } else {
            y.push('\n');
            for ip in ips {
                let _ = writeln!(y, "- addresses: [{ip}]\n  conditions: {{ready: true}}");
            }
        }
    }
    y
}
