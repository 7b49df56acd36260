//! `ss -tanHe`: a namespace's TCP sockets with their cookies (`sk:` in hex, the number
//! `SO_COOKIE` and the sockhash's values give).

use std::fmt;
use std::net::SocketAddrV4;
use std::str::FromStr;

/// A TCP socket's state, as `ss` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    /// `UNCONN`: closed.
    Unconnected,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
}

/// The names `ss` prints (iproute2 misc/ss.c `sstate_name`).
const STATE_NAMES: [(TcpState, &str); 12] = [
    (TcpState::Established, "ESTAB"),
    (TcpState::SynSent, "SYN-SENT"),
    (TcpState::SynRecv, "SYN-RECV"),
    (TcpState::FinWait1, "FIN-WAIT-1"),
    (TcpState::FinWait2, "FIN-WAIT-2"),
    (TcpState::TimeWait, "TIME-WAIT"),
    (TcpState::Unconnected, "UNCONN"),
    (TcpState::CloseWait, "CLOSE-WAIT"),
    (TcpState::LastAck, "LAST-ACK"),
    (TcpState::Listen, "LISTEN"),
    (TcpState::Closing, "CLOSING"),
    (TcpState::NewSynRecv, "NEW-SYN-RECV"),
];

impl FromStr for TcpState {
    type Err = SsError;
    fn from_str(s: &str) -> Result<TcpState, SsError> {
        STATE_NAMES
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(st, _)| *st)
            .ok_or_else(|| SsError::State(s.to_string()))
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = STATE_NAMES
            .iter()
            .find(|(st, _)| st == self)
            .map_or("?", |(_, n)| n);
        f.write_str(name)
    }
}

/// One end of a socket as `ss` prints it: an IPv4 address and port, or anything else
/// (IPv6, a wildcard `0.0.0.0:*`, a device-bound `127.0.0.53%lo:53`), kept as printed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    V4(SocketAddrV4),
    Other(String),
}

impl Endpoint {
    pub fn parse(s: &str) -> Endpoint {
        s.parse()
            .map_or_else(|_| Endpoint::Other(s.to_string()), Endpoint::V4)
    }

    pub fn v4(&self) -> Option<SocketAddrV4> {
        match self {
            Endpoint::V4(a) => Some(*a),
            Endpoint::Other(_) => None,
        }
    }
}

impl PartialEq<SocketAddrV4> for Endpoint {
    fn eq(&self, other: &SocketAddrV4) -> bool {
        self.v4() == Some(*other)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::V4(a) => a.fmt(f),
            Endpoint::Other(s) => f.write_str(s),
        }
    }
}

/// One socket `ss -tanHe` listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sock {
    pub state: TcpState,
    pub local: Endpoint,
    pub peer: Endpoint,
    pub cookie: u64,
}

impl Sock {
    pub fn is_established(&self) -> bool {
        self.state == TcpState::Established
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SsError {
    #[error("unknown TCP state `{0}`")]
    State(String),
    #[error("line {line}: fewer than 5 fields: `{text}`")]
    Short { line: usize, text: String },
    #[error("line {line}: bad cookie `sk:{hex}`")]
    Cookie { line: usize, hex: String },
}

/// `ss -tanHe` (no header): state, recv-q, send-q, local, peer, then `sk:<hex>` among the
/// details. A socket without `sk:` (ss prints it only when the kernel gives a cookie) has
/// nothing to judge by and is left out.
pub fn parse(text: &str) -> Result<Vec<Sock>, SsError> {
    let mut socks = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        if f.len() < 5 {
            return Err(SsError::Short {
                line: i + 1,
                text: l.to_string(),
            });
        }
        let state: TcpState = f[0].parse()?;
        let Some(hex) = f.iter().find_map(|t| t.strip_prefix("sk:")) else {
            continue;
        };
        let cookie = u64::from_str_radix(hex, 16).map_err(|_| SsError::Cookie {
            line: i + 1,
            hex: hex.to_string(),
        })?;
        socks.push(Sock {
            state,
            local: Endpoint::parse(f[3]),
            peer: Endpoint::parse(f[4]),
            cookie,
        });
    }
    Ok(socks)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ss -tanHe` in a node's namespace and its pods', as recorded for sockhash-keys-live
    /// (invariant/testdata/README.md).
    const RECORDED: &str = include_str!("../invariant/testdata/sockhash.ss.txt");

    #[test]
    fn recorded_output_parses_with_states_and_cookies() {
        let socks = parse(RECORDED).expect("parses");
        assert_eq!(socks.len(), RECORDED.lines().count());
        let listen = socks
            .iter()
            .find(|s| {
                s.state == TcpState::Listen
                    && s.local == "10.244.1.3:8080".parse::<SocketAddrV4>().unwrap()
            })
            .expect("the pod's server");
        assert_eq!(listen.peer, Endpoint::Other("0.0.0.0:*".into()));
        assert_eq!(listen.cookie, 0x54c60);
        let est: Vec<&Sock> = socks
            .iter()
            .filter(|s| {
                s.is_established() && s.peer == "10.244.1.3:8080".parse::<SocketAddrV4>().unwrap()
            })
            .collect();
        assert_eq!(est.len(), 2, "{est:?}");
        assert!(socks.iter().any(|s| s.state == TcpState::TimeWait));
    }

    #[test]
    fn a_state_ss_never_printed_is_an_error() {
        let e = parse("ESTABLISHED 0 0 1.2.3.4:1 5.6.7.8:2 ino:1 sk:1f <->\n").unwrap_err();
        assert_eq!(e.to_string(), "unknown TCP state `ESTABLISHED`");
        assert!(parse("ESTAB 0 0 1.2.3.4:1 5.6.7.8:2 sk:zz\n").is_err());
        assert_eq!(TcpState::FinWait1.to_string(), "FIN-WAIT-1");
    }
}
