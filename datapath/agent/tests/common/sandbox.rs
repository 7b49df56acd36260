//! One test's private world: network namespace, cgroup, bpffs directory, services
//! directory, and the processes it started. Everything is removed on drop, in reverse
//! order of dependence, also when the test panics.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{bpftool, probe, wait_for};

/// How long `datapathd run` may take to print its ready line.
pub const AGENT_READY: Duration = Duration::from_secs(30);
/// How long a crash at a failpoint may take to happen.
pub const AGENT_EXIT: Duration = Duration::from_secs(30);

/// `datapathd`, built by cargo for these tests.
pub fn datapathd() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_datapathd"))
}

/// Runs `datapathd ARGS` to completion.
pub fn datapathd_cmd(args: &[&str]) -> Output {
    Command::new(datapathd())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", datapathd().display()))
}

/// A child process we started, killed by its own pid and reaped on drop.
pub struct Proc {
    pub what: String,
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to this process only.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        unsafe { libc::kill(pid, sig) };
    }

    /// Waits up to `limit` for the process to end.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_for(limit, || self.child.try_wait().ok().flatten())
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A running (or crashed) `datapathd run`, with its output in files of the sandbox.
pub struct Agent {
    pub proc: Proc,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Agent {
    /// stdout and stderr so far, for failure messages.
    pub fn log(&self) -> String {
        format!(
            "--- datapathd stdout ({}) ---\n{}--- datapathd stderr ({}) ---\n{}",
            self.stdout.display(),
            fs::read_to_string(&self.stdout).unwrap_or_default(),
            self.stderr.display(),
            fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    fn printed_ready(&self) -> bool {
        fs::read_to_string(&self.stdout)
            .is_ok_and(|s| s.lines().any(|l| l.trim() == "datapathd: ready"))
    }
}

/// What to start `datapathd run` with.
#[derive(Debug, Default, Clone)]
pub struct AgentOpts {
    pub mutant: Option<String>,
    pub failpoint: Option<String>,
    /// More `datapathd run` arguments (e.g. `--assume-missing FEATURE`).
    pub extra_args: Vec<String>,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct Sandbox {
    /// Unique: test tag, pid, sequence number.
    pub name: String,
    pub netns_name: String,
    /// /run/netns/NAME
    pub netns: PathBuf,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    /// This instance's bpffs directory (the agent creates it).
    pub bpffs: PathBuf,
    /// Scratch directory: services/ and the agents' logs.
    pub dir: PathBuf,
    pub services: PathBuf,
    /// Ids of `dp_*` maps that existed before this sandbox: not this test's.
    pub baseline_maps: Vec<u32>,
    agents: Vec<Agent>,
    backends: BTreeMap<String, Proc>,
    /// The workspace's test lock (dp-test-support): the global bpftool checks (every `dp_*`
    /// map in the kernel) must not see another test's agent half-way through its start.
    _lock: dp_test_support::AcceptanceLock,
}

fn run_ok(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where cgroup v2 is mounted (not always /sys/fs/cgroup: hybrid hosts use .../unified).
pub fn cgroup2_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .next()
        .expect("no cgroup2 mount in /proc/mounts: the datapath needs cgroup v2")
}

/// Where bpffs is mounted.
pub fn bpffs_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "bpf").then(|| PathBuf::from(dir))
        })
        .next()
        .expect("no bpffs mounted (ci/setup mounts it: mount -t bpf bpf /sys/fs/bpf)")
}

impl Sandbox {
    /// A fresh world for the test `tag` (short, [a-z0-9-]).
    pub fn new(tag: &str) -> Sandbox {
        let lock = dp_test_support::acceptance_lock();
        sweep_stale();
        let name = format!(
            "dpt-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let (_, cgroup, bpffs, dir) = world_paths(&name);
        let services = dir.join("services");
        fs::create_dir_all(&services)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", services.display()));
        // Build the value first so that whatever exists is removed if a later step fails.
        let mut sb = Sandbox {
            netns_name: name.clone(),
            netns: PathBuf::from("/run/netns").join(&name),
            cgroup,
            cgroup_id: 0,
            bpffs,
            dir,
            services,
            baseline_maps: Vec::new(),
            agents: Vec::new(),
            backends: BTreeMap::new(),
            name,
            _lock: lock,
        };
        fs::create_dir(&sb.cgroup).unwrap_or_else(|e| panic!("mkdir {}: {e}", sb.cgroup.display()));
        sb.cgroup_id = fs::metadata(&sb.cgroup).expect("stat the cgroup").ino();
        run_ok("ip", &["netns", "add", &sb.netns_name]);
        run_ok("ip", &["-n", &sb.netns_name, "link", "set", "lo", "up"]);
        sb.baseline_maps = bpftool::maps()
            .iter()
            .filter(|m| bpftool::is_ours(&m.name))
            .map(|m| m.id)
            .collect();
        sb
    }

    pub fn netns_str(&self) -> &str {
        self.netns.to_str().expect("a UTF-8 path")
    }

    pub fn cgroup_str(&self) -> &str {
        self.cgroup.to_str().expect("a UTF-8 path")
    }

    pub fn bpffs_str(&self) -> &str {
        self.bpffs.to_str().expect("a UTF-8 path")
    }

    /// Writes a services file atomically (a dotfile renamed into place: the agent skips
    /// dotfiles, so it never reads half a file).
    pub fn write_services(&self, file: &str, yaml: &str) {
        let tmp = self.services.join(format!(".{file}.tmp"));
        let mut f = File::create(&tmp).unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
        f.write_all(yaml.as_bytes()).expect("write services");
        f.sync_all().expect("sync services");
        fs::rename(&tmp, self.services.join(file)).expect("rename services into place");
    }

    pub fn remove_services(&self, file: &str) {
        fs::remove_file(self.services.join(file)).expect("remove services file");
    }

    /// Starts `dp-probe serve` in the namespace on `ip` (TCP and UDP on `port`). Its id,
    /// which every answer carries, is `ip:port`.
    pub fn start_backend(&mut self, ip: &str, port: u16) {
        assert!(
            ip.starts_with("127."),
            "backends live on 127.0.0.0/8 only, not {ip}"
        );
        let addr = format!("{ip}:{port}");
        let proc = probe::serve(&addr, &self.netns, &[addr.as_str()], &[addr.as_str()]);
        self.record(proc.pid());
        self.backends.insert(addr, proc);
    }

    /// Ids (`ip:port`) of the running backends.
    pub fn backend_ids(&self) -> Vec<String> {
        self.backends.keys().cloned().collect()
    }

    /// Kills a backend (by its pid) and waits until it is gone.
    pub fn stop_backend(&mut self, id: &str) {
        let mut p = self
            .backends
            .remove(id)
            .unwrap_or_else(|| panic!("no backend {id}"));
        p.signal(libc::SIGKILL);
        p.wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("backend {id} did not exit"));
    }

    /// Starts `datapathd run` and waits for its ready line (or, with a failpoint, for
    /// nothing: see [`Sandbox::crash_agent_at`]).
    pub fn start_agent(&mut self, opts: &AgentOpts) -> &mut Agent {
        let n = self.agents.len();
        let stdout = self.dir.join(format!("agent-{n}.out"));
        let stderr = self.dir.join(format!("agent-{n}.err"));
        let mut cmd = Command::new(datapathd());
        cmd.args(["run", "--cgroup", self.cgroup_str(), "--services"])
            .arg(&self.services)
            .args(["--bpffs", self.bpffs_str()]);
        if let Some(m) = &opts.mutant {
            cmd.args(["--mutant", m]);
        }
        if let Some(f) = &opts.failpoint {
            cmd.args(["--failpoint", f]);
        }
        cmd.args(&opts.extra_args);
        let child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("agent stdout file"))
            .stderr(File::create(&stderr).expect("agent stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", datapathd().display()));
        self.record(child.id());
        self.agents.push(Agent {
            proc: Proc {
                what: format!("datapathd #{n}"),
                child,
            },
            stdout,
            stderr,
        });
        let agent = self.agents.last_mut().expect("just pushed");
        if opts.failpoint.is_none() {
            let ready = wait_for(AGENT_READY, || {
                if agent.printed_ready() {
                    Some(Ok(()))
                } else if !agent.proc.running() {
                    Some(Err(()))
                } else {
                    None
                }
            });
            match ready {
                Some(Ok(())) => {}
                Some(Err(())) => panic!("datapathd exited before it was ready\n{}", agent.log()),
                None => panic!(
                    "datapathd not ready within {AGENT_READY:?}\n{}",
                    agent.log()
                ),
            }
        }
        agent
    }

    /// Starts `datapathd run --failpoint NAME` and waits until it has died there.
    pub fn crash_agent_at(&mut self, failpoint: &str, mutant: Option<&str>) -> String {
        let opts = AgentOpts {
            mutant: mutant.map(str::to_owned),
            failpoint: Some(failpoint.to_owned()),
            ..AgentOpts::default()
        };
        let agent = self.start_agent(&opts);
        let ended = wait_for(AGENT_EXIT, || {
            if let Ok(Some(status)) = agent.proc.child.try_wait() {
                Some(Ok(status))
            } else if agent.printed_ready() {
                Some(Err(()))
            } else {
                None
            }
        });
        let status = match ended {
            Some(Ok(status)) => status,
            Some(Err(())) => panic!(
                "datapathd --failpoint {failpoint} never reached it: it became ready\n{}",
                agent.log()
            ),
            None => panic!(
                "datapathd --failpoint {failpoint} still runs after {AGENT_EXIT:?}\n{}",
                agent.log()
            ),
        };
        let log = agent.log();
        assert!(
            !status.success(),
            "datapathd --failpoint {failpoint} exited successfully\n{log}"
        );
        assert!(
            log.contains(&format!("failpoint {failpoint}")),
            "datapathd did not die at failpoint {failpoint} ({status})\n{log}"
        );
        log
    }

    /// The live (last started) agent.
    pub fn agent(&mut self) -> &mut Agent {
        self.agents.last_mut().expect("no agent started")
    }

    /// Stops the live agent with `sig` and waits for it to end.
    pub fn stop_agent(&mut self, sig: libc::c_int) {
        let agent = self.agent();
        agent.proc.signal(sig);
        if agent.proc.wait_exit(Duration::from_secs(10)).is_none() {
            panic!("datapathd did not exit after signal {sig}\n{}", agent.log());
        }
    }

    /// Every agent's output, for failure messages.
    pub fn agent_logs(&self) -> String {
        self.agents
            .iter()
            .map(Agent::log)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `datapathd status --json` for this instance.
    pub fn status(&self) -> serde_json::Value {
        let out = datapathd_cmd(&[
            "status",
            "--json",
            "--bpffs",
            self.bpffs_str(),
            "--cgroup",
            self.cgroup_str(),
        ]);
        assert!(
            out.status.success(),
            "datapathd status failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "datapathd status printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `datapathd cleanup` for this instance; returns its output.
    pub fn cleanup(&self) -> Output {
        datapathd_cmd(&[
            "cleanup",
            "--bpffs",
            self.bpffs_str(),
            "--cgroup",
            self.cgroup_str(),
        ])
    }

    fn teardown(&mut self) -> Vec<String> {
        // Processes first: they hold the objects below.
        self.agents.clear();
        self.backends.clear();
        remove_world(&self.name)
    }

    /// Notes a process we started, so that a later test can end it if this test process
    /// dies without running its destructors (SIGKILL, Ctrl-C).
    fn record(&self, pid: u32) {
        if let Some(start) = start_time(pid) {
            let line = format!("{pid} {start}\n");
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("pids"));
            let _ = file.and_then(|mut f| f.write_all(line.as_bytes()));
        }
    }
}

/// The kernel's start time of a process (field 22 of /proc/PID/stat): with the pid, it
/// names one process even after the pid is reused.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Where the sandbox `name` keeps things: netns file, cgroup, bpffs directory, scratch.
fn world_paths(name: &str) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    (
        PathBuf::from("/run/netns").join(name),
        cgroup2_root().join(name),
        bpffs_root().join(name),
        std::env::temp_dir().join(name),
    )
}

/// Removes everything of the sandbox `name`: the processes it recorded (only those whose
/// pid and start time still match), the datapath objects (`datapathd cleanup`), its bpffs
/// directory, cgroup, network namespace and scratch directory. Returns what failed.
fn remove_world(name: &str) -> Vec<String> {
    let (netns, cgroup, bpffs, dir) = world_paths(name);
    let mut errors = Vec::new();
    for line in fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
    {
        let mut f = line.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(pid)), Some(Ok(start))) = (f.next(), f.next()) else {
            continue;
        };
        let (Ok(pid32), Ok(pid_t)) = (u32::try_from(pid), libc::pid_t::try_from(pid)) else {
            continue;
        };
        if start_time(pid32) == Some(start) {
            // SAFETY: kill(2) on a pid that is, by its start time, a process this test
            // suite started.
            unsafe { libc::kill(pid_t, libc::SIGKILL) };
            wait_for(Duration::from_secs(5), || {
                (start_time(pid32) != Some(start)).then_some(())
            });
        }
    }
    let (cg, bp) = (
        cgroup.to_str().unwrap_or_default(),
        bpffs.to_str().unwrap_or_default(),
    );
    let out = if cgroup.exists() {
        datapathd_cmd(&["cleanup", "--bpffs", bp, "--cgroup", cg])
    } else {
        datapathd_cmd(&["cleanup", "--bpffs", bp])
    };
    if !out.status.success() {
        errors.push(format!(
            "datapathd cleanup: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    if bpffs.exists() {
        if let Err(e) = fs::remove_dir_all(&bpffs) {
            errors.push(format!("remove {}: {e}", bpffs.display()));
        }
    }
    if cgroup.exists() {
        // Only processes this test started can be in its fresh cgroup (clients that
        // outlived a failed assertion): cgroup.kill ends exactly those.
        let _ = fs::write(cgroup.join("cgroup.kill"), "1");
        let removed = wait_for(Duration::from_secs(5), || fs::remove_dir(&cgroup).ok());
        if removed.is_none() {
            errors.push(format!("rmdir {}: still busy", cgroup.display()));
        }
    }
    if netns.exists() {
        let out = Command::new("ip").args(["netns", "del", name]).output();
        if !out.is_ok_and(|o| o.status.success()) {
            errors.push(format!("ip netns del {name}"));
        }
    }
    if dir.exists() {
        if let Err(e) = fs::remove_dir_all(&dir) {
            errors.push(format!("remove {}: {e}", dir.display()));
        }
    }
    errors
}

/// Removes what earlier test processes that died without cleaning up (SIGKILL, Ctrl-C)
/// left behind: every sandbox whose owning test process, the pid in its name, is gone.
fn sweep_stale() {
    let (netns, cgroup, bpffs, dir) = world_paths("x");
    let mut names = std::collections::BTreeSet::new();
    for parent in [netns, cgroup, bpffs, dir]
        .iter()
        .filter_map(|p| p.parent())
    {
        for e in fs::read_dir(parent).into_iter().flatten().flatten() {
            if let Some(n) = e.file_name().to_str().filter(|n| n.starts_with("dpt-")) {
                names.insert(n.to_owned());
            }
        }
    }
    for name in names {
        // dpt-TAG-PID-SEQ
        let Some(owner) = name.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let errors = remove_world(&name);
        eprintln!("removed sandbox {name} left by dead test process {owner}; problems: {errors:?}");
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let errors = self.teardown();
        if !errors.is_empty() {
            let msg = format!(
                "sandbox {} was not fully removed: {}",
                self.name,
                errors.join("; ")
            );
            if std::thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}
