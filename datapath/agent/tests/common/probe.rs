//! `dp-probe`, the workload: backends (`serve`) and clients (`connect`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::sandbox::Proc;

/// `dp-probe` is a binary of another package of the workspace: cargo puts it next to
/// `datapathd` when the workspace is built (`cargo nextest run --workspace` does).
pub fn binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_datapathd")).with_file_name("dp-probe");
    assert!(
        path.is_file(),
        "{} is missing: build the workspace (`cargo nextest run --workspace` or `cargo build -p dp-probe`) \
         with the same CARGO_TARGET_DIR and profile as these tests",
        path.display()
    );
    path
}

/// Starts `dp-probe serve` in `netns` and waits for its `ready` line.
pub fn serve(id: &str, netns: &Path, tcp: &[&str], udp: &[&str]) -> Proc {
    let mut cmd = Command::new(binary());
    cmd.args(["serve", "--id", id, "--netns"]).arg(netns);
    for a in tcp {
        cmd.args(["--tcp", a]);
    }
    for a in udp {
        cmd.args(["--udp", a]);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start dp-probe serve: {e}"));
    let mut proc = Proc {
        what: format!("backend {id}"),
        child,
    };
    let stdout = proc.child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(line) if line.trim() == "ready" => proc,
        Ok(line) => panic!(
            "backend {id} did not start (first line {line:?}, status {:?})",
            proc.child.try_wait()
        ),
        Err(_) => panic!("backend {id} printed nothing within 10 s"),
    }
}

/// One attempt as `dp-probe connect` reports it: the wire type dp-probe itself prints,
/// read strictly (a changed format fails the test as a broken reader, not as traffic).
pub use dp_wire::Attempt;

/// `count` attempts to `to` from inside the test's cgroup and network namespace.
pub fn connect(
    netns: &Path,
    cgroup: &Path,
    to: &str,
    proto: &str,
    count: u32,
    timeout_ms: u32,
) -> Vec<Attempt> {
    connect_from(netns, Some(cgroup), to, proto, count, timeout_ms)
}

/// The same, from the namespace but, with `cgroup` None, outside the datapath's cgroup.
pub fn connect_from(
    netns: &Path,
    cgroup: Option<&Path>,
    to: &str,
    proto: &str,
    count: u32,
    timeout_ms: u32,
) -> Vec<Attempt> {
    let mut cmd = Command::new(binary());
    cmd.args([
        "connect",
        "--to",
        to,
        "--proto",
        proto,
        "--count",
        &count.to_string(),
    ])
    .args([
        "--timeout-ms",
        &timeout_ms.to_string(),
        "--payload",
        &format!("hello {to}"),
    ])
    .arg("--netns")
    .arg(netns);
    if let Some(cgroup) = cgroup {
        cmd.arg("--cgroup").arg(cgroup);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run dp-probe connect: {e}"));
    // 0 all ok, 1 some failed: both print one line per attempt. Anything else is a setup
    // failure of the probe itself, not a verdict on the datapath.
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "dp-probe connect could not run ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let attempts: Vec<Attempt> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("dp-probe printed {l:?}: {e}")))
        .collect();
    assert_eq!(attempts.len(), count as usize, "one line per attempt");
    attempts
}
