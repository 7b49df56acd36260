//! Every pod's wiring, per node, as `pods.json` (routing native or vxlan): for each pod
//! what the kernel shows (`ip -j`, `bpftool -j net/link/prog`, the `dp_endpoints` and
//! `dp_ipcache` entries decoded by observe::pods) side by side with what `datapathd pod
//! add` answered and what `datapathd status --json` says, so a reader sees at once where
//! the agent's view and the kernel's differ. Written at the end of every scenario, pass or
//! fail: the wiring is part of the report, not only of a failure's artifacts.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cluster::{Cluster, ClusterNode};
use crate::observe::pods::{self, NodeView};

/// The agent's own view (`datapathd status --json`), or why there is none.
fn agent_status(cn: &ClusterNode) -> Value {
    let dp = cn.datapathd.display().to_string();
    let (bpffs, cg) = (
        cn.bpffs.display().to_string(),
        cn.cgroup.display().to_string(),
    );
    let argv = [
        dp.as_str(),
        "status",
        "--json",
        "--bpffs",
        &bpffs,
        "--cgroup",
        &cg,
    ];
    match cn.node.run(&argv, Duration::from_secs(30)) {
        Ok(out) if out.success() => serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| json!({"error": format!("not JSON: {e}")})),
        Ok(out) => json!({"error": format!("exit {}: {}", out.exit, out.stderr_str().trim())}),
        Err(e) => json!({"error": e.to_string()}),
    }
}

/// One pod's entry in the agent's status, by name.
fn agent_pod(status: &Value, name: &str) -> Value {
    status["pods"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The node's `pods.json`: each local pod with the kernel's view and the agent's.
pub fn node_report(cluster: &Cluster, cn: &ClusterNode, view: Result<NodeView, String>) -> Value {
    let status = agent_status(cn);
    let routing = cn.net.as_ref().and_then(|n| n.pod_routing.as_ref());
    let view = match view {
        Ok(v) => v,
        Err(e) => {
            return json!({
                "node": cn.name(),
                "routing": routing.map(|r| r.mode.to_string()),
                "kernel_error": e,
                "agent": status,
            })
        }
    };
    let pods: Vec<Value> = cluster
        .pods
        .iter()
        .filter(|p| p.node == cn.name())
        .map(|p| {
            let wired = cluster.pod_net.wired.get(&p.name);
            let veth = wired.map(|w| w.host_veth.as_str()).unwrap_or("");
            let link = view.link(veth);
            json!({
                "name": p.name,
                "address": p.ip.to_string(),
                "pod_add": wired,
                "kernel": {
                    "host_veth": link.map(|l| json!({
                        "name": l.ifname,
                        "ifindex": l.ifindex,
                        "mac": l.address.map(|m| m.to_string()),
                        "addresses": view.addrs.iter().find(|a| a.ifname == veth)
                            .map(|a| a.v4().iter().map(|(a, l)| format!("{a}/{l}")).collect::<Vec<_>>()),
                    })),
                    "ingress_programs": view.ingress_programs(veth),
                    "endpoint": view.endpoints.iter().flatten().find(|e| e.addr == p.ip),
                    "routes": view.routes.iter().filter(|r| r.host() == Some(p.ip)).collect::<Vec<_>>(),
                    "neighbours": view.neighs.iter().filter(|n| n.addr() == Some(p.ip)).collect::<Vec<_>>(),
                },
                "agent": agent_pod(&status, &p.name),
            })
        })
        .collect();
    json!({
        "node": cn.name(),
        "routing": routing.map(|r| r.mode.to_string()),
        "gateway": routing.map(|r| r.gateway.to_string()),
        "pods": pods,
        "ipcache": {
            "kernel": view.ipcache,
            "agent": status["ipcache"],
        },
        "agent_devices": status["devices"],
        "departed": cluster.pod_net.departed,
    })
}

/// Writes `<dir>/<node>/pods.json` for every node with the agent's pod datapath; `false`
/// when no node has one (nothing written).
pub fn write(cluster: &Cluster, dir: &Path) -> bool {
    if !cluster
        .nodes
        .iter()
        .any(|cn| cn.net.as_ref().is_some_and(|n| n.pod_routing.is_some()))
    {
        return false;
    }
    crate::cluster::in_parallel(&cluster.nodes, |cn| {
        let view = pods::node_view(cn).map_err(|e| e.report());
        let report = node_report(cluster, cn, view);
        let d = dir.join(cn.name());
        if std::fs::create_dir_all(&d).is_ok() {
            if let Ok(text) = serde_json::to_vec_pretty(&report) {
                let _ = std::fs::write(d.join("pods.json"), text);
            }
        }
    });
    true
}
