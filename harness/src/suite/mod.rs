//! Suites: YAML files in suites/, one element per file here. Unknown keys are errors
//! (`deny_unknown_fields` everywhere, no `untagged`/`flatten`), and every error names the
//! file, line, column, the key path and the expected form.

pub mod error;
pub mod must_catch;
pub mod scenario;
pub mod service;
pub mod step;
pub mod topology;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub use error::SuiteError;
pub use must_catch::{MustCatch, KNOWN_MUTANTS};
pub use scenario::Scenario;
pub use service::{Protocol, ServiceSpec};
pub use step::{FaultKind, InvariantName, Step};
pub use topology::{NodeSpec, TopologySpec};

use crate::cluster::{PodSpec, Topology};

/// A whole suite file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Suite {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// How many times each scenario runs (`--repeat` overrides).
    #[serde(default = "one")]
    pub repeat: u32,
    pub topology: TopologySpec,
    pub services: Vec<ServiceSpec>,
    pub scenarios: Vec<Scenario>,
    /// The mutants this suite must catch, and by which invariants.
    #[serde(default)]
    pub must_catch: Vec<MustCatch>,
    /// Per-provider notes (what it cannot judge there, and why).
    #[serde(default)]
    pub providers: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

impl Suite {
    /// Reads and checks the suite at `path`.
    pub fn load(path: &Path) -> Result<Suite, SuiteError> {
        let text = std::fs::read_to_string(path).map_err(|source| SuiteError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Suite::parse(path, &text)
    }

    /// Parses and checks `text` (read from `file`, used in messages).
    pub fn parse(file: &Path, text: &str) -> Result<Suite, SuiteError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let suite: Suite = serde_path_to_error::deserialize(de)
            .map_err(|e| SuiteError::from_serde(file, text, e))?;
        suite.validate(file, text)?;
        Ok(suite)
    }

    /// Cross-references serde cannot check: pods named once and known, services' backends
    /// are pods, names unique.
    fn validate(&self, file: &Path, text: &str) -> Result<(), SuiteError> {
        let bad = |path: String, needle: &str, message: String, expected: &'static str| {
            Err(SuiteError::invalid(
                file, text, path, needle, message, expected,
            ))
        };
        if self.topology.nodes.is_empty() {
            return bad(
                "topology.nodes".into(),
                "nodes",
                "a suite needs at least one node".into(),
                topology::EXPECTED,
            );
        }
        let mut nodes = BTreeSet::new();
        let mut pods = BTreeSet::new();
        for (i, n) in self.topology.nodes.iter().enumerate() {
            if !valid_name(&n.name) {
                return bad(
                    format!("topology.nodes[{i}].name"),
                    &n.name,
                    format!("node name `{}` is not 1-12 characters of [a-z0-9-]", n.name),
                    topology::EXPECTED,
                );
            }
            if !nodes.insert(n.name.clone()) {
                return bad(
                    format!("topology.nodes[{i}].name"),
                    &n.name,
                    format!("node `{}` is named twice", n.name),
                    topology::EXPECTED,
                );
            }
            for (j, p) in n.pods.iter().enumerate() {
                if !valid_name(p) {
                    return bad(
                        format!("topology.nodes[{i}].pods[{j}]"),
                        p,
                        format!("pod name `{p}` is not 1-12 characters of [a-z0-9-]"),
                        topology::EXPECTED,
                    );
                }
                if !pods.insert(p.clone()) {
                    return bad(
                        format!("topology.nodes[{i}].pods[{j}]"),
                        p,
                        format!("pod `{p}` is named twice"),
                        topology::EXPECTED,
                    );
                }
            }
        }
        if pods.len() > 200 {
            return bad(
                "topology.nodes".into(),
                "nodes",
                format!("{} pods; at most 200", pods.len()),
                topology::EXPECTED,
            );
        }
        let mut svcs = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for (i, s) in self.services.iter().enumerate() {
            if !svcs.insert(s.name.clone()) {
                return bad(
                    format!("services[{i}].name"),
                    &s.name,
                    format!("service `{}` is named twice", s.name),
                    service::EXPECTED,
                );
            }
            if !addrs.insert((s.vip, s.port, s.protocol)) {
                return bad(
                    format!("services[{i}].port"),
                    &s.name,
                    format!(
                        "{}:{} {:?} is used by two services",
                        s.vip, s.port, s.protocol
                    ),
                    service::EXPECTED,
                );
            }
            if s.backends.is_empty() {
                return bad(
                    format!("services[{i}].backends"),
                    &s.name,
                    format!("service `{}` has no backends", s.name),
                    service::EXPECTED,
                );
            }
            for (j, b) in s.backends.iter().enumerate() {
                if !pods.contains(b) {
                    return bad(
                        format!("services[{i}].backends[{j}]"),
                        b,
                        format!(
                            "backend `{b}` is not a pod of the topology (pods: {})",
                            pods.iter().cloned().collect::<Vec<_>>().join(", ")
                        ),
                        service::EXPECTED,
                    );
                }
            }
        }
        if self.scenarios.is_empty() {
            return bad(
                "scenarios".into(),
                "scenarios",
                "a suite needs at least one scenario".into(),
                scenario::EXPECTED,
            );
        }
        let mut names = BTreeSet::new();
        for (i, sc) in self.scenarios.iter().enumerate() {
            if !names.insert(sc.name.clone()) {
                return bad(
                    format!("scenarios[{i}].name"),
                    &sc.name,
                    format!("scenario `{}` is named twice", sc.name),
                    scenario::EXPECTED,
                );
            }
            if !matches!(sc.steps.first(), Some(Step::Deploy(_))) {
                return bad(
                    format!("scenarios[{i}].steps[0]"),
                    &sc.name,
                    format!("scenario `{}` must start with a `deploy` step", sc.name),
                    step::EXPECTED,
                );
            }
            let accelerated = matches!(sc.steps.first(), Some(Step::Deploy(d)) if d.accelerate);
            for (j, st) in sc.steps.iter().enumerate() {
                if let Step::Fault(f) = st {
                    if let Some(n) = &f.node {
                        if !nodes.contains(n) {
                            return bad(
                                format!("scenarios[{i}].steps[{j}].fault.node"),
                                n,
                                format!("node `{n}` is not in the topology"),
                                step::EXPECTED,
                            );
                        }
                    }
                    if f.name == FaultKind::SockmapLeak {
                        if !accelerated {
                            return bad(
                                format!("scenarios[{i}].steps[{j}].fault.name"),
                                "sockmap-leak",
                                format!(
                                    "fault sockmap-leak in scenario `{}` needs the scenario's deploy step to be `deploy: {{accelerate: true}}`",
                                    sc.name
                                ),
                                step::EXPECTED,
                            );
                        }
                        let on_node = crate::plan::tcp_servers(self)
                            .iter()
                            .any(|(n, _, _)| f.node.as_deref().is_none_or(|want| want == *n));
                        if !on_node {
                            return bad(
                                format!("scenarios[{i}].steps[{j}].fault.name"),
                                "sockmap-leak",
                                format!(
                                    "fault sockmap-leak needs a pod that backs a TCP service on {} (node -> local pod connections go to it)",
                                    f.node
                                        .as_deref()
                                        .map(|n| format!("node `{n}`"))
                                        .unwrap_or_else(|| "some node".into())
                                ),
                                step::EXPECTED,
                            );
                        }
                    }
                }
                if let Step::Check(c) = st {
                    let needs: Vec<&InvariantName> = c
                        .invariants
                        .iter()
                        .filter(|inv| inv.needs_acceleration())
                        .collect();
                    if let (Some(inv), false) = (needs.first(), accelerated) {
                        return bad(
                            format!("scenarios[{i}].steps[{j}].check.invariants"),
                            inv.as_str(),
                            format!(
                                "invariant {inv} judges socket acceleration: scenario `{}` must start with `deploy: {{accelerate: true}}`",
                                sc.name
                            ),
                            step::EXPECTED,
                        );
                    }
                }
            }
        }
        self.validate_must_catch(file, text)
    }

    /// Every must-catch entry names a known mutant once, and invariants that a scenario
    /// of this suite checks (an invariant never judged can never catch anything).
    fn validate_must_catch(&self, file: &Path, text: &str) -> Result<(), SuiteError> {
        let bad = |path: String, needle: &str, message: String| {
            Err(SuiteError::invalid(
                file,
                text,
                path,
                needle,
                message,
                must_catch::EXPECTED,
            ))
        };
        let checked: BTreeSet<InvariantName> = self
            .scenarios
            .iter()
            .flat_map(|sc| &sc.steps)
            .filter_map(|st| match st {
                Step::Check(c) => Some(c.invariants.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect();
        let mut seen = BTreeSet::new();
        for (i, m) in self.must_catch.iter().enumerate() {
            if !KNOWN_MUTANTS.contains(&m.mutant.as_str()) {
                return bad(
                    format!("must-catch[{i}].mutant"),
                    &m.mutant,
                    format!(
                        "unknown mutant `{}` (known: {})",
                        m.mutant,
                        KNOWN_MUTANTS.join(", ")
                    ),
                );
            }
            if !seen.insert(m.mutant.as_str()) {
                return bad(
                    format!("must-catch[{i}].mutant"),
                    &m.mutant,
                    format!("mutant `{}` is listed twice", m.mutant),
                );
            }
            if m.invariants.is_empty() {
                return bad(
                    format!("must-catch[{i}].invariants"),
                    &m.mutant,
                    format!("mutant `{}` names no invariant to catch it", m.mutant),
                );
            }
            for (j, inv) in m.invariants.iter().enumerate() {
                if !checked.contains(inv) {
                    return bad(
                        format!("must-catch[{i}].invariants[{j}]"),
                        inv.as_str(),
                        format!(
                            "invariant {inv} is not checked by any scenario of this suite, so it can never catch `{}` (checked: {})",
                            m.mutant,
                            checked.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// The topology as the provider takes it.
    pub fn topology(&self) -> Topology {
        Topology {
            nodes: self.topology.nodes.iter().map(|n| n.name.clone()).collect(),
            pods: self
                .topology
                .nodes
                .iter()
                .flat_map(|n| {
                    n.pods.iter().map(|p| PodSpec {
                        name: p.clone(),
                        node: n.name.clone(),
                    })
                })
                .collect(),
            kernels: self
                .topology
                .nodes
                .iter()
                .filter_map(|n| Some((n.name.clone(), n.kernel.clone()?)))
                .collect(),
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 12
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The suites directory when `--suites-dir` is not given: suites/ of the checkout.
pub fn default_dir() -> PathBuf {
    crate::checkout::path("suites")
}

/// Resolves `name`: a path to a file, or NAME in `dir` (NAME.yaml).
pub fn resolve(name: &str, dir: &Path) -> PathBuf {
    let p = Path::new(name);
    if name.ends_with(".yaml") || name.contains('/') {
        return p.to_path_buf();
    }
    dir.join(format!("{name}.yaml"))
}

/// Every suite file in `dir`, sorted.
pub fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests;
