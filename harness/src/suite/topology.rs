//! `topology:` nodes and the pods on each.

/// The expected form, quoted in errors.
pub const EXPECTED: &str =
    "topology: {nodes: [{name: node-a, pods: [client-a, web-a], kernel: 6.1}, ...]} \
(names: 1-12 characters of [a-z0-9-], each pod named once; kernel optional: a Debian kernel \
series such as 5.10 or 6.12, `newest`, `linux-image-<release>=<version>` or a .deb path)";

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TopologySpec {
    pub nodes: Vec<NodeSpec>,
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
