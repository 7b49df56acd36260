//! Suites: YAML files in suites/, one element per file here. Unknown keys are errors
//! (`deny_unknown_fields` everywhere, no `untagged`/`flatten`), and every error names the
//! file, line, column, the key path and the expected form.

pub mod catalog;
pub mod error;
pub mod must_catch;
pub mod scenario;
pub mod service;
pub mod step;
pub mod topology;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub use catalog::Catalog;
pub use error::SuiteError;
pub use must_catch::{MustCatch, KNOWN_MUTANTS};
pub use scenario::Scenario;
pub use service::{Protocol, ServiceSpec};
pub use step::{FaultName, FaultStep, InvariantName, Needs, Step};
pub use topology::{NodeSpec, Routing, TopologySpec};

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
    /// Reads and checks the suite at `path`, its faults and invariants against `catalog`.
    pub fn load(path: &Path, catalog: &dyn Catalog) -> Result<Suite, SuiteError> {
        let text = std::fs::read_to_string(path).map_err(|source| SuiteError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Suite::parse(path, &text, catalog)
    }

    /// Parses and checks `text` (read from `file`, used in messages).
    pub fn parse(file: &Path, text: &str, catalog: &dyn Catalog) -> Result<Suite, SuiteError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let suite: Suite = serde_path_to_error::deserialize(de)
            .map_err(|e| SuiteError::from_serde(file, text, e))?;
        suite.validate(file, text, catalog)?;
        Ok(suite)
    }

    /// Cross-references serde cannot check: pods named once and known, services' backends
    /// are pods, names unique, faults and invariants known and what they need present.
    fn validate(&self, file: &Path, text: &str, catalog: &dyn Catalog) -> Result<(), SuiteError> {
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
                let Step::Deploy(d) = st else { continue };
                match d.max_sockhash {
                    Some(_) if !d.accelerate => {
                        return bad(
                            format!("scenarios[{i}].steps[{j}].deploy.max-sockhash"),
                            "max-sockhash",
                            "max-sockhash sizes the acceleration's sockhash: it needs \
                             `accelerate: true`"
                                .into(),
                            step::EXPECTED,
                        )
                    }
                    Some(0) => {
                        return bad(
                            format!("scenarios[{i}].steps[{j}].deploy.max-sockhash"),
                            "max-sockhash",
                            "max-sockhash must be at least 1".into(),
                            step::EXPECTED,
                        )
                    }
                    _ => {}
                }
                if d.agent_layout == Some(0) {
                    return bad(
                        format!("scenarios[{i}].steps[{j}].deploy.agent-layout"),
                        "agent-layout",
                        "agent-layout counts from 1 (datapathd run --layout)".into(),
                        step::EXPECTED,
                    );
                }
            }
            for (j, st) in sc.steps.iter().enumerate() {
                let bounded_before = sc.steps[..j]
                    .iter()
                    .any(|s| matches!(s, Step::Fault(f) if f.recover_within_s.is_some()));
                let at = format!("scenarios[{i}].steps[{j}]");
                let (invariants, field) = match st {
                    Step::Fault(f) => {
                        self.validate_fault(file, text, catalog, sc, f, &at, accelerated)?;
                        (f.during.as_slice(), "fault.during")
                    }
                    Step::Check(c) => (c.invariants.as_slice(), "check.invariants"),
                    _ => continue,
                };
                for (k, inv) in invariants.iter().enumerate() {
                    let path = format!("{at}.{field}[{k}]");
                    if catalog.judged_after_teardown().contains(inv) {
                        return bad(
                            path,
                            inv.as_str(),
                            format!("invariant {inv} is judged after every teardown; a check cannot name it"),
                            step::EXPECTED,
                        );
                    }
                    let Some(needs) = catalog.invariant_needs(inv) else {
                        return bad(
                            path,
                            inv.as_str(),
                            format!(
                                "unknown invariant `{inv}` (known: {})",
                                catalog.invariant_names().join(", ")
                            ),
                            step::EXPECTED,
                        );
                    };
                    if needs.acceleration && !accelerated {
                        return bad(
                            path,
                            inv.as_str(),
                            format!(
                                "invariant {inv} judges socket acceleration: scenario `{}` must start with `deploy: {{accelerate: true}}`",
                                sc.name
                            ),
                            step::EXPECTED,
                        );
                    }
                    if needs.recovery_bound && (field != "check.invariants" || !bounded_before) {
                        return bad(
                            path,
                            inv.as_str(),
                            format!(
                                "invariant {inv} judges the recovery after a fault's heal: name it in a check after a fault step that sets `recover-within-s` (scenario `{}`)",
                                sc.name
                            ),
                            step::EXPECTED,
                        );
                    }
                }
            }
        }
        self.validate_must_catch(file, text, catalog)
    }

    /// One fault step: a known fault, a known node, and what the fault needs present.
    #[allow(clippy::too_many_arguments)]
    fn validate_fault(
        &self,
        file: &Path,
        text: &str,
        catalog: &dyn Catalog,
        sc: &Scenario,
        f: &FaultStep,
        at: &str,
        accelerated: bool,
    ) -> Result<(), SuiteError> {
        let bad = |field: &str, needle: &str, message: String| {
            Err(SuiteError::invalid(
                file,
                text,
                format!("{at}.fault.{field}"),
                needle,
                message,
                step::EXPECTED,
            ))
        };
        let name = f.name.as_str();
        let Some(needs) = catalog.fault_needs(&f.name) else {
            return bad(
                "name",
                name,
                format!(
                    "unknown fault `{name}` (known: {})",
                    catalog.fault_names().join(", ")
                ),
            );
        };
        if let Some(n) = &f.node {
            if !self.topology.nodes.iter().any(|x| &x.name == n) {
                return bad("node", n, format!("node `{n}` is not in the topology"));
            }
        }
        if needs.acceleration && !accelerated {
            return bad(
                "name",
                name,
                format!(
                    "fault {name} in scenario `{}` needs the scenario's deploy step to be `deploy: {{accelerate: true}}`",
                    sc.name
                ),
            );
        }
        if needs.tcp_server
            && !self
                .tcp_servers()
                .iter()
                .any(|(n, _, _)| f.node.as_deref().is_none_or(|want| want == *n))
        {
            return bad(
                "name",
                name,
                format!(
                    "fault {name} needs a pod that backs a TCP service on {}",
                    f.node
                        .as_deref()
                        .map(|n| format!("node `{n}`"))
                        .unwrap_or_else(|| "some node".into())
                ),
            );
        }
        if let Err(why) = catalog.validate_fault(self, sc, f) {
            return bad("name", name, format!("fault {name}: {why}"));
        }
        Ok(())
    }

    /// Every must-catch entry names a known mutant once, and invariants that a scenario
    /// of this suite checks (an invariant never judged can never catch anything).
    fn validate_must_catch(
        &self,
        file: &Path,
        text: &str,
        catalog: &dyn Catalog,
    ) -> Result<(), SuiteError> {
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
        let mut checked: BTreeSet<InvariantName> = self
            .scenarios
            .iter()
            .flat_map(|sc| &sc.steps)
            .filter_map(|st| match st {
                Step::Check(c) => Some(c.invariants.iter().cloned()),
                Step::Fault(f) => Some(f.during.iter().cloned()),
                _ => None,
            })
            .flatten()
            .collect();
        checked.extend(catalog.judged_after_teardown());
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
                let known = catalog.invariant_needs(inv).is_some()
                    || catalog.judged_after_teardown().contains(inv);
                if !known {
                    return bad(
                        format!("must-catch[{i}].invariants[{j}]"),
                        inv.as_str(),
                        format!(
                            "unknown invariant `{inv}` (known: {})",
                            catalog.invariant_names().join(", ")
                        ),
                    );
                }
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

    /// The pods that serve TCP, with the target port of the first TCP service each backs,
    /// per node (suite order).
    pub fn tcp_servers(&self) -> Vec<(&str, &str, u16)> {
        let mut out = Vec::new();
        for n in &self.topology.nodes {
            for p in &n.pods {
                if let Some(s) = self
                    .services
                    .iter()
                    .find(|s| s.protocol == Protocol::Tcp && s.backends.contains(p))
                {
                    out.push((n.name.as_str(), p.as_str(), s.target_port));
                }
            }
        }
        out
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
