//! Benchmark, not a test (ignored by default): node -> local pod request/response rate and
//! latency with socket acceleration on and off, in one run, printed as a ratio.
//!
//! ```text
//! sudo -E cargo test -p datapath-agent --test sockmap_bench -- --ignored --nocapture
//! ```
//! "On": client and server in the accelerated cgroup (127.0.0.1 -> 127.0.0.2:8080).
//! "Off": the same programs, a second server and the client outside the cgroup, so
//! sock_ops never sees them (same kernel, same namespace, same loopback). Each side runs
//! `dp-probe reqresp` (one persistent connection, one request line and its answer at a
//! time) alternately, several rounds, and the best round of each is compared.

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

const REQUESTS: &str = "20000";
const ROUNDS: usize = 3;

fn bg(args: &[&str], what: &str) -> Proc {
    let mut child = Command::new(probe::binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start dp-probe");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut l = String::new();
        let _ = BufReader::new(stdout).read_line(&mut l);
        let _ = tx.send(l);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("ready line");
    assert_eq!(line.trim(), "ready", "{what}");
    Proc {
        what: what.into(),
        child,
    }
}

fn run(sb: &Sandbox, to: &str, cgroup: bool) -> Value {
    let mut cmd = Command::new(probe::binary());
    cmd.args([
        "reqresp",
        "--to",
        to,
        "--requests",
        REQUESTS,
        "--netns",
        sb.netns_str(),
    ]);
    if cgroup {
        cmd.args(["--cgroup", sb.cgroup_str()]);
    }
    let out = cmd.output().expect("run reqresp");
    let v: Value = serde_json::from_slice(&out.stdout).expect("reqresp JSON");
    assert_eq!(out.status.code(), Some(0), "{v:#}");
    v
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn sockmap_request_response_benchmark() {
    if !common::can_run("sockmap_request_response_benchmark") {
        return;
    }
    let sb = Sandbox::new("skbench");
    let out = sb.dir.join("bench-agent.out");
    let child = Command::new(datapathd())
        .args(["run", "--cgroup", sb.cgroup_str(), "--services"])
        .arg(&sb.services)
        .args(["--bpffs", sb.bpffs_str(), "--accelerate", "127.0.0.0/8"])
        .stdout(File::create(&out).expect("out file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("start datapathd");
    let _agent = Proc {
        what: "datapathd".into(),
        child,
    };
    wait_for(Duration::from_secs(20), || {
        fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("ready")
            .then_some(())
    })
    .expect("datapathd ready");
    let ns = sb.netns_str().to_owned();
    let cg = sb.cgroup_str().to_owned();
    let _on = bg(
        &[
            "serve",
            "--id",
            "on",
            "--tcp",
            "127.0.0.2:8080",
            "--netns",
            &ns,
            "--cgroup",
            &cg,
        ],
        "accelerated server",
    );
    let _off = bg(
        &[
            "serve",
            "--id",
            "off",
            "--tcp",
            "127.0.0.3:8080",
            "--netns",
            &ns,
        ],
        "plain server",
    );
    let mut best_on: Option<Value> = None;
    let mut best_off: Option<Value> = None;
    let rate = |v: &Option<Value>| {
        v.as_ref()
            .and_then(|v| v["rate_per_s"].as_f64())
            .unwrap_or(0.0)
    };
    for _ in 0..ROUNDS {
        let on = run(&sb, "127.0.0.2:8080", true);
        if on["rate_per_s"].as_f64().unwrap_or(0.0) > rate(&best_on) {
            best_on = Some(on);
        }
        let off = run(&sb, "127.0.0.3:8080", false);
        if off["rate_per_s"].as_f64().unwrap_or(0.0) > rate(&best_off) {
            best_off = Some(off);
        }
    }
    let (on, off) = (best_on.expect("a round"), best_off.expect("a round"));
    let lat = |v: &Value, p: &str| v["latency_us"][p].as_u64().unwrap_or(0);
    let st = sb.status();
    println!(
        "sockmap benchmark: {REQUESTS} request/response pairs on one connection, best of {ROUNDS}"
    );
    println!(
        "  accelerated:     {:>9.0} req/s  p50 {:>4} us  p99 {:>4} us",
        rate(&Some(on.clone())),
        lat(&on, "p50"),
        lat(&on, "p99")
    );
    println!(
        "  not accelerated: {:>9.0} req/s  p50 {:>4} us  p99 {:>4} us",
        rate(&Some(off.clone())),
        lat(&off, "p50"),
        lat(&off, "p99")
    );
    println!(
        "  ratio (accelerated / not): rate x{:.2}, p50 latency x{:.2}",
        rate(&Some(on.clone())) / rate(&Some(off.clone())).max(1.0),
        lat(&on, "p50") as f64 / (lat(&off, "p50").max(1)) as f64
    );
    println!("  counters: {}", st["sockhash"]["counters"]);
}
