//! Loading services directories written into temporary directories.

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
fn a_slice_without_ports_falls_back_to_target_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = service(
        "ns",
        "t",
        "127.0.10.6",
        "  - name: x\n    port: 80\n    targetPort: 8080\n  - name: y\n    port: 81\n",
    );
    let s = slice("ns", "t-1", "t", "", "- addresses: [127.0.0.9]\n");
    write(dir.path(), "t.yaml", &[svc, s].join("---\n"));
    let r = load(dir.path());
    assert_eq!(r.problems, vec![], "{:?}", problem_texts(&r));
    assert_eq!(
        find(&r.state, "ns/t:x").backends,
        addrs(&["127.0.0.9:8080"])
    );
    assert_eq!(find(&r.state, "ns/t:y").backends, addrs(&["127.0.0.9:81"]));
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
            "{}:34: EndpointSlice b/lost has no label kubernetes.io/service-name, so it belongs to no Service; ignored",
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
            "{}:{}: invalid YAML: ",
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
            "{file}:19: invalid Service: spec.ports[0].port: invalid type: string \"eighty\""
        )),
        "{texts:?}"
    );
    assert!(texts[0].ends_with("at column 11"), "{texts:?}");
    assert!(
        texts[1].starts_with(&format!("{file}:23: invalid YAML: ")),
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
            format!("{file}:1: ignored: kind Deployment (apiVersion apps/v1) is neither a Service nor an EndpointSlice"),
            format!("{file}:5: Service has apiVersion \"v2\"; expected \"v1\""),
            format!("{file}:9: not a Kubernetes object: expected a mapping with apiVersion and kind, found a sequence"),
            format!("{file}:13: not a Kubernetes object: apiVersion and kind must be strings"),
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
    let texts = problem_texts(&r);
    let reasons: Vec<&str> = texts
        .iter()
        .map(|t| t.split_once(": ").map_or("", |(_, r)| r))
        .collect();
    assert_eq!(
        reasons,
        [
            "Service ns/v6: has only IPv6 cluster IPs; this datapath serves IPv4 only; not served",
            "Service ns/noip: has no spec.clusterIP (no API server allocates one here); not served",
            "Service ns/sctp: spec.ports[0].protocol SCTP is not supported (TCP or UDP); port not served",
            "Service ns/sctp: spec.ports[1].port 0 is not in 1-65535; port not served",
        ],
        "{texts:?}"
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
            "b.yaml:1: Service port ns/b uses 127.0.10.16:80 TCP, which ns/a already serves"
        ),
        "{texts:?}"
    );
    assert!(
        texts[1].contains("c.yaml:1: Service ns/a is defined again; the first definition ("),
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
                "",
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
