//! host-clean-after-down: after teardown nothing of the run remains on the host: no
//! namespace, interface, cgroup, bpffs or state directory that was not there before, no
//! process the run started, and none of the bpf objects the run's nodes held.

use super::Judgement;
use crate::observe::bpf::Kernel;
use crate::observe::host::{added, HostSnapshot};

/// Judged by the runner after every teardown, from host snapshots; no check names it.
pub const NAME: crate::suite::InvariantName =
    crate::suite::InvariantName::new("host-clean-after-down");

/// `seen`: ids of bpf objects observed on the run's cgroups and pins during the run.
/// `live_pids`: processes the run started that are still alive.
pub fn judge(
    before: &HostSnapshot,
    after: &HostSnapshot,
    marker: &str,
    seen: &Kernel,
    now: &Kernel,
    live_pids: &[u32],
) -> Judgement {
    let mut bad: Vec<String> = added(before, after)
        .into_iter()
        .filter(|x| x.contains(marker))
        .collect();
    for p in &seen.progs {
        if now.progs.iter().any(|q| q.id == p.id && q.name == p.name) {
            bad.push(format!("bpf prog {} ({}) still loaded", p.id, p.name));
        }
    }
    for m in &seen.maps {
        if now.maps.iter().any(|q| q.id == m.id && q.name == m.name) {
            bad.push(format!("bpf map {} ({}) still exists", m.id, m.name));
        }
    }
    for l in &seen.links {
        if now.links.iter().any(|q| q.id == l.id) {
            bad.push(format!("bpf link {} still exists", l.id));
        }
    }
    for p in live_pids {
        bad.push(format!("process {p} still running"));
    }
    if bad.is_empty() {
        Judgement::pass("nothing of the run remains on the host")
    } else {
        Judgement::fail("the run left objects on the host", bad)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Verdict;
    use super::*;
    use crate::observe::bpf::Prog;

    #[test]
    fn leftovers_with_the_marker_fail_others_do_not() {
        let before = HostSnapshot::default();
        let mut after = HostSnapshot::default();
        after.netns.insert("dph-abc123-node-a".into());
        after.netns.insert("someone-else".into());
        let k = Kernel::default();
        let j = judge(&before, &after, "abc123", &k, &k, &[]);
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(j.evidence, vec!["netns dph-abc123-node-a".to_string()]);
    }

    #[test]
    fn a_prog_seen_during_the_run_still_loaded_fails() {
        let p = Prog {
            id: 7,
            name: "dp_connect4".into(),
            ..Prog::default()
        };
        let seen = Kernel {
            progs: vec![p.clone()],
            ..Kernel::default()
        };
        let s = HostSnapshot::default();
        assert_eq!(judge(&s, &s, "x", &seen, &seen, &[]).verdict, Verdict::Fail);
        assert_eq!(
            judge(&s, &s, "x", &seen, &Kernel::default(), &[]).verdict,
            Verdict::Pass
        );
    }

    /// Recorded (testdata/README.md): `harness host-snapshot` and `bpftool -j -f prog
    /// show` before a netns run of suite smoke, while its cluster was kept (`--keep`,
    /// marker dph-524af7) and after `harness clean`.
    fn recorded(name: &str) -> HostSnapshot {
        let text = match name {
            "before" => include_str!("testdata/host.before.json"),
            "kept" => include_str!("testdata/host.kept.json"),
            _ => include_str!("testdata/host.after-clean.json"),
        };
        serde_json::from_str(text).expect("recorded snapshot reads")
    }

    fn progs(text: &str) -> Kernel {
        Kernel {
            progs: crate::observe::bpf::parse_json(text).expect("recorded bpftool reads"),
            ..Kernel::default()
        }
    }

    #[test]
    fn a_kept_cluster_fails_and_a_cleaned_host_passes() {
        let kept = progs(include_str!("testdata/host.kept.prog-show.json"));
        let gone = progs(include_str!("testdata/host.after-clean.prog-show.json"));
        assert!(!kept.progs.is_empty() && gone.progs.is_empty());
        let (before, during, after) = (
            recorded("before"),
            recorded("kept"),
            recorded("after-clean"),
        );
        let j = judge(&before, &during, "dph-524af7", &kept, &kept, &[]);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.evidence.contains(&"netns dph-524af7-node-a".to_string()),
            "{:?}",
            j.evidence
        );
        assert!(
            j.evidence
                .iter()
                .any(|e| e.contains("(dp_connect4) still loaded")),
            "{:?}",
            j.evidence
        );
        // The snapshot command itself is a process of ours but not the run's.
        assert!(
            !j.evidence.iter().any(|e| e.contains("host-snapshot")),
            "{:?}",
            j.evidence
        );
        let j = judge(&before, &after, "dph-524af7", &kept, &gone, &[]);
        assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
    }
}
