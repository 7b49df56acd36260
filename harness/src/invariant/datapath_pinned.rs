//! datapath-pinned: what runs is what is pinned. On each node, every program of ours on
//! the node's cgroup is held by a link pinned under `<bpffs>/links/`, every map of ours it
//! reads is pinned under `<bpffs>/maps/`, and `dp_meta` (which vouches for the maps) is
//! pinned. A datapath that runs unpinned (its pins lost to a bpffs remount and never made
//! again) serves traffic only while its agent holds the fds: `datapathd status` and
//! `cleanup` cannot see it, and the next agent starts a second datapath beside it.

use super::{all_judged, merge, unknown_unless_harness, Context, Invariant, Judgement};
use crate::cluster::in_parallel;
use crate::observe::bpf::{self, Attached, Kernel, PREFIX};
use crate::observe::features::KernelNeed;
use crate::observe::ObserveError;
use crate::suite::InvariantName;

pub const NAME: InvariantName = InvariantName::new("datapath-pinned");
pub struct DatapathPinned;

/// Judges one node from what is attached to its cgroup and what bpftool lists (with the
/// pins it found on every bpffs).
pub fn judge(node: &str, bpffs: &str, attached: &[Attached], k: &Kernel) -> Judgement {
    let links_dir = format!("{bpffs}/links/");
    let maps_dir = format!("{bpffs}/maps/");
    let ours: Vec<&Attached> = attached
        .iter()
        .filter(|a| a.name.starts_with(PREFIX))
        .collect();
    if ours.is_empty() {
        return Judgement::unknown(format!(
            "node {node}: no program of ours on the cgroup: nothing to judge"
        ));
    }
    let mut bad = Vec::new();
    for a in &ours {
        let held = k
            .links
            .iter()
            .any(|l| l.prog_id == a.id && l.pinned.iter().any(|p| p.starts_with(&links_dir)));
        if !held {
            bad.push(format!(
                "node {node}: program {} ({}, {}) runs on the cgroup but no link pinned under \
                 {links_dir} holds it",
                a.id, a.name, a.attach_type
            ));
        }
    }
    let mut read: Vec<u32> = ours
        .iter()
        .filter_map(|a| k.progs.iter().find(|p| p.id == a.id))
        .flat_map(|p| p.map_ids.iter().copied())
        .collect();
    read.sort_unstable();
    read.dedup();
    for m in read
        .iter()
        .filter_map(|id| k.maps.iter().find(|m| m.id == *id))
        .filter(|m| m.name.starts_with(PREFIX))
    {
        if !m.pinned.iter().any(|p| p.starts_with(&maps_dir)) {
            bad.push(format!(
                "node {node}: map {} ({}) is read by the running programs but not pinned \
                 under {maps_dir}",
                m.id, m.name
            ));
        }
    }
    let meta = format!("{maps_dir}{}", "dp_meta");
    if !k.maps.iter().any(|m| m.pinned.contains(&meta)) {
        bad.push(format!(
            "node {node}: nothing pinned at {meta}: the next agent cannot vouch for the maps"
        ));
    }
    if bad.is_empty() {
        Judgement::pass(format!(
            "node {node}: the {} running programs and their maps are pinned under {bpffs}",
            ours.len()
        ))
    } else {
        Judgement::fail(
            format!("node {node}: the running datapath is not pinned under {bpffs} (pins lost and never restored)"),
            bad,
        )
    }
}

impl Invariant for DatapathPinned {
    fn name(&self) -> InvariantName {
        NAME
    }

    fn about(&self) -> &'static str {
        "every program of ours that runs, and its maps, is pinned under the node's bpffs"
    }

    /// The programs judged are socket-LB's cgroup programs.
    fn needs(&self) -> &'static [KernelNeed] {
        &[KernelNeed::ProgType("cgroup_sock_addr")]
    }

    fn check(&self, ctx: &Context<'_>) -> Result<Judgement, ObserveError> {
        let js = in_parallel(&ctx.cluster.nodes, |cn| {
            match bpf::observe(cn.node.as_ref(), &cn.cgroup) {
                Ok((a, k)) => Ok(judge(cn.name(), &cn.bpffs.display().to_string(), &a, &k)),
                Err(e) => unknown_unless_harness(format!("node {}: cannot observe", cn.name()), e),
            }
        });
        Ok(merge(&all_judged(js)?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Verdict;
    use super::*;

    const B: &str = "/sys/fs/bpf/dp-harness-t/node-a/datapathd";

    /// `bpftool -j cgroup show` on the node's cgroup (trimmed to two hooks).
    fn attached() -> Vec<Attached> {
        serde_json::from_str(
            r#"[{"id":96792,"attach_type":"cgroup_inet4_connect","attach_flags":"multi","name":"dp_connect4"},
                {"id":96796,"attach_type":"cgroup_sock_ops","attach_flags":"multi","name":"dp_sockops"}]"#,
        )
        .expect("recorded cgroup show")
    }

    /// `bpftool -j -f {prog,map,link} show`, before (`pinned`) or after a bpffs remount
    /// that nobody repaired (no pins at all).
    fn kernel(pinned: bool) -> Kernel {
        let pin = |p: &str| {
            if pinned {
                format!(r#"["{B}/{p}"]"#)
            } else {
                "[]".into()
            }
        };
        let progs = r#"[{"id":96792,"type":"cgroup_sock_addr","name":"dp_connect4","map_ids":[812,813,814,815,820]},
                        {"id":96796,"type":"sock_ops","name":"dp_sockops","map_ids":[816,817,818]}]"#;
        let maps = format!(
            r#"[{{"id":812,"type":"hash","name":"dp_services","pinned":{}}},
                {{"id":813,"type":"array","name":"dp_slots","pinned":{}}},
                {{"id":814,"type":"hash","name":"dp_backends","pinned":{}}},
                {{"id":815,"type":"lru_hash","name":"dp_revnat","pinned":{}}},
                {{"id":816,"type":"sockhash","name":"dp_sockhash","pinned":{}}},
                {{"id":817,"type":"array","name":"dp_accel","pinned":{}}},
                {{"id":818,"type":"percpu_array","name":"dp_accel_stats","pinned":{}}},
                {{"id":819,"type":"array","name":"dp_meta","pinned":{}}},
                {{"id":820,"type":"array","name":".rodata"}}]"#,
            pin("maps/dp_services"),
            pin("maps/dp_slots"),
            pin("maps/dp_backends"),
            pin("maps/dp_revnat"),
            pin("maps/dp_sockhash"),
            pin("maps/dp_accel"),
            pin("maps/dp_accel_stats"),
            pin("maps/dp_meta"),
        );
        let links = format!(
            r#"[{{"id":35627,"type":"cgroup","prog_id":96792,"cgroup_id":5501,"attach_type":"cgroup_inet4_connect","pinned":{}}},
                {{"id":35631,"type":"cgroup","prog_id":96796,"cgroup_id":5501,"attach_type":"cgroup_sock_ops","pinned":{}}}]"#,
            pin("links/connect4"),
            pin("links/sockops"),
        );
        Kernel {
            progs: serde_json::from_str(progs).expect("recorded prog show"),
            maps: serde_json::from_str(&maps).expect("recorded map show"),
            links: serde_json::from_str(&links).expect("recorded link show"),
        }
    }

    #[test]
    fn a_pinned_datapath_passes() {
        let j = judge("node-a", B, &attached(), &kernel(true));
        assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
    }

    #[test]
    fn a_datapath_whose_pins_are_gone_fails_naming_each_object() {
        let j = judge("node-a", B, &attached(), &kernel(false));
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(j.summary.contains("pins lost and never restored"), "{j:?}");
        let has = |s: &str| j.evidence.iter().any(|e| e.contains(s));
        assert!(
            has("program 96792 (dp_connect4, cgroup_inet4_connect) runs on the cgroup but no link pinned"),
            "{:?}",
            j.evidence
        );
        assert!(has("map 812 (dp_services) is read"), "{:?}", j.evidence);
        assert!(has("map 816 (dp_sockhash) is read"), "{:?}", j.evidence);
        assert!(has("nothing pinned at"), "{:?}", j.evidence);
        // 2 links, 7 maps of ours (not .rodata), dp_meta.
        assert_eq!(j.evidence.len(), 10, "{:?}", j.evidence);
    }

    #[test]
    fn pins_under_another_nodes_directory_do_not_count() {
        let other = kernel(true);
        let j = judge(
            "node-b",
            "/sys/fs/bpf/dp-harness-t/node-b/datapathd",
            &attached(),
            &other,
        );
        assert_eq!(j.verdict, Verdict::Fail, "{j:?}");
    }

    #[test]
    fn a_link_pinned_elsewhere_under_the_bpffs_does_not_hold_a_program() {
        let mut k = kernel(true);
        k.links[0].pinned = vec![format!("{B}/masq/links/egress")];
        let j = judge("node-a", B, &attached(), &k);
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(j.evidence.len(), 1, "{:?}", j.evidence);
    }

    #[test]
    fn nothing_of_ours_attached_is_not_a_pass() {
        let j = judge("node-a", B, &[], &kernel(true));
        assert_eq!(j.verdict, Verdict::Unknown);
    }

    /// Recorded on node-a of suite sockmap (super::super::recorded).
    #[test]
    fn recorded_datapath_is_pinned_and_a_remount_nobody_repaired_is_not() {
        use super::super::recorded::{bpf, BPFFS};
        let (attached, k) = bpf();
        let j = judge("node-a", BPFFS, &attached, &k);
        assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
        // Derived from the recording: the node's bpffs mounted afresh under a running
        // agent that did not pin again (its objects live on, their pins are gone).
        let mut remounted = k.clone();
        let under = format!("{BPFFS}/");
        for pins in remounted
            .maps
            .iter_mut()
            .map(|m| &mut m.pinned)
            .chain(remounted.links.iter_mut().map(|l| &mut l.pinned))
        {
            pins.retain(|p| !p.starts_with(&under));
        }
        let j = judge("node-a", BPFFS, &attached, &remounted);
        assert_eq!(j.verdict, Verdict::Fail, "{j:?}");
        assert!(j.summary.contains("pins lost and never restored"), "{j:?}");
    }
}
