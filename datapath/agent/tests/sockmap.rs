//! Socket acceleration (issue 5, incident C in shared/DESIGN.md) with real sockets on the
//! real kernel: node <-> local pod stands in as 127.0.0.1 <-> 127.0.0.2 inside the
//! sandbox's network namespace, both ends in the sandbox's cgroup, `--accelerate
//! 127.0.0.0/8`. Needs root; see tests/common/mod.rs.
//!
//! The agent here is started by this file (the sandbox's `start_agent` knows no
//! `--accelerate`); every process is a [`Proc`], killed by its own pid on drop, declared
//! after the sandbox so that it ends before the sandbox is removed.

mod common;

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::probe;
use common::sandbox::{datapathd, Proc, Sandbox};
use common::wait_for;
use serde_json::Value;

const SERVER: &str = "127.0.0.2:8080";

/// `datapathd run --accelerate 127.0.0.0/8`, waiting for its ready line.
fn start_agent(sb: &Sandbox, mutant: Option<&str>, n: usize) -> Proc {
    let stdout = sb.dir.join(format!("sockmap-agent-{n}.out"));
    let stderr = sb.dir.join(format!("sockmap-agent-{n}.err"));
    let mut cmd = Command::new(datapathd());
    cmd.args(["run", "--cgroup", sb.cgroup_str(), "--services"])
        .arg(&sb.services)
        .args(["--bpffs", sb.bpffs_str()])
        .args(["--accelerate", "127.0.0.0/8", "--sockhash-gc-ms", "300"]);
    if let Some(m) = mutant {
        cmd.args(["--mutant", m]);
    }
    let child = cmd
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).expect("agent stdout file"))
        .stderr(File::create(&stderr).expect("agent stderr file"))
        .spawn()
        .expect("start datapathd");
    let mut proc = Proc {
        what: "datapathd".into(),
        child,
    };
    let ready = wait_for(Duration::from_secs(20), || {
        if fs::read_to_string(&stdout)
            .unwrap_or_default()
            .contains("datapathd: ready")
        {
            Some(true)
        } else if !proc.running() {
            Some(false)
        } else {
            None
        }
    });
    assert_eq!(
        ready,
        Some(true),
        "datapathd did not get ready:\n{}",
        fs::read_to_string(&stderr).unwrap_or_default()
    );
    proc
}

/// Runs a dp-probe command to completion; its stdout and exit code.
fn probe_out(args: &[&str]) -> (String, Option<i32>) {
    let out = Command::new(probe::binary())
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run dp-probe");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code(),
    )
}

/// A long-running dp-probe whose first stdout line is awaited and returned.
fn probe_bg(args: &[&str], what: &str) -> (Proc, String) {
    let mut child = Command::new(probe::binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start dp-probe");
    let stdout = child.stdout.take().expect("piped stdout");
    let proc = Proc {
        what: what.into(),
        child,
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what} printed nothing within 10 s"));
    (proc, line)
}

/// The server, in the sandbox's netns and cgroup.
fn serve(sb: &Sandbox, addr: &str, cgroup: bool) -> Proc {
    let mut args = vec![
        "serve",
        "--id",
        addr,
        "--tcp",
        addr,
        "--netns",
        sb.netns_str(),
    ];
    if cgroup {
        args.extend(["--cgroup", sb.cgroup_str()]);
    }
    let (p, line) = probe_bg(&args, "server");
    assert_eq!(line.trim(), "ready", "server did not start");
    p
}

/// `dp-probe reqresp`; the parsed summary and the exit code.
fn reqresp(sb: &Sandbox, extra: &[&str], in_cgroup: bool) -> (Value, Option<i32>) {
    let mut args = vec!["reqresp", "--to", SERVER, "--netns", sb.netns_str()];
    if in_cgroup {
        args.extend(["--cgroup", sb.cgroup_str()]);
    }
    args.extend_from_slice(extra);
    let (out, code) = probe_out(&args);
    let v = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("reqresp printed no JSON ({e}): {out}"));
    (v, code)
}

/// Plants `key_for`'s key for a connection SERVER <-> `client`; the decoy lives in the
/// netns but outside the cgroup. Returns the planting process and its JSON.
fn plant(sb: &Sandbox, key_for: &str, client: &str) -> (Proc, Value) {
    let map = sb.bpffs.join("maps/dp_sockhash");
    let map = map.to_str().expect("UTF-8 path");
    let args = [
        "plant-sockhash",
        "--map",
        map,
        "--key-for",
        key_for,
        "--server",
        SERVER,
        "--client",
        client,
        "--netns",
        sb.netns_str(),
    ];
    let (p, line) = probe_bg(&args, "planter");
    let json = line
        .trim()
        .strip_prefix("planted ")
        .unwrap_or_else(|| panic!("plant-sockhash did not plant: {line:?}"));
    (p, serde_json::from_str(json).expect("planted JSON"))
}

fn keys(sb: &Sandbox) -> Vec<Value> {
    sb.status()["sockhash"]["keys"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn counter(sb: &Sandbox, name: &str) -> u64 {
    sb.status()["sockhash"]["counters"][name]
        .as_u64()
        .unwrap_or(0)
}

fn lo_tx_bytes(sb: &Sandbox) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", &sb.netns_name, "cat"])
        .arg("/sys/class/net/lo/statistics/tx_bytes")
        .output()
        .expect("read lo counters");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a byte count")
}

#[test]
fn accelerated_requests_are_answered_and_bypass_tcp() {
    if !common::can_run("accelerated_requests_are_answered_and_bypass_tcp") {
        return;
    }
    let sb = Sandbox::new("skacc");
    let _agent = start_agent(&sb, None, 0);
    let _server = serve(&sb, SERVER, true);
    // A second server outside the cgroup: the same traffic, not accelerated.
    let _plain = serve(&sb, "127.0.0.3:8080", false);

    // Both ends' cookies are in the map while a connection lives.
    let client = Command::new(probe::binary())
        .args([
            "reqresp",
            "--to",
            SERVER,
            "--requests",
            "30",
            "--interval-ms",
            "100",
        ])
        .args(["--netns", sb.netns_str(), "--cgroup", sb.cgroup_str()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start reqresp");
    let live = wait_for(Duration::from_secs(5), || {
        let k = keys(&sb);
        let both = k.len() == 2
            && k.iter().all(|k| k["live"] == true)
            && k.iter().any(|k| k["src"] == SERVER)
            && k.iter().any(|k| k["dst"] == SERVER);
        both.then_some(k)
    })
    .unwrap_or_else(|| {
        panic!(
            "sockhash never held both ends: {:#?}",
            sb.status()["sockhash"]
        )
    });
    let out = client.wait_with_output().expect("reqresp ends");
    let summary: Value = serde_json::from_slice(&out.stdout).expect("reqresp JSON");
    assert_eq!(summary["ok"], 30, "{summary:#}");
    let client_cookie = summary["connections"][0]["cookie"].clone();
    assert!(
        live.iter()
            .any(|k| k["cookie"] == client_cookie && k["dst"] == SERVER),
        "the client's key does not hold its cookie {client_cookie}: {live:#?}"
    );
    // Closed sockets leave the map.
    assert!(
        wait_for(Duration::from_secs(5), || keys(&sb)
            .is_empty()
            .then_some(()))
        .is_some(),
        "keys left after close: {:#?}",
        keys(&sb)
    );

    // Payload bypasses TCP: loopback carries only handshake and close, while the
    // redirected-bytes counter grows by at least the payload.
    let payload_floor: u64 = 500 * 2 * 20; // 500 requests, request + answer, >= 20 bytes each
    let before = (lo_tx_bytes(&sb), counter(&sb, "bytes_redirected"));
    let (s, code) = reqresp(&sb, &["--requests", "500"], true);
    assert_eq!(code, Some(0), "{s:#}");
    let accel_lo = lo_tx_bytes(&sb) - before.0;
    let redirected = counter(&sb, "bytes_redirected") - before.1;
    let before_plain = lo_tx_bytes(&sb);
    // Same traffic to the unaccelerated server (client outside the cgroup too).
    let (plain, code) = probe_out(&[
        "reqresp",
        "--to",
        "127.0.0.3:8080",
        "--requests",
        "500",
        "--netns",
        sb.netns_str(),
    ]);
    assert_eq!(code, Some(0), "{plain}");
    let plain_lo = lo_tx_bytes(&sb) - before_plain;
    eprintln!(
        "lo tx bytes for 500 request/response pairs: accelerated {accel_lo}, not accelerated {plain_lo}; redirected by sk_msg {redirected}"
    );
    assert!(
        redirected >= payload_floor,
        "redirected only {redirected} bytes"
    );
    assert!(
        accel_lo < payload_floor / 4,
        "accelerated traffic put {accel_lo} bytes on lo (payload >= {payload_floor})"
    );
    assert!(
        plain_lo > payload_floor,
        "the measure is blind: plain traffic put only {plain_lo} bytes on lo"
    );
}

#[test]
fn a_planted_stale_key_is_replaced_and_collected() {
    if !common::can_run("a_planted_stale_key_is_replaced_and_collected") {
        return;
    }
    let sb = Sandbox::new("skplant");
    let _agent = start_agent(&sb, None, 0);
    let _server = serve(&sb, SERVER, true);
    for (key_for, client) in [("server", "127.0.0.1:41000"), ("client", "127.0.0.1:41001")] {
        let (_planter, planted) = plant(&sb, key_for, client);
        assert_eq!(planted["keys"][0]["cookie"], planted["decoy"]["cookie"]);
        let (s, code) = reqresp(
            &sb,
            &["--bind", client, "--requests", "5", "--timeout-ms", "2000"],
            true,
        );
        assert_eq!(
            (code, s["ok"].as_u64()),
            (Some(0), Some(5)),
            "{key_for}-side planted key: {s:#}"
        );
    }

    // A planted key no connection replaces is garbage-collected: its cookie names the
    // decoy, whose tuple is another.
    let (_planter, planted) = plant(&sb, "server", "127.0.0.1:41002");
    let cookie = planted["decoy"]["cookie"].clone();
    let gone = wait_for(Duration::from_secs(5), || {
        (!keys(&sb).iter().any(|k| k["cookie"] == cookie)).then_some(())
    });
    assert!(gone.is_some(), "planted key still there: {:#?}", keys(&sb));
}

#[test]
fn the_noexist_mutant_hangs_on_a_planted_key() {
    if !common::can_run("the_noexist_mutant_hangs_on_a_planted_key") {
        return;
    }
    let sb = Sandbox::new("sknoex");
    let _agent = start_agent(&sb, Some("sockmap-noexist"), 0);
    let _server = serve(&sb, SERVER, true);
    let client = "127.0.0.1:41100";
    let (_planter, planted) = plant(&sb, "server", client);
    let (s, code) = reqresp(
        &sb,
        &["--bind", client, "--requests", "3", "--timeout-ms", "1000"],
        true,
    );
    assert_eq!(code, Some(1), "{s:#}");
    assert_eq!(s["hung"], 1, "{s:#}");
    let problem = s["connections"][0]["first_problem"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(problem.contains("read timed out"), "{problem}");
    // The stale key stays (no GC), and status says it is not owned by its socket.
    let k = keys(&sb);
    let stale = k
        .iter()
        .find(|k| k["cookie"] == planted["decoy"]["cookie"])
        .unwrap_or_else(|| panic!("planted key gone: {k:#?}"));
    assert_eq!(stale["live"], false, "{stale:#}");
    assert!(counter(&sb, "insert_failed") >= 1);
}
