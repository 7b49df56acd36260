//! pod-to-pod: every pod reaches every other pod's server directly (no service address)
//! with payload, and the answer names that pod: across nodes this is the cluster network
//! and the pod CIDR routes; on one node, the node's own forwarding. One remote command
//! per pod probes all its targets (`dp-probe connect` once per target, from the pod's
//! netns and cgroup).

use std::time::Duration;

use super::service_connectivity::Attempt;
use super::{merge, Context, Invariant, Judgement};
use crate::cluster::service::ServiceState;
use crate::cluster::Cluster;
use crate::suite::InvariantName;

pub const NAME: InvariantName = InvariantName::new("pod-to-pod");
pub struct PodToPod;

/// A pod's server as a direct target: the first port of the first service it backs.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub pod: String,
    pub node: String,
    pub addr: String,
    pub proto: &'static str,
}

/// Every pod that runs a server (it backs a service), with one address of it.
pub fn targets(cluster: &Cluster, services: &[ServiceState]) -> Vec<Target> {
    cluster
        .pods
        .iter()
        .filter_map(|p| {
            let s = services.iter().find(|s| s.backends.contains(&p.name))?;
            Some(Target {
                pod: p.name.clone(),
                node: p.node.clone(),
                addr: format!("{}:{}", p.ip, s.target_port),
                proto: s.protocol.as_str(),
            })
        })
        .collect()
}

/// Marks the start of one target's output in the batch.
const MARK: &str = "== dp-pod-to-pod ";

/// Probes `to` from pod `from` (one attempt each, in one remote command). Returns, per
/// target, what `dp-probe` printed.
pub fn probe(
    ctx: &Context<'_>,
    from: &crate::cluster::Pod,
    to: &[Target],
) -> Result<Vec<(Target, Vec<Attempt>)>, String> {
    let cn = ctx
        .cluster
        .node(&from.node)
        .ok_or_else(|| format!("no node {}", from.node))?;
    let script = format!(
        "p=$1; ns=$2; cg=$3; me=$4; shift 4\n\
         for t in \"$@\"; do\n\
           echo \"{MARK}$t\"\n\
           \"$p\" connect --to \"${{t#*,}}\" --proto \"${{t%%,*}}\" --payload \"$me\" \
         --timeout-ms 2000 --netns \"$ns\" --cgroup \"$cg\" --count 1 || true\n\
         done\n"
    );
    let mut argv: Vec<String> = vec![
        "bash".into(),
        "-c".into(),
        script,
        "pod-to-pod".into(),
        cn.dp_probe.display().to_string(),
        from.netns.display().to_string(),
        from.cgroup.display().to_string(),
        format!("{}->pods", from.name),
    ];
    argv.extend(to.iter().map(|t| format!("{},{}", t.proto, t.addr)));
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = cn
        .node
        .run(&args, Duration::from_secs(30 + 5 * to.len() as u64))
        .map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!("{}: {}", out.exit, out.stderr_str().trim()));
    }
    parse(&out.stdout_str(), to)
}

/// Splits the batch's output by target.
fn parse(text: &str, to: &[Target]) -> Result<Vec<(Target, Vec<Attempt>)>, String> {
    let mut res: Vec<(Target, Vec<Attempt>)> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(t) = line.strip_prefix(MARK) {
            let t = to
                .iter()
                .find(|x| format!("{},{}", x.proto, x.addr) == t.trim())
                .ok_or_else(|| format!("output for an unknown target `{t}`"))?;
            res.push((t.clone(), Vec::new()));
        } else if let Some((_, a)) = res.last_mut() {
            a.push(
                serde_json::from_str(line)
                    .map_err(|e| format!("dp-probe printed `{line}`: {e}"))?,
            );
        }
    }
    Ok(res)
}

/// Pure judgement of one pod's probes.
pub fn judge(from: &str, results: &[(Target, Vec<Attempt>)], expected: usize) -> Judgement {
    let mut bad = Vec::new();
    for (t, attempts) in results {
        let what = format!("{from} -> {} ({}, {})", t.pod, t.addr, t.node);
        match attempts.first() {
            None => bad.push(format!("{what}: no attempt reported")),
            Some(a) if !a.ok => bad.push(format!(
                "{what}: failed: {} {}",
                a.errno.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                a.error.as_deref().unwrap_or("")
            )),
            Some(a) if a.backend.as_deref() != Some(t.pod.as_str()) => bad.push(format!(
                "{what}: answered by {} instead",
                a.backend.as_deref().unwrap_or("nobody")
            )),
            Some(_) => {}
        }
    }
    if results.len() != expected {
        return Judgement::unknown(format!(
            "{from}: {} of {expected} targets reported",
            results.len()
        ));
    }
    if bad.is_empty() {
        Judgement::pass(format!(
            "{from}: reaches all {expected} pod servers with payload"
        ))
    } else {
        Judgement::fail(format!("{from} cannot reach every pod"), bad)
    }
}

impl Invariant for PodToPod {
    fn name(&self) -> InvariantName {
        NAME
    }

    fn about(&self) -> &'static str {
        "every pod reaches every other pod's server directly, across nodes, with payload"
    }

    fn check(&self, ctx: &Context<'_>) -> Judgement {
        let all = targets(ctx.cluster, ctx.services);
        let nodes: std::collections::BTreeSet<&str> =
            ctx.cluster.pods.iter().map(|p| p.node.as_str()).collect();
        let js: Vec<Judgement> = std::thread::scope(|s| {
            let handles: Vec<_> = ctx
                .cluster
                .pods
                .iter()
                .map(|pod| {
                    let to: Vec<Target> =
                        all.iter().filter(|t| t.pod != pod.name).cloned().collect();
                    s.spawn(move || match probe(ctx, pod, &to) {
                        Ok(r) => judge(&pod.name, &r, to.len()),
                        Err(e) => Judgement::unknown(format!("{}: cannot probe: {e}", pod.name)),
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Judgement::unknown("a probe thread panicked"))
                })
                .collect()
        });
        let mut j = merge(&js);
        if j.verdict == super::Verdict::Pass {
            j.summary = format!(
                "{} pods reach {} pod servers on {} nodes with payload",
                ctx.cluster.pods.len(),
                all.len(),
                nodes.len()
            );
        }
        j
    }
}

#[cfg(test)]
mod tests {
    use super::super::Verdict;
    use super::*;

    fn t(pod: &str, node: &str, addr: &str) -> Target {
        Target {
            pod: pod.into(),
            node: node.into(),
            addr: addr.into(),
            proto: "tcp",
        }
    }

    #[test]
    fn batch_output_splits_by_target_and_judges() {
        let to = [
            t("web-b1", "node-b", "10.244.2.10:8080"),
            t("web-a1", "node-a", "10.244.1.11:8080"),
        ];
        let out = format!(
            "{MARK}tcp,10.244.2.10:8080\n{{\"ok\":true,\"backend\":\"web-b1\"}}\n\
             {MARK}tcp,10.244.1.11:8080\n{{\"ok\":false,\"errno\":\"ETIMEDOUT\",\"error\":\"connect\"}}\n"
        );
        let r = parse(&out, &to).expect("parses");
        assert_eq!(r.len(), 2);
        let j = judge("client-a", &r, 2);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.evidence[0].contains("client-a -> web-a1"),
            "{:?}",
            j.evidence
        );
        assert!(j.evidence[0].contains("ETIMEDOUT"));
        assert_eq!(judge("client-a", &r[..1], 1).verdict, Verdict::Pass);
        assert_eq!(judge("client-a", &r[..1], 2).verdict, Verdict::Unknown);
    }

    #[test]
    fn a_wrong_pod_answering_fails() {
        let to = [t("web-b1", "node-b", "10.244.2.10:8080")];
        let out = format!("{MARK}tcp,10.244.2.10:8080\n{{\"ok\":true,\"backend\":\"web-b2\"}}\n");
        let j = judge("c", &parse(&out, &to).unwrap(), 1);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(j.evidence[0].contains("answered by web-b2 instead"));
    }
}
