//! sockmap-leak (incident C): stale sockhash keys for tuples that later node -> local pod
//! connections use, then thousands of short connections over those tuples.
//!
//! On the planned node, `dp-probe plant-sockhash` writes keys into the agent's pinned
//! `dp_sockhash` from user space (upstream kernels remove a socket's entries when it
//! closes, so a leaked key has to be planted): each key is the tuple a future connection
//! `node address:port` <-> `pod:port` will compute, its value an established decoy socket
//! (127.0.0.1 in the node's namespace, outside the accelerated scope). First the planned
//! number of keys as the pod's server socket will compute them (server address first),
//! then the client's. plant-sockhash reads each key back (the decoy's cookie, a kernel
//! lookup: the proof); the fault looks again with `bpftool map dump` and records what the
//! agent may already have collected. Then `dp-probe churn` makes the
//! planned number of short connections from the node's address (in the node's cgroup, so
//! they are accelerated), cycling over a port range whose first ports are the planted
//! ones: a correct datapath replaces the keys (or collects them) and every exchange is
//! answered; one that inserts with "no exist" hangs on each reuse.
//!
//! Besides, a few server-side keys are planted on the block's last ports, which the churn
//! leaves out ("orphans"): no connection ever replaces them, so they stay until the
//! agent's garbage collector removes them; without them a datapath that replaces keys on
//! insert but never collects looked correct.
//!
//! Proof: the planted keys with the decoy's cookie in the dump, the churn's summary, the
//! `dp_accel_stats` counters that moved, and the keys still stale afterwards. Heal: none
//! while the scenario runs: the decoys stay open (closing them would make the kernel
//! drop the planted keys, hiding the leak from the checks that follow, as the incident's
//! thousands of stale entries were not hidden); they are stopped with the scenario's
//! other processes.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::seq::IndexedRandom;
use rand::Rng;

use super::{Fault, FaultError, FaultRecord, PlanContext, Started};
use crate::cluster::workload::Server;
use crate::cluster::ClusterNode;
use crate::live::Live;
use dp_wire::{ChurnSummary, Planted, PlantedKey};

use crate::node::{Process, SpawnSpec};
use crate::observe::sockhash as obs;
use crate::observe::sockhash::Tuple;
use crate::provider::Machines;
use crate::suite::{FaultStep, Needs, Suite};

const NAME: &str = "sockmap-leak";
/// How long plant-sockhash may take to print its `planted` line.
const PLANT_TIMEOUT: Duration = Duration::from_secs(20);
/// The churn's read timeout: a connection that hangs costs this much.
const CHURN_READ_TIMEOUT_MS: u64 = 1000;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct SockmapLeak(pub SockmapLeakPlan);

/// Every decision of one sockmap-leak (incident C). On `node`, stale sockhash keys are
/// planted for the connections `node address:port` <-> `pod:port` whose node-side ports
/// are `base_port ..`: first `server_keys` keys as the pod's server socket will compute
/// them, then `client_keys` as the node's client socket will; then `churn` short
/// connections from `node address:base_port ..` (cycling over `churn_ports` ports, the
/// planted ones first) to the pod.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SockmapLeakPlan {
    pub node: String,
    /// A pod on `node` whose server answers TCP on `port`.
    pub pod: String,
    pub port: u16,
    pub base_port: u16,
    pub server_keys: u16,
    pub client_keys: u16,
    pub churn: u32,
    pub churn_ports: u16,
    /// Server-side keys planted on the block's last ports, which the churn leaves out:
    /// no connection ever replaces them, so only the agent's garbage collector removes
    /// them (0 in older histories).
    #[serde(default)]
    pub orphan_keys: u16,
}

impl SockmapLeakPlan {
    /// The node-side ports the churn cycles over: the block without its orphans.
    pub fn churn_range(&self) -> std::ops::Range<u16> {
        self.base_port..self.base_port + self.churn_ports - self.orphan_keys
    }
}

/// The node-side ports the sockmap-leak fault uses: below Linux's ephemeral range
/// (32768-60999), so no connection of anyone else's takes them by chance.
pub const SOCKMAP_LEAK_PORTS: std::ops::Range<u16> = 20000..30000;

/// Decides a sockmap-leak: the node (given, or from the seed among nodes with a local
/// TCP server), the pod, the ports, how many keys of each side, how much churn. The suite
/// was validated to have such a pod (an empty node name otherwise; the fault then says so).
fn plan_sockmap_leak(
    rng: &mut rand_chacha::ChaCha8Rng,
    suite: &Suite,
    node: Option<&str>,
) -> SockmapLeakPlan {
    let servers: Vec<(&str, &str, u16)> = suite
        .tcp_servers()
        .into_iter()
        .filter(|(n, _, _)| node.is_none_or(|want| want == *n))
        .collect();
    let (node, pod, port) = servers.choose(rng).copied().unwrap_or(("", "", 0));
    let churn_ports: u16 = 1000;
    // A block of ports for this fault, aligned so that the whole block fits in the range.
    let blocks = (SOCKMAP_LEAK_PORTS.end - SOCKMAP_LEAK_PORTS.start) / churn_ports;
    let base_port = SOCKMAP_LEAK_PORTS.start + rng.random_range(0..blocks) * churn_ports;
    SockmapLeakPlan {
        node: node.to_string(),
        pod: pod.to_string(),
        port,
        base_port,
        server_keys: rng.random_range(2..=4),
        client_keys: rng.random_range(1..=3),
        // Thousands of short connections: each port is reused two or three times.
        churn: rng.random_range(2000..=3000),
        churn_ports,
        orphan_keys: rng.random_range(1..=3),
    }
}

impl Fault for SockmapLeak {
    const NAME: &'static str = NAME;
    const ABOUT: &'static str = "incident C: stale sockhash keys planted for tuples that later \
node -> local pod connections use, then thousands of short connections over them";

    fn needs() -> Needs {
        Needs {
            acceleration: true,
            tcp_server: true,
            ..Needs::default()
        }
    }

    fn plan(cx: &mut PlanContext<'_>, step: &FaultStep) -> Self {
        SockmapLeak(plan_sockmap_leak(cx.rng, cx.suite, step.node.as_deref()))
    }

    fn describe(&self) -> String {
        let p = &self.0;
        format!(
            "node={} target={}:{} planted server-side={} client-side={} from port {} churn={} over ports {}-{} orphans={}",
            p.node,
            p.pod,
            p.port,
            p.server_keys,
            p.client_keys,
            p.base_port,
            p.churn,
            p.churn_range().start,
            p.churn_range().end - 1,
            p.orphan_keys
        )
    }

    fn start<'m>(
        &self,
        live: &mut Live,
        _machines: Option<&'m mut dyn Machines>,
    ) -> Result<Started<'m>, FaultError> {
        Ok(Started::ended(NAME, self.inject(live)?))
    }
}

/// Which keys one plant-sockhash writes: the server's or the client's view of tuples the
/// churn uses, or the server's view of tuples it never uses (orphans).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Client,
    Orphan,
}

impl Side {
    /// `plant-sockhash --key-for`.
    fn key_for(self) -> &'static str {
        match self {
            Side::Server | Side::Orphan => "server",
            Side::Client => "client",
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Side::Orphan => "orphan",
            s => s.key_for(),
        }
    }
}

/// The `planted {json}` line of plant-sockhash's output, if it is there.
fn planted_line(text: &str) -> Option<Result<Planted, String>> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("planted "))
        .map(|j| serde_json::from_str(j).map_err(|e| format!("plant-sockhash printed `{j}`: {e}")))
}

/// Whether `dump` holds `k` pointing at its decoy.
fn in_dump(k: &PlantedKey, dump: &[(Tuple, u64)]) -> bool {
    dump.iter().any(|(t, c)| {
        t.src.to_string() == k.src && t.dst.to_string() == k.dst && *c == k.decoy.cookie
    })
}

/// The planted keys missing from `dump` or holding another cookie than their decoy's.
fn not_in_dump(planted: &Planted, dump: &[(Tuple, u64)]) -> Vec<String> {
    planted
        .keys
        .iter()
        .filter(|k| !in_dump(k, dump))
        .map(|k| format!("{} -> {}", k.src, k.dst))
        .collect()
}

impl SockmapLeak {
    fn not(&self, what: String) -> FaultError {
        FaultError::NotProved {
            fault: NAME,
            node: self.0.node.clone(),
            what,
        }
    }

    fn node_err(&self, what: &str) -> impl FnOnce(crate::node::NodeError) -> FaultError {
        let node = self.0.node.clone();
        let what = what.to_string();
        move |source| FaultError::Node {
            fault: NAME,
            node,
            what,
            source: Box::new(source),
        }
    }

    /// Starts plant-sockhash for `ports` on `side` and waits for its `planted` line. The
    /// process (holding the decoy) is returned running.
    fn plant(
        &self,
        live: &Live,
        cn: &ClusterNode,
        node_addr: std::net::Ipv4Addr,
        server: SocketAddrV4,
        side: Side,
        ports: std::ops::Range<u16>,
    ) -> Result<(Box<dyn Process>, PathBuf, Planted), FaultError> {
        let map = obs::map_path(cn).display().to_string();
        let mut argv = vec![
            cn.dp_probe.display().to_string(),
            "plant-sockhash".into(),
            "--map".into(),
            map,
            "--key-for".into(),
            side.key_for().into(),
            "--server".into(),
            server.to_string(),
        ];
        for p in ports {
            argv.push("--client".into());
            argv.push(SocketAddrV4::new(node_addr, p).to_string());
        }
        let out = cn
            .work_dir
            .join(format!("sockmap-leak-plant-{}.out", side.as_str()));
        let err = cn
            .work_dir
            .join(format!("sockmap-leak-plant-{}.err", side.as_str()));
        let mut proc = cn
            .node
            .spawn(&SpawnSpec {
                argv: argv.clone(),
                stdout: out.clone(),
                stderr: err.clone(),
                env: Vec::new(),
            })
            .map_err(self.node_err("starting plant-sockhash"))?;
        let deadline = Instant::now() + PLANT_TIMEOUT;
        loop {
            let text = cn.node.read_file(&out).unwrap_or_default();
            if let Some(p) = planted_line(&String::from_utf8_lossy(&text)) {
                return match p {
                    Ok(p) => Ok((proc, out, p)),
                    Err(e) => {
                        let _ = proc.kill(libc::SIGKILL);
                        let _ = proc.wait_timeout(Duration::from_secs(5));
                        Err(self.not(e))
                    }
                };
            }
            let ended = proc
                .try_wait()
                .map_err(self.node_err("watching plant-sockhash"))?;
            if ended.is_some() || Instant::now() >= deadline {
                let stderr = cn.node.read_file(&err).unwrap_or_default();
                if ended.is_none() {
                    let _ = proc.kill(libc::SIGKILL);
                    let _ = proc.wait_timeout(Duration::from_secs(5));
                }
                return Err(self.not(format!(
                    "`{}` planted nothing ({}): {}",
                    argv.join(" "),
                    ended
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| format!("no `planted` line within {PLANT_TIMEOUT:?}")),
                    String::from_utf8_lossy(&stderr).trim()
                )));
            }
            if !live.cancel.sleep(Duration::from_millis(50)) {
                let _ = proc.kill(libc::SIGKILL);
                let _ = proc.wait_timeout(Duration::from_secs(5));
                return Err(FaultError::Interrupted);
            }
        }
    }
}

impl SockmapLeak {
    fn inject(&self, live: &mut Live) -> Result<FaultRecord, FaultError> {
        let p = &self.0;
        let cn = live
            .cluster
            .node(&p.node)
            .cloned()
            .ok_or_else(|| self.not("no such node".into()))?;
        let pod = live
            .cluster
            .pod(&p.pod)
            .cloned()
            .ok_or_else(|| self.not(format!("no pod {}", p.pod)))?;
        if pod.node != p.node {
            return Err(self.not(format!("pod {} runs on {}, not here", pod.name, pod.node)));
        }
        if !live.accelerate {
            return Err(self.not(
                "the datapath was deployed without acceleration (`deploy: {accelerate: true}`): there is no sockhash traffic to leak into".into(),
            ));
        }
        let node_addr = cn
            .net
            .as_ref()
            .map(|n| n.addr)
            .ok_or_else(|| self.not("the provider gives no node address".into()))?;
        let server = SocketAddrV4::new(pod.ip, p.port);
        let mut rec = FaultRecord::default();
        let before = obs::accel_stats(&cn).map_err(|e| self.not(e.report()))?;

        // 1. Plant, server side then client side; the decoys stay open.
        let server_ports = p.base_port..p.base_port + p.server_keys;
        let client_ports = server_ports.end..server_ports.end + p.client_keys;
        let orphan_ports = p.churn_range().end..p.base_port + p.churn_ports;
        let mut planted = Vec::new();
        for (side, ports) in [
            (Side::Server, server_ports),
            (Side::Client, client_ports),
            (Side::Orphan, orphan_ports),
        ] {
            if ports.is_empty() {
                continue;
            }
            let (proc, log, got) = self.plant(live, &cn, node_addr, server, side, ports)?;
            // From here the decoy is the scenario's: stopped with the other processes.
            live.servers.push(Server {
                pod: format!("{NAME}-decoy-{}", side.as_str()),
                node: p.node.clone(),
                proc,
                log,
            });
            if let Some(k) = got.keys.iter().find(|k| k.cookie != k.decoy.cookie) {
                return Err(self.not(format!(
                    "plant-sockhash read back cookie {} for {} -> {}, not its decoy's {}",
                    k.cookie, k.src, k.dst, k.decoy.cookie
                )));
            }
            rec.proof.push(format!(
                "{}: planted {} {}-side key(s){} in {}, each pointing at an established decoy and read back with its cookie: {}",
                p.node,
                got.keys.len(),
                side.key_for(),
                if side == Side::Orphan {
                    " on ports the churn never uses"
                } else {
                    ""
                },
                obs::map_path(&cn).display(),
                got.keys
                    .iter()
                    .map(|k| format!(
                        "{} -> {} = cookie {} (decoy {} -> {})",
                        k.src, k.dst, k.cookie, k.decoy.local, k.decoy.peer
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            planted.push(got);
        }

        // 2. A second look, independent of the planter: the kernel's own dump. The
        // planter's lookups already proved every key; a correct agent's garbage collector
        // may remove some before this dump (a key whose cookie names another socket goes
        // at once; on a slow node a collection round can fall in between), so a missing
        // key is recorded, not an error.
        let dump = obs::dump(&cn).map_err(|e| self.not(e.report()))?;
        let planted_n: usize = planted.iter().map(|p| p.keys.len()).sum();
        let missing: Vec<String> = planted.iter().flat_map(|p| not_in_dump(p, &dump)).collect();
        rec.proof.push(format!(
            "{}: bpftool map dump shows {} of {planted_n} planted key(s) with their decoys' cookies ({} key(s) in the map){}",
            p.node,
            planted_n - missing.len(),
            dump.len(),
            if missing.is_empty() {
                String::new()
            } else {
                format!(
                    "; already gone (collected by the agent): {}",
                    missing.join(", ")
                )
            }
        ));

        // 3. Churn at once, the planted ports first.
        let last = p.churn_range().end - 1;
        let argv: Vec<String> = vec![
            cn.dp_probe.display().to_string(),
            "churn".into(),
            "--to".into(),
            server.to_string(),
            "--count".into(),
            p.churn.to_string(),
            "--ports".into(),
            format!("{}-{last}", p.base_port),
            "--bind-ip".into(),
            node_addr.to_string(),
            "--timeout-ms".into(),
            CHURN_READ_TIMEOUT_MS.to_string(),
            "--cgroup".into(),
            cn.cgroup.display().to_string(),
        ];
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        // Every exchange may hang once for the read timeout; the rest are quick.
        let planted_uses = u64::from(p.server_keys + p.client_keys)
            * u64::from(p.churn.div_ceil(u32::from(p.churn_ports)));
        let limit = Duration::from_secs(120)
            + Duration::from_millis(planted_uses * 2 * CHURN_READ_TIMEOUT_MS);
        let out = cn
            .node
            .run(&args, limit)
            .map_err(self.node_err("running the churn"))?;
        let text = out.stdout_str();
        let line = text
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .ok_or_else(|| {
                self.not(format!(
                    "`{}` printed no summary ({}): {}",
                    argv.join(" "),
                    out.exit,
                    out.stderr_str().trim()
                ))
            })?;
        // A summary that does not read is a drifted dp-probe, never zero connections.
        let summary: ChurnSummary = serde_json::from_str(line)
            .map_err(|e| self.not(format!("`{}` printed `{line}`: {e}", argv.join(" "))))?;
        if summary.connections < p.churn {
            return Err(self.not(format!(
                "the churn made {} of {} connections: {summary:?}",
                summary.connections, p.churn
            )));
        }
        rec.proof.push(format!(
            "{}: churn of {} short connections {node_addr}:{}-{last} -> {server} in {} ms: {} answered, {} failed ({} hung: established and silent)",
            p.node,
            summary.connections,
            p.base_port,
            summary.elapsed_ms,
            summary.ok,
            summary.failed,
            summary.hung
        ));
        for f in summary.failures.iter().take(5) {
            rec.proof.push(format!("{}: churn failure: {f}", p.node));
        }
        let after = obs::accel_stats(&cn).map_err(|e| self.not(e.report()))?;
        rec.proof.push(format!(
            "{}: dp_accel_stats (bpftool) during the fault: {}",
            p.node,
            obs::stats_delta(&before, &after)
        ));

        // 4. What is left of the planted keys (the checks judge it; this is the record).
        let dump = obs::dump(&cn).map_err(|e| self.not(e.report()))?;
        let left: Vec<String> = planted
            .iter()
            .flat_map(|pl| pl.keys.iter().filter(|k| in_dump(k, &dump)))
            .map(|k| format!("{} -> {}", k.src, k.dst))
            .collect();
        rec.proof.push(format!(
            "{}: after the churn {} planted key(s) still point at a decoy{}{} ({} key(s) in the map)",
            p.node,
            left.len(),
            if left.is_empty() { "" } else { ": " },
            left.join(", "),
            dump.len()
        ));
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_planted_line_is_parsed_and_checked_against_the_dump() {
        let out = "planted {\"map\":\"/m\",\"key_for\":\"server\",\"keys\":[{\"family\":\"ipv4\",\"src\":\"10.244.1.2:8080\",\"dst\":\"172.31.0.1:20000\",\"cookie\":7,\"decoy\":{\"local\":\"127.0.0.1:1\",\"peer\":\"127.0.0.1:2\",\"cookie\":7}}],\"decoy\":{\"local\":\"127.0.0.1:1\",\"peer\":\"127.0.0.1:2\",\"cookie\":7}}\n";
        let p = planted_line(out).expect("a line").expect("parses");
        assert_eq!(p.keys.len(), 1);
        let key = Tuple {
            src: "10.244.1.2:8080".parse().unwrap(),
            dst: "172.31.0.1:20000".parse().unwrap(),
        };
        assert!(not_in_dump(&p, &[(key, 7)]).is_empty());
        assert_eq!(
            not_in_dump(&p, &[(key, 8)]),
            vec!["10.244.1.2:8080 -> 172.31.0.1:20000".to_string()]
        );
        assert!(planted_line("nothing\n").is_none());
        assert!(planted_line("planted {oops\n").expect("a line").is_err());
    }
}
