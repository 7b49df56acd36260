//! Loading services directories written into temporary directories.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddrV4;
use std::path::Path;

use super::*;

fn write(dir: &Path, name: &str, text: &str) {
    fs::write(dir.join(name), text).expect("write a services file");
}

fn load(dir: &Path) -> LoadReport {
    load_dir(dir).expect("the directory can be listed")
}

fn addrs(list: &[&str]) -> Vec<SocketAddrV4> {
    list.iter()
        .map(|a| a.parse().expect("a literal address"))
        .collect()
}

fn find<'a>(state: &'a DesiredState, name: &str) -> &'a DesiredService {
    state
        .services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name} in {:#?}", state.services))
}

fn problem_texts(r: &LoadReport) -> Vec<String> {
    r.problems.iter().map(ToString::to_string).collect()
}

fn service(ns: &str, name: &str, ip: &str, ports: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  clusterIP: {ip}\n  ports:\n{ports}"
    )
}

fn slice(ns: &str, name: &str, svc: &str, ports: &str, endpoints: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {svc}\naddressType: IPv4\n{ports}endpoints:\n{endpoints}"
    )
}

const WEB_PORTS: &str = "  - name: http\n    port: 80\n    targetPort: 8080\n  - name: dns\n    port: 53\n    protocol: UDP\n";
const WEB_SLICE_PORTS: &str =
    "ports:\n- name: http\n  port: 8080\n- name: dns\n  port: 5353\n  protocol: UDP\n";

#[test]
fn services_and_slices_several_per_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = [
        service("prod", "web", "127.0.10.1", WEB_PORTS),
        slice(
            "prod",
            "web-a",
            "web",
            WEB_SLICE_PORTS,
            "- addresses: [127.0.0.12]\n- addresses: [127.0.0.11]\n  conditions: {ready: true}\n",
        ),
        slice("prod", "web-b", "web", WEB_SLICE_PORTS, "- addresses: [127.0.0.13]\n"),
        // An unnamed single port in another namespace (the default one).
        "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  clusterIP: 127.0.10.2\n  ports: [{port: 5432}]\n"
            .to_owned(),
        slice("default", "db-1", "db", "ports:\n- port: 15432\n", "- addresses: [127.0.0.21]\n"),
    ]
    .join("---\n");
    write(dir.path(), "all.yaml", &text);
    let r = load(dir.path());
    assert_eq!(r.problems, vec![], "{:?}", problem_texts(&r));
    let names: Vec<&str> = r.state.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["default/db", "prod/web:dns", "prod/web:http"]);

    let http = find(&r.state, "prod/web:http");
    assert_eq!(
        (http.addr, http.port, http.proto),
        ("127.0.10.1".parse().expect("ip"), 80, Protocol::Tcp)
    );
    assert_eq!(
        http.backends,
        addrs(&["127.0.0.11:8080", "127.0.0.12:8080", "127.0.0.13:8080"])
    );
    let dns = find(&r.state, "prod/web:dns");
    assert_eq!((dns.port, dns.proto), (53, Protocol::Udp));
    assert_eq!(
        dns.backends,
        addrs(&["127.0.0.11:5353", "127.0.0.12:5353", "127.0.0.13:5353"])
    );
    let db = find(&r.state, "default/db");
    assert_eq!(db.backends, addrs(&["127.0.0.21:15432"]));
}

#[test]
fn not_ready_endpoints_are_excluded_and_absent_means_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "svc.yaml",
        &service("ns", "s", "127.0.10.3", "  - port: 80\n"),
    );
    write(
        dir.path(),
        "slice.yaml",
        &slice(
            "ns",
            "s-1",
            "s",
            "ports:\n- port: 80\n",
            "- addresses: [127.0.0.1]\n  conditions: {ready: false, serving: true}\n\
             - addresses: [127.0.0.2]\n  conditions: {}\n\
             - addresses: [127.0.0.3]\n\
             - addresses: [127.0.0.4]\n  conditions: {ready: true}\n\
             - addresses: [127.0.0.4]\n",
        ),
    );
    let r = load(dir.path());
    assert_eq!(r.problems, vec![], "{:?}", problem_texts(&r));
    assert_eq!(
        find(&r.state, "ns/s").backends,
        addrs(&["127.0.0.2:80", "127.0.0.3:80", "127.0.0.4:80"])
    );
}

#[test]
fn a_service_without_ready_endpoints_is_still_desired() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "svc.yaml",
        &service("ns", "empty", "127.0.10.4", "  - port: 80\n"),
    );
    let r = load(dir.path());
    assert_eq!(r.problems, vec![]);
    assert_eq!(find(&r.state, "ns/empty").backends, vec![]);
}

#[test]
fn ports_are_matched_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = service(
        "ns",
        "m",
        "127.0.10.5",
        "  - name: a\n    port: 1000\n  - name: b\n    port: 2000\n",
    );
    // Slice 1 serves only port a; slice 2 only b; slice 3 an unrelated unnamed port.
    let s1 = slice(
        "ns",
        "m-1",
        "m",
        "ports:\n- {name: a, port: 1100}\n",
        "- addresses: [127.0.0.1]\n",
    );
    let s2 = slice(
        "ns",
        "m-2",
        "m",
        "ports:\n- {name: b, port: 2200}\n",
        "- addresses: [127.0.0.2]\n",
    );
    let s3 = slice(
        "ns",
        "m-3",
        "m",
        "ports:\n- {port: 9}\n",
        "- addresses: [127.0.0.3]\n",
    );
    write(dir.path(), "m.yaml", &[svc, s1, s2, s3].join("---\n"));
    let r = load(dir.path());
    assert_eq!(r.problems, vec![], "{:?}", problem_texts(&r));
    assert_eq!(
        find(&r.state, "ns/m:a").backends,
        addrs(&["127.0.0.1:1100"])
    );
    assert_eq!(
        find(&r.state, "ns/m:b").backends,
        addrs(&["127.0.0.2:2200"])
    );
}

#[test]
fn a_slice_without_ports_serves_nothing_as_in_kube_proxy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = service(
        "ns",
        "t",
        "127.0.10.6",
        "  - name: x\n    port: 80\n    targetPort: 8080\n",
    );
    let s = slice("ns", "t-1", "t", "", "- addresses: [127.0.0.9]\n");
    write(dir.path(), "t.yaml", &[svc, s].join("---\n"));
    let r = load(dir.path());
    assert_eq!(find(&r.state, "ns/t:x").backends, vec![]);
    assert_eq!(
        problem_texts(&r),
        [format!(
            "{}:13: document 2: EndpointSlice ns/t-1: has no ports, so it serves no Service port (as in kube-proxy)",
            dir.path().join("t.yaml").display()
        )]
    );
}

#[test]
fn slices_follow_their_namespace_and_label() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = service("a", "s", "127.0.10.7", "  - port: 80\n");
    let b = service("b", "s", "127.0.10.8", "  - port: 80\n");
    let sa = slice(
        "a",
        "s-1",
        "s",
        "ports:\n- port: 80\n",
        "- addresses: [127.0.0.1]\n",
    );
    let unlabelled = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: lost, namespace: b}\naddressType: IPv4\nendpoints:\n- addresses: [127.0.0.2]\n";
    write(
        dir.path(),
        "x.yaml",
        &[a, b, sa, unlabelled.to_owned()].join("---\n"),
    );
    let r = load(dir.path());
    assert_eq!(find(&r.state, "a/s").backends, addrs(&["127.0.0.1:80"]));
    assert_eq!(find(&r.state, "b/s").backends, vec![]);
    assert_eq!(
        problem_texts(&r),
        [format!(
            "{}:34: document 4: EndpointSlice b/lost has no label kubernetes.io/service-name, so it belongs to no Service; ignored",
            dir.path().join("x.yaml").display()
        )]
    );
}

#[test]
fn a_broken_file_does_not_stop_a_good_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "good.yaml",
        &service("ns", "good", "127.0.10.9", "  - port: 80\n"),
    );
    // Line 7 has an unclosed flow sequence.
    write(dir.path(), "bad.yaml", "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  clusterIP: 127.0.10.10\n  ports: [{port: 80}\n");
    let r = load(dir.path());
    assert_eq!(r.state.services.len(), 1, "{:#?}", r.state);
    assert_eq!(r.state.services[0].name, "ns/good");
    assert_eq!(r.problems.len(), 1, "{:?}", problem_texts(&r));
    let p = &r.problems[0];
    assert_eq!(p.file, dir.path().join("bad.yaml"));
    let shown = p.to_string();
    assert!(
        shown.starts_with(&format!(
            "{}:{}: document 1: invalid YAML: ",
            dir.path().join("bad.yaml").display(),
            p.line
        )),
        "{shown}"
    );
    assert!((7..=8).contains(&p.line), "{shown}");
}

#[test]
fn a_bad_document_costs_only_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = [
        service("ns", "first", "127.0.10.11", "  - port: 80\n"),
        // Lines 11-19; its port is a string on line 19.
        service("ns", "typo", "127.0.10.12", "  - port: eighty\n"),
        // Lines 21-23: YAML that does not even scan (line 23).
        "apiVersion: v1\nkind: Service\nmetadata: {name: [oops}\n".to_owned(),
        service("ns", "last", "127.0.10.13", "  - port: 80\n"),
    ]
    .join("---\n");
    write(dir.path(), "multi.yaml", &text);
    let r = load(dir.path());
    let names: Vec<&str> = r.state.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ns/first", "ns/last"]);
    let file = dir.path().join("multi.yaml").display().to_string();
    let texts = problem_texts(&r);
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(
        texts[0].starts_with(&format!(
            "{file}:19: document 2: invalid Service: spec.ports[0].port: invalid type: string \"eighty\""
        )),
        "{texts:?}"
    );
    assert!(texts[0].ends_with("at column 11"), "{texts:?}");
    assert!(
        texts[1].starts_with(&format!("{file}:23: document 3: invalid YAML: ")),
        "{texts:?}"
    );
}

#[test]
fn kinds_and_versions_that_are_not_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n\
                apiVersion: v2\nkind: Service\nmetadata: {name: s}\n---\n\
                - just a list\n---\n\
                # an empty document\n---\n\
                just: a map\n";
    write(dir.path(), "k.yml", text);
    let r = load(dir.path());
    let file = dir.path().join("k.yml").display().to_string();
    assert_eq!(
        problem_texts(&r),
        [
            format!("{file}:1: document 1: skipped 1 object(s) that are neither a Service nor an EndpointSlice: 1 Deployment (apps/v1)"),
            format!("{file}:5: document 2: Service has apiVersion \"v2\"; expected \"v1\""),
            format!("{file}:9: document 3: not a Kubernetes object: expected a mapping with apiVersion and kind, found a sequence"),
            format!("{file}:13: document 5: not a Kubernetes object: apiVersion and kind must be strings"),
        ]
    );
}

#[test]
fn addresses_this_datapath_does_not_serve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = [
        service("ns", "headless", "None", "  - port: 80\n"),
        service("ns", "v6", "fd00::1", "  - port: 80\n"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: dual, namespace: ns}\nspec:\n  clusterIP: fd00::2\n  clusterIPs: [fd00::2, 127.0.10.14]\n  ports: [{port: 80}]\n".to_owned(),
        "apiVersion: v1\nkind: Service\nmetadata: {name: noip, namespace: ns}\nspec:\n  ports: [{port: 80}]\n".to_owned(),
        "apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: ns}\nspec:\n  type: ExternalName\n  externalName: example.invalid\n".to_owned(),
        service("ns", "sctp", "127.0.10.15", "  - port: 80\n    protocol: SCTP\n  - port: 0\n  - port: 81\n"),
    ]
    .join("---\n");
    write(dir.path(), "a.yaml", &text);
    let r = load(dir.path());
    let names: Vec<&str> = r.state.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ns/dual", "ns/sctp"]);
    assert_eq!(
        find(&r.state, "ns/dual").addr,
        "127.0.10.14".parse::<Ipv4Addr>().expect("ip")
    );
    assert_eq!(find(&r.state, "ns/sctp").port, 81);
    let reasons: Vec<&str> = r.problems.iter().map(|p| p.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "Service ns/v6: has only IPv6 cluster IPs; this datapath serves IPv4 only; not served",
            "Service ns/noip: has no spec.clusterIP (no API server allocates one here); not served",
            "Service ns/sctp: spec.ports[0].protocol SCTP is not supported (TCP or UDP); port not served",
            "Service ns/sctp: spec.ports[1].port 0 is not in 1-65535; port not served",
        ],
        "{:?}",
        problem_texts(&r)
    );
}

#[test]
fn one_address_port_protocol_has_one_owner() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "a.yaml",
        &service("ns", "a", "127.0.10.16", "  - port: 80\n"),
    );
    write(
        dir.path(),
        "b.yaml",
        &service(
            "ns",
            "b",
            "127.0.10.16",
            "  - port: 80\n  - port: 80\n    protocol: UDP\n    name: u\n",
        ),
    );
    write(
        dir.path(),
        "c.yaml",
        &service("ns", "a", "127.0.10.17", "  - port: 80\n"),
    );
    let r = load(dir.path());
    let names: Vec<(&str, Protocol)> = r
        .state
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.proto))
        .collect();
    assert_eq!(names, [("ns/a", Protocol::Tcp), ("ns/b:u", Protocol::Udp)]);
    assert_eq!(
        find(&r.state, "ns/a").addr,
        "127.0.10.16".parse::<Ipv4Addr>().expect("ip")
    );
    let texts = problem_texts(&r);
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(
        texts[0].contains(
            "b.yaml:1: document 1: Service port ns/b uses 127.0.10.16:80 TCP, which ns/a already serves"
        ),
        "{texts:?}"
    );
    assert!(
        texts[1].contains(
            "c.yaml:1: document 1: Service ns/a is defined again; the first definition ("
        ),
        "{texts:?}"
    );
}

#[test]
fn loading_is_deterministic_whatever_the_file_order() {
    let one = tempfile::tempdir().expect("tempdir");
    let two = tempfile::tempdir().expect("tempdir");
    let files = [
        (
            "z.yaml",
            service(
                "ns",
                "z",
                "127.0.10.20",
                "  - port: 80\n  - name: b\n    port: 81\n",
            ),
        ),
        (
            "a.yaml",
            service("ns", "a", "127.0.10.21", "  - port: 80\n"),
        ),
        (
            "m.yaml",
            slice(
                "ns",
                "z-1",
                "z",
                "ports:\n- port: 80\n",
                "- addresses: [127.0.0.9]\n- addresses: [127.0.0.3]\n- addresses: [127.0.0.5]\n",
            ),
        ),
    ];
    for (name, text) in &files {
        write(one.path(), name, text);
    }
    for (name, text) in files.iter().rev() {
        write(two.path(), name, text);
    }
    let (r1, r2) = (load(one.path()), load(two.path()));
    assert_eq!(r1.state, r2.state);
    assert_eq!(r1.state, load(one.path()).state);
    let names: Vec<&str> = r1.state.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ns/a", "ns/z", "ns/z:b"]);
    assert_eq!(
        find(&r1.state, "ns/z").backends,
        addrs(&["127.0.0.3:80", "127.0.0.5:80", "127.0.0.9:80"])
    );
    assert_eq!(find(&r1.state, "ns/z:b").backends, vec![]);
    assert_eq!(
        serde_json::to_string(&r1.state.services[0]).expect("serializable"),
        r#"{"name":"ns/a","addr":"127.0.10.21","port":80,"proto":"tcp","backends":[]}"#
    );
}

#[test]
fn only_services_files_are_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = service("ns", "s", "127.0.10.30", "  - port: 80\n");
    write(dir.path(), "s.json", "{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": \"j\", \"namespace\": \"ns\"}, \"spec\": {\"clusterIP\": \"127.0.10.31\", \"ports\": [{\"port\": 80}]}}\n");
    write(dir.path(), "s.yaml", &good);
    for junk in [".s.yaml.swp", "s.yaml~", ".#s.yaml", "notes.txt"] {
        write(dir.path(), junk, "this: [is not yaml\n");
    }
    fs::create_dir(dir.path().join("sub.yaml")).expect("mkdir");
    write(&dir.path().join("sub.yaml"), "x.yaml", "broken: [\n");
    let r = load(dir.path());
    assert_eq!(r.problems, vec![], "{:?}", problem_texts(&r));
    let names: Vec<&str> = r.state.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ns/j", "ns/s"]);
}

#[test]
fn a_missing_directory_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gone = dir.path().join("nope");
    let e = load_dir(&gone).expect_err("no such directory");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn the_watcher_sees_add_change_and_remove() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = DirWatcher::new(dir.path().to_owned());
    assert!(
        w.changed().expect("poll"),
        "the first look reports a change"
    );
    assert!(!w.changed().expect("poll"));

    write(dir.path(), "a.yaml", "a: 1\n");
    assert!(w.changed().expect("poll"), "added");
    assert!(!w.changed().expect("poll"));

    write(dir.path(), "a.yaml", "a: 12\n");
    assert!(w.changed().expect("poll"), "changed");
    assert!(!w.changed().expect("poll"));

    // Replaced by rename with the same size: a new inode.
    write(dir.path(), ".a.yaml.tmp", "a: 13\n");
    fs::rename(dir.path().join(".a.yaml.tmp"), dir.path().join("a.yaml")).expect("rename");
    assert!(w.changed().expect("poll"), "replaced");
    assert!(!w.changed().expect("poll"));

    // Files that are not read do not wake anyone.
    write(dir.path(), ".a.yaml.swp", "x");
    write(dir.path(), "README.txt", "x");
    assert!(!w.changed().expect("poll"), "ignored files");

    fs::remove_file(dir.path().join("a.yaml")).expect("remove");
    assert!(w.changed().expect("poll"), "removed");
    assert!(!w.changed().expect("poll"));
}

/// One case of tests/data/endpoint-rules.yaml (the kernel test reads the same file).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleCase {
    name: String,
    rule: serde_yaml::Value,
    objects: String,
    /// `vip:port/PROTO` -> backends
    want: BTreeMap<String, Vec<SocketAddrV4>>,
    #[serde(default)]
    problems: Vec<String>,
}

const RULES: &str = include_str!("../../tests/data/endpoint-rules.yaml");
const DUMP_YAML: &str = include_str!("../../tests/data/kubectl-get-svc-eps.yaml");
const DUMP_JSON: &str = include_str!("../../tests/data/kubectl-get-svc-eps.json");

/// The state as `vip:port/PROTO` -> backends, the table's terms.
fn by_address(state: &DesiredState) -> BTreeMap<String, Vec<SocketAddrV4>> {
    state
        .services
        .iter()
        .map(|s| {
            (
                format!("{}:{}/{}", s.addr, s.port, s.proto),
                s.backends.clone(),
            )
        })
        .collect()
}

#[test]
fn every_endpoint_rule_as_kube_proxy_applies_it() {
    let cases: Vec<RuleCase> = serde_yaml::from_str(RULES).expect("endpoint-rules.yaml parses");
    assert!(cases.len() >= 12, "the table covers every rule");
    let mut failed = Vec::new();
    for case in &cases {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "case.yaml", &case.objects);
        let r = load(dir.path());
        let got = by_address(&r.state);
        let reasons: Vec<&str> = r.problems.iter().map(|p| p.reason.as_str()).collect();
        let problems_ok = reasons.len() == case.problems.len()
            && reasons
                .iter()
                .zip(&case.problems)
                .all(|(got, want)| got.contains(want.as_str()));
        if got != case.want || !problems_ok {
            failed.push(format!(
                "rule {:?}, {}:\n  want {:?}\n  got  {:?}\n  problems want {:?}\n  problems got  {:?}",
                case.rule, case.name, case.want, got, case.problems, reasons
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// What the kubectl dump in tests/data must give (the kernel test checks the same).
fn dump_expected() -> BTreeMap<String, Vec<SocketAddrV4>> {
    [
        ("127.0.10.1:443/TCP", vec!["127.0.1.1:6443"]),
        ("127.0.10.10:53/UDP", vec!["127.0.2.1:53", "127.0.2.2:53"]),
        ("127.0.10.10:53/TCP", vec!["127.0.2.1:53", "127.0.2.2:53"]),
        (
            "127.0.10.10:9153/TCP",
            vec!["127.0.2.1:9153", "127.0.2.2:9153"],
        ),
        (
            "127.0.10.20:80/TCP",
            vec!["127.0.3.1:8080", "127.0.3.3:8081"],
        ),
        ("127.0.10.21:80/TCP", vec!["127.0.4.1:9000"]),
        ("127.0.10.22:50051/TCP", vec!["127.0.5.1:50051"]),
        ("127.0.10.23:80/TCP", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), addrs(&v)))
    .collect()
}

#[test]
fn a_kubectl_yaml_dump_is_served_as_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "cluster.yaml", DUMP_YAML);
    let r = load(dir.path());
    assert_eq!(r.problems, vec![], "{:?}", problem_texts(&r));
    assert_eq!(by_address(&r.state), dump_expected());
    let names: Vec<&str> = r.state.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "default/kubernetes:https",
            "kube-system/kube-dns:dns",
            "kube-system/kube-dns:dns-tcp",
            "kube-system/kube-dns:metrics",
            "shop/cart:http",
            "shop/empty",
            "shop/orders:grpc",
            "shop/web:http",
        ]
    );
}

#[test]
fn a_kubectl_json_dump_gives_the_same_state() {
    let yaml = tempfile::tempdir().expect("tempdir");
    let json = tempfile::tempdir().expect("tempdir");
    write(yaml.path(), "cluster.yaml", DUMP_YAML);
    write(json.path(), "cluster.json", DUMP_JSON);
    let (y, j) = (load(yaml.path()), load(json.path()));
    assert_eq!(j.problems, vec![], "{:?}", problem_texts(&j));
    assert_eq!(j.state, y.state);
}

#[test]
fn typed_lists_as_the_api_prints_them() {
    // GET /api/v1/services and /apis/discovery.k8s.io/v1/endpointslices: items carry no
    // apiVersion or kind.
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "services.json",
        r#"{"kind": "ServiceList", "apiVersion": "v1", "metadata": {"resourceVersion": "4242"},
  "items": [{"metadata": {"name": "web", "namespace": "shop", "uid": "u1", "resourceVersion": "7",
             "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
                                "time": "2026-11-30T09:01:07Z", "fieldsType": "FieldsV1",
                                "fieldsV1": {"f:spec": {"f:ports": {}}}}]},
             "spec": {"clusterIP": "127.0.10.40", "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http-web"}]},
             "status": {"loadBalancer": {}}}]}
"#,
    );
    write(
        dir.path(),
        "slices.yaml",
        "kind: EndpointSliceList\napiVersion: discovery.k8s.io/v1\nmetadata: {resourceVersion: \"4243\"}\nitems:\n\
         - metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\n  addressType: IPv4\n  \
           endpoints: [{addresses: [127.0.0.1]}]\n  ports: [{name: http, port: 8080, protocol: TCP}]\n\
         - apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  \
           metadata: {name: web-2, namespace: shop, labels: {kubernetes.io/service-name: web}}\n  addressType: IPv4\n  \
           endpoints: [{addresses: [127.0.0.2]}]\n  ports: [{name: http, port: 8081, protocol: TCP}]\n",
    );
    let r = load(dir.path());
    assert_eq!(r.problems, vec![], "{:?}", problem_texts(&r));
    assert_eq!(
        find(&r.state, "shop/web:http").backends,
        addrs(&["127.0.0.1:8080", "127.0.0.2:8081"])
    );
}

#[test]
fn other_kinds_in_a_list_are_skipped_with_one_note() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "all.yaml",
        "apiVersion: v1\nkind: List\nitems:\n\
         - {apiVersion: v1, kind: Pod, metadata: {name: p}}\n\
         - {apiVersion: apps/v1, kind: Deployment, metadata: {name: d}}\n\
         - {apiVersion: v1, kind: Pod, metadata: {name: q}}\n\
         - {apiVersion: v1, kind: Service, metadata: {name: s, namespace: ns}, spec: {clusterIP: 127.0.10.41, ports: [{port: 80}]}}\n\
         metadata: {resourceVersion: \"\"}\n",
    );
    let r = load(dir.path());
    assert_eq!(find(&r.state, "ns/s").port, 80);
    assert_eq!(
        problem_texts(&r),
        [format!(
            "{}:1: document 1: skipped 3 object(s) that are neither a Service nor an EndpointSlice: 1 Deployment (apps/v1), 2 Pod (v1)",
            dir.path().join("all.yaml").display()
        )]
    );
    assert_eq!(r.problems[0].severity, Severity::Note);
}

#[test]
fn a_broken_list_item_names_file_document_item_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "good.yaml",
        &service("ns", "good", "127.0.10.42", "  - port: 80\n"),
    );
    // Document 2 is a List whose items[1] has a port that is not a number (line 14).
    let text = "# exported\n\
                apiVersion: v1\nkind: Service\nmetadata: {name: first, namespace: ns}\nspec: {clusterIP: 127.0.10.43, ports: [{port: 80}]}\n\
                ---\n\
                apiVersion: v1\nkind: List\nitems:\n\
                - apiVersion: v1\n  kind: Service\n  metadata: {name: ok, namespace: ns}\n  spec: {clusterIP: 127.0.10.44, ports: [{port: 80}]}\n\
                - apiVersion: v1\n  kind: Service\n  metadata: {name: bad, namespace: ns}\n  spec:\n    clusterIP: 127.0.10.45\n    ports:\n    - port: eighty\n\
                - apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {name: ok-1, namespace: ns, labels: {kubernetes.io/service-name: ok}}\n  \
                  addressType: IPv4\n  endpoints: [{addresses: [127.0.0.1]}]\n  ports: [{port: 80}]\n";
    write(dir.path(), "list.yaml", text);
    let r = load(dir.path());
    let names: Vec<&str> = r.state.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ns/first", "ns/good", "ns/ok"]);
    assert_eq!(find(&r.state, "ns/ok").backends, addrs(&["127.0.0.1:80"]));
    let texts = problem_texts(&r);
    assert_eq!(texts.len(), 1, "{texts:?}");
    let want = format!(
        "{}:20: document 2, items[1]: invalid Service: items[1].spec.ports[0].port: invalid type: string \"eighty\"",
        dir.path().join("list.yaml").display()
    );
    assert!(texts[0].starts_with(&want), "{texts:?}\nwant {want}");
    assert_eq!((r.problems[0].document, r.problems[0].item), (2, Some(1)));
}

#[test]
fn list_items_of_the_wrong_kind_or_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "l.yaml",
        "apiVersion: v1\nkind: ServiceList\nitems:\n\
         - {apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: x}, addressType: IPv4, endpoints: []}\n\
         - {apiVersion: discovery.k8s.io/v1beta1, kind: EndpointSlice, metadata: {name: y}}\n\
         - just a string\n\
         ---\n\
         apiVersion: v1\nkind: List\nitems: {not: a sequence}\n",
    );
    let r = load(dir.path());
    let reasons: Vec<String> = r
        .problems
        .iter()
        .map(|p| format!("{} {:?}: {}", p.document, p.item, p.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            "1 Some(0): a EndpointSlice in a list of another kind",
            "1 Some(1): a EndpointSlice in a list of another kind",
            "1 Some(2): not a Kubernetes object: expected a mapping with apiVersion and kind, found a scalar",
            "2 None: items: expected a sequence of objects",
        ]
    );
}
