//! Services and EndpointSlices -> the desired state, as kube-proxy reads them (the
//! endpoint rules are in [`super::endpoints`]).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::documents::{Located, Objects};
use super::endpoints::{self, PortId};
use super::{DesiredService, DesiredState, Place, Problems, Protocol};

/// The label that ties an EndpointSlice to its Service.
pub(super) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `namespace/name`, the key of services and of slice groups.
type ObjectKey = (String, String);

fn namespace(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.namespace
        .clone()
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| "default".to_owned())
}

pub(super) fn desired_state(objects: Objects, problems: &mut Problems) -> DesiredState {
    let services = index_services(objects.services, problems);
    let mut slices = index_slices(objects.slices, problems);

    let mut out: Vec<DesiredService> = Vec::new();
    for ((ns, name), svc) in &services {
        let own_slices = slices
            .remove(&(ns.clone(), name.clone()))
            .unwrap_or_default();
        out.extend(service_ports(ns, name, svc, &own_slices, problems));
    }
    for ((ns, name), orphans) in &slices {
        for s in orphans {
            tracing::debug!(
                file = %s.at.file.display(),
                line = s.at.line,
                "EndpointSlice for {ns}/{name}, which no Service file defines; not used"
            );
        }
    }

    out.sort_by(|a, b| (&a.name, a.addr, a.port, a.proto).cmp(&(&b.name, b.addr, b.port, b.proto)));
    // Two service ports on one address, port and protocol cannot both be programmed: the
    // first in name order wins, and the other is reported where it was defined.
    let mut owner: BTreeMap<(Ipv4Addr, u16, Protocol), String> = BTreeMap::new();
    let mut kept = Vec::with_capacity(out.len());
    for s in out {
        match owner.entry((s.addr, s.port, s.proto)) {
            Entry::Vacant(v) => {
                v.insert(s.name.clone());
                kept.push(s);
            }
            Entry::Occupied(o) => {
                let (ns, name) = split_name(&s.name);
                if let Some(svc) = services.get(&(ns.to_owned(), name.to_owned())) {
                    problems.error(
                        &svc.at,
                        format!(
                            "Service port {} uses {}:{} {}, which {} already serves; not served",
                            s.name,
                            s.addr,
                            s.port,
                            s.proto,
                            o.get()
                        ),
                    );
                }
            }
        }
    }
    DesiredState { services: kept }
}

/// `ns/name:port` -> (`ns`, `name`).
fn split_name(full: &str) -> (&str, &str) {
    let (ns, rest) = full.split_once('/').unwrap_or(("", full));
    (ns, rest.split_once(':').map_or(rest, |(name, _)| name))
}

fn index_services(
    list: Vec<Located<Service>>,
    problems: &mut Problems,
) -> BTreeMap<ObjectKey, Located<Service>> {
    let mut services: BTreeMap<ObjectKey, Located<Service>> = BTreeMap::new();
    for svc in list {
        let Some(name) = svc.obj.metadata.name.clone().filter(|n| !n.is_empty()) else {
            problems.error(
                &svc.at,
                "Service has no metadata.name; not served".to_owned(),
            );
            continue;
        };
        let key = (namespace(&svc.obj.metadata), name);
        match services.entry(key) {
            Entry::Vacant(v) => {
                v.insert(svc);
            }
            Entry::Occupied(o) => {
                let first = &o.get().at;
                problems.error(
                    &svc.at,
                    format!(
                        "Service {}/{} is defined again; the first definition ({}) is served",
                        o.key().0,
                        o.key().1,
                        where_(first)
                    ),
                );
            }
        }
    }
    services
}

/// `file:line (document N, items[i])`, to point from one definition to another.
fn where_(at: &Place) -> String {
    let item = at.item.map(|i| format!(", items[{i}]")).unwrap_or_default();
    format!(
        "{}:{}, document {}{item}",
        at.file.display(),
        at.line,
        at.document
    )
}

/// Groups the usable IPv4 slices by the service they belong to (rules 1 and 2 of
/// [`super::endpoints`]); a slice defined twice (same namespace and name) counts once.
fn index_slices(
    list: Vec<Located<EndpointSlice>>,
    problems: &mut Problems,
) -> BTreeMap<ObjectKey, Vec<Located<EndpointSlice>>> {
    let mut seen: BTreeMap<ObjectKey, Place> = BTreeMap::new();
    let mut groups: BTreeMap<ObjectKey, Vec<Located<EndpointSlice>>> = BTreeMap::new();
    for slice in list {
        let ns = namespace(&slice.obj.metadata);
        let Some(name) = slice.obj.metadata.name.clone().filter(|n| !n.is_empty()) else {
            problems.error(
                &slice.at,
                format!("EndpointSlice in namespace {ns} has no metadata.name (kube-proxy ignores such a slice); ignored"),
            );
            continue;
        };
        let what = format!("EndpointSlice {ns}/{name}");
        match seen.entry((ns.clone(), name)) {
            Entry::Vacant(v) => {
                v.insert(slice.at.clone());
            }
            Entry::Occupied(o) => {
                problems.error(
                    &slice.at,
                    format!(
                        "{what} is defined again; the first definition ({}) is used",
                        where_(o.get())
                    ),
                );
                continue;
            }
        }
        let service = slice
            .obj
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned();
        let Some(service) = service.filter(|s| !s.is_empty()) else {
            problems.error(
                &slice.at,
                format!("{what} has no label {SERVICE_NAME_LABEL}, so it belongs to no Service; ignored"),
            );
            continue;
        };
        match slice.obj.address_type.as_str() {
            "IPv4" => groups.entry((ns, service)).or_default().push(slice),
            // Valid, but nothing this IPv4 datapath can use (kube-proxy's IPv4 proxier
            // skips them the same way).
            "IPv6" | "FQDN" => tracing::debug!(
                file = %slice.at.file.display(),
                line = slice.at.line,
                "{what} has addressType {}; only IPv4 slices are used",
                slice.obj.address_type
            ),
            other => problems.error(
                &slice.at,
                format!("{what} has addressType {other:?}; expected IPv4, IPv6 or FQDN; ignored"),
            ),
        }
    }
    groups
}

/// The desired entries of one Service: one per port, if it has an IPv4 cluster IP.
fn service_ports(
    ns: &str,
    name: &str,
    svc: &Located<Service>,
    slices: &[Located<EndpointSlice>],
    problems: &mut Problems,
) -> Vec<DesiredService> {
    let what = format!("Service {ns}/{name}");
    let problem = |problems: &mut Problems, reason: String| {
        problems.error(&svc.at, format!("{what}: {reason}"))
    };
    let Some(spec) = &svc.obj.spec else {
        problem(problems, "has no spec; not served".to_owned());
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        tracing::debug!(file = %svc.at.file.display(), line = svc.at.line, "{what} is an ExternalName service; nothing to balance");
        return Vec::new();
    }
    // Dual stack lists every family in clusterIPs (clusterIP is its first entry).
    let ips: Vec<&String> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.iter().collect(),
        (_, Some(ip)) if !ip.is_empty() => vec![ip],
        _ => {
            problem(
                problems,
                "has no spec.clusterIP (no API server allocates one here); not served".to_owned(),
            );
            return Vec::new();
        }
    };
    if ips.iter().any(|ip| ip.as_str() == "None") {
        tracing::debug!(file = %svc.at.file.display(), line = svc.at.line, "{what} is headless; nothing to balance");
        return Vec::new();
    }
    let mut addr = None;
    for ip in &ips {
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) if addr.is_none() => addr = Some(v4),
            Ok(_) => {}
            Err(_) => {
                problem(
                    problems,
                    format!("spec.clusterIP {ip:?} is not an IP address; not served"),
                );
                return Vec::new();
            }
        }
    }
    let Some(addr) = addr else {
        problem(
            problems,
            "has only IPv6 cluster IPs; this datapath serves IPv4 only; not served".to_owned(),
        );
        return Vec::new();
    };
    if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() {
        problem(
            problems,
            format!("spec.clusterIP {addr} cannot be a service address; not served"),
        );
        return Vec::new();
    }
    if spec.internal_traffic_policy.as_deref() == Some("Local") {
        problem(
            problems,
            "spec.internalTrafficPolicy Local is not supported (this agent does not know which \
             endpoints are on its node); every endpoint is used"
                .to_owned(),
        );
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() {
        problem(problems, "has no spec.ports; not served".to_owned());
        return Vec::new();
    }

    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for (i, sp) in ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let Some(port) = valid_port(sp.port) else {
            problem(
                problems,
                format!(
                    "{field}.port {} is not in 1-65535; port not served",
                    sp.port
                ),
            );
            continue;
        };
        let proto = match sp.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            other => {
                problem(
                    problems,
                    format!(
                        "{field}.protocol {other} is not supported (TCP or UDP); port not served"
                    ),
                );
                continue;
            }
        };
        let port_name = sp.name.clone().unwrap_or_default();
        if !names.insert(port_name.clone()) {
            problem(
                problems,
                format!("{field}.name {port_name:?} is used by an earlier port; port not served"),
            );
            continue;
        }
        if !keys.insert((port, proto)) {
            problem(
                problems,
                format!("{field} repeats port {port} {proto}; port not served"),
            );
            continue;
        }
        let full_name = if port_name.is_empty() {
            format!("{ns}/{name}")
        } else {
            format!("{ns}/{name}:{port_name}")
        };
        let backends = endpoints::backends(
            PortId {
                name: &port_name,
                proto,
            },
            slices,
            problems,
        );
        out.push(DesiredService {
            name: full_name,
            addr,
            port,
            proto,
            backends,
        });
    }
    out
}

fn valid_port(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}
