//! Integration tests of the qemu provider: real QEMU, real ssh. They need root (the
//! network namespace and taps) and qemu-system-x86_64; without them they fail under CI
//! and skip with the reason elsewhere (the harness's one policy, tests/common/skip.rs).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{accel, clean_leftovers, QemuCluster, QemuConfig, QemuError};

#[path = "../../../tests/common/skip.rs"]
mod skip;
use skip::skip;

fn skip_reason() -> Option<String> {
    if let Some(why) = skip::not_root("network namespace and taps") {
        return Some(why);
    }
    if accel::which("qemu-system-x86_64").is_none() {
        return Some("qemu-system-x86_64 not installed (ci/setup installs it)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    None
}

fn artifacts(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dp-harness-qemu-test-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn pid_alive(pid: u32) -> bool {
    // A zombie is dead for our purpose; a reaped child has no /proc entry at all.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn two_vms_talk_over_ssh_and_the_cluster_network_then_leave_nothing() {
    if let Some(why) = skip_reason() {
        return skip(&why);
    }
    let art = artifacts("two-vms");
    let config = QemuConfig::new(&["vm-a", "vm-b"], &art);
    let mut cluster = QemuCluster::boot(&config).expect("boot two VMs");
    eprintln!(
        "accelerator {} ({}), kernel {}",
        cluster.accel.accel.name(),
        cluster.accel.reason,
        cluster.image.kernel_release
    );

    for node in cluster.nodes() {
        let out = node
            .ssh()
            .expect("ssh session")
            .run("uname -r; hostname", None, Duration::from_secs(30))
            .expect("a command over ssh");
        assert!(out.success(), "{}: {}", node.name, out.stderr_str());
        let text = out.stdout_str();
        assert!(text.contains(&cluster.image.kernel_release), "{text}");
        assert!(text.contains(&node.name), "{text}");
    }
    let a = &cluster.nodes()[0];
    let b = &cluster.nodes()[1];
    // A script longer than a command line dropbear accepts (it goes on stdin), with a
    // heredoc and an exit status that must come back.
    let long = format!(
        "cat <<'EOF' | wc -l\n{}EOF\nexit 3\n",
        "a line of a long script\n".repeat(400)
    );
    let out = a
        .ssh()
        .expect("ssh session")
        .run(&long, None, Duration::from_secs(30))
        .expect("a long script over ssh");
    assert_eq!(
        (out.status, out.stdout_str().trim()),
        (Some(3), "400"),
        "{}",
        out.stderr_str()
    );
    let ping = a
        .ssh()
        .expect("ssh session")
        .run(
            &format!("ping -c 2 -W 3 {}", b.cluster_ip),
            None,
            Duration::from_secs(30),
        )
        .expect("ping over ssh");
    assert!(ping.success(), "ping vm-a -> vm-b: {}", ping.stdout_str());

    // Pods on two nodes reach each other over the cluster network (native routing).
    cluster.install_pod_routes().expect("pod routes");
    let pa = cluster
        .add_pod("vm-a", "pod-a", 10, Path::new("/sys/fs/cgroup/pods/pod-a"))
        .expect("pod on vm-a");
    let pb = cluster
        .add_pod("vm-b", "pod-b", 10, Path::new("/sys/fs/cgroup/pods/pod-b"))
        .expect("pod on vm-b");
    let ping = a
        .ssh()
        .expect("ssh session")
        .run(
            &format!("ip netns exec pod-a ping -c 2 -W 3 {pb}"),
            None,
            Duration::from_secs(30),
        )
        .expect("pod ping over ssh");
    assert!(
        ping.success(),
        "pod-a ({pa}) -> pod-b ({pb}): {} {}",
        ping.stdout_str(),
        ping.stderr_str()
    );

    // A missing command reports its status, not an error.
    let missing = a
        .ssh()
        .expect("ssh session")
        .run("no-such-command-here", None, Duration::from_secs(30))
        .expect("run");
    assert_eq!(missing.status, Some(127));

    // Files go both ways without sftp.
    let path = Path::new("/tmp/dp-harness-test-file");
    a.ssh()
        .expect("ssh session")
        .write_file(path, b"hello\n", 0o600)
        .expect("write a file");
    assert_eq!(
        a.ssh().expect("ssh").read_file(path).expect("read it back"),
        b"hello\n"
    );

    // A partition of vm-b takes effect and heals.
    cluster.set_link("vm-b", false).expect("cut vm-b");
    let cut = a
        .ssh()
        .expect("ssh session")
        .run(
            &format!("ping -c 1 -W 1 {}", b.cluster_ip),
            None,
            Duration::from_secs(30),
        )
        .expect("ping over ssh");
    assert!(
        !cut.success(),
        "vm-b should be unreachable while its link is down"
    );
    cluster.set_link("vm-b", true).expect("restore vm-b");
    cluster
        .link_netem("vm-b", &["delay", "200ms"])
        .expect("netem on vm-b");
    let slow = a
        .ssh()
        .expect("ssh session")
        .run(
            &format!("ping -c 1 -W 5 {}", b.cluster_ip),
            None,
            Duration::from_secs(30),
        )
        .expect("ping over ssh");
    assert!(slow.success(), "{}", slow.stdout_str());
    assert!(
        slow.stdout_str().contains("time=2"),
        "200 ms of delay should show: {}",
        slow.stdout_str()
    );
    cluster.link_heal("vm-b").expect("heal vm-b");
    cluster.link_heal("vm-b").expect("a second heal is fine");

    // A reboot: the guest comes back on the same QEMU, port and host key.
    let boot_id = |c: &QemuCluster| {
        c.node("vm-b")
            .and_then(|n| n.ssh())
            .and_then(|s| {
                s.check(
                    "cat /proc/sys/kernel/random/boot_id",
                    Duration::from_secs(30),
                )
            })
            .map(|o| o.stdout_str())
            .expect("boot id of vm-b")
    };
    let before = boot_id(&cluster);
    let took = cluster
        .reboot("vm-b", Duration::from_secs(120))
        .expect("reboot vm-b");
    eprintln!("vm-b rebooted in {took:.1?}");
    assert_ne!(before, boot_id(&cluster), "vm-b should have a new boot id");

    let pids: Vec<u32> = cluster.nodes().iter().filter_map(|n| n.pid()).collect();
    let netns = cluster.netns().expect("a netns").to_owned();
    let state = cluster.state_dir.clone();
    let consoles: Vec<PathBuf> = cluster.nodes().iter().map(|n| n.console.clone()).collect();
    assert_eq!(pids.len(), 2);
    cluster.teardown().expect("teardown");

    for pid in pids {
        assert!(!pid_alive(pid), "QEMU {pid} still runs");
    }
    assert!(
        !Path::new("/run/netns").join(&netns).exists(),
        "netns {netns} remains"
    );
    let links = std::process::Command::new("ip")
        .args(["-br", "link"])
        .output()
        .expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains(&format!("dpq{}", cluster.run_id)),
        "a tap or bridge of the run is left in the root namespace: {links}"
    );
    assert!(!state.exists(), "state dir {} remains", state.display());
    for c in consoles {
        assert!(c.exists(), "console {} should be kept", c.display());
    }
}

#[test]
fn a_vm_that_is_never_ready_fails_with_its_console_and_leaves_nothing() {
    if let Some(why) = skip_reason() {
        return skip(&why);
    }
    let art = artifacts("never-ready");
    let mut config = QemuConfig::new(&["slow"], &art);
    config.boot_timeout = Duration::from_secs(1);
    let err = match QemuCluster::boot(&config) {
        Ok(_) => panic!("a 1 s boot timeout should fail"),
        Err(e) => e,
    };
    assert!(
        matches!(err, QemuError::NotReady { ref node, .. } if node == "slow"),
        "{err}"
    );
    assert!(err.to_string().contains("slow.console"), "{err}");
    let left = clean_leftovers().expect("clean");
    assert!(left.processes.is_empty(), "left: {left:?}");
    assert!(left.netns.is_empty(), "left: {left:?}");
}

#[test]
fn a_taken_port_is_retried_and_a_dead_runs_leftovers_are_cleaned() {
    if let Some(why) = skip_reason() {
        return skip(&why);
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = taken.local_addr().expect("its address").port();
    let mut config = QemuConfig::new(&["orphan"], &artifacts("leftovers"));
    config.first_ssh_port = Some(port);
    let cluster = QemuCluster::boot(&config).expect("boot despite the taken port");
    let node = &cluster.nodes()[0];
    assert_ne!(
        node.ssh_port, port,
        "the VM should have moved to another port"
    );
    let pid = node.pid().expect("a QEMU pid");
    let netns = cluster.netns().expect("a netns").to_owned();
    let state = cluster.state_dir.clone();

    // The run "dies": nothing tears it down, and its owner is a pid that no longer runs.
    std::fs::write(state.join("owner"), "999999999 0\n").expect("fake a dead owner");
    std::mem::forget(cluster);
    let cleaned = clean_leftovers().expect("clean");
    assert!(cleaned.processes.contains(&pid), "{cleaned:?}");
    assert!(cleaned.netns.contains(&netns), "{cleaned:?}");
    assert!(cleaned.state_dirs.contains(&state), "{cleaned:?}");
    // The forgotten Child is never reaped by us: wait for the kill, then reap it here.
    for _ in 0..100 {
        if !pid_alive(pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: waitpid on our own child's pid.
    unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
    assert!(!pid_alive(pid));
    assert!(!Path::new("/run/netns").join(&netns).exists());
    drop(taken);
}

#[test]
fn missing_qemu_and_missing_kernel_are_named() {
    let mut config = QemuConfig::new(&["n"], &artifacts("missing"));
    config.qemu_binary = "/nonexistent/qemu-system-x86_64".into();
    let err = QemuCluster::boot(&config).err().expect("no qemu");
    assert!(
        err.to_string()
            .contains("/nonexistent/qemu-system-x86_64 not found"),
        "{err}"
    );

    let err = super::NodeImage::build(Some(Path::new("/nonexistent/vmlinuz")), None)
        .expect_err("no kernel");
    assert!(
        matches!(
            err,
            QemuError::KernelMissing { .. } | QemuError::ImageBuilderMissing { .. }
        ),
        "{err}"
    );
}

/// The boot benchmark: `cargo test -p harness qemu_boot_benchmark -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark, not a test: boots 1 and 3 VMs several times"]
fn qemu_boot_benchmark() {
    if let Some(why) = skip_reason() {
        return skip(&why);
    }
    let rounds = std::env::var("DP_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let art = artifacts("bench");
    for vms in [1, 3] {
        let stats = super::bench::boot_to_ready(vms, rounds, &art).expect("benchmark boot");
        println!("{stats}");
    }
}

#[test]
fn the_provider_brings_up_vm_nodes_with_pods_and_takes_them_down() {
    use crate::cluster::{Binaries, PodSpec, Topology};
    use crate::node::{Exit, SpawnSpec};
    use crate::provider::{Provider, RunId, UpRequest};
    use crate::signal::Cancel;

    if let Some(why) = skip_reason() {
        return skip(&why);
    }
    let run_dir = artifacts("provider");
    let topology = Topology {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            PodSpec {
                name: "client".into(),
                node: "node-a".into(),
            },
            PodSpec {
                name: "server".into(),
                node: "node-b".into(),
            },
        ],
        kernels: Default::default(),
    };
    // Any host binaries do: the guest sees the host's root.
    let binaries = Binaries {
        datapathd: PathBuf::from("/usr/bin/true"),
        dp_probe: PathBuf::from("/usr/bin/ping"),
        dp_remote: super::remote::test_binary(),
    };
    let run_id = RunId::fresh();
    let cancel = Cancel::new();
    let req = UpRequest {
        run_id: &run_id,
        topology: &topology,
        binaries: &binaries,
        run_dir: &run_dir,
        cancel: &cancel,
    };
    let mut provider = super::QemuProvider::new();
    let cluster = provider.up(&req).expect("up");
    let facts = provider.facts();
    assert_eq!(facts.provider, "qemu");
    assert!(
        !facts.kernel.is_empty() && !facts.accelerator.is_empty(),
        "{facts:?}"
    );
    eprintln!("facts: {facts:?}");

    let a = cluster.node("node-a").expect("node-a");
    let out = a
        .node
        .run(&["uname", "-r"], Duration::from_secs(30))
        .expect("uname");
    assert_eq!(out.stdout_str().trim(), facts.kernel);
    let server = cluster.pod("server").expect("server pod");
    let ping = a
        .node
        .run(
            &[
                "ip",
                "netns",
                "exec",
                "client",
                "ping",
                "-c",
                "1",
                "-W",
                "3",
                &server.ip.to_string(),
            ],
            Duration::from_secs(30),
        )
        .expect("pod to pod ping");
    assert!(ping.success(), "client -> server: {}", ping.stdout_str());

    // A long-running process: started, found by pid, killed, its signal reported.
    let mut proc = a
        .node
        .spawn(&SpawnSpec {
            argv: vec!["sleep".into(), "300".into()],
            stdout: a.work_dir.join("sleep.out"),
            stderr: a.work_dir.join("sleep.err"),
            env: vec![("X".into(), "1".into())],
        })
        .expect("spawn");
    assert_eq!(proc.try_wait().expect("try_wait"), None);
    proc.kill(libc::SIGKILL).expect("kill");
    assert_eq!(
        proc.wait_timeout(Duration::from_secs(10)).expect("wait"),
        Some(Exit::Signal(libc::SIGKILL))
    );
    // Files with parents created.
    a.node
        .write_file(&a.work_dir.join("x/y/z"), b"data", 0o644)
        .expect("write");
    assert_eq!(
        a.node.read_file(&a.work_dir.join("x/y/z")).expect("read"),
        b"data"
    );

    provider.down().expect("down");
    provider.down().expect("a second down is fine");
    assert!(!Path::new("/run/netns")
        .join(format!("dpq-{run_id}"))
        .exists());
    assert!(!super::state_root().join(format!("dpq-{run_id}")).exists());
    assert!(run_dir.join("qemu/node-a.console").exists());
}
