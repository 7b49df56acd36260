//! Named crash points in the agent's start-up sequence (`--failpoint NAME`).
//!
//! At the armed point the process aborts (SIGABRT): no destructor runs, no cleanup
//! happens, exactly like a crash or a SIGKILL. The harness uses this to kill the agent
//! mid-attach deterministically. Every point is reached on every start, whether the step
//! creates something or takes over what a previous run left (see datapath/README.md).

use std::{fmt, str::FromStr};

use datapath_common::{
    MAP_ACCEL, MAP_ACCEL_STATS, MAP_BACKENDS, MAP_META, MAP_REVNAT, MAP_SERVICES, MAP_SLOTS,
    MAP_SOCKHASH,
};

use crate::hooks::Hook;

/// Maps in the order the agent puts them in place (dp_meta last: it vouches for the rest).
pub const MAP_ORDER: [&str; 8] = [
    MAP_SERVICES,
    MAP_SLOTS,
    MAP_BACKENDS,
    MAP_REVNAT,
    MAP_SOCKHASH,
    MAP_ACCEL,
    MAP_ACCEL_STATS,
    MAP_META,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failpoint {
    /// Map pinned (created and pinned, or a compatible pin kept).
    AfterPinMap(&'static str),
    /// Program loaded into the kernel (verifier passed).
    AfterLoad(Hook),
    /// `dp_skmsg` loaded (it is attached to `dp_sockhash`, not to a cgroup hook).
    AfterLoadSkMsg,
    /// `dp_skmsg` attached to `dp_sockhash` (before any cgroup hook, so before the
    /// sock_ops program can put a socket into the map).
    AfterAttachSkMsg,
    /// Program attached to the cgroup (new link created, or pinned link updated).
    AfterAttach(Hook),
    /// Link pinned under links/<hook> (or the existing pin kept).
    AfterPinLink(Hook),
    BeforeFirstFill,
    AfterFirstFill,
}

impl Failpoint {
    /// Every failpoint, in the order a start reaches them.
    pub fn all() -> Vec<Failpoint> {
        let mut v: Vec<Failpoint> = MAP_ORDER
            .iter()
            .map(|m| Failpoint::AfterPinMap(m))
            .collect();
        v.extend(Hook::ALL.iter().map(|&h| Failpoint::AfterLoad(h)));
        v.push(Failpoint::AfterLoadSkMsg);
        v.push(Failpoint::AfterAttachSkMsg);
        for h in Hook::ALL {
            v.push(Failpoint::AfterAttach(h));
            v.push(Failpoint::AfterPinLink(h));
        }
        v.push(Failpoint::BeforeFirstFill);
        v.push(Failpoint::AfterFirstFill);
        v
    }
}

impl fmt::Display for Failpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failpoint::AfterPinMap(m) => write!(f, "after-pin-map:{m}"),
            Failpoint::AfterLoad(h) => write!(f, "after-load:{h}"),
            Failpoint::AfterLoadSkMsg => f.write_str("after-load:skmsg"),
            Failpoint::AfterAttachSkMsg => f.write_str("after-attach:skmsg"),
            Failpoint::AfterAttach(h) => write!(f, "after-attach:{h}"),
            Failpoint::AfterPinLink(h) => write!(f, "after-pin-link:{h}"),
            Failpoint::BeforeFirstFill => f.write_str("before-first-fill"),
            Failpoint::AfterFirstFill => f.write_str("after-first-fill"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown failpoint `{name}`; valid failpoints (`datapathd failpoints`): {}",
    valid()
)]
pub struct UnknownFailpoint {
    pub name: String,
}

fn valid() -> String {
    Failpoint::all()
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for Failpoint {
    type Err = UnknownFailpoint;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Failpoint::all()
            .into_iter()
            .find(|f| f.to_string() == s)
            .ok_or_else(|| UnknownFailpoint {
                name: s.to_string(),
            })
    }
}

/// The armed failpoint, if any.
#[derive(Clone, Copy, Debug, Default)]
pub struct Failpoints {
    armed: Option<Failpoint>,
}

impl Failpoints {
    pub fn new(armed: Option<Failpoint>) -> Self {
        Self { armed }
    }

    /// Abort the process if `point` is the armed one.
    pub fn hit(&self, point: Failpoint) {
        if self.armed == Some(point) {
            // Plain eprintln: the log subscriber may buffer, and this must reach the
            // caller before the abort.
            eprintln!("datapathd: failpoint {point}: aborting");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips() {
        let all = Failpoint::all();
        assert_eq!(all.len(), 8 + 5 + 2 + 10 + 2);
        for f in all {
            assert_eq!(f.to_string().parse::<Failpoint>().ok(), Some(f));
        }
    }

    #[test]
    fn names_are_the_documented_ones() {
        let names: Vec<String> = Failpoint::all().iter().map(|f| f.to_string()).collect();
        assert_eq!(names[0], "after-pin-map:dp_services");
        assert_eq!(names[4], "after-pin-map:dp_sockhash");
        assert_eq!(names[7], "after-pin-map:dp_meta");
        assert_eq!(names[8], "after-load:connect4");
        assert_eq!(names[12], "after-load:sockops");
        assert_eq!(names[13], "after-load:skmsg");
        assert_eq!(names[14], "after-attach:skmsg");
        assert_eq!(names[15], "after-attach:connect4");
        assert_eq!(names[16], "after-pin-link:connect4");
        assert_eq!(names[23], "after-attach:sockops");
        assert_eq!(names[24], "after-pin-link:sockops");
        assert_eq!(names[25], "before-first-fill");
        assert_eq!(names[26], "after-first-fill");
    }

    #[test]
    fn unknown_name_lists_valid_ones() {
        let err = "after-load:connect6"
            .parse::<Failpoint>()
            .expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.starts_with("unknown failpoint `after-load:connect6`; valid failpoints"));
        assert!(msg.contains("after-load:connect4"));
        assert!(msg.contains("after-first-fill"));
    }
}
