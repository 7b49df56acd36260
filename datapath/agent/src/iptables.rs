//! The agent's own filter chain `DP_FORWARD` (incident B in shared/DESIGN.md).
//!
//! `DP_FORWARD` accepts pod traffic (`-i <prefix>+`, `-o <prefix>+`) and is jumped to from
//! `FORWARD`. Replies to masqueraded pod traffic are redirected by BPF straight to the
//! pod, so conntrack never sees them and the pod's next packet is INVALID: if kube-proxy's
//! `KUBE-FORWARD` (first rule `--ctstate INVALID -j DROP`) runs before our accept, the
//! connection carries nothing. So the jump must be the first rule of `FORWARD`, each of our
//! rules must exist exactly once, and the order is reconciled on start and every few
//! seconds. A reorder inserts the new jump at the top *before* deleting the old one, so no
//! packet ever meets a FORWARD without our accept.
//!
//! Rules in `FORWARD` are never deleted by number: between our read and a `-D FORWARD N`
//! another writer (kube-proxy inserting at 1) shifts the numbers and we would delete its
//! rule (seen on the qemu tier: KUBE-FORWARD vanished). Every jump we insert carries a
//! generation in its comment, different from every jump already there, so the old ones
//! can be deleted by their full spec without ever matching the new one.
//!
//! Everything goes through the node's real `iptables` command (iptables-nft or legacy,
//! whichever it is), with `-w` so concurrent writers (kube-proxy) wait for the lock.
//! Only our own chain and our own jump are ever changed.

use std::{
    io,
    process::{Command, Output},
};

use serde::Serialize;

/// Our chain in the filter table.
pub const CHAIN: &str = "DP_FORWARD";
/// Comment on our jump in `FORWARD`, followed by ` #<generation>`.
const JUMP_COMMENT: &str = "datapathd: pod forwarding";

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("no `iptables` command on PATH (install iptables: nft or legacy)")]
    Missing,
    #[error("running `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed with {status}: {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// The node's iptables command.
#[derive(Clone, Debug)]
pub struct Iptables {
    bin: String,
    /// `nf_tables`, `legacy`, or what `--version` said.
    pub flavor: String,
    pub version: String,
}

impl Iptables {
    /// Find `iptables` and ask which backend it is.
    pub fn detect() -> Result<Self, IptablesError> {
        Self::detect_bin("iptables")
    }

    pub fn detect_bin(bin: &str) -> Result<Self, IptablesError> {
        let out = match Command::new(bin).arg("--version").output() {
            Ok(o) => o,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(IptablesError::Missing),
            Err(source) => {
                return Err(IptablesError::Spawn {
                    command: format!("{bin} --version"),
                    source,
                })
            }
        };
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // "iptables v1.8.9 (nf_tables)" or "iptables v1.8.9 (legacy)"
        let flavor = text
            .rsplit_once('(')
            .and_then(|(_, f)| f.strip_suffix(')'))
            .unwrap_or("legacy")
            .to_string();
        Ok(Self {
            bin: bin.to_string(),
            flavor,
            version: text,
        })
    }

    fn command_line(&self, args: &[&str]) -> String {
        let mut s = self.bin.clone();
        for a in args {
            s.push(' ');
            if a.contains(' ') {
                s.push_str(&format!("\"{a}\""));
            } else {
                s.push_str(a);
            }
        }
        s
    }

    fn output(&self, args: &[&str]) -> Result<Output, IptablesError> {
        let mut full = vec!["-w", "5"];
        full.extend_from_slice(args);
        Command::new(&self.bin)
            .args(&full)
            .output()
            .map_err(|source| IptablesError::Spawn {
                command: self.command_line(args),
                source,
            })
    }

    /// Run and require success.
    pub fn run(&self, args: &[&str]) -> Result<String, IptablesError> {
        let out = self.output(args)?;
        if !out.status.success() {
            return Err(IptablesError::Failed {
                command: self.command_line(args),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The whole filter table as `-S` prints it, one exec: iptables-nft answers
    /// `-S MISSING` with a misleading "incompatible" error, and each exec is costly on a
    /// slow node (the periodic reconcile reads the table once).
    pub fn filter_table(&self) -> Result<FilterTable, IptablesError> {
        let out = self.run(&["-t", "filter", "-S"])?;
        Ok(FilterTable(out.lines().map(split_words).collect()))
    }

    /// The `-A` rules of a chain (each without the leading `-A CHAIN`), in order; `None`
    /// when the chain does not exist.
    pub fn rules(&self, chain: &str) -> Result<Option<Vec<Vec<String>>>, IptablesError> {
        Ok(self.filter_table()?.rules(chain))
    }
}

/// The filter table's `-S` lines as argument lists (split like a shell would).
pub struct FilterTable(Vec<Vec<String>>);

impl FilterTable {
    /// The `-A` rules of `chain` (each without the leading `-A CHAIN`), in order; `None`
    /// when the chain does not exist.
    pub fn rules(&self, chain: &str) -> Option<Vec<Vec<String>>> {
        let of_chain = || {
            self.0
                .iter()
                .filter(move |w| w.get(1).map(String::as_str) == Some(chain))
        };
        let exists = of_chain().any(|w| matches!(w.first().map(String::as_str), Some("-N" | "-P")));
        exists.then(|| {
            of_chain()
                .filter(|l| l.first().map(String::as_str) == Some("-A"))
                .map(|l| l.iter().skip(2).cloned().collect())
                .collect()
        })
    }
}

/// Split an `iptables -S` line into words, honouring double quotes (comments).
pub fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut has = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                has = true;
            }
            '\\' if in_quotes => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !in_quotes => {
                if has {
                    words.push(std::mem::take(&mut cur));
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
        words.push(cur);
    }
    words
}

/// Does a rule (words after `-A CHAIN`) jump to `target`?
fn jumps_to(rule: &[String], target: &str) -> bool {
    rule.windows(2)
        .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1] == target)
}

/// How the jump from `FORWARD` is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JumpPolicy {
    /// Prepend, and move it back to the top whenever something else was prepended later.
    KeepFirst,
    /// Mutant `kube-proxy-first`: append once (`-C`, then `-A` if absent), never reorder.
    AppendOnce,
    /// Mutant `forward-jump-appended`: reorders like `KeepFirst`, but the new jump goes in
    /// with `-A FORWARD`, behind whatever was prepended.
    MoveByAppend,
    /// Mutant `forward-jump-duplicated`: inserts the new jump on top like `KeepFirst`, but
    /// never deletes the old ones.
    KeepFirstNoDelete,
}

impl JumpPolicy {
    /// Whether the agent reconciles the jump periodically after its start.
    pub fn reconciles(self) -> bool {
        self != JumpPolicy::AppendOnce
    }
}

/// What one reconcile changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub created_chain: bool,
    pub rules_rewritten: bool,
    /// The jump was inserted (absent, or moved back to the top).
    pub jump_inserted: bool,
    /// Old or duplicate jumps deleted.
    pub jumps_deleted: usize,
}

impl Changes {
    pub fn any(&self) -> bool {
        *self != Changes::default()
    }
}

/// Our chain and jump, for pod interfaces `<prefix>+`.
#[derive(Clone, Debug)]
pub struct ForwardChain {
    pub ipt: Iptables,
    pub prefix: String,
    pub policy: JumpPolicy,
}

impl ForwardChain {
    /// The rules `DP_FORWARD` must hold, in order (words after `-A DP_FORWARD`).
    pub fn wanted_rules(&self) -> Vec<Vec<String>> {
        let iface = format!("{}+", self.prefix);
        let rule = |dir: &str, comment: &str| -> Vec<String> {
            [
                dir,
                iface.as_str(),
                "-m",
                "comment",
                "--comment",
                comment,
                "-j",
                "ACCEPT",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
        vec![
            rule("-i", "datapathd: traffic from pods"),
            rule("-o", "datapathd: traffic to pods"),
        ]
    }

    /// Our jump with generation `generation` in its comment.
    fn jump_rule(generation: u32) -> Vec<String> {
        let comment = format!("{JUMP_COMMENT} #{generation}");
        ["-m", "comment", "--comment", &comment, "-j", CHAIN]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Our jumps in `FORWARD`: (1-based position, the rule's words after `-A FORWARD`).
    fn jumps(&self) -> Result<Vec<(usize, Vec<String>)>, IptablesError> {
        Ok(our_jumps(&self.ipt.rules("FORWARD")?.unwrap_or_default()))
    }

    /// 1-based positions in `FORWARD` of rules jumping to our chain.
    pub fn jump_positions(&self) -> Result<Vec<usize>, IptablesError> {
        Ok(self.jumps()?.into_iter().map(|(p, _)| p).collect())
    }

    fn insert_jump(&self, how: &[&str], generation: u32) -> Result<(), IptablesError> {
        let jump = Self::jump_rule(generation);
        let mut args = vec!["-t", "filter"];
        args.extend_from_slice(how);
        args.extend(jump.iter().map(String::as_str));
        self.ipt.run(&args).map(|_| ())
    }

    /// Make the chain, its rules and the jump what they must be (see the module docs).
    pub fn reconcile(&self) -> Result<Changes, IptablesError> {
        let mut changes = Changes::default();
        let wanted = self.wanted_rules();
        // One read of the table when nothing has to change (the periodic case).
        let table = self.ipt.filter_table()?;
        match table.rules(CHAIN) {
            None => {
                self.ipt.run(&["-t", "filter", "-N", CHAIN])?;
                changes.created_chain = true;
                self.append_rules(&wanted)?;
                changes.rules_rewritten = true;
            }
            Some(have) if have == wanted => {}
            Some(have) => {
                // New rules first (appended), then the old ones deleted from the bottom up
                // by number: the accept never disappears in between, and nobody else
                // writes to our own chain, so its numbers cannot move under us.
                self.append_rules(&wanted)?;
                for pos in (1..=have.len()).rev() {
                    self.ipt
                        .run(&["-t", "filter", "-D", CHAIN, &pos.to_string()])?;
                }
                changes.rules_rewritten = true;
            }
        }

        let jumps = if changes.any() {
            self.jumps()?
        } else {
            our_jumps(&table.rules("FORWARD").unwrap_or_default())
        };
        match self.policy {
            JumpPolicy::AppendOnce => {
                if jumps.is_empty() {
                    self.insert_jump(&["-A", "FORWARD"], 1)?;
                    changes.jump_inserted = true;
                }
            }
            policy => {
                let positions: Vec<usize> = jumps.iter().map(|(p, _)| *p).collect();
                if positions != [1] {
                    let stale = match jumps.split_first() {
                        // Ours is first and unique in spec: keep it, delete the others.
                        Some(((1, top), rest)) if rest.iter().all(|(_, r)| r != top) => {
                            rest.to_vec()
                        }
                        // Absent, not first, or first with an identical copy further down
                        // (a delete by spec would hit the top one): insert a new generation.
                        _ => {
                            let how: &[&str] = if policy == JumpPolicy::MoveByAppend {
                                &["-A", "FORWARD"]
                            } else {
                                &["-I", "FORWARD", "1"]
                            };
                            self.insert_jump(how, unused_generation(&jumps))?;
                            changes.jump_inserted = true;
                            jumps
                        }
                    };
                    if policy != JumpPolicy::KeepFirstNoDelete {
                        for (_, rule) in &stale {
                            delete_rule(&self.ipt, "FORWARD", rule)?;
                            changes.jumps_deleted += 1;
                        }
                    }
                }
            }
        }
        Ok(changes)
    }

    fn append_rules(&self, rules: &[Vec<String>]) -> Result<(), IptablesError> {
        for r in rules {
            let mut args = vec!["-t", "filter", "-A", CHAIN];
            args.extend(r.iter().map(String::as_str));
            self.ipt.run(&args)?;
        }
        Ok(())
    }
}

/// Our jumps in `FORWARD` rules: (1-based position, the rule's words).
fn our_jumps(forward: &[Vec<String>]) -> Vec<(usize, Vec<String>)> {
    forward
        .iter()
        .enumerate()
        .filter(|(_, r)| jumps_to(r, CHAIN))
        .map(|(i, r)| (i + 1, r.clone()))
        .collect()
}

/// The smallest generation (from 1) that no jump in `jumps` carries in its comment.
fn unused_generation(jumps: &[(usize, Vec<String>)]) -> u32 {
    (1..)
        .find(|g| {
            let comment = format!("{JUMP_COMMENT} #{g}");
            !jumps.iter().any(|(_, r)| r.contains(&comment))
        })
        .unwrap_or(1)
}

/// Delete the first rule of `chain` matching `rule` (its words from `-S`) by spec, never by
/// number (see the module docs).
fn delete_rule(ipt: &Iptables, chain: &str, rule: &[String]) -> Result<(), IptablesError> {
    let mut args = vec!["-t", "filter", "-D", chain];
    args.extend(rule.iter().map(String::as_str));
    ipt.run(&args).map(|_| ())
}

/// Remove our jump(s) from `FORWARD` and our chain, and nothing else. Returns how many
/// rules were removed (jumps + the chain's rules); 0 when there was nothing.
pub fn remove(ipt: &Iptables) -> Result<usize, IptablesError> {
    let mut removed = 0;
    // By spec: identical copies are each deleted by their own `-D` (it takes the first).
    for (_, rule) in our_jumps(&ipt.rules("FORWARD")?.unwrap_or_default()) {
        delete_rule(ipt, "FORWARD", &rule)?;
        removed += 1;
    }
    if let Some(rules) = ipt.rules(CHAIN)? {
        // Flushing our own chain only (never the table).
        ipt.run(&["-t", "filter", "-F", CHAIN])?;
        ipt.run(&["-t", "filter", "-X", CHAIN])?;
        removed += rules.len();
    }
    Ok(removed)
}

/// `status --json`'s `forward_chain`.
#[derive(Debug, Serialize)]
pub struct ChainStatus {
    /// `iptables --version`.
    pub iptables: String,
    /// `nf_tables` or `legacy`.
    pub flavor: String,
    pub chain: &'static str,
    pub exists: bool,
    /// `iptables -S DP_FORWARD` lines (without the `-N` line).
    pub rules: Vec<String>,
    /// `iptables -S FORWARD` `-A` lines, in order.
    pub forward: Vec<String>,
    /// 1-based positions in FORWARD of the rules jumping to DP_FORWARD.
    pub jump_positions: Vec<usize>,
    /// Exactly one jump, at position 1, and the chain holds exactly its rules once.
    pub first: bool,
    pub problems: Vec<String>,
}

pub fn status(chain: &ForwardChain) -> Result<ChainStatus, IptablesError> {
    let join = |r: &[String]| {
        r.iter()
            .map(|w| {
                if w.contains(' ') {
                    format!("\"{w}\"")
                } else {
                    w.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let ours = chain.ipt.rules(CHAIN)?;
    let forward = chain.ipt.rules("FORWARD")?.unwrap_or_default();
    let jump_positions = chain.jump_positions()?;
    let mut problems = Vec::new();
    let wanted = chain.wanted_rules();
    match &ours {
        None => problems.push(format!("chain {CHAIN} does not exist")),
        Some(have) if *have != wanted => problems.push(format!(
            "chain {CHAIN} holds {} rule(s), not exactly the {} expected",
            have.len(),
            wanted.len()
        )),
        Some(_) => {}
    }
    match jump_positions.as_slice() {
        [] => problems.push(format!("no jump to {CHAIN} in FORWARD")),
        [1] => {}
        [p] => problems.push(format!("the jump to {CHAIN} is rule {p} of FORWARD, not 1")),
        many => problems.push(format!("{} jumps to {CHAIN} in FORWARD", many.len())),
    }
    Ok(ChainStatus {
        iptables: chain.ipt.version.clone(),
        flavor: chain.ipt.flavor.clone(),
        chain: CHAIN,
        exists: ours.is_some(),
        rules: ours
            .unwrap_or_default()
            .iter()
            .map(|r| format!("-A {CHAIN} {}", join(r)))
            .collect(),
        forward: forward
            .iter()
            .map(|r| format!("-A FORWARD {}", join(r)))
            .collect(),
        first: problems.is_empty(),
        jump_positions,
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_quoted_comments() {
        assert_eq!(
            split_words(
                r#"-A DP_FORWARD -i lxc+ -m comment --comment "datapathd: traffic from pods" -j ACCEPT"#
            ),
            vec![
                "-A",
                "DP_FORWARD",
                "-i",
                "lxc+",
                "-m",
                "comment",
                "--comment",
                "datapathd: traffic from pods",
                "-j",
                "ACCEPT"
            ]
        );
        assert_eq!(
            split_words("-P FORWARD ACCEPT"),
            vec!["-P", "FORWARD", "ACCEPT"]
        );
    }

    #[test]
    fn finds_jumps() {
        let r = split_words(r#"-m comment --comment "x y" -j DP_FORWARD"#);
        assert!(jumps_to(&r, CHAIN));
        assert!(!jumps_to(&split_words("-j KUBE-FORWARD"), CHAIN));
    }

    #[test]
    fn a_new_jump_never_shares_a_spec_with_an_old_one() {
        let forward: Vec<Vec<String>> = [
            r#"-m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD"#,
            r#"-m comment --comment "datapathd: pod forwarding #1" -j DP_FORWARD"#,
            r#"-m comment --comment "datapathd: pod forwarding #3" -j DP_FORWARD"#,
        ]
        .iter()
        .map(|l| split_words(l))
        .collect();
        let jumps = our_jumps(&forward);
        assert_eq!(
            jumps.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            vec![2, 3]
        );
        let g = unused_generation(&jumps);
        assert_eq!(g, 2);
        assert!(!jumps.iter().any(|(_, r)| *r == ForwardChain::jump_rule(g)));
        assert_eq!(unused_generation(&[]), 1);
    }
}
