//! `dp_ipcache` (remote pod address -> the node that holds it) and, in native mode, one
//! kernel route per remote pod (`ADDR/32 via NODE dev UPLINK`), kept equal to the
//! `--ipcache` files of the other nodes. The map is the record of which routes the agent
//! installed: a restarted agent removes the routes of entries that are gone.

use std::{collections::BTreeMap, net::Ipv4Addr};

use datapath_common::IpcacheEntry;
use tracing::{info, warn};

use super::{
    ip,
    wiring::{addr, key},
    PodsError, Routing,
};
use crate::maps::BpfMap;

/// What one pass changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<Ipv4Addr>,
    pub moved: Vec<Ipv4Addr>,
    pub removed: Vec<Ipv4Addr>,
}

/// The pure decision: from the map's entries to the wanted ones. `stale_on_move` (the
/// mutant) only ever adds: a moved pod keeps its old node, a removed one stays.
pub fn plan(
    have: &BTreeMap<Ipv4Addr, Ipv4Addr>,
    want: &BTreeMap<Ipv4Addr, Ipv4Addr>,
    stale_on_move: bool,
) -> Changes {
    let mut c = Changes::default();
    for (a, n) in want {
        match have.get(a) {
            None => c.added.push(*a),
            Some(old) if old != n && !stale_on_move => c.moved.push(*a),
            _ => {}
        }
    }
    if !stale_on_move {
        c.removed = have
            .keys()
            .filter(|a| !want.contains_key(a))
            .copied()
            .collect();
    }
    c
}

pub fn entries(map: &BpfMap) -> Result<BTreeMap<Ipv4Addr, Ipv4Addr>, PodsError> {
    Ok(map
        .entries::<u32, IpcacheEntry>()?
        .into_iter()
        .map(|(k, v)| (addr(k), addr(v.node_addr)))
        .collect())
}

pub struct Sync<'a> {
    pub map: &'a BpfMap,
    pub routing: Routing,
    pub uplink: &'a str,
    pub stale_on_move: bool,
}

impl Sync<'_> {
    /// One pass; with `all_routes` every native route is written again (start, resync).
    pub fn apply(
        &self,
        want: &BTreeMap<Ipv4Addr, Ipv4Addr>,
        all_routes: bool,
    ) -> Result<Changes, PodsError> {
        let have = entries(self.map)?;
        let changes = plan(&have, want, self.stale_on_move);
        for a in changes.added.iter().chain(&changes.moved) {
            let node = want[a];
            self.map.put(
                &key(*a),
                &IpcacheEntry {
                    node_addr: key(node),
                    flags: 0,
                },
            )?;
            self.route(*a, node)?;
            info!(pod = %a, node = %node, "ipcache entry");
        }
        for a in &changes.removed {
            self.map.delete(&key(*a))?;
            if self.routing == Routing::Native {
                ip::ip_quiet(&[
                    "route",
                    "del",
                    &format!("{a}/32"),
                    "via",
                    &have[a].to_string(),
                ]);
            }
            info!(pod = %a, "ipcache entry removed");
        }
        if all_routes {
            for (a, n) in entries(self.map)? {
                if let Err(e) = self.route(a, n) {
                    warn!(pod = %a, "native route: {e}");
                }
            }
        }
        Ok(changes)
    }

    fn route(&self, pod: Ipv4Addr, node: Ipv4Addr) -> Result<(), PodsError> {
        if self.routing == Routing::Native {
            ip::ip(&[
                "route",
                "replace",
                &format!("{pod}/32"),
                "via",
                &node.to_string(),
                "dev",
                self.uplink,
            ])?;
        }
        Ok(())
    }
}

/// `cleanup`: the native routes of every entry.
pub fn remove_routes(map: &BpfMap) -> usize {
    entries(map)
        .unwrap_or_default()
        .into_iter()
        .filter(|(a, n)| ip::ip_quiet(&["route", "del", &format!("{a}/32"), "via", &n.to_string()]))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> BTreeMap<Ipv4Addr, Ipv4Addr> {
        pairs
            .iter()
            .map(|(a, n)| (a.parse().expect("addr"), n.parse().expect("addr")))
            .collect()
    }

    #[test]
    fn adds_moves_and_removes_and_the_mutant_only_adds() {
        let have = m(&[("10.0.0.1", "172.31.0.2"), ("10.0.0.2", "172.31.0.2")]);
        let want = m(&[("10.0.0.1", "172.31.0.3"), ("10.0.0.3", "172.31.0.2")]);
        let c = plan(&have, &want, false);
        assert_eq!(c.added, ["10.0.0.3".parse::<Ipv4Addr>().expect("a")]);
        assert_eq!(c.moved, ["10.0.0.1".parse::<Ipv4Addr>().expect("a")]);
        assert_eq!(c.removed, ["10.0.0.2".parse::<Ipv4Addr>().expect("a")]);
        let stale = plan(&have, &want, true);
        assert_eq!(stale.added, c.added);
        assert!(stale.moved.is_empty() && stale.removed.is_empty());
        assert_eq!(plan(&want, &want, false), Changes::default());
    }
}
