//! Pod wiring as the kernel shows it (routing native/vxlan; datapath/README.md, "Pod
//! networking"): per node `ip -j` links, addresses, routes, rules and neighbours, the tc
//! and tcx programs on the host veths, and the pinned `dp_endpoints` and `dp_ipcache`
//! maps, decoded here from their byte layout (never through datapathd or
//! datapath-common); per pod its `ip -j` addresses, routes and neighbours.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::bpf::{parse_json, Link, Prog};
use super::ObserveError;
use crate::cluster::{ClusterNode, Pod};
use crate::node::Output;

pub use crate::cluster::pods::Mac;

/// Packet counters of `ip -s -j link`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats64 {
    #[serde(default)]
    pub rx: Counters,
    #[serde(default)]
    pub tx: Counters,
}

/// One entry of `ip -j -s link show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpLink {
    pub ifindex: u32,
    pub ifname: String,
    /// Absent on links without one (`lo` has zeros, tunnels none).
    #[serde(default, deserialize_with = "mac_or_none")]
    pub address: Option<Mac>,
    #[serde(default)]
    pub stats64: Option<Stats64>,
}

/// `address` of a link is a MAC on ethernet links and something else (or nothing) on
/// others (ipip, none): only a MAC is kept.
fn mac_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Mac>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    Ok(s.and_then(|s| s.parse().ok()))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrInfo {
    pub family: String,
    pub local: String,
    pub prefixlen: u8,
}

/// One entry of `ip -j addr show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpAddrs {
    pub ifname: String,
    #[serde(default, deserialize_with = "mac_or_none")]
    pub address: Option<Mac>,
    #[serde(default)]
    pub addr_info: Vec<AddrInfo>,
}

impl IpAddrs {
    /// The IPv4 addresses with their prefix length.
    pub fn v4(&self) -> Vec<(Ipv4Addr, u8)> {
        self.addr_info
            .iter()
            .filter(|a| a.family == "inet")
            .filter_map(|a| Some((a.local.parse().ok()?, a.prefixlen)))
            .collect()
    }
}

/// One entry of `ip -j route show` (`dst` is `default`, an address or a prefix).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub dev: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
}

impl Route {
    /// The host route's address when `dst` is one address (`10.244.0.7` or `.../32`).
    pub fn host(&self) -> Option<Ipv4Addr> {
        self.dst.trim_end_matches("/32").parse().ok()
    }
}

/// One entry of `ip -j rule show`, with what a per-pod rule would name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub priority: u32,
    #[serde(default)]
    pub src: Option<String>,
    #[serde(default)]
    pub dst: Option<String>,
    #[serde(default)]
    pub table: Option<String>,
}

impl Rule {
    /// Whether the rule selects `addr` as its source or destination.
    pub fn names(&self, addr: Ipv4Addr) -> bool {
        let a = addr.to_string();
        [&self.src, &self.dst]
            .iter()
            .any(|f| f.as_deref().map(|s| s.trim_end_matches("/32")) == Some(a.as_str()))
    }
}

/// One entry of `ip -j neigh show` (IPv6 entries keep their text in `dst`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neigh {
    pub dst: String,
    pub dev: String,
    #[serde(default)]
    pub lladdr: Option<Mac>,
    #[serde(default)]
    pub state: Vec<String>,
}

impl Neigh {
    pub fn addr(&self) -> Option<Ipv4Addr> {
        self.dst.parse().ok()
    }
    /// Resolved: REACHABLE, STALE (resolved once, not re-confirmed since), PERMANENT,
    /// DELAY or PROBE (resolved, being re-confirmed).
    pub fn resolved(&self) -> bool {
        self.lladdr.is_some()
            && self.state.iter().any(|s| {
                matches!(
                    s.as_str(),
                    "REACHABLE" | "STALE" | "PERMANENT" | "DELAY" | "PROBE"
                )
            })
    }
}

/// One tc program of `bpftool -j net show` (clsact attachments; tcx ones are links).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcProg {
    pub devname: String,
    pub ifindex: u32,
    /// `clsact/ingress`, `clsact/egress` (bpftool 7.1), `tcx/ingress` (newer bpftool).
    pub kind: String,
    pub id: u32,
}

impl TcProg {
    pub fn ingress(&self) -> bool {
        self.kind.ends_with("/ingress")
    }
}

#[derive(Debug, Deserialize)]
struct NetShow {
    #[serde(default)]
    tc: Vec<TcProg>,
}

/// A `dp_endpoints` entry: a local pod (datapath/README.md gives the layout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub addr: Ipv4Addr,
    pub ifindex: u32,
    pub pod_mac: Mac,
    pub host_mac: Mac,
    pub flags: u32,
}

/// A `dp_ipcache` entry: a remote pod and the node that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcacheEntry {
    pub addr: Ipv4Addr,
    pub node_addr: Ipv4Addr,
}

/// Map names and their byte layout (datapath/README.md, "Pod networking"). Keys: the
/// pod's IPv4 address in network byte order. `dp_endpoints` value (20 bytes): host veth
/// ifindex u32 @0 and flags u32 @4 (host order), pod MAC @8, host veth MAC @14.
/// `dp_ipcache` value (8 bytes): node address @0 (network order), flags u32 @4.
pub const MAP_ENDPOINTS: &str = "dp_endpoints";
pub const MAP_IPCACHE: &str = "dp_ipcache";
const ENDPOINT_VALUE_LEN: usize = 20;
const IPCACHE_VALUE_MIN: usize = 4;

/// What a map dump of ours cannot be read as.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("not a JSON array of {{key, value}} byte arrays")]
    Json(#[source] serde_json::Error),
    #[error("entry {index}: {what}")]
    Entry { index: usize, what: String },
}

#[derive(Deserialize)]
struct RawEntry {
    key: Vec<String>,
    value: Vec<String>,
}

fn bytes(index: usize, field: &str, hex: &[String]) -> Result<Vec<u8>, DumpError> {
    hex.iter()
        .map(|b| {
            u8::from_str_radix(b.trim_start_matches("0x"), 16).map_err(|_| DumpError::Entry {
                index,
                what: format!("{field} byte `{b}` is not hex"),
            })
        })
        .collect()
}

/// A map entry's key and value bytes.
type RawBytes = (Vec<u8>, Vec<u8>);

fn raw_entries(json: &str) -> Result<Vec<RawBytes>, DumpError> {
    let raw: Vec<RawEntry> = parse_json(json).map_err(DumpError::Json)?;
    raw.iter()
        .enumerate()
        .map(|(i, e)| {
            let key = bytes(i, "key", &e.key)?;
            if key.len() != 4 {
                return Err(DumpError::Entry {
                    index: i,
                    what: format!("key of {} bytes, want 4 (an IPv4 address)", key.len()),
                });
            }
            Ok((key, bytes(i, "value", &e.value)?))
        })
        .collect()
}

fn ipv4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// `bpftool -j map dump` of `dp_endpoints`.
pub fn parse_endpoints(json: &str) -> Result<Vec<Endpoint>, DumpError> {
    raw_entries(json)?
        .into_iter()
        .enumerate()
        .map(|(i, (k, v))| {
            if v.len() != ENDPOINT_VALUE_LEN {
                return Err(DumpError::Entry {
                    index: i,
                    what: format!("value of {} bytes, want {ENDPOINT_VALUE_LEN}", v.len()),
                });
            }
            let mac = |at: usize| Mac(v[at..at + 6].try_into().expect("6 bytes"));
            let word = |at: usize| u32::from_ne_bytes(v[at..at + 4].try_into().expect("4 bytes"));
            Ok(Endpoint {
                addr: ipv4(&k),
                ifindex: word(0),
                flags: word(4),
                pod_mac: mac(8),
                host_mac: mac(14),
            })
        })
        .collect()
}

/// `bpftool -j map dump` of `dp_ipcache`.
pub fn parse_ipcache(json: &str) -> Result<Vec<IpcacheEntry>, DumpError> {
    raw_entries(json)?
        .into_iter()
        .enumerate()
        .map(|(i, (k, v))| {
            if v.len() < IPCACHE_VALUE_MIN {
                return Err(DumpError::Entry {
                    index: i,
                    what: format!("value of {} bytes, want at least 4", v.len()),
                });
            }
            Ok(IpcacheEntry {
                addr: ipv4(&k),
                node_addr: ipv4(&v),
            })
        })
        .collect()
}

/// A `dp_backends` entry (the socket LB's backends; datapath/README.md): backend id ->
/// address (network order), port (network order), protocol, one byte of padding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendEntry {
    pub id: u32,
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// `bpftool -j map dump` of `dp_backends`.
pub fn parse_backends(json: &str) -> Result<Vec<BackendEntry>, DumpError> {
    let raw: Vec<RawEntry> = parse_json(json).map_err(DumpError::Json)?;
    raw.iter()
        .enumerate()
        .map(|(i, e)| {
            let (k, v) = (bytes(i, "key", &e.key)?, bytes(i, "value", &e.value)?);
            if k.len() != 4 || v.len() != 8 {
                return Err(DumpError::Entry {
                    index: i,
                    what: format!(
                        "key of {} and value of {} bytes, want 4 and 8",
                        k.len(),
                        v.len()
                    ),
                });
            }
            Ok(BackendEntry {
                id: u32::from_ne_bytes(k[..4].try_into().expect("4 bytes")),
                addr: ipv4(&v),
                port: u16::from_be_bytes([v[4], v[5]]),
            })
        })
        .collect()
}

/// `bpftool -j net show`: the tc programs.
pub fn parse_net_show(json: &str) -> Result<Vec<TcProg>, serde_json::Error> {
    let shows: Vec<NetShow> = parse_json(json)?;
    Ok(shows.into_iter().flat_map(|s| s.tc).collect())
}

/// A node's pod wiring as the kernel shows it, at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub links: Vec<IpLink>,
    pub addrs: Vec<IpAddrs>,
    pub routes: Vec<Route>,
    pub rules: Vec<Rule>,
    pub neighs: Vec<Neigh>,
    pub tc: Vec<TcProg>,
    /// The kernel's programs (names by id) and links (tcx attachments, by pin).
    pub progs: Vec<Prog>,
    pub bpf_links: Vec<Link>,
    /// `None`: the map is not pinned (no pod datapath on this node, or it was removed).
    pub endpoints: Option<Vec<Endpoint>>,
    pub ipcache: Option<Vec<IpcacheEntry>>,
    /// The socket LB's backends (`None`: not pinned).
    #[serde(default)]
    pub backends: Option<Vec<BackendEntry>>,
    /// Where the node's pod links are pinned (`<bpffs>/pods/links`).
    pub links_pin_dir: PathBuf,
}

/// One program attached to a host veth's ingress, however it was attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    pub prog_id: u32,
    pub prog_name: String,
    /// `clsact` (a tc filter) or `tcx` (a link pinned under `<bpffs>/pods/links/`).
    pub how: &'static str,
}

impl NodeView {
    pub fn link(&self, name: &str) -> Option<&IpLink> {
        self.links.iter().find(|l| l.ifname == name)
    }
    pub fn link_by_index(&self, ifindex: u32) -> Option<&IpLink> {
        self.links.iter().find(|l| l.ifindex == ifindex)
    }
    fn prog_name(&self, id: u32) -> String {
        self.progs
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.name.clone())
            .unwrap_or_else(|| format!("prog {id}"))
    }
    /// The programs on `dev`'s ingress: its clsact filters and the tcx link pinned for it.
    pub fn ingress_programs(&self, dev: &str) -> Vec<Attachment> {
        let mut out: Vec<Attachment> = self
            .tc
            .iter()
            .filter(|t| t.devname == dev && t.ingress())
            .map(|t| Attachment {
                prog_id: t.id,
                prog_name: self.prog_name(t.id),
                how: if t.kind.starts_with("tcx") {
                    "tcx"
                } else {
                    "clsact"
                },
            })
            .collect();
        let pin = self.links_pin_dir.join(dev);
        for l in &self.bpf_links {
            let pinned_here = l.pinned.iter().any(|p| Path::new(p) == pin);
            // A newer bpftool also lists tcx links in `net show`: counted once.
            if pinned_here && !out.iter().any(|a| a.prog_id == l.prog_id) {
                out.push(Attachment {
                    prog_id: l.prog_id,
                    prog_name: self.prog_name(l.prog_id),
                    how: "tcx",
                });
            }
        }
        out
    }
}

/// A pod's side as the kernel shows it inside its network namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodView {
    pub addrs: Vec<IpAddrs>,
    pub routes: Vec<Route>,
    pub neighs: Vec<Neigh>,
}

/// Where a node's pod maps and links are pinned.
pub fn pods_dir(cn: &ClusterNode) -> PathBuf {
    cn.bpffs.join("pods")
}

fn argv(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn parse_out<T: serde::de::DeserializeOwned>(
    node: &str,
    argv: &[String],
    out: &Output,
) -> Result<T, ObserveError> {
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    if !out.success() {
        return Err(ObserveError::failed(node, &argv, out));
    }
    let text = out.stdout_str();
    parse_json(&text).map_err(|e| ObserveError::unreadable(node, argv.join(" "), &text, e))
}

/// A pinned map's entries; `None` when nothing is pinned there (bpftool fails and the
/// pin does not exist).
fn map_out<T>(
    cn: &ClusterNode,
    argv: &[String],
    out: &Output,
    pin: &Path,
    parse: impl Fn(&str) -> Result<Vec<T>, DumpError>,
) -> Result<Option<Vec<T>>, ObserveError> {
    if !out.success() {
        if !pin_exists(cn, pin) {
            return Ok(None);
        }
        let a: Vec<&str> = argv.iter().map(String::as_str).collect();
        return Err(ObserveError::failed(cn.name(), &a, out));
    }
    let text = out.stdout_str();
    parse(&text)
        .map(Some)
        .map_err(|e| ObserveError::unreadable(cn.name(), argv.join(" "), &text, e))
}

fn pin_exists(cn: &ClusterNode, pin: &Path) -> bool {
    let p = pin.display().to_string();
    cn.node
        .run(&["test", "-e", &p], Duration::from_secs(10))
        .map(|o| o.success())
        .unwrap_or(true)
}

/// Everything of the node's pod wiring, in one round trip.
pub fn node_view(cn: &ClusterNode) -> Result<NodeView, ObserveError> {
    let dir = pods_dir(cn);
    let ep_pin = dir.join("maps").join(MAP_ENDPOINTS);
    let ic_pin = dir.join("maps").join(MAP_IPCACHE);
    let be_pin = cn.bpffs.join("maps").join("dp_backends");
    let be = be_pin.display().to_string();
    let ep = ep_pin.display().to_string();
    let ic = ic_pin.display().to_string();
    let calls = [
        argv(&["ip", "-j", "-s", "link", "show"]),
        argv(&["ip", "-j", "addr", "show"]),
        argv(&["ip", "-j", "route", "show"]),
        argv(&["ip", "-j", "rule", "show"]),
        argv(&["ip", "-j", "neigh", "show"]),
        argv(&["bpftool", "-j", "net", "show"]),
        argv(&["bpftool", "-j", "-f", "prog", "show"]),
        // -f: the pins, by which a tcx link is found (bpftool 7.1 lists no tcx in `net`).
        argv(&["bpftool", "-j", "-f", "link", "show"]),
        argv(&["bpftool", "-j", "map", "dump", "pinned", &ep]),
        argv(&["bpftool", "-j", "map", "dump", "pinned", &ic]),
        argv(&["bpftool", "-j", "map", "dump", "pinned", &be]),
    ];
    let outs = cn.node.run_batch(&calls, Duration::from_secs(30))?;
    let n = cn.name();
    let net_text = outs[5].stdout_str();
    if !outs[5].success() {
        let a: Vec<&str> = calls[5].iter().map(String::as_str).collect();
        return Err(ObserveError::failed(n, &a, &outs[5]));
    }
    Ok(NodeView {
        links: parse_out(n, &calls[0], &outs[0])?,
        addrs: parse_out(n, &calls[1], &outs[1])?,
        routes: parse_out(n, &calls[2], &outs[2])?,
        rules: parse_out(n, &calls[3], &outs[3])?,
        neighs: parse_out(n, &calls[4], &outs[4])?,
        tc: parse_net_show(&net_text)
            .map_err(|e| ObserveError::unreadable(n, calls[5].join(" "), &net_text, e))?,
        progs: parse_out(n, &calls[6], &outs[6])?,
        bpf_links: parse_out(n, &calls[7], &outs[7])?,
        endpoints: map_out(cn, &calls[8], &outs[8], &ep_pin, parse_endpoints)?,
        ipcache: map_out(cn, &calls[9], &outs[9], &ic_pin, parse_ipcache)?,
        backends: map_out(cn, &calls[10], &outs[10], &be_pin, parse_backends)?,
        links_pin_dir: dir.join("links"),
    })
}

/// The pod's side, entered with `nsenter --net=` on its node, in one round trip.
pub fn pod_view(cn: &ClusterNode, pod: &Pod) -> Result<PodView, ObserveError> {
    let net = format!("--net={}", pod.netns.display());
    let call = |what: &str| argv(&["nsenter", &net, "--", "ip", "-j", what, "show"]);
    let calls = [call("addr"), call("route"), call("neigh")];
    let outs = cn.node.run_batch(&calls, Duration::from_secs(30))?;
    let n = cn.name();
    Ok(PodView {
        addrs: parse_out(n, &calls[0], &outs[0])?,
        routes: parse_out(n, &calls[1], &outs[1])?,
        neighs: parse_out(n, &calls[2], &outs[2])?,
    })
}

/// Makes the pod resolve its gateway (one ping from inside it), so its neighbour table
/// holds the gateway's entry before it is judged. The ping's own result is not a
/// verdict: the neighbour entry is.
pub fn resolve_gateway(cn: &ClusterNode, pod: &Pod, gateway: Ipv4Addr) -> Result<(), ObserveError> {
    let net = format!("--net={}", pod.netns.display());
    let gw = gateway.to_string();
    cn.node.run(
        &["nsenter", &net, "--", "ping", "-c", "1", "-W", "2", &gw],
        Duration::from_secs(10),
    )?;
    Ok(())
}

/// Does a cgroup directory still exist on the node?
pub fn cgroup_exists(cn: &ClusterNode, cgroup: &Path) -> Result<bool, ObserveError> {
    let p = cgroup.display().to_string();
    let out = cn.node.run(&["test", "-d", &p], Duration::from_secs(10))?;
    Ok(out.success())
}

/// The node's VXLAN devices (`ip -s -j link show type vxlan`) with their counters: the
/// proof that pod traffic was encapsulated (vxlan) or could not have been (native: none).
pub fn vxlan_devices(cn: &ClusterNode) -> Result<Vec<IpLink>, ObserveError> {
    let argv = ["ip", "-s", "-j", "link", "show", "type", "vxlan"];
    let text = super::run_ok(cn.node.as_ref(), &argv, Duration::from_secs(30))?;
    parse_links_of_type(&text)
        .map_err(|e| ObserveError::unreadable(cn.name(), argv.join(" "), &text, e))
}

/// `ip -j link show type T`. iproute2 6.1 prints an empty object for every link the
/// type filter drops (`[{},{},{}]` on a node without VXLAN devices): those are skipped.
pub fn parse_links_of_type(text: &str) -> Result<Vec<IpLink>, serde_json::Error> {
    let all: Vec<serde_json::Value> = parse_json(text)?;
    all.into_iter()
        .filter(|v| v.as_object().is_none_or(|o| !o.is_empty()))
        .map(serde_json::from_value)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDPOINTS: &str = include_str!("../invariant/testdata/pods/wired.node.endpoints.json");
    const IPCACHE: &str = include_str!("../invariant/testdata/pods/wired.node.ipcache.json");
    const NET: &str = include_str!("../invariant/testdata/pods/wired.node.net.json");

    #[test]
    fn recorded_maps_decode_by_their_layout() {
        let eps = parse_endpoints(ENDPOINTS).expect("recorded dump reads");
        assert_eq!(
            eps,
            vec![Endpoint {
                addr: Ipv4Addr::new(10, 244, 0, 13),
                ifindex: 6,
                flags: 0,
                pod_mac: "b6:a7:92:4c:ca:c3".parse().unwrap(),
                host_mac: "e6:43:a2:ac:5f:00".parse().unwrap(),
            }]
        );
        let ic = parse_ipcache(IPCACHE).expect("recorded dump reads");
        assert_eq!(ic.len(), 5);
        assert!(ic.contains(&IpcacheEntry {
            addr: Ipv4Addr::new(10, 244, 0, 16),
            node_addr: Ipv4Addr::new(172, 31, 0, 3)
        }));
        // tcx: bpftool 7.1 lists nothing in `net`; the link pinned for the veth is it.
        assert!(parse_net_show(NET)
            .expect("recorded net show reads")
            .is_empty());
    }

    /// Printed by a qemu node (Debian 12, iproute2 6.1) without VXLAN devices.
    #[test]
    fn filtered_links_printed_as_empty_objects_are_skipped() {
        assert!(parse_links_of_type("[{},{},{},{},{},{},{}]")
            .expect("reads")
            .is_empty());
        let after = include_str!("../invariant/testdata/pods/vxlan.after.json");
        assert_eq!(
            parse_links_of_type(after).expect("reads")[0].ifname,
            "dp_vxlan"
        );
        assert!(parse_links_of_type("[{\"ifname\":\"x\"}]").is_err());
    }

    #[test]
    fn a_dump_of_another_layout_is_an_error_naming_the_entry() {
        let e = parse_endpoints(r#"[{"key":["0x0a"],"value":[]}]"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "entry 0: key of 1 bytes, want 4 (an IPv4 address)"
        );
        let e = parse_endpoints(r#"[{"key":["0x0a","0","0","1"],"value":["0x01"]}]"#).unwrap_err();
        assert_eq!(e.to_string(), "entry 0: value of 1 bytes, want 20");
        assert!(parse_endpoints("").expect("empty is no entry").is_empty());
    }
}
