//! pod-delete-cleanup: a pod deleted during the run (pod-churn) leaves nothing behind on
//! any node, judged from the kernel: no veth, route, ip rule or neighbour entry, no
//! `dp_endpoints` or `dp_ipcache` entry, no cgroup. A pod added again (on the same node or
//! another, with the same address) may have exactly what its new place needs: its veth,
//! route, neighbour and endpoint entry on its node, an ipcache entry (and a native route)
//! towards that node on the others. A pod that backed a service leaves the
//! EndpointSlices the harness writes when it is deleted: no `dp_backends` entry may
//! point at its address unless it was added again. A deleted pod that served TCP and was
//! not added again must not answer at its address any more (a probe from a live pod).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use super::{merge, unknown_unless_harness, Context, Invariant, Judgement};
use crate::cluster::pods::DepartedPod;
use crate::observe::pods::{self, NodeView};
use crate::observe::probe::{self, PodServer};
use crate::observe::ObserveError;
use crate::suite::InvariantName;
use crate::suite::Protocol;

pub const NAME: InvariantName = InvariantName::new("pod-delete-cleanup");
pub struct PodDeleteCleanup;

/// A pod that runs now, where the agent wired it.
#[derive(Debug, Clone)]
pub struct Current {
    pub name: String,
    pub addr: Ipv4Addr,
    pub node: String,
    pub host_veth: String,
    pub cgroup: PathBuf,
}

/// One node's view and address.
pub struct Seen<'a> {
    pub node: &'a str,
    pub node_addr: Ipv4Addr,
    pub view: &'a NodeView,
    /// The departed pods' cgroups that still exist on this node.
    pub cgroups_left: Vec<PathBuf>,
}

/// Pure judgement: every departed pod against every node's view; `answered`: the
/// addresses of departed pods not added again that a probe still reached.
pub fn judge(
    departed: &[DepartedPod],
    current: &[Current],
    seen: &[Seen<'_>],
    answered: &[SocketAddrV4],
) -> Judgement {
    if departed.is_empty() {
        return Judgement::skipped("no pod was deleted in this scenario");
    }
    let addr_of = |node: &str| seen.iter().find(|s| s.node == node).map(|s| s.node_addr);
    let mut bad = Vec::new();
    let mut judged = std::collections::BTreeSet::new();
    for d in departed {
        if !judged.insert((d.name.clone(), d.node.clone())) {
            continue;
        }
        let now = current.iter().find(|c| c.addr == d.address);
        let who = format!("{} ({}, deleted from {})", d.name, d.address, d.node);
        if now.is_none() {
            for a in answered.iter().filter(|a| *a.ip() == d.address) {
                bad.push(format!("{who}: {a} still answers"));
            }
        }
        for s in seen {
            let here = now.filter(|c| c.node == s.node);
            let v = s.view;
            if let Some(veth) = &d.host_veth {
                let kept_by_new = here.is_some_and(|c| &c.host_veth == veth);
                if !kept_by_new {
                    if let Some(l) = v.link(veth) {
                        bad.push(format!(
                            "{who}: veth {veth} (ifindex {}) left on {}",
                            l.ifindex, s.node
                        ));
                    }
                }
            }
            for r in v.routes.iter().filter(|r| r.host() == Some(d.address)) {
                let ok = match now {
                    Some(c) if c.node == s.node => r.dev.as_deref() == Some(c.host_veth.as_str()),
                    Some(c) => r.gateway.is_some() && r.gateway == addr_of(&c.node),
                    None => false,
                };
                if !ok {
                    bad.push(format!(
                        "{who}: route {} via {} dev {} left on {}",
                        r.dst,
                        r.gateway
                            .map(|g| g.to_string())
                            .unwrap_or_else(|| "-".into()),
                        r.dev.as_deref().unwrap_or("-"),
                        s.node
                    ));
                }
            }
            if now.is_none() {
                for r in v.rules.iter().filter(|r| r.names(d.address)) {
                    bad.push(format!(
                        "{who}: ip rule {} (table {}) left on {}",
                        r.priority,
                        r.table.as_deref().unwrap_or("-"),
                        s.node
                    ));
                }
            }
            for n in v.neighs.iter().filter(|n| n.addr() == Some(d.address)) {
                if here.is_none_or(|c| c.host_veth != n.dev) {
                    bad.push(format!(
                        "{who}: neighbour {} dev {} ({}) left on {}",
                        n.dst,
                        n.dev,
                        n.state.join(","),
                        s.node
                    ));
                }
            }
            let endpoint = v.endpoints.iter().flatten().find(|e| e.addr == d.address);
            if let (Some(e), None) = (endpoint, here) {
                bad.push(format!(
                    "{who}: {} entry (ifindex {}, pod MAC {}) left on {}",
                    pods::MAP_ENDPOINTS,
                    e.ifindex,
                    e.pod_mac,
                    s.node
                ));
            }
            let cached = v.ipcache.iter().flatten().find(|e| e.addr == d.address);
            if let Some(e) = cached {
                let ok =
                    now.is_some_and(|c| c.node != s.node && addr_of(&c.node) == Some(e.node_addr));
                if !ok {
                    bad.push(format!(
                        "{who}: {} entry -> {} left on {}{}",
                        pods::MAP_IPCACHE,
                        e.node_addr,
                        s.node,
                        now.map(|c| format!(" (it runs on {} now)", c.node))
                            .unwrap_or_default()
                    ));
                }
            }
            if now.is_none() {
                for b in v.backends.iter().flatten().filter(|b| b.addr == d.address) {
                    bad.push(format!(
                        "{who}: dp_backends entry {} -> {}:{} left on {} (it backs no service now)",
                        b.id, b.addr, b.port, s.node
                    ));
                }
            }
            if s.node == d.node
                && s.cgroups_left.contains(&d.cgroup)
                && here.is_none_or(|c| c.cgroup != d.cgroup)
            {
                bad.push(format!(
                    "{who}: cgroup {} left on {}",
                    d.cgroup.display(),
                    s.node
                ));
            }
        }
    }
    if bad.is_empty() {
        Judgement::pass(format!(
            "{} deleted pods left nothing on {} nodes (re-added ones only where they run now)",
            judged.len(),
            seen.len()
        ))
    } else {
        Judgement::fail("a deleted pod left something behind", bad)
    }
}

impl Invariant for PodDeleteCleanup {
    fn name(&self) -> InvariantName {
        NAME
    }

    fn about(&self) -> &'static str {
        "a pod deleted during the run leaves no veth, route, ip rule, neighbour, cgroup, endpoint or ipcache entry on any node"
    }

    fn check(&self, ctx: &Context<'_>) -> Result<Judgement, ObserveError> {
        let cluster = ctx.cluster;
        let departed = &cluster.pod_net.departed;
        if departed.is_empty() {
            return Ok(judge(departed, &[], &[], &[]));
        }
        let current: Vec<Current> = cluster
            .pods
            .iter()
            .filter_map(|p| {
                let w = cluster.pod_net.wired.get(&p.name)?;
                Some(Current {
                    name: p.name.clone(),
                    addr: p.ip,
                    node: p.node.clone(),
                    host_veth: w.host_veth.clone(),
                    cgroup: p.cgroup.clone(),
                })
            })
            .collect();
        // Departed pods not added again that served TCP: does anything answer there?
        let mut answered = Vec::new();
        if let Some(from) = cluster
            .pods
            .iter()
            .find(|p| cluster.pod_net.wired.contains_key(&p.name))
        {
            let gone: Vec<PodServer> = departed
                .iter()
                .filter(|d| !current.iter().any(|c| c.addr == d.address))
                .filter_map(|d| {
                    let s = ctx
                        .services
                        .iter()
                        .find(|s| s.protocol == Protocol::Tcp && s.backends.contains(&d.name))?;
                    Some(PodServer {
                        pod: d.name.clone(),
                        node: d.node.clone(),
                        addr: SocketAddrV4::new(d.address, s.target_port),
                        proto: Protocol::Tcp,
                    })
                })
                .collect();
            if !gone.is_empty() {
                match probe::connect_each(cluster, from, &gone) {
                    Ok(r) => answered.extend(
                        r.iter()
                            .filter(|(_, a)| a.first().is_some_and(|a| a.ok))
                            .map(|(t, _)| t.addr),
                    ),
                    Err(e) => {
                        return unknown_unless_harness(
                            format!("{}: cannot probe the deleted pods' addresses", from.name),
                            e,
                        )
                    }
                }
            }
        }
        let observed = crate::cluster::in_parallel(&cluster.nodes, |cn| {
            let view = pods::node_view(cn)?;
            let mut left = Vec::new();
            for d in departed.iter().filter(|d| d.node == cn.name()) {
                if pods::cgroup_exists(cn, &d.cgroup)? {
                    left.push(d.cgroup.clone());
                }
            }
            Ok::<_, ObserveError>((view, left))
        });
        let mut views = Vec::new();
        for (cn, o) in cluster.nodes.iter().zip(observed) {
            match o {
                Ok(v) => views.push((cn, v)),
                Err(e) => {
                    return unknown_unless_harness(format!("{}: cannot observe", cn.name()), e)
                }
            }
        }
        let seen: Vec<Seen<'_>> = views
            .iter()
            .map(|(cn, (view, left))| Seen {
                node: cn.name(),
                node_addr: cn
                    .net
                    .as_ref()
                    .map(|n| n.addr)
                    .unwrap_or(Ipv4Addr::UNSPECIFIED),
                view,
                cgroups_left: left.clone(),
            })
            .collect();
        Ok(merge(&[judge(departed, &current, &seen, &answered)]))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Verdict;
    use super::*;
    use crate::observe::bpf::parse_json;

    /// node-a of two kept pod-native runs (testdata/README.md, "pods/"), after pod-churn
    /// moved client-a (10.244.0.12) from node-a to node-b: the correct agent (`wired`)
    /// and endpoint-kept-on-delete (`kept`: its endpoint entry left on node-a).
    fn view(kept: bool) -> NodeView {
        macro_rules! f {
            ($name:literal) => {
                if kept {
                    include_str!(concat!("testdata/pods/kept.node.", $name, ".json"))
                } else {
                    include_str!(concat!("testdata/pods/wired.node.", $name, ".json"))
                }
            };
        }
        let r = "recorded output reads";
        NodeView {
            links: parse_json(include_str!("testdata/pods/wired.node.link.json")).expect(r),
            addrs: parse_json(f!("addr")).expect(r),
            routes: parse_json(f!("route")).expect(r),
            rules: parse_json(include_str!("testdata/pods/wired.node.rule.json")).expect(r),
            neighs: parse_json(f!("neigh")).expect(r),
            tc: Vec::new(),
            progs: Vec::new(),
            bpf_links: Vec::new(),
            endpoints: Some(pods::parse_endpoints(f!("endpoints")).expect(r)),
            ipcache: Some(pods::parse_ipcache(f!("ipcache")).expect(r)),
            backends: None,
            links_pin_dir: "/sys/fs/bpf/x/pods/links".into(),
        }
    }

    fn client_a() -> DepartedPod {
        DepartedPod {
            name: "client-a".into(),
            address: Ipv4Addr::new(10, 244, 0, 12),
            node: "node-a".into(),
            host_veth: Some("lxc92d208d2e618".into()),
            cgroup: "/sys/fs/cgroup/x/node-a/client-a".into(),
            netns: "/run/netns/x-node-a-client-a".into(),
        }
    }

    fn on(node: &str) -> Current {
        Current {
            name: "client-a".into(),
            addr: Ipv4Addr::new(10, 244, 0, 12),
            node: node.into(),
            host_veth: "lxc92d208d2e618".into(),
            cgroup: format!("/sys/fs/cgroup/x/{node}/client-a").into(),
        }
    }

    /// node-a as recorded, node-b and node-c with nothing of client-a.
    fn seen<'a>(view: &'a NodeView, empty: &'a NodeView) -> Vec<Seen<'a>> {
        [
            ("node-a", 1, view),
            ("node-b", 2, empty),
            ("node-c", 3, empty),
        ]
        .into_iter()
        .map(|(node, last, view)| Seen {
            node,
            node_addr: Ipv4Addr::new(172, 31, 0, last),
            view,
            cgroups_left: Vec::new(),
        })
        .collect()
    }

    #[test]
    fn a_move_cleaned_up_passes_and_a_kept_endpoint_fails_naming_it() {
        let empty = NodeView::default();
        let v = view(false);
        let j = judge(&[client_a()], &[on("node-b")], &seen(&v, &empty), &[]);
        assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
        let v = view(true);
        let j = judge(&[client_a()], &[on("node-b")], &seen(&v, &empty), &[]);
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(
            j.evidence,
            vec!["client-a (10.244.0.12, deleted from node-a): dp_endpoints entry (ifindex 8, pod MAC f6:5c:cf:74:bf:1b) left on node-a"]
        );
    }

    /// Derived from the recording: node-a's ipcache entry and native route towards node-b
    /// are right while client-a runs there, stale when it runs on node-c or nowhere.
    #[test]
    fn ipcache_and_routes_may_only_point_where_the_pod_runs_now() {
        let empty = NodeView::default();
        let v = view(false);
        let s = seen(&v, &empty);
        let j = judge(&[client_a()], &[on("node-c")], &s, &[]);
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(
            j.evidence,
            vec![
                "client-a (10.244.0.12, deleted from node-a): route 10.244.0.12 via 172.31.0.2 dev eth0 left on node-a",
                "client-a (10.244.0.12, deleted from node-a): dp_ipcache entry -> 172.31.0.2 left on node-a (it runs on node-c now)",
            ]
        );
        let j = judge(&[client_a()], &[], &s, &[]);
        assert_eq!(j.evidence.len(), 2, "{:?}", j.evidence);
        assert_eq!(judge(&[], &[], &s, &[]).verdict, Verdict::Skipped);
    }

    #[test]
    fn a_cgroup_left_on_the_old_node_fails() {
        let empty = NodeView::default();
        let v = view(false);
        let mut s = seen(&v, &empty);
        s[0].cgroups_left.push(client_a().cgroup);
        let j = judge(&[client_a()], &[on("node-b")], &s, &[]);
        assert_eq!(
            j.evidence,
            vec!["client-a (10.244.0.12, deleted from node-a): cgroup /sys/fs/cgroup/x/node-a/client-a left on node-a"]
        );
    }

    /// Recorded: node-a's `dp_backends` in the same kind of run (testdata/README.md):
    /// web-a1 (10.244.0.13:8080) backs `web`. Were it deleted and not added again, its
    /// backend entry would be left behind.
    #[test]
    fn a_backend_of_a_deleted_pod_fails() {
        let empty = NodeView::default();
        let mut v = view(false);
        v.backends = Some(
            pods::parse_backends(include_str!("testdata/pods/backends.node-a.json"))
                .expect("recorded output reads"),
        );
        let web_a1 = DepartedPod {
            name: "web-a1".into(),
            address: Ipv4Addr::new(10, 244, 0, 13),
            node: "node-b".into(),
            host_veth: None,
            cgroup: "/sys/fs/cgroup/x/node-b/web-a1".into(),
            netns: "/run/netns/x".into(),
        };
        let j = judge(&[web_a1], &[], &seen(&v, &empty), &[]);
        assert!(
            j.evidence.contains(
                &"web-a1 (10.244.0.13, deleted from node-b): dp_backends entry 1 -> 10.244.0.13:8080 left on node-a (it backs no service now)".to_string()
            ),
            "{:?}",
            j.evidence
        );
    }

    /// Derived from the recording: client-a deleted and not added again, yet something
    /// answers at its address.
    #[test]
    fn a_deleted_address_that_still_answers_fails() {
        let empty = NodeView::default();
        let v = view(false);
        let s = seen(&v, &empty);
        let addr = SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 12), 8080);
        let j = judge(&[client_a()], &[], &s, &[addr]);
        assert!(
            j.evidence.contains(
                &"client-a (10.244.0.12, deleted from node-a): 10.244.0.12:8080 still answers"
                    .to_string()
            ),
            "{:?}",
            j.evidence
        );
        let j = judge(&[client_a()], &[on("node-b")], &s, &[addr]);
        assert_eq!(j.verdict, Verdict::Pass, "re-added: it may answer: {j:?}");
    }
}
