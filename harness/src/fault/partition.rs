//! partition: cuts the underlay between two seeded sets of nodes, both ways or one way,
//! for a seeded time, then heals. The cut is iptables DROP rules in the raw table of every
//! node of the cutting side (`side`), in a chain of its own (`DPH-PARTITION`) jumped to
//! first from PREROUTING (pods' and the link's packets) and OUTPUT (the node's own): they
//! match the other side's node addresses and pod CIDRs, so the harness's own connection to
//! a node (from another address) stays up, and one side's rules cut both ways (to and from
//! the other side) or one way (only towards it; a TCP handshake then fails either way,
//! its answers being dropped). The raw table is ours alone here: the datapath and
//! kube-proxy write filter and nat, and the heal removes exactly our chain and its jumps
//! (never a flush of a table). Rules inside a node's network namespace work on both
//! providers: a netns node's namespace and a VM alike.
//!
//! Proof: a pod of the cutting side reaches a TCP pod server of the other side before the
//! cut, and fails to during it; the heal is proved by the chain being gone and the same
//! probe getting through again.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::Rng;

use super::{Fault, FaultError, Heal, PlanContext, Started};
use crate::cluster::{ClusterNode, Pod};
use crate::live::Live;
use crate::observe::reach;
use crate::provider::Machines;
use crate::suite::{FaultStep, Scenario, Suite};

const NAME: &str = "partition";
/// Our chain in the raw table of a cutting node.
const CHAIN: &str = "DPH-PARTITION";
/// The built-in chains that jump to it: what arrives (from pods and the link) and what
/// the node itself sends.
const HOOKS: [&str; 2] = ["PREROUTING", "OUTPUT"];
/// A probe across the cut waits this long for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
const IPTABLES_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Nothing passes between the sides.
    Both,
    /// The cutting side's packets towards the other side are lost; the other side's
    /// arrive.
    OneWay,
}

/// Every decision of one partition.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    /// The cutting side: its nodes hold the rules.
    pub side: Vec<String>,
    /// The nodes cut off from it.
    pub other: Vec<String>,
    pub direction: Direction,
    /// How long the cut is held (the step's `during` checks run in it).
    pub hold_ms: u64,
}

impl Fault for Partition {
    const NAME: &'static str = NAME;
    const ABOUT: &'static str =
        "cuts the underlay between two sets of nodes (both ways or one way) for a while";

    fn validate(suite: &Suite, _scenario: &Scenario, _step: &FaultStep) -> Result<(), String> {
        if suite.topology.nodes.len() < 2 {
            return Err("a partition needs at least two nodes".into());
        }
        Ok(())
    }

    /// The step's node alone against the rest, or a seeded split; the direction and the
    /// hold from the seed.
    fn plan(cx: &mut PlanContext<'_>, step: &FaultStep) -> Self {
        let mut nodes: Vec<String> = cx
            .suite
            .topology
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect();
        let (side, other) = match &step.node {
            Some(n) => {
                let other = nodes.iter().filter(|x| *x != n).cloned().collect();
                (vec![n.clone()], other)
            }
            None => {
                nodes.shuffle(cx.rng);
                let k = cx.rng.random_range(1..nodes.len().max(2));
                let other = nodes.split_off(k.min(nodes.len()));
                (nodes, other)
            }
        };
        let direction = if cx.rng.random_bool(0.5) {
            Direction::Both
        } else {
            Direction::OneWay
        };
        Partition {
            side,
            other,
            direction,
            hold_ms: cx.rng.random_range(3000..8000),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} {} {} hold={}ms",
            self.side.join(","),
            match self.direction {
                Direction::Both => "<-/->",
                Direction::OneWay => "-/->",
            },
            self.other.join(","),
            self.hold_ms
        )
    }

    fn start<'m>(
        &self,
        live: &mut Live,
        _machines: Option<&'m mut dyn Machines>,
    ) -> Result<Started<'m>, FaultError> {
        let first = self.side.first().cloned().unwrap_or_default();
        let not = |node: &str, what: String| FaultError::NotProved {
            fault: NAME,
            node: node.to_owned(),
            what,
        };
        let cut_nodes: Vec<ClusterNode> = self
            .side
            .iter()
            .map(|n| {
                live.cluster
                    .node(n)
                    .cloned()
                    .ok_or_else(|| not(n, "no such node".into()))
            })
            .collect::<Result<_, _>>()?;
        // The other side's addresses: its nodes' and its pods'.
        let mut peers = Vec::new();
        for n in &self.other {
            let net = live
                .cluster
                .node(n)
                .and_then(|cn| cn.net.as_ref())
                .ok_or_else(|| not(n, "the provider gives no node address and pod CIDR".into()))?;
            peers.push(format!("{}/32", net.addr));
            peers.push(net.pod_cidr.clone());
        }
        let (from, to) = across(live, &self.side, &self.other).ok_or_else(|| {
            not(
                &first,
                "no pod on the cutting side and TCP pod server on the other side to prove \
                 the cut with"
                    .into(),
            )
        })?;
        let from_node = live
            .cluster
            .node(&from.node)
            .cloned()
            .ok_or_else(|| not(&from.node, "no such node".into()))?;
        let probe = |what: &str| {
            reach::tcp_once_on(&from_node, &from, to.addr, PROBE_TIMEOUT)
                .map_err(|e| not(&from.node, format!("{what}: {}", crate::errors::chain(&e))))
        };
        let before = probe("before the cut")?;
        if !before.ok {
            return Err(not(
                &from.node,
                format!(
                    "{} -> {} ({}) fails before the cut: {:?}",
                    from.name, to.pod, to.addr, before.error
                ),
            ));
        }

        let started = Instant::now();
        // The guard exists before the first rule, so a failure half-way removes what was
        // added (removing what is absent is not an error).
        let heal_nodes = cut_nodes.clone();
        let (heal_from, heal_to, heal_from_node) = (from.clone(), to.clone(), from_node.clone());
        let hold = Duration::from_millis(self.hold_ms);
        let cancel = live.cancel.clone();
        // Set once the cut is proved: a start that fails before that is undone at once.
        let proved = std::rc::Rc::new(std::cell::Cell::new(false));
        let heal_proved = proved.clone();
        let heal = Heal::with(NAME, move || {
            // Held for the planned time (the `during` checks ran in it), unless interrupted
            // or never proved.
            let held = heal_proved.get() && cancel.sleep(hold.saturating_sub(started.elapsed()));
            let mut proof = Vec::new();
            for cn in &heal_nodes {
                remove_cut(cn)?;
                let left = rules(cn)?;
                if left.is_some() {
                    return Err(FaultError::NotProved {
                        fault: NAME,
                        node: cn.name().to_owned(),
                        what: format!("chain {CHAIN} still in the raw table after the heal"),
                    });
                }
                proof.push(format!("no {CHAIN} in {}'s raw table", cn.name()));
            }
            let secs = started.elapsed().as_secs_f64();
            if !held {
                let why = if heal_proved.get() {
                    "interrupted"
                } else {
                    "the cut was never proved"
                };
                proof.push(format!(
                    "healed after {secs:.1} s ({why}); not probed across"
                ));
                return Ok(proof);
            }
            let after =
                reach::tcp_once_on(&heal_from_node, &heal_from, heal_to.addr, PROBE_TIMEOUT)
                    .map_err(|e| FaultError::NotProved {
                        fault: NAME,
                        node: heal_from.node.clone(),
                        what: format!("after the heal: {}", crate::errors::chain(&e)),
                    })?;
            if !after.ok {
                return Err(FaultError::NotProved {
                    fault: NAME,
                    node: heal_from.node.clone(),
                    what: format!(
                        "{} -> {} ({}) still fails after the heal: {} {}",
                        heal_from.name,
                        heal_to.pod,
                        heal_to.addr,
                        after.errno.map(|v| v.to_string()).unwrap_or_default(),
                        after.error.unwrap_or_default()
                    ),
                });
            }
            proof.push(format!(
                "healed after {secs:.1} s: {} -> {} ({}) answered in {:.1} ms",
                heal_from.name,
                heal_to.pod,
                heal_to.addr,
                after.elapsed_us as f64 / 1000.0
            ));
            Ok(proof)
        });

        let mut proof = Vec::new();
        for cn in &cut_nodes {
            add_cut(cn, &peers, self.direction)?;
            let listed = rules(cn)?.unwrap_or_default();
            let drops = listed.lines().filter(|l| l.contains("-j DROP")).count();
            let want = peers.len()
                * if self.direction == Direction::Both {
                    2
                } else {
                    1
                };
            if drops != want {
                return Err(not(
                    cn.name(),
                    format!("{drops} DROP rules in {CHAIN} instead of {want}: {listed}"),
                ));
            }
            proof.push(format!(
                "{}: {drops} DROP rules in raw {CHAIN} ({}) for {}",
                cn.name(),
                match self.direction {
                    Direction::Both => "to and from",
                    Direction::OneWay => "to",
                },
                peers.join(", ")
            ));
        }
        let during = probe("during the cut")?;
        if during.ok {
            return Err(not(
                &from.node,
                format!(
                    "{} -> {} ({}) still answers across the cut",
                    from.name, to.pod, to.addr
                ),
            ));
        }
        proof.push(format!(
            "{} -> {} ({}) fails across the cut: {} {} (before it: answered in {:.1} ms); \
             held {} ms",
            from.name,
            to.pod,
            to.addr,
            during.errno.map(|v| v.to_string()).unwrap_or_default(),
            during.error.as_deref().unwrap_or(""),
            before.elapsed_us as f64 / 1000.0,
            self.hold_ms
        ));
        proved.set(true);
        Ok(Started { proof, heal })
    }
}

/// A TCP pod server on the other side, and a pod on the cutting side to reach it from.
#[derive(Debug, Clone)]
struct Target {
    pod: String,
    addr: SocketAddrV4,
}

fn across(live: &Live, side: &[String], other: &[String]) -> Option<(Pod, Target)> {
    let from = live
        .cluster
        .pods
        .iter()
        .find(|p| side.contains(&p.node))?
        .clone();
    let to = live.cluster.pods.iter().find_map(|p| {
        if !other.contains(&p.node) {
            return None;
        }
        let svc = live
            .services
            .iter()
            .find(|s| s.protocol == crate::suite::Protocol::Tcp && s.backends.contains(&p.name))?;
        Some(Target {
            pod: p.name.clone(),
            addr: SocketAddrV4::new(p.ip, svc.target_port),
        })
    })?;
    Some((from, to))
}

fn iptables(cn: &ClusterNode, args: &[&str]) -> Result<crate::node::Output, FaultError> {
    let mut argv = vec!["iptables", "-w", "-t", "raw"];
    argv.extend_from_slice(args);
    cn.node
        .run(&argv, IPTABLES_TIMEOUT)
        .map_err(|source| FaultError::Node {
            fault: NAME,
            node: cn.name().to_owned(),
            what: format!("`{}`", argv.join(" ")),
            source: Box::new(source),
        })
}

/// Like [`iptables`], and a non-zero exit is an error too.
fn iptables_ok(cn: &ClusterNode, args: &[&str]) -> Result<(), FaultError> {
    let out = iptables(cn, args)?;
    if out.success() {
        return Ok(());
    }
    Err(FaultError::NotProved {
        fault: NAME,
        node: cn.name().to_owned(),
        what: format!(
            "`iptables -t raw {}` {}: {}",
            args.join(" "),
            out.exit,
            out.stderr_str().trim()
        ),
    })
}

fn add_cut(cn: &ClusterNode, peers: &[String], direction: Direction) -> Result<(), FaultError> {
    iptables_ok(cn, &["-N", CHAIN])?;
    for p in peers {
        iptables_ok(cn, &["-A", CHAIN, "-d", p, "-j", "DROP"])?;
        if direction == Direction::Both {
            iptables_ok(cn, &["-A", CHAIN, "-s", p, "-j", "DROP"])?;
        }
    }
    for hook in HOOKS {
        iptables_ok(cn, &["-I", hook, "1", "-j", CHAIN])?;
    }
    Ok(())
}

/// Removes our jumps and chain, whatever of them exists.
fn remove_cut(cn: &ClusterNode) -> Result<(), FaultError> {
    for hook in HOOKS {
        // A jump inserted twice (never by us, but) goes too.
        while iptables(cn, &["-D", hook, "-j", CHAIN])?.success() {}
    }
    if rules(cn)?.is_some() {
        iptables_ok(cn, &["-F", CHAIN])?;
        iptables_ok(cn, &["-X", CHAIN])?;
    }
    Ok(())
}

/// Our chain's rules as `iptables -S` lists them, `None` when the chain does not exist.
fn rules(cn: &ClusterNode) -> Result<Option<String>, FaultError> {
    let out = iptables(cn, &["-S", CHAIN])?;
    Ok(out.success().then(|| out.stdout_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn suite(nodes: &[&str]) -> Suite {
        let yaml = format!(
            "name: t\ndescription: t\ntopology:\n  nodes:\n{}services: []\nscenarios:\n  - name: s\n    description: s\n    steps:\n      - fault: {{name: noop}}\n",
            nodes
                .iter()
                .map(|n| format!("    - name: {n}\n      pods: []\n"))
                .collect::<String>()
        );
        serde_yaml::from_str(&yaml).expect("a test suite")
    }

    fn step(node: Option<&str>) -> FaultStep {
        FaultStep {
            name: crate::suite::FaultName::new(NAME),
            node: node.map(str::to_owned),
            during: Vec::new(),
            recover_within_s: None,
        }
    }

    #[test]
    fn plans_two_nonempty_sides_that_cover_every_node_once() {
        let s = suite(&["a", "b", "c", "d"]);
        let mut seen_one_way = false;
        for seed in 0..32 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut backends = Default::default();
            let mut cx = PlanContext {
                rng: &mut rng,
                suite: &s,
                backends: &mut backends,
            };
            let p = Partition::plan(&mut cx, &step(None));
            assert!(!p.side.is_empty() && !p.other.is_empty(), "{p:?}");
            let mut all: Vec<_> = p.side.iter().chain(&p.other).cloned().collect();
            all.sort();
            assert_eq!(all, ["a", "b", "c", "d"], "{p:?}");
            assert!((3000..8000).contains(&p.hold_ms));
            seen_one_way |= p.direction == Direction::OneWay;
        }
        assert!(seen_one_way, "32 seeds never chose a one-way cut");
    }

    #[test]
    fn a_named_node_is_cut_from_all_the_others() {
        let s = suite(&["a", "b", "c"]);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut backends = Default::default();
        let mut cx = PlanContext {
            rng: &mut rng,
            suite: &s,
            backends: &mut backends,
        };
        let p = Partition::plan(&mut cx, &step(Some("b")));
        assert_eq!(p.side, ["b"]);
        assert_eq!(p.other, ["a", "c"]);
    }

    #[test]
    fn one_node_cannot_be_partitioned() {
        let s = suite(&["a"]);
        let sc = s.scenarios[0].clone();
        let e = Partition::validate(&s, &sc, &step(None)).expect_err("one node");
        assert_eq!(e, "a partition needs at least two nodes");
    }
}
