//! Artifacts taken before cleanup, every node's in its own directory: what each command
//! printed (`datapathd status --json`, bpftool prog/map/link/cgroup, ip addr/route,
//! iptables-save, `ss -tanpie` in the node's namespace and in each of its pods', dmesg),
//! the agent logs of every start and the servers' logs. reports/README.md describes the
//! layout.
//!
//! A file named `*.json` always parses: a command's output is kept as `.json` only when it
//! is JSON, otherwise as `.txt`. What ran, how it ended and where its stderr went are in
//! the node's `commands.json`, so the outputs themselves stay clean.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::cluster::{ClusterNode, Pod};
use crate::event::{Consumer, Event};
use crate::live::Live;
use crate::node::{Exit, NodeError, Output};

/// The index of a node's artifact directory.
pub const INDEX: &str = "commands.json";

/// How long each collected command may take (a VM under TCG is slow, a hung one must not
/// hold the run).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// What a command prints, and so which extension its output may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Kept as `.json` when it parses, as `.txt` when it does not.
    Json,
    Text,
}

/// A command to run on a node and keep the output of.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wanted {
    /// The output file's name without extension (`bpftool-prog`, `ss-pod-pod-a`).
    stem: String,
    format: Format,
    /// The network namespace it runs in: `node`, or `pod NAME` (entered with nsenter).
    namespace: String,
    argv: Vec<String>,
}

/// One command in `commands.json`: what ran, how it ended, which files hold its output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandRecord {
    /// The command as a shell line, to read and to paste on the node.
    pub command: String,
    pub argv: Vec<String>,
    /// `node`, or `pod NAME`.
    pub namespace: String,
    /// How it ended; absent when it could not be run at all (see `error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<Exit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The file with its standard output, in this directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// The file with its standard error, when it wrote any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// Why its output is not where it would be (not JSON, nothing printed) or why nothing
    /// was kept (the node could not run it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A file taken from the node as it was (a log).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CopiedRecord {
    /// Its name in this directory.
    pub file: String,
    /// Its path on the node.
    pub from: PathBuf,
}

/// `commands.json`: everything in a node's artifact directory and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeIndex {
    pub node: String,
    pub commands: Vec<CommandRecord>,
    pub copied: Vec<CopiedRecord>,
    /// Files that could not be copied, with why.
    pub not_copied: Vec<String>,
}

/// What the node's commands are: the agent's status, the kernel's bpf objects, the
/// network as ip and iptables see it, every socket in every namespace of the node, the
/// kernel log.
fn wanted(cn: &ClusterNode, pods: &[&Pod]) -> Vec<Wanted> {
    let dp = cn.datapathd.display().to_string();
    let bpffs = cn.bpffs.display().to_string();
    let cg = cn.cgroup.display().to_string();
    let on_node = |stem: &str, format: Format, argv: &[&str]| Wanted {
        stem: stem.to_string(),
        format,
        namespace: "node".to_string(),
        argv: argv.iter().map(|a| a.to_string()).collect(),
    };
    let ss = ["ss", "-tanpie"];
    let mut v = vec![
        on_node(
            "datapathd-status",
            Format::Json,
            &[&dp, "status", "--json", "--bpffs", &bpffs, "--cgroup", &cg],
        ),
        on_node(
            "bpftool-prog",
            Format::Json,
            &["bpftool", "-j", "-f", "prog", "show"],
        ),
        on_node(
            "bpftool-map",
            Format::Json,
            &["bpftool", "-j", "-f", "map", "show"],
        ),
        on_node(
            "bpftool-link",
            Format::Json,
            &["bpftool", "-j", "-f", "link", "show"],
        ),
        on_node(
            "bpftool-cgroup",
            Format::Json,
            &["bpftool", "-j", "cgroup", "show", &cg],
        ),
        on_node("ip-addr", Format::Text, &["ip", "addr"]),
        on_node("ip-route", Format::Text, &["ip", "route"]),
        on_node("iptables-save", Format::Text, &["iptables-save"]),
        on_node("ss", Format::Text, &ss),
    ];
    // A pod's sockets are only visible from inside its namespace.
    for pod in pods {
        let net = format!("--net={}", pod.netns.display());
        let mut argv = vec!["nsenter".to_string(), net, "--".to_string()];
        argv.extend(ss.iter().map(|a| a.to_string()));
        v.push(Wanted {
            stem: format!("ss-pod-{}", pod.name),
            format: Format::Text,
            namespace: format!("pod {}", pod.name),
            argv,
        });
    }
    // On the netns provider every node shares the host's kernel: each node's dmesg is
    // that one log (reports/README.md says so).
    v.push(on_node("dmesg", Format::Text, &["dmesg"]));
    v
}

/// `argv` quoted for a POSIX shell (an argument shlex cannot quote stays as it is).
fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| shlex::try_quote(a).map_or_else(|_| a.clone(), |q| q.into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What to keep of one command's result: its record and the files to write (name, data).
/// `result` is the command's output, or why the node could not give one.
fn keep(w: &Wanted, result: Result<&Output, String>) -> (CommandRecord, Vec<(String, Vec<u8>)>) {
    let mut record = CommandRecord {
        command: shell_line(&w.argv),
        argv: w.argv.clone(),
        namespace: w.namespace.clone(),
        exit: None,
        duration_ms: None,
        stdout: None,
        stderr: None,
        error: None,
    };
    let out = match result {
        Ok(out) => out,
        Err(e) => {
            record.error = Some(e);
            return (record, Vec::new());
        }
    };
    record.exit = Some(out.exit);
    record.duration_ms = Some(u64::try_from(out.duration.as_millis()).unwrap_or(u64::MAX));
    let mut files = Vec::new();
    let printed = !out.stdout.iter().all(u8::is_ascii_whitespace);
    // An empty output of a failed command says nothing; of a successful one it is the
    // answer (no sockets, an empty log) and is kept.
    if printed || out.success() {
        let ext = match w.format {
            Format::Json => match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                Ok(_) => "json",
                Err(e) => {
                    record.error = Some(if printed {
                        format!("its output is not JSON ({e}): kept as text")
                    } else {
                        "it printed nothing".to_string()
                    });
                    "txt"
                }
            },
            Format::Text => "txt",
        };
        let name = format!("{}.{ext}", w.stem);
        files.push((name.clone(), out.stdout.clone()));
        record.stdout = Some(name);
    }
    if !out.stderr.is_empty() {
        let name = format!("{}.err", w.stem);
        files.push((name.clone(), out.stderr.clone()));
        record.stderr = Some(name);
    }
    (record, files)
}

/// The name a file copied from the node gets here: its own, unless it claims to be JSON
/// and is not (a `.json` in the artifacts always parses).
fn copied_name(name: &str, data: &[u8]) -> String {
    if name.ends_with(".json") && serde_json::from_slice::<serde_json::Value>(data).is_err() {
        format!("{name}.txt")
    } else {
        name.to_string()
    }
}

/// The files directly in the node's work directory, listed on the node (a VM's is not on
/// this host).
fn work_files(cn: &ClusterNode) -> Result<Vec<PathBuf>, NodeError> {
    let dir = cn.work_dir.display().to_string();
    let out = cn.node.check(
        &[
            "find",
            &dir,
            "-mindepth",
            "1",
            "-maxdepth",
            "1",
            "-type",
            "f",
        ],
        COMMAND_TIMEOUT,
    )?;
    Ok(out.stdout_str().lines().map(PathBuf::from).collect())
}

/// Takes every node's artifacts into `dir/<node>/`. Best effort: a node that cannot be
/// reached leaves its index with the reason, and the others are still taken.
pub fn collect(live: &Live, dir: &Path) {
    // The agents' logs by node, taken out first (agents hold processes, not Sync).
    let agent_logs: Vec<(&str, &[PathBuf])> = live
        .agents
        .iter()
        .map(|a| (a.node.as_str(), a.logs.as_slice()))
        .collect();
    let all_pods = &live.cluster.pods;
    // Every node at once, each node's commands in one batch (a round trip each on a VM).
    crate::cluster::in_parallel(&live.cluster.nodes, |cn| {
        let d = dir.join(cn.name());
        if std::fs::create_dir_all(&d).is_err() {
            return;
        }
        let node = cn.node.as_ref();
        let pods: Vec<&Pod> = all_pods.iter().filter(|p| p.node == cn.name()).collect();
        let wanted = wanted(cn, &pods);
        let argvs: Vec<Vec<String>> = wanted.iter().map(|w| w.argv.clone()).collect();
        let outs = node.run_batch(&argvs, COMMAND_TIMEOUT);
        let mut index = NodeIndex {
            node: cn.name().to_string(),
            commands: Vec::new(),
            copied: Vec::new(),
            not_copied: Vec::new(),
        };
        for (i, w) in wanted.iter().enumerate() {
            let result = match &outs {
                Ok(outs) => outs
                    .get(i)
                    .ok_or_else(|| "the node returned no output for it".to_string()),
                Err(e) => Err(e.to_string()),
            };
            let (record, files) = keep(w, result);
            for (name, data) in files {
                if let Err(e) = std::fs::write(d.join(&name), data) {
                    index
                        .not_copied
                        .push(format!("{name}: cannot write it here: {e}"));
                }
            }
            index.commands.push(record);
        }
        // The work directory's files (agent and server logs) and every agent log, once.
        let mut files = work_files(cn).unwrap_or_else(|e| {
            index.not_copied.push(e.to_string());
            Vec::new()
        });
        for (_, logs) in agent_logs.iter().filter(|(n, _)| *n == cn.name()) {
            files.extend(logs.iter().cloned());
        }
        files.sort();
        files.dedup();
        for from in &files {
            let Some(name) = from.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let data = match node.read_file(from) {
                Ok(data) => data,
                Err(e) => {
                    index.not_copied.push(e.to_string());
                    continue;
                }
            };
            let file = copied_name(name, &data);
            match std::fs::write(d.join(&file), data) {
                Ok(()) => index.copied.push(CopiedRecord {
                    file,
                    from: from.clone(),
                }),
                Err(e) => index
                    .not_copied
                    .push(format!("{}: cannot write it here: {e}", from.display())),
            }
        }
        if let Ok(json) = serde_json::to_vec_pretty(&index) {
            let _ = std::fs::write(d.join(INDEX), json);
        }
    });
}

/// Takes the artifacts of every failed or interrupted scenario, before its cluster goes
/// down, into `<run dir>/artifacts/<scenario>-<iteration>`.
pub struct Collector {
    pub run_dir: PathBuf,
}

impl Consumer for Collector {
    fn event(&mut self, _event: &Event) {}

    fn scenario_failed(&mut self, scenario: &str, iteration: u32, live: &Live) -> Option<PathBuf> {
        let dir = self
            .run_dir
            .join("artifacts")
            .join(format!("{scenario}-{iteration}"));
        collect(live, &dir);
        Some(dir)
    }

    fn scenario_ending(&mut self, scenario: &str, iteration: u32, live: &Live) -> Option<PathBuf> {
        let dir = self
            .run_dir
            .join("pods")
            .join(format!("{scenario}-{iteration}"));
        super::pods::write(&live.cluster, &dir).then_some(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn out(stdout: &str, stderr: &str, exit: Exit) -> Output {
        Output {
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
            exit,
            duration: Duration::from_millis(12),
        }
    }

    fn json_cmd() -> Wanted {
        Wanted {
            stem: "bpftool-prog".into(),
            format: Format::Json,
            namespace: "node".into(),
            argv: vec!["bpftool".into(), "-j".into(), "prog".into()],
        }
    }

    #[test]
    fn json_output_is_kept_as_json_with_its_record_beside_it() {
        let (r, files) = keep(&json_cmd(), Ok(&out("[{\"id\":1}]", "", Exit::Code(0))));
        assert_eq!(
            files,
            vec![("bpftool-prog.json".to_string(), b"[{\"id\":1}]".to_vec())]
        );
        assert_eq!(r.stdout.as_deref(), Some("bpftool-prog.json"));
        assert_eq!(r.command, "bpftool -j prog");
        assert_eq!(r.exit, Some(Exit::Code(0)));
        assert_eq!(r.duration_ms, Some(12));
        assert_eq!((r.stderr, r.error), (None, None));
    }

    #[test]
    fn output_that_is_not_json_becomes_text_and_says_why() {
        // The old header format, or a tool that printed a warning first.
        let (r, files) = keep(
            &json_cmd(),
            Ok(&out("libbpf: warning\n[]", "", Exit::Code(0))),
        );
        assert_eq!(files[0].0, "bpftool-prog.txt");
        assert!(
            r.error
                .as_deref()
                .unwrap()
                .starts_with("its output is not JSON"),
            "{r:?}"
        );
    }

    #[test]
    fn a_failed_command_keeps_its_stderr_and_no_empty_output() {
        let (r, files) = keep(
            &json_cmd(),
            Ok(&out(
                "",
                "Error: can't get next program: EPERM\n",
                Exit::Code(255),
            )),
        );
        assert_eq!(
            files,
            vec![(
                "bpftool-prog.err".to_string(),
                b"Error: can't get next program: EPERM\n".to_vec()
            )]
        );
        assert_eq!(
            (r.stdout, r.stderr.as_deref()),
            (None, Some("bpftool-prog.err"))
        );
        assert_eq!(r.exit, Some(Exit::Code(255)));
    }

    #[test]
    fn a_failed_command_that_printed_json_keeps_it_as_json() {
        // `datapathd status --json` reports an unhealthy datapath and exits non-zero.
        let (r, files) = keep(&json_cmd(), Ok(&out("{\"schema\":1}", "", Exit::Code(1))));
        assert_eq!(files[0].0, "bpftool-prog.json");
        assert_eq!(r.exit, Some(Exit::Code(1)));
    }

    #[test]
    fn empty_output_of_a_json_command_is_text_not_json() {
        let (r, files) = keep(&json_cmd(), Ok(&out("", "", Exit::Code(0))));
        assert_eq!(files, vec![("bpftool-prog.txt".to_string(), Vec::new())]);
        assert_eq!(r.error.as_deref(), Some("it printed nothing"));
    }

    #[test]
    fn a_command_the_node_could_not_run_leaves_only_its_record() {
        let e = NodeError::Timeout {
            node: "node-a".into(),
            command: "dmesg".into(),
            after: COMMAND_TIMEOUT,
        };
        let (r, files) = keep(&json_cmd(), Err(e.to_string()));
        assert!(files.is_empty());
        assert_eq!(r.exit, None);
        assert!(r.error.unwrap().contains("did not finish within"));
    }

    #[test]
    fn a_copied_file_claiming_json_that_is_not_gets_txt() {
        assert_eq!(copied_name("x.json", b"{}"), "x.json");
        assert_eq!(copied_name("x.json", b"$ cmd\n{}"), "x.json.txt");
        assert_eq!(
            copied_name("datapathd-0.log", b"not json"),
            "datapathd-0.log"
        );
    }

    #[test]
    fn sockets_are_listed_in_the_node_and_in_each_of_its_pods() {
        let cn = ClusterNode {
            node: Arc::new(crate::node::netns::NetnsNode::new(
                "node-a",
                Path::new("/run/netns/dph-1-node-a"),
            )),
            cgroup: "/sys/fs/cgroup/dp-harness-1/node-a".into(),
            bpffs: "/sys/fs/bpf/dp-harness-1-node-a".into(),
            services_dir: "/tmp/s".into(),
            work_dir: "/tmp/w".into(),
            datapathd: "/bin/datapathd".into(),
            dp_probe: "/bin/dp-probe".into(),
            net: None,
        };
        let pod = |name: &str| Pod {
            name: name.into(),
            node: "node-a".into(),
            ip: "10.244.1.2".parse().unwrap(),
            netns: format!("/run/netns/dph-1-{name}").into(),
            cgroup: format!("/sys/fs/cgroup/dp-harness-1/node-a/{name}").into(),
        };
        let (a, b) = (pod("pod-a"), pod("pod-b"));
        let w = wanted(&cn, &[&a, &b]);
        let ss: Vec<(&str, &str, String)> = w
            .iter()
            .filter(|w| w.argv.contains(&"ss".to_string()))
            .map(|w| (w.stem.as_str(), w.namespace.as_str(), w.argv.join(" ")))
            .collect();
        assert_eq!(
            ss,
            vec![
                ("ss", "node", "ss -tanpie".to_string()),
                (
                    "ss-pod-pod-a",
                    "pod pod-a",
                    "nsenter --net=/run/netns/dph-1-pod-a -- ss -tanpie".to_string()
                ),
                (
                    "ss-pod-pod-b",
                    "pod pod-b",
                    "nsenter --net=/run/netns/dph-1-pod-b -- ss -tanpie".to_string()
                ),
            ]
        );
        assert!(w.iter().any(|w| w.stem == "dmesg" && w.argv == ["dmesg"]));
        let status = w.iter().find(|w| w.stem == "datapathd-status").unwrap();
        assert_eq!(status.format, Format::Json);
        assert_eq!(
            status.argv.join(" "),
            "/bin/datapathd status --json --bpffs /sys/fs/bpf/dp-harness-1-node-a --cgroup /sys/fs/cgroup/dp-harness-1/node-a"
        );
        // Every stem is unique: no output overwrites another.
        let mut stems: Vec<&str> = w.iter().map(|w| w.stem.as_str()).collect();
        stems.sort();
        stems.dedup();
        assert_eq!(stems.len(), w.len());
    }
}
