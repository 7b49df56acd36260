//! Artifacts taken before cleanup: per node, the agent logs of every start,
//! `datapathd status --json`, bpftool prog/map/link/cgroup dumps, ip addr/route,
//! iptables-save; the servers' logs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::event::{Consumer, Event};
use crate::live::Live;

pub fn collect(live: &Live, dir: &Path) {
    // The agents' logs by node, taken out first (agents hold processes, not Sync).
    let agent_logs: Vec<(&str, &[std::path::PathBuf])> = live
        .agents
        .iter()
        .map(|a| (a.node.as_str(), a.logs.as_slice()))
        .collect();
    // Every node at once, each node's commands in one batch (a round trip each on a VM).
    crate::cluster::in_parallel(&live.cluster.nodes, |cn| {
        let d = dir.join(cn.name());
        if std::fs::create_dir_all(&d).is_err() {
            return;
        }
        let node = cn.node.as_ref();
        let dp = cn.datapathd.display().to_string();
        let bpffs = cn.bpffs.display().to_string();
        let cg = cn.cgroup.display().to_string();
        let wanted: [(&str, &[&str]); 8] = [
            (
                "datapathd-status.json",
                &[&dp, "status", "--json", "--bpffs", &bpffs, "--cgroup", &cg],
            ),
            (
                "bpftool-prog.json",
                &["bpftool", "-j", "-f", "prog", "show"],
            ),
            ("bpftool-map.json", &["bpftool", "-j", "-f", "map", "show"]),
            (
                "bpftool-link.json",
                &["bpftool", "-j", "-f", "link", "show"],
            ),
            (
                "bpftool-cgroup.json",
                &["bpftool", "-j", "cgroup", "show", &cg],
            ),
            ("ip-addr.txt", &["ip", "addr"]),
            ("ip-route.txt", &["ip", "route"]),
            ("iptables-save.txt", &["iptables-save"]),
        ];
        let argvs: Vec<Vec<String>> = wanted
            .iter()
            .map(|(_, argv)| argv.iter().map(|a| a.to_string()).collect())
            .collect();
        let outs = node.run_batch(&argvs, Duration::from_secs(30));
        for (i, (file, argv)) in wanted.iter().enumerate() {
            let text = match &outs {
                Ok(outs) => format!(
                    "$ {}\n# {}\n{}{}",
                    argv.join(" "),
                    outs[i].exit,
                    outs[i].stdout_str(),
                    outs[i].stderr_str()
                ),
                Err(e) => format!("$ {}\n# error: {e}\n", argv.join(" ")),
            };
            let _ = std::fs::write(d.join(file), text);
        }
        if let Ok(rd) = std::fs::read_dir(&cn.work_dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_file() {
                    if let Ok(data) = node.read_file(&p) {
                        let _ = std::fs::write(d.join(e.file_name()), data);
                    }
                }
            }
        }
        for (_, logs) in agent_logs.iter().filter(|(n, _)| *n == cn.name()) {
            for l in logs.iter() {
                if let (Ok(data), Some(n)) = (node.read_file(l), l.file_name()) {
                    let _ = std::fs::write(d.join(n), data);
                }
            }
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
}
