//! The qemu provider's [`Machines`]: node reboots and link faults on the VM layer. A
//! reboot loses everything in the guest's memory (processes, bpffs pins, pods, the
//! node's tmpfs state), so it is followed by re-creating what `up` made for that node.

use std::path::Path;
use std::time::Duration;

use super::QemuProvider;
use crate::cluster::{ClusterNode, Pod};
use crate::provider::{Machines, ProviderError};

const NAME: &str = "qemu";

fn err(what: String) -> impl FnOnce(super::QemuError) -> ProviderError {
    move |e| ProviderError::Other {
        provider: NAME,
        what,
        source: Some(Box::new(e)),
    }
}

impl QemuProvider {
    fn running(&mut self) -> Result<&mut super::QemuCluster, ProviderError> {
        self.cluster().ok_or(ProviderError::Prerequisite {
            provider: NAME,
            what: "no cluster is up".into(),
        })
    }
}

impl Machines for QemuProvider {
    fn reboot(
        &mut self,
        node: &ClusterNode,
        pods: &[Pod],
        timeout: Duration,
    ) -> Result<Duration, ProviderError> {
        let name = node.name().to_owned();
        let cluster = self.running()?;
        let took = cluster
            .reboot(&name, timeout)
            .map_err(err(format!("rebooting {name}")))?;
        for d in [&node.services_dir, &node.work_dir] {
            node.node
                .check(
                    &["mkdir", "-p", &d.to_string_lossy()],
                    Duration::from_secs(30),
                )
                .map_err(|source| ProviderError::Node {
                    provider: NAME,
                    what: format!("preparing {name} after its reboot"),
                    source,
                })?;
        }
        for bin in [&node.datapathd, &node.dp_probe] {
            if bin.starts_with(Path::new("/var/lib/dp-harness")) {
                return Err(ProviderError::Prerequisite {
                    provider: NAME,
                    what: format!(
                        "{} was copied into {name} and is gone with its reboot; build into a \
                         directory the guest sees through the host root (not /root, /tmp, /run)",
                        bin.display()
                    ),
                });
            }
        }
        for p in pods.iter().filter(|p| p.node == name) {
            cluster
                .add_pod(&name, &p.name, p.ip.octets()[3], &p.cgroup)
                .map_err(err(format!("re-creating pod {} on {name}", p.name)))?;
        }
        cluster
            .install_pod_routes()
            .map_err(err(format!("routing the pod CIDRs after {name}'s reboot")))?;
        Ok(took)
    }

    fn set_link(&mut self, node: &str, up: bool) -> Result<(), ProviderError> {
        self.running()?.set_link(node, up).map_err(err(format!(
            "setting {node}'s link {}",
            if up { "up" } else { "down" }
        )))
    }

    fn link_netem(&mut self, node: &str, args: &[&str]) -> Result<(), ProviderError> {
        self.running()?
            .link_netem(node, args)
            .map_err(err(format!("netem {} on {node}'s link", args.join(" "))))
    }

    fn link_heal(&mut self, node: &str) -> Result<(), ProviderError> {
        let c = self.running()?;
        c.set_link(node, true)
            .map_err(err(format!("setting {node}'s link up")))?;
        c.link_heal(node)
            .map_err(err(format!("removing the netem of {node}'s link")))
    }
}
