//! Kernel features the datapath uses, probed on the running kernel (never inferred from its
//! version: distribution kernels backport), and the choices derived from them.
//!
//! * [`probe::probe_all`] asks the kernel (program loads, map creation, links on the cgroup v2
//!   root and on `lo`, helper calls judged by the verifier's log) and records for each
//!   [`Feature`] whether it is available and how that was decided.
//! * [`decide`] turns those results and what the command line asked for into [`Choices`]:
//!   pure, unit-tested. A missing optional feature degrades (clsact instead of tcx, EPERM
//!   instead of ECONNREFUSED, no getpeername4); a missing required one makes `run` refuse
//!   ([`Report::require`]).
//! * [`record`] keeps the report of a running agent in a pinned map, for `status`.
//!
//! The JSON (`datapathd features --json`, `status --json`'s `features`) is documented in
//! datapath/README.md; names are stable.

pub mod probe;
pub mod record;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

use crate::masq::TcMode;

/// Program types the datapath loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProgType {
    CgroupSockAddr,
    SockOps,
    SkMsg,
    SchedCls,
}

impl ProgType {
    pub const ALL: [ProgType; 4] = [
        ProgType::CgroupSockAddr,
        ProgType::SockOps,
        ProgType::SkMsg,
        ProgType::SchedCls,
    ];

    /// The kernel's name (`bpftool feature` spells them so).
    pub fn name(self) -> &'static str {
        match self {
            ProgType::CgroupSockAddr => "cgroup_sock_addr",
            ProgType::SockOps => "sock_ops",
            ProgType::SkMsg => "sk_msg",
            ProgType::SchedCls => "sched_cls",
        }
    }

    fn first_release(self) -> &'static str {
        match self {
            ProgType::CgroupSockAddr => "4.17",
            ProgType::SockOps => "4.13",
            ProgType::SkMsg => "4.17",
            ProgType::SchedCls => "4.1",
        }
    }
}

/// Map types the datapath creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapKind {
    Hash,
    Array,
    PercpuArray,
    LruHash,
    Sockhash,
}

impl MapKind {
    pub const ALL: [MapKind; 5] = [
        MapKind::Hash,
        MapKind::Array,
        MapKind::PercpuArray,
        MapKind::LruHash,
        MapKind::Sockhash,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MapKind::Hash => "hash",
            MapKind::Array => "array",
            MapKind::PercpuArray => "percpu_array",
            MapKind::LruHash => "lru_hash",
            MapKind::Sockhash => "sockhash",
        }
    }

    fn first_release(self) -> &'static str {
        match self {
            MapKind::Hash | MapKind::Array => "3.19",
            MapKind::PercpuArray => "4.6",
            MapKind::LruHash => "4.10",
            MapKind::Sockhash => "4.18",
        }
    }
}

/// Attach points of the datapath's programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Attach {
    Connect4,
    Sendmsg4,
    Recvmsg4,
    Getpeername4,
    /// cgroup sock_ops.
    SockOps,
    /// sk_msg verdict on a sockhash.
    SkMsgVerdict,
}

impl Attach {
    pub const ALL: [Attach; 6] = [
        Attach::Connect4,
        Attach::Sendmsg4,
        Attach::Recvmsg4,
        Attach::Getpeername4,
        Attach::SockOps,
        Attach::SkMsgVerdict,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attach::Connect4 => "connect4",
            Attach::Sendmsg4 => "sendmsg4",
            Attach::Recvmsg4 => "recvmsg4",
            Attach::Getpeername4 => "getpeername4",
            Attach::SockOps => "sock_ops",
            Attach::SkMsgVerdict => "sk_msg_verdict",
        }
    }

    /// The program type that attaches here.
    pub fn prog_type(self) -> ProgType {
        match self {
            Attach::SockOps => ProgType::SockOps,
            Attach::SkMsgVerdict => ProgType::SkMsg,
            _ => ProgType::CgroupSockAddr,
        }
    }

    fn first_release(self) -> &'static str {
        match self {
            Attach::Connect4 => "4.17",
            Attach::Sendmsg4 => "4.18",
            Attach::Recvmsg4 => "5.2",
            Attach::Getpeername4 => "5.8",
            Attach::SockOps => "4.13",
            Attach::SkMsgVerdict => "4.17",
        }
    }
}

/// BPF helpers the datapath's programs call (datapath/ebpf/src; the object's `call`
/// instructions are checked against [`HELPERS_USED`] by a test).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Helper {
    MapLookupElem,
    MapUpdateElem,
    MapDeleteElem,
    GetPrandomU32,
    GetSocketCookie,
    SetRetval,
    SockHashUpdate,
    MsgRedirectHash,
    SkbLoadBytes,
    SkbStoreBytes,
    L3CsumReplace,
    L4CsumReplace,
    RedirectNeigh,
    Redirect,
    SkbSetTunnelKey,
    KtimeGetNs,
}

impl Helper {
    pub fn name(self) -> &'static str {
        match self {
            Helper::MapLookupElem => "bpf_map_lookup_elem",
            Helper::MapUpdateElem => "bpf_map_update_elem",
            Helper::MapDeleteElem => "bpf_map_delete_elem",
            Helper::GetPrandomU32 => "bpf_get_prandom_u32",
            Helper::GetSocketCookie => "bpf_get_socket_cookie",
            Helper::SetRetval => "bpf_set_retval",
            Helper::SockHashUpdate => "bpf_sock_hash_update",
            Helper::MsgRedirectHash => "bpf_msg_redirect_hash",
            Helper::SkbLoadBytes => "bpf_skb_load_bytes",
            Helper::SkbStoreBytes => "bpf_skb_store_bytes",
            Helper::L3CsumReplace => "bpf_l3_csum_replace",
            Helper::L4CsumReplace => "bpf_l4_csum_replace",
            Helper::RedirectNeigh => "bpf_redirect_neigh",
            Helper::Redirect => "bpf_redirect",
            Helper::SkbSetTunnelKey => "bpf_skb_set_tunnel_key",
            Helper::KtimeGetNs => "bpf_ktime_get_ns",
        }
    }

    /// `enum bpf_func_id`.
    pub fn id(self) -> u32 {
        match self {
            Helper::MapLookupElem => 1,
            Helper::MapUpdateElem => 2,
            Helper::MapDeleteElem => 3,
            Helper::KtimeGetNs => 5,
            Helper::GetPrandomU32 => 7,
            Helper::SkbStoreBytes => 9,
            Helper::L3CsumReplace => 10,
            Helper::L4CsumReplace => 11,
            Helper::SkbSetTunnelKey => 21,
            Helper::Redirect => 23,
            Helper::SkbLoadBytes => 26,
            Helper::GetSocketCookie => 46,
            Helper::SockHashUpdate => 70,
            Helper::MsgRedirectHash => 71,
            Helper::RedirectNeigh => 152,
            Helper::SetRetval => 187,
        }
    }
}

/// Which program type calls which helper, and the first release that allows the pair.
pub const HELPERS_USED: [(ProgType, Helper, &str); 21] = [
    (ProgType::CgroupSockAddr, Helper::MapLookupElem, "4.17"),
    (ProgType::CgroupSockAddr, Helper::MapUpdateElem, "4.17"),
    (ProgType::CgroupSockAddr, Helper::GetPrandomU32, "4.17"),
    (ProgType::CgroupSockAddr, Helper::GetSocketCookie, "5.0"),
    (ProgType::CgroupSockAddr, Helper::SetRetval, "5.18"),
    (ProgType::SockOps, Helper::MapLookupElem, "4.13"),
    (ProgType::SockOps, Helper::SockHashUpdate, "4.18"),
    (ProgType::SkMsg, Helper::MapLookupElem, "4.17"),
    (ProgType::SkMsg, Helper::MsgRedirectHash, "4.18"),
    (ProgType::SchedCls, Helper::MapLookupElem, "4.1"),
    (ProgType::SchedCls, Helper::MapUpdateElem, "4.1"),
    (ProgType::SchedCls, Helper::MapDeleteElem, "4.1"),
    (ProgType::SchedCls, Helper::GetPrandomU32, "4.1"),
    (ProgType::SchedCls, Helper::SkbLoadBytes, "4.5"),
    (ProgType::SchedCls, Helper::SkbStoreBytes, "4.1"),
    (ProgType::SchedCls, Helper::L3CsumReplace, "4.1"),
    (ProgType::SchedCls, Helper::L4CsumReplace, "4.1"),
    (ProgType::SchedCls, Helper::RedirectNeigh, "5.10"),
    // The masquerade's layout-2 NAT entries record when they were made.
    (ProgType::SchedCls, Helper::KtimeGetNs, "4.1"),
    // Pod networking (pods object): local redirect, ARP reply, VXLAN encapsulation.
    (ProgType::SchedCls, Helper::Redirect, "4.4"),
    (ProgType::SchedCls, Helper::SkbSetTunnelKey, "4.3"),
];

/// One kernel feature the datapath uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Feature {
    ProgType(ProgType),
    MapType(MapKind),
    Attach(Attach),
    /// `BPF_LINK_CREATE` for cgroup programs (pinned links survive the agent).
    CgroupLink,
    /// `BPF_LINK_UPDATE` with `BPF_F_REPLACE` (atomic program swap on restart).
    LinkUpdate,
    /// tcx links on an interface (tc programs without a qdisc).
    Tcx,
    Helper(ProgType, Helper),
    /// `/sys/kernel/btf/vmlinux`.
    BtfVmlinux,
}

impl Feature {
    /// Every feature, in probe order (a feature's [`Feature::needs`] come before it).
    pub fn all() -> Vec<Feature> {
        let mut v: Vec<Feature> = ProgType::ALL.into_iter().map(Feature::ProgType).collect();
        v.extend(MapKind::ALL.into_iter().map(Feature::MapType));
        v.extend([Feature::CgroupLink, Feature::LinkUpdate]);
        v.extend(Attach::ALL.into_iter().map(Feature::Attach));
        v.push(Feature::Tcx);
        v.extend(HELPERS_USED.iter().map(|(p, h, _)| Feature::Helper(*p, *h)));
        v.push(Feature::BtfVmlinux);
        v
    }

    /// Stable name: `prog_type:sock_ops`, `map_type:sockhash`, `attach:getpeername4`,
    /// `link:cgroup`, `link:update`, `link:tcx`, `helper:cgroup_sock_addr:bpf_set_retval`,
    /// `btf:vmlinux`.
    pub fn name(self) -> String {
        match self {
            Feature::ProgType(p) => format!("prog_type:{}", p.name()),
            Feature::MapType(m) => format!("map_type:{}", m.name()),
            Feature::Attach(a) => format!("attach:{}", a.name()),
            Feature::CgroupLink => "link:cgroup".into(),
            Feature::LinkUpdate => "link:update".into(),
            Feature::Tcx => "link:tcx".into(),
            Feature::Helper(p, h) => format!("helper:{}:{}", p.name(), h.name()),
            Feature::BtfVmlinux => "btf:vmlinux".into(),
        }
    }

    pub fn from_name(s: &str) -> Option<Feature> {
        Feature::all().into_iter().find(|f| f.name() == s)
    }

    /// The first upstream release that has it.
    pub fn first_release(self) -> &'static str {
        match self {
            Feature::ProgType(p) => p.first_release(),
            Feature::MapType(m) => m.first_release(),
            Feature::Attach(a) => a.first_release(),
            Feature::CgroupLink | Feature::LinkUpdate => "5.7",
            Feature::Tcx => "6.6",
            Feature::Helper(p, h) => HELPERS_USED
                .iter()
                .find(|(q, g, _)| *q == p && *g == h)
                .map_or("?", |(_, _, r)| r),
            Feature::BtfVmlinux => "5.4",
        }
    }

    /// What must be available for this feature's probe to mean anything (a helper can
    /// only be asked for from a program type that loads).
    pub fn needs(self) -> Vec<Feature> {
        match self {
            Feature::Attach(Attach::SkMsgVerdict) => vec![
                Feature::ProgType(ProgType::SkMsg),
                Feature::MapType(MapKind::Sockhash),
            ],
            Feature::Attach(a) => vec![Feature::ProgType(a.prog_type())],
            Feature::CgroupLink => vec![Feature::ProgType(ProgType::CgroupSockAddr)],
            Feature::LinkUpdate => vec![Feature::CgroupLink],
            Feature::Tcx => vec![Feature::ProgType(ProgType::SchedCls)],
            Feature::Helper(p, _) => vec![Feature::ProgType(p)],
            _ => vec![],
        }
    }

    /// What in the datapath uses it.
    pub fn used_by(self) -> &'static str {
        match self {
            Feature::ProgType(ProgType::CgroupSockAddr)
            | Feature::Attach(Attach::Connect4 | Attach::Sendmsg4 | Attach::Recvmsg4)
            | Feature::MapType(MapKind::Hash) => "socket-LB",
            Feature::Attach(Attach::Getpeername4) => "socket-LB: getpeername() shows the service",
            Feature::MapType(MapKind::LruHash) => "socket-LB reverse NAT, masquerade",
            Feature::MapType(MapKind::Array) => "dp_meta, dp_accel, masquerade config",
            Feature::MapType(MapKind::PercpuArray) => "acceleration counters",
            Feature::ProgType(ProgType::SockOps | ProgType::SkMsg)
            | Feature::MapType(MapKind::Sockhash)
            | Feature::Attach(Attach::SockOps | Attach::SkMsgVerdict) => "socket acceleration",
            Feature::ProgType(ProgType::SchedCls) => "masquerade",
            Feature::CgroupLink | Feature::LinkUpdate => "restart-safe attachment (pinned links)",
            Feature::Tcx => "masquerade: tcx attachment (clsact otherwise)",
            Feature::Helper(ProgType::CgroupSockAddr, Helper::SetRetval) => {
                "socket-LB: ECONNREFUSED for a service without backends (EPERM otherwise)"
            }
            Feature::Helper(ProgType::CgroupSockAddr, _) => "socket-LB",
            Feature::Helper(ProgType::SockOps | ProgType::SkMsg, _) => "socket acceleration",
            Feature::Helper(ProgType::SchedCls, Helper::Redirect | Helper::SkbSetTunnelKey) => {
                "pod networking (--routing): local redirect, ARP replies, VXLAN encapsulation"
            }
            Feature::Helper(ProgType::SchedCls, _) => "masquerade",
            Feature::BtfVmlinux => "nothing required (our objects carry no CO-RE relocations)",
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The outcome of one probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub available: bool,
    /// How it was decided: "probe: BPF_PROG_LOAD sock_ops ok", "probe failed: EINVAL", ...
    pub how: String,
}

impl Probe {
    pub fn ok(how: impl Into<String>) -> Probe {
        Probe {
            available: true,
            how: how.into(),
        }
    }
    pub fn missing(how: impl Into<String>) -> Probe {
        Probe {
            available: false,
            how: how.into(),
        }
    }
}

/// Probe results by feature.
pub type Probes = BTreeMap<Feature, Probe>;

/// What the command line asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requested {
    pub tc_attach: TcMode,
    /// `--uplink` was given: the masquerade must run.
    pub masquerade: bool,
    /// `--accelerate` prefixes were given.
    pub accelerate: bool,
}

/// One derived decision: its value and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    pub value: String,
    pub reason: String,
}

/// The decisions, by name (see [`decide`] for the values each takes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choices {
    /// "on" | "unavailable": the four sock_addr programs as pinned cgroup links.
    pub socket_lb: Choice,
    /// "attached" | "skipped".
    pub getpeername4: Choice,
    /// "set_retval" (ECONNREFUSED) | "eperm".
    pub fast_refuse: Choice,
    /// "on" | "off" (no --accelerate prefix) | "unavailable".
    pub accelerate: Choice,
    /// "tcx" | "clsact" | "unavailable": how the masquerade attaches (or would, with
    /// `--uplink`).
    pub tc_attach: Choice,
}

impl Choices {
    /// Every choice with its JSON name, in the order they are printed and logged.
    pub fn named(&self) -> [(&'static str, &Choice); 5] {
        [
            ("socket_lb", &self.socket_lb),
            ("getpeername4", &self.getpeername4),
            ("fast_refuse", &self.fast_refuse),
            ("accelerate", &self.accelerate),
            ("tc_attach", &self.tc_attach),
        ]
    }
}

/// `datapathd features --json`, and `status --json`'s `features`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Bumped when a field changes meaning.
    pub schema: u32,
    /// `uname -r` of the kernel probed (for the reader; never used to decide).
    pub kernel_release: String,
    /// "agent" (recorded by the running agent at its start) or "probe" (probed now).
    pub source: String,
    pub features: BTreeMap<String, FeatureReport>,
    pub choices: Choices,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureReport {
    pub available: bool,
    pub how: String,
    pub first_release: String,
    pub used_by: String,
}

pub const REPORT_SCHEMA: u32 = 1;

/// The kernel lacks what the requested mode needs and the design has no fallback.
#[derive(Debug, thiserror::Error)]
#[error("kernel {kernel} cannot run {what}: {reason} (see `datapathd features`)")]
pub struct MissingFeature {
    pub kernel: String,
    pub what: &'static str,
    pub reason: String,
}

/// Every feature in `needs` that is not available, as "name (how)".
fn missing(probes: &Probes, needs: &[Feature]) -> Vec<String> {
    needs
        .iter()
        .filter(|f| !probes.get(f).is_some_and(|p| p.available))
        .map(|f| match probes.get(f) {
            Some(p) => format!("{f} ({})", p.how),
            None => format!("{f} (not probed)"),
        })
        .collect()
}

fn helpers_of(p: ProgType) -> impl Iterator<Item = Feature> {
    HELPERS_USED
        .iter()
        .filter(move |(q, h, _)| *q == p && *h != Helper::SetRetval)
        .map(|(q, h, _)| Feature::Helper(*q, *h))
}

/// What socket-LB cannot do without.
pub fn socket_lb_needs() -> Vec<Feature> {
    let mut v = vec![
        Feature::ProgType(ProgType::CgroupSockAddr),
        Feature::MapType(MapKind::Hash),
        Feature::MapType(MapKind::LruHash),
        Feature::MapType(MapKind::Array),
        Feature::Attach(Attach::Connect4),
        Feature::Attach(Attach::Sendmsg4),
        Feature::Attach(Attach::Recvmsg4),
        Feature::CgroupLink,
        Feature::LinkUpdate,
    ];
    v.extend(helpers_of(ProgType::CgroupSockAddr));
    v
}

/// What socket acceleration needs (the agent loads it on every start).
pub fn accelerate_needs() -> Vec<Feature> {
    let mut v = vec![
        Feature::ProgType(ProgType::SockOps),
        Feature::ProgType(ProgType::SkMsg),
        Feature::MapType(MapKind::Sockhash),
        Feature::MapType(MapKind::PercpuArray),
        Feature::Attach(Attach::SockOps),
        Feature::Attach(Attach::SkMsgVerdict),
    ];
    v.extend(helpers_of(ProgType::SockOps));
    v.extend(helpers_of(ProgType::SkMsg));
    v
}

/// What the masquerade needs whichever way it attaches.
pub fn masquerade_needs() -> Vec<Feature> {
    let mut v = vec![
        Feature::ProgType(ProgType::SchedCls),
        Feature::MapType(MapKind::LruHash),
        Feature::MapType(MapKind::Hash),
        Feature::MapType(MapKind::Array),
    ];
    v.extend(helpers_of(ProgType::SchedCls));
    v
}

fn available(probes: &Probes, f: Feature) -> bool {
    probes.get(&f).is_some_and(|p| p.available)
}

fn how(probes: &Probes, f: Feature) -> String {
    probes
        .get(&f)
        .map_or_else(|| "not probed".to_string(), |p| p.how.clone())
}

/// The choices for these probe results and this request. Pure; never fails: a choice
/// that cannot be made is "unavailable" with its reason, and [`Report::require`] decides
/// whether that stops the agent.
pub fn decide(probes: &Probes, req: Requested) -> Choices {
    let lb_missing = missing(probes, &socket_lb_needs());
    let socket_lb = if lb_missing.is_empty() {
        Choice {
            value: "on".into(),
            reason: "cgroup sock_addr connect4/sendmsg4/recvmsg4 as pinned bpf_links, updated in place on restart".into(),
        }
    } else {
        Choice {
            value: "unavailable".into(),
            reason: format!("missing {}", lb_missing.join(", ")),
        }
    };

    let gp = Feature::Attach(Attach::Getpeername4);
    let getpeername4 = if available(probes, gp) {
        Choice {
            value: "attached".into(),
            reason: format!("{gp}: {}", how(probes, gp)),
        }
    } else {
        Choice {
            value: "skipped".into(),
            reason: format!(
                "{gp} unavailable ({}): getpeername() on a balanced socket shows the backend, not the service",
                how(probes, gp)
            ),
        }
    };

    let sr = Feature::Helper(ProgType::CgroupSockAddr, Helper::SetRetval);
    let fast_refuse = if available(probes, sr) {
        Choice {
            value: "set_retval".into(),
            reason: format!(
                "{sr}: {}: connect() to a service without backends fails with ECONNREFUSED",
                how(probes, sr)
            ),
        }
    } else {
        Choice {
            value: "eperm".into(),
            reason: format!(
                "{sr} unavailable ({}): connect() to a service without backends fails with EPERM",
                how(probes, sr)
            ),
        }
    };

    let acc_missing = missing(probes, &accelerate_needs());
    let accelerate = match (acc_missing.is_empty(), req.accelerate) {
        (false, _) => Choice {
            value: "unavailable".into(),
            reason: format!("missing {}", acc_missing.join(", ")),
        },
        (true, true) => Choice {
            value: "on".into(),
            reason: "sockhash, sock_ops and sk_msg available; --accelerate prefixes given".into(),
        },
        (true, false) => Choice {
            value: "off".into(),
            reason: "sockhash, sock_ops and sk_msg available; no --accelerate prefix".into(),
        },
    };

    let masq_missing = missing(probes, &masquerade_needs());
    let tcx = available(probes, Feature::Tcx);
    let tcx_how = how(probes, Feature::Tcx);
    let tc_attach = if !masq_missing.is_empty() {
        Choice {
            value: "unavailable".into(),
            reason: format!("missing {}", masq_missing.join(", ")),
        }
    } else {
        match (req.tc_attach, tcx) {
            (TcMode::Auto, true) => Choice {
                value: "tcx".into(),
                reason: format!("--tc-attach auto and link:tcx available ({tcx_how})"),
            },
            (TcMode::Auto, false) => Choice {
                value: "clsact".into(),
                reason: format!("--tc-attach auto and link:tcx unavailable ({tcx_how})"),
            },
            (TcMode::Tcx, true) => Choice {
                value: "tcx".into(),
                reason: format!("--tc-attach tcx ({tcx_how})"),
            },
            (TcMode::Tcx, false) => Choice {
                value: "unavailable".into(),
                reason: format!("--tc-attach tcx asked, but link:tcx is unavailable ({tcx_how}); use --tc-attach clsact or auto"),
            },
            (TcMode::Clsact, _) => Choice {
                value: "clsact".into(),
                reason: "--tc-attach clsact".into(),
            },
        }
    };

    Choices {
        socket_lb,
        getpeername4,
        fast_refuse,
        accelerate,
        tc_attach,
    }
}

impl Report {
    pub fn new(kernel_release: String, source: &str, probes: &Probes, req: Requested) -> Report {
        let features = probes
            .iter()
            .map(|(f, p)| {
                (
                    f.name(),
                    FeatureReport {
                        available: p.available,
                        how: p.how.clone(),
                        first_release: f.first_release().to_string(),
                        used_by: f.used_by().to_string(),
                    },
                )
            })
            .collect();
        Report {
            schema: REPORT_SCHEMA,
            kernel_release,
            source: source.to_string(),
            features,
            choices: decide(probes, req),
        }
    }

    /// Ok when `run` can go ahead with `req`: socket-LB and acceleration (loaded on every
    /// start) must be available; the masquerade too when asked for.
    pub fn require(&self, req: Requested) -> Result<(), MissingFeature> {
        let c = &self.choices;
        let checks = [
            ("socket-LB", &c.socket_lb, true),
            (
                "socket acceleration (loaded on every start)",
                &c.accelerate,
                true,
            ),
            ("the masquerade (--uplink)", &c.tc_attach, req.masquerade),
        ];
        for (what, choice, needed) in checks {
            if needed && choice.value == "unavailable" {
                return Err(MissingFeature {
                    kernel: self.kernel_release.clone(),
                    what,
                    reason: choice.reason.clone(),
                });
            }
        }
        Ok(())
    }

    pub fn uses_getpeername4(&self) -> bool {
        self.choices.getpeername4.value == "attached"
    }

    pub fn uses_set_retval(&self) -> bool {
        self.choices.fast_refuse.value == "set_retval"
    }

    pub fn tc_mode(&self) -> Option<TcMode> {
        match self.choices.tc_attach.value.as_str() {
            "tcx" => Some(TcMode::Tcx),
            "clsact" => Some(TcMode::Clsact),
            _ => None,
        }
    }

    /// Lines for the text status and `datapathd features`.
    pub fn render_text(&self) -> String {
        let mut out = format!(
            "kernel {} (features {}):\n",
            self.kernel_release,
            if self.source == "agent" {
                "recorded by the agent at its start"
            } else {
                "probed now"
            }
        );
        for (name, choice) in self.choices.named() {
            out.push_str(&format!(
                "  choice {name}: {} ({})\n",
                choice.value, choice.reason
            ));
        }
        for (name, f) in &self.features {
            out.push_str(&format!(
                "  {} {name}: {} [Linux {}+; {}]\n",
                if f.available { "yes" } else { "NO " },
                f.how,
                f.first_release,
                f.used_by
            ));
        }
        out
    }
}

/// Parses a `--assume-missing` value.
pub fn parse_feature(s: &str) -> Result<Feature, String> {
    Feature::from_name(s).ok_or_else(|| {
        format!(
            "unknown feature `{s}`; valid: {}",
            Feature::all()
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}
