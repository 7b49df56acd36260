//! The datapath's maps: their definitions (sized by the agent), typed access through raw
//! map fds, and the set of four maps a program uses.

use std::{
    mem,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::Path,
    slice,
};

use aya::Pod;
use aya_obj::generated::bpf_map_type;
use datapath_common::{
    AccelConfig, Backend, Meta, RevNatKey, RevNatValue, ServiceKey, ServiceValue, SlotKey, SockKey,
    MAP_ACCEL, MAP_ACCEL_STATS, MAP_BACKENDS, MAP_META, MAP_REVNAT, MAP_SERVICES, MAP_SLOTS,
    MAP_SOCKHASH, SOCKHASH_VALUE_SIZE, STAT_COUNT,
};

use crate::sys::{self, MapInfo, Obj, SysError};

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("{op} on map {map}")]
    Sys {
        op: &'static str,
        map: String,
        #[source]
        source: SysError,
    },
    #[error("map {map} has {what} {actual}, expected {expected}")]
    Shape {
        map: String,
        what: &'static str,
        actual: u32,
        expected: u32,
    },
    #[error("program {prog_id} uses no map named {map}")]
    Missing { prog_id: u32, map: &'static str },
}

/// Capacity of each map, chosen at start (`run --max-*`). A pinned map whose capacity
/// differs is replaced, not reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    pub services: u32,
    pub backends: u32,
    pub slots: u32,
    pub revnat: u32,
    /// dp_sockhash: two entries per accelerated connection.
    pub sockhash: u32,
}

impl Default for Sizes {
    fn default() -> Self {
        Self {
            services: 16_384,
            backends: 65_536,
            slots: 65_536,
            revnat: 65_536,
            sockhash: 65_536,
        }
    }
}

/// What a map must look like to be ours and current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

const fn size<T>() -> u32 {
    mem::size_of::<T>() as u32
}

impl MapSpec {
    pub fn of(name: &'static str, sizes: Sizes) -> Option<MapSpec> {
        let hash = bpf_map_type::BPF_MAP_TYPE_HASH as u32;
        let (map_type, key_size, value_size, max_entries) = match name {
            MAP_SERVICES => (
                hash,
                size::<ServiceKey>(),
                size::<ServiceValue>(),
                sizes.services,
            ),
            MAP_SLOTS => (hash, size::<SlotKey>(), size::<u32>(), sizes.slots),
            MAP_BACKENDS => (hash, size::<u32>(), size::<Backend>(), sizes.backends),
            MAP_REVNAT => (
                bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32,
                size::<RevNatKey>(),
                size::<RevNatValue>(),
                sizes.revnat,
            ),
            MAP_SOCKHASH => (
                bpf_map_type::BPF_MAP_TYPE_SOCKHASH as u32,
                size::<SockKey>(),
                SOCKHASH_VALUE_SIZE,
                sizes.sockhash,
            ),
            MAP_ACCEL => (
                bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
                size::<u32>(),
                size::<AccelConfig>(),
                1,
            ),
            MAP_ACCEL_STATS => (
                bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY as u32,
                size::<u32>(),
                size::<u64>(),
                STAT_COUNT,
            ),
            MAP_META => (
                bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
                size::<u32>(),
                size::<Meta>(),
                1,
            ),
            _ => return None,
        };
        Some(MapSpec {
            name,
            map_type,
            key_size,
            value_size,
            max_entries,
        })
    }

    /// Why an existing map cannot stand for this one, if it cannot.
    pub fn mismatch(&self, info: &MapInfo) -> Option<String> {
        let checks = [
            ("type", info.map_type, self.map_type),
            ("key size", info.key_size, self.key_size),
            ("value size", info.value_size, self.value_size),
            ("max entries", info.max_entries, self.max_entries),
        ];
        checks
            .iter()
            .find(|(_, have, want)| have != want)
            .map(|(what, have, want)| format!("{what} is {have}, expected {want}"))
    }
}

/// Name of a map type for reports, as bpftool spells it.
pub fn map_type_name(t: u32) -> String {
    match t {
        x if x == bpf_map_type::BPF_MAP_TYPE_HASH as u32 => "hash".into(),
        x if x == bpf_map_type::BPF_MAP_TYPE_ARRAY as u32 => "array".into(),
        x if x == bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32 => "lru_hash".into(),
        x if x == bpf_map_type::BPF_MAP_TYPE_SOCKHASH as u32 => "sockhash".into(),
        x if x == bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY as u32 => "percpu_array".into(),
        other => format!("type {other}"),
    }
}

fn bytes_of<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: T is Pod (repr(C), no padding, any bit pattern valid).
    unsafe { slice::from_raw_parts((v as *const T).cast::<u8>(), mem::size_of::<T>()) }
}

fn from_bytes<T: Pod>(b: &[u8]) -> T {
    debug_assert_eq!(b.len(), mem::size_of::<T>());
    // SAFETY: T is Pod and b holds size_of::<T>() bytes (checked against the map's sizes).
    unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) }
}

/// A map fd with its kernel info, and typed element access.
#[derive(Debug)]
pub struct BpfMap {
    fd: OwnedFd,
    pub info: MapInfo,
}

impl BpfMap {
    pub fn from_fd(fd: OwnedFd) -> Result<Self, MapError> {
        let info = sys::map_info(fd.as_fd()).map_err(|source| MapError::Sys {
            op: "reading info",
            map: "(by fd)".into(),
            source,
        })?;
        Ok(Self { fd, info })
    }

    pub fn open_pin(path: &Path) -> Result<Self, MapError> {
        let fd = sys::obj_get(path).map_err(|source| MapError::Sys {
            op: "opening pin",
            map: path.display().to_string(),
            source,
        })?;
        Self::from_fd(fd)
    }

    pub fn from_id(id: u32) -> Result<Self, MapError> {
        let fd = sys::fd_by_id(Obj::Map, id).map_err(|source| MapError::Sys {
            op: "opening",
            map: format!("id {id}"),
            source,
        })?;
        Self::from_fd(fd)
    }

    pub fn create(spec: &MapSpec) -> Result<Self, MapError> {
        let fd = sys::map_create(
            spec.map_type,
            spec.key_size,
            spec.value_size,
            spec.max_entries,
            spec.name,
        )
        .map_err(|source| MapError::Sys {
            op: "creating",
            map: spec.name.into(),
            source,
        })?;
        Self::from_fd(fd)
    }

    pub fn pin(&self, path: &Path) -> Result<(), MapError> {
        sys::obj_pin(self.fd.as_fd(), path).map_err(|source| MapError::Sys {
            op: "pinning",
            map: format!("{} at {}", self.info.name, path.display()),
            source,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub(crate) fn err(&self, op: &'static str) -> impl FnOnce(SysError) -> MapError + '_ {
        move |source| MapError::Sys {
            op,
            map: format!("{} (id {})", self.info.name, self.info.id),
            source,
        }
    }

    fn check<K, V>(&self) -> Result<(), MapError> {
        let checks = [
            ("key size", self.info.key_size, size::<K>()),
            ("value size", self.info.value_size, size::<V>()),
        ];
        for (what, actual, expected) in checks {
            if actual != expected {
                return Err(MapError::Shape {
                    map: self.info.name.clone(),
                    what,
                    actual,
                    expected,
                });
            }
        }
        Ok(())
    }

    pub fn get<K: Pod, V: Pod>(&self, key: &K) -> Result<Option<V>, MapError> {
        self.check::<K, V>()?;
        let mut value = vec![0u8; mem::size_of::<V>()];
        let found =
            sys::map_lookup(self.fd(), bytes_of(key), &mut value).map_err(self.err("lookup"))?;
        Ok(found.then(|| from_bytes(&value)))
    }

    pub fn put<K: Pod, V: Pod>(&self, key: &K, value: &V) -> Result<(), MapError> {
        self.check::<K, V>()?;
        sys::map_update(self.fd(), bytes_of(key), bytes_of(value)).map_err(self.err("update"))
    }

    pub fn delete<K: Pod>(&self, key: &K) -> Result<bool, MapError> {
        if self.info.key_size != size::<K>() {
            return Err(MapError::Shape {
                map: self.info.name.clone(),
                what: "key size",
                actual: self.info.key_size,
                expected: size::<K>(),
            });
        }
        sys::map_delete(self.fd(), bytes_of(key)).map_err(self.err("delete"))
    }

    /// Every (key, value) pair; entries deleted meanwhile are skipped.
    pub fn entries<K: Pod, V: Pod>(&self) -> Result<Vec<(K, V)>, MapError> {
        self.check::<K, V>()?;
        let limit = (self.info.max_entries as usize).saturating_mul(2).max(16);
        let keys =
            sys::map_keys(self.fd(), mem::size_of::<K>(), limit).map_err(self.err("walk"))?;
        let mut out = Vec::with_capacity(keys.len());
        let mut seen = std::collections::HashSet::new();
        for raw in keys {
            if !seen.insert(raw.clone()) {
                continue;
            }
            let key: K = from_bytes(&raw);
            if let Some(v) = self.get::<K, V>(&key)? {
                out.push((key, v));
            }
        }
        Ok(out)
    }

    /// A per-CPU `u64` slot summed over every possible CPU.
    pub fn percpu_u64_sum(&self, index: u32) -> Result<u64, MapError> {
        let cpus = possible_cpus().map_err(|io_error| MapError::Sys {
            op: "counting possible CPUs",
            map: self.info.name.clone(),
            source: SysError {
                call: "read /sys/devices/system/cpu/possible",
                io_error,
            },
        })?;
        // Per-CPU values are 8-byte aligned slots, one per possible CPU.
        let mut value = vec![0u8; 8 * cpus];
        let found =
            sys::map_lookup(self.fd(), bytes_of(&index), &mut value).map_err(self.err("lookup"))?;
        if !found {
            return Ok(0);
        }
        Ok(value
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                u64::from_ne_bytes(b)
            })
            .fold(0u64, u64::wrapping_add))
    }

    /// Number of keys (a walk: maps have no cheap count).
    pub fn count(&self) -> Result<usize, MapError> {
        let limit = (self.info.max_entries as usize).saturating_mul(2).max(16);
        let keys = sys::map_keys(self.fd(), self.info.key_size as usize, limit)
            .map_err(self.err("walk"))?;
        let unique: std::collections::HashSet<_> = keys.into_iter().collect();
        Ok(unique.len())
    }
}

/// Number of possible CPUs (`/sys/devices/system/cpu/possible`, e.g. `0-3`): the number
/// of slots in a per-CPU map value.
pub fn possible_cpus() -> std::io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    parse_cpu_list(text.trim()).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unreadable CPU list {text:?}"),
        )
    })
}

/// The highest CPU number + 1 of a list like `0-3,5`.
fn parse_cpu_list(s: &str) -> Option<usize> {
    let mut max = None;
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let last = part.rsplit('-').next()?;
        let n: usize = last.trim().parse().ok()?;
        max = Some(max.map_or(n, |m: usize| m.max(n)));
    }
    max.map(|m| m + 1)
}

/// The socket-acceleration maps, found through `dp_sockops`'s map ids.
#[derive(Debug)]
pub struct AccelMaps {
    pub sockhash: BpfMap,
    pub accel: BpfMap,
    pub stats: BpfMap,
}

impl AccelMaps {
    pub fn from_map_ids(prog_id: u32, ids: &[u32]) -> Result<Self, MapError> {
        let mut found: Vec<BpfMap> = Vec::new();
        for &id in ids {
            let m = BpfMap::from_id(id)?;
            if m.info.name.starts_with(datapath_common::OBJECT_PREFIX) {
                found.push(m);
            }
        }
        let mut take = |name: &'static str| -> Result<BpfMap, MapError> {
            let pos = found
                .iter()
                .position(|m| m.info.name == name)
                .ok_or(MapError::Missing { prog_id, map: name })?;
            Ok(found.swap_remove(pos))
        };
        Ok(AccelMaps {
            sockhash: take(MAP_SOCKHASH)?,
            accel: take(MAP_ACCEL)?,
            stats: take(MAP_ACCEL_STATS)?,
        })
    }
}

/// The four maps the programs read and write, found through a program's map ids so
/// that the agent always programs the maps its programs actually use.
#[derive(Debug)]
pub struct DpMaps {
    pub services: BpfMap,
    pub slots: BpfMap,
    pub backends: BpfMap,
    pub revnat: BpfMap,
}

impl DpMaps {
    pub fn from_map_ids(prog_id: u32, ids: &[u32]) -> Result<Self, MapError> {
        let mut found: Vec<BpfMap> = Vec::new();
        for &id in ids {
            let m = BpfMap::from_id(id)?;
            if m.info.name.starts_with(datapath_common::OBJECT_PREFIX) {
                found.push(m);
            }
        }
        let mut take = |name: &'static str| -> Result<BpfMap, MapError> {
            let pos = found
                .iter()
                .position(|m| m.info.name == name)
                .ok_or(MapError::Missing { prog_id, map: name })?;
            Ok(found.swap_remove(pos))
        };
        Ok(DpMaps {
            services: take(MAP_SERVICES)?,
            slots: take(MAP_SLOTS)?,
            backends: take(MAP_BACKENDS)?,
            revnat: take(MAP_REVNAT)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-3"), Some(4));
        assert_eq!(parse_cpu_list("0-3,5"), Some(6));
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list(""), None);
    }
}
