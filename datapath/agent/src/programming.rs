//! Map programming: turn a desired state into ordered map writes.
//!
//! The current state is always read back from the maps, never remembered, so a restarted
//! agent keeps the service and backend ids of the previous run. Writes go in an order that
//! keeps every intermediate state valid for a program reading concurrently:
//! backends, then slots, then the service value (which publishes the new slot count),
//! then deletions (services, slots beyond the new count, unreferenced backends).
//! Ids freed in one reconcile are not reused in the same reconcile.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use datapath_common::{Backend, ServiceKey, ServiceValue, SlotKey, PROTO_TCP, PROTO_UDP};

use crate::{
    maps::{DpMaps, MapError, Sizes},
    services::{DesiredState, Protocol},
};

#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("no free {what} id left")]
    IdsExhausted { what: &'static str },
    #[error(transparent)]
    Map(#[from] MapError),
}

pub fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    }
}

pub fn proto_name(n: u8) -> &'static str {
    match n {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        _ => "unknown",
    }
}

/// Address in the maps' representation (network byte order in a u32, as
/// `bpf_sock_addr.user_ip4`).
pub fn addr_to_map(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

pub fn addr_from_map(a: u32) -> Ipv4Addr {
    Ipv4Addr::from(a.to_ne_bytes())
}

pub fn port_to_map(p: u16) -> u16 {
    p.to_be()
}

pub fn port_from_map(p: u16) -> u16 {
    u16::from_be(p)
}

pub fn service_key(addr: Ipv4Addr, port: u16, proto: u8) -> ServiceKey {
    ServiceKey {
        addr: addr_to_map(addr),
        port: port_to_map(port),
        proto,
        pad: 0,
    }
}

pub fn backend_value(b: SocketAddrV4, proto: u8) -> Backend {
    Backend {
        addr: addr_to_map(*b.ip()),
        port: port_to_map(b.port()),
        proto,
        pad: 0,
    }
}

/// One service as the maps should hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub key: ServiceKey,
    /// Distinct backends, in the order given.
    pub backends: Vec<Backend>,
}

pub fn wanted_from(desired: &DesiredState) -> Vec<Wanted> {
    let mut by_key: BTreeMap<ServiceKey, Vec<Backend>> = BTreeMap::new();
    for s in &desired.services {
        let proto = proto_number(s.proto);
        let entry = by_key
            .entry(service_key(s.addr, s.port, proto))
            .or_default();
        for b in &s.backends {
            let v = backend_value(*b, proto);
            if !entry.contains(&v) {
                entry.push(v);
            }
        }
    }
    by_key
        .into_iter()
        .map(|(key, backends)| Wanted { key, backends })
        .collect()
}

/// What the maps hold now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Current {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub slots: BTreeMap<SlotKey, u32>,
    pub backends: BTreeMap<u32, Backend>,
}

impl Current {
    pub fn read(maps: &DpMaps) -> Result<Self, MapError> {
        Ok(Current {
            services: maps.services.entries()?.into_iter().collect(),
            slots: maps.slots.entries()?.into_iter().collect(),
            backends: maps.backends.entries()?.into_iter().collect(),
        })
    }
}

/// Ordered writes and deletes that take the maps from `Current` to the wanted state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub backend_writes: Vec<(u32, Backend)>,
    pub slot_writes: Vec<(SlotKey, u32)>,
    pub service_writes: Vec<(ServiceKey, ServiceValue)>,
    pub service_deletes: Vec<ServiceKey>,
    pub slot_deletes: Vec<SlotKey>,
    pub backend_deletes: Vec<u32>,
    /// Services whose change does not fit in a full map: left as they are (a new one is
    /// not added), retried by the next reconcile.
    pub refused: Vec<Refused>,
}

/// A service change a full map cannot take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub service: ServiceKey,
    pub map: &'static str,
    pub flag: &'static str,
    /// New entries the change needs in `map`.
    pub needed: usize,
    /// Entries in `map` (anyone's) plus those this reconcile already added.
    pub used: usize,
    pub capacity: u32,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "service {}:{}/{}: change refused: it needs {} more entries in {}, which holds {} of {}; the service keeps what it has (a larger --{} or fewer entries in the map lets it in)",
            addr_from_map(self.service.addr),
            port_from_map(self.service.port),
            proto_name(self.service.proto),
            self.needed,
            self.map,
            self.used,
            self.capacity,
            self.flag
        )
    }
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.backend_writes.is_empty()
            && self.slot_writes.is_empty()
            && self.service_writes.is_empty()
            && self.service_deletes.is_empty()
            && self.slot_deletes.is_empty()
            && self.backend_deletes.is_empty()
    }
}

/// Smallest ids not in `used`, handed out in order.
struct IdAllocator<'a> {
    used: &'a BTreeSet<u32>,
    next: u32,
    what: &'static str,
}

impl IdAllocator<'_> {
    fn take(&mut self) -> Result<u32, ProgramError> {
        while self.used.contains(&self.next) {
            self.next = self
                .next
                .checked_add(1)
                .ok_or(ProgramError::IdsExhausted { what: self.what })?;
        }
        let id = self.next;
        self.next = self
            .next
            .checked_add(1)
            .ok_or(ProgramError::IdsExhausted { what: self.what })?;
        Ok(id)
    }
}

pub fn plan(current: &Current, wanted: &[Wanted], sizes: Sizes) -> Result<Plan, ProgramError> {
    let mut plan = Plan::default();

    // Backend ids: keep the id of a backend already in the map (the lowest, should a
    // crash have left duplicates), allocate new ones past every id in use.
    let mut backend_ids: BTreeMap<Backend, u32> = BTreeMap::new();
    for (&id, &b) in &current.backends {
        backend_ids.entry(b).or_insert(id);
    }
    let used_backend_ids: BTreeSet<u32> = current.backends.keys().copied().collect();
    let mut backend_alloc = IdAllocator {
        used: &used_backend_ids,
        next: 1,
        what: "backend",
    };
    let used_service_ids: BTreeSet<u32> = current.services.values().map(|v| v.service_id).collect();
    let mut service_alloc = IdAllocator {
        used: &used_service_ids,
        next: 1,
        what: "service",
    };
    // Writes land before deletes, so each map's peak is everything in it now (whoever
    // wrote it) plus the new entries. Services are admitted one by one while their new
    // entries fit; one that does not fit is refused alone and keeps what it has.
    let mut room = Room {
        services: Fill::new(current.services.len(), sizes.services),
        slots: Fill::new(current.slots.len(), sizes.slots),
        backends: Fill::new(current.backends.len(), sizes.backends),
    };
    let mut referenced: BTreeSet<u32> = BTreeSet::new();
    let mut wanted_slots: BTreeSet<SlotKey> = BTreeSet::new();
    for w in wanted {
        let existing = current.services.get(&w.key).copied();
        let new_backends: Vec<Backend> = w
            .backends
            .iter()
            .filter(|b| !backend_ids.contains_key(b))
            .copied()
            .collect();
        let new_slots = match existing {
            Some(v) => (0..w.backends.len() as u32)
                .filter(|&slot| {
                    !current.slots.contains_key(&SlotKey {
                        service_id: v.service_id,
                        slot,
                    })
                })
                .count(),
            None => w.backends.len(),
        };
        let need = [
            (&mut room.services, usize::from(existing.is_none())),
            (&mut room.slots, new_slots),
            (&mut room.backends, new_backends.len()),
        ];
        if let Some(refused) = refusal(w.key, &need) {
            plan.refused.push(refused);
            // It keeps what it has: its current slots and their backends stay.
            if let Some(v) = existing {
                for slot in 0..v.backend_count {
                    let key = SlotKey {
                        service_id: v.service_id,
                        slot,
                    };
                    if let Some(&id) = current.slots.get(&key) {
                        wanted_slots.insert(key);
                        referenced.insert(id);
                    }
                }
            }
            continue;
        }
        for (fill, n) in need {
            fill.used += n;
        }
        for b in new_backends {
            let id = backend_alloc.take()?;
            backend_ids.insert(b, id);
            plan.backend_writes.push((id, b));
        }
        let service_id = match existing {
            Some(v) => v.service_id,
            None => service_alloc.take()?,
        };
        for (slot, b) in w.backends.iter().enumerate() {
            let key = SlotKey {
                service_id,
                slot: slot as u32,
            };
            let id = backend_ids[b];
            referenced.insert(id);
            wanted_slots.insert(key);
            if current.slots.get(&key) != Some(&id) {
                plan.slot_writes.push((key, id));
            }
        }
        let value = ServiceValue {
            backend_count: w.backends.len() as u32,
            service_id,
        };
        if existing != Some(value) {
            plan.service_writes.push((w.key, value));
        }
    }

    let wanted_keys: BTreeSet<ServiceKey> = wanted.iter().map(|w| w.key).collect();
    plan.service_deletes = current
        .services
        .keys()
        .filter(|k| !wanted_keys.contains(k))
        .copied()
        .collect();
    plan.slot_deletes = current
        .slots
        .keys()
        .filter(|k| !wanted_slots.contains(k))
        .copied()
        .collect();
    plan.backend_deletes = current
        .backends
        .keys()
        .filter(|id| !referenced.contains(id))
        .copied()
        .collect();
    Ok(plan)
}

/// How full one map is during a reconcile.
#[derive(Clone, Copy, Debug)]
struct Fill {
    used: usize,
    capacity: u32,
}

impl Fill {
    fn new(used: usize, capacity: u32) -> Self {
        Fill { used, capacity }
    }
}

struct Room {
    services: Fill,
    slots: Fill,
    backends: Fill,
}

/// The first map (services, slots, backends) that cannot take `n` more entries.
fn refusal(key: ServiceKey, need: &[(&mut Fill, usize); 3]) -> Option<Refused> {
    const NAMES: [(&str, &str); 3] = [
        ("dp_services", "max-services"),
        ("dp_slots", "max-slots"),
        ("dp_backends", "max-backends"),
    ];
    need.iter()
        .zip(NAMES)
        .find(|((fill, n), _)| fill.used + n > fill.capacity as usize)
        .map(|((fill, n), (map, flag))| Refused {
            service: key,
            map,
            flag,
            needed: *n,
            used: fill.used,
            capacity: fill.capacity,
        })
}

/// Apply a plan in its order.
pub fn apply(maps: &DpMaps, plan: &Plan) -> Result<(), MapError> {
    for (id, b) in &plan.backend_writes {
        maps.backends.put(id, b)?;
    }
    for (k, id) in &plan.slot_writes {
        maps.slots.put(k, id)?;
    }
    for (k, v) in &plan.service_writes {
        maps.services.put(k, v)?;
    }
    for k in &plan.service_deletes {
        maps.services.delete(k)?;
    }
    for k in &plan.slot_deletes {
        maps.slots.delete(k)?;
    }
    for id in &plan.backend_deletes {
        maps.backends.delete(id)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(last: u8, port: u16, backends: &[(u8, u16)]) -> Wanted {
        Wanted {
            key: service_key(Ipv4Addr::new(127, 10, 0, last), port, PROTO_TCP),
            backends: backends
                .iter()
                .map(|&(b, p)| {
                    backend_value(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, b), p), PROTO_TCP)
                })
                .collect(),
        }
    }

    /// Apply a plan to an in-memory copy, as the kernel maps would end up.
    fn applied(mut c: Current, p: &Plan) -> Current {
        for (id, b) in &p.backend_writes {
            c.backends.insert(*id, *b);
        }
        for (k, id) in &p.slot_writes {
            c.slots.insert(*k, *id);
        }
        for (k, v) in &p.service_writes {
            c.services.insert(*k, *v);
        }
        for k in &p.service_deletes {
            c.services.remove(k);
        }
        for k in &p.slot_deletes {
            c.slots.remove(k);
        }
        for id in &p.backend_deletes {
            c.backends.remove(id);
        }
        c
    }

    fn resolve(c: &Current, w: &Wanted) -> Vec<Backend> {
        let v = c.services[&w.key];
        (0..v.backend_count)
            .map(|slot| {
                c.backends[&c.slots[&SlotKey {
                    service_id: v.service_id,
                    slot,
                }]]
            })
            .collect()
    }

    #[test]
    fn first_fill_allocates_from_one_and_is_idempotent() {
        let wanted = vec![
            svc(1, 80, &[(2, 8080), (3, 8080)]),
            svc(2, 53, &[(2, 8080)]),
        ];
        let p = plan(&Current::default(), &wanted, Sizes::default()).expect("plan");
        assert_eq!(
            p.backend_writes
                .iter()
                .map(|(id, _)| *id)
                .collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(
            p.service_writes
                .iter()
                .map(|(_, v)| v.service_id)
                .collect::<Vec<_>>(),
            vec![1, 2]
        );
        let c = applied(Current::default(), &p);
        for w in &wanted {
            assert_eq!(resolve(&c, w), w.backends);
        }
        let again = plan(&c, &wanted, Sizes::default()).expect("plan");
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn ids_stay_stable_across_changes_and_freed_ids_are_not_reused_at_once() {
        let v1 = vec![svc(1, 80, &[(2, 8080)]), svc(2, 80, &[(3, 8080)])];
        let c1 = applied(
            Current::default(),
            &plan(&Current::default(), &v1, Sizes::default()).expect("plan"),
        );
        // Service 1 is removed, service 3 added, service 2 scales 1 -> 3.
        let v2 = vec![
            svc(2, 80, &[(3, 8080), (4, 8080), (5, 8080)]),
            svc(3, 80, &[(6, 8080)]),
        ];
        let p2 = plan(&c1, &v2, Sizes::default()).expect("plan");
        let c2 = applied(c1.clone(), &p2);
        let id_of = |c: &Current, w: &Wanted| c.services[&w.key].service_id;
        assert_eq!(
            id_of(&c2, &v2[0]),
            id_of(&c1, &v1[1]),
            "service 2 keeps its id"
        );
        assert_eq!(
            id_of(&c2, &v2[1]),
            3,
            "the id freed in this reconcile is not reused"
        );
        assert_eq!(
            c2.backends.get(&2),
            Some(&v1[1].backends[0]),
            "backend 127.0.0.3 keeps id 2"
        );
        assert!(
            !c2.backends.contains_key(&1),
            "unreferenced backend deleted"
        );
        for w in &v2 {
            assert_eq!(resolve(&c2, w), w.backends);
        }
        assert_eq!(c2.slots.len(), 4);
    }

    #[test]
    fn scale_to_zero_keeps_the_service_with_count_zero() {
        let v1 = vec![svc(1, 80, &[(2, 8080), (3, 8080)])];
        let c1 = applied(
            Current::default(),
            &plan(&Current::default(), &v1, Sizes::default()).expect("plan"),
        );
        let v0 = vec![svc(1, 80, &[])];
        let p0 = plan(&c1, &v0, Sizes::default()).expect("plan");
        let c0 = applied(c1, &p0);
        assert_eq!(c0.services[&v0[0].key].backend_count, 0);
        assert!(c0.slots.is_empty() && c0.backends.is_empty());
    }

    #[test]
    fn scale_down_publishes_the_count_before_deleting_slots() {
        let v3 = vec![svc(1, 80, &[(2, 8080), (3, 8080), (4, 8080)])];
        let c3 = applied(
            Current::default(),
            &plan(&Current::default(), &v3, Sizes::default()).expect("plan"),
        );
        let v1 = vec![svc(1, 80, &[(4, 8080)])];
        let p = plan(&c3, &v1, Sizes::default()).expect("plan");
        assert_eq!(p.service_writes.len(), 1);
        assert_eq!(p.slot_deletes.len(), 2);
        let c1 = applied(c3, &p);
        assert_eq!(resolve(&c1, &v1[0]), v1[0].backends);
    }

    #[test]
    fn capacity_is_checked_at_the_peak() {
        let sizes = Sizes {
            services: 1,
            ..Sizes::default()
        };
        let v1 = vec![svc(1, 80, &[(2, 8080)])];
        let c1 = applied(
            Current::default(),
            &plan(&Current::default(), &v1, sizes).expect("plan"),
        );
        let v2 = vec![svc(2, 80, &[(2, 8080)])];
        let p = plan(&c1, &v2, sizes).expect("plan");
        assert_eq!(
            p.refused.len(),
            1,
            "two services would coexist during the update"
        );
        let refused = p.refused[0].to_string();
        assert!(refused.contains("--max-services"), "{refused}");
        assert!(
            refused.starts_with("service 127.10.0.2:80/tcp"),
            "{refused}"
        );
        // The old one is deleted all the same: the next reconcile fits.
        assert_eq!(p.service_deletes, vec![v1[0].key]);
        let c2 = applied(c1, &p);
        let again = plan(&c2, &v2, sizes).expect("plan");
        assert!(again.refused.is_empty(), "{again:?}");
    }

    #[test]
    fn full_maps_refuse_only_the_changes_that_do_not_fit() {
        let v1 = vec![
            svc(1, 80, &[(2, 8080)]),
            svc(2, 80, &[(3, 8080), (4, 8080)]),
        ];
        let mut c = applied(
            Current::default(),
            &plan(&Current::default(), &v1, Sizes::default()).expect("plan"),
        );
        // A foreign writer fills dp_slots to its capacity with slots of a service id
        // nobody uses.
        let sizes = Sizes {
            slots: 8,
            ..Sizes::default()
        };
        for slot in 0..(sizes.slots as usize - c.slots.len()) as u32 {
            c.slots.insert(
                SlotKey {
                    service_id: 0x4000_0000,
                    slot,
                },
                0x4000_0000,
            );
        }
        // Service 1 grows (needs a slot), service 2 shrinks (needs none), service 3 is new.
        let v2 = vec![
            svc(1, 80, &[(2, 8080), (5, 8080)]),
            svc(2, 80, &[(4, 8080)]),
            svc(3, 80, &[(6, 8080)]),
        ];
        let p = plan(&c, &v2, sizes).expect("plan");
        let refused: Vec<ServiceKey> = p.refused.iter().map(|r| r.service).collect();
        assert_eq!(refused, vec![v2[0].key, v2[2].key]);
        assert!(p.refused.iter().all(|r| r.map == "dp_slots"), "{p:?}");
        let c2 = applied(c, &p);
        assert_eq!(
            resolve(&c2, &v1[0]),
            v1[0].backends,
            "refused: keeps what it had"
        );
        assert_eq!(resolve(&c2, &v2[1]), v2[1].backends, "fits: applied");
        assert!(!c2.services.contains_key(&v2[2].key), "refused: not added");
        assert!(
            c2.slots.keys().all(|k| k.service_id != 0x4000_0000),
            "slots no service wants are deleted"
        );
        // The next reconcile finds room and converges.
        let p3 = plan(&c2, &v2, sizes).expect("plan");
        assert!(p3.refused.is_empty(), "{p3:?}");
        let c3 = applied(c2, &p3);
        for w in &v2 {
            assert_eq!(resolve(&c3, w), w.backends);
        }
    }

    #[test]
    fn map_byte_order_is_network_order() {
        let k = service_key(Ipv4Addr::new(127, 10, 0, 1), 80, PROTO_TCP);
        assert_eq!(k.addr.to_ne_bytes(), [127, 10, 0, 1]);
        assert_eq!(k.port.to_ne_bytes(), [0, 80]);
        assert_eq!(addr_from_map(k.addr), Ipv4Addr::new(127, 10, 0, 1));
        assert_eq!(port_from_map(k.port), 80);
    }
}
