//! The kube-proxy fixture: kube-proxy's iptables footprint, rule for rule, started and
//! stopped per node like the real daemon (incident B in shared/DESIGN.md). Where a real
//! cluster exists, the real kube-proxy takes its place.
//!
//! What kube-proxy's iptables mode does (proxier.go, 1.23-1.33), and so what this does:
//! - **Start / every sync**: each jump is *ensured*: checked with `-C`, and only when
//!   absent inserted with `-I <chain> 1` (so once present it never fights for first
//!   place). The jumps are ensured in kube-proxy's order, each at position 1, so `FORWARD`
//!   ends up KUBE-PROXY-FIREWALL, KUBE-FORWARD, KUBE-SERVICES, KUBE-EXTERNAL-SERVICES.
//! - Then the chains' contents are rewritten with `iptables-restore --noflush` (declaring a
//!   chain flushes it): KUBE-FORWARD = `--ctstate INVALID -j DROP` (since 1.15; from 1.29
//!   omitted when `nf_conntrack_tcp_be_liberal` was non-zero at start), then mark 0x4000
//!   ACCEPT, then RELATED,ESTABLISHED ACCEPT; nat KUBE-POSTROUTING / KUBE-MARK-MASQ; the
//!   KUBE-PROXY-CANARY chains in mangle, nat and filter.
//! - **nftables mode** (GA 1.33) uses its own nft table and installs nothing in iptables
//!   (no INVALID drop): the fixture then does nothing, which is the point of the mode.
//! - **Stop**: removes its own jumps and chains only (what `kube-proxy --cleanup-iptables`
//!   would); never a flush of a whole table.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::node::{shell_quote, Node, NodeError};

const T: Duration = Duration::from_secs(30);

/// kube-proxy's proxy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Iptables,
    Nftables,
}

/// A kube-proxy version and mode, e.g. `1.30/iptables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubeProxy {
    pub minor: u32,
    pub mode: Mode,
    /// `nf_conntrack_tcp_be_liberal` was non-zero when it started (1.29+ then omits the
    /// INVALID drop).
    pub be_liberal: bool,
}

impl Default for KubeProxy {
    fn default() -> Self {
        KubeProxy {
            minor: 30,
            mode: Mode::Iptables,
            be_liberal: false,
        }
    }
}

impl fmt::Display for KubeProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
        };
        write!(f, "1.{}/{mode}", self.minor)
    }
}

impl FromStr for KubeProxy {
    type Err = String;
    /// `1.30`, `1.30/iptables`, `1.33/nftables`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("`{s}` is not a kube-proxy version (expected 1.MINOR[/iptables|/nftables])");
        let (v, mode) = s.split_once('/').unwrap_or((s, "iptables"));
        let minor: u32 = v
            .strip_prefix("1.")
            .and_then(|m| m.parse().ok())
            .ok_or_else(bad)?;
        let mode = match mode {
            "iptables" => Mode::Iptables,
            "nftables" if minor >= 29 => Mode::Nftables,
            "nftables" => {
                return Err(format!(
                    "kube-proxy 1.{minor} has no nftables mode (alpha 1.29, GA 1.33)"
                ))
            }
            _ => return Err(bad()),
        };
        Ok(KubeProxy {
            minor,
            mode,
            be_liberal: false,
        })
    }
}

/// One jump kube-proxy ensures: (table, from chain, to chain, comment, extra match args).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jump {
    pub table: &'static str,
    pub from: &'static str,
    pub to: &'static str,
    pub comment: &'static str,
    pub extra: &'static [&'static str],
}

impl Jump {
    /// The rule spec after `-A FROM` (extra matches first, as kube-proxy builds it).
    pub fn spec(&self) -> Vec<String> {
        let mut v: Vec<String> = self.extra.iter().map(|s| s.to_string()).collect();
        v.extend(
            ["-m", "comment", "--comment", self.comment, "-j", self.to]
                .iter()
                .map(|s| s.to_string()),
        );
        v
    }
}

const NEW: &[&str] = &["-m", "conntrack", "--ctstate", "NEW"];

#[derive(Debug, thiserror::Error)]
pub enum KubeProxyError {
    #[error("kube-proxy fixture on node {node}")]
    Node {
        node: String,
        #[source]
        source: NodeError,
    },
}

impl KubeProxy {
    /// Does this version/mode install the INVALID drop?
    pub fn has_invalid_drop(&self) -> bool {
        self.mode == Mode::Iptables && self.minor >= 15 && !(self.minor >= 29 && self.be_liberal)
    }

    /// The jumps, in the order kube-proxy ensures them (each inserted at position 1 when
    /// absent, so the last one ends up first).
    pub fn jumps(&self) -> Vec<Jump> {
        if self.mode != Mode::Iptables {
            return Vec::new();
        }
        let j = |table, from, to, comment, extra| Jump {
            table,
            from,
            to,
            comment,
            extra,
        };
        let mut v = vec![
            j(
                "filter",
                "INPUT",
                "KUBE-EXTERNAL-SERVICES",
                "kubernetes externally-visible service portals",
                NEW,
            ),
            j(
                "filter",
                "FORWARD",
                "KUBE-EXTERNAL-SERVICES",
                "kubernetes externally-visible service portals",
                NEW,
            ),
            j(
                "filter",
                "INPUT",
                "KUBE-NODEPORTS",
                "kubernetes health check service ports",
                &[],
            ),
            j(
                "filter",
                "FORWARD",
                "KUBE-SERVICES",
                "kubernetes service portals",
                NEW,
            ),
            j(
                "filter",
                "OUTPUT",
                "KUBE-SERVICES",
                "kubernetes service portals",
                NEW,
            ),
            j(
                "filter",
                "FORWARD",
                "KUBE-FORWARD",
                "kubernetes forwarding rules",
                &[],
            ),
        ];
        if self.minor >= 25 {
            for from in ["INPUT", "OUTPUT", "FORWARD"] {
                v.push(j(
                    "filter",
                    from,
                    "KUBE-PROXY-FIREWALL",
                    "kubernetes load balancer firewall",
                    NEW,
                ));
            }
        }
        v.push(j(
            "nat",
            "OUTPUT",
            "KUBE-SERVICES",
            "kubernetes service portals",
            &[],
        ));
        v.push(j(
            "nat",
            "PREROUTING",
            "KUBE-SERVICES",
            "kubernetes service portals",
            &[],
        ));
        v.push(j(
            "nat",
            "POSTROUTING",
            "KUBE-POSTROUTING",
            "kubernetes postrouting rules",
            &[],
        ));
        v
    }

    /// The chains it owns, per table.
    pub fn chains(&self) -> Vec<(&'static str, &'static str)> {
        if self.mode != Mode::Iptables {
            return Vec::new();
        }
        let mut v = vec![
            ("filter", "KUBE-EXTERNAL-SERVICES"),
            ("filter", "KUBE-NODEPORTS"),
            ("filter", "KUBE-SERVICES"),
            ("filter", "KUBE-FORWARD"),
            ("nat", "KUBE-SERVICES"),
            ("nat", "KUBE-NODEPORTS"),
            ("nat", "KUBE-POSTROUTING"),
            ("nat", "KUBE-MARK-MASQ"),
            ("mangle", "KUBE-PROXY-CANARY"),
            ("nat", "KUBE-PROXY-CANARY"),
            ("filter", "KUBE-PROXY-CANARY"),
        ];
        if self.minor >= 25 {
            v.push(("filter", "KUBE-PROXY-FIREWALL"));
        }
        v
    }

    /// What one sync writes with `iptables-restore --noflush` (declared chains are flushed
    /// and refilled; other chains are untouched).
    pub fn restore_text(&self) -> String {
        if self.mode != Mode::Iptables {
            return String::new();
        }
        let mut s = String::new();
        s.push_str("*mangle\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n");
        s.push_str("*filter\n");
        let mut filter_chains = vec![
            "KUBE-PROXY-CANARY",
            "KUBE-EXTERNAL-SERVICES",
            "KUBE-NODEPORTS",
            "KUBE-SERVICES",
            "KUBE-FORWARD",
        ];
        if self.minor >= 25 {
            filter_chains.push("KUBE-PROXY-FIREWALL");
        }
        for c in &filter_chains {
            s.push_str(&format!(":{c} - [0:0]\n"));
        }
        if self.has_invalid_drop() {
            s.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
        }
        s.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n");
        s.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
        s.push_str("COMMIT\n*nat\n");
        for c in [
            "KUBE-PROXY-CANARY",
            "KUBE-SERVICES",
            "KUBE-NODEPORTS",
            "KUBE-POSTROUTING",
            "KUBE-MARK-MASQ",
        ] {
            s.push_str(&format!(":{c} - [0:0]\n"));
        }
        s.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
        s.push_str("-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n");
        s.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
        s.push_str("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n");
        s.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
        s.push_str("COMMIT\n");
        s
    }

    /// The shell script that starts (or restarts: the same thing, as for the real daemon)
    /// kube-proxy's rules: chains, jumps ensured in order, then the chains' contents.
    /// One script, so one round trip to a VM instead of one per iptables command.
    pub fn start_script(&self) -> String {
        let mut s = String::from("set -e\n");
        // The chains must exist before a jump to them can be checked or inserted.
        for (table, chain) in self.chains() {
            s.push_str(&format!(
                "iptables -w 5 -t {table} -S {chain} >/dev/null 2>&1 || iptables -w 5 -t {table} -N {chain}\n"
            ));
        }
        for j in self.jumps() {
            let spec = quoted(&j.spec());
            s.push_str(&format!(
                "iptables -w 5 -t {t} -C {f} {spec} 2>/dev/null || iptables -w 5 -t {t} -I {f} 1 {spec}\n",
                t = j.table,
                f = j.from
            ));
        }
        s.push_str("iptables-restore -w 5 --noflush <<'KUBE_PROXY_RULES'\n");
        s.push_str(&self.restore_text());
        s.push_str("KUBE_PROXY_RULES\n");
        s
    }

    /// The shell script that stops kube-proxy and cleans up: its jumps (every copy), then
    /// its chains; nothing else (what `kube-proxy --cleanup-iptables` would do).
    pub fn stop_script(&self) -> String {
        let mut s = String::new();
        for j in self.jumps() {
            let spec = quoted(&j.spec());
            // -D by spec removes one copy per call; bounded so a failing -D cannot spin.
            s.push_str(&format!(
                "n=0; while [ $n -lt 16 ] && iptables -w 5 -t {t} -C {f} {spec} 2>/dev/null; do iptables -w 5 -t {t} -D {f} {spec} || exit 1; n=$((n+1)); done\n",
                t = j.table,
                f = j.from
            ));
        }
        // Flush every chain of ours first (they jump to each other), then delete them.
        let chains = self.chains();
        for (table, chain) in &chains {
            s.push_str(&format!(
                "iptables -w 5 -t {table} -F {chain} 2>/dev/null || true\n"
            ));
        }
        for (table, chain) in &chains {
            s.push_str(&format!(
                "iptables -w 5 -t {table} -X {chain} 2>/dev/null || true\n"
            ));
        }
        s
    }

    /// Start (or restart) on `node`.
    pub fn start(&self, node: &dyn Node) -> Result<(), KubeProxyError> {
        if self.mode != Mode::Iptables {
            return Ok(());
        }
        self.run_script(node, &self.start_script())
    }

    /// Stop and clean up on `node`.
    pub fn stop(&self, node: &dyn Node) -> Result<(), KubeProxyError> {
        if self.mode != Mode::Iptables {
            return Ok(());
        }
        self.run_script(node, &self.stop_script())
    }

    fn run_script(&self, node: &dyn Node, script: &str) -> Result<(), KubeProxyError> {
        node.check(&["sh", "-c", script], T)
            .map(|_| ())
            .map_err(|source| KubeProxyError::Node {
                node: node.name().to_string(),
                source,
            })
    }
}

/// Words quoted for a POSIX shell, joined by spaces.
fn quoted(words: &[String]) -> String {
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions_and_modes() {
        assert_eq!("1.30".parse::<KubeProxy>(), Ok(KubeProxy::default()));
        let n: KubeProxy = "1.33/nftables".parse().expect("nft");
        assert_eq!(n.mode, Mode::Nftables);
        assert!(n.jumps().is_empty() && n.restore_text().is_empty());
        assert!("1.20/nftables".parse::<KubeProxy>().is_err());
        assert!("2.0".parse::<KubeProxy>().is_err());
        assert_eq!(KubeProxy::default().to_string(), "1.30/iptables");
    }

    #[test]
    fn forward_ends_up_in_kube_proxys_order() {
        // Each jump ensured in order at position 1: the last ensured ends up first.
        let kp = KubeProxy::default();
        let mut forward: Vec<&str> = Vec::new();
        for j in kp
            .jumps()
            .iter()
            .filter(|j| j.table == "filter" && j.from == "FORWARD")
        {
            forward.insert(0, j.to);
        }
        assert_eq!(
            forward,
            [
                "KUBE-PROXY-FIREWALL",
                "KUBE-FORWARD",
                "KUBE-SERVICES",
                "KUBE-EXTERNAL-SERVICES"
            ]
        );
        let old = KubeProxy { minor: 24, ..kp };
        assert!(!old.jumps().iter().any(|j| j.to == "KUBE-PROXY-FIREWALL"));
    }

    #[test]
    fn invalid_drop_first_in_kube_forward_depending_on_version() {
        let kp = KubeProxy::default();
        let text = kp.restore_text();
        let fwd: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A KUBE-FORWARD"))
            .collect();
        assert_eq!(
            fwd[0],
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"
        );
        assert!(fwd[1].contains("0x4000/0x4000 -j ACCEPT"));
        assert!(fwd[2].contains("RELATED,ESTABLISHED -j ACCEPT"));
        assert!(!KubeProxy { minor: 14, ..kp }.has_invalid_drop());
        assert!(!KubeProxy {
            be_liberal: true,
            ..kp
        }
        .has_invalid_drop());
        assert!(KubeProxy {
            minor: 28,
            be_liberal: true,
            ..kp
        }
        .has_invalid_drop());
    }

    #[test]
    fn jump_spec_puts_extra_matches_first() {
        let kp = KubeProxy::default();
        let j = kp
            .jumps()
            .into_iter()
            .find(|j| j.to == "KUBE-SERVICES" && j.from == "FORWARD")
            .expect("jump");
        assert_eq!(
            j.spec(),
            [
                "-m",
                "conntrack",
                "--ctstate",
                "NEW",
                "-m",
                "comment",
                "--comment",
                "kubernetes service portals",
                "-j",
                "KUBE-SERVICES"
            ]
        );
    }
}
