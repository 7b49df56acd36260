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
/// Comment on our jump in `FORWARD`.
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

    /// The filter table's `-N`/`-P`/`-A` lines of `chain` as argument lists (split like a
    /// shell would); `None` when the chain does not exist. Read from the whole table's
    /// `-S`: iptables-nft answers `-S MISSING` with a misleading "incompatible" error.
    pub fn list(&self, chain: &str) -> Result<Option<Vec<Vec<String>>>, IptablesError> {
        let out = self.run(&["-t", "filter", "-S"])?;
        let lines: Vec<Vec<String>> = out
            .lines()
            .map(split_words)
            .filter(|w| w.get(1).map(String::as_str) == Some(chain))
            .collect();
        let exists = lines
            .iter()
            .any(|w| matches!(w.first().map(String::as_str), Some("-N" | "-P")));
        Ok(exists.then_some(lines))
    }

    /// The `-A` rules of a chain (each without the leading `-A CHAIN`), in order.
    pub fn rules(&self, chain: &str) -> Result<Option<Vec<Vec<String>>>, IptablesError> {
        Ok(self.list(chain)?.map(|lines| {
            lines
                .into_iter()
                .filter(|l| l.first().map(String::as_str) == Some("-A"))
                .map(|l| l.into_iter().skip(2).collect())
                .collect()
        }))
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

    fn jump_rule() -> Vec<String> {
        ["-m", "comment", "--comment", JUMP_COMMENT, "-j", CHAIN]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// 1-based positions in `FORWARD` of rules jumping to our chain.
    pub fn jump_positions(&self) -> Result<Vec<usize>, IptablesError> {
        Ok(self
            .ipt
            .rules("FORWARD")?
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter(|(_, r)| jumps_to(r, CHAIN))
            .map(|(i, _)| i + 1)
            .collect())
    }

    /// Make the chain, its rules and the jump what they must be (see the module docs).
    pub fn reconcile(&self) -> Result<Changes, IptablesError> {
        let mut changes = Changes::default();
        let wanted = self.wanted_rules();
        match self.ipt.rules(CHAIN)? {
            None => {
                self.ipt.run(&["-t", "filter", "-N", CHAIN])?;
                changes.created_chain = true;
                self.append_rules(&wanted)?;
                changes.rules_rewritten = true;
            }
            Some(have) if have == wanted => {}
            Some(have) => {
                // New rules first (appended), then the old ones deleted from the bottom up
                // by number: the accept never disappears in between.
                self.append_rules(&wanted)?;
                for pos in (1..=have.len()).rev() {
                    self.ipt
                        .run(&["-t", "filter", "-D", CHAIN, &pos.to_string()])?;
                }
                changes.rules_rewritten = true;
            }
        }

        let jump = Self::jump_rule();
        let jump: Vec<&str> = jump.iter().map(String::as_str).collect();
        let positions = self.jump_positions()?;
        match self.policy {
            JumpPolicy::AppendOnce => {
                if positions.is_empty() {
                    let mut args = vec!["-t", "filter", "-A", "FORWARD"];
                    args.extend_from_slice(&jump);
                    self.ipt.run(&args)?;
                    changes.jump_inserted = true;
                }
            }
            JumpPolicy::KeepFirst => {
                if positions != [1] {
                    if positions.first() != Some(&1) {
                        let mut args = vec!["-t", "filter", "-I", "FORWARD", "1"];
                        args.extend_from_slice(&jump);
                        self.ipt.run(&args)?;
                        changes.jump_inserted = true;
                    }
                    // Now delete every other jump, highest position first so the numbers
                    // of the remaining ones do not move.
                    let positions = self.jump_positions()?;
                    for pos in positions.iter().rev().filter(|&&p| p != 1) {
                        self.ipt
                            .run(&["-t", "filter", "-D", "FORWARD", &pos.to_string()])?;
                        changes.jumps_deleted += 1;
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

/// Remove our jump(s) from `FORWARD` and our chain, and nothing else. Returns how many
/// rules were removed (jumps + the chain's rules); 0 when there was nothing.
pub fn remove(ipt: &Iptables) -> Result<usize, IptablesError> {
    let mut removed = 0;
    let forward = ipt.rules("FORWARD")?.unwrap_or_default();
    let positions: Vec<usize> = forward
        .iter()
        .enumerate()
        .filter(|(_, r)| jumps_to(r, CHAIN))
        .map(|(i, _)| i + 1)
        .collect();
    for pos in positions.iter().rev() {
        ipt.run(&["-t", "filter", "-D", "FORWARD", &pos.to_string()])?;
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
}
