//! Workloads for socket acceleration (incident C in shared/DESIGN.md):
//!
//! - `plant-sockhash`: plant stale keys in a pinned sockhash, pointing at an established
//!   decoy socket, and keep the decoy open until killed.
//! - `churn`: many short connections (connect, one request, its answer, close), from a
//!   range of source ports so that they reuse planted tuples.
//! - `reqresp`: persistent connections carrying many requests, each with a unique token;
//!   every answer must echo that token on the same connection within a read timeout.
//!
//! The sockhash key layout is the datapath's documented contract (datapath/README.md),
//! re-encoded here on purpose: this tool judges the datapath and shares no code with it.

use std::ffi::CString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::mem;
use std::net::{SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cli::{ChurnArgs, KeyFor, PlantArgs, ReqRespArgs};
use crate::wire::{strip_line_end, Answer, ConnReport, ReqRespSummary, MAX_LINE};
use crate::{place, sock, EXIT_FAILED, EXIT_OK, EXIT_SETUP};

// ---- the sockhash key (datapath/README.md, "Socket acceleration") ----

/// `family u32, src addr [u32; 4], dst addr [u32; 4], src port u32, dst port u32`: 44
/// bytes, native endian integers; addresses in network byte order (IPv4 in the first
/// word); ports in host byte order. `src` is the end that owns the key.
pub fn sockhash_key(src: SocketAddrV4, dst: SocketAddrV4) -> [u8; 44] {
    let mut k = [0u8; 44];
    k[0..4].copy_from_slice(&2u32.to_ne_bytes());
    k[4..8].copy_from_slice(&src.ip().octets());
    k[20..24].copy_from_slice(&dst.ip().octets());
    k[36..40].copy_from_slice(&u32::from(src.port()).to_ne_bytes());
    k[40..44].copy_from_slice(&u32::from(dst.port()).to_ne_bytes());
    k
}

// ---- raw bpf(2): open a pin, update and look up an element ----

#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
#[derive(Default)]
pub(crate) struct ElemAttr {
    pub(crate) map_fd: u32,
    pub(crate) pad: u32,
    pub(crate) key: u64,
    pub(crate) value: u64,
    pub(crate) flags: u64,
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_GET: libc::c_long = 7;

pub(crate) fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a repr(C) prefix of union bpf_attr for cmd, valid for its size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        ..Default::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn map_update(map: &OwnedFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        ..Default::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

fn map_lookup_u64(map: &OwnedFd, key: &[u8]) -> io::Result<Option<u64>> {
    let mut value = [0u8; 8];
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        ..Default::default()
    };
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(Some(u64::from_ne_bytes(value))),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `SO_COOKIE` of a socket.
pub fn socket_cookie(fd: RawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len live across the call; len is cookie's size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(cookie)
    }
}

// ---- plant-sockhash ----

use dp_wire::{Decoy, Planted, PlantedKey};

pub fn plant(args: &PlantArgs) -> u8 {
    if let Err(e) = place::enter(&args.place) {
        eprintln!("{}", e.report());
        return EXIT_SETUP;
    }
    match plant_inner(args) {
        Ok((planted, _decoys)) => {
            let line = serde_json::to_string(&planted).unwrap_or_default();
            let mut out = io::stdout().lock();
            if writeln!(out, "planted {line}")
                .and_then(|()| out.flush())
                .is_err()
            {
                return EXIT_FAILED;
            }
            drop(out);
            // Keep the decoys (and their accepted peers) open until we are killed.
            loop {
                // SAFETY: pause() has no preconditions; it returns only on a signal.
                unsafe { libc::pause() };
            }
        }
        Err(e) => {
            eprintln!("dp-probe: plant-sockhash: {e}");
            EXIT_FAILED
        }
    }
}

/// The decoy connections (client, accepted server) and their listener, kept open.
type Decoys = (Vec<(TcpStream, TcpStream)>, std::net::TcpListener);

fn plant_inner(args: &PlantArgs) -> Result<(Planted, Decoys), String> {
    let map = obj_get(&args.map).map_err(|e| format!("opening {}: {e}", args.map.display()))?;
    // Established, non-listening decoys: connections to a listener of our own. One per
    // key: once the map has an sk_msg program, the kernel refuses (EBUSY) to put a
    // socket that is already in it under a second key.
    let listener = sock::tcp_listener(SocketAddrV4::new(args.decoy_ip, 0))
        .map_err(|e| format!("decoy listener on {}: {e}", args.decoy_ip))?;
    let std::net::SocketAddr::V4(laddr) = listener
        .local_addr()
        .map_err(|e| format!("decoy listener address: {e}"))?
    else {
        return Err("the decoy listener is not IPv4".into());
    };
    let mut pairs = Vec::new();
    let mut keys = Vec::new();
    for c in &args.client {
        let client = sock::tcp_connect(laddr, None, Duration::from_secs(5))
            .map_err(|e| format!("decoy connect to {laddr}: {e:?}"))?;
        let (server, _) = listener
            .accept()
            .map_err(|e| format!("decoy accept: {e}"))?;
        let cookie = socket_cookie(client.as_raw_fd()).map_err(|e| format!("SO_COOKIE: {e}"))?;
        let value = u64::try_from(client.as_raw_fd())
            .map_err(|_| "negative fd".to_string())?
            .to_ne_bytes();
        let decoy = Decoy {
            local: client
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            peer: client
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            cookie,
        };
        let (src, dst) = match args.key_for {
            KeyFor::Server => (args.server, *c),
            KeyFor::Client => (*c, args.server),
        };
        let key = sockhash_key(src, dst);
        map_update(&map, &key, &value)
            .map_err(|e| format!("BPF_MAP_UPDATE_ELEM {src} -> {dst}: {e}"))?;
        let got = map_lookup_u64(&map, &key)
            .map_err(|e| format!("BPF_MAP_LOOKUP_ELEM {src} -> {dst}: {e}"))?;
        if got != Some(cookie) {
            return Err(format!(
                "the key {src} -> {dst} reads back {got:?}, not the decoy's cookie {cookie} (is the map's value size 8?)"
            ));
        }
        keys.push(PlantedKey {
            family: "ipv4".into(),
            src: src.to_string(),
            dst: dst.to_string(),
            cookie,
            decoy,
        });
        pairs.push((client, server));
    }
    let first = keys
        .first()
        .map(|k| k.decoy.clone())
        .ok_or("no --client given")?;
    let planted = Planted {
        map: args.map.display().to_string(),
        key_for: match args.key_for {
            KeyFor::Server => "server",
            KeyFor::Client => "client",
        }
        .into(),
        keys,
        decoy: first,
    };
    Ok((planted, (pairs, listener)))
}

// ---- churn ----

pub use dp_wire::ChurnSummary;

pub fn churn(args: &ChurnArgs) -> u8 {
    if let Err(e) = place::enter(&args.place) {
        eprintln!("{}", e.report());
        return EXIT_SETUP;
    }
    let start = Instant::now();
    let mut s = ChurnSummary {
        to: args.to.to_string(),
        ..ChurnSummary::default()
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    let ports: Vec<u16> = match args.ports {
        Some((lo, hi)) => (lo..=hi).collect(),
        None => Vec::new(),
    };
    for i in 0..args.count {
        let bind = (!ports.is_empty())
            .then(|| SocketAddrV4::new(args.bind_ip, ports[i as usize % ports.len()]));
        let token = format!("churn-{}-{i}", std::process::id());
        s.connections += 1;
        match one_exchange(args.to, bind, &token, timeout) {
            Ok(()) => s.ok += 1,
            Err(f) => {
                s.failed += 1;
                if f.hung {
                    s.hung += 1;
                }
                if s.failures.len() < 20 {
                    s.failures.push(format!(
                        "{}: {}",
                        f.local.unwrap_or_else(|| "?".into()),
                        f.error
                    ));
                }
            }
        }
    }
    s.elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    print_json(&s, s.failed == 0)
}

struct ExchangeFailure {
    local: Option<String>,
    error: String,
    hung: bool,
}

fn one_exchange(
    to: SocketAddrV4,
    bind: Option<SocketAddrV4>,
    token: &str,
    timeout: Duration,
) -> Result<(), ExchangeFailure> {
    let fail =
        |local: Option<String>, error: String, hung: bool| ExchangeFailure { local, error, hung };
    let stream = sock::tcp_connect(to, bind, timeout).map_err(|e| {
        fail(
            bind.map(|b| b.to_string()),
            format!("connect: {e:?}"),
            false,
        )
    })?;
    // Close with RST-free FIN but without TIME_WAIT on our side would need SO_LINGER 0;
    // a planted tuple is reused only after the previous socket is gone, so use it.
    let _ = set_linger_zero(stream.as_raw_fd());
    let local = stream.local_addr().ok().map(|a| a.to_string());
    let mut conn = Conn::new(stream, timeout).map_err(|e| fail(local.clone(), e, false))?;
    match conn.request(token) {
        Outcome::Ok(_) => Ok(()),
        Outcome::Hung => Err(fail(
            local,
            format!("no answer within {timeout:?} (read timed out)"),
            true,
        )),
        Outcome::Cross(got) => Err(fail(local, format!("answer echoed {got:?}"), false)),
        Outcome::Error(e) => Err(fail(local, e, false)),
    }
}

fn set_linger_zero(fd: RawFd) -> io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: l lives across the call and the length is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

// ---- request/response on persistent connections ----

enum Outcome {
    /// Answered with our token, after this long.
    Ok(Duration),
    /// The read timed out: ESTABLISHED and silent.
    Hung,
    /// Answered with someone else's bytes.
    Cross(String),
    Error(String),
}

struct Conn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn new(stream: TcpStream, timeout: Duration) -> Result<Conn, String> {
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| format!("setsockopt(SO_RCVTIMEO): {e}"))?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| format!("setsockopt(SO_SNDTIMEO): {e}"))?;
        let _ = stream.set_nodelay(true);
        let reader = stream
            .try_clone()
            .map_err(|e| format!("dup the socket: {e}"))?;
        Ok(Conn {
            writer: stream,
            reader: BufReader::new(reader),
        })
    }

    fn request(&mut self, token: &str) -> Outcome {
        let start = Instant::now();
        if let Err(e) = self.writer.write_all(format!("{token}\n").as_bytes()) {
            return Outcome::Error(format!("write: {e}"));
        }
        let mut line = String::new();
        match (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
        {
            Ok(0) => Outcome::Error("the connection closed before an answer".into()),
            Ok(_) => match serde_json::from_str::<Answer>(strip_line_end(&line)) {
                Ok(a) if a.echo == token => Outcome::Ok(start.elapsed()),
                Ok(a) => Outcome::Cross(a.echo),
                Err(e) => Outcome::Cross(format!("unreadable answer {:?}: {e}", line)),
            },
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Outcome::Hung
            }
            Err(e) => Outcome::Error(format!("read: {e}")),
        }
    }
}

pub fn reqresp(args: &ReqRespArgs) -> u8 {
    if let Err(e) = place::enter(&args.place) {
        eprintln!("{}", e.report());
        return EXIT_SETUP;
    }
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut s = ReqRespSummary {
        to: args.to.to_string(),
        ..ReqRespSummary::default()
    };
    let mut conns: Vec<Option<Conn>> = Vec::new();
    for i in 0..args.connections {
        // Port 0 binds only the address: every connection gets its own ephemeral port.
        let bind = args.bind.map(|b| match b.port() {
            0 => b,
            p => SocketAddrV4::new(*b.ip(), p.wrapping_add(i as u16)),
        });
        let report_bind = bind.map(|b| b.to_string()).unwrap_or_default();
        match sock::tcp_connect(args.to, bind, timeout) {
            Ok(stream) => {
                let mut r = ConnReport {
                    local: stream
                        .local_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    peer: stream
                        .peer_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    cookie: socket_cookie(stream.as_raw_fd()).unwrap_or(0),
                    ..ConnReport::default()
                };
                match Conn::new(stream, timeout) {
                    Ok(c) => conns.push(Some(c)),
                    Err(e) => {
                        r.first_problem = Some(e);
                        conns.push(None);
                    }
                }
                s.connections.push(r);
            }
            Err(e) => {
                s.connect_failures += 1;
                s.connections.push(ConnReport {
                    local: report_bind,
                    first_problem: Some(format!("connect: {e:?}")),
                    ..ConnReport::default()
                });
                conns.push(None);
            }
        }
    }
    let interval = Duration::from_millis(args.interval_ms);
    let start = Instant::now();
    let mut lat = Vec::new();
    for seq in 0..args.requests {
        for (i, slot) in conns.iter_mut().enumerate() {
            let Some(conn) = slot else { continue };
            let r = &mut s.connections[i];
            let token = format!("tok-{}-{i}-{seq}", std::process::id());
            r.requests += 1;
            s.requests += 1;
            let problem = match conn.request(&token) {
                Outcome::Ok(d) => {
                    r.ok += 1;
                    s.ok += 1;
                    lat.push(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
                    None
                }
                Outcome::Hung => {
                    r.hung += 1;
                    s.hung += 1;
                    Some(format!(
                        "request {token}: no answer within {timeout:?} (read timed out; the connection is established and silent)"
                    ))
                }
                Outcome::Cross(got) => {
                    r.cross_delivered += 1;
                    s.cross_delivered += 1;
                    Some(format!("request {token}: the answer echoed {got:?}"))
                }
                Outcome::Error(e) => {
                    r.errors += 1;
                    s.errors += 1;
                    Some(format!("request {token}: {e}"))
                }
            };
            if let Some(p) = problem {
                // The stream is out of step now: later answers would be misattributed.
                r.first_problem.get_or_insert(p);
                *slot = None;
            }
        }
        if !interval.is_zero() {
            std::thread::sleep(interval);
        }
    }
    let elapsed = start.elapsed();
    s.elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    s.rate_per_s = if elapsed.as_secs_f64() > 0.0 {
        f64::from(s.ok) / elapsed.as_secs_f64()
    } else {
        0.0
    };
    lat.sort_unstable();
    for (name, q) in [("p50", 50usize), ("p99", 99), ("max", 100)] {
        if let Some(v) = nearest_rank(&lat, q) {
            s.latency_us.insert(name.to_string(), v);
        }
    }
    let ok = s.hung == 0 && s.cross_delivered == 0 && s.errors == 0 && s.connect_failures == 0;
    print_json(&s, ok)
}

fn nearest_rank(sorted: &[u64], pct: usize) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (pct * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

fn print_json<T: Serialize>(v: &T, ok: bool) -> u8 {
    let line = serde_json::to_string(v).unwrap_or_default();
    let mut out = io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() || !ok {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout_is_the_documented_one() {
        let k = sockhash_key(
            "127.0.0.2:8080".parse().expect("addr"),
            "127.0.0.1:40000".parse().expect("addr"),
        );
        assert_eq!(&k[0..4], &2u32.to_ne_bytes());
        assert_eq!(&k[4..8], &[127, 0, 0, 2]);
        assert_eq!(&k[8..20], &[0u8; 12]);
        assert_eq!(&k[20..24], &[127, 0, 0, 1]);
        assert_eq!(&k[36..40], &8080u32.to_ne_bytes());
        assert_eq!(&k[40..44], &40000u32.to_ne_bytes());
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&v, 50), Some(50));
        assert_eq!(nearest_rank(&v, 99), Some(99));
        assert_eq!(nearest_rank(&v, 100), Some(100));
        assert_eq!(nearest_rank(&[], 50), None);
    }
}
