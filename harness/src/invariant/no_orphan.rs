//! no-orphan-bpf-objects: every map a program of ours on a node's cgroup reads is a map
//! pinned under that node's bpffs (a program reading other maps is a previous run's, with
//! its own old copies: incident A), no map name of ours appears twice among the node's
//! maps, and every link pinned under the node's bpffs drives a program attached there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{all_judged, merge, unknown_unless_harness, Context, Invariant, Judgement};
use crate::cluster::in_parallel;
use crate::observe::bpf::{self, Attached, Kernel, PREFIX};
use crate::observe::features::KernelNeed;
use crate::observe::ObserveError;
use crate::suite::InvariantName;

pub const NAME: InvariantName = InvariantName::new("no-orphan-bpf-objects");
pub struct NoOrphanBpfObjects;

pub fn judge(node: &str, bpffs: &str, attached: &[Attached], k: &Kernel) -> Judgement {
    let mut bad = Vec::new();
    let under = |p: &String| Path::new(p).starts_with(bpffs);
    let pinned: BTreeSet<u32> = k
        .maps
        .iter()
        .filter(|m| m.pinned.iter().any(under))
        .map(|m| m.id)
        .collect();
    let ours: Vec<&Attached> = attached
        .iter()
        .filter(|a| a.name.starts_with(PREFIX))
        .collect();
    let attached_ids: BTreeSet<u32> = ours.iter().map(|a| a.id).collect();
    let mut node_maps: BTreeSet<u32> = pinned.clone();
    for a in &ours {
        let Some(p) = k.progs.iter().find(|p| p.id == a.id) else {
            bad.push(format!(
                "node {node}: attached program {} not listed by bpftool prog",
                a.id
            ));
            continue;
        };
        for m in &p.map_ids {
            let Some(map) = k.maps.iter().find(|x| x.id == *m) else {
                continue;
            };
            if !map.name.starts_with(PREFIX) {
                continue;
            }
            node_maps.insert(*m);
            if !pinned.contains(m) {
                bad.push(format!(
                    "node {node}: program {} ({}) reads map {} ({}) that is not pinned under {bpffs}",
                    p.id, p.name, map.id, map.name
                ));
            }
        }
    }
    let mut names: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for m in k.maps.iter().filter(|m| node_maps.contains(&m.id)) {
        names.entry(m.name.as_str()).or_default().push(m.id);
    }
    for (n, ids) in names.iter().filter(|(_, ids)| ids.len() > 1) {
        bad.push(format!(
            "node {node}: {} maps named {n}: ids {ids:?}",
            ids.len()
        ));
    }
    // Cgroup links live under `links/`; the masquerade's tc links under `masq/links/` are
    // attached to the uplink, not the cgroup: they only need a live program.
    let links = Path::new(bpffs).join("links");
    let cgroup_link = |p: &String| Path::new(p).starts_with(&links);
    for l in k
        .links
        .iter()
        .filter(|l| l.pinned.iter().any(under) && !l.pinned.iter().any(cgroup_link))
    {
        if !k.progs.iter().any(|p| p.id == l.prog_id) {
            bad.push(format!(
                "node {node}: link {} pinned at {} drives program {} which is not loaded",
                l.id,
                l.pinned.join(","),
                l.prog_id
            ));
        }
    }
    for l in k.links.iter().filter(|l| l.pinned.iter().any(cgroup_link)) {
        if !attached_ids.contains(&l.prog_id) {
            bad.push(format!(
                "node {node}: link {} pinned at {} drives program {} which is not attached to the node's cgroup",
                l.id,
                l.pinned.join(","),
                l.prog_id
            ));
        }
    }
    if bad.is_empty() {
        Judgement::pass(format!(
            "node {node}: every object of ours is live and pinned"
        ))
    } else {
        Judgement::fail(format!("node {node}: orphan or stale bpf objects"), bad)
    }
}

impl Invariant for NoOrphanBpfObjects {
    fn name(&self) -> InvariantName {
        NAME
    }

    fn about(&self) -> &'static str {
        "no program, map or link of ours that nothing uses or pins"
    }

    /// The objects judged are those socket-LB loads.
    fn needs(&self) -> &'static [KernelNeed] {
        &[KernelNeed::ProgType("cgroup_sock_addr")]
    }

    fn check(&self, ctx: &Context<'_>) -> Result<Judgement, ObserveError> {
        let js = in_parallel(&ctx.cluster.nodes, |cn| {
            match bpf::observe(cn.node.as_ref(), &cn.cgroup) {
                Ok((a, k)) => Ok(judge(cn.name(), &cn.bpffs.display().to_string(), &a, &k)),
                Err(e) => unknown_unless_harness("cannot observe", e),
            }
        });
        Ok(merge(&all_judged(js)?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Verdict;
    use super::*;
    use crate::observe::bpf::{Link, Map, Prog};

    fn kernel(prog_maps: &[u32], pinned: &[(u32, &str)], extra: &[(u32, &str)]) -> Kernel {
        let mut maps: Vec<Map> = pinned
            .iter()
            .map(|(id, n)| Map {
                id: *id,
                name: n.to_string(),
                pinned: vec![format!("/b/maps/{n}")],
            })
            .collect();
        maps.extend(extra.iter().map(|(id, n)| Map {
            id: *id,
            name: n.to_string(),
            pinned: vec![],
        }));
        Kernel {
            progs: vec![Prog {
                id: 10,
                name: "dp_connect4".into(),
                map_ids: prog_maps.to_vec(),
                pinned: vec![],
            }],
            maps,
            links: vec![Link {
                id: 5,
                prog_id: 10,
                pinned: vec!["/b/links/connect4".into()],
            }],
        }
    }
    fn att() -> Vec<Attached> {
        vec![Attached {
            id: 10,
            attach_type: "cgroup_inet4_connect".into(),
            attach_flags: String::new(),
            name: "dp_connect4".into(),
        }]
    }

    #[test]
    fn pinned_maps_in_use_pass() {
        let k = kernel(&[1, 2], &[(1, "dp_services"), (2, "dp_backends")], &[]);
        assert_eq!(judge("n", "/b", &att(), &k).verdict, Verdict::Pass);
    }

    #[test]
    fn program_reading_unpinned_copy_fails() {
        let k = kernel(
            &[1, 3],
            &[(1, "dp_services"), (2, "dp_backends")],
            &[(3, "dp_backends")],
        );
        let j = judge("n", "/b", &att(), &k);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.evidence
                .iter()
                .any(|e| e.contains("reads map 3 (dp_backends) that is not pinned under /b")),
            "{:?}",
            j.evidence
        );
        assert!(
            j.evidence
                .iter()
                .any(|e| e.contains("2 maps named dp_backends: ids [2, 3]")),
            "{:?}",
            j.evidence
        );
    }

    #[test]
    fn pinned_link_to_unattached_program_fails() {
        let k = kernel(&[1], &[(1, "dp_services")], &[]);
        let j = judge("n", "/b", &[], &k);
        assert!(
            j.evidence[0].contains("link 5 pinned at /b/links/connect4 drives program 10"),
            "{:?}",
            j.evidence
        );
    }

    use super::super::recorded::{bpf as recorded, BPFFS};

    #[test]
    fn recorded_objects_are_live_and_pinned() {
        let (attached, k) = recorded();
        let j = judge("node-a", BPFFS, &attached, &k);
        assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
        // The services map unpinned while the programs still read it.
        let mut unpinned = k.clone();
        let m = unpinned
            .maps
            .iter_mut()
            .find(|m| {
                m.pinned
                    .iter()
                    .any(|p| p == &format!("{BPFFS}/maps/dp_services"))
            })
            .expect("dp_services pinned");
        m.pinned.clear();
        let id = m.id;
        let j = judge("node-a", BPFFS, &attached, &unpinned);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.evidence.iter().any(|e| e.contains(&format!(
                "reads map {id} (dp_services) that is not pinned under {BPFFS}"
            ))),
            "{:?}",
            j.evidence
        );
    }
}
