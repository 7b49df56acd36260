//! map-pressure: a foreign writer (`dp-probe fill-map`, run on the node; not the agent)
//! fills the node's service maps (dp_backends, dp_slots, dp_services) with entries no real
//! service uses, until the kernel refuses one more; then a service change that needs room
//! in them (a copy of a seeded TCP service under a new VIP) is written to every node. The
//! agent must refuse that change alone and keep serving what it has (the `during`
//! invariants judge that), report the pressure (the proof waits for `status --json` to
//! name the refused service), and converge once the pressure is gone.
//!
//! Proved by the kernel refusing one more insert into each map (E2BIG), with the map's
//! max_entries read from bpftool. The heal deletes exactly the foreign keys (`dp-probe
//! clear-map`: those already gone are counted, nothing else is touched), waits (bounded)
//! for the agent to program the refused service, and writes the services back as they
//! were. The agent deleting foreign entries itself (it owns those maps: its reconcile
//! removes what it does not want) is allowed and said in the heal's proof.
//!
//! When the deployment accelerates, dp_sockhash is filled too: its values are sockets, so
//! the foreign writer is a process (`dp-probe fill-sockhash`) that opens established
//! loopback connections on the node and puts each socket under its own tuple (live to any
//! collector) until the kernel refuses one more; suites keep the map small
//! (`deploy.max-sockhash`). The agent must report it (status `problems`) and connections
//! keep working unaccelerated; the heal stops the process, and the kernel drops a closed
//! socket's entries itself.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;

use super::{Fault, FaultError, Heal, PlanContext, Site, Started};
use crate::cluster::service::{self, ServiceState};
use crate::live::Live;
use crate::node::Node;
use crate::provider::Machines;
use crate::suite::{FaultStep, Protocol, Scenario, Suite};

const NAME: &str = "map-pressure";
const CMD: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
/// How long the start waits for the agent to report the refused change, and the heal for
/// it to program that change once there is room (its retry period is 5 s).
const REACT_WITHIN: Duration = Duration::from_secs(15);

/// The maps filled, in this order: each with the kind dp-probe encodes its entries as.
const MAPS: [(&str, &str); 3] = [
    ("dp_backends", "backends"),
    ("dp_slots", "slots"),
    ("dp_services", "services"),
];

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapPressure {
    /// The node whose maps are filled (from the seed when the step names none).
    pub node: String,
    /// The first foreign service and backend id: far above the agent's, which count from 1.
    pub first_id: u32,
    /// The foreign entries' port (their addresses are in 198.18.0.0/15).
    pub port: u16,
    /// The TCP service copied under `new_vip`: the change that cannot fit.
    pub service: String,
    pub new_vip: std::net::Ipv4Addr,
}

impl Fault for MapPressure {
    const NAME: &'static str = NAME;
    const ABOUT: &'static str =
        "a foreign writer fills a node's service maps to their limit; a new service must be refused alone";

    fn validate(suite: &Suite, _scenario: &Scenario, _step: &FaultStep) -> Result<(), String> {
        if !suite.services.iter().any(|s| s.protocol == Protocol::Tcp) {
            return Err("map-pressure copies a TCP service: the suite has none".into());
        }
        Ok(())
    }

    fn plan(cx: &mut PlanContext<'_>, step: &FaultStep) -> Self {
        let node = cx.node(step);
        let tcp: Vec<&str> = cx
            .suite
            .services
            .iter()
            .filter(|s| s.protocol == Protocol::Tcp)
            .map(|s| s.name.as_str())
            .collect();
        let service = tcp[cx.rng.random_range(0..tcp.len().max(1))].to_string();
        let taken: Vec<std::net::Ipv4Addr> = cx.suite.services.iter().map(|s| s.vip).collect();
        let mut last = cx.rng.random_range(1..255u8);
        while taken.contains(&std::net::Ipv4Addr::new(10, 96, 255, last)) {
            last = last % 254 + 1;
        }
        MapPressure {
            node,
            first_id: 0x4000_0000 + cx.rng.random_range(0..0x0100_0000),
            port: cx.rng.random_range(1024..65000),
            service,
            new_vip: std::net::Ipv4Addr::new(10, 96, 255, last),
        }
    }

    fn describe(&self) -> String {
        format!(
            "node={} first-id={:#x} port={} change=copy of {} at {}",
            self.node, self.first_id, self.port, self.service, self.new_vip
        )
    }

    fn start<'m>(
        &self,
        live: &mut Live,
        _machines: Option<&'m mut dyn Machines>,
    ) -> Result<Started<'m>, FaultError> {
        let node = self.node.clone();
        let site = Site::new(NAME, &node);
        let cn = site.cluster_node(live)?;
        let n: Arc<dyn Node> = cn.node.clone();
        let copied = live
            .services
            .iter()
            .find(|s| s.name == self.service)
            .cloned()
            .ok_or_else(|| site.not_proved(format!("no service {}", self.service)))?;
        let change = ServiceState {
            name: format!("{}-pressure", copied.name),
            vip: self.new_vip,
            ..copied
        };

        // The guard first: whatever fails from here, the foreign keys go and the services
        // are written back as they were.
        let before = service::to_yaml(&live.services, &live.cluster.pods);
        let mut with_change = live.services.clone();
        with_change.push(change.clone());
        let after = service::to_yaml(&with_change, &live.cluster.pods);
        let files: Vec<(Arc<dyn Node>, PathBuf)> = live
            .cluster
            .nodes
            .iter()
            .map(|c| (c.node.clone(), c.services_dir.join("services.yaml")))
            .collect();
        let filled = Arc::new(std::sync::Mutex::new(Vec::<Filled>::new()));
        let filler = Arc::new(std::sync::Mutex::new(None::<SockhashFiller>));
        let writer = Writer {
            node: node.clone(),
            n: n.clone(),
            dp_probe: cn.dp_probe.clone(),
            datapathd: cn.datapathd.clone(),
            bpffs: cn.bpffs.clone(),
            first_id: self.first_id,
            port: self.port,
        };
        let heal = {
            let (writer, filled, files, cancel) = (
                writer.clone(),
                filled.clone(),
                files.clone(),
                live.cancel.clone(),
            );
            let change = change.clone();
            let filler = filler.clone();
            Heal::with(NAME, move || {
                let filler = filler.lock().ok().and_then(|mut f| f.take());
                let mut proof = match filler {
                    Some(f) => vec![f.stop()?],
                    None => Vec::new(),
                };
                let filled = filled.lock().map(|f| f.clone()).unwrap_or_default();
                proof.extend(heal(
                    &writer,
                    &filled,
                    &change,
                    &files,
                    before.as_bytes(),
                    &cancel,
                )?);
                Ok(proof)
            })
        };

        // 1. Fill each map until the kernel refuses one more.
        let mut proof = Vec::new();
        for (map, kind) in MAPS {
            let max_entries = writer.max_entries(map)?;
            let f = writer.fill(map, kind, max_entries)?;
            proof.push(format!(
                "{map} on {node} (max_entries {max_entries}, bpftool): {} foreign entries \
                 written{}; the kernel refuses one more: {}",
                f.inserted,
                if f.present > 0 {
                    format!(" ({} were there already)", f.present)
                } else {
                    String::new()
                },
                f.refusal
            ));
            if let Ok(mut v) = filled.lock() {
                v.push(f);
            }
        }

        // 1b. With acceleration, the sockhash: a process holding real sockets.
        if live.accelerate {
            let (f, line) = writer.fill_sockhash(&cn)?;
            proof.push(line);
            let status = writer.status()?;
            proof.push(match sockhash_full_line(&status) {
                Some(l) => format!("the agent on {node} reports: {l}"),
                None => format!(
                    "the agent on {node} does not report the full dp_sockhash (status --json \
                     `problems`)"
                ),
            });
            if let Ok(mut slot) = filler.lock() {
                *slot = Some(f);
            }
        }

        // 2. The change that cannot fit, on every node (only this one is full).
        for (fnode, path) in &files {
            fnode
                .write_file(path, after.as_bytes(), 0o644)
                .map_err(|source| FaultError::Node {
                    fault: NAME,
                    node: fnode.name().to_owned(),
                    what: "writing the services with the new one".into(),
                    source: Box::new(source),
                })?;
        }

        // 3. The agent's answer: the change refused, by name, in its status.
        let started = Instant::now();
        let wanted = format!("service {}:{}/tcp", change.vip, change.port);
        let mut seen = None;
        while started.elapsed() < REACT_WITHIN && !live.cancel.is_cancelled() {
            let status = writer.status()?;
            if let Some(line) = refused_line(&status, &wanted) {
                seen = Some(line);
                break;
            }
            live.cancel.sleep(POLL);
        }
        proof.push(match seen {
            Some(line) => format!(
                "wrote service {} ({}:{}, a copy of {}) to every node; {:.1} s later the agent \
                 on {node} reports: {line}",
                change.name,
                change.vip,
                change.port,
                self.service,
                started.elapsed().as_secs_f64()
            ),
            None => format!(
                "wrote service {} ({}:{}) to every node; the agent on {node} did not report \
                 it refused within {} s (status --json `pressure`)",
                change.name,
                change.vip,
                change.port,
                REACT_WITHIN.as_secs()
            ),
        });
        Ok(Started { proof, heal })
    }
}

/// One map filled: what the heal must delete.
#[derive(Debug, Clone)]
struct Filled {
    map: &'static str,
    kind: &'static str,
    /// Foreign keys 0 .. count were written (or found) by the fill.
    count: u32,
    inserted: u32,
    present: u32,
    refusal: String,
}

/// The foreign writer and the reads the fault makes on the node.
#[derive(Clone)]
struct Writer {
    node: String,
    n: Arc<dyn Node>,
    dp_probe: PathBuf,
    datapathd: PathBuf,
    bpffs: PathBuf,
    first_id: u32,
    port: u16,
}

impl Writer {
    fn run(&self, argv: &[String], what: &str) -> Result<crate::node::Output, FaultError> {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.n.run(&argv, CMD).map_err(|source| FaultError::Node {
            fault: NAME,
            node: self.node.clone(),
            what: what.into(),
            source: Box::new(source),
        })
    }

    fn not(&self, what: String) -> FaultError {
        FaultError::NotProved {
            fault: NAME,
            node: self.node.clone(),
            what,
        }
    }

    fn pin(&self, map: &str) -> String {
        self.bpffs.join("maps").join(map).display().to_string()
    }

    /// The map's max_entries, as the kernel has it (bpftool, through observe/).
    fn max_entries(&self, map: &str) -> Result<u32, FaultError> {
        crate::observe::bpf::max_entries(self.n.as_ref(), &self.pin(map))
            .map_err(|e| self.not(format!("reading {map}'s size: {}", e.report())))
    }

    fn fill(
        &self,
        map: &'static str,
        kind: &'static str,
        max_entries: u32,
    ) -> Result<Filled, FaultError> {
        let out = self.run(
            &[
                self.dp_probe.display().to_string(),
                "fill-map".into(),
                "--map".into(),
                self.pin(map),
                "--kind".into(),
                kind.into(),
                "--first".into(),
                self.first_id.to_string(),
                "--port".into(),
                self.port.to_string(),
                "--limit".into(),
                (max_entries.saturating_add(1)).to_string(),
            ],
            "filling the map (dp-probe fill-map)",
        )?;
        let text = out.stdout_str();
        let r: dp_wire::MapFilled = serde_json::from_str(text.trim()).map_err(|e| {
            self.not(format!(
                "dp-probe fill-map {map} printed what does not read ({e}): {} {}",
                text.trim(),
                out.stderr_str().trim()
            ))
        })?;
        let filled = Filled {
            map,
            kind,
            count: r.inserted + r.present,
            inserted: r.inserted,
            present: r.present,
            refusal: r.error.clone().unwrap_or_default(),
        };
        if r.refused_errno != Some(E2BIG) {
            // Still cleared by the heal: what it wrote is recorded by the caller only on
            // success, so clear it here.
            let _ = self.clear(&filled);
            return Err(self.not(format!(
                "{map} is not full after {} foreign inserts (max_entries {max_entries}): {}",
                r.inserted,
                r.error.as_deref().unwrap_or("the kernel refused none")
            )));
        }
        Ok(filled)
    }

    fn clear(&self, f: &Filled) -> Result<dp_wire::MapCleared, FaultError> {
        let out = self.run(
            &[
                self.dp_probe.display().to_string(),
                "clear-map".into(),
                "--map".into(),
                self.pin(f.map),
                "--kind".into(),
                f.kind.into(),
                "--first".into(),
                self.first_id.to_string(),
                "--port".into(),
                self.port.to_string(),
                "--count".into(),
                f.count.to_string(),
            ],
            "deleting the foreign entries (dp-probe clear-map)",
        )?;
        let text = out.stdout_str();
        let r: dp_wire::MapCleared = serde_json::from_str(text.trim()).map_err(|e| {
            self.not(format!(
                "dp-probe clear-map {} printed what does not read ({e}): {} {}",
                f.map,
                text.trim(),
                out.stderr_str().trim()
            ))
        })?;
        match &r.error {
            Some(e) => Err(self.not(format!("clearing {}: {e}", f.map))),
            None => Ok(r),
        }
    }

    /// `datapathd status --json` on the node, as JSON.
    fn status(&self) -> Result<serde_json::Value, FaultError> {
        let out = self.run(
            &[
                self.datapathd.display().to_string(),
                "status".into(),
                "--json".into(),
                "--bpffs".into(),
                self.bpffs.display().to_string(),
            ],
            "reading the agent's status",
        )?;
        serde_json::from_str(&out.stdout_str()).map_err(|e| {
            self.not(format!(
                "datapathd status --json does not read ({e}): {}",
                out.stderr_str().trim()
            ))
        })
    }
}

const E2BIG: i32 = 7;

/// The running `dp-probe fill-sockhash`: its sockets are the foreign entries.
struct SockhashFiller {
    node: String,
    proc: Box<dyn crate::node::Process>,
    inserted: u32,
}

impl SockhashFiller {
    /// Stops the process (SIGTERM; its sockets close and the kernel drops their entries).
    fn stop(mut self) -> Result<String, FaultError> {
        let node_err = |source: crate::node::NodeError| FaultError::Node {
            fault: NAME,
            node: self.node.clone(),
            what: "stopping dp-probe fill-sockhash".into(),
            source: Box::new(source),
        };
        self.proc.kill(libc::SIGTERM).map_err(node_err)?;
        let exit = self
            .proc
            .wait_timeout(Duration::from_secs(10))
            .map_err(node_err)?;
        if exit.is_none() {
            self.proc.kill(libc::SIGKILL).map_err(node_err)?;
            self.proc
                .wait_timeout(Duration::from_secs(10))
                .map_err(node_err)?;
        }
        Ok(format!(
            "dp_sockhash on {}: stopped the filler (pid {}); its {} sockets closed, so the \
             kernel dropped their entries",
            self.node,
            self.proc.pid(),
            self.inserted
        ))
    }
}

impl Writer {
    /// Starts `dp-probe fill-sockhash` on the node and waits for its summary: the map full
    /// (the kernel refused one more) while the process holds the sockets.
    fn fill_sockhash(
        &self,
        cn: &crate::cluster::ClusterNode,
    ) -> Result<(SockhashFiller, String), FaultError> {
        let pin = self.pin("dp_sockhash");
        let max_entries = self.max_entries("dp_sockhash")?;
        let out = cn.work_dir.join("fill-sockhash.out");
        let argv = vec![
            self.dp_probe.display().to_string(),
            "fill-sockhash".into(),
            "--map".into(),
            pin,
            "--limit".into(),
            max_entries.saturating_add(1).to_string(),
        ];
        let node_err = |what: &str, source: crate::node::NodeError| FaultError::Node {
            fault: NAME,
            node: self.node.clone(),
            what: what.into(),
            source: Box::new(source),
        };
        let mut proc = self
            .n
            .spawn(&crate::node::SpawnSpec {
                argv,
                stdout: out.clone(),
                stderr: cn.work_dir.join("fill-sockhash.err"),
                env: Vec::new(),
            })
            .map_err(|e| node_err("starting dp-probe fill-sockhash", e))?;
        // `holding` follows the summary once the map is full (dp-probe's pressure.rs).
        crate::node::wait_for_line(self.n.as_ref(), proc.as_mut(), &out, "holding", CMD)
            .map_err(|e| node_err("waiting for dp-probe fill-sockhash", e))?;
        let text = self.n.read_file(&out).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let summary = text.lines().next().unwrap_or_default();
        let parsed = serde_json::from_str::<dp_wire::SockhashFilled>(summary);
        let mut filler = SockhashFiller {
            node: self.node.clone(),
            proc,
            inserted: 0,
        };
        // The summary is read even when the process ended first (a fill that failed).
        let r = match parsed {
            Ok(r) => r,
            Err(e) => {
                let _ = filler.stop();
                return Err(self.not(format!(
                    "dp-probe fill-sockhash printed what does not read ({e}): {}",
                    text.trim()
                )));
            }
        };
        filler.inserted = r.inserted;
        if r.refused_errno != Some(E2BIG) {
            let _ = filler.stop();
            return Err(self.not(format!(
                "dp_sockhash is not full after {} foreign sockets (max_entries {max_entries}): {}",
                r.inserted,
                r.error.as_deref().unwrap_or("the kernel refused none")
            )));
        }
        let line = format!(
            "dp_sockhash on {} (max_entries {max_entries}, bpftool): {} foreign sockets' keys \
             written by a process holding {} established loopback sockets; the kernel refuses \
             one more: {}",
            self.node,
            r.inserted,
            r.sockets,
            r.error.unwrap_or_default()
        );
        Ok((filler, line))
    }
}

/// The agent's own line about a full dp_sockhash, from its status's `problems`.
fn sockhash_full_line(status: &serde_json::Value) -> Option<String> {
    status
        .get("problems")?
        .as_array()?
        .iter()
        .filter_map(|p| p.as_str())
        .find(|p| p.contains("dp_sockhash is full"))
        .map(str::to_owned)
}

/// The agent's line about the refused service `wanted` ("service ADDR:PORT/tcp"), when its
/// status's pressure record has it.
fn refused_line(status: &serde_json::Value, wanted: &str) -> Option<String> {
    let p = status.get("pressure")?;
    let full: Vec<&str> = p
        .get("full")?
        .as_array()?
        .iter()
        .filter_map(|f| f.get("map")?.as_str())
        .collect();
    let line = p
        .get("refused")?
        .as_array()?
        .iter()
        .filter_map(|r| r.as_str())
        .find(|r| r.starts_with(&format!("{wanted}:")))?;
    let since = p.get("since")?.as_u64()?;
    Some(format!(
        "{} full since {since} (unix s): {line}",
        full.join(", ")
    ))
}

/// Whether the agent's status shows `change` programmed with all its backends.
fn programmed(status: &serde_json::Value, change: &ServiceState) -> bool {
    let vip = change.vip.to_string();
    status
        .get("services")
        .and_then(|s| s.as_array())
        .is_some_and(|services| {
            services.iter().any(|s| {
                s.get("address").and_then(|a| a.as_str()) == Some(vip.as_str())
                    && s.get("port").and_then(|p| p.as_u64()) == Some(u64::from(change.port))
                    && s.get("backend_count").and_then(|c| c.as_u64())
                        == Some(change.backends.len() as u64)
            })
        })
}

/// Deletes exactly the foreign keys, waits (bounded) for the agent to program the change
/// it refused, then writes the services back as they were.
fn heal(
    w: &Writer,
    filled: &[Filled],
    change: &ServiceState,
    files: &[(Arc<dyn Node>, PathBuf)],
    before: &[u8],
    cancel: &crate::signal::Cancel,
) -> Result<Vec<String>, FaultError> {
    let mut proof = Vec::new();
    let mut failed = None;
    for f in filled {
        match w.clear(f) {
            Ok(r) => proof.push(format!(
                "{}: deleted the {} foreign entries still there{}",
                f.map,
                r.deleted,
                if r.absent > 0 {
                    format!(" ({} were gone already: the agent deleted them)", r.absent)
                } else {
                    String::new()
                }
            )),
            Err(e) => failed = Some(e),
        }
    }
    if !cancel.is_cancelled() && failed.is_none() {
        let started = Instant::now();
        let mut converged = false;
        while started.elapsed() < REACT_WITHIN && !cancel.is_cancelled() {
            match w.status() {
                Ok(s) if programmed(&s, change) => {
                    converged = true;
                    break;
                }
                Ok(_) => {}
                Err(_) if cancel.is_cancelled() => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
            cancel.sleep(POLL);
        }
        proof.push(if converged {
            format!(
                "the agent on {} programmed {} ({}:{}) {:.1} s after the foreign entries went",
                w.node,
                change.name,
                change.vip,
                change.port,
                started.elapsed().as_secs_f64()
            )
        } else {
            format!(
                "the agent on {} did not program {} ({}:{}) within {} s of the foreign entries going",
                w.node,
                change.name,
                change.vip,
                change.port,
                REACT_WITHIN.as_secs()
            )
        });
    }
    for (n, path) in files {
        if let Err(source) = n.write_file(path, before, 0o644) {
            failed.get_or_insert(FaultError::Node {
                fault: NAME,
                node: n.name().to_owned(),
                what: "writing the services back".into(),
                source: Box::new(source),
            });
        }
    }
    proof.push(format!(
        "services written back without {} on every node",
        change.name
    ));
    match failed {
        Some(e) => Err(e),
        None => Ok(proof),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_entries_reads_from_bpftool_map_show() {
        let text = r#"{"id":64978,"type":"hash","name":"dp_slots","flags":0,"bytes_key":8,"bytes_value":4,"max_entries":65536,"bytes_memlock":5243920,"frozen":0,"pinned":["/sys/fs/bpf/x/maps/dp_slots"]}"#;
        use crate::observe::bpf::parse_max_entries;
        assert_eq!(parse_max_entries(text).expect("reads"), 65536);
        assert!(parse_max_entries("Error: bpf obj get (/x): No such file").is_err());
    }

    #[test]
    fn the_refused_service_is_found_by_address_in_the_pressure_record() {
        let status = serde_json::json!({
            "pressure": {
                "since": 1700000000u64, "resolved_at": null,
                "full": [{"map": "dp_services", "used": 16384, "capacity": 16384}],
                "refused": ["service 10.96.255.7:80/tcp: change refused: it needs 1 more entries in dp_services, which holds 16384 of 16384; ..."],
                "refused_count": 1
            }
        });
        let line = refused_line(&status, "service 10.96.255.7:80/tcp").expect("found");
        assert!(
            line.starts_with("dp_services full since 1700000000"),
            "{line}"
        );
        assert!(refused_line(&status, "service 10.96.255.70:80/tcp").is_none());
        assert!(refused_line(&serde_json::json!({"pressure": null}), "x").is_none());
    }
}
