//! Garbage collection of `dp_sockhash` keys (incident C in shared/DESIGN.md).
//!
//! A key is *live* when its value (the socket cookie, the map's values are 8 bytes wide)
//! names a live TCP socket whose own tuple is the key. A tuple check alone is not enough:
//! a planted key (or a second network namespace with the same addresses) can point at a
//! live socket of another connection. The live sockets come from sock_diag
//! (`NETLINK_SOCK_DIAG`, `inet_diag` dumps with cookies) in every network namespace of the
//! machine: keys carry no namespace, and the two ends of a node <-> pod connection live in
//! two namespaces.
//!
//! A key whose cookie belongs to a socket with another tuple is deleted at once; a key
//! whose cookie no namespace reports is deleted when the next round still finds none (a
//! namespace created between the listing and the dump is then seen). Before a delete the
//! key is read again and deleted only if it still holds the same cookie, so a connection
//! that took the key over in the meantime keeps it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs::File,
    io, mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{fd::AsRawFd, unix::fs::MetadataExt as _},
    path::PathBuf,
};

use datapath_common::{SockKey, FAMILY_INET, FAMILY_INET6};

use crate::netlink::{self, NlMsgHdr, NLMSG_DONE, NLMSG_ERROR};
use serde::Serialize;
use tracing::{info, warn};

use crate::maps::{BpfMap, MapError};

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("listing network namespaces under /proc")]
    Namespaces(#[source] io::Error),
    #[error("sock_diag dump in network namespace {netns}")]
    Diag {
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("the sock_diag thread panicked")]
    Thread,
    #[error(transparent)]
    Map(#[from] MapError),
}

/// A TCP socket the kernel reports, as its own end sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveSocket {
    pub key: SockKey,
    /// TCP state number (1 = ESTABLISHED, 10 = LISTEN, ...).
    pub state: u8,
    /// Inode of the network namespace it lives in.
    pub netns: u64,
}

/// Every TCP socket (IPv4 and IPv6) of every network namespace, by cookie.
pub fn live_sockets() -> Result<HashMap<u64, LiveSocket>, GcError> {
    let namespaces = namespaces().map_err(GcError::Namespaces)?;
    // setns changes only the calling thread: do the dumps on a thread of their own, which
    // ends with whatever namespace it entered last.
    let worker = std::thread::spawn(move || -> Result<HashMap<u64, LiveSocket>, GcError> {
        let mut out = HashMap::new();
        for (ino, path) in namespaces {
            let Ok(file) = File::open(&path) else {
                continue; // The process (and maybe its namespace) is gone.
            };
            // SAFETY: setns on a namespace file we hold open; it changes only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                continue;
            }
            for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
                let sockets = dump_tcp(family).map_err(|source| GcError::Diag {
                    netns: path.display().to_string(),
                    source,
                })?;
                for (cookie, key, state) in sockets {
                    out.insert(
                        cookie,
                        LiveSocket {
                            key,
                            state,
                            netns: ino,
                        },
                    );
                }
            }
        }
        Ok(out)
    });
    worker.join().map_err(|_| GcError::Thread)?
}

/// One namespace file per distinct network namespace: ours, the ones `ip netns` keeps
/// under /run/netns, and those of every process.
fn namespaces() -> io::Result<BTreeMap<u64, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut add = |path: PathBuf| {
        if let Ok(meta) = std::fs::metadata(&path) {
            out.entry(meta.ino()).or_insert(path);
        }
    };
    add(PathBuf::from("/proc/self/ns/net"));
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            add(e.path());
        }
    }
    for e in std::fs::read_dir("/proc")?.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            add(e.path().join("ns/net"));
        }
    }
    Ok(out)
}

// ---- sock_diag (linux/inet_diag.h, linux/sock_diag.h) ----

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagSockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    ifindex: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    hdr: NlMsgHdr,
    req: InetDiagReqV2,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// `(cookie, own tuple, state)` of every TCP socket of one family in this thread's netns.
fn dump_tcp(family: u8) -> io::Result<Vec<(u64, SockKey, u8)>> {
    let req = Request {
        hdr: NlMsgHdr {
            len: mem::size_of::<Request>() as u32,
            ty: SOCK_DIAG_BY_FAMILY,
            flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            seq: 1,
            pid: 0,
        },
        req: InetDiagReqV2 {
            family,
            protocol: libc::IPPROTO_TCP as u8,
            states: u32::MAX,
            ..Default::default()
        },
    };
    let fd = netlink::send_request(NETLINK_SOCK_DIAG, &req)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = netlink::recv(&fd, &mut buf)?;
        let data = &buf[..n];
        let mut off = 0usize;
        while off + mem::size_of::<NlMsgHdr>() <= data.len() {
            let hdr: NlMsgHdr = read_struct(&data[off..]);
            let len = hdr.len as usize;
            if len < mem::size_of::<NlMsgHdr>() || off + len > data.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated netlink message",
                ));
            }
            match hdr.ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let body = &data[off + mem::size_of::<NlMsgHdr>()..off + len];
                    let errno = if body.len() >= 4 {
                        i32::from_ne_bytes([body[0], body[1], body[2], body[3]])
                    } else {
                        -libc::EIO
                    };
                    if errno == 0 {
                        return Ok(out);
                    }
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                SOCK_DIAG_BY_FAMILY => {
                    let body = &data[off + mem::size_of::<NlMsgHdr>()..off + len];
                    if body.len() >= mem::size_of::<InetDiagMsg>() {
                        let m: InetDiagMsg = read_struct(body);
                        let cookie = u64::from(m.id.cookie[0]) | (u64::from(m.id.cookie[1]) << 32);
                        out.push((cookie, diag_key(&m), m.state));
                    }
                }
                _ => {}
            }
            // Messages are 4-byte aligned.
            off += (len + 3) & !3;
        }
    }
}

fn read_struct<T: Copy + Default>(bytes: &[u8]) -> T {
    let mut v = T::default();
    let n = mem::size_of::<T>().min(bytes.len());
    // SAFETY: T is a plain repr(C) integer struct; at most size_of::<T>() bytes are copied.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut v as *mut T).cast::<u8>(), n);
    }
    v
}

/// The socket's own tuple in `dp_sockhash`'s key layout (IPv4-mapped IPv6 as IPv4, as the
/// programs key it).
fn diag_key(m: &InetDiagMsg) -> SockKey {
    let mut key = SockKey {
        family: FAMILY_INET,
        src_addr: [0; 4],
        dst_addr: [0; 4],
        src_port: u32::from(u16::from_be(m.id.sport)),
        dst_port: u32::from(u16::from_be(m.id.dport)),
    };
    if m.family == libc::AF_INET as u8 {
        key.src_addr[0] = m.id.src[0];
        key.dst_addr[0] = m.id.dst[0];
        return key;
    }
    let mapped = 0xffffu32.to_be();
    let (s, d) = (m.id.src, m.id.dst);
    if s[0] == 0 && s[1] == 0 && s[2] == mapped && d[0] == 0 && d[1] == 0 && d[2] == mapped {
        key.src_addr[0] = s[3];
        key.dst_addr[0] = d[3];
    } else {
        key.family = FAMILY_INET6;
        key.src_addr = s;
        key.dst_addr = d;
    }
    key
}

// ---- judging keys ----

/// What one key of the map is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Its cookie's socket has exactly this tuple.
    Live,
    /// Its cookie's socket has another tuple (a planted key, a namespace collision).
    Foreign(SockKey),
    /// No namespace reports a socket with its cookie.
    Missing,
}

pub fn judge(key: &SockKey, cookie: u64, live: &HashMap<u64, LiveSocket>) -> Verdict {
    match live.get(&cookie) {
        Some(s) if s.key == *key => Verdict::Live,
        Some(s) => Verdict::Foreign(s.key),
        None => Verdict::Missing,
    }
}

/// Keeps what one round saw missing, for the next.
#[derive(Debug, Default)]
pub struct Gc {
    missing: BTreeSet<(SockKey, u64)>,
    /// The last round found the map full (logged once per streak).
    full: bool,
}

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub keys: usize,
    pub deleted: usize,
    pub missing: usize,
}

impl Gc {
    /// One round over the map.
    pub fn round(&mut self, map: &BpfMap) -> Result<Round, GcError> {
        // Keys first, then the sockets: a key made after the listing is simply not judged.
        let entries = map.entries::<SockKey, u64>()?;
        let live = live_sockets()?;
        let mut round = Round {
            keys: entries.len(),
            ..Round::default()
        };
        let mut missing_now = BTreeSet::new();
        for (key, cookie) in entries {
            let reason = match judge(&key, cookie, &live) {
                Verdict::Live => continue,
                Verdict::Foreign(owner) => format!(
                    "cookie {cookie} belongs to the socket {}",
                    render_tuple(&owner)
                ),
                Verdict::Missing => {
                    if !self.missing.contains(&(key, cookie)) {
                        missing_now.insert((key, cookie));
                        round.missing += 1;
                        continue;
                    }
                    format!("no socket has cookie {cookie} (two rounds)")
                }
            };
            // Delete only if the key still holds the cookie we judged.
            match map.get::<SockKey, u64>(&key) {
                Ok(Some(c)) if c == cookie => {}
                _ => continue,
            }
            if map.delete(&key)? {
                round.deleted += 1;
                warn!(key = %render_tuple(&key), %reason, "deleted a stale sockhash key");
            }
        }
        self.missing = missing_now;
        let left = round.keys - round.deleted;
        let full = left >= map.info.max_entries as usize;
        if full && !self.full {
            warn!(
                "{}",
                crate::status::sockhash_full(left, map.info.max_entries)
            );
        } else if !full && self.full {
            info!(
                entries = left,
                capacity = map.info.max_entries,
                "dp_sockhash pressure gone: new connections are accelerated again"
            );
        }
        self.full = full;
        if round.deleted > 0 {
            info!(
                keys = round.keys,
                deleted = round.deleted,
                "sockhash garbage collected"
            );
        }
        Ok(round)
    }
}

// ---- rendering ----

pub fn family_name(family: u32) -> &'static str {
    match family {
        FAMILY_INET => "ipv4",
        FAMILY_INET6 => "ipv6",
        _ => "unknown",
    }
}

pub fn addr_of(family: u32, addr: &[u32; 4]) -> IpAddr {
    if family == FAMILY_INET6 {
        let mut b = [0u8; 16];
        for (i, w) in addr.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(b))
    } else {
        IpAddr::V4(Ipv4Addr::from(addr[0].to_ne_bytes()))
    }
}

/// `ip:port` (IPv6 as `[ip]:port`).
pub fn endpoint(family: u32, addr: &[u32; 4], port: u32) -> String {
    match addr_of(family, addr) {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

pub fn render_tuple(k: &SockKey) -> String {
    format!(
        "{} {} -> {}",
        family_name(k.family),
        endpoint(k.family, &k.src_addr, k.src_port),
        endpoint(k.family, &k.dst_addr, k.dst_port)
    )
}

/// One key as `status --json` shows it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct KeyStatus {
    pub family: &'static str,
    pub src: String,
    pub dst: String,
    pub cookie: u64,
    pub live: bool,
    /// Why it is not live: the tuple of the socket its cookie names, or "no socket".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

pub fn key_status(key: &SockKey, cookie: u64, live: &HashMap<u64, LiveSocket>) -> KeyStatus {
    let verdict = judge(key, cookie, live);
    KeyStatus {
        family: family_name(key.family),
        src: endpoint(key.family, &key.src_addr, key.src_port),
        dst: endpoint(key.family, &key.dst_addr, key.dst_port),
        cookie,
        live: verdict == Verdict::Live,
        why: match verdict {
            Verdict::Live => None,
            Verdict::Foreign(owner) => Some(format!(
                "cookie belongs to the socket {}",
                render_tuple(&owner)
            )),
            Verdict::Missing => Some("no socket has this cookie".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> [u32; 4] {
        [u32::from_ne_bytes(a), 0, 0, 0]
    }

    fn key(sp: u32, dp: u32) -> SockKey {
        SockKey {
            family: FAMILY_INET,
            src_addr: v4([127, 0, 0, 1]),
            dst_addr: v4([127, 0, 0, 2]),
            src_port: sp,
            dst_port: dp,
        }
    }

    #[test]
    fn a_cookie_must_name_a_socket_with_the_same_tuple() {
        let mut live = HashMap::new();
        live.insert(
            7,
            LiveSocket {
                key: key(80, 4000),
                state: 1,
                netns: 1,
            },
        );
        assert_eq!(judge(&key(80, 4000), 7, &live), Verdict::Live);
        assert_eq!(
            judge(&key(80, 5000), 7, &live),
            Verdict::Foreign(key(80, 4000))
        );
        assert_eq!(judge(&key(80, 4000), 8, &live), Verdict::Missing);
        let s = key_status(&key(80, 5000), 7, &live);
        assert_eq!(
            (s.src.as_str(), s.dst.as_str(), s.live),
            ("127.0.0.1:80", "127.0.0.2:5000", false)
        );
        assert_eq!(
            s.why.as_deref(),
            Some("cookie belongs to the socket ipv4 127.0.0.1:80 -> 127.0.0.2:4000")
        );
    }

    #[test]
    fn mapped_ipv6_is_keyed_as_ipv4() {
        let mapped = 0xffffu32.to_be();
        let m = InetDiagMsg {
            family: libc::AF_INET6 as u8,
            id: InetDiagSockId {
                sport: 80u16.to_be(),
                dport: 4000u16.to_be(),
                src: [0, 0, mapped, u32::from_ne_bytes([127, 0, 0, 1])],
                dst: [0, 0, mapped, u32::from_ne_bytes([127, 0, 0, 2])],
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(diag_key(&m), key(80, 4000));
    }

    #[test]
    fn the_reversed_key_is_the_peers_view() {
        let k = key(80, 4000);
        let r = k.reversed();
        assert_eq!(
            render_tuple(&r),
            "ipv4 127.0.0.2:4000 -> 127.0.0.1:80".to_string()
        );
        assert_eq!(r.reversed(), k);
    }
}
