//! `dp-probe connect`: attempts against one address, one JSON line each.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::cli::{ConnectArgs, Proto};
use crate::sock::{self, ConnectError};
use crate::wire::{strip_line_end, Answer, Attempt, MAX_LINE};
use crate::{place, EXIT_FAILED, EXIT_OK, EXIT_SETUP};

/// What one attempt needs to know.
#[derive(Debug, Clone)]
pub struct Target {
    pub to: SocketAddrV4,
    pub proto: Proto,
    pub payload: String,
    pub timeout: Duration,
    pub bind: Option<SocketAddrV4>,
}

pub fn run(args: &ConnectArgs) -> u8 {
    if let Err(e) = place::enter(&args.place) {
        eprintln!("{}", e.report());
        return EXIT_SETUP;
    }
    let target = Target {
        to: args.to,
        proto: args.proto,
        payload: args.payload.clone(),
        timeout: Duration::from_millis(args.timeout_ms),
        bind: args.bind,
    };
    let mut all_ok = true;
    let mut out = io::stdout().lock();
    for _ in 0..args.count {
        let a = attempt(&target);
        all_ok &= a.ok;
        // Serializing a struct of strings and numbers cannot fail; a closed stdout ends us.
        let line = serde_json::to_string(&a).unwrap_or_default();
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return EXIT_FAILED;
        }
    }
    if all_ok {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

/// A failed step: errno when the OS gave one, and a text naming the step.
struct Failure {
    errno: Option<i32>,
    error: String,
}

impl Failure {
    fn os(call: &str, e: &io::Error) -> Self {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) && call == "read"
        {
            return Self::timed_out("the answer");
        }
        Failure {
            errno: e.raw_os_error(),
            error: format!("{call}: {e}"),
        }
    }
    fn timed_out(what: &str) -> Self {
        Failure {
            errno: Some(libc::ETIMEDOUT),
            error: format!("timed out waiting for {what}"),
        }
    }
    fn other(error: String) -> Self {
        Failure { errno: None, error }
    }
}

impl From<ConnectError> for Failure {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Os { call, source } => Failure::os(call, &source),
            ConnectError::TimedOut => Failure::timed_out("the connection"),
        }
    }
}

/// One attempt, everything closed before it returns (the close is part of `elapsed_us`).
pub fn attempt(t: &Target) -> Attempt {
    let start = Instant::now();
    let deadline = start + t.timeout;
    let mut a = Attempt {
        ok: false,
        proto: t.proto.as_str().to_owned(),
        to: t.to.to_string(),
        peer: None,
        local: None,
        backend: None,
        echo: None,
        errno: None,
        error: None,
        elapsed_us: 0,
        seen_as: None,
    };
    let result = match t.proto {
        Proto::Tcp => tcp(t, deadline, &mut a),
        Proto::Udp => udp(t, deadline, &mut a),
    };
    match result.and_then(|answer| judge(&t.payload, answer, &mut a)) {
        Ok(()) => a.ok = true,
        Err(f) => {
            a.errno = f.errno;
            a.error = Some(f.error);
        }
    }
    a.elapsed_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    a
}

fn left(deadline: Instant, what: &str) -> Result<Duration, Failure> {
    let d = deadline.saturating_duration_since(Instant::now());
    // SO_RCVTIMEO of zero would mean "block forever".
    if d < Duration::from_micros(1) {
        Err(Failure::timed_out(what))
    } else {
        Ok(d)
    }
}

fn tcp(t: &Target, deadline: Instant, a: &mut Attempt) -> Result<String, Failure> {
    let stream: TcpStream = sock::tcp_connect(t.to, t.bind, left(deadline, "the connection")?)?;
    a.local = stream.local_addr().ok().map(|s| s.to_string());
    // getpeername(): with socket-LB this is where the service address must show.
    a.peer = Some(
        stream
            .peer_addr()
            .map_err(|e| Failure::os("getpeername", &e))?
            .to_string(),
    );
    stream
        .set_write_timeout(Some(left(deadline, "the send")?))
        .map_err(|e| Failure::os("setsockopt", &e))?;
    (&stream)
        .write_all(format!("{}\n", t.payload).as_bytes())
        .map_err(|e| Failure::os("write", &e))?;
    stream
        .set_read_timeout(Some(left(deadline, "the answer")?))
        .map_err(|e| Failure::os("setsockopt", &e))?;
    let mut line = String::new();
    let n = BufReader::new((&stream).take(MAX_LINE as u64))
        .read_line(&mut line)
        .map_err(|e| Failure::os("read", &e))?;
    if n == 0 {
        return Err(Failure::other(
            "the connection closed before an answer".to_owned(),
        ));
    }
    Ok(line)
}

fn udp(t: &Target, deadline: Instant, a: &mut Attempt) -> Result<String, Failure> {
    let socket = match t.bind {
        Some(local) => sock::udp_socket(local).map_err(|e| Failure::os("bind", &e))?,
        None => UdpSocket::bind("0.0.0.0:0").map_err(|e| Failure::os("bind", &e))?,
    };
    // Unconnected on purpose: this is the sendmsg4/recvmsg4 path of socket-LB.
    socket
        .send_to(t.payload.as_bytes(), t.to)
        .map_err(|e| Failure::os("sendto", &e))?;
    a.local = socket.local_addr().ok().map(|s| s.to_string());
    socket
        .set_read_timeout(Some(left(deadline, "the answer")?))
        .map_err(|e| Failure::os("setsockopt", &e))?;
    let mut buf = vec![0u8; MAX_LINE];
    let (n, from): (usize, SocketAddr) = socket
        .recv_from(&mut buf)
        .map_err(|e| Failure::os("read", &e))?;
    a.peer = Some(from.to_string());
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Reads the answer into the attempt; ok only when the request came back unchanged.
fn judge(payload: &str, raw: String, a: &mut Attempt) -> Result<(), Failure> {
    let answer: Answer = serde_json::from_str(strip_line_end(&raw)).map_err(|e| {
        Failure::other(format!("unreadable answer {:?}: {e}", strip_line_end(&raw)))
    })?;
    a.backend = Some(answer.backend);
    a.seen_as = Some(answer.peer.clone());
    a.echo = Some(answer.echo.clone());
    if answer.echo != payload {
        return Err(Failure::other(format!(
            "echo mismatch: sent {payload:?}, got {:?}",
            answer.echo
        )));
    }
    Ok(())
}
