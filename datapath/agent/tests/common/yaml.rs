//! Services as Kubernetes YAML, the datapath's input.

use std::fmt::Write as _;

/// One single-port service and its endpoints.
#[derive(Debug, Clone)]
pub struct Svc {
    pub name: String,
    pub vip: String,
    pub port: u16,
    /// "TCP" or "UDP"
    pub proto: &'static str,
    pub target_port: u16,
    /// (address, ready)
    pub endpoints: Vec<(String, bool)>,
}

impl Svc {
    pub fn new(name: &str, vip: &str, port: u16, proto: &'static str, target_port: u16) -> Svc {
        assert!(
            vip.starts_with("127."),
            "service addresses stay in 127.0.0.0/8, not {vip}"
        );
        Svc {
            name: name.into(),
            vip: vip.into(),
            port,
            proto,
            target_port,
            endpoints: Vec::new(),
        }
    }

    pub fn with_backends(mut self, ips: &[&str]) -> Svc {
        self.endpoints = ips.iter().map(|ip| ((*ip).to_owned(), true)).collect();
        self
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.vip, self.port)
    }

    pub fn proto_arg(&self) -> &'static str {
        if self.proto == "UDP" {
            "udp"
        } else {
            "tcp"
        }
    }

    /// A Service and one EndpointSlice (several documents in one file).
    pub fn to_yaml(&self) -> String {
        let mut y = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {n}\n  namespace: test\nspec:\n  \
             clusterIP: {vip}\n  ports:\n  - name: p\n    port: {port}\n    protocol: {proto}\n    \
             targetPort: {tp}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
             name: {n}-1\n  namespace: test\n  labels:\n    kubernetes.io/service-name: {n}\n\
             addressType: IPv4\nports:\n- name: p\n  port: {tp}\n  protocol: {proto}\nendpoints:",
            n = self.name,
            vip = self.vip,
            port = self.port,
            proto = self.proto,
            tp = self.target_port
        );
        if self.endpoints.is_empty() {
            y.push_str(" []\n");
        } else {
            y.push('\n');
            for (ip, ready) in &self.endpoints {
                let _ = writeln!(y, "- addresses: [{ip}]\n  conditions: {{ready: {ready}}}");
            }
        }
        y
    }

    /// The backends that must answer: the ready endpoints on the target port.
    pub fn live_backends(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .filter(|(_, r)| *r)
            .map(|(ip, _)| format!("{ip}:{}", self.target_port))
            .collect()
    }
}

/// Several services in one file.
pub fn file(svcs: &[Svc]) -> String {
    svcs.iter()
        .map(Svc::to_yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}
