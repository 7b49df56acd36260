//! The marker of a run on the host: a state file under /run/dp-harness/<marker>/ that
//! lists, *before* each is created, every object the run makes (namespaces, cgroup and
//! bpffs directories, processes by pid and start time). Teardown and `harness clean`
//! remove exactly what a state file lists, never anything found by name alone.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where state files live.
pub const STATE_ROOT: &str = "/run/dp-harness";

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
    pub dirs: Vec<PathBuf>,
    /// (pid, start time in clock ticks from /proc/PID/stat).
    pub pids: Vec<(u32, u64)>,
    /// datapathd, for `datapathd cleanup` of each (bpffs, cgroup) pair.
    pub datapathd: Option<PathBuf>,
    pub agents: Vec<(PathBuf, PathBuf)>,
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

impl StateFile {
    pub fn create(marker: &str) -> std::io::Result<StateFile> {
        let dir = Path::new(STATE_ROOT).join(marker);
        std::fs::create_dir_all(&dir)?;
        let me = std::process::id();
        let sf = StateFile {
            path: dir.join("state.json"),
            state: Arc::new(Mutex::new(State {
                marker: marker.to_string(),
                owner: (me, start_time(me).unwrap_or(0)),
                ..State::default()
            })),
        };
        sf.save()?;
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

    /// Changes the state and writes it out (write beside, rename).
    pub fn update(&self, f: impl FnOnce(&mut State)) -> std::io::Result<()> {
        {
            let mut s = self
                .state
                .lock()
                .map_err(|_| std::io::Error::other("state poisoned"))?;
            f(&mut s);
        }
        self.save()
    }

    fn save(&self) -> std::io::Result<()> {
        let s = self.get();
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&s).unwrap_or_default())?;
        std::fs::rename(&tmp, &self.path)
    }

    pub fn add_pid(&self, pid: u32) {
        if let Some(st) = start_time(pid) {
            let _ = self.update(|s| s.pids.push((pid, st)));
        }
    }

    /// Removes the state file and its directory (after everything it lists is gone).
    pub fn remove(&self) -> std::io::Result<()> {
        std::fs::remove_dir_all(self.dir())
    }
}

/// Every state file under [`STATE_ROOT`].
pub fn all() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(STATE_ROOT)
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
