//! `dp-probe hold`: one long-lived TCP connection that keeps carrying payload. It sends
//! `hold-<seq>` every interval and waits for its answer; one [`HoldEvent`] line per event
//! (opened, answered, ended) on stdout, flushed at once so that a reader sees each event
//! as it happens. The connection is never replaced: when it ends (reset, closed, an
//! answer that is not ours, no answer within `--give-up-ms`) the probe says why and
//! exits, so a broken connection stays visible in its file (cilium-cli's conn-disrupt
//! test keeps its connections the same way).

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cli::HoldArgs;
use crate::sock::{self, ConnectError};
use crate::wire::{strip_line_end, Answer, HoldEvent, MAX_LINE};
use crate::{place, EXIT_FAILED, EXIT_SETUP};

pub fn run(args: &HoldArgs) -> u8 {
    if let Err(e) = place::enter(&args.place) {
        eprintln!("{}", e.report());
        return EXIT_SETUP;
    }
    let mut out = io::stdout().lock();
    let mut emit = |e: &HoldEvent| -> bool {
        // Serializing strings and numbers cannot fail; a closed stdout ends us.
        let line = serde_json::to_string(e).unwrap_or_default();
        writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
    };
    let ended = |seq: u64, errno: Option<i32>, error: String| HoldEvent::Ended {
        at_ms: now_ms(),
        seq,
        errno,
        error,
    };
    let stream = match sock::tcp_connect(
        args.to,
        None,
        Duration::from_millis(args.connect_timeout_ms),
    ) {
        Ok(s) => s,
        Err(ConnectError::Os { call, source }) => {
            emit(&ended(
                0,
                source.raw_os_error(),
                format!("{call}: {source}"),
            ));
            return EXIT_FAILED;
        }
        Err(ConnectError::TimedOut) => {
            emit(&ended(
                0,
                Some(libc::ETIMEDOUT),
                "timed out waiting for the connection".into(),
            ));
            return EXIT_FAILED;
        }
    };
    let addr = |a: io::Result<std::net::SocketAddr>| {
        a.map_or_else(|e| format!("?({e})"), |a| a.to_string())
    };
    if !emit(&HoldEvent::Opened {
        at_ms: now_ms(),
        to: args.to.to_string(),
        local: addr(stream.local_addr()),
        peer: addr(stream.peer_addr()),
    }) {
        return EXIT_FAILED;
    }
    let give_up = Duration::from_millis(args.give_up_ms);
    let interval = Duration::from_millis(args.interval_ms);
    let mut seq = 0u64;
    loop {
        seq += 1;
        let event = match exchange(&stream, seq, give_up) {
            Ok((backend, rtt)) => HoldEvent::Answered {
                at_ms: now_ms(),
                seq,
                backend,
                rtt_us: u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX),
            },
            Err((errno, error)) => ended(seq, errno, error),
        };
        let done = matches!(event, HoldEvent::Ended { .. });
        if !emit(&event) || done {
            return EXIT_FAILED;
        }
        // The pace of the requests, not a wait for a condition.
        std::thread::sleep(interval);
    }
}

/// One request and its answer; the answering backend and the round trip, or why not.
fn exchange(
    stream: &TcpStream,
    seq: u64,
    give_up: Duration,
) -> Result<(String, Duration), (Option<i32>, String)> {
    let os = |call: &str, e: io::Error| {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            (
                Some(libc::ETIMEDOUT),
                format!(
                    "no answer to request {seq} within {} ms",
                    give_up.as_millis()
                ),
            )
        } else {
            (e.raw_os_error(), format!("{call}: {e}"))
        }
    };
    let request = format!("hold-{seq}");
    let sent = Instant::now();
    stream
        .set_write_timeout(Some(give_up))
        .and_then(|()| stream.set_read_timeout(Some(give_up)))
        .map_err(|e| os("setsockopt", e))?;
    (&mut &*stream)
        .write_all(format!("{request}\n").as_bytes())
        .map_err(|e| os("write", e))?;
    // The server answers one line per request line; reading byte-wise up to the newline
    // keeps nothing buffered past this answer.
    let mut line = Vec::new();
    let n = BufReader::with_capacity(1, io::Read::take(stream, MAX_LINE as u64))
        .read_until(b'\n', &mut line)
        .map_err(|e| os("read", e))?;
    let rtt = sent.elapsed();
    if n == 0 {
        return Err((
            None,
            format!("the peer closed the connection before answering request {seq}"),
        ));
    }
    let text = String::from_utf8_lossy(&line);
    let answer: Answer = serde_json::from_str(strip_line_end(&text)).map_err(|e| {
        (
            None,
            format!("unreadable answer {:?}: {e}", strip_line_end(&text)),
        )
    })?;
    if answer.echo != request {
        return Err((
            None,
            format!(
                "echo mismatch: sent {request:?}, got {:?} from {}",
                answer.echo, answer.backend
            ),
        ));
    }
    Ok((answer.backend, rtt))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A real server (`serve`'s answer format) that answers `n` requests and then resets.
    #[test]
    fn answers_then_names_the_end() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (conn, peer) = listener.accept().expect("accept");
            let mut r = BufReader::new(conn.try_clone().expect("clone"));
            for _ in 0..2 {
                let mut l = String::new();
                r.read_line(&mut l).expect("request");
                let a = Answer {
                    backend: "b1".into(),
                    local: addr.to_string(),
                    peer: peer.to_string(),
                    echo: strip_line_end(&l).to_owned(),
                };
                writeln!(&conn, "{}", serde_json::to_string(&a).expect("json")).expect("answer");
            }
            drop(r);
            drop(conn);
        });
        let stream = TcpStream::connect(addr).expect("connect");
        let give_up = Duration::from_secs(5);
        assert_eq!(exchange(&stream, 1, give_up).expect("answered").0, "b1");
        assert_eq!(exchange(&stream, 2, give_up).expect("answered").0, "b1");
        server.join().expect("server");
        let (_, error) = exchange(&stream, 3, give_up).expect_err("the server is gone");
        assert!(
            error.contains("closed the connection before answering request 3")
                || error.contains("reset"),
            "{error}"
        );
    }
}
