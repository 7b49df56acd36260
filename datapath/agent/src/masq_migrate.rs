//! The masquerade's NAT maps across a layout change (`datapathd run --layout N`; the two
//! layouts are described at `datapath_common::MASQ_LAYOUT_VERSION`).
//!
//! A pinned NAT map is judged by its own shape, not by a version written next to it: value
//! size 8 is layout 1, 12 is layout 2, and its capacity says which `--max-masq` it was made
//! for. When the shape is not the one this start wants, the live flows' translations are
//! migrated, never dropped (a lost entry gives the flow's next packet a new port, and the
//! external host answers it with a reset):
//!
//! 1. [`preflight`]: before anything of the running datapath is touched, refuse a map
//!    whose entries do not fit the new capacity (the agent exits 1; the old programs keep
//!    running on the old maps).
//! 2. [`prepare`]: new maps in the wanted shape, every entry copied (values converted),
//!    pinned under a pending name `<name>-next` (bpffs refuses dots in names); the loader then gives them to the new
//!    programs, which replace the old ones atomically on the uplink (link update or
//!    filter replace, as on any restart).
//! 3. [`Pending::finish`]: what the old programs wrote between the first copy and the swap
//!    is copied again (entries the new programs made meanwhile win), then the pending pin
//!    is renamed over the old one, which unpins the old map.
//!
//! The mutant `upgrade-recreates-maps` skips the copies: the maps of the new shape start
//! empty, as a naive upgrade would make them.

use std::path::{Path, PathBuf};

use datapath_common::{
    NatEndpoint, NatEntry, NatKey, MAP_MASQ_FWD, MAP_MASQ_REV, MASQ_LAYOUT_OLDEST,
    MASQ_LAYOUT_VERSION,
};
use tracing::{info, warn};

use crate::{
    layout,
    maps::{BpfMap, MapError, MapSpec},
    sys,
};

/// The NAT maps, the only masquerade maps whose shape depends on the layout.
pub const NAT_MAPS: [&str; 2] = [MAP_MASQ_FWD, MAP_MASQ_REV];

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("unknown masquerade layout {0} (this agent knows {MASQ_LAYOUT_OLDEST} to {MASQ_LAYOUT_VERSION})")]
    UnknownLayout(u32),
    #[error("refusing to migrate {map} to layout {layout}: its {entries} entries do not fit the new capacity {capacity}; the running datapath was left untouched")]
    DoesNotFit {
        map: &'static str,
        layout: u32,
        entries: usize,
        capacity: u32,
    },
    #[error(
        "pinned map {path} has key size {key_size} or type {map_type}: not a NAT map of any layout"
    )]
    Foreign {
        path: String,
        key_size: u32,
        map_type: u32,
    },
    #[error("{what} {path}")]
    Pin {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Map(#[from] MapError),
}

/// Value size of a NAT map in `layout`.
pub fn value_size(layout: u32) -> Result<u32, MigrateError> {
    match layout {
        1 => Ok(std::mem::size_of::<NatEndpoint>() as u32),
        2 => Ok(std::mem::size_of::<NatEntry>() as u32),
        other => Err(MigrateError::UnknownLayout(other)),
    }
}

/// Capacity of a NAT map in `layout` for `--max-masq max`.
pub fn capacity(layout: u32, max: u32) -> Result<u32, MigrateError> {
    match layout {
        1 => Ok(max),
        2 => Ok(max.saturating_mul(2)),
        other => Err(MigrateError::UnknownLayout(other)),
    }
}

/// The layout a NAT map's value size stands for (None: no layout of ours).
pub fn layout_of(size: u32) -> Option<u32> {
    (MASQ_LAYOUT_OLDEST..=MASQ_LAYOUT_VERSION).find(|&l| value_size(l).ok() == Some(size))
}

/// The shape of a NAT map in `layout`.
pub fn spec(name: &'static str, layout: u32, max: u32) -> Result<MapSpec, MigrateError> {
    Ok(MapSpec {
        name,
        map_type: aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32,
        key_size: std::mem::size_of::<NatKey>() as u32,
        value_size: value_size(layout)?,
        max_entries: capacity(layout, max)?,
    })
}

fn pending_pin(pin: &Path) -> PathBuf {
    let mut p = pin.as_os_str().to_owned();
    p.push("-next");
    PathBuf::from(p)
}

/// What is pinned at `pin` and how it compares with `want`.
enum Found {
    Nothing,
    Same,
    /// A NAT map of another shape (layout or capacity): migrate it.
    Other(BpfMap),
}

fn found(pin: &Path, want: &MapSpec) -> Result<Found, MigrateError> {
    if pin.symlink_metadata().is_err() {
        return Ok(Found::Nothing);
    }
    let m = BpfMap::open_pin(pin)?;
    if want.mismatch(&m.info).is_none() {
        return Ok(Found::Same);
    }
    if m.info.map_type != want.map_type
        || m.info.key_size != want.key_size
        || layout_of(m.info.value_size).is_none()
    {
        return Err(MigrateError::Foreign {
            path: pin.display().to_string(),
            key_size: m.info.key_size,
            map_type: m.info.map_type,
        });
    }
    Ok(Found::Other(m))
}

/// Step 1: refuse, before anything is replaced, a migration whose entries do not fit.
pub fn preflight(maps_dir: &Path, layout: u32, max: u32) -> Result<(), MigrateError> {
    for name in NAT_MAPS {
        let want = spec(name, layout, max)?;
        if let Found::Other(old) = found(&maps_dir.join(name), &want)? {
            let entries = old.count()?;
            if entries > want.max_entries as usize {
                return Err(MigrateError::DoesNotFit {
                    map: name,
                    layout,
                    entries,
                    capacity: want.max_entries,
                });
            }
        }
    }
    Ok(())
}

/// A migration under way: the new maps pinned under their pending names.
pub struct Pending {
    moves: Vec<Move>,
    copy: bool,
}

struct Move {
    name: &'static str,
    old: BpfMap,
    new: BpfMap,
    pin: PathBuf,
    pending: PathBuf,
}

impl Pending {
    /// Where the loader must find each NAT map (`<name>-next` for a migrated one).
    pub fn pin_path(&self, name: &str, pin: PathBuf) -> PathBuf {
        self.moves
            .iter()
            .find(|m| m.name == name)
            .map_or(pin, |m| m.pending.clone())
    }

    pub fn is_empty(&self) -> bool {
        self.moves.is_empty()
    }

    /// Step 3, once the new programs are attached.
    pub fn finish(self) -> Result<(), MigrateError> {
        for m in self.moves {
            if self.copy {
                let late = copy(&m.old, &m.new, true)?;
                info!(
                    map = m.name,
                    entries = late,
                    "copied what the old programs wrote during the swap"
                );
            }
            std::fs::rename(&m.pending, &m.pin).map_err(|source| MigrateError::Pin {
                what: "renaming the migrated map's pin over",
                path: m.pin.display().to_string(),
                source,
            })?;
            info!(map = m.name, pin = %m.pin.display(), old_id = m.old.info.id, new_id = m.new.info.id, "migration done: the old map is unpinned");
        }
        Ok(())
    }
}

/// Step 2: make every NAT pin ready for `layout` (see the module docs). A pending pin a
/// crashed migration left is dropped first; the migration starts again from the old map.
pub fn prepare(
    maps_dir: &Path,
    layout: u32,
    max: u32,
    recreate: bool,
) -> Result<Pending, MigrateError> {
    let mut moves = Vec::new();
    for name in NAT_MAPS {
        let want = spec(name, layout, max)?;
        let pin = maps_dir.join(name);
        let pending = pending_pin(&pin);
        if layout::unpin(&pending).map_err(|source| MigrateError::Pin {
            what: "removing the stale pending pin",
            path: pending.display().to_string(),
            source,
        })? {
            warn!(
                map = name,
                "removed the pending pin of an unfinished migration"
            );
        }
        match found(&pin, &want)? {
            Found::Same => info!(map = name, layout, "reusing pinned masquerade map"),
            Found::Nothing => {
                BpfMap::create(&want)?.pin(&pin)?;
                info!(
                    map = name,
                    layout,
                    capacity = want.max_entries,
                    "created and pinned masquerade map"
                );
            }
            Found::Other(old) => {
                let from = layout_of(old.info.value_size).unwrap_or(0);
                let new = BpfMap::create(&want)?;
                if recreate {
                    warn!(
                        map = name,
                        from,
                        to = layout,
                        "mutant upgrade-recreates-maps: the new map starts empty"
                    );
                } else {
                    let n = copy(&old, &new, false)?;
                    info!(
                        map = name,
                        from,
                        to = layout,
                        entries = n,
                        capacity = want.max_entries,
                        "migrating: entries copied into the new map"
                    );
                }
                new.pin(&pending)?;
                moves.push(Move {
                    name,
                    old,
                    new,
                    pin,
                    pending,
                });
            }
        }
    }
    Ok(Pending {
        moves,
        copy: !recreate,
    })
}

/// Copy every entry of `from` into `to`, converting values between layouts (the endpoint
/// is kept; an appended field is 0 when it did not exist, dropped when it no longer does).
/// With `only_missing`, keys `to` already has are left alone. Returns how many were written.
fn copy(from: &BpfMap, to: &BpfMap, only_missing: bool) -> Result<usize, MigrateError> {
    let key_size = from.info.key_size as usize;
    let limit = (from.info.max_entries as usize).saturating_mul(2).max(16);
    let keys = sys::map_keys(from.fd(), key_size, limit).map_err(from.err("walk"))?;
    let mut old_value = vec![0u8; from.info.value_size as usize];
    let mut new_value = vec![0u8; to.info.value_size as usize];
    let mut written = 0;
    let mut seen = std::collections::HashSet::new();
    for key in keys {
        if !seen.insert(key.clone()) {
            continue;
        }
        if only_missing
            && sys::map_lookup(to.fd(), &key, &mut new_value).map_err(to.err("lookup"))?
        {
            continue;
        }
        // Evicted or expired meanwhile: nothing to carry over.
        if !sys::map_lookup(from.fd(), &key, &mut old_value).map_err(from.err("lookup"))? {
            continue;
        }
        new_value.fill(0);
        let n = old_value.len().min(new_value.len());
        new_value[..n].copy_from_slice(&old_value[..n]);
        sys::map_update(to.fd(), &key, &new_value).map_err(to.err("update"))?;
        written += 1;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_by_value_size() {
        assert_eq!(layout_of(8), Some(1));
        assert_eq!(layout_of(12), Some(2));
        assert_eq!(layout_of(16), None);
        assert_eq!(capacity(2, 100).expect("layout 2"), 200);
        assert!(matches!(value_size(3), Err(MigrateError::UnknownLayout(3))));
        assert_eq!(
            pending_pin(Path::new("/b/maps/dp_masq_fwd")),
            PathBuf::from("/b/maps/dp_masq_fwd-next")
        );
    }
}
