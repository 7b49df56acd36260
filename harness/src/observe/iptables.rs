//! iptables as the judge sees it: `iptables-save -c` on a node, parsed into tables,
//! chains and rules with their packet and byte counters. Shares no code with the agent's
//! iptables module (the harness judges the agent, it does not trust it).

use std::time::Duration;

use crate::node::Node;

/// One rule: `[packets:bytes] -A CHAIN ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    pub packets: u64,
    pub bytes: u64,
    /// The words after `-A CHAIN`, quotes removed.
    pub spec: Vec<String>,
    /// The line as iptables-save printed it, without the counters.
    pub line: String,
}

impl Rule {
    /// The chain this rule jumps or goes to (`-j X` / `-g X`).
    pub fn target(&self) -> Option<&str> {
        self.spec
            .windows(2)
            .find(|w| w[0] == "-j" || w[0] == "-g")
            .map(|w| w[1].as_str())
    }

    /// Does the rule match conntrack state INVALID and drop?
    pub fn is_invalid_drop(&self) -> bool {
        self.target() == Some("DROP")
            && self
                .spec
                .windows(2)
                .any(|w| w[0] == "--ctstate" && w[1].split(',').any(|s| s == "INVALID"))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    /// Chain names in the order iptables-save declares them.
    pub chains: Vec<String>,
    /// Rules in file order (which is each chain's order).
    pub rules: Vec<Rule>,
}

impl Table {
    /// The rules of `chain`, in order.
    pub fn chain(&self, chain: &str) -> Vec<&Rule> {
        self.rules.iter().filter(|r| r.chain == chain).collect()
    }

    pub fn has_chain(&self, chain: &str) -> bool {
        self.chains.iter().any(|c| c == chain)
    }

    /// 1-based positions in `chain` of rules whose target is `target`.
    pub fn positions(&self, chain: &str, target: &str) -> Vec<usize> {
        self.chain(chain)
            .iter()
            .enumerate()
            .filter(|(_, r)| r.target() == Some(target))
            .map(|(i, _)| i + 1)
            .collect()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Save {
    pub tables: Vec<Table>,
}

impl Save {
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// The filter table, or an empty one (a namespace without filter rules).
    pub fn filter(&self) -> Table {
        self.table("filter").cloned().unwrap_or_else(|| Table {
            name: "filter".into(),
            ..Table::default()
        })
    }

    /// Packets counted by the INVALID DROP rules of `chain` in the filter table; `None`
    /// when there is no such rule.
    pub fn invalid_drops(&self, chain: &str) -> Option<u64> {
        let t = self.table("filter")?;
        let rules: Vec<&Rule> = t
            .chain(chain)
            .into_iter()
            .filter(|r| r.is_invalid_drop())
            .collect();
        (!rules.is_empty()).then(|| rules.iter().map(|r| r.packets).sum())
    }
}

/// Split a line into words, honouring double quotes (comments).
pub fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut has) = (false, false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                has = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if has {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            c => {
                cur.push(c);
                has = true;
            }
        }
    }
    if has {
        out.push(cur);
    }
    out
}

/// Parses `iptables-save -c` (counters optional).
pub fn parse(text: &str) -> Save {
    let mut save = Save::default();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            save.tables.push(Table {
                name: name.to_string(),
                ..Table::default()
            });
            continue;
        }
        let Some(table) = save.tables.last_mut() else {
            continue;
        };
        if let Some(decl) = line.strip_prefix(':') {
            if let Some(name) = decl.split_whitespace().next() {
                table.chains.push(name.to_string());
            }
            continue;
        }
        let (packets, bytes, rest) = match line.strip_prefix('[') {
            Some(r) => match r.split_once(']') {
                Some((counts, rest)) => {
                    let (p, b) = counts.split_once(':').unwrap_or((counts, "0"));
                    (p.parse().unwrap_or(0), b.parse().unwrap_or(0), rest.trim())
                }
                None => (0, 0, line),
            },
            None => (0, 0, line),
        };
        let w = words(rest);
        if w.len() >= 2 && w[0] == "-A" {
            table.rules.push(Rule {
                chain: w[1].clone(),
                packets,
                bytes,
                spec: w[2..].to_vec(),
                line: rest.to_string(),
            });
        }
    }
    save
}

/// The datapath's accept chain, jumped to from `FORWARD` (datapath/README.md).
pub const DATAPATH_CHAIN: &str = "DP_FORWARD";
/// kube-proxy's chain in `FORWARD`, whose first rule drops conntrack INVALID packets.
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";

/// `iptables-save -c` on the node: the raw text (evidence) and its parse.
pub fn save(node: &dyn Node) -> Result<(String, Save), super::ObserveError> {
    let text = super::run_ok(node, &["iptables-save", "-c"], Duration::from_secs(30))?;
    let parsed = parse(&text);
    Ok((text, parsed))
}

/// The filter table's part of an iptables-save text (for evidence that stays readable).
pub fn filter_section(text: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for l in text.lines() {
        if l.starts_with('*') {
            inside = l == "*filter";
        }
        if inside {
            out.push_str(l);
            out.push('\n');
        }
        if l == "COMMIT" {
            inside = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const SAMPLE: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [10:600]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:DP_FORWARD - [0:0]
:KUBE-FORWARD - [0:0]
[3:180] -A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
[5:300] -A FORWARD -m comment --comment "datapathd: pod forwarding" -j DP_FORWARD
[2:100] -A DP_FORWARD -i lxc+ -m comment --comment "datapathd: traffic from pods" -j ACCEPT
[7:420] -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
[0:0] -A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
COMMIT
*nat
:POSTROUTING ACCEPT [0:0]
:KUBE-POSTROUTING - [0:0]
[0:0] -A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
COMMIT
"#;

    #[test]
    fn parses_tables_chains_rules_and_counters() {
        let s = parse(SAMPLE);
        assert_eq!(s.tables.len(), 2);
        let f = s.filter();
        assert!(f.has_chain("DP_FORWARD"));
        assert_eq!(f.positions("FORWARD", "DP_FORWARD"), vec![2]);
        assert_eq!(f.positions("FORWARD", "KUBE-FORWARD"), vec![1]);
        let first = &f.chain("FORWARD")[0];
        assert_eq!((first.packets, first.bytes), (3, 180));
        assert_eq!(first.spec[3], "kubernetes forwarding rules");
        assert_eq!(s.invalid_drops("KUBE-FORWARD"), Some(7));
        assert_eq!(s.invalid_drops("FORWARD"), None);
        assert!(filter_section(SAMPLE).contains("KUBE-FORWARD"));
        assert!(!filter_section(SAMPLE).contains("KUBE-POSTROUTING"));
    }
}
