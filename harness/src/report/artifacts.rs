//! Artifacts taken before cleanup: per node, the agent logs of every start,
//! `datapathd status --json`, bpftool prog/map/link/cgroup dumps, ip addr/route,
//! iptables-save; the servers' logs.

use std::path::Path;
use std::time::Duration;

use crate::run::Live;

pub fn collect(live: &Live, dir: &Path) {
    for cn in &live.cluster.nodes {
        let d = dir.join(cn.name());
        if std::fs::create_dir_all(&d).is_err() {
            continue;
        }
        let node = cn.node.as_ref();
        let save = |file: &str, argv: &[&str]| {
            let text = match node.run(argv, Duration::from_secs(30)) {
                Ok(o) => format!(
                    "$ {}\n# {}\n{}{}",
                    argv.join(" "),
                    o.exit,
                    o.stdout_str(),
                    o.stderr_str()
                ),
                Err(e) => format!("$ {}\n# error: {e}\n", argv.join(" ")),
            };
            let _ = std::fs::write(d.join(file), text);
        };
        let dp = cn.datapathd.display().to_string();
        let bpffs = cn.bpffs.display().to_string();
        let cg = cn.cgroup.display().to_string();
        save(
            "datapathd-status.json",
            &[&dp, "status", "--json", "--bpffs", &bpffs, "--cgroup", &cg],
        );
        save(
            "bpftool-prog.json",
            &["bpftool", "-j", "-f", "prog", "show"],
        );
        save("bpftool-map.json", &["bpftool", "-j", "-f", "map", "show"]);
        save(
            "bpftool-link.json",
            &["bpftool", "-j", "-f", "link", "show"],
        );
        save(
            "bpftool-cgroup.json",
            &["bpftool", "-j", "cgroup", "show", &cg],
        );
        save("ip-addr.txt", &["ip", "addr"]);
        save("ip-route.txt", &["ip", "route"]);
        save("iptables-save.txt", &["iptables-save"]);
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
        for a in live.agents.iter().filter(|a| a.node == cn.name()) {
            for l in &a.logs {
                if let (Ok(data), Some(n)) = (node.read_file(l), l.file_name()) {
                    let _ = std::fs::write(d.join(n), data);
                }
            }
        }
    }
}
