//! The judge's view of socket acceleration on a node (incident C), read from the kernel:
//! the pinned `dp_sockhash` and `dp_accel_stats` maps through `bpftool -j map dump`, the
//! node's sockets with their cookies through `ss -tanHe` in the node's own network
//! namespace and in each of its pods' (the two ends of a node <-> pod connection live in
//! two namespaces), and real request/response traffic from the node to its local pods
//! (`dp-probe reqresp`, in the node's cgroup so that `sock_ops` sees the client).
//! The agent's `status --json` is read only for its counters, as extra evidence.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dp_wire::ReqRespSummary;

use super::ss::{self, Endpoint, Sock};
use super::{run_ok, ObserveError};
use crate::cluster::service::ServiceState;
use crate::cluster::{Cluster, ClusterNode};
use crate::node::{Process, SpawnSpec};
use crate::suite::Protocol;

/// The pinned sockhash of a node's agent (datapath/README.md).
pub fn map_path(cn: &ClusterNode) -> PathBuf {
    cn.bpffs.join("maps/dp_sockhash")
}

/// The pinned per-CPU counters of the acceleration programs.
pub fn stats_path(cn: &ClusterNode) -> PathBuf {
    cn.bpffs.join("maps/dp_accel_stats")
}

fn run(cn: &ClusterNode, argv: &[&str], timeout: Duration) -> Result<String, ObserveError> {
    run_ok(cn.node.as_ref(), argv, timeout)
}

/// A `dp_sockhash` key as the datapath documents it (datapath/README.md): the owning
/// end's address and port first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
}

impl Tuple {
    /// Whether `s` is the socket this key is for: its own end first.
    pub fn is_of(&self, s: &Sock) -> bool {
        s.local == self.src && s.peer == self.dst
    }
}

fn byte(s: &serde_json::Value) -> Option<u8> {
    let t = s.as_str()?;
    u8::from_str_radix(t.trim_start_matches("0x"), 16).ok()
}

fn word(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Decodes a 44-byte key: family, src[4], dst[4], src port, dst port (IPv4 only here).
pub fn decode_key(b: &[u8]) -> Option<Tuple> {
    if b.len() != 44 || word(b, 0)? != 2 {
        return None;
    }
    let ip = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
    let port = |at: usize| word(b, at).and_then(|p| u16::try_from(p).ok());
    Some(Tuple {
        src: SocketAddrV4::new(ip(4), port(36)?),
        dst: SocketAddrV4::new(ip(20), port(40)?),
    })
}

/// What a `bpftool -j map dump` of ours cannot be read as.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("not JSON")]
    Json(#[source] serde_json::Error),
    #[error("not a JSON array")]
    NotArray,
    /// An entry without the field, or with a field of another shape.
    #[error("entry {entry}: {what}")]
    Entry { entry: String, what: String },
}

fn entry_error(e: &serde_json::Value, what: String) -> DumpError {
    DumpError::Entry {
        entry: e.to_string(),
        what,
    }
}

fn json_array(json: &str) -> Result<Vec<serde_json::Value>, DumpError> {
    let v: serde_json::Value =
        serde_json::from_str(if json.trim().is_empty() { "[]" } else { json })
            .map_err(DumpError::Json)?;
    match v {
        serde_json::Value::Array(a) => Ok(a),
        _ => Err(DumpError::NotArray),
    }
}

/// `bpftool -j map dump` of the sockhash -> (key, cookie).
pub fn parse_dump(json: &str) -> Result<Vec<(Tuple, u64)>, DumpError> {
    let mut out = Vec::new();
    for e in json_array(json)? {
        let bytes = |field: &str| -> Result<Vec<u8>, DumpError> {
            e[field]
                .as_array()
                .ok_or_else(|| entry_error(&e, format!("no {field}")))?
                .iter()
                .map(|b| byte(b).ok_or_else(|| entry_error(&e, format!("bad byte in {field}"))))
                .collect()
        };
        let key = bytes("key")?;
        let value = bytes("value")?;
        let tuple = decode_key(&key).ok_or_else(|| entry_error(&e, "undecodable key".into()))?;
        let cookie = u64::from_ne_bytes(
            value
                .as_slice()
                .try_into()
                .map_err(|_| entry_error(&e, format!("value of {} bytes, want 8", value.len())))?,
        );
        out.push((tuple, cookie));
    }
    Ok(out)
}

/// Every key of the node's sockhash with the cookie a lookup returns.
pub fn dump(cn: &ClusterNode) -> Result<Vec<(Tuple, u64)>, ObserveError> {
    let path = map_path(cn).display().to_string();
    let argv = ["bpftool", "-j", "map", "dump", "pinned", &path];
    let text = run(cn, &argv, Duration::from_secs(30))?;
    parse_dump(&text).map_err(|e| ObserveError::unreadable(cn.name(), argv.join(" "), &text, e))
}

/// The indices of `dp_accel_stats` (datapath/README.md).
pub const STAT_NAMES: [&str; 7] = [
    "inserted",
    "insert_failed",
    "messages",
    "redirected",
    "passed",
    "bytes_redirected",
    "established",
];

/// `dp_accel_stats` summed over CPUs: index -> value (the names are [`STAT_NAMES`]).
pub fn accel_stats(cn: &ClusterNode) -> Result<Vec<u64>, ObserveError> {
    let path = stats_path(cn).display().to_string();
    let argv = ["bpftool", "-j", "map", "dump", "pinned", &path];
    let text = run(cn, &argv, Duration::from_secs(30))?;
    parse_stats(&text).map_err(|e| ObserveError::unreadable(cn.name(), argv.join(" "), &text, e))
}

/// A native-endian integer from bpftool's hex byte array, or a plain number.
fn number(v: &serde_json::Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let bytes: Vec<u8> = v
        .as_array()?
        .iter()
        .map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
        .collect::<Option<_>>()?;
    if bytes.len() > 8 {
        return None;
    }
    let mut buf = [0u8; 8];
    buf[..bytes.len()].copy_from_slice(&bytes);
    Some(u64::from_ne_bytes(buf))
}

/// `bpftool -j map dump` of a per-CPU array of u64: the per-index sums.
pub fn parse_stats(json: &str) -> Result<Vec<u64>, DumpError> {
    let mut out = vec![0u64; STAT_NAMES.len()];
    for e in json_array(json)? {
        let idx = number(&e["key"]).ok_or_else(|| entry_error(&e, "no key".into()))? as usize;
        let values = e["values"]
            .as_array()
            .ok_or_else(|| entry_error(&e, "no per-CPU values".into()))?;
        let sum = values.iter().try_fold(0u64, |acc, c| {
            number(&c["value"])
                .map(|n| acc.saturating_add(n))
                .ok_or_else(|| entry_error(&e, format!("bad per-CPU value {c}")))
        })?;
        if idx < out.len() {
            out[idx] = sum;
        }
    }
    Ok(out)
}

/// `name +delta` for every counter that moved between `before` and `after`.
pub fn stats_delta(before: &[u64], after: &[u64]) -> String {
    let moved: Vec<String> = STAT_NAMES
        .iter()
        .zip(before.iter().zip(after))
        .filter(|(_, (b, a))| a != b)
        .map(|(n, (b, a))| format!("{n} +{}", a.saturating_sub(*b)))
        .collect();
    if moved.is_empty() {
        "no counter moved".into()
    } else {
        moved.join(", ")
    }
}

/// The agent's own `status --json` `sockhash.counters`, as one line (extra evidence).
pub fn status_counters(cn: &ClusterNode) -> Result<String, ObserveError> {
    let (datapathd, bpffs, cgroup) = (
        cn.datapathd.display().to_string(),
        cn.bpffs.display().to_string(),
        cn.cgroup.display().to_string(),
    );
    let argv = [
        datapathd.as_str(),
        "status",
        "--json",
        "--bpffs",
        &bpffs,
        "--cgroup",
        &cgroup,
    ];
    let text = run(cn, &argv, Duration::from_secs(30))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ObserveError::unreadable(cn.name(), argv.join(" "), &text, e))?;
    let s = &v["sockhash"];
    if s.is_null() {
        return Err(ObserveError::unavailable(
            cn.name(),
            "datapathd status --json shows no sockhash (maps/dp_sockhash not pinned)",
        ));
    }
    Ok(format!(
        "entries {}, live_entries {}, insert {}, accelerate {}, counters {}",
        s["entries"], s["live_entries"], s["insert"], s["accelerate"], s["counters"]
    ))
}

/// Every TCP socket of the node: its own namespace and its pods' (`ss -tanHe`, whose
/// `sk:` is the cookie in hex).
pub fn sockets(cluster: &Cluster, cn: &ClusterNode) -> Result<Vec<Sock>, ObserveError> {
    let list = |argv: &[&str]| -> Result<Vec<Sock>, ObserveError> {
        let text = run(cn, argv, Duration::from_secs(30))?;
        ss::parse(&text).map_err(|e| ObserveError::unreadable(cn.name(), argv.join(" "), &text, e))
    };
    let ss = ["ss", "-tanHe"];
    let mut all = list(&ss)?;
    for p in cluster.pods.iter().filter(|p| p.node == cn.name()) {
        let net = format!("--net={}", p.netns.display());
        let mut argv = vec!["nsenter", net.as_str(), "--"];
        argv.extend_from_slice(&ss);
        all.extend(list(&argv)?);
    }
    Ok(all)
}

/// What the node's agent accelerates: its address and its pod CIDR (the `--accelerate`
/// flags the run gives it).
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    pub node_addr: Ipv4Addr,
    pub nets: Vec<(Ipv4Addr, u8)>,
}

impl Scope {
    pub fn of(cn: &ClusterNode) -> Result<Scope, ObserveError> {
        let net = cn.net.as_ref().ok_or_else(|| {
            ObserveError::unavailable(
                cn.name(),
                "no node address or pod CIDR known (the provider gives none)",
            )
        })?;
        let cidr = parse_cidr(&net.pod_cidr).ok_or_else(|| {
            ObserveError::unavailable(cn.name(), format!("bad pod CIDR {}", net.pod_cidr))
        })?;
        Ok(Scope {
            node_addr: net.addr,
            nets: vec![(net.addr, 32), cidr],
        })
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        self.nets.iter().any(|(n, len)| {
            let mask = if *len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(*len))
            };
            u32::from(a) & mask == u32::from(*n) & mask
        })
    }

    /// Both ends of `local` -> `peer` are accelerated (IPv4) addresses.
    pub fn both_in(&self, local: &Endpoint, peer: &Endpoint) -> bool {
        matches!((local.v4(), peer.v4()), (Some(l), Some(p)) if self.contains(*l.ip()) && self.contains(*p.ip()))
    }
}

pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, l) = s.split_once('/')?;
    let len: u8 = l.parse().ok()?;
    (len <= 32).then_some((a.parse().ok()?, len))
}

/// Live accelerated connections: ESTABLISHED sockets whose two ends are both in scope,
/// counted once per connection (both of its ends may be listed).
pub fn live_accelerated_connections(sockets: &[Sock], scope: &Scope) -> usize {
    let mut pairs = std::collections::BTreeSet::new();
    for s in sockets
        .iter()
        .filter(|s| s.is_established() && scope.both_in(&s.local, &s.peer))
    {
        let (a, b) = if s.local <= s.peer {
            (&s.local, &s.peer)
        } else {
            (&s.peer, &s.local)
        };
        pairs.insert((a.clone(), b.clone()));
    }
    pairs.len()
}

/// A local pod's server, which node -> local pod traffic goes to.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub pod: String,
    pub addr: SocketAddrV4,
}

/// The pods on `node` that back a TCP service now, each with the first such target port.
pub fn local_targets(cluster: &Cluster, services: &[ServiceState], node: &str) -> Vec<Target> {
    cluster
        .pods
        .iter()
        .filter(|p| p.node == node)
        .filter_map(|p| {
            let s = services
                .iter()
                .find(|s| s.protocol == Protocol::Tcp && s.backends.contains(&p.name))?;
            Some(Target {
                pod: p.name.clone(),
                addr: SocketAddrV4::new(p.ip, s.target_port),
            })
        })
        .collect()
}

/// Node-side ports of keys that no live socket owns and that a connection from the node
/// address to `target` would compute (either end's key): a new connection from that port
/// is where a leaked key bites, so probes reuse them. At most `max`, lowest first.
pub fn stale_ports(
    keys: &[(Tuple, u64)],
    sockets: &[Sock],
    node_addr: Ipv4Addr,
    target: SocketAddrV4,
    max: usize,
) -> Vec<u16> {
    let owned = |k: &Tuple, cookie: u64| sockets.iter().any(|s| s.cookie == cookie && k.is_of(s));
    let node_port = |a: SocketAddrV4| (*a.ip() == node_addr).then_some(a.port());
    // A port some socket still holds (TIME-WAIT after an earlier probe included) cannot
    // be bound again for this peer: skip it rather than report a connect failure.
    let busy = |port: u16| {
        let me = SocketAddrV4::new(node_addr, port);
        sockets.iter().any(|s| s.local == me)
    };
    let mut ports: Vec<u16> = keys
        .iter()
        .filter(|(k, c)| !owned(k, *c))
        .filter_map(|(k, _)| {
            if k.src == target {
                node_port(k.dst)
            } else if k.dst == target {
                node_port(k.src)
            } else {
                None
            }
        })
        .filter(|p| !busy(*p))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports.truncate(max);
    ports
}

/// `dp-probe reqresp` from the node (its namespace, its cgroup) to `to`, bound to
/// `bind`; its summary. A non-zero exit with a summary is data, not an error; a summary
/// the harness cannot read is a harness error.
pub fn reqresp(
    cn: &ClusterNode,
    to: SocketAddrV4,
    bind: SocketAddrV4,
    extra: &[&str],
    timeout: Duration,
) -> Result<ReqRespSummary, ObserveError> {
    let mut argv: Vec<String> = vec![
        cn.dp_probe.display().to_string(),
        "reqresp".into(),
        "--to".into(),
        to.to_string(),
        "--bind".into(),
        bind.to_string(),
        "--cgroup".into(),
        cn.cgroup.display().to_string(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = cn.node.run(&args, timeout)?;
    let text = out.stdout_str();
    match text.lines().rev().find(|l| l.trim_start().starts_with('{')) {
        Some(l) => serde_json::from_str(l)
            .map_err(|e| ObserveError::unreadable(cn.name(), argv.join(" "), l, e)),
        None => Err(ObserveError::failed(cn.name(), &args, &out)),
    }
}

/// `reqresp` arguments for the time a run of `connections` x `requests` may take.
pub fn reqresp_timeout(connections: u64, requests: u64, read_timeout_ms: u64) -> Duration {
    // Each connection can hang once (it is dropped after a problem); answered requests
    // are fast. A generous floor covers slow (TCG) nodes.
    Duration::from_millis(30_000 + connections * read_timeout_ms + connections * requests * 50)
}

/// Persistent `dp-probe reqresp` connections from a node's address to its local pod
/// servers, held open while the node is observed; killed (by pid) on drop.
pub struct HeldConnections<'a> {
    cn: &'a ClusterNode,
    node_addr: Ipv4Addr,
    per_target: u32,
    running: Vec<(Target, Box<dyn Process>)>,
}

impl Drop for HeldConnections<'_> {
    fn drop(&mut self) {
        for (_, p) in &mut self.running {
            if let Ok(None) = p.try_wait() {
                let _ = p.kill(libc::SIGKILL);
                let _ = p.wait_timeout(Duration::from_secs(5));
            }
        }
    }
}

/// Starts `per_target` connections to each of `targets` from the node's address, in the
/// node's cgroup (so that `sock_ops` sees the client), each making `requests` requests
/// `interval_ms` apart; their output goes to the node's work directory as `{label}-<i>.out`.
pub fn hold_connections<'a>(
    cn: &'a ClusterNode,
    node_addr: Ipv4Addr,
    targets: &[Target],
    per_target: u32,
    requests: u32,
    interval_ms: u64,
    label: &str,
) -> Result<HeldConnections<'a>, ObserveError> {
    let mut held = HeldConnections {
        cn,
        node_addr,
        per_target,
        running: Vec::new(),
    };
    for (i, t) in targets.iter().enumerate() {
        let argv: Vec<String> = vec![
            cn.dp_probe.display().to_string(),
            "reqresp".into(),
            "--to".into(),
            t.addr.to_string(),
            "--bind".into(),
            SocketAddrV4::new(node_addr, 0).to_string(),
            "--cgroup".into(),
            cn.cgroup.display().to_string(),
            "--connections".into(),
            per_target.to_string(),
            "--requests".into(),
            requests.to_string(),
            "--interval-ms".into(),
            interval_ms.to_string(),
            "--timeout-ms".into(),
            "2000".into(),
        ];
        let p = cn.node.spawn(&SpawnSpec {
            argv,
            stdout: cn.work_dir.join(format!("{label}-{i}.out")),
            stderr: cn.work_dir.join(format!("{label}-{i}.err")),
            env: Vec::new(),
        })?;
        held.running.push((t.clone(), p));
    }
    Ok(held)
}

impl HeldConnections<'_> {
    /// Waits until the node shows all the connections ESTABLISHED. A probe that ended
    /// first, or a deadline that passed, is the node's doing: unavailable, not unreadable.
    pub fn wait_established(
        &mut self,
        cluster: &Cluster,
        within: Duration,
    ) -> Result<(), ObserveError> {
        let deadline = Instant::now() + within;
        let node = self.cn.name();
        loop {
            let socks = sockets(cluster, self.cn)?;
            let all = self.running.iter().all(|(t, _)| {
                socks
                    .iter()
                    .filter(|s| {
                        s.is_established()
                            && s.peer == t.addr
                            && s.local.v4().is_some_and(|l| *l.ip() == self.node_addr)
                    })
                    .count()
                    >= self.per_target as usize
            });
            if all {
                return Ok(());
            }
            for (t, p) in &mut self.running {
                if let Ok(Some(e)) = p.try_wait() {
                    return Err(ObserveError::unavailable(
                        node,
                        format!(
                            "the probe to {} ({}) ended ({e}) before its connections were seen",
                            t.addr, t.pod
                        ),
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Err(ObserveError::unavailable(
                    node,
                    format!("the probes' connections were not all ESTABLISHED within {within:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// How long a stale `dp_sockhash` key may live: datapathd collects every 5 s (a key whose
/// cookie names no socket after two rounds), so 12 s. The sockhash invariants re-observe a
/// failing map for this long before they fail: a socket caught closing leaves the map at
/// once, a planted or leaked key must be collected by then.
pub const COLLECT_BOUND: std::time::Duration = std::time::Duration::from_secs(12);

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(state: &str, local: &str, peer: &str, cookie: u64) -> Sock {
        Sock {
            state: state.parse().unwrap(),
            local: Endpoint::parse(local),
            peer: Endpoint::parse(peer),
            cookie,
        }
    }

    fn scope() -> Scope {
        Scope {
            node_addr: Ipv4Addr::new(172, 31, 0, 1),
            nets: vec![
                (Ipv4Addr::new(172, 31, 0, 1), 32),
                (Ipv4Addr::new(10, 244, 1, 0), 24),
            ],
        }
    }

    #[test]
    fn per_cpu_counters_sum_raw_and_formatted() {
        let raw = r#"[{"key":["0x03","0x00","0x00","0x00"],"values":[
            {"cpu":0,"value":["0x02","0x00","0x00","0x00","0x00","0x00","0x00","0x00"]},
            {"cpu":1,"value":["0x00","0x01","0x00","0x00","0x00","0x00","0x00","0x00"]}]}]"#;
        let s = parse_stats(raw).expect("raw");
        assert_eq!(s[3], 2 + 256);
        let formatted = r#"[{"key":5,"values":[{"cpu":0,"value":7},{"cpu":1,"value":3}]}]"#;
        assert_eq!(parse_stats(formatted).expect("formatted")[5], 10);
        assert!(parse_stats(r#"[{"key":1}]"#).is_err());
        let mut after = s.clone();
        after[3] += 4;
        assert_eq!(stats_delta(&s, &after), "redirected +4");
        assert_eq!(stats_delta(&s, &s), "no counter moved");
    }

    #[test]
    fn scope_counts_connections_once_and_only_in_scope() {
        let sc = scope();
        assert!(sc.contains(Ipv4Addr::new(10, 244, 1, 9)));
        assert!(!sc.contains(Ipv4Addr::new(10, 244, 2, 9)));
        let socks = [
            sock("ESTAB", "172.31.0.1:40000", "10.244.1.2:8080", 1),
            sock("ESTAB", "10.244.1.2:8080", "172.31.0.1:40000", 2),
            sock("ESTAB", "172.31.0.1:40001", "10.244.2.2:8080", 3),
            sock("LISTEN", "10.244.1.2:8080", "0.0.0.0:*", 4),
            sock("ESTAB", "127.0.0.1:1", "127.0.0.1:2", 5),
        ];
        assert_eq!(live_accelerated_connections(&socks, &sc), 1);
    }

    #[test]
    fn stale_ports_are_the_node_side_of_unowned_keys() {
        let t: SocketAddrV4 = "10.244.1.2:8080".parse().unwrap();
        let key = |src: &str, dst: &str| Tuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
        };
        let keys = vec![
            // planted, server side: the decoy's cookie
            (key("10.244.1.2:8080", "172.31.0.1:20001"), 99),
            // planted, client side
            (key("172.31.0.1:20005", "10.244.1.2:8080"), 99),
            // owned by a live socket
            (key("172.31.0.1:40000", "10.244.1.2:8080"), 1),
            // another node address: not bindable here
            (key("10.244.1.2:8080", "10.244.1.1:20002"), 98),
        ];
        let socks = [
            sock("ESTAB", "172.31.0.1:40000", "10.244.1.2:8080", 1),
            sock("ESTAB", "127.0.0.1:1", "127.0.0.1:2", 99),
        ];
        assert_eq!(
            stale_ports(&keys, &socks, Ipv4Addr::new(172, 31, 0, 1), t, 8),
            vec![20001, 20005]
        );
        assert_eq!(
            stale_ports(&keys, &socks, Ipv4Addr::new(172, 31, 0, 1), t, 1),
            vec![20001]
        );
    }
}
