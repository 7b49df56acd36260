//! Services and EndpointSlices -> the desired state, as kube-proxy reads them.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::documents::{Located, Objects};
use super::{DesiredService, DesiredState, Problems, Protocol};

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
                file = %s.file.display(),
                line = s.line,
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
                    problems.push(
                        &svc.file,
                        svc.line,
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
            problems.push(
                &svc.file,
                svc.line,
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
                let first = o.get();
                problems.push(
                    &svc.file,
                    svc.line,
                    format!(
                        "Service {}/{} is defined again; the first definition ({}:{}) is served",
                        o.key().0,
                        o.key().1,
                        first.file.display(),
                        first.line
                    ),
                );
            }
        }
    }
    services
}

/// Groups the usable IPv4 slices by the service they belong to; a slice defined twice
/// (same namespace and name) counts once.
fn index_slices(
    list: Vec<Located<EndpointSlice>>,
    problems: &mut Problems,
) -> BTreeMap<ObjectKey, Vec<Located<EndpointSlice>>> {
    let mut seen: BTreeMap<ObjectKey, (std::path::PathBuf, usize)> = BTreeMap::new();
    let mut groups: BTreeMap<ObjectKey, Vec<Located<EndpointSlice>>> = BTreeMap::new();
    for slice in list {
        let ns = namespace(&slice.obj.metadata);
        let name = slice.obj.metadata.name.clone().unwrap_or_default();
        let what = format!("EndpointSlice {ns}/{name}");
        if !name.is_empty() {
            match seen.entry((ns.clone(), name)) {
                Entry::Vacant(v) => {
                    v.insert((slice.file.clone(), slice.line));
                }
                Entry::Occupied(o) => {
                    let (file, line) = o.get();
                    problems.push(
                        &slice.file,
                        slice.line,
                        format!(
                            "{what} is defined again; the first definition ({}:{line}) is used",
                            file.display()
                        ),
                    );
                    continue;
                }
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
            problems.push(
                &slice.file,
                slice.line,
                format!("{what} has no label {SERVICE_NAME_LABEL}, so it belongs to no Service; ignored"),
            );
            continue;
        };
        match slice.obj.address_type.as_str() {
            "IPv4" => groups.entry((ns, service)).or_default().push(slice),
            // Valid, but nothing this IPv4 datapath can use.
            "IPv6" | "FQDN" => tracing::debug!(
                file = %slice.file.display(),
                line = slice.line,
                "{what} has addressType {}; only IPv4 slices are used",
                slice.obj.address_type
            ),
            other => problems.push(
                &slice.file,
                slice.line,
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
        problems.push(&svc.file, svc.line, format!("{what}: {reason}"))
    };
    let Some(spec) = &svc.obj.spec else {
        problem(problems, "has no spec; not served".to_owned());
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        tracing::debug!(file = %svc.file.display(), line = svc.line, "{what} is an ExternalName service; nothing to balance");
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
        tracing::debug!(file = %svc.file.display(), line = svc.line, "{what} is headless; nothing to balance");
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
        let port_ref = PortRef {
            what: &what,
            field: &field,
            spec: sp,
            port,
            name: &port_name,
        };
        let backends = backends(&port_ref, slices, problems);
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

/// One port of a service, as the endpoint lookup needs it.
struct PortRef<'a> {
    /// `Service ns/name`
    what: &'a str,
    /// `spec.ports[i]`
    field: &'a str,
    spec: &'a ServicePort,
    port: u16,
    /// `""` when unnamed.
    name: &'a str,
}

/// The ready backends of one service port from the service's slices, sorted and
/// deduplicated. Problems are reported where the slice was defined.
fn backends(
    sp: &PortRef<'_>,
    slices: &[Located<EndpointSlice>],
    problems: &mut Problems,
) -> Vec<SocketAddrV4> {
    let mut set = BTreeSet::new();
    for slice in slices {
        let what = format!(
            "EndpointSlice {}/{}",
            namespace(&slice.obj.metadata),
            slice.obj.metadata.name.as_deref().unwrap_or("(unnamed)")
        );
        let mut problem =
            |reason: String| problems.push(&slice.file, slice.line, format!("{what}: {reason}"));
        let slice_ports = slice.obj.ports.as_deref().unwrap_or_default();
        let port = if slice_ports.is_empty() {
            None
        } else {
            match slice_ports
                .iter()
                .find(|p| p.name.as_deref().unwrap_or_default() == sp.name)
            {
                // This slice serves other ports of the service only.
                None => continue,
                Some(p) => p.port,
            }
        };
        let port = match port {
            Some(p) => match valid_port(p) {
                Some(p) => p,
                None => {
                    problem(format!(
                        "port {:?} is {p}, not in 1-65535; its endpoints are not used",
                        sp.name
                    ));
                    continue;
                }
            },
            // No port in the slice: what the endpoints controller would have put there.
            None => match &sp.spec.target_port {
                None => sp.port,
                Some(IntOrString::Int(p)) => match valid_port(*p) {
                    Some(p) => p,
                    None => {
                        problem(format!(
                            "{} {}.targetPort {p} is not in 1-65535; not used",
                            sp.what, sp.field
                        ));
                        continue;
                    }
                },
                Some(IntOrString::String(named)) => {
                    problem(format!(
                        "has no port {:?}, and {} {}.targetPort is the named port {named:?}, which only a \
                         slice port can resolve; not used",
                        sp.name, sp.what, sp.field
                    ));
                    continue;
                }
            },
        };
        for (i, ep) in slice.obj.endpoints.iter().enumerate() {
            // Absent means ready (the API's own rule); only an explicit false excludes.
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            // The addresses of one endpoint are fungible; kube-proxy uses the first.
            let Some(first) = ep.addresses.first() else {
                continue;
            };
            match first.parse::<Ipv4Addr>() {
                Ok(ip) => {
                    set.insert(SocketAddrV4::new(ip, port));
                }
                Err(_) => problem(format!(
                    "endpoints[{i}].addresses[0] {first:?} is not an IPv4 address; endpoint not used"
                )),
            }
        }
    }
    set.into_iter().collect()
}
