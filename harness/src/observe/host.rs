//! What a run may leave on the host: network namespaces, interfaces, cgroup and bpffs
//! directories, mounts, processes of ours, the host's own iptables rules, state
//! directories. Compared before and after (host-clean-after-down, ci/interrupts through
//! `harness host-snapshot`).

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
    /// Mount points (a namespace bound under /run/netns is one).
    #[serde(default)]
    pub mounts: BTreeSet<String>,
    /// Processes of ours (see [`is_ours`]): `PID:START EXE ARGS...`.
    #[serde(default)]
    pub processes: BTreeSet<String>,
    /// The host namespace's iptables rules (`iptables-save`, counters dropped), each
    /// with its occurrence (`#2` for a second identical rule).
    #[serde(default)]
    pub iptables: BTreeSet<String>,
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

/// Programs the harness starts on the host, by executable name.
const OUR_PROGRAMS: &[&str] = &["harness", "datapathd", "dp-probe", "dp-remote"];

/// Is a process with this executable and command line one of ours: one of our programs,
/// QEMU, or a helper (ssh, sh, nsenter) whose command line names a run (`dph-`, `dpq-`)
/// or a state directory?
pub fn is_ours(exe: &str, args: &[String]) -> bool {
    let base = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
    let prog = base(exe);
    let argv0 = args.first().map(|a| base(a)).unwrap_or_default();
    OUR_PROGRAMS.iter().any(|p| prog == *p || argv0 == *p)
        || prog.starts_with("qemu-system")
        || args
            .iter()
            .any(|a| a.contains("dph-") || a.contains("dpq-") || a.contains("dp-harness"))
}

fn processes() -> BTreeSet<String> {
    let mut v = BTreeSet::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let exe = std::fs::read_link(e.path().join("exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if args.is_empty() || !is_ours(&exe, &args) {
            continue;
        }
        let Some(start) = crate::state::start_time(pid) else {
            continue;
        };
        v.insert(format!("{pid}:{start} {}", args.join(" ")));
    }
    v
}

fn mounts() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

/// `iptables-save` of the host's namespace without counters; identical rules numbered.
fn iptables() -> BTreeSet<String> {
    let Ok(out) = Command::new("iptables-save").output() else {
        return BTreeSet::new();
    };
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    let mut table = String::new();
    let mut v = BTreeSet::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        if l.starts_with('#') || l == "COMMIT" {
            continue;
        }
        if let Some(t) = l.strip_prefix('*') {
            table = t.to_string();
            continue;
        }
        // `:CHAIN POLICY [packets:bytes]`: the counters move, the chain and policy do not.
        let rule = match l.rfind(" [") {
            Some(i) if l.starts_with(':') => &l[..i],
            _ => l,
        };
        let key = format!("{table} {rule}");
        let n = seen.entry(key.clone()).or_default();
        *n += 1;
        v.insert(if *n == 1 { key } else { format!("{key} #{n}") });
    }
    v
}

pub fn snapshot() -> HostSnapshot {
    let cg = crate::provider::netns::mount_of("cgroup2");
    let bpf = crate::provider::netns::mount_of("bpf");
    let root = crate::state::root();
    let mut state_dirs = entries(Some(&root));
    // The qemu provider's own root, not a run's.
    state_dirs.remove("qemu");
    state_dirs.extend(
        entries(Some(&crate::provider::qemu::state_root()))
            .into_iter()
            .map(|d| format!("qemu/{d}")),
    );
    HostSnapshot {
        netns: lines(&["ip", "netns", "list"], 0),
        links: lines(&["ip", "-o", "link", "show"], 1),
        cgroup_dirs: entries(cg.as_deref()),
        bpffs_dirs: entries(bpf.as_deref()),
        state_dirs,
        mounts: mounts(),
        processes: processes(),
        iptables: iptables(),
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
    diff("mount", &before.mounts, &after.mounts);
    diff("process", &before.processes, &after.processes);
    diff("iptables", &before.iptables, &after.iptables);
    v
}

/// Every entry of `before` gone from `after` (a run that removed what it did not make).
pub fn removed(before: &HostSnapshot, after: &HostSnapshot) -> Vec<String> {
    added(after, before)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ours_by_program_or_by_a_run_in_the_command_line() {
        assert!(is_ours(
            "/w/target/debug/datapathd",
            &args(&["datapathd", "run"])
        ));
        assert!(is_ours("/usr/bin/qemu-system-x86_64", &args(&["qemu"])));
        assert!(is_ours(
            "/usr/bin/ssh",
            &args(&["ssh", "-S", "/run/dp-harness/qemu/dpq-1/m", "none"])
        ));
        assert!(is_ours(
            "/usr/bin/nsenter",
            &args(&["nsenter", "--net=/run/netns/dph-abc-node-a", "--", "x"])
        ));
        assert!(!is_ours("/usr/bin/ssh", &args(&["ssh", "example.org"])));
        assert!(!is_ours("/usr/sbin/sshd", &args(&["sshd", "-D"])));
    }
}
