//! `topology:` nodes and the pods on each.

/// The expected form, quoted in errors.
pub const EXPECTED: &str = "topology: {nodes: [{name: node-a, pods: [client-a, web-a]}, ...]} \
(names: 1-12 characters of [a-z0-9-], each pod named once)";

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
}
