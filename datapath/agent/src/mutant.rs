//! Deliberately broken variants of the agent, selected with `--mutant NAME`: each
//! reintroduces one production incident so the harness can prove it detects it.

use std::{fmt, str::FromStr};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutant {
    /// Incident A: legacy `BPF_PROG_ATTACH` with `BPF_F_ALLOW_MULTI`, fresh unpinned maps on
    /// every start, no sweep of what an earlier run left attached.
    StaleCgroupProg,
    /// Socket LB: `dp_recvmsg4` does not reverse-translate.
    UdpReplyNotReversed,
    /// Socket LB: `dp_getpeername4` does not reverse-translate.
    GetpeernameNotRewritten,
    /// Incident B: the `DP_FORWARD` jump is appended (`-A FORWARD`) once at start and its
    /// order never reconciled, so kube-proxy's `KUBE-FORWARD` (INVALID drop) runs first.
    KubeProxyFirst,
    /// Incident B's chain: the reconcile moves the jump back with `-A` instead of `-I 1`.
    ForwardJumpAppended,
    /// Incident B's chain: the reconcile inserts a new jump on top, never deletes the old.
    ForwardJumpDuplicated,
    /// Incident B's masquerade: replies get the pod's address back but keep the port.
    MasqReplyPortKept,
    /// Incident C: `dp_sockops` inserts with `BPF_NOEXIST` (a stale key keeps a new
    /// connection's socket out of `dp_sockhash`) and the agent never garbage-collects keys.
    SockmapNoexist,
    /// Incident C's collector: off (inserts replace, as they should).
    SockmapNoGc,
    /// Incident C's keys: the peer's port in network byte order.
    SockmapKeyPortOrder,
    /// Incident C's sock_ops: only the connecting end is inserted.
    SockmapActiveOnly,
    /// A partition's heal: the agent takes out the backends it cannot reach and never
    /// puts them back (quarantine.rs).
    QuarantineNeverRestored,
    /// bpffs remount: the agent holds its objects but never notices that their pins are
    /// gone, so it never pins them again.
    BpffsLostPinsIgnored,
    /// Map pressure: a reconcile with a change a full map cannot take is aborted, and the
    /// agent empties dp_services of its services to write everything again next pass;
    /// while the map stays full every pass is refused, so no service answers.
    MapPressureFlush,
    /// Upgrade: on a masquerade layout change the NAT maps are recreated empty instead of
    /// migrated (masq_migrate.rs), so every live pod->external flow loses its translation.
    UpgradeRecreatesMaps,
    /// Pod networking: `dp_from_cont` passes ARP to the kernel, which (arp_ignore=1, no
    /// address on the host veth) never answers: pods cannot resolve their gateway.
    ArpResponderOff,
    /// Pod networking: an ipcache entry whose node changed keeps its old node (and native
    /// route); entries are only ever added.
    IpcacheStaleOnMove,
    /// Pod networking: a deleted pod's veth and route go, its dp_endpoints entry stays.
    EndpointKeptOnDelete,
}

impl Mutant {
    pub const ALL: [Mutant; 18] = [
        Mutant::StaleCgroupProg,
        Mutant::UdpReplyNotReversed,
        Mutant::GetpeernameNotRewritten,
        Mutant::KubeProxyFirst,
        Mutant::ForwardJumpAppended,
        Mutant::ForwardJumpDuplicated,
        Mutant::MasqReplyPortKept,
        Mutant::SockmapNoexist,
        Mutant::SockmapNoGc,
        Mutant::SockmapKeyPortOrder,
        Mutant::SockmapActiveOnly,
        Mutant::QuarantineNeverRestored,
        Mutant::BpffsLostPinsIgnored,
        Mutant::MapPressureFlush,
        Mutant::UpgradeRecreatesMaps,
        Mutant::ArpResponderOff,
        Mutant::IpcacheStaleOnMove,
        Mutant::EndpointKeptOnDelete,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mutant::StaleCgroupProg => "stale-cgroup-prog",
            Mutant::UdpReplyNotReversed => "udp-reply-not-reversed",
            Mutant::GetpeernameNotRewritten => "getpeername-not-rewritten",
            Mutant::KubeProxyFirst => "kube-proxy-first",
            Mutant::ForwardJumpAppended => "forward-jump-appended",
            Mutant::ForwardJumpDuplicated => "forward-jump-duplicated",
            Mutant::MasqReplyPortKept => "masq-reply-port-kept",
            Mutant::SockmapNoexist => "sockmap-noexist",
            Mutant::SockmapNoGc => "sockmap-no-gc",
            Mutant::SockmapKeyPortOrder => "sockmap-key-port-order",
            Mutant::SockmapActiveOnly => "sockmap-active-only",
            Mutant::QuarantineNeverRestored => "quarantine-never-restored",
            Mutant::BpffsLostPinsIgnored => "bpffs-lost-pins-ignored",
            Mutant::MapPressureFlush => "map-pressure-flush",
            Mutant::UpgradeRecreatesMaps => "upgrade-recreates-maps",
            Mutant::ArpResponderOff => "arp-responder-off",
            Mutant::IpcacheStaleOnMove => "ipcache-stale-on-move",
            Mutant::EndpointKeptOnDelete => "endpoint-kept-on-delete",
        }
    }

    /// What it breaks, in one line (`datapathd mutants`).
    pub fn description(self) -> &'static str {
        match self {
            Mutant::StaleCgroupProg => {
                "incident A: legacy multi attach, fresh unpinned maps on every start, no sweep: after a restart the old program rewrites connects to dead backends first"
            }
            Mutant::UdpReplyNotReversed => {
                "socket LB: recvmsg4 does not reverse-translate, so UDP replies to a service come from the backend's address (resolvers drop them)"
            }
            Mutant::GetpeernameNotRewritten => {
                "socket LB: getpeername4 does not reverse-translate, so a TCP client of a service sees the backend as its peer"
            }
            Mutant::KubeProxyFirst => {
                "incident B: the DP_FORWARD jump is appended once and its order never reconciled"
            }
            Mutant::ForwardJumpAppended => {
                "kube-proxy order: the reconcile moves the DP_FORWARD jump back with -A instead of -I 1, so it stays behind KUBE-FORWARD's INVALID drop"
            }
            Mutant::ForwardJumpDuplicated => {
                "kube-proxy order: the reconcile inserts a new DP_FORWARD jump on top without deleting the old one, so jumps pile up in FORWARD"
            }
            Mutant::MasqReplyPortKept => {
                "masquerade: replies get the pod's address back but keep the masquerade port, so the pod answers them with a reset"
            }
            Mutant::SockmapNoexist => {
                "incident C: sockhash inserts with BPF_NOEXIST and no garbage collection of stale keys"
            }
            Mutant::SockmapNoGc => {
                "sockmap: the agent never garbage-collects dp_sockhash, so keys no live socket owns stay in the map"
            }
            Mutant::SockmapKeyPortOrder => {
                "sockmap: sock_ops keys connections with the peer's port in network byte order, so keys name tuples no socket has and nothing is accelerated"
            }
            Mutant::SockmapActiveOnly => {
                "sockmap: sock_ops inserts only the connecting end, so the accepting end of every connection is missing from dp_sockhash"
            }
            Mutant::QuarantineNeverRestored => {
                "partition: the agent takes TCP backends it cannot reach out of their services and never puts them back, so after a heal a service whose backends were across the cut answers nobody"
            }
            Mutant::BpffsLostPinsIgnored => {
                "bpffs remount: the agent does not notice that its pins are gone, so the running datapath stays unpinned and no status, cleanup or next agent finds it"
            }
            Mutant::MapPressureFlush => {
                "map pressure: a change a full map cannot take aborts the reconcile and the agent empties dp_services of its services to start over, so while the map stays full no service answers"
            }
            Mutant::UpgradeRecreatesMaps => {
                "upgrade: a masquerade layout change recreates the NAT maps empty instead of migrating them, so every established pod->external connection gets a new port and is reset"
            }
            Mutant::ArpResponderOff => {
                "pod networking: dp_from_cont passes ARP to the kernel, which (arp_ignore=1, no address on the host veth) never answers, so pods cannot resolve their gateway"
            }
            Mutant::IpcacheStaleOnMove => {
                "pod networking: an ipcache entry whose node changed keeps its old node (and native route), entries are only ever added, so traffic to a moved pod goes to its old node"
            }
            Mutant::EndpointKeptOnDelete => {
                "pod networking: a deleted pod's veth and route are removed but its dp_endpoints entry stays"
            }
        }
    }

    /// The `.rodata` bits (`DP_MUTATIONS`) of the eBPF objects that this mutant sets.
    pub fn bpf_mutations(self) -> u32 {
        use datapath_common::*;
        match self {
            Mutant::UdpReplyNotReversed => MUTATE_NO_RECVMSG_REVNAT,
            Mutant::GetpeernameNotRewritten => MUTATE_NO_GETPEERNAME_REVNAT,
            Mutant::SockmapKeyPortOrder => MUTATE_SOCKKEY_PORT_ORDER,
            Mutant::SockmapActiveOnly => MUTATE_SOCKOPS_ACTIVE_ONLY,
            Mutant::MasqReplyPortKept => MUTATE_MASQ_REPLY_PORT_KEPT,
            Mutant::ArpResponderOff => MUTATE_ARP_RESPONDER_OFF,
            _ => 0,
        }
    }
}

impl fmt::Display for Mutant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown mutant `{name}`; valid mutants: {}", valid())]
pub struct UnknownMutant {
    pub name: String,
}

fn valid() -> String {
    Mutant::ALL
        .iter()
        .map(|m| m.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for Mutant {
    type Err = UnknownMutant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mutant::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownMutant {
                name: s.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_and_names_valid_ones_for_unknown() {
        assert_eq!(
            "stale-cgroup-prog".parse::<Mutant>().ok(),
            Some(Mutant::StaleCgroupProg)
        );
        let err = "stale"
            .parse::<Mutant>()
            .expect_err("unknown mutant must fail");
        assert_eq!(
            err.to_string(),
            "unknown mutant `stale`; valid mutants: stale-cgroup-prog, udp-reply-not-reversed, getpeername-not-rewritten, kube-proxy-first, forward-jump-appended, forward-jump-duplicated, masq-reply-port-kept, sockmap-noexist, sockmap-no-gc, sockmap-key-port-order, sockmap-active-only, quarantine-never-restored, bpffs-lost-pins-ignored, map-pressure-flush, upgrade-recreates-maps, arp-responder-off, ipcache-stale-on-move, endpoint-kept-on-delete"
        );
    }
}
