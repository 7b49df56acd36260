//! Deliberately broken variants of the agent, selected with `--mutant NAME`: each
//! reintroduces one production incident so the harness can prove it detects it.

use std::{fmt, str::FromStr};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutant {
    /// Incident A: legacy `BPF_PROG_ATTACH` with `BPF_F_ALLOW_MULTI`, fresh unpinned maps on
    /// every start, no sweep of what an earlier run left attached.
    StaleCgroupProg,
    /// Incident B: the `DP_FORWARD` jump is appended (`-A FORWARD`) once at start and its
    /// order never reconciled, so kube-proxy's `KUBE-FORWARD` (INVALID drop) runs first.
    KubeProxyFirst,
    /// Incident C: `dp_sockops` inserts with `BPF_NOEXIST` (a stale key keeps a new
    /// connection's socket out of `dp_sockhash`) and the agent never garbage-collects keys.
    SockmapNoexist,
}

impl Mutant {
    pub const ALL: [Mutant; 3] = [
        Mutant::StaleCgroupProg,
        Mutant::KubeProxyFirst,
        Mutant::SockmapNoexist,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mutant::StaleCgroupProg => "stale-cgroup-prog",
            Mutant::KubeProxyFirst => "kube-proxy-first",
            Mutant::SockmapNoexist => "sockmap-noexist",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Mutant::StaleCgroupProg => {
                "incident A: legacy multi attach, fresh unpinned maps on every start, no sweep"
            }
            Mutant::KubeProxyFirst => {
                "incident B: the DP_FORWARD jump is appended once and its order never reconciled"
            }
            Mutant::SockmapNoexist => {
                "incident C: sockhash inserts with BPF_NOEXIST and no garbage collection of stale keys"
            }
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
            "unknown mutant `stale`; valid mutants: stale-cgroup-prog, kube-proxy-first, sockmap-noexist"
        );
    }
}
