//! node-reboot: reboot a node's machine (its kernel starts over: processes, bpffs pins,
//! pods and the node's tmpfs state are gone). Proved by a new boot id; then the provider
//! re-creates the node's pods and routes, and the run re-deploys what it had there (the
//! services, the backends of the node's pods, the agent). The datapath must come back
//! clean: the checks after this fault judge it. Providers without machines (netns: the
//! nodes share the host's kernel) cannot do it and say so: a harness error, not a pass.

use std::time::{Duration, Instant};

use super::{Fault, FaultError, FaultRecord, PlanContext, Site, Started};
use crate::cluster::datapath::READY_TIMEOUT;
use crate::cluster::{workload, Cluster};
use crate::live::Live;
use crate::provider::Machines;
use crate::suite::{FaultStep, Needs};

const NAME: &str = "node-reboot";
/// Reboot to SSH again; a TCG guest on busy cores takes 10-20 s.
const REBOOT_TIMEOUT: Duration = Duration::from_secs(180);
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct NodeReboot(pub NodeRebootPlan);

/// Every decision of one node-reboot.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeRebootPlan {
    pub node: String,
}

impl Fault for NodeReboot {
    const NAME: &'static str = NAME;
    const ABOUT: &'static str = "reboot a node's machine: its kernel, bpffs and pods start over";

    fn needs() -> Needs {
        Needs {
            machines: true,
            ..Needs::default()
        }
    }

    /// The reboot re-creates the node's pods the provider's way (a veth and kernel routes):
    /// with the agent wiring pods that would be a second, different wiring.
    fn validate(
        suite: &crate::suite::Suite,
        _scenario: &crate::suite::Scenario,
        _step: &FaultStep,
    ) -> Result<(), String> {
        if suite.topology.routing.is_kernel() {
            Ok(())
        } else {
            Err(format!(
                "it re-creates pods with kernel routes; not with topology.routing {}",
                suite.topology.routing
            ))
        }
    }

    fn plan(cx: &mut PlanContext<'_>, step: &FaultStep) -> Self {
        NodeReboot(NodeRebootPlan {
            node: cx.node(step),
        })
    }

    fn describe(&self) -> String {
        format!("node={}", self.0.node)
    }

    fn start<'m>(
        &self,
        live: &mut Live,
        machines: Option<&'m mut dyn Machines>,
    ) -> Result<Started<'m>, FaultError> {
        Ok(Started::ended(NAME, self.inject_with(live, machines)?))
    }
}

fn boot_id(live: &Live, node: &str) -> Result<String, FaultError> {
    let cn = live
        .cluster
        .node(node)
        .ok_or_else(|| FaultError::NotProved {
            fault: NAME,
            node: node.to_owned(),
            what: "no such node".into(),
        })?;
    cn.node
        .read_file(std::path::Path::new(BOOT_ID))
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .map_err(|source| FaultError::Node {
            fault: NAME,
            node: node.to_owned(),
            what: format!("reading {BOOT_ID}"),
            source: Box::new(source),
        })
}

impl NodeReboot {
    fn inject_with(
        &self,
        live: &mut Live,
        machines: Option<&mut dyn Machines>,
    ) -> Result<FaultRecord, FaultError> {
        let node = self.0.node.clone();
        let Some(machines) = machines else {
            return Err(FaultError::Unsupported {
                fault: NAME,
                reason: "its nodes are not machines (netns: namespaces sharing the host's \
                         kernel, which cannot be rebooted); run it with --provider qemu"
                    .into(),
            });
        };
        let site = Site::new(NAME, &node);
        let cn = site.cluster_node(live)?;
        if live.cancel.is_cancelled() {
            return Err(FaultError::Interrupted);
        }
        let mut rec = FaultRecord::default();
        let before = boot_id(live, &node)?;

        // 1. Reboot; the provider brings back its pods and routes.
        let t = Instant::now();
        let took = machines
            .reboot(&cn, &live.cluster.pods, REBOOT_TIMEOUT)
            .map_err(|e| FaultError::Provider {
                fault: NAME,
                node: node.clone(),
                what: "reboot".into(),
                source: Box::new(e),
            })?;
        let after = boot_id(live, &node)?;
        if after == before || after.is_empty() {
            return Err(site.not_proved(format!(
                "boot id is still {before} after the reboot: the kernel did not restart"
            )));
        }
        rec.proof.push(format!(
            "rebooted: boot id {before} -> {after}; answering again after {:.1} s \
             (pods and routes re-created in {:.1} s)",
            took.as_secs_f64(),
            t.elapsed().saturating_sub(took).as_secs_f64()
        ));

        // 2. The node's processes died with its kernel: forget their handles (their pids
        //    may belong to new processes now; never signal them).
        for a in live.agents.iter_mut().filter(|a| a.node == node) {
            a.current = None;
        }
        //    Only the node's pods' servers: the external host's runs elsewhere.
        let gone: Vec<String> = live
            .cluster
            .pods
            .iter()
            .filter(|p| p.node == node)
            .map(|p| p.name.clone())
            .collect();
        live.servers.retain(|s| !gone.contains(&s.pod));

        // 3. The datapath's pins were in the node's memory.
        let pins = cn
            .node
            .run(
                &[
                    "sh",
                    "-c",
                    "ls -A \"$0\" 2>/dev/null",
                    &cn.bpffs.to_string_lossy(),
                ],
                Duration::from_secs(30),
            )
            .map_err(site.node_error("listing the bpffs directory"))?
            .stdout_str();
        if !pins.trim().is_empty() {
            return Err(site.not_proved(format!(
                "{} still holds pins after the reboot: {}",
                cn.bpffs.display(),
                pins.split_whitespace().collect::<Vec<_>>().join(" ")
            )));
        }
        rec.proof.push(format!(
            "{} empty after the reboot (bpffs is in memory)",
            cn.bpffs.display()
        ));

        // 4. Re-deploy: services, the backends of the node's pods, the agent.
        live.write_services()
            .map_err(site.node_error("writing the services"))?;
        let here = Cluster {
            nodes: live.cluster.nodes.clone(),
            pods: live
                .cluster
                .pods
                .iter()
                .filter(|p| p.node == node)
                .cloned()
                .collect(),
            external: None,
            pod_net: live.cluster.pod_net.clone(),
        };
        let n = live.servers.len();
        workload::start_servers(&here, &live.services, &mut live.servers, live.accelerate)
            .map_err(site.node_error("restarting the node's backends"))?;
        rec.proof.push(format!(
            "{} backend servers restarted",
            live.servers.len() - n
        ));
        let idx = live
            .agents
            .iter()
            .position(|a| a.node == node)
            .ok_or_else(|| site.not_proved("no agent deployed"))?;
        live.agents[idx]
            .start(&cn, None)
            .map_err(site.node_error("starting the agent"))?;
        match live.agents[idx]
            .wait_ready(&cn, READY_TIMEOUT)
            .map_err(site.node_error("waiting for the agent"))?
        {
            None => rec
                .proof
                .push("agent started on the fresh kernel and ready".into()),
            Some(e) => {
                return Err(site.not_proved(format!(
                    "the agent ended with {e} before it was ready after the reboot"
                )))
            }
        }
        Ok(rec)
    }
}
