//! Map pressure: service changes a full map could not take. The running agent keeps its
//! record where `status` (another process) can read it, as it does its features report: a
//! one-entry array map `dp_pressure` holding the record's JSON, pinned at
//! `<bpffs>/pressure` (`cleanup` removes it with the instance directory). Written when a
//! streak of refusals starts, when what is refused changes, and once when it ends.

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::programming::Refused;

/// At most this many refused changes are kept in the record (the log has them all).
const KEPT: usize = 16;

pub use crate::pinned_record::RecordError as PressureError;

const KIND: crate::pinned_record::Kind = crate::pinned_record::Kind {
    what: "pressure record",
    map: "dp_pressure",
};

/// One full map, as the reconcile that refused found it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullMap {
    pub map: String,
    pub used: usize,
    pub capacity: u32,
}

/// `status --json`'s `pressure`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pressure {
    /// Unix seconds of the first refusal of this streak.
    pub since: u64,
    /// Unix seconds of the reconcile that applied everything again; null while it lasts.
    pub resolved_at: Option<u64>,
    /// The maps that refused (each once, first refusal's counts).
    pub full: Vec<FullMap>,
    /// The refused changes of the latest reconcile (at most 16), one line each.
    pub refused: Vec<String>,
    pub refused_count: usize,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Pressure {
    /// The record after a reconcile that refused `refused` (non-empty), continuing the
    /// streak of `before` when it is still running.
    pub fn refused(before: Option<&Pressure>, refused: &[Refused], at: u64) -> Pressure {
        let since = before
            .filter(|p| p.resolved_at.is_none())
            .map_or(at, |p| p.since);
        let mut full: Vec<FullMap> = Vec::new();
        for r in refused {
            if !full.iter().any(|f| f.map == r.map) {
                full.push(FullMap {
                    map: r.map.to_string(),
                    used: r.used,
                    capacity: r.capacity,
                });
            }
        }
        Pressure {
            since,
            resolved_at: None,
            full,
            refused: refused.iter().take(KEPT).map(|r| r.to_string()).collect(),
            refused_count: refused.len(),
        }
    }

    /// The same record, closed at `at`.
    pub fn resolved(&self, at: u64) -> Pressure {
        Pressure {
            resolved_at: Some(at),
            ..self.clone()
        }
    }
}

pub fn pin_path(bpffs: &Path) -> PathBuf {
    bpffs.join("pressure")
}

/// Replace the pinned record with `p`.
pub fn write(bpffs: &Path, p: &Pressure) -> Result<(), PressureError> {
    crate::pinned_record::write(KIND, &pin_path(bpffs), p)
}

/// The pinned record, or `None` when no reconcile of this instance was ever refused.
pub fn read(bpffs: &Path) -> Result<Option<Pressure>, PressureError> {
    crate::pinned_record::read(KIND, &pin_path(bpffs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::programming::service_key;
    use datapath_common::PROTO_TCP;
    use std::net::Ipv4Addr;

    fn refused(last: u8, map: &'static str) -> Refused {
        Refused {
            service: service_key(Ipv4Addr::new(10, 96, 0, last), 80, PROTO_TCP),
            map,
            flag: "max-services",
            needed: 1,
            used: 16384,
            capacity: 16384,
        }
    }

    #[test]
    fn a_streak_keeps_its_start_and_a_resolved_one_starts_again() {
        let first = Pressure::refused(None, &[refused(1, "dp_services")], 100);
        assert_eq!(first.since, 100);
        assert_eq!(first.full.len(), 1);
        assert!(first.refused[0].starts_with("service 10.96.0.1:80/tcp: change refused"));
        let later = Pressure::refused(
            Some(&first),
            &[refused(1, "dp_services"), refused(2, "dp_slots")],
            105,
        );
        assert_eq!(later.since, 100, "the same streak");
        assert_eq!(
            later
                .full
                .iter()
                .map(|f| f.map.as_str())
                .collect::<Vec<_>>(),
            vec!["dp_services", "dp_slots"]
        );
        let over = later.resolved(110);
        assert_eq!(over.resolved_at, Some(110));
        let again = Pressure::refused(Some(&over), &[refused(1, "dp_services")], 200);
        assert_eq!(again.since, 200, "a new streak");
        assert_eq!(again.resolved_at, None);
    }
}
