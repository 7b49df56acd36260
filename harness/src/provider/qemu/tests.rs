//! Integration tests of the qemu provider: real QEMU, real ssh. They need root (the
//! network namespace and taps) and qemu-system-x86_64; without them they fail under CI
//! and skip with the reason elsewhere (the workspace's one policy, test-support/src/skip.rs).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{accel, clean_leftovers, KernelSpec, NodeImage, QemuCluster, QemuConfig, QemuError};

use crate::test_skip as skip;
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

/// The kernel the VM tests boot: `$DP_HARNESS_TEST_KERNEL` (a series such as 5.10 or
/// newest, or a kernel file), else the builder's default. Run the same tests per kernel:
/// `DP_HARNESS_TEST_KERNEL=5.10 cargo nextest run -p harness -E 'test(boots)'`.
fn test_kernel() -> Option<KernelSpec> {
    let spec = std::env::var("DP_HARNESS_TEST_KERNEL").ok()?;
    if spec.is_empty() {
        return None;
    }
    Some(
        spec.parse()
            .unwrap_or_else(|e| panic!("DP_HARNESS_TEST_KERNEL={spec}: {e}")),
    )
}

/// A cluster of `names` on the test kernel, or on the image directory
/// `$DP_HARNESS_TEST_IMAGE` (e.g. one built with `build-node-image --boot-bzimage`).
fn test_config(names: &[&str], art: &Path) -> QemuConfig {
    let mut config = QemuConfig::new(names, art);
    config.kernel = test_kernel();
    config.image = std::env::var_os("DP_HARNESS_TEST_IMAGE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from);
    config
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
    let config = test_config(&["vm-a", "vm-b"], &art);
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
    let mut config = test_config(&["slow"], &art);
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
    assert!(
        !left.removed.iter().any(|r| r.contains("-slow")),
        "left: {left:?}"
    );
}

#[test]
fn a_taken_port_is_retried_and_a_dead_runs_leftovers_are_cleaned() {
    if let Some(why) = skip_reason() {
        return skip(&why);
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = taken.local_addr().expect("its address").port();
    let mut config = test_config(&["orphan"], &artifacts("leftovers"));
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
    cluster
        .state
        .update(|s| s.owner = (999_999_999, 0))
        .expect("fake a dead owner");
    std::mem::forget(cluster);
    let cleaned = clean_leftovers().expect("clean");
    let has = |what: &str| cleaned.removed.iter().any(|r| r.contains(what));
    assert!(has(&format!("stopped process {pid} ")), "{cleaned:?}");
    assert!(has(&format!("network namespace {netns}")), "{cleaned:?}");
    assert!(
        has(&format!("state directory {}", state.display())),
        "{cleaned:?}"
    );
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

    let missing = KernelSpec::File(PathBuf::from("/nonexistent/vmlinuz"));
    let err = NodeImage::build(Some(&missing), None).expect_err("no kernel");
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
        routing: Default::default(),
    };
    // Any binaries do, in one directory as cargo puts them (the guests see it through
    // the binaries share, wherever it is: this one is under /tmp, hidden from them).
    let bin_dir = tempfile::tempdir().expect("tempdir");
    let copy = |from: &Path, name: &str| -> PathBuf {
        let to = bin_dir.path().join(name);
        std::fs::copy(from, &to).expect("copy a binary");
        to
    };
    let binaries = Binaries {
        datapathd: copy(Path::new("/usr/bin/true"), "datapathd"),
        dp_probe: copy(Path::new("/usr/bin/ping"), "dp-probe"),
        dp_remote: copy(&super::remote::test_binary(), "dp-remote"),
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
    let mut provider = super::QemuProvider::with_kernel(test_kernel());
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

/// Boots one VM on the test kernel and checks, one by one, what every node needs of its
/// kernel: the host root over 9p under an overlay, cgroup2 and bpffs, BTF, and modprobe of
/// the modules the datapath and the faults use (veth, sch_netem, nf_tables through
/// iptables).
#[test]
fn a_node_image_boots_with_9p_overlay_and_modprobe_working() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let kernel = test_kernel();
    let art = artifacts("kernel");
    let mut cluster = QemuCluster::boot(&test_config(&["vm-k"], &art)).expect("boot one VM");
    let image = &cluster.image;
    eprintln!(
        "kernel {} ({} {}), boots the {:?}, VM ready in {:.1?}",
        image.kernel_release,
        image.kernel_package.as_deref().unwrap_or("-"),
        image.kernel_version.as_deref().unwrap_or("-"),
        image.boot,
        cluster.nodes()[0].ready_time,
    );
    match &kernel {
        Some(KernelSpec::Series { major, minor }) => {
            assert!(
                image
                    .kernel_release
                    .starts_with(&format!("{major}.{minor}.")),
                "asked for {major}.{minor}, got {}",
                image.kernel_release
            );
            assert!(image.kernel_package.is_some() && image.kernel_version.is_some());
        }
        Some(KernelSpec::Newest) => assert!(image.kernel_package.is_some()),
        _ => {}
    }
    // What the host's root holds, as the guest should see it through 9p: size and
    // modification time of files that stage2 does not touch.
    let host_files = "stat -c '%n %s %Y' /usr/bin/busybox /etc/os-release /usr/sbin/iptables";
    let host_view = std::process::Command::new("sh")
        .args(["-c", host_files])
        .output()
        .expect("stat on the host");
    let read_host = format!(
        "test \"$({host_files})\" = '{}' && grep -qw 9p /proc/filesystems",
        String::from_utf8_lossy(&host_view.stdout).trim()
    );
    let checks: &[(&str, &str)] = &[
        ("the running kernel", "uname -r"),
        // The 9p mount itself sits under the initramfs's root, out of the guest's view
        // after switch_root: a file the host writes must be there.
        ("host root over 9p", &read_host),
        (
            "overlay as the root",
            "awk '$2 == \"/\" && $3 == \"overlay\"' /proc/mounts | grep -q .",
        ),
        (
            "cgroup2",
            "test \"$(stat -f -c %T /sys/fs/cgroup)\" = cgroup2fs",
        ),
        ("bpffs", "test \"$(stat -f -c %T /sys/fs/bpf)\" = bpf_fs"),
        ("BTF", "test -s /sys/kernel/btf/vmlinux"),
        (
            "the guest's own modules",
            "test -f /lib/modules/$(uname -r)/modules.dep",
        ),
        (
            "veth",
            "modprobe veth && ip link add dpk0 type veth peer name dpk1 && ip link del dpk0",
        ),
        (
            "sch_netem",
            "modprobe sch_netem && tc qdisc add dev lo root netem delay 1ms \
             && tc qdisc del dev lo root",
        ),
        (
            "nf_tables through iptables",
            "modprobe nf_tables && iptables -w -A INPUT -i lo -m comment --comment dpk -j ACCEPT \
             && iptables -w -D INPUT -i lo -m comment --comment dpk -j ACCEPT",
        ),
    ];
    let ssh = cluster.nodes()[0].ssh().expect("ssh session");
    let mut failed = Vec::new();
    for (what, script) in checks {
        let out = ssh
            .run(script, None, Duration::from_secs(60))
            .expect("a command over ssh");
        if !out.success() {
            failed.push(format!(
                "{what}: `{script}` exited {:?}: {}{}",
                out.status,
                out.stdout_str(),
                out.stderr_str()
            ));
        } else if *what == "the running kernel" {
            assert_eq!(out.stdout_str().trim(), image.kernel_release);
        }
    }
    assert!(
        failed.is_empty(),
        "on {}:\n{}",
        image.kernel_release,
        failed.join("\n")
    );
    cluster.teardown().expect("teardown");
}

fn builder(args: &[&str]) -> std::process::Output {
    std::process::Command::new(super::image::builder_script())
        .args(args)
        .output()
        .expect("run build-node-image")
}

/// A series Debian does not serve and a file that is no kernel are bad input (exit 2),
/// say what was tried and what exists, and leave nothing in the cache.
#[test]
fn an_unserved_series_and_a_file_that_is_no_kernel_fail_as_bad_input_and_leave_nothing() {
    if accel::which("apt-get").is_none() {
        let why = "apt-get not installed: the builder fetches kernels with it";
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("skipped: {why}");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("images");
    let text = tmp.path().join("not-a-kernel.deb");
    std::fs::write(&text, "hello\n").expect("write");
    let cache_arg = cache.to_str().expect("utf-8");
    for spec in ["4.1", text.to_str().expect("utf-8"), "./no-such-kernel.deb"] {
        let out = builder(&["--kernel", spec, "--cache", cache_arg]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--kernel {spec}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "error: kernel {}",
                if spec == "4.1" { "series 4.1" } else { spec }
            )),
            "{stderr}"
        );
        assert!(
            stderr.contains("Debian serves (build-node-image --list):")
                && stderr.contains("  6.1 "),
            "--kernel {spec} should list what exists: {stderr}"
        );
        assert!(!cache.exists(), "--kernel {spec} left {}", cache.display());
    }
    let err = NodeImage::build(Some(&KernelSpec::File(text.clone())), None)
        .expect_err("a text file is no kernel");
    assert!(
        matches!(&err, QemuError::KernelUnavailable { message, .. }
            if message.contains("neither a linux-image-*.deb, a bzImage nor a vmlinux")),
        "{err}"
    );
}

/// --prune keeps the most recently used images within the bound, never one a harness holds.
#[test]
fn prune_removes_the_least_recently_used_images_beyond_the_bound_but_not_one_in_use() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("images");
    // Four fake images of 1 MiB each, used 4, 3, 2 and 1 hours ago.
    let mut dirs = Vec::new();
    for (i, hours) in [4u64, 3, 2, 1].into_iter().enumerate() {
        let dir = cache.join(format!("k{i}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join("manifest"),
            format!("kernel_release=k{i}\nboot=vmlinux\n"),
        )
        .expect("manifest");
        std::fs::write(dir.join("vmlinux"), vec![0u8; 1 << 20]).expect("vmlinux");
        std::fs::write(dir.join("initramfs.cpio.gz"), b"x").expect("initramfs");
        let used = dir.join("last-used");
        std::fs::write(&used, b"").expect("last-used");
        let when = std::time::SystemTime::now() - Duration::from_secs(hours * 3600);
        std::fs::File::options()
            .write(true)
            .open(&used)
            .and_then(|f| f.set_modified(when))
            .expect("set mtime");
        dirs.push(dir);
    }
    std::fs::create_dir_all(cache.join(".build-dead.X")).expect("a dead build");
    // The oldest is in use by "a harness" (this test holds its lock).
    let held = NodeImage::open(&dirs[0]).expect("open the oldest image");
    let cache_arg = cache.to_str().expect("utf-8");

    let out = builder(&["--prune", "--keep", "2", "--cache", cache_arg]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exists: Vec<bool> = dirs.iter().map(|d| d.exists()).collect();
    assert_eq!(exists, [true, false, true, true], "{stdout}");
    assert!(stdout.contains("in use"), "{stdout}");
    assert!(!cache.join(".build-dead.X").exists(), "{stdout}");
    assert!(
        stdout.contains("removed") && stdout.contains("freed 1"),
        "{stdout}"
    );

    drop(held);
    let out = builder(&["--prune", "--keep-bytes", "1500K", "--cache", cache_arg]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let exists: Vec<bool> = dirs.iter().map(|d| d.exists()).collect();
    assert_eq!(exists, [false, false, false, true], "{stdout}");

    let out = builder(&["--prune", "--keep-bytes", "lots", "--cache", cache_arg]);
    assert_eq!(out.status.code(), Some(2));
}
