//! one-program-per-hook: on each node's cgroup, each socket-LB hook has exactly one
//! program of ours, and it is the program of the live pinned link under the node's bpffs.

use super::{all_judged, merge, unknown_unless_harness, Context, Invariant, Judgement};
use crate::cluster::in_parallel;
use crate::observe::bpf::{self, Attached, Link, PREFIX};
use crate::observe::features::KernelNeed;
use crate::observe::ObserveError;
use crate::suite::InvariantName;

/// (hook, bpftool's attach type)
pub const HOOKS: [(&str, &str); 4] = [
    ("connect4", "cgroup_inet4_connect"),
    ("sendmsg4", "cgroup_udp4_sendmsg"),
    ("recvmsg4", "cgroup_udp4_recvmsg"),
    ("getpeername4", "cgroup_inet4_getpeername"),
];

pub const NAME: InvariantName = InvariantName::new("one-program-per-hook");
pub struct OneProgramPerHook;

/// Judges one node from what is attached to its cgroup and the kernel's links.
pub fn judge(node: &str, bpffs: &str, attached: &[Attached], links: &[Link]) -> Judgement {
    let mut bad = Vec::new();
    for (hook, ty) in HOOKS {
        let ours: Vec<&Attached> = attached
            .iter()
            .filter(|a| a.attach_type == ty && a.name.starts_with(PREFIX))
            .collect();
        let pin = format!("{bpffs}/links/{hook}");
        let link = links.iter().find(|l| l.pinned.iter().any(|p| p == &pin));
        match (ours.as_slice(), link) {
            ([one], Some(l)) if l.prog_id == one.id => {}
            ([one], Some(l)) => bad.push(format!(
                "node {node} hook {hook}: attached program {} ({}) is not the pinned link's program {}",
                one.id, one.name, l.prog_id
            )),
            ([one], None) => bad.push(format!(
                "node {node} hook {hook}: program {} ({}, flags {}) attached but no live link pinned at {pin}",
                one.id, one.name, one.attach_flags
            )),
            (many, _) => bad.push(format!(
                "node {node} hook {hook}: {} programs of ours attached (want 1): {}",
                many.len(),
                many.iter()
                    .map(|a| format!("{} {} flags={}", a.id, a.name, a.attach_flags))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
    if bad.is_empty() {
        Judgement::pass(format!("node {node}: one live program per hook"))
    } else {
        Judgement::fail(
            format!("node {node}: hooks not owned by exactly one live program"),
            bad,
        )
    }
}

impl Invariant for OneProgramPerHook {
    fn name(&self) -> InvariantName {
        NAME
    }

    fn about(&self) -> &'static str {
        "each of the datapath's cgroup hooks holds exactly one program of ours"
    }

    /// The hooks judged are cgroup sock_addr hooks.
    fn needs(&self) -> &'static [KernelNeed] {
        &[KernelNeed::ProgType("cgroup_sock_addr")]
    }

    fn check(&self, ctx: &Context<'_>) -> Result<Judgement, ObserveError> {
        let js = in_parallel(&ctx.cluster.nodes, |cn| {
            match bpf::observe(cn.node.as_ref(), &cn.cgroup) {
                Ok((attached, k)) => Ok(judge(
                    cn.name(),
                    &cn.bpffs.display().to_string(),
                    &attached,
                    &k.links,
                )),
                Err(e) => unknown_unless_harness("cannot observe", e),
            }
        });
        Ok(merge(&all_judged(js)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(id: u32, ty: &str, name: &str, flags: &str) -> Attached {
        Attached {
            id,
            attach_type: ty.into(),
            attach_flags: flags.into(),
            name: name.into(),
        }
    }
    fn link(id: u32, prog: u32, pin: &str) -> Link {
        Link {
            id,
            prog_id: prog,
            pinned: vec![pin.into()],
        }
    }
    fn healthy() -> (Vec<Attached>, Vec<Link>) {
        let mut a = Vec::new();
        let mut l = Vec::new();
        for (i, (hook, ty)) in HOOKS.iter().enumerate() {
            let id = 10 + i as u32;
            a.push(att(id, ty, &format!("dp_{hook}"), ""));
            l.push(link(100 + i as u32, id, &format!("/b/links/{hook}")));
        }
        (a, l)
    }

    #[test]
    fn one_linked_program_per_hook_passes() {
        let (a, l) = healthy();
        assert_eq!(
            judge("n", "/b", &a, &l).verdict,
            super::super::Verdict::Pass
        );
    }

    #[test]
    fn a_stale_legacy_program_fails_with_both_ids() {
        // Recorded shape of incident A: the old run's program (multi) stays first.
        let (mut a, l) = healthy();
        a.insert(0, att(7, "cgroup_inet4_connect", "dp_connect4", "multi"));
        let j = judge("node-a", "/b", &a, &l);
        assert_eq!(j.verdict, super::super::Verdict::Fail);
        assert!(j.evidence[0].contains("node node-a hook connect4: 2 programs of ours attached (want 1): 7 dp_connect4 flags=multi, 10 dp_connect4"), "{:?}", j.evidence);
    }

    #[test]
    fn foreign_programs_are_not_counted() {
        let (mut a, l) = healthy();
        a.push(att(99, "cgroup_inet4_connect", "cilium_sock", ""));
        assert_eq!(
            judge("n", "/b", &a, &l).verdict,
            super::super::Verdict::Pass
        );
    }

    #[test]
    fn unlinked_or_missing_program_fails() {
        let (mut a, mut l) = healthy();
        l.retain(|x| !x.pinned[0].ends_with("sendmsg4"));
        a.retain(|x| x.attach_type != "cgroup_udp4_recvmsg");
        let j = judge("n", "/b", &a, &l);
        assert_eq!(j.evidence.len(), 2, "{:?}", j.evidence);
        assert!(j.evidence[0].contains("no live link pinned at /b/links/sendmsg4"));
        assert!(j.evidence[1].contains("0 programs of ours attached"));
    }

    use super::super::Verdict;

    use super::super::recorded::{bpf as recorded, BPFFS};

    #[test]
    fn recorded_hooks_have_one_program_each() {
        let (attached, k) = recorded();
        let j = judge("node-a", BPFFS, &attached, &k.links);
        assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
        // A second program of ours on connect4 (an agent that attached twice).
        let mut twice = attached.clone();
        let mut extra = twice
            .iter()
            .find(|a| a.attach_type == "cgroup_inet4_connect")
            .expect("connect4 attached")
            .clone();
        extra.id += 1000;
        twice.push(extra);
        let j = judge("node-a", BPFFS, &twice, &k.links);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.evidence[0].contains("hook connect4: 2 programs of ours attached (want 1)"),
            "{:?}",
            j.evidence
        );
    }
}
