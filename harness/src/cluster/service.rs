//! Services as the datapath reads them: Kubernetes Service and EndpointSlice objects,
//! written to every node's services directory the way a cluster prints them
//! (`kubectl get svc,endpointslices -A -o yaml`): one `kind: List` document whose items carry
//! the server's own fields (uid, resourceVersion, creationTimestamp, managedFields, status),
//! so that every suite exercises the agent's reading of real cluster output.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{
    LoadBalancerStatus, Service, ServicePort, ServiceSpec as KubeServiceSpec, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    FieldsV1, ManagedFieldsEntry, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use super::Pod;
use crate::suite::{Protocol, ServiceSpec};

/// A service as it is now: the suite's definition with the current backend pods.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServiceState {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub target_port: u16,
    pub backends: Vec<String>,
}

impl From<&ServiceSpec> for ServiceState {
    fn from(s: &ServiceSpec) -> Self {
        ServiceState {
            name: s.name.clone(),
            vip: s.vip,
            port: s.port,
            protocol: s.protocol,
            target_port: s.target_port,
            backends: s.backends.clone(),
        }
    }
}

impl ServiceState {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.vip, self.port)
    }
}

/// The namespace of every service the harness writes.
const NAMESPACE: &str = "harness";
/// The one port of each service (its name, as slices and kube-proxy match ports by name).
const PORT_NAME: &str = "p";
/// When the objects claim to have been created: fixed, so a seed's files are identical.
const CREATED: Timestamp = Timestamp::constant(1_767_225_600, 0);

/// A uid in the API's format, derived from the object's position so files are reproducible.
fn uid(kind: u8, index: usize) -> String {
    format!("00000000-0000-4000-8{kind:03x}-{index:012x}")
}

/// The server's fields on an object, as `kubectl get -o yaml --show-managed-fields` prints them.
fn server_meta(name: &str, uid: String, manager: &str, api_version: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(NAMESPACE.to_owned()),
        uid: Some(uid),
        resource_version: Some("1".to_owned()),
        creation_timestamp: Some(Time(CREATED)),
        managed_fields: Some(vec![ManagedFieldsEntry {
            api_version: Some(api_version.to_owned()),
            fields_type: Some("FieldsV1".to_owned()),
            fields_v1: Some(FieldsV1(
                serde_json::json!({"f:metadata": {"f:labels": {}}}),
            )),
            manager: Some(manager.to_owned()),
            operation: Some("Update".to_owned()),
            time: Some(Time(CREATED)),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The Service object of `s`, as the API server returns it.
fn service_object(s: &ServiceState, index: usize) -> Service {
    Service {
        metadata: server_meta(&s.name, uid(1, index), "harness", "v1"),
        spec: Some(KubeServiceSpec {
            cluster_ip: Some(s.vip.to_string()),
            cluster_ips: Some(vec![s.vip.to_string()]),
            internal_traffic_policy: Some("Cluster".to_owned()),
            ip_families: Some(vec!["IPv4".to_owned()]),
            ip_family_policy: Some("SingleStack".to_owned()),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_owned()),
                port: i32::from(s.port),
                protocol: Some(s.protocol.k8s().to_owned()),
                target_port: Some(IntOrString::Int(i32::from(s.target_port))),
                ..Default::default()
            }]),
            session_affinity: Some("None".to_owned()),
            type_: Some("ClusterIP".to_owned()),
            ..Default::default()
        }),
        status: Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus::default()),
            ..Default::default()
        }),
    }
}

/// The EndpointSlice the endpoint slice controller would write for `s` with these ready
/// backend addresses.
fn slice_object(s: &ServiceState, index: usize, ips: &[Ipv4Addr]) -> EndpointSlice {
    let mut meta = server_meta(
        &format!("{}-1", s.name),
        uid(2, index),
        "kube-controller-manager",
        "discovery.k8s.io/v1",
    );
    meta.generate_name = Some(format!("{}-", s.name));
    meta.labels = Some(BTreeMap::from([
        (
            "endpointslice.kubernetes.io/managed-by".to_owned(),
            "endpointslice-controller.k8s.io".to_owned(),
        ),
        ("kubernetes.io/service-name".to_owned(), s.name.clone()),
    ]));
    meta.owner_references = Some(vec![OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Service".to_owned(),
        name: s.name.clone(),
        uid: uid(1, index),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    EndpointSlice {
        metadata: meta,
        address_type: "IPv4".to_owned(),
        endpoints: ips
            .iter()
            .map(|ip| Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some(PORT_NAME.to_owned()),
            port: Some(i32::from(s.target_port)),
            protocol: Some(s.protocol.k8s().to_owned()),
            ..Default::default()
        }]),
    }
}

/// All services as one `kind: List` YAML document, as `kubectl get svc,endpointslices -o yaml`
/// prints them: each Service, then its EndpointSlice with the backends that are pods.
pub fn to_yaml(services: &[ServiceState], pods: &[Pod]) -> String {
    let mut items = Vec::with_capacity(2 * services.len());
    for (i, s) in services.iter().enumerate() {
        let ips: Vec<Ipv4Addr> = s
            .backends
            .iter()
            .filter_map(|b| pods.iter().find(|p| &p.name == b).map(|p| p.ip))
            .collect();
        items.push(json(&service_object(s, i)));
        items.push(json(&slice_object(s, i, &ips)));
    }
    let list = serde_json::json!({
        "apiVersion": "v1",
        "items": items,
        "kind": "List",
        "metadata": {"resourceVersion": ""},
    });
    // A JSON value with string keys always has a YAML form.
    serde_yaml::to_string(&list).expect("a JSON value serializes to YAML")
}

/// k8s-openapi objects serialize infallibly (string keys, no custom serializer can fail).
fn json<T: serde::Serialize>(obj: &T) -> serde_json::Value {
    serde_json::to_value(obj).expect("a k8s-openapi object serializes to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::Protocol;

    fn state(name: &str, backends: &[&str]) -> ServiceState {
        ServiceState {
            name: name.to_owned(),
            vip: Ipv4Addr::new(127, 0, 10, 10),
            port: 53,
            protocol: Protocol::Udp,
            target_port: 5353,
            backends: backends.iter().map(|b| (*b).to_owned()).collect(),
        }
    }

    #[test]
    fn services_are_written_as_a_cluster_prints_them() {
        let pods = [Pod {
            name: "a".to_owned(),
            node: "n1".to_owned(),
            ip: Ipv4Addr::new(127, 0, 1, 5),
            netns: Default::default(),
            cgroup: Default::default(),
        }];
        let y = to_yaml(&[state("dns", &["a", "not-a-pod"])], &pods);
        let v: serde_yaml::Value = serde_yaml::from_str(&y).expect("one YAML document");
        assert_eq!(v["kind"].as_str(), Some("List"));
        let items = v["items"].as_sequence().expect("items");
        assert_eq!(items.len(), 2, "{y}");
        let svc: Service = serde_yaml::from_value(items[0].clone()).expect("a Service");
        assert_eq!(items[0]["kind"].as_str(), Some("Service"));
        assert!(svc.metadata.managed_fields.is_some() && svc.metadata.uid.is_some());
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("127.0.10.10"));
        let port = &spec.ports.expect("ports")[0];
        assert_eq!((port.name.as_deref(), port.port), (Some("p"), 53));
        assert_eq!(port.protocol.as_deref(), Some("UDP"));
        assert_eq!(items[1]["kind"].as_str(), Some("EndpointSlice"));
        let slice: EndpointSlice = serde_yaml::from_value(items[1].clone()).expect("a slice");
        let labels = slice.metadata.labels.expect("labels");
        assert_eq!(labels["kubernetes.io/service-name"], "dns");
        let addrs: Vec<&str> = slice
            .endpoints
            .iter()
            .map(|e| e.addresses[0].as_str())
            .collect();
        assert_eq!(addrs, ["127.0.1.5"], "only backends that are pods");
        let sp = &slice.ports.expect("ports")[0];
        assert_eq!((sp.name.as_deref(), sp.port), (Some("p"), Some(5353)));
        // The same services give the same bytes (a seed replays identically).
        assert_eq!(y, to_yaml(&[state("dns", &["a", "not-a-pod"])], &pods));
    }
}
