//! sockhash-keys-live (incident C): every key of a node's pinned `dp_sockhash` is owned by
//! a live socket whose own tuple is the key. Judged from the kernel, not from the agent:
//! `bpftool -j map dump pinned <bpffs>/maps/dp_sockhash` (the values are 8 bytes wide, so
//! a lookup returns the socket cookie) against `ss -tinHe` in every namespace of the node
//! (the `sk:` field is the cookie in hex); `datapathd status --json` is a cross-check only.
//! A tuple check alone misses the namespace collision and planted keys: the cookie must
//! name a socket, and that socket's tuple must be the key.
//!
//! Both directions are judged, on each node, while live accelerated connections exist:
//! the check itself opens two persistent connections from the node's address to each
//! local pod server (`dp-probe reqresp`, in the node's cgroup) and observes once they are
//! ESTABLISHED. (1) Every key is owned: its cookie names a socket of the node whose tuple
//! is the key; a key that fails is observed again for up to [`SETTLE`] (a socket caught
//! closing leaves the map; a stale key must be garbage-collected by then, or it stays). (2) Every accelerated socket is in the
//! map: both ends of each established connection from the node's address to a local pod
//! server are found under their own keys with their own cookies (`ss` lists the sockets
//! before and after the map is read; only connections alive in both are judged).

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use super::{merge, per_node, Context, Invariant, Judgement, Verdict};
use crate::cluster::ClusterNode;
use crate::node::{Process, SpawnSpec};
use crate::observe::features::{self, KernelNeed};
use crate::observe::sockhash::{self as obs, Scope, Target};
use crate::suite::{InvariantName, Needs};

/// How long keys that are not owned are re-observed before they fail: until the agent's
/// garbage collector must have removed them.
pub const SETTLE: Duration = obs::COLLECT_BOUND;
/// Connections per local pod server held open while the map is observed.
const CONNECTIONS: u32 = 2;
/// Requests per connection, `INTERVAL_MS` apart: the connections would live about 30 s,
/// long enough to be observed on a slow (TCG) node; the check kills the probes (by pid)
/// as soon as it has observed.
const REQUESTS: u32 = 600;
const INTERVAL_MS: u64 = 50;
/// How long the probes may take to establish their connections.
const ESTABLISH: Duration = Duration::from_secs(10);

pub const NAME: InvariantName = InvariantName::new("sockhash-keys-live");
pub struct SockhashKeysLive;

/// The node's end of a connection to a local pod server, as `ss` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConn {
    pub local: String,
    pub peer: String,
    pub cookie: u64,
}

/// Direction (2): both ends of every connection in `conns` that is still among `sockets`
/// are in the map under their own key with their own cookie. A connection that closed
/// meanwhile is not judged.
pub fn judge_in_map(
    node: &str,
    conns: &[ProbeConn],
    keys: &[(Tuple, u64)],
    sockets: &[Sock],
) -> Judgement {
    let at = |src: &str, dst: &str| {
        keys.iter()
            .find(|(k, _)| k.src == src && k.dst == dst)
            .map(|(_, c)| *c)
    };
    let mut judged = 0;
    let mut bad = Vec::new();
    for c in conns {
        if !sockets.iter().any(|s| s.cookie == c.cookie) {
            continue;
        }
        judged += 1;
        match at(&c.local, &c.peer) {
            Some(k) if k == c.cookie => {}
            Some(k) => bad.push(format!(
                "node {node}: client socket {} -> {} (cookie {}): its key holds cookie {k}",
                c.local, c.peer, c.cookie
            )),
            None => bad.push(format!(
                "node {node}: client socket {} -> {} (cookie {}) is not in the sockhash",
                c.local, c.peer, c.cookie
            )),
        }
        let server = sockets
            .iter()
            .find(|s| s.state == "ESTAB" && s.local == c.peer && s.peer == c.local);
        match (server, at(&c.peer, &c.local)) {
            (None, _) => bad.push(format!(
                "node {node}: the server end {} -> {} of the connection is not among the node's sockets",
                c.peer, c.local
            )),
            (Some(s), Some(k)) if k == s.cookie => {}
            (Some(s), Some(k)) => bad.push(format!(
                "node {node}: server socket {} -> {} (cookie {}): its key holds cookie {k}",
                s.local, s.peer, s.cookie
            )),
            (Some(s), None) => bad.push(format!(
                "node {node}: server socket {} -> {} (cookie {}) is not in the sockhash",
                s.local, s.peer, s.cookie
            )),
        }
    }
    if judged == 0 {
        return Judgement::unknown(format!(
            "node {node}: no probe connection was alive when the sockhash was read"
        ));
    }
    if bad.is_empty() {
        Judgement::pass(format!(
            "node {node}: both ends of {judged} live accelerated connection(s) are in the sockhash under their own keys"
        ))
    } else {
        Judgement::fail(
            format!("node {node}: accelerated sockets missing from the sockhash or under another cookie"),
            bad,
        )
    }
}

impl Invariant for SockhashKeysLive {
    fn name(&self) -> InvariantName {
        NAME
    }

    fn about(&self) -> &'static str {
        "every sockhash key is owned by a live socket whose tuple is the key, and every accelerated socket is in the map under its own key"
    }

    fn suite_needs(&self) -> Needs {
        Needs {
            acceleration: true,
            ..Needs::default()
        }
    }

    fn needs(&self) -> &'static [KernelNeed] {
        features::SOCKET_ACCELERATION
    }

    fn check(&self, ctx: &Context<'_>) -> Judgement {
        merge(&per_node(ctx, |cn| Some(check_node(ctx, cn))))
    }
}

/// The probes of one node, killed by pid once the check has observed (or leaves early).
struct Probes<'a> {
    cn: &'a ClusterNode,
    running: Vec<(Target, Box<dyn Process>, std::path::PathBuf)>,
}

impl Drop for Probes<'_> {
    fn drop(&mut self) {
        for (_, p, _) in &mut self.running {
            if let Ok(None) = p.try_wait() {
                let _ = p.kill(libc::SIGKILL);
                let _ = p.wait_timeout(Duration::from_secs(5));
            }
        }
    }
}

fn start_probes<'a>(
    cn: &'a ClusterNode,
    scope: &Scope,
    targets: &[Target],
) -> Result<Probes<'a>, String> {
    let mut probes = Probes {
        cn,
        running: Vec::new(),
    };
    for (i, t) in targets.iter().enumerate() {
        let out = cn.work_dir.join(format!("sockhash-keys-live-{i}.out"));
        let argv: Vec<String> = vec![
            cn.dp_probe.display().to_string(),
            "reqresp".into(),
            "--to".into(),
            t.addr.to_string(),
            "--bind".into(),
            SocketAddrV4::new(scope.node_addr, 0).to_string(),
            "--cgroup".into(),
            cn.cgroup.display().to_string(),
            "--connections".into(),
            CONNECTIONS.to_string(),
            "--requests".into(),
            REQUESTS.to_string(),
            "--interval-ms".into(),
            INTERVAL_MS.to_string(),
            "--timeout-ms".into(),
            "2000".into(),
        ];
        let p = cn
            .node
            .spawn(&SpawnSpec {
                argv,
                stdout: out.clone(),
                stderr: cn.work_dir.join(format!("sockhash-keys-live-{i}.err")),
                env: Vec::new(),
            })
            .map_err(|e| e.to_string())?;
        probes.running.push((t.clone(), p, out));
    }
    Ok(probes)
}

impl Probes<'_> {
    /// Waits until the node shows `CONNECTIONS` established connections to every target
    /// (or a probe ended first).
    fn wait_established(&mut self, ctx: &Context<'_>, scope: &Scope) -> Result<(), String> {
        let deadline = Instant::now() + ESTABLISH;
        loop {
            let socks = obs::sockets(ctx.cluster, self.cn)?;
            let all = self.running.iter().all(|(t, _, _)| {
                let to = t.addr.to_string();
                socks
                    .iter()
                    .filter(|s| {
                        s.state == "ESTAB"
                            && s.peer == to
                            && s.local.starts_with(&format!("{}:", scope.node_addr))
                    })
                    .count()
                    >= CONNECTIONS as usize
            });
            if all {
                return Ok(());
            }
            for (t, p, _) in &mut self.running {
                if let Ok(Some(e)) = p.try_wait() {
                    return Err(format!(
                        "the probe to {} ({}) ended ({e}) before its connections were seen",
                        t.addr, t.pod
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the probes' connections were not all ESTABLISHED within {ESTABLISH:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The node's ends of ESTABLISHED connections from its address to a local pod server.
pub fn node_to_pod_connections(
    sockets: &[Sock],
    scope: &Scope,
    targets: &[Target],
) -> Vec<ProbeConn> {
    let from = format!("{}:", scope.node_addr);
    sockets
        .iter()
        .filter(|s| {
            s.state == "ESTAB"
                && s.local.starts_with(&from)
                && targets.iter().any(|t| t.addr.to_string() == s.peer)
        })
        .map(|s| ProbeConn {
            local: s.local.clone(),
            peer: s.peer.clone(),
            cookie: s.cookie,
        })
        .collect()
}

/// A node's sockhash keys (with cookies) and its sockets, read one after the other.
type Observation = (Vec<(Tuple, u64)>, Vec<Sock>);

fn observe(ctx: &Context<'_>, cn: &ClusterNode) -> Result<Observation, String> {
    let keys = obs::dump(cn)?;
    let socks = obs::sockets(ctx.cluster, cn)?;
    Ok((keys, socks))
}

fn check_node(ctx: &Context<'_>, cn: &ClusterNode) -> Judgement {
    let node = cn.name();
    let unknown = |e: String| Judgement::unknown(format!("node {node}: cannot observe: {e}"));
    let scope = match Scope::of(cn) {
        Ok(s) => s,
        Err(e) => return Judgement::unknown(e),
    };
    let targets = obs::local_targets(ctx.cluster, ctx.services, node);
    let mut probes = match start_probes(cn, &scope, &targets) {
        Ok(p) => p,
        Err(e) => return unknown(e),
    };
    if let Err(e) = probes.wait_established(ctx, &scope) {
        return unknown(e);
    }
    // The observation with live accelerated connections: sockets, map, sockets again.
    let first = match obs::sockets(ctx.cluster, cn) {
        Ok(s) => s,
        Err(e) => return unknown(e),
    };
    let (keys, socks) = match observe(ctx, cn) {
        Ok(o) => o,
        Err(e) => return unknown(e),
    };
    let conns = node_to_pod_connections(&first, &scope, &targets);
    // Direction (1), re-observed while keys are not owned.
    let deadline = Instant::now() + SETTLE;
    let mut owned = judge(node, &keys, &socks);
    while owned.verdict != Verdict::Pass && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        owned = match observe(ctx, cn) {
            Ok((k, s)) => judge(node, &k, &s),
            Err(e) => return unknown(e),
        };
    }
    drop(probes);
    let mut in_map = if targets.is_empty() {
        Judgement::pass(format!("node {node}: no local pod server to connect to"))
    } else {
        judge_in_map(node, &conns, &keys, &socks)
    };
    if in_map.verdict == Verdict::Pass && !targets.is_empty() {
        in_map.evidence.push(format!(
            "node {node}: with {} connection(s) from the node to its pods live the sockhash held {} key(s): {}",
            conns.len(),
            keys.len(),
            keys.iter()
                .take(8)
                .map(|(k, c)| format!("{} -> {} cookie {c}", k.src, k.dst))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let mut j = merge(&[owned, in_map]);
    if let Ok(c) = obs::status_counters(cn) {
        j.evidence
            .push(format!("node {node}: datapathd status sockhash: {c}"));
    }
    j
}

/// A `dp_sockhash` key as the datapath documents it (datapath/README.md): the owning
/// end's address and port first.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    pub src: String,
    pub dst: String,
}

/// One socket `ss -tinHe` listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sock {
    pub state: String,
    pub local: String,
    pub peer: String,
    pub cookie: u64,
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
    let ip = |at: usize| std::net::Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
    Some(Tuple {
        src: format!("{}:{}", ip(4), word(b, 36)?),
        dst: format!("{}:{}", ip(20), word(b, 40)?),
    })
}

/// `bpftool -j map dump` of the sockhash -> (key, cookie).
pub fn parse_dump(json: &str) -> Result<Vec<(Tuple, u64)>, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("bpftool map dump: not JSON: {e}"))?;
    let mut out = Vec::new();
    for e in v.as_array().ok_or("bpftool map dump: not a JSON array")? {
        let bytes = |field: &str| -> Result<Vec<u8>, String> {
            e[field]
                .as_array()
                .ok_or(format!("entry without {field}: {e}"))?
                .iter()
                .map(|b| byte(b).ok_or(format!("bad byte in {field}: {e}")))
                .collect()
        };
        let key = bytes("key")?;
        let value = bytes("value")?;
        let tuple = decode_key(&key).ok_or(format!("undecodable key {key:?}"))?;
        let cookie = u64::from_ne_bytes(
            value
                .as_slice()
                .try_into()
                .map_err(|_| format!("value of {} bytes, want 8", value.len()))?,
        );
        out.push((tuple, cookie));
    }
    Ok(out)
}

/// `ss -tinHe` (no header): state, recv-q, send-q, local, peer, then `sk:<hex>` somewhere.
pub fn parse_ss(text: &str) -> Vec<Sock> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 5 {
                return None;
            }
            let cookie = f
                .iter()
                .find_map(|t| t.strip_prefix("sk:"))
                .and_then(|h| u64::from_str_radix(h, 16).ok())?;
            Some(Sock {
                state: f[0].to_string(),
                local: f[3].to_string(),
                peer: f[4].to_string(),
                cookie,
            })
        })
        .collect()
}

/// The judgement for one node: every key's cookie names a listed socket with that tuple.
pub fn judge(node: &str, keys: &[(Tuple, u64)], sockets: &[Sock]) -> Judgement {
    let by_cookie: HashMap<u64, &Sock> = sockets.iter().map(|s| (s.cookie, s)).collect();
    let mut bad = Vec::new();
    // Dump order is hash order: sort, so that evidence reads the same run to run.
    let mut keys: Vec<&(Tuple, u64)> = keys.iter().collect();
    keys.sort();
    for (k, cookie) in keys.iter().copied() {
        match by_cookie.get(cookie) {
            Some(s) if s.local == k.src && s.peer == k.dst => {}
            Some(s) => bad.push(format!(
                "node {node}: key {} -> {} holds cookie {cookie}, which is the socket {} -> {} ({}): a stale key",
                k.src, k.dst, s.local, s.peer, s.state
            )),
            None => bad.push(format!(
                "node {node}: key {} -> {} holds cookie {cookie}, which no socket of the node has",
                k.src, k.dst
            )),
        }
    }
    if bad.is_empty() {
        Judgement::pass(format!(
            "node {node}: all {} sockhash key(s) owned by a live socket with that tuple",
            keys.len()
        ))
    } else {
        Judgement::fail(
            format!(
                "node {node}: {} of {} sockhash key(s) not owned by a live socket with that tuple",
                bad.len(),
                keys.len()
            ),
            bad,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_json(src: [u8; 4], sp: u32, dst: [u8; 4], dp: u32, cookie: u64) -> String {
        let mut k = vec![0u8; 44];
        k[0..4].copy_from_slice(&2u32.to_ne_bytes());
        k[4..8].copy_from_slice(&src);
        k[20..24].copy_from_slice(&dst);
        k[36..40].copy_from_slice(&sp.to_ne_bytes());
        k[40..44].copy_from_slice(&dp.to_ne_bytes());
        let hex = |b: &[u8]| {
            b.iter()
                .map(|x| format!("\"0x{x:02x}\""))
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "{{\"key\":[{}],\"value\":[{}]}}",
            hex(&k),
            hex(&cookie.to_ne_bytes())
        )
    }

    fn t(src: &str, dst: &str) -> Tuple {
        Tuple {
            src: src.into(),
            dst: dst.into(),
        }
    }

    fn sock(local: &str, peer: &str, cookie: u64) -> Sock {
        Sock {
            state: "ESTAB".into(),
            local: local.into(),
            peer: peer.into(),
            cookie,
        }
    }

    #[test]
    fn both_ends_of_a_live_connection_must_be_in_the_map() {
        let conns = vec![ProbeConn {
            local: "172.31.0.1:40000".into(),
            peer: "10.244.1.2:8080".into(),
            cookie: 11,
        }];
        let socks = [
            sock("172.31.0.1:40000", "10.244.1.2:8080", 11),
            sock("10.244.1.2:8080", "172.31.0.1:40000", 12),
        ];
        let both = [
            (t("172.31.0.1:40000", "10.244.1.2:8080"), 11),
            (t("10.244.1.2:8080", "172.31.0.1:40000"), 12),
        ];
        assert_eq!(
            judge_in_map("n", &conns, &both, &socks).verdict,
            super::super::Verdict::Pass
        );
        // The incident: the server's insert failed, its key holds a decoy's cookie.
        let decoy = [
            (t("172.31.0.1:40000", "10.244.1.2:8080"), 11),
            (t("10.244.1.2:8080", "172.31.0.1:40000"), 99),
        ];
        let j = judge_in_map("n", &conns, &decoy, &socks);
        assert_eq!(j.verdict, super::super::Verdict::Fail);
        assert!(
            j.evidence[0].contains("server socket 10.244.1.2:8080 -> 172.31.0.1:40000 (cookie 12): its key holds cookie 99"),
            "{:?}",
            j.evidence
        );
        let j = judge_in_map("n", &conns, &both[..1], &socks);
        assert!(
            j.evidence[0].contains("is not in the sockhash"),
            "{:?}",
            j.evidence
        );
        // A connection that was gone when the map was read cannot be judged.
        assert_eq!(
            judge_in_map("n", &conns, &both, &socks[1..]).verdict,
            super::super::Verdict::Unknown
        );
    }

    #[test]
    fn a_planted_key_fails_naming_the_decoy() {
        let dump = format!(
            "[{},{}]",
            key_json([127, 0, 0, 1], 45830, [127, 0, 0, 2], 8080, 0x4bbf),
            key_json([127, 0, 0, 2], 8080, [127, 0, 0, 1], 40000, 0x6948)
        );
        let keys = parse_dump(&dump).expect("parse");
        assert_eq!(keys[0].0.src, "127.0.0.1:45830");
        let ss = "ESTAB 0 0 127.0.0.1:45830 127.0.0.2:8080 ino:1 sk:4bbf cgroup:/x <->\n\
                  ESTAB 0 0 127.0.0.1:57178 127.0.0.1:41253 ino:2 sk:6948 <->\n";
        let socks = parse_ss(ss);
        assert_eq!(socks.len(), 2);
        let j = judge("n1", &keys[..1], &socks);
        assert_eq!(j.verdict, super::super::Verdict::Pass);
        let j = judge("n1", &keys, &socks);
        assert_eq!(j.verdict, super::super::Verdict::Fail);
        assert!(
            j.evidence[0].contains("key 127.0.0.2:8080 -> 127.0.0.1:40000 holds cookie 26952, which is the socket 127.0.0.1:57178 -> 127.0.0.1:41253"),
            "{:?}",
            j.evidence
        );
    }
}
