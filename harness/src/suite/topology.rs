//! `topology:` nodes and the pods on each.

/// The expected form, quoted in errors.
pub const EXPECTED: &str =
    "topology: {nodes: [{name: node-a, pods: [client-a, web-a], kernel: 6.1}, ...]} \
(names: 1-12 characters of [a-z0-9-], each pod named once; kernel optional: a Debian kernel \
series such as 5.10 or 6.12, `newest`, `linux-image-<release>=<version>` or a .deb path; \
routing optional: kernel (default: the provider routes pod CIDRs), native or vxlan (the agent \
wires every pod: datapath/README.md, \"Pod networking\"))";

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TopologySpec {
    pub nodes: Vec<NodeSpec>,
    /// Who wires the pods and routes between nodes.
    #[serde(default, skip_serializing_if = "Routing::is_kernel")]
    pub routing: Routing,
}

/// How pods are wired and how pod traffic crosses nodes.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// The provider wires each pod (veth with an address on the host end) and routes every
    /// node's pod CIDR through the kernel; the agent has no pod datapath.
    #[default]
    Kernel,
    /// The agent wires pods (`datapathd pod add`) and routes remote pods by per-pod /32
    /// kernel routes towards the node that holds them.
    Native,
    /// The agent wires pods and encapsulates traffic to remote pods on `dp_vxlan`.
    Vxlan,
}

impl Routing {
    pub fn is_kernel(&self) -> bool {
        *self == Routing::Kernel
    }
    /// The `datapathd run --routing` value; `None` for kernel routing (no pod datapath).
    pub fn agent_mode(&self) -> Option<&'static str> {
        match self {
            Routing::Kernel => None,
            Routing::Native => Some("native"),
            Routing::Vxlan => Some("vxlan"),
        }
    }
}

impl std::fmt::Display for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Routing::Kernel => "kernel",
            Routing::Native => "native",
            Routing::Vxlan => "vxlan",
        })
    }
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeSpec {
    pub name: String,
    #[serde(default)]
    pub pods: Vec<String>,
    /// The node's own kernel (qemu), e.g. one node of a cluster in the middle of a
    /// rolling upgrade; `--kernel` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<crate::kernel::KernelSpec>,
}
