//! The marker of a run on the host: a state file under `<state root>/<marker>/` that
//! lists, *before* each is created, every object the run makes (namespaces, cgroup and
//! bpffs directories, processes by pid and start time). Teardown and `harness clean`
//! remove exactly what a state file lists, never anything found by name alone.
//!
//! Processes are recorded before they can outlive the harness: see [`crate::gate`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Overrides the state root (a test or a chaos run keeps its runs apart from others'
/// on a shared machine: `harness clean` then sees only those).
pub const STATE_DIR_ENV: &str = "DP_HARNESS_STATE_DIR";

/// Where state files live: `$DP_HARNESS_STATE_DIR`, else /run/dp-harness (root), else the
/// user's runtime directory.
pub fn root() -> PathBuf {
    if let Some(d) = std::env::var_os(STATE_DIR_ENV) {
        return PathBuf::from(d);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/run/dp-harness")
    } else {
        std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join("dp-harness")
    }
}

/// A process the run started on the host: its identity survives pid reuse.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessRecord {
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat).
    pub start: u64,
    /// What it is, for reports (`qemu node-a`, `nsenter ... datapathd`).
    pub what: String,
}

impl ProcessRecord {
    /// Still the process that was recorded (not gone, not a reused pid)?
    pub fn alive(&self) -> bool {
        same_process(self.pid, self.start)
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct State {
    pub marker: String,
    /// The harness process that owns the run (pid, start time), so `clean` leaves a live
    /// run alone.
    pub owner: (u32, u64),
    pub netns: Vec<String>,
    /// Deepest last; removed in reverse.
    pub cgroups: Vec<PathBuf>,
    pub bpffs: Vec<PathBuf>,
    /// Filesystems the run mounted (a node's own bpffs); unmounted before the directories
    /// they are on are removed.
    #[serde(default)]
    pub mounts: Vec<PathBuf>,
    pub dirs: Vec<PathBuf>,
    /// Every host process of the run that may still run; a process is dropped from the
    /// list once the harness has reaped it.
    #[serde(default)]
    pub processes: Vec<ProcessRecord>,
    /// datapathd, for `datapathd cleanup` of each (bpffs, cgroup) pair.
    pub datapathd: Option<PathBuf>,
    pub agents: Vec<(PathBuf, PathBuf)>,
}

impl State {
    /// Is the harness that owns this run still running (and not this process)?
    pub fn owner_alive(&self) -> bool {
        let (pid, start) = self.owner;
        pid != std::process::id() && same_process(pid, start)
    }
}

/// A state file kept in step with the run. Clones share it.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
    state: Arc<Mutex<State>>,
}

/// Start time of `pid` (field 22 of /proc/PID/stat), or None if it is gone.
pub fn start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// True if `pid` is alive and is the process that had `start` as start time.
pub fn same_process(pid: u32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

/// True if `pid` has ended but not been reaped yet.
pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(false)
}

impl StateFile {
    /// A new state file in `<state root>/<marker>/`, owned by this process.
    pub fn create(marker: &str) -> std::io::Result<StateFile> {
        StateFile::create_in(&root().join(marker), marker)
    }

    /// A new state file in `dir` (created), owned by this process.
    pub fn create_in(dir: &Path, marker: &str) -> std::io::Result<StateFile> {
        std::fs::create_dir_all(dir)?;
        let me = std::process::id();
        let sf = StateFile {
            path: dir.join("state.json"),
            state: Arc::new(Mutex::new(State {
                marker: marker.to_string(),
                owner: (me, start_time(me).unwrap_or(0)),
                ..State::default()
            })),
        };
        sf.update(|_| ())?;
        Ok(sf)
    }

    pub fn open(path: &Path) -> std::io::Result<StateFile> {
        let data = std::fs::read(path)?;
        let state: State = serde_json::from_slice(&data)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok(StateFile {
            path: path.to_path_buf(),
            state: Arc::new(Mutex::new(state)),
        })
    }

    pub fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    pub fn get(&self) -> State {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Changes the state and writes it out (write beside, rename), under the lock, so
    /// that the file never goes back to an older state.
    pub fn update(&self, f: impl FnOnce(&mut State)) -> std::io::Result<()> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| std::io::Error::other("state poisoned"))?;
        f(&mut s);
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&*s)?)?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Records a process (see [`crate::gate`]: before it may run).
    pub fn add_process(&self, pid: u32, start: u64, what: &str) -> std::io::Result<()> {
        self.update(|s| {
            s.processes.push(ProcessRecord {
                pid,
                start,
                what: what.to_string(),
            })
        })
    }

    /// Forgets a process the harness has reaped.
    pub fn forget_process(&self, pid: u32, start: u64) {
        let _ = self.update(|s| s.processes.retain(|p| (p.pid, p.start) != (pid, start)));
    }

    /// Removes the state file and its directory (after everything it lists is gone).
    pub fn remove(&self) -> std::io::Result<()> {
        std::fs::remove_dir_all(self.dir())
    }
}

/// Every state file directly under `dir` (`dir/<marker>/state.json`).
pub fn all_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("state.json"))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every state file of the netns provider (`<state root>/dph-*/`).
pub fn all() -> Vec<PathBuf> {
    all_in(&root())
}

/// Stops every recorded process that is still the one recorded (SIGKILL, by pid), and
/// waits until each has ended. Returns what it did and what went wrong, one line each.
pub fn stop_processes(procs: &[ProcessRecord]) -> (Vec<String>, Vec<String>) {
    let (mut done, mut problems) = (Vec::new(), Vec::new());
    let mut killed = Vec::new();
    for p in procs {
        if !p.alive() {
            continue;
        }
        match kill_pid(p.pid, libc::SIGKILL) {
            Ok(()) => {
                done.push(format!("stopped process {} ({})", p.pid, p.what));
                killed.push(p);
            }
            Err(e) => problems.push(format!("kill {} ({}): {e}", p.pid, p.what)),
        }
    }
    // A killed process still holds its namespaces and cgroup until it is gone; one that
    // is not our child stays a zombie until its parent reaps it, which is as good.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while killed.iter().any(|p| p.alive() && !is_zombie(p.pid))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for p in killed.iter().filter(|p| p.alive() && !is_zombie(p.pid)) {
        problems.push(format!("process {} ({}) did not end", p.pid, p.what));
    }
    (done, problems)
}

/// Sends `sig` to `pid` only.
pub fn kill_pid(pid: u32, sig: i32) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: kill(2) on one pid (never 0 or negative: those address groups).
    if pid <= 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    let rc = unsafe { libc::kill(pid, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
