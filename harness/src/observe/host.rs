//! What a run may leave on the host: network namespaces, interfaces, cgroup and bpffs
//! directories, state directories. Compared before and after.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HostSnapshot {
    pub netns: BTreeSet<String>,
    pub links: BTreeSet<String>,
    pub cgroup_dirs: BTreeSet<String>,
    pub bpffs_dirs: BTreeSet<String>,
    pub state_dirs: BTreeSet<String>,
}

fn lines(argv: &[&str], field: usize) -> BTreeSet<String> {
    Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| {
                    l.split_whitespace().nth(field).map(|w| {
                        w.trim_end_matches(':')
                            .split('@')
                            .next()
                            .unwrap_or(w)
                            .to_string()
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn entries(dir: Option<&Path>) -> BTreeSet<String> {
    dir.and_then(|d| std::fs::read_dir(d).ok())
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn snapshot() -> HostSnapshot {
    let cg = crate::provider::netns::mount_of("cgroup2");
    let bpf = crate::provider::netns::mount_of("bpf");
    HostSnapshot {
        netns: lines(&["ip", "netns", "list"], 0),
        links: lines(&["ip", "-o", "link", "show"], 1),
        cgroup_dirs: entries(cg.as_deref()),
        bpffs_dirs: entries(bpf.as_deref()),
        state_dirs: entries(Some(Path::new(crate::state::STATE_ROOT))),
    }
}

/// Every name in `after` not in `before`, labelled by kind.
pub fn added(before: &HostSnapshot, after: &HostSnapshot) -> Vec<String> {
    let mut v = Vec::new();
    let mut diff = |kind: &str, a: &BTreeSet<String>, b: &BTreeSet<String>| {
        for x in b.difference(a) {
            v.push(format!("{kind} {x}"));
        }
    };
    diff("netns", &before.netns, &after.netns);
    diff("link", &before.links, &after.links);
    diff("cgroup", &before.cgroup_dirs, &after.cgroup_dirs);
    diff("bpffs", &before.bpffs_dirs, &after.bpffs_dirs);
    diff("state", &before.state_dirs, &after.state_dirs);
    v
}
