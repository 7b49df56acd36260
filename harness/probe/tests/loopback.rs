//! Round trips through the real binary on 127.0.0.1 (the only addresses a host test uses).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddrV4, TcpListener, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

const PROBE: &str = env!("CARGO_BIN_EXE_dp-probe");

/// A `dp-probe serve` child, killed (by its own pid) and reaped on drop.
struct Server {
    child: Child,
    tcp: SocketAddrV4,
    udp: SocketAddrV4,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_tcp() -> SocketAddrV4 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free tcp port");
    match l.local_addr().expect("local addr") {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("IPv4 expected, got {other}"),
    }
}

fn free_udp() -> SocketAddrV4 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind a free udp port");
    match s.local_addr().expect("local addr") {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("IPv4 expected, got {other}"),
    }
}

fn serve(id: &str) -> Server {
    let (tcp, udp) = (free_tcp(), free_udp());
    let mut child = Command::new(PROBE)
        .args([
            "serve",
            "--id",
            id,
            "--tcp",
            &tcp.to_string(),
            "--udp",
            &udp.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn dp-probe serve");
    let stdout = child.stdout.take().expect("piped stdout");
    let server = Server { child, tcp, udp };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("serve printed nothing within 10 s");
    assert_eq!(line, "ready\n", "serve's first line");
    server
}

fn probe(args: &[&str]) -> Output {
    Command::new(PROBE)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run dp-probe")
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

#[test]
fn tcp_round_trip() {
    let s = serve("b-tcp");
    let to = s.tcp.to_string();
    let out = probe(&[
        "connect",
        "--to",
        &to,
        "--payload",
        "hello there",
        "--count",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3);
    for a in &lines {
        assert_eq!(a["ok"], true, "{a}");
        assert_eq!(a["proto"], "tcp");
        assert_eq!(a["to"], to.as_str());
        assert_eq!(a["peer"], to.as_str());
        assert_eq!(a["backend"], "b-tcp");
        assert_eq!(a["echo"], "hello there");
        assert_eq!(a["errno"], Value::Null);
        assert_eq!(a["error"], Value::Null);
        assert!(
            a["local"]
                .as_str()
                .is_some_and(|l| l.starts_with("127.0.0.1:")),
            "{a}"
        );
        assert!(a["elapsed_us"].as_u64().is_some(), "{a}");
    }
}

#[test]
fn tcp_from_a_bound_source() {
    let s = serve("b-bind");
    let src = free_tcp();
    let out = probe(&[
        "connect",
        "--to",
        &s.tcp.to_string(),
        "--bind",
        &src.to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let a = &json_lines(&out)[0];
    assert_eq!(a["local"], src.to_string(), "{a}");
}

#[test]
fn udp_round_trip() {
    let s = serve("b-udp");
    let to = s.udp.to_string();
    let out = probe(&[
        "connect",
        "--to",
        &to,
        "--proto",
        "udp",
        "--payload",
        "dgram",
        "--count",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2);
    for a in &lines {
        assert_eq!(a["ok"], true, "{a}");
        assert_eq!(a["proto"], "udp");
        // The reply's source address.
        assert_eq!(a["peer"], to.as_str());
        assert_eq!(a["backend"], "b-udp");
        assert_eq!(a["echo"], "dgram");
    }
}

#[test]
fn refused_is_data_not_a_panic() {
    let closed = free_tcp();
    let out = probe(&["connect", "--to", &closed.to_string()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let a = &json_lines(&out)[0];
    assert_eq!(a["ok"], false);
    assert_eq!(a["errno"], libc::ECONNREFUSED);
    assert!(
        a["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("connect:")),
        "{a}"
    );
    assert_eq!(a["backend"], Value::Null);
    assert_eq!(a["peer"], Value::Null);
}

#[test]
fn udp_without_answer_times_out() {
    // Nothing answers on a closed UDP port; an unconnected socket sees no ICMP error.
    let closed = free_udp();
    let started = std::time::Instant::now();
    let out = probe(&[
        "connect",
        "--to",
        &closed.to_string(),
        "--proto",
        "udp",
        "--timeout-ms",
        "200",
    ]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let a = &json_lines(&out)[0];
    assert_eq!(a["ok"], false);
    assert_eq!(a["errno"], libc::ETIMEDOUT);
    assert_eq!(a["error"], "timed out waiting for the answer");
}

#[test]
fn bench_summary() {
    let s = serve("b-bench");
    let out = probe(&["bench", "--to", &s.tcp.to_string(), "--count", "20"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let sum = &json_lines(&out)[0];
    assert_eq!(sum["count"], 20);
    assert_eq!(sum["ok"], 20);
    assert_eq!(sum["failed"], 0);
    let (min, med, p99, max) = (
        sum["min_us"].as_u64().expect("min"),
        sum["median_us"].as_u64().expect("median"),
        sum["p99_us"].as_u64().expect("p99"),
        sum["max_us"].as_u64().expect("max"),
    );
    assert!(min <= med && med <= p99 && p99 <= max, "{sum}");
}

#[test]
fn exit_statuses() {
    assert_eq!(probe(&["connect"]).status.code(), Some(2));
    assert_eq!(
        probe(&["connect", "--to", "nowhere"]).status.code(),
        Some(2)
    );
    // A port that is already listened on cannot be bound again, even with SO_REUSEADDR.
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("local addr").to_string();
    let out = probe(&["serve", "--id", "x", "--tcp", &addr]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("cannot listen on tcp {addr}")));
    let out = probe(&["connect", "--to", &addr, "--netns", "/nonexistent/ns"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ns"));
}
