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

use super::{merge, per_node, unknown_unless_harness, Context, Invariant, Judgement, Verdict};
use crate::cluster::ClusterNode;
use crate::observe::features::{self, KernelNeed};
use crate::observe::sockhash::{self as obs, Scope, Target, Tuple};
use crate::observe::ss::Sock;
use crate::observe::ObserveError;
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
    pub local: SocketAddrV4,
    pub peer: SocketAddrV4,
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
    let at = |src: SocketAddrV4, dst: SocketAddrV4| {
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
        match at(c.local, c.peer) {
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
            .find(|s| s.is_established() && s.local == c.peer && s.peer == c.local);
        match (server, at(c.peer, c.local)) {
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

    fn check(&self, ctx: &Context<'_>) -> Result<Judgement, ObserveError> {
        Ok(merge(&per_node(ctx, |cn| check_node(ctx, cn).map(Some))?))
    }
}

/// The node's ends of ESTABLISHED connections from its address to a local pod server.
pub fn node_to_pod_connections(
    sockets: &[Sock],
    scope: &Scope,
    targets: &[Target],
) -> Vec<ProbeConn> {
    sockets
        .iter()
        .filter(|s| s.is_established())
        .filter_map(|s| Some((s.local.v4()?, s.peer.v4()?, s.cookie)))
        .filter(|(local, peer, _)| {
            *local.ip() == scope.node_addr && targets.iter().any(|t| t.addr == *peer)
        })
        .map(|(local, peer, cookie)| ProbeConn {
            local,
            peer,
            cookie,
        })
        .collect()
}

/// A node's sockhash keys (with cookies) and its sockets, read one after the other.
type Observation = (Vec<(Tuple, u64)>, Vec<Sock>);

fn observe(ctx: &Context<'_>, cn: &ClusterNode) -> Result<Observation, ObserveError> {
    let keys = obs::dump(cn)?;
    let socks = obs::sockets(ctx.cluster, cn)?;
    Ok((keys, socks))
}

fn check_node(ctx: &Context<'_>, cn: &ClusterNode) -> Result<Judgement, ObserveError> {
    let node = cn.name();
    let unknown =
        |e: ObserveError| unknown_unless_harness(format!("node {node}: cannot observe"), e);
    let scope = match Scope::of(cn) {
        Ok(s) => s,
        Err(e) => return unknown(e),
    };
    let targets = obs::local_targets(ctx.cluster, ctx.services, node);
    let mut probes = match obs::hold_connections(
        cn,
        scope.node_addr,
        &targets,
        CONNECTIONS,
        REQUESTS,
        INTERVAL_MS,
        "sockhash-keys-live",
    ) {
        Ok(p) => p,
        Err(e) => return unknown(e),
    };
    if let Err(e) = probes.wait_established(ctx.cluster, ESTABLISH) {
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
    Ok(j)
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
            Some(s) if k.is_of(s) => {}
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
    use crate::observe::sockhash::parse_dump;
    use crate::observe::ss;

    /// Recorded on node-a of suite sockmap (netns provider) while two connections from
    /// the node's address to its local pod server were live (testdata/README.md): the
    /// pinned sockhash, then `ss -tanHe` in the node's namespace and in its pods'.
    const DUMP: &str = include_str!("testdata/sockhash.dump.json");
    const SS: &str = include_str!("testdata/sockhash.ss.txt");
    /// node-a's address and its pod server, as the netns provider gave them then.
    const NODE_ADDR: &str = "172.31.0.1";
    const SERVER: &str = "10.244.1.3:8080";

    fn recorded() -> (Vec<(Tuple, u64)>, Vec<Sock>) {
        (
            parse_dump(DUMP).expect("recorded dump reads"),
            ss::parse(SS).expect("recorded ss reads"),
        )
    }

    fn scope() -> Scope {
        let node: std::net::Ipv4Addr = NODE_ADDR.parse().unwrap();
        Scope {
            node_addr: node,
            nets: vec![(node, 32)],
        }
    }

    fn targets() -> Vec<Target> {
        vec![Target {
            pod: "web-a1".into(),
            addr: SERVER.parse().unwrap(),
        }]
    }

    #[test]
    fn recorded_keys_are_owned_and_both_ends_are_in_the_map() {
        let (keys, socks) = recorded();
        assert!(keys.len() >= 4, "{keys:?}");
        let j = judge("node-a", &keys, &socks);
        assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
        let conns = node_to_pod_connections(&socks, &scope(), &targets());
        assert_eq!(conns.len(), 2, "{conns:?}");
        let j = judge_in_map("node-a", &conns, &keys, &socks);
        assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
    }

    #[test]
    fn a_key_holding_another_sockets_cookie_is_stale() {
        let (mut keys, socks) = recorded();
        keys.sort();
        // The incident: a key whose cookie names another, live socket (planted or leaked).
        let other = socks
            .iter()
            .find(|s| !keys.iter().any(|(_, c)| *c == s.cookie))
            .expect("a socket outside the map")
            .clone();
        let (k, _) = keys[0];
        keys[0].1 = other.cookie;
        let j = judge("node-a", &keys, &socks);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.evidence[0].contains(&format!(
                "key {} -> {} holds cookie {}, which is the socket {} -> {} ({}): a stale key",
                k.src, k.dst, other.cookie, other.local, other.peer, other.state
            )),
            "{:?}",
            j.evidence
        );
        keys[0].1 = u64::MAX;
        let j = judge("node-a", &keys, &socks);
        assert!(
            j.evidence[0].contains("which no socket of the node has"),
            "{:?}",
            j.evidence
        );
    }

    #[test]
    fn a_missing_or_foreign_key_of_a_live_connection_fails() {
        let (keys, socks) = recorded();
        let conns = node_to_pod_connections(&socks, &scope(), &targets());
        let c = &conns[0];
        // The server's insert failed: its key is missing.
        let without: Vec<_> = keys
            .iter()
            .copied()
            .filter(|(k, _)| !(k.src == c.peer && k.dst == c.local))
            .collect();
        let j = judge_in_map("node-a", &conns, &without, &socks);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.evidence[0].contains(&format!("server socket {} -> {} (cookie", c.peer, c.local))
                && j.evidence[0].contains("is not in the sockhash"),
            "{:?}",
            j.evidence
        );
        // ... or holds a decoy's cookie.
        let decoy: Vec<_> = keys
            .iter()
            .map(|(k, cookie)| {
                if k.src == c.peer && k.dst == c.local {
                    (*k, 99)
                } else {
                    (*k, *cookie)
                }
            })
            .collect();
        let j = judge_in_map("node-a", &conns, &decoy, &socks);
        assert!(
            j.evidence[0].contains("its key holds cookie 99"),
            "{:?}",
            j.evidence
        );
        // A connection gone when the map was read cannot be judged.
        let gone: Vec<Sock> = socks
            .iter()
            .filter(|s| !conns.iter().any(|c| c.cookie == s.cookie))
            .cloned()
            .collect();
        assert_eq!(
            judge_in_map("node-a", &conns, &keys, &gone).verdict,
            Verdict::Unknown
        );
    }
}
