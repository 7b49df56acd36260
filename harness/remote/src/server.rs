//! The guest side: read requests, answer each on its own thread (so a long wait does not
//! hold up a quick read), write responses whole under one lock.

use std::collections::HashMap;
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::wire::{read_header, read_payload, write_frame, Ended, Op, Reply, Request, Response};

/// PATH for commands: dropbear's default omits the sbin directories.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How often a file or a foreign pid is looked at while waiting (no process started).
const POLL: Duration = Duration::from_millis(20);
/// Between SIGTERM and SIGKILL for a command that outlived its timeout.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// Exit statuses of the processes this server spawned, by pid (`None`: running).
#[derive(Default)]
struct Spawned {
    ended: Mutex<HashMap<u32, Option<Ended>>>,
    changed: Condvar,
}

impl Spawned {
    fn set(&self, pid: u32, e: Option<Ended>) {
        self.ended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pid, e);
        self.changed.notify_all();
    }

    /// `Some(Some(e))`: ended; `Some(None)`: running; `None`: not ours.
    fn get(&self, pid: u32) -> Option<Option<Ended>> {
        self.ended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&pid)
            .copied()
    }

    /// Waits until `pid` (ours) ends or `deadline`; its status, or `None` if running.
    fn wait(&self, pid: u32, deadline: Instant) -> Option<Ended> {
        let mut map = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(Some(e)) = map.get(&pid) {
                return Some(*e);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            map = self
                .changed
                .wait_timeout(map, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Serves requests from `input` until it closes; responses go to `output`.
pub fn serve<R: BufRead, W: Write + Send + 'static>(mut input: R, output: W) -> io::Result<()> {
    std::env::set_var("PATH", PATH);
    let output = Arc::new(Mutex::new(output));
    let spawned = Arc::new(Spawned::default());
    while let Some(req) = read_header::<_, Request>(&mut input)? {
        let payload = read_payload(&mut input, req.payload)?;
        let (output, spawned) = (Arc::clone(&output), Arc::clone(&spawned));
        thread::Builder::new()
            .name(format!("req-{}", req.id))
            .spawn(move || {
                let (reply, payloads) = answer(req.op, payload, &spawned);
                let header = Response {
                    id: req.id,
                    reply,
                    payloads: payloads.iter().map(Vec::len).collect(),
                };
                let parts: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
                let mut w = output.lock().unwrap_or_else(PoisonError::into_inner);
                // A closed stdout means the harness went away: nothing left to tell.
                let _ = write_frame(&mut *w, &header, &parts);
            })?;
    }
    Ok(())
}

fn error(message: String, e: &io::Error) -> (Reply, Vec<Vec<u8>>) {
    (
        Reply::Error {
            message: format!("{message}: {e}"),
            not_found: e.kind() == io::ErrorKind::NotFound,
        },
        Vec::new(),
    )
}

fn answer(op: Op, payload: Vec<u8>, spawned: &Arc<Spawned>) -> (Reply, Vec<Vec<u8>>) {
    match op {
        Op::Run {
            argv,
            env,
            timeout_ms,
        } => {
            let r = run(&argv, &env, payload, Duration::from_millis(timeout_ms));
            (
                Reply::Ran {
                    ended: vec![r.ended],
                    ms: vec![r.ms],
                },
                vec![r.stdout, r.stderr],
            )
        }
        Op::Batch { argvs, timeout_ms } => {
            let (mut ended, mut ms, mut payloads) = (Vec::new(), Vec::new(), Vec::new());
            for argv in &argvs {
                let r = run(argv, &[], Vec::new(), Duration::from_millis(timeout_ms));
                ended.push(r.ended);
                ms.push(r.ms);
                payloads.push(r.stdout);
                payloads.push(r.stderr);
            }
            (Reply::Ran { ended, ms }, payloads)
        }
        Op::ReadFile { path } => match std::fs::read(&path) {
            Ok(data) => (Reply::Data, vec![data]),
            Err(e) => error(format!("cannot read {path}"), &e),
        },
        Op::WriteFile { path, mode } => match write_file(Path::new(&path), &payload, mode) {
            Ok(()) => (Reply::Done, Vec::new()),
            Err(e) => error(format!("cannot write {path}"), &e),
        },
        Op::Spawn {
            argv,
            env,
            stdout,
            stderr,
        } => match spawn(&argv, &env, Path::new(&stdout), Path::new(&stderr), spawned) {
            Ok(pid) => (Reply::Spawned { pid }, Vec::new()),
            Err(e) => error(format!("cannot start `{}`", argv.join(" ")), &e),
        },
        Op::Kill { pid, signal } => {
            // SAFETY: kill has no memory preconditions; pid > 0 names one process.
            if pid == 0 || unsafe { libc::kill(pid as libc::pid_t, signal) } == 0 {
                return (Reply::Done, Vec::new());
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                // Already gone: the caller waits for its status next.
                (Reply::Done, Vec::new())
            } else {
                error(format!("cannot signal pid {pid}"), &e)
            }
        }
        Op::WaitExit { pid, timeout_ms } => {
            let deadline = Instant::now() + Duration::from_millis(timeout_ms);
            (
                Reply::Exit {
                    ended: wait_exit(pid, deadline, spawned),
                },
                Vec::new(),
            )
        }
        Op::WaitForLine {
            path,
            line,
            pid,
            timeout_ms,
        } => {
            let deadline = Instant::now() + Duration::from_millis(timeout_ms);
            let has = || std::fs::read(&path).is_ok_and(|d| has_line(&d, &line));
            loop {
                if has() {
                    return (Reply::Line { found: true }, Vec::new());
                }
                if ended(pid, spawned) {
                    // One more read: the line may have been written just before the exit.
                    return (Reply::Line { found: has() }, Vec::new());
                }
                if Instant::now() >= deadline {
                    return (Reply::TimedOut, Vec::new());
                }
                thread::sleep(POLL);
            }
        }
    }
}

/// Does `data` hold a line equal to `line` (surrounding blanks ignored)?
pub fn has_line(data: &[u8], line: &str) -> bool {
    String::from_utf8_lossy(data)
        .lines()
        .any(|l| l.trim() == line)
}

fn ended_of(s: ExitStatus) -> Ended {
    match (s.code(), s.signal()) {
        (Some(c), _) => Ended::Code(c),
        (None, Some(sig)) => Ended::Signal(sig),
        (None, None) => Ended::Unknown,
    }
}

/// Is `pid` gone? Ours: by its recorded status; another's: by `kill(pid, 0)`.
fn ended(pid: u32, spawned: &Spawned) -> bool {
    match spawned.get(pid) {
        Some(e) => e.is_some(),
        // SAFETY: signal 0 only checks that the process exists.
        None => (unsafe { libc::kill(pid as libc::pid_t, 0) }) != 0,
    }
}

fn wait_exit(pid: u32, deadline: Instant, spawned: &Spawned) -> Option<Ended> {
    if spawned.get(pid).is_some() {
        return spawned.wait(pid, deadline);
    }
    loop {
        if ended(pid, spawned) {
            return Some(Ended::Unknown);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".dp-tmp");
    std::fs::write(&tmp, data)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)
}

struct Ran {
    ended: Ended,
    ms: u64,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

fn reader(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// Runs `argv` in its own process group, `stdin` fed to it, killed after `timeout`.
fn run(argv: &[String], env: &[(String, String)], stdin: Vec<u8>, timeout: Duration) -> Ran {
    let started = Instant::now();
    let Some((prog, args)) = argv.split_first() else {
        return Ran {
            ended: Ended::Code(127),
            ms: 0,
            stdout: Vec::new(),
            stderr: b"dp-remote: empty command".to_vec(),
        };
    };
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(if stdin.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setpgid is async-signal-safe; its own group lets a timeout stop the whole
    // command (a script and what it started), and nothing else.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            // As a shell reports it: 127 not found, 126 not runnable.
            let code = if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return Ran {
                ended: Ended::Code(code),
                ms: started.elapsed().as_millis() as u64,
                stdout: Vec::new(),
                stderr: format!("dp-remote: cannot run {prog}: {e}").into_bytes(),
            };
        }
    };
    let pid = child.id() as libc::pid_t;
    if let Some(mut w) = child.stdin.take() {
        thread::spawn(move || {
            // A command that does not read its stdin closes it early: not an error.
            let _ = w.write_all(&stdin);
        });
    }
    let out = child.stdout.take().map(reader);
    let err = child.stderr.take().map(reader);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(timeout) {
        Ok(s) => s.map(ended_of).unwrap_or(Ended::Unknown),
        Err(_) => {
            // SAFETY: a negative pid signals the command's own process group.
            unsafe { libc::kill(-pid, libc::SIGTERM) };
            if rx.recv_timeout(KILL_GRACE).is_err() {
                // SAFETY: as above.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                let _ = rx.recv();
            }
            Ended::TimedOut
        }
    };
    Ran {
        ended: status,
        ms: started.elapsed().as_millis() as u64,
        stdout: out.and_then(|h| h.join().ok()).unwrap_or_default(),
        stderr: err.and_then(|h| h.join().ok()).unwrap_or_default(),
    }
}

fn spawn(
    argv: &[String],
    env: &[(String, String)],
    stdout: &Path,
    stderr: &Path,
    spawned: &Arc<Spawned>,
) -> io::Result<u32> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::other("empty command"))?;
    for p in [stdout, stderr] {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
    }
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(stdout)?)
        .stderr(std::fs::File::create(stderr)?);
    // SAFETY: setsid is async-signal-safe. Its own session: the process outlives this
    // server and the SSH channel (a reconnect must not kill the agent under test).
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id();
    spawned.set(pid, None);
    let spawned = Arc::clone(spawned);
    thread::spawn(move || {
        let e = child.wait().map(ended_of).unwrap_or(Ended::Unknown);
        spawned.set(pid, Some(e));
    });
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(ops: Vec<(Op, Vec<u8>)>) -> Vec<(Response, Vec<Vec<u8>>)> {
        let mut input = Vec::new();
        let n = ops.len();
        for (i, (op, payload)) in ops.into_iter().enumerate() {
            let req = Request {
                id: i as u64,
                op,
                payload: payload.len(),
            };
            write_frame(&mut input, &req, &[&payload]).unwrap();
        }
        let out = Arc::new(Mutex::new(Vec::new()));
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().write(b)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        serve(&input[..], Shared(Arc::clone(&out))).unwrap();
        // Requests are answered on threads: wait for every answer.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let data = out.lock().unwrap().clone();
            let mut r = io::BufReader::new(&data[..]);
            let mut got = Vec::new();
            while let Ok(Some(h)) = read_header::<_, Response>(&mut r) {
                let p = h
                    .payloads
                    .iter()
                    .map(|&l| read_payload(&mut r, l).unwrap())
                    .collect();
                got.push((h, p));
            }
            if got.len() == n || Instant::now() > deadline {
                got.sort_by_key(|(h, _)| h.id);
                return got;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn run_op(argv: &[&str], timeout_ms: u64) -> Op {
        Op::Run {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("DP_X".into(), "x y".into())],
            timeout_ms,
        }
    }

    #[test]
    fn run_gives_status_stdout_stderr_and_feeds_stdin() {
        let got = ask(vec![
            (
                run_op(&["sh", "-c", "cat; echo \"$DP_X\" >&2; exit 3"], 5000),
                b"in".to_vec(),
            ),
            (run_op(&["/nonexistent/dp-x"], 5000), Vec::new()),
        ]);
        assert_eq!(
            got[0].0.reply,
            Reply::Ran {
                ended: vec![Ended::Code(3)],
                ms: match &got[0].0.reply {
                    Reply::Ran { ms, .. } => ms.clone(),
                    _ => unreachable!(),
                }
            }
        );
        assert_eq!(got[0].1, vec![b"in".to_vec(), b"x y\n".to_vec()]);
        match &got[1].0.reply {
            Reply::Ran { ended, .. } => assert_eq!(ended, &vec![Ended::Code(127)]),
            r => panic!("unexpected {r:?}"),
        }
    }

    #[test]
    fn a_command_past_its_timeout_is_killed_with_its_children() {
        let marker = std::env::temp_dir().join(format!("dp-remote-{}", std::process::id()));
        let script = format!("(sleep 3; touch {}) & sleep 30", marker.display());
        let got = ask(vec![(run_op(&["sh", "-c", &script], 300), Vec::new())]);
        match &got[0].0.reply {
            Reply::Ran { ended, .. } => assert_eq!(ended, &vec![Ended::TimedOut]),
            r => panic!("unexpected {r:?}"),
        }
        thread::sleep(Duration::from_secs(4));
        assert!(
            !marker.exists(),
            "the command's background child survived the timeout"
        );
    }

    #[test]
    fn files_are_written_atomically_and_read_back() {
        let dir = std::env::temp_dir().join(format!("dp-remote-files-{}", std::process::id()));
        let path = dir.join("a/b/c.txt").display().to_string();
        let got = ask(vec![(
            Op::WriteFile {
                path: path.clone(),
                mode: 0o600,
            },
            b"hello".to_vec(),
        )]);
        assert_eq!(got[0].0.reply, Reply::Done);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let got = ask(vec![
            (Op::ReadFile { path: path.clone() }, Vec::new()),
            (
                Op::ReadFile {
                    path: format!("{path}.missing"),
                },
                Vec::new(),
            ),
        ]);
        assert_eq!(got[0].1, vec![b"hello".to_vec()]);
        assert!(matches!(
            got[1].0.reply,
            Reply::Error {
                not_found: true,
                ..
            }
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn spawned_processes_are_waited_for_and_their_lines_seen() {
        let dir = std::env::temp_dir().join(format!("dp-remote-spawn-{}", std::process::id()));
        let out = dir.join("out").display().to_string();
        let spawned = Arc::new(Spawned::default());
        let (reply, _) = answer(
            Op::Spawn {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    "sleep 0.3; echo ready; sleep 30".into(),
                ],
                env: Vec::new(),
                stdout: out.clone(),
                stderr: dir.join("err").display().to_string(),
            },
            Vec::new(),
            &spawned,
        );
        let Reply::Spawned { pid } = reply else {
            panic!("unexpected {reply:?}")
        };
        let wait = |line: &str| {
            answer(
                Op::WaitForLine {
                    path: out.clone(),
                    line: line.into(),
                    pid,
                    timeout_ms: 5000,
                },
                Vec::new(),
                &spawned,
            )
            .0
        };
        assert_eq!(wait("ready"), Reply::Line { found: true });
        let still = answer(
            Op::WaitExit {
                pid,
                timeout_ms: 100,
            },
            Vec::new(),
            &spawned,
        )
        .0;
        assert_eq!(still, Reply::Exit { ended: None });
        answer(
            Op::Kill {
                pid,
                signal: libc::SIGKILL,
            },
            Vec::new(),
            &spawned,
        );
        let gone = answer(
            Op::WaitExit {
                pid,
                timeout_ms: 5000,
            },
            Vec::new(),
            &spawned,
        )
        .0;
        assert_eq!(
            gone,
            Reply::Exit {
                ended: Some(Ended::Signal(libc::SIGKILL))
            }
        );
        // The process ended without the line: not found, and no waiting out the timeout.
        assert_eq!(wait("never"), Reply::Line { found: false });
        std::fs::remove_dir_all(dir).unwrap();
    }
}
