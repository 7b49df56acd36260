//! Issue 15: Services as Kubernetes gives them. What a cluster prints, fed to a real agent,
//! judged from the kernel's maps with bpftool (never from the agent's own report) and with
//! real connections. Needs root; see tests/common/mod.rs.
//!
//! - tests/data/endpoint-rules.yaml: one or more cases per endpoint rule of
//!   src/services/endpoints.rs (the unit tests read the same table).
//! - tests/data/kubectl-get-svc-eps.yaml: `kubectl get svc,endpointslices -A -o yaml` of a
//!   small cluster (ready, terminating, starting and headless endpoints, a named targetPort
//!   whose pods use two port numbers, dual stack, ExternalName, a Service with no endpoint).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;

use common::bpftool;
use common::probe;
use common::sandbox::{AgentOpts, Sandbox};

const RULES: &str = include_str!("data/endpoint-rules.yaml");
const DUMP_YAML: &str = include_str!("data/kubectl-get-svc-eps.yaml");

/// The agent reconciles within a second; allow for a loaded machine.
const PROGRAMMED_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleCase {
    name: String,
    rule: serde_yaml::Value,
    objects: String,
    /// `vip:port/PROTO` -> backends
    want: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    #[allow(dead_code)] // Judged by the unit tests; here only the maps are.
    problems: Vec<String>,
}

type Programmed = BTreeMap<String, Vec<String>>;

/// Waits until the kernel's maps hold exactly `want`; returns the last reading otherwise.
fn wait_for_maps(sb: &Sandbox, want: &Programmed) -> Result<(), Result<Programmed, String>> {
    let maps = sb.bpffs.join("maps");
    let mut last = Err("never read".to_owned());
    let ok = common::wait_for(PROGRAMMED_WITHIN, || {
        last = bpftool::services_in_maps(&maps);
        (last.as_ref().ok() == Some(want)).then_some(())
    });
    ok.ok_or(last)
}

/// A case's documents as one `kind: List` in JSON, the way `kubectl get -o json` prints it.
fn as_json_list(objects: &str) -> String {
    let items: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(objects)
        .map(|doc| serde_json::Value::deserialize(doc).expect("a case's documents parse"))
        .collect();
    let list = serde_json::json!({
        "apiVersion": "v1",
        "items": items,
        "kind": "List",
        "metadata": {"resourceVersion": ""},
    });
    serde_json::to_string_pretty(&list).expect("serializable")
}

#[test]
fn every_endpoint_rule_is_programmed_into_the_kernel() {
    if !common::can_run("every_endpoint_rule_is_programmed_into_the_kernel") {
        return;
    }
    let cases: Vec<RuleCase> = serde_yaml::from_str(RULES).expect("endpoint-rules.yaml parses");
    let mut sb = Sandbox::new("rules");
    let mut want = Programmed::new();
    for (i, case) in cases.iter().enumerate() {
        // Half the cases as the multi-document YAML of the table, half as a JSON List.
        if i % 2 == 0 {
            sb.write_services(&format!("case-{i:02}.yaml"), &case.objects);
        } else {
            sb.write_services(&format!("case-{i:02}.json"), &as_json_list(&case.objects));
        }
        for (k, v) in &case.want {
            let mut v = v.clone();
            v.sort();
            assert!(
                want.insert(k.clone(), v).is_none(),
                "{k} is used by two cases"
            );
        }
    }
    sb.start_agent(&AgentOpts::default());
    let Err(last) = wait_for_maps(&sb, &want) else {
        return;
    };
    let got = last.unwrap_or_else(|e| panic!("reading the maps with bpftool: {e}"));
    let mut wrong = Vec::new();
    for case in &cases {
        for (k, v) in &case.want {
            let mut v = v.clone();
            v.sort();
            if got.get(k) != Some(&v) {
                wrong.push(format!(
                    "rule {:?}, {}: {k} should have {v:?}, the kernel has {:?}",
                    case.rule,
                    case.name,
                    got.get(k)
                ));
            }
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        wrong.push(format!(
            "{k} is programmed but no case wants it: {:?}",
            got[k]
        ));
    }
    panic!(
        "the kernel's maps differ from the table after {PROGRAMMED_WITHIN:?}:\n{}\n{}",
        wrong.join("\n"),
        sb.agent_logs()
    );
}

/// Line 5 of document 1 of `broken.yaml` is items[0].spec.ports[0].port, not a number.
const BROKEN: &str = "apiVersion: v1\nkind: List\nitems:\n\
- {apiVersion: v1, kind: Service, metadata: {name: typo, namespace: shop},\n   spec: {clusterIP: 127.0.10.50, ports: [{port: eighty}]}}\n\
metadata: {resourceVersion: \"\"}\n\
---\n\
apiVersion: v1\nkind: Service\nmetadata: {name: fine, namespace: shop}\nspec: {clusterIP: 127.0.10.51, ports: [{port: 80}]}\n\
---\n\
apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
metadata: {name: fine-1, namespace: shop, labels: {kubernetes.io/service-name: fine}}\n\
endpoints: [{addresses: [127.0.7.1], conditions: {ready: true}}]\nports: [{name: \"\", port: 8080, protocol: TCP}]\n";

#[test]
fn a_kubectl_dump_reaches_only_ready_endpoints_on_their_target_ports() {
    if !common::can_run("a_kubectl_dump_reaches_only_ready_endpoints_on_their_target_ports") {
        return;
    }
    let mut sb = Sandbox::new("kubectl");
    // Every endpoint of the dump listens, ready or not: reaching a wrong one would show.
    for (ip, port) in [
        ("127.0.1.1", 6443),
        ("127.0.2.1", 53),
        ("127.0.2.2", 53),
        ("127.0.2.1", 9153),
        ("127.0.2.2", 9153),
        ("127.0.3.1", 8080),
        ("127.0.3.2", 8080), // terminating while others are ready
        ("127.0.3.3", 8081),
        ("127.0.3.4", 8081), // not ready yet
        ("127.0.4.1", 9000), // terminating, serving: the only choice
        ("127.0.4.2", 9000), // terminating, no longer serving
        ("127.0.5.1", 50051),
        ("127.0.6.1", 5432), // behind a headless Service
        ("127.0.7.1", 8080),
    ] {
        sb.start_backend(ip, port);
    }
    sb.write_services("cluster.yaml", DUMP_YAML);
    sb.write_services("broken.yaml", BROKEN);
    let want: Programmed = [
        ("127.0.10.1:443/TCP", &["127.0.1.1:6443"][..]),
        ("127.0.10.10:53/UDP", &["127.0.2.1:53", "127.0.2.2:53"]),
        ("127.0.10.10:53/TCP", &["127.0.2.1:53", "127.0.2.2:53"]),
        (
            "127.0.10.10:9153/TCP",
            &["127.0.2.1:9153", "127.0.2.2:9153"],
        ),
        ("127.0.10.20:80/TCP", &["127.0.3.1:8080", "127.0.3.3:8081"]),
        ("127.0.10.21:80/TCP", &["127.0.4.1:9000"]),
        ("127.0.10.22:50051/TCP", &["127.0.5.1:50051"]),
        ("127.0.10.23:80/TCP", &[]),
        ("127.0.10.51:80/TCP", &["127.0.7.1:8080"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
    .collect();
    sb.start_agent(&AgentOpts::default());
    if let Err(last) = wait_for_maps(&sb, &want) {
        panic!(
            "the kernel's maps should hold {want:#?}\nthey hold {last:#?}\n{}",
            sb.agent_logs()
        );
    }

    // The broken document is reported with file, line, document, item and field; the
    // rest of its file and the other file are served (the maps above).
    let logs = sb.agent_logs();
    let broken = sb.services.join("broken.yaml");
    let expected = format!(
        "{}:5: document 1, items[0]: invalid Service: items[0].spec.ports[0].port: invalid type: string \"eighty\"",
        broken.display()
    );
    assert!(
        logs.contains(&expected),
        "the log should say {expected:?}:\n{logs}"
    );

    // New connections reach exactly the selected endpoints, on their own target ports.
    for (key, backends) in &want {
        let (addr, proto) = key.split_once('/').expect("vip:port/PROTO");
        let proto = proto.to_ascii_lowercase();
        if backends.is_empty() {
            for a in probe::connect(&sb.netns, &sb.cgroup, addr, &proto, 3, 2000) {
                assert!(
                    !a.ok,
                    "{key} has no endpoint, yet a connect succeeded: {a:?}"
                );
                assert!(
                    matches!(a.errno, Some(libc::ECONNREFUSED | libc::EPERM)),
                    "{key}: expected a refusal, got {a:?}"
                );
            }
            continue;
        }
        let attempts = probe::connect(
            &sb.netns,
            &sb.cgroup,
            addr,
            &proto,
            12 * backends.len() as u32,
            2000,
        );
        let failed: Vec<_> = attempts.iter().filter(|a| !a.ok).collect();
        assert!(failed.is_empty(), "{key}: failed attempts {failed:#?}");
        let seen: BTreeSet<String> = attempts.iter().filter_map(|a| a.backend.clone()).collect();
        let want_set: BTreeSet<String> = backends.iter().cloned().collect();
        assert_eq!(
            seen, want_set,
            "{key}: connections must reach exactly the selected endpoints"
        );
    }
}
