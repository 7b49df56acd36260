//! pod-wiring: every pod the agent wired (routing native or vxlan) is wired as a CNI
//! plugin and the from-container program would have it, judged from the kernel: in the
//! pod, one /32 address on eth0, a default route via the node's gateway, and the gateway
//! resolved to the host veth's MAC (answered by BPF: the host veth has no address, and
//! `arp_ignore=1` keeps the kernel from answering there); on the node, exactly one
//! `dp_from_cont` on the veth's ingress and a `dp_endpoints` entry that names the veth
//! (ifindex, MAC) and the pod's MAC.

use std::net::Ipv4Addr;

use super::{merge, unknown_unless_harness, Context, Invariant, Judgement};
use crate::observe::pods::{self, NodeView, PodView};
use crate::observe::ObserveError;
use crate::suite::InvariantName;

pub const NAME: InvariantName = InvariantName::new("pod-wiring");
pub struct PodWiring;

/// The from-container program's name (datapath/README.md, "Pod networking").
pub const FROM_CONTAINER: &str = "dp_from_cont";

/// One pod as the judge needs it: what the harness asked for (name, address, gateway)
/// and the veth `pod add` reported (never guessed from the name).
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    pub pod: &'a str,
    pub addr: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub host_veth: &'a str,
}

/// Pure judgement of one pod from its node's view and its own.
pub fn judge(want: &Expected<'_>, node: &NodeView, pod: &PodView) -> Judgement {
    let p = want.pod;
    let veth = want.host_veth;
    let mut bad = Vec::new();

    let Some(host) = node.link(veth) else {
        return Judgement::fail(
            format!("{p}: host veth {veth} does not exist"),
            vec![format!("{p}: no link {veth} in `ip -j link` of its node")],
        );
    };
    let host_mac = host.address;

    // The pod's address: exactly ADDR/32 on eth0.
    let eth0 = pod.addrs.iter().find(|a| a.ifname == "eth0");
    let pod_mac = eth0.and_then(|a| a.address);
    match eth0.map(|a| a.v4()) {
        None => bad.push(format!("{p}: no eth0 in the pod")),
        Some(v4) if v4 != vec![(want.addr, 32)] => bad.push(format!(
            "{p}: eth0 has {} instead of {}/32",
            fmt_addrs(&v4),
            want.addr
        )),
        Some(_) => {}
    }

    // Default route via the gateway on eth0.
    let default_ok = pod.routes.iter().any(|r| {
        r.dst == "default" && r.gateway == Some(want.gateway) && r.dev.as_deref() == Some("eth0")
    });
    if !default_ok {
        bad.push(format!(
            "{p}: no default route via {} dev eth0 (routes: {})",
            want.gateway,
            pod.routes
                .iter()
                .map(|r| format!("{} via {:?} dev {:?}", r.dst, r.gateway, r.dev))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }

    // The gateway resolved, to the host veth's MAC.
    let gw = pod
        .neighs
        .iter()
        .find(|n| n.addr() == Some(want.gateway) && n.dev == "eth0");
    match gw {
        None => bad.push(format!(
            "{p}: no neighbour entry for the gateway {} in the pod",
            want.gateway
        )),
        Some(n) if !n.resolved() => bad.push(format!(
            "{p}: the gateway {} is {} in the pod (nobody answered its ARP)",
            want.gateway,
            n.state.join(",")
        )),
        Some(n) if n.lladdr != host_mac => bad.push(format!(
            "{p}: the gateway {} resolves to {} instead of {veth}'s {}",
            want.gateway,
            n.lladdr.map(|m| m.to_string()).unwrap_or_default(),
            host_mac.map(|m| m.to_string()).unwrap_or_default()
        )),
        Some(_) => {}
    }

    // No address on the host veth: the BPF responder answers ARP, not the kernel.
    if let Some(a) = node.addrs.iter().find(|a| a.ifname == veth) {
        let v4 = a.v4();
        if !v4.is_empty() {
            bad.push(format!("{p}: host veth {veth} has {}", fmt_addrs(&v4)));
        }
    }

    // Exactly one dp_from_cont on the veth's ingress (and nothing else of ours).
    let progs = node.ingress_programs(veth);
    let ours: Vec<_> = progs
        .iter()
        .filter(|a| a.prog_name == FROM_CONTAINER)
        .collect();
    if ours.len() != 1 {
        bad.push(format!(
            "{p}: {} {FROM_CONTAINER} on {veth} ingress, want 1 (ingress: {})",
            ours.len(),
            progs
                .iter()
                .map(|a| format!("{} id {} ({})", a.prog_name, a.prog_id, a.how))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    // The endpoint entry names the veth and both MACs.
    match node
        .endpoints
        .as_ref()
        .and_then(|eps| eps.iter().find(|e| e.addr == want.addr))
    {
        None => bad.push(format!(
            "{p}: no {} entry for {}",
            pods::MAP_ENDPOINTS,
            want.addr
        )),
        Some(e) => {
            if e.ifindex != host.ifindex {
                bad.push(format!(
                    "{p}: endpoint ifindex {} but {veth} is {}",
                    e.ifindex, host.ifindex
                ));
            }
            if Some(e.host_mac) != host_mac {
                bad.push(format!(
                    "{p}: endpoint host MAC {} but {veth} has {}",
                    e.host_mac,
                    host_mac.map(|m| m.to_string()).unwrap_or_default()
                ));
            }
            if Some(e.pod_mac) != pod_mac {
                bad.push(format!(
                    "{p}: endpoint pod MAC {} but eth0 has {}",
                    e.pod_mac,
                    pod_mac.map(|m| m.to_string()).unwrap_or_default()
                ));
            }
        }
    }

    if bad.is_empty() {
        Judgement::pass(format!(
            "{p}: {}/32 on eth0, default via {} resolved to {veth} ({}), {FROM_CONTAINER} id {} on {veth} ifindex {}, endpoint entry matches",
            want.addr,
            want.gateway,
            host_mac.map(|m| m.to_string()).unwrap_or_default(),
            ours.first().map(|a| a.prog_id).unwrap_or_default(),
            host.ifindex
        ))
    } else {
        Judgement::fail(format!("{p} is not wired as it should be"), bad)
    }
}

fn fmt_addrs(v4: &[(Ipv4Addr, u8)]) -> String {
    if v4.is_empty() {
        return "no IPv4 address".into();
    }
    v4.iter()
        .map(|(a, l)| format!("{a}/{l}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Invariant for PodWiring {
    fn name(&self) -> InvariantName {
        NAME
    }

    fn about(&self) -> &'static str {
        "each pod (routing native/vxlan): /32 on eth0, default via the gateway resolved by BPF to its host veth's MAC, one dp_from_cont on the veth, its endpoint entry"
    }

    fn check(&self, ctx: &Context<'_>) -> Result<Judgement, ObserveError> {
        let cluster = ctx.cluster;
        let js = crate::cluster::in_parallel(&cluster.nodes, |cn| {
            let Some(routing) = cn.net.as_ref().and_then(|n| n.pod_routing.as_ref()) else {
                return Ok(vec![Judgement::skipped(format!(
                    "{}: routing kernel: the provider wires pods, not the agent",
                    cn.name()
                ))]);
            };
            let mine: Vec<_> = cluster
                .pods
                .iter()
                .filter(|p| p.node == cn.name())
                .collect();
            // Each pod resolves its gateway first, so that there is an entry to judge.
            for p in &mine {
                if let Err(e) = pods::resolve_gateway(cn, p, routing.gateway) {
                    return unknown_unless_harness(format!("{}: cannot ping", p.name), e)
                        .map(|j| vec![j]);
                }
            }
            let view = match pods::node_view(cn) {
                Ok(v) => v,
                Err(e) => {
                    return unknown_unless_harness(format!("{}: cannot observe", cn.name()), e)
                        .map(|j| vec![j])
                }
            };
            let mut out = Vec::new();
            for p in mine {
                let Some(w) = cluster.pod_net.wired.get(&p.name) else {
                    out.push(Judgement::fail(
                        format!("{}: never wired (no `pod add` answer)", p.name),
                        vec![],
                    ));
                    continue;
                };
                out.push(match pods::pod_view(cn, p) {
                    Ok(pv) => judge(
                        &Expected {
                            pod: &p.name,
                            addr: p.ip,
                            gateway: routing.gateway,
                            host_veth: &w.host_veth,
                        },
                        &view,
                        &pv,
                    ),
                    Err(e) => unknown_unless_harness(format!("{}: cannot observe", p.name), e)?,
                });
            }
            Ok(out)
        });
        let js: Vec<Judgement> = js
            .into_iter()
            .collect::<Result<Vec<Vec<Judgement>>, ObserveError>>()?
            .into_iter()
            .flatten()
            .collect();
        let mut j = merge(&js);
        if j.verdict == super::Verdict::Pass {
            j.evidence = js.iter().map(|x| x.summary.clone()).collect();
            j.summary = format!("{} pods wired by the agent as they should be", js.len());
        }
        Ok(j)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Verdict;
    use super::*;
    use crate::observe::bpf::parse_json;

    /// Recorded on node-a of a kept pod-native run (testdata/README.md, "pods/").
    fn node() -> NodeView {
        macro_rules! f {
            ($name:literal) => {
                parse_json(include_str!(concat!(
                    "testdata/pods/wired.node.",
                    $name,
                    ".json"
                )))
                .expect("recorded output reads")
            };
        }
        NodeView {
            links: f!("link"),
            addrs: f!("addr"),
            routes: f!("route"),
            rules: f!("rule"),
            neighs: f!("neigh"),
            tc: pods::parse_net_show(include_str!("testdata/pods/wired.node.net.json"))
                .expect("reads"),
            progs: f!("bpf-prog"),
            bpf_links: f!("bpf-link"),
            endpoints: Some(
                pods::parse_endpoints(include_str!("testdata/pods/wired.node.endpoints.json"))
                    .expect("reads"),
            ),
            ipcache: Some(
                pods::parse_ipcache(include_str!("testdata/pods/wired.node.ipcache.json"))
                    .expect("reads"),
            ),
            backends: None,
            links_pin_dir: "/sys/fs/bpf/dp-harness-9331e1/node-a/datapathd/pods/links".into(),
        }
    }

    fn web(neigh: &str) -> PodView {
        PodView {
            addrs: parse_json(include_str!("testdata/pods/wired.web-a1.addr.json")).expect("reads"),
            routes: parse_json(include_str!("testdata/pods/wired.web-a1.route.json"))
                .expect("reads"),
            neighs: parse_json(neigh).expect("reads"),
        }
    }

    const WIRED_NEIGH: &str = include_str!("testdata/pods/wired.web-a1.neigh.json");
    const NOARP_NEIGH: &str = include_str!("testdata/pods/noarp.web-a1.neigh.json");

    fn want() -> Expected<'static> {
        Expected {
            pod: "web-a1",
            addr: Ipv4Addr::new(10, 244, 0, 13),
            gateway: Ipv4Addr::new(10, 244, 200, 1),
            host_veth: "lxc2239e703b2da",
        }
    }

    #[test]
    fn the_recorded_wired_pod_passes_and_names_veth_and_program() {
        let j = judge(&want(), &node(), &web(WIRED_NEIGH));
        assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
        assert!(
            j.summary
                .contains("dp_from_cont id 199475 on lxc2239e703b2da ifindex 6"),
            "{}",
            j.summary
        );
    }

    #[test]
    fn an_unanswered_arp_fails_naming_the_state() {
        let j = judge(&want(), &node(), &web(NOARP_NEIGH));
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.evidence
                .iter()
                .any(|e| e.contains("the gateway 10.244.200.1 is FAILED in the pod")),
            "{:?}",
            j.evidence
        );
    }

    /// Derived from the recording: the entry's MAC, a second program (a clsact filter
    /// beside the tcx link) and an address on the veth, each alone.
    #[test]
    fn each_mismatch_is_named() {
        let veth = "lxc2239e703b2da";
        let mut n = node();
        n.endpoints.as_mut().expect("pinned")[0].host_mac = "02:00:00:00:00:01".parse().unwrap();
        let j = judge(&want(), &n, &web(WIRED_NEIGH));
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.evidence
                .iter()
                .any(|e| e.contains("endpoint host MAC 02:00:00:00:00:01")),
            "{:?}",
            j.evidence
        );

        let mut n = node();
        n.tc.push(pods::TcProg {
            devname: veth.into(),
            ifindex: 6,
            kind: "clsact/ingress".into(),
            id: 199475,
        });
        let mut other = n.progs[0].clone();
        other.id = 199999;
        n.progs.push(other);
        n.tc[0].id = 199999;
        let j = judge(&want(), &n, &web(WIRED_NEIGH));
        assert!(
            j.evidence.iter().any(|e| e.contains(
                "2 dp_from_cont on lxc2239e703b2da ingress, want 1 (ingress: dp_from_cont id 199999 (clsact), dp_from_cont id 199475 (tcx))"
            )),
            "{:?}",
            j.evidence
        );

        let mut n = node();
        let a = n
            .addrs
            .iter_mut()
            .find(|a| a.ifname == veth)
            .expect("recorded");
        a.addr_info.push(pods::AddrInfo {
            family: "inet".into(),
            local: "10.244.200.1".into(),
            prefixlen: 32,
        });
        let j = judge(&want(), &n, &web(WIRED_NEIGH));
        assert!(
            j.evidence
                .iter()
                .any(|e| e.contains("host veth lxc2239e703b2da has 10.244.200.1/32")),
            "{:?}",
            j.evidence
        );
    }
}
