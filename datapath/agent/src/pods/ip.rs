//! The `ip` command (iproute2) for links, addresses, routes and neighbours, and `nsenter`
//! to run it in a pod's network namespace.
//!
//! Why a command and not netlink: the agent has no rtnetlink stack (netlink.rs only sends
//! sock_diag and nf_tables queries), building veth-with-peer, address, route and neighbour
//! messages by hand is most of a netlink library, and iproute2 is on every node already
//! (the harness and `cleanup` use it too). Reads use `ip -j` (JSON).

use std::{net::Ipv4Addr, path::Path, process::Command};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum IpError {
    #[error("cannot run `{cmd}`")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    #[error("`{cmd}` printed JSON we cannot read")]
    Json {
        cmd: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Where a command runs: this process's network namespace, or a pod's (by path).
#[derive(Clone, Copy, Debug)]
pub enum Ns<'a> {
    Here,
    Pod(&'a Path),
}

fn command(ns: Ns<'_>, program: &str, args: &[&str]) -> (Command, String) {
    let (mut cmd, shown) = match ns {
        Ns::Here => (Command::new(program), program.to_string()),
        Ns::Pod(p) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", p.display())).arg(program);
            (c, format!("nsenter --net={} {program}", p.display()))
        }
    };
    cmd.args(args).stdin(std::process::Stdio::null());
    (cmd, format!("{shown} {}", args.join(" ")))
}

/// Runs `program args` (in `ns`); its stdout on success.
pub fn run_in(ns: Ns<'_>, program: &str, args: &[&str]) -> Result<String, IpError> {
    let (mut cmd, shown) = command(ns, program, args);
    let out = cmd.output().map_err(|source| IpError::Spawn {
        cmd: shown.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(IpError::Failed {
            cmd: shown,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip args` in this namespace.
pub fn ip(args: &[&str]) -> Result<String, IpError> {
    run_in(Ns::Here, "ip", args)
}

/// `ip args` where a "not there" answer is fine (deletes): Ok(false) when it failed.
pub fn ip_quiet(args: &[&str]) -> bool {
    ip(args).is_ok()
}

fn json<T: for<'de> Deserialize<'de>>(ns: Ns<'_>, args: &[&str]) -> Result<T, IpError> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = run_in(ns, "ip", &full)?;
    let text = if out.trim().is_empty() { "[]" } else { &out };
    serde_json::from_str(text).map_err(|source| IpError::Json {
        cmd: format!("ip {}", full.join(" ")),
        source,
    })
}

#[derive(Clone, Debug, Deserialize)]
pub struct Link {
    pub ifindex: u32,
    pub ifname: String,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub mtu: u32,
}

/// Every link of the namespace.
pub fn links(ns: Ns<'_>) -> Result<Vec<Link>, IpError> {
    json(ns, &["link", "show"])
}

/// One link by name, `None` when there is no such link.
pub fn link(ns: Ns<'_>, name: &str) -> Result<Option<Link>, IpError> {
    Ok(links(ns)?.into_iter().find(|l| l.ifname == name))
}

#[derive(Clone, Debug, Deserialize)]
pub struct AddrInfo {
    #[serde(default)]
    pub family: String,
    #[serde(default)]
    pub local: Option<String>,
    #[serde(default)]
    pub prefixlen: u8,
}

#[derive(Clone, Debug, Deserialize)]
pub struct LinkAddrs {
    pub ifname: String,
    #[serde(default)]
    pub mtu: u32,
    #[serde(default)]
    pub addr_info: Vec<AddrInfo>,
}

/// A link's MTU and IPv4 addresses (address, prefix length).
pub type MtuAndAddrs = (u32, Vec<(Ipv4Addr, u8)>);

/// `dev`'s MTU and IPv4 addresses; `None` when the link does not exist.
pub fn ipv4_addrs(ns: Ns<'_>, dev: &str) -> Result<Option<MtuAndAddrs>, IpError> {
    let all: Vec<LinkAddrs> = json(ns, &["addr", "show"])?;
    Ok(all.into_iter().find(|l| l.ifname == dev).map(|l| {
        let v4 = l
            .addr_info
            .iter()
            .filter(|a| a.family == "inet")
            .filter_map(|a| Some((a.local.as_deref()?.parse().ok()?, a.prefixlen)))
            .collect();
        (l.mtu, v4)
    }))
}

#[derive(Clone, Debug, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default)]
    pub dev: Option<String>,
}

/// IPv4 routes of the main table.
pub fn routes(ns: Ns<'_>) -> Result<Vec<Route>, IpError> {
    json(ns, &["-4", "route", "show"])
}

#[derive(Clone, Debug, Deserialize)]
pub struct Neigh {
    pub dst: String,
    #[serde(default)]
    pub dev: Option<String>,
    #[serde(default)]
    pub lladdr: Option<String>,
    #[serde(default)]
    pub state: Vec<String>,
}

/// IPv4 neighbours.
pub fn neighbours(ns: Ns<'_>) -> Result<Vec<Neigh>, IpError> {
    json(ns, &["-4", "neigh", "show"])
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Writes a sysctl of this network namespace (`/proc/sys/...` is per namespace).
pub fn sysctl(path: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/sys/{path}"), value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip_and_bad_ones_are_refused() {
        let m = parse_mac("0a:1b:2c:3d:4e:5f").expect("mac");
        assert_eq!(format_mac(&m), "0a:1b:2c:3d:4e:5f");
        assert!(parse_mac("0a:1b:2c:3d:4e").is_none());
        assert!(parse_mac("0a:1b:2c:3d:4e:5f:00").is_none());
        assert!(parse_mac("zz:1b:2c:3d:4e:5f").is_none());
    }
}
