//! Which endpoints of a Service's EndpointSlices get new connections, as kube-proxy decides.
//!
//! Read in kubernetes/kubernetes (1.33): `pkg/proxy/endpointschangetracker.go`
//! (`EndpointSliceUpdate`), `pkg/proxy/endpointslicecache.go` (`endpointSliceCacheKeys`,
//! `endpointInfoByServicePort`, `addEndpoints`), `pkg/proxy/topology.go`
//! (`CategorizeEndpoints`), `pkg/proxy/util` (`ShouldSkipService`) and the API's defaults
//! (`pkg/apis/discovery/v1/defaults.go`) and field documentation (`EndpointConditions`).
//!
//! | # | rule | kube-proxy | here |
//! | --- | --- | --- | --- |
//! | 1 | a slice belongs to the Service named by its label `kubernetes.io/service-name`, in the slice's own namespace; a slice without that label or without a name is not used | `endpointSliceCacheKeys` | [`super::resolve`] groups slices by (namespace, label) |
//! | 2 | only slices of the proxy's address family: `addressType: IPv4` here; `IPv6` and `FQDN` slices are skipped | `EndpointSliceUpdate` compares `AddressType` | [`super::resolve`], debug log only |
//! | 3 | headless (`clusterIP: None`) and `type: ExternalName` Services are not proxied | `ShouldSkipService` | [`super::resolve`], debug log only |
//! | 4 | each `spec.ports` entry is its own service port, identified by (port name, protocol); several ports per Service | `ServicePortName` | one [`super::DesiredService`] each |
//! | 5 | a slice port serves the service port with the same name and protocol; a missing name is `""` and a missing protocol `TCP` (the API server's defaults) | `endpointInfoByServicePort` | [`backends`] |
//! | 6 | the backend port is that slice port's `port`, per slice: a named `targetPort` is resolved by whoever wrote the slice, and pods of one Service may use different numbers in different slices; the Service's `targetPort` itself is never read | `addEndpoints(.., portNum, ..)` | [`backends`] |
//! | 7 | a slice port without `port` (or 0) serves nothing; a slice without `ports` serves nothing | `TODO: handle nil ports to mean "all"` | reported, not used |
//! | 8 | an endpoint is its first address (the others are fungible); one without addresses is skipped; an address of the other family is skipped | `addEndpoints` | reported, not used |
//! | 9 | conditions: `ready` absent = ready; `serving` absent = serving (the API documentation says "defer to ready"; kube-proxy reads true, which differs only for a terminating endpoint without `serving`); `terminating` absent = not terminating | `addEndpoints` | [`Conditions::of`] |
//! | 10 | the same address and port in several slices (or twice in one) is one endpoint; a copy that is not terminating wins over a terminating one | `addEndpoints` dedup by `ip:port` | [`backends`] |
//! | 11 | new connections go to the ready endpoints; only when none is ready, to the endpoints that are serving and terminating; otherwise to none | `CategorizeEndpoints` | [`select`] |
//! | 12 | a service port with no usable endpoint has no backends: connections are refused at once (kube-proxy: a REJECT rule) | `CategorizeEndpoints` returns none | the service stays in the map with 0 backends |
//!
//! Not modelled, because this agent knows neither its node's name nor its zone: topology
//! hints (kube-proxy ignores them too when the node has no zone label and no hint names the
//! node) and `internalTrafficPolicy: Local` (reported; all endpoints are used).

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use super::documents::Located;
use super::{Problems, Protocol};

/// An endpoint's conditions, with the API's rules for absent values applied (rule 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Conditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Conditions {
    pub fn of(ep: &Endpoint) -> Conditions {
        let c = ep.conditions.as_ref();
        Conditions {
            ready: c.and_then(|c| c.ready).unwrap_or(true),
            serving: c.and_then(|c| c.serving).unwrap_or(true),
            terminating: c.and_then(|c| c.terminating).unwrap_or(false),
        }
    }
}

/// One endpoint of a service port, before selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Candidate {
    pub addr: SocketAddrV4,
    pub conditions: Conditions,
}

/// The service port whose endpoints are wanted: its name (`""` when unnamed) and protocol.
#[derive(Debug, Clone, Copy)]
pub(super) struct PortId<'a> {
    pub name: &'a str,
    pub proto: Protocol,
}

/// Every endpoint the slices give this service port, deduplicated by address and port
/// (rules 5-10), in address order. Problems are reported where the slice was defined.
pub(super) fn candidates(
    port: PortId<'_>,
    slices: &[Located<EndpointSlice>],
    problems: &mut Problems,
) -> Vec<Candidate> {
    let mut found: BTreeMap<SocketAddrV4, Conditions> = BTreeMap::new();
    for slice in slices {
        let what = format!(
            "EndpointSlice {}/{}",
            slice.obj.metadata.namespace.as_deref().unwrap_or("default"),
            slice.obj.metadata.name.as_deref().unwrap_or("(unnamed)")
        );
        let mut problem = |reason: String| problems.error(&slice.at, format!("{what}: {reason}"));
        let slice_ports = slice.obj.ports.as_deref().unwrap_or_default();
        if slice_ports.is_empty() {
            problem("has no ports, so it serves no Service port (as in kube-proxy)".to_owned());
            continue;
        }
        for (i, sp) in slice_ports.iter().enumerate() {
            let name = sp.name.as_deref().unwrap_or_default();
            let proto = sp.protocol.as_deref().unwrap_or("TCP");
            if name != port.name || proto != port.proto.to_string() {
                continue;
            }
            let Some(number) = sp
                .port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
            else {
                problem(format!(
                    "ports[{i}] ({name:?}) has no port number in 1-65535 ({:?}); its endpoints are not used",
                    sp.port
                ));
                continue;
            };
            for (j, ep) in slice.obj.endpoints.iter().enumerate() {
                // The addresses of one endpoint are fungible; kube-proxy uses the first.
                let Some(first) = ep.addresses.first() else {
                    problem(format!("endpoints[{j}] has no address; not used"));
                    continue;
                };
                let ip = match first.parse::<Ipv4Addr>() {
                    Ok(ip) => ip,
                    Err(_) => {
                        problem(format!(
                            "endpoints[{j}].addresses[0] {first:?} is not an IPv4 address; endpoint not used"
                        ));
                        continue;
                    }
                };
                let conditions = Conditions::of(ep);
                match found.entry(SocketAddrV4::new(ip, number)) {
                    Entry::Vacant(v) => {
                        v.insert(conditions);
                    }
                    // A pod IP reused while the old pod terminates: the live one wins.
                    Entry::Occupied(mut o) if !conditions.terminating => {
                        o.insert(conditions);
                    }
                    Entry::Occupied(_) => {}
                }
            }
        }
    }
    found
        .into_iter()
        .map(|(addr, conditions)| Candidate { addr, conditions })
        .collect()
}

/// The backends for new connections (rule 11): the ready endpoints, or when there is none,
/// the serving and terminating ones; sorted.
pub(super) fn select(candidates: &[Candidate]) -> Vec<SocketAddrV4> {
    let pick = |keep: fn(&Conditions) -> bool| -> Vec<SocketAddrV4> {
        candidates
            .iter()
            .filter(|c| keep(&c.conditions))
            .map(|c| c.addr)
            .collect()
    };
    let ready = pick(|c| c.ready);
    if !ready.is_empty() {
        return ready;
    }
    pick(|c| c.serving && c.terminating)
}

/// [`candidates`] then [`select`]: the backends of one service port.
pub(super) fn backends(
    port: PortId<'_>,
    slices: &[Located<EndpointSlice>],
    problems: &mut Problems,
) -> Vec<SocketAddrV4> {
    select(&candidates(port, slices, problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(addr: &str, ready: bool, serving: bool, terminating: bool) -> Candidate {
        Candidate {
            addr: addr.parse().expect("a literal address"),
            conditions: Conditions {
                ready,
                serving,
                terminating,
            },
        }
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddrV4> {
        list.iter().map(|a| a.parse().expect("literal")).collect()
    }

    #[test]
    fn ready_endpoints_win_over_terminating_ones() {
        let all = [
            c("127.0.0.1:80", true, true, false),
            c("127.0.0.2:80", false, true, true),
            c("127.0.0.3:80", false, false, false),
        ];
        assert_eq!(select(&all), addrs(&["127.0.0.1:80"]));
    }

    #[test]
    fn serving_terminating_endpoints_only_when_none_is_ready() {
        let all = [
            c("127.0.0.2:80", false, true, true),
            // Terminating but no longer serving: never.
            c("127.0.0.3:80", false, false, true),
            // Not ready, not terminating (starting up): never.
            c("127.0.0.4:80", false, true, false),
        ];
        assert_eq!(select(&all), addrs(&["127.0.0.2:80"]));
        assert_eq!(select(&all[1..]), vec![]);
        assert_eq!(select(&[]), vec![]);
    }

    #[test]
    fn absent_conditions_follow_the_api() {
        let ep: Endpoint = serde_yaml::from_str("addresses: [127.0.0.1]\n").expect("endpoint");
        assert_eq!(
            Conditions::of(&ep),
            Conditions {
                ready: true,
                serving: true,
                terminating: false
            }
        );
        let ep: Endpoint =
            serde_yaml::from_str("addresses: [127.0.0.1]\nconditions: {ready: false}\n")
                .expect("endpoint");
        assert_eq!(
            Conditions::of(&ep),
            Conditions {
                ready: false,
                serving: true,
                terminating: false
            }
        );
    }
}
