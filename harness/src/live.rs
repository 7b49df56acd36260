//! The running state of one scenario iteration: its cluster, the processes the run
//! started on it, the services as they are now. Faults act on it, checks observe it,
//! and the artifacts are taken from it.

use crate::cluster::datapath::Agent;
use crate::cluster::service::{self, ServiceState};
use crate::cluster::workload::{self, Server};
use crate::cluster::{in_parallel, Cluster};
use crate::node::NodeError;
use crate::observe::bpf;
use crate::signal::Cancel;

/// The running state of one scenario iteration.
pub struct Live {
    pub cluster: Cluster,
    pub agents: Vec<Agent>,
    pub servers: Vec<Server>,
    pub services: Vec<ServiceState>,
    pub cancel: Cancel,
    /// bpf objects seen on the run's cgroups and pins (for host-clean-after-down).
    pub seen: bpf::Kernel,
    /// The deployment accelerates node <-> local pod TCP (`deploy: {accelerate: true}`):
    /// agents run with `--accelerate`, servers in their pod cgroups. Faults that restart
    /// either keep it.
    pub accelerate: bool,
    /// The scenario judges conn-disrupt: the deploy opens the held connections (the
    /// runner decides it from the plan; other scenarios run as before).
    pub hold_connections: bool,
    /// The last fault step that healed (recovers-within counts from it).
    pub healed: Option<crate::invariant::recovers_within::Healed>,
}

impl Live {
    /// Writes the current services to every node's services directory.
    pub fn write_services(&self) -> Result<(), NodeError> {
        let y = service::to_yaml(&self.services, &self.cluster.pods);
        for cn in &self.cluster.nodes {
            cn.node
                .write_file(&cn.services_dir.join("services.yaml"), y.as_bytes(), 0o644)?;
        }
        Ok(())
    }

    pub fn set_backends(&mut self, svc: &str, backends: &[String]) -> Result<(), NodeError> {
        if let Some(s) = self.services.iter_mut().find(|s| s.name == svc) {
            s.backends = backends.to_vec();
        }
        self.write_services()
    }

    /// Records the bpf objects attributable to the run right now.
    pub fn remember(&mut self) {
        let observed = in_parallel(&self.cluster.nodes, |cn| {
            bpf::observe(cn.node.as_ref(), &cn.cgroup)
        });
        for (cn, obs) in self.cluster.nodes.iter().zip(observed) {
            let Ok((att, k)) = obs else {
                continue;
            };
            let b = format!("{}/", cn.bpffs.display());
            for a in att.iter().filter(|a| a.name.starts_with(bpf::PREFIX)) {
                if let Some(p) = k.progs.iter().find(|p| p.id == a.id) {
                    push_unique(&mut self.seen.progs, p.clone(), |x| x.id);
                    for m in k.maps.iter().filter(|m| p.map_ids.contains(&m.id)) {
                        push_unique(&mut self.seen.maps, m.clone(), |x| x.id);
                    }
                }
            }
            for m in k
                .maps
                .iter()
                .filter(|m| m.pinned.iter().any(|p| p.starts_with(&b)))
            {
                push_unique(&mut self.seen.maps, m.clone(), |x| x.id);
            }
            for l in k
                .links
                .iter()
                .filter(|l| l.pinned.iter().any(|p| p.starts_with(&b)))
            {
                push_unique(&mut self.seen.links, l.clone(), |x| x.id);
            }
        }
    }

    /// Stops agents (SIGTERM, then SIGKILL) and servers, by pid.
    pub fn stop_processes(&mut self) {
        for a in &mut self.agents {
            let _ = a.kill(libc::SIGTERM);
        }
        workload::stop_servers(&mut self.servers);
    }
}

fn push_unique<T>(v: &mut Vec<T>, x: T, key: impl Fn(&T) -> u32) {
    if !v.iter().any(|y| key(y) == key(&x)) {
        v.push(x);
    }
}
