//! sockhash-keys-live (incident C): every key of a node's pinned `dp_sockhash` is owned by
//! a live socket whose own tuple is the key. Judged from the kernel, not from the agent:
//! `bpftool -j map dump pinned <bpffs>/maps/dp_sockhash` (the values are 8 bytes wide, so
//! a lookup returns the socket cookie) against `ss -tinHe` in every namespace of the node
//! (the `sk:` field is the cookie in hex); `datapathd status --json` is a cross-check only.
//! A tuple check alone misses the namespace collision and planted keys: the cookie must
//! name a socket, and that socket's tuple must be the key.
//!
//! Not yet registered as an `Invariant` (it needs an `InvariantName` variant and the
//! agent deployed with `--accelerate`): the judgement below is complete and unit-tested.

use std::collections::HashMap;

use super::Judgement;

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
    for (k, cookie) in keys {
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
