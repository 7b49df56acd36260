//! pod-churn: pods deleted and added again while traffic runs, some moved to another node
//! keeping their address (as with ENI or static pod addresses), through the one place
//! pods are added and deleted (cluster::pods): the pod's servers stop, it leaves the
//! EndpointSlices the harness writes (as the endpoints controller would), `datapathd pod
//! del` on its node, its sandbox removed, the ipcache written on every node; then its
//! sandbox on the target node, `pod add`, the ipcache again, its servers and its
//! EndpointSlice entries back. The proof names each delete and add (pod, node, veth) and
//! what each node's `dp_ipcache` holds for the address afterwards (observed, not
//! required: a stale entry is pod-to-pod's to catch, not the fault's to refuse).
//!
//! The heal keeps the churned layout: moving a pod back would be one more move, and the
//! checks after the fault judge the layout the churn made, which is what a stale ipcache
//! entry breaks. What the heal proves is that every pod is wired again.
//! Needs `topology.routing` native or vxlan (the agent wires pods); works on netns and qemu.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;

use super::{Fault, FaultError, FaultRecord, PlanContext, Started};
use crate::cluster::{pods, workload, Cluster, Pod};
use crate::live::Live;
use crate::observe::{pods as seen, probe};
use crate::provider::Machines;
use crate::suite::{FaultStep, Needs};

const NAME: &str = "pod-churn";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct PodChurn(pub PodChurnPlan);

/// Every decision of one churn: after `start_after_ms`, each op in order, `interval_ms`
/// apart.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PodChurnPlan {
    pub start_after_ms: u64,
    pub interval_ms: u64,
    pub ops: Vec<ChurnOp>,
}

/// Delete `pod` and add it again, on `to` (another node: a move) or where it was.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChurnOp {
    pub pod: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

impl Fault for PodChurn {
    const NAME: &'static str = NAME;
    const ABOUT: &'static str = "pods deleted and added again while traffic runs, some moved to another node keeping their address (routing native/vxlan)";

    fn needs() -> Needs {
        Needs {
            pod_routing: true,
            ..Needs::default()
        }
    }

    fn validate(
        suite: &crate::suite::Suite,
        _scenario: &crate::suite::Scenario,
        _step: &FaultStep,
    ) -> Result<(), String> {
        if suite.topology.nodes.iter().all(|n| n.pods.is_empty()) {
            return Err("the topology has no pod to churn".into());
        }
        Ok(())
    }

    fn plan(cx: &mut PlanContext<'_>, step: &FaultStep) -> Self {
        let topo = &cx.suite.topology;
        let nodes: Vec<&str> = topo.nodes.iter().map(|n| n.name.as_str()).collect();
        let mut all: Vec<(&str, &str)> = topo
            .nodes
            .iter()
            .flat_map(|n| n.pods.iter().map(move |p| (p.as_str(), n.name.as_str())))
            .filter(|(_, n)| step.node.as_deref().is_none_or(|want| want == *n))
            .collect();
        all.shuffle(cx.rng);
        let count = cx.rng.random_range(2..=3).min(all.len());
        let ops = all[..count]
            .iter()
            .enumerate()
            .map(|(i, (pod, node))| {
                // The first op always moves (when there is another node): a move is what
                // the ipcache must follow.
                let others: Vec<&str> = nodes.iter().copied().filter(|n| n != node).collect();
                let moves = !others.is_empty() && (i == 0 || cx.rng.random_bool(0.5));
                ChurnOp {
                    pod: pod.to_string(),
                    to: if moves {
                        others.choose(cx.rng).map(|n| n.to_string())
                    } else {
                        None
                    },
                }
            })
            .collect();
        PodChurn(PodChurnPlan {
            start_after_ms: cx.rng.random_range(0..500),
            interval_ms: cx.rng.random_range(100..600),
            ops,
        })
    }

    fn describe(&self) -> String {
        let p = &self.0;
        format!(
            "after {} ms, every {} ms: {}",
            p.start_after_ms,
            p.interval_ms,
            p.ops
                .iter()
                .map(|o| match &o.to {
                    Some(n) => format!("{} moves to {n}", o.pod),
                    None => format!("{} re-created in place", o.pod),
                })
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    fn start<'m>(
        &self,
        live: &mut Live,
        _machines: Option<&'m mut dyn Machines>,
    ) -> Result<Started<'m>, FaultError> {
        let p = &self.0;
        if live.cluster.nodes.iter().any(|cn| {
            cn.net
                .as_ref()
                .and_then(|n| n.pod_routing.as_ref())
                .is_none()
        }) {
            return Err(FaultError::Unsupported {
                fault: NAME,
                reason: "the agent does not wire this cluster's pods (topology.routing kernel)"
                    .into(),
            });
        }
        let mut rec = FaultRecord::default();
        // Traffic while it churns: a pod that is not churned probes every pod server
        // again and again; the counts go into the proof (pod-to-pod judges afterwards).
        let churned: Vec<&str> = p.ops.iter().map(|o| o.pod.as_str()).collect();
        let prober = live
            .cluster
            .pods
            .iter()
            .find(|x| !churned.contains(&x.name.as_str()))
            .cloned();
        let targets = probe::pod_servers(&live.cluster, &live.services);
        let snapshot = live.cluster.clone();
        let stop = AtomicBool::new(false);
        let (tried, answered) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let result = std::thread::scope(|s| {
            if let Some(from) = &prober {
                let (snapshot, targets, stop) = (&snapshot, &targets, &stop);
                let (tried, answered) = (&tried, &answered);
                s.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(r) = probe::connect_each(snapshot, from, targets) {
                            for (_, a) in r {
                                tried.fetch_add(1, Ordering::Relaxed);
                                if a.first().is_some_and(|a| a.ok) {
                                    answered.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                });
            }
            let r = churn(p, live, &mut rec);
            stop.store(true, Ordering::Relaxed);
            r
        });
        result?;
        if prober.is_some() {
            rec.proof.push(format!(
                "traffic during the churn: {} of {} probes from {} to the pod servers answered",
                answered.load(Ordering::Relaxed),
                tried.load(Ordering::Relaxed),
                prober.as_ref().map(|x| x.name.as_str()).unwrap_or("-")
            ));
        }
        let wired = live.cluster.pod_net.wired.len();
        let total = live.cluster.pods.len();
        if wired != total {
            return Err(FaultError::NotProved {
                fault: NAME,
                node: "-".into(),
                what: format!("{wired} of {total} pods wired after the churn"),
            });
        }
        rec.proof.push(format!(
            "churned layout kept: every one of {total} pods wired, where the churn left it"
        ));
        Ok(Started::ended(NAME, rec))
    }
}

fn perr(node: &str, what: &str) -> impl FnOnce(pods::PodError) -> FaultError {
    let (node, what) = (node.to_string(), what.to_string());
    move |e| FaultError::NotProved {
        fault: NAME,
        node,
        what: format!("{what}: {}", crate::errors::chain(&e)),
    }
}

fn nerr(node: &str, what: &str) -> impl FnOnce(crate::node::NodeError) -> FaultError {
    let (node, what) = (node.to_string(), what.to_string());
    move |e| FaultError::Node {
        fault: NAME,
        node,
        what,
        source: Box::new(e),
    }
}

/// Every op in order; stops at an interrupt (what is half done is the teardown's: every
/// sandbox made at run time was recorded before it was made).
fn churn(p: &PodChurnPlan, live: &mut Live, rec: &mut FaultRecord) -> Result<(), FaultError> {
    let cancel = live.cancel.clone();
    if !cancel.sleep(Duration::from_millis(p.start_after_ms)) {
        return Err(FaultError::Interrupted);
    }
    for (i, op) in p.ops.iter().enumerate() {
        if i > 0 && !cancel.sleep(Duration::from_millis(p.interval_ms)) {
            return Err(FaultError::Interrupted);
        }
        if cancel.is_cancelled() {
            return Err(FaultError::Interrupted);
        }
        one(op, live, rec)?;
    }
    Ok(())
}

fn one(op: &ChurnOp, live: &mut Live, rec: &mut FaultRecord) -> Result<(), FaultError> {
    let t = Instant::now();
    let Some(at) = live.cluster.pods.iter().position(|x| x.name == op.pod) else {
        return Err(FaultError::NotProved {
            fault: NAME,
            node: "-".into(),
            what: format!("no pod {} in the cluster", op.pod),
        });
    };
    // 1. Its servers stop; it leaves the EndpointSlices.
    let old = live.cluster.pods.remove(at);
    let from = old.node.clone();
    for s in live.servers.iter_mut().filter(|s| s.pod == old.name) {
        let _ = s.proc.kill(libc::SIGKILL);
        let _ = s.proc.wait_timeout(Duration::from_secs(5));
    }
    live.servers.retain(|s| s.pod != old.name);
    live.write_services()
        .map_err(nerr(&from, "writing the services without the pod"))?;
    // 2. pod del, the sandbox, the ipcache.
    let departed = pods::delete(&live.cluster, &old).map_err(perr(&from, "deleting the pod"))?;
    let old_veth = departed.host_veth.clone().unwrap_or_else(|| "-".into());
    live.cluster.pod_net.wired.remove(&old.name);
    live.cluster.pod_net.departed.push(departed);
    pods::write_ipcache(&live.cluster).map_err(perr(&from, "writing the ipcache"))?;
    // 3. Its new place: the target node (a move) or the same one.
    let to = op.to.clone().unwrap_or_else(|| from.clone());
    let new = moved(&live.cluster, &old, &to).ok_or_else(|| FaultError::NotProved {
        fault: NAME,
        node: to.clone(),
        what: "no such node".into(),
    })?;
    let w = pods::add(&live.cluster, &new, false).map_err(perr(&to, "adding the pod"))?;
    let line = format!(
        "{}: {} deleted from {from} ({old_veth}), added on {to} ({} ifindex {}, program {})",
        new.ip, new.name, w.host_veth, w.ifindex, w.program_id
    );
    live.cluster.pod_net.wired.insert(new.name.clone(), w);
    live.cluster.pods.insert(at, new.clone());
    let ipc = pods::write_ipcache(&live.cluster).map_err(perr(&to, "writing the ipcache"))?;
    // 4. Its servers and EndpointSlice entries back.
    let here = Cluster {
        nodes: live.cluster.nodes.clone(),
        pods: vec![new.clone()],
        external: None,
        pod_net: Default::default(),
    };
    workload::start_servers(&here, &live.services, &mut live.servers, live.accelerate)
        .map_err(nerr(&to, "restarting the pod's servers"))?;
    live.write_services()
        .map_err(nerr(&to, "writing the services with the pod"))?;
    rec.proof.push(format!(
        "{line}; ipcache written on {} nodes; {:.1} s; dp_ipcache for {} now: {}",
        ipc.len(),
        t.elapsed().as_secs_f64(),
        new.ip,
        ipcache_now(&live.cluster, &new)
    ));
    Ok(())
}

/// The pod on node `to`: same name and address, its sandbox named for that node.
fn moved(cluster: &Cluster, old: &Pod, to: &str) -> Option<Pod> {
    let from_cn = cluster.node(&old.node)?;
    let to_cn = cluster.node(to)?;
    let netns_name = old
        .netns
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| old.name.clone());
    // The netns provider names a sandbox `<run>-<node>-<pod>` (one host, unique names);
    // a VM's is the pod's name, on its own machine.
    let netns_name = netns_name.replacen(&format!("-{}-", old.node), &format!("-{to}-"), 1);
    let cgroup = match old.cgroup.strip_prefix(&from_cn.cgroup) {
        Ok(rel) => to_cn.cgroup.join(rel),
        Err(_) => old.cgroup.clone(),
    };
    Some(Pod {
        name: old.name.clone(),
        node: to.to_string(),
        ip: old.ip,
        netns: pods::netns_path(&netns_name),
        cgroup,
    })
}

/// How long the proof waits for every node's `dp_ipcache` to follow (the agents poll
/// their ipcache directory every 200 ms).
const IPCACHE_WAIT: Duration = Duration::from_secs(3);

/// What each node's `dp_ipcache` holds for the pod's address, once it points at the
/// pod's node everywhere else (and nowhere on its own node) or after [`IPCACHE_WAIT`]:
/// observed for the proof, not required (a stale entry is pod-to-pod's to catch).
fn ipcache_now(cluster: &Cluster, pod: &Pod) -> String {
    let want = cluster
        .node(&pod.node)
        .and_then(|cn| cn.net.as_ref())
        .map(|n| n.addr);
    let t = Instant::now();
    loop {
        let per_node = crate::cluster::in_parallel(&cluster.nodes, |cn| {
            let local = cn.name() == pod.node;
            match seen::node_view(cn) {
                Ok(v) => match v.ipcache.iter().flatten().find(|e| e.addr == pod.ip) {
                    Some(e) => (
                        !local && Some(e.node_addr) == want,
                        format!("-> {}", e.node_addr),
                    ),
                    None if local => (true, "none (local)".into()),
                    None => (false, "none".into()),
                },
                Err(e) => (false, format!("unreadable: {}", e.report())),
            }
        });
        let followed = per_node.iter().all(|(ok, _)| *ok);
        if followed || t.elapsed() >= IPCACHE_WAIT {
            let lines: Vec<String> = cluster
                .nodes
                .iter()
                .zip(per_node)
                .map(|(cn, (_, what))| format!("{} {what}", cn.name()))
                .collect();
            return format!(
                "{} ({} after {:.1} s)",
                lines.join(", "),
                if followed { "followed" } else { "not followed" },
                t.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::PlanContext;
    use rand::SeedableRng;

    #[test]
    fn the_plan_is_seeded_and_its_first_op_moves() {
        let text = std::fs::read_to_string(crate::suite::default_dir().join("pod-vxlan.yaml"))
            .expect("suites/pod-vxlan.yaml");
        let suite = crate::suite::Suite::parse(
            std::path::Path::new("pod-vxlan.yaml"),
            &text,
            &crate::registry::Registry,
        )
        .expect("loads");
        let step = FaultStep {
            name: crate::suite::FaultName::new(NAME),
            node: None,
            during: Vec::new(),
            recover_within_s: None,
        };
        let plan = |seed| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut backends = Default::default();
            let mut cx = PlanContext {
                rng: &mut rng,
                suite: &suite,
                backends: &mut backends,
            };
            PodChurn::plan(&mut cx, &step)
        };
        assert_eq!(plan(5), plan(5));
        for seed in 0..20 {
            let p = plan(seed).0;
            assert!((2..=3).contains(&p.ops.len()), "{p:?}");
            assert!(p.ops[0].to.is_some(), "{p:?}");
        }
    }
}
