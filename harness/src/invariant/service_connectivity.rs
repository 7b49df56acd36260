//! service-connectivity: every pod reaches every service with payload; the answer comes
//! from a backend the service has *now*; getpeername() (TCP) and the reply's source (UDP)
//! show the service address. Traffic is real: `dp-probe connect` from the pod's netns and
//! cgroup.

use std::time::Duration;

use super::{merge, Context, Invariant, Judgement};
use crate::cluster::service::ServiceState;
use crate::cluster::{in_parallel, ClusterNode, Pod};
use crate::node::Exit;
use crate::observe::features::KernelNeed;
use crate::suite::InvariantName;

/// Attempts per pod and service: several, because TCP picks a random slot.
pub const ATTEMPTS: u32 = 6;

pub const NAME: InvariantName = InvariantName::new("service-connectivity");
pub struct ServiceConnectivity;

/// One line of `dp-probe connect`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Attempt {
    #[serde(default)]
    pub ok: bool,
    #[serde(default)]
    pub peer: Option<String>,
    #[serde(default)]
    pub backend: Option<String>,
    /// A number or a name, as dp-probe reports it.
    #[serde(default)]
    pub errno: Option<serde_json::Value>,
    #[serde(default)]
    pub error: Option<String>,
    /// The whole attempt (connect, request, answer), in microseconds.
    #[serde(default)]
    pub elapsed_us: Option<u64>,
}

pub fn judge(pod: &str, svc: &ServiceState, attempts: &[Attempt]) -> Judgement {
    let mut bad = Vec::new();
    if attempts.is_empty() {
        return Judgement::unknown(format!("{pod} -> {}: no attempt reported", svc.name));
    }
    for (i, a) in attempts.iter().enumerate() {
        let what = format!("{pod} -> {} ({}) attempt {}", svc.name, svc.addr(), i + 1);
        if !a.ok {
            bad.push(format!(
                "{what}: failed: {} {}",
                a.errno.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                a.error.as_deref().unwrap_or("")
            ));
            continue;
        }
        match a.backend.as_deref() {
            Some(b) if svc.backends.iter().any(|x| x == b) => {}
            other => bad.push(format!(
                "{what}: answered by {} which is not a current backend (now: {})",
                other.unwrap_or("nobody"),
                svc.backends.join(", ")
            )),
        }
        if a.peer.as_deref() != Some(svc.addr().as_str()) {
            bad.push(format!(
                "{what}: peer address is {} instead of the service address",
                a.peer.as_deref().unwrap_or("unknown")
            ));
        }
    }
    if bad.is_empty() {
        Judgement::pass(format!(
            "{pod} -> {}: {} answers from live backends",
            svc.name,
            attempts.len()
        ))
    } else {
        Judgement::fail(
            format!("{pod} cannot reach {} through a live backend", svc.name),
            bad,
        )
    }
}

/// The `dp-probe connect` command line for one pod and service.
fn probe_argv(cn: &ClusterNode, pod: &Pod, svc: &ServiceState, count: u32) -> Vec<String> {
    [
        &cn.dp_probe.display().to_string(),
        "connect",
        "--to",
        &svc.addr(),
        "--proto",
        svc.protocol.as_str(),
        "--payload",
        &format!("{}->{}", pod.name, svc.name),
        "--timeout-ms",
        "2000",
        "--netns",
        &pod.netns.display().to_string(),
        "--cgroup",
        &pod.cgroup.display().to_string(),
        "--count",
        &count.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Probes every service from `pod` (one round trip to its node); one result per service.
pub fn probe_all(
    ctx: &Context<'_>,
    pod: &Pod,
    services: &[ServiceState],
    count: u32,
) -> Result<Vec<Result<Vec<Attempt>, String>>, String> {
    let cn = ctx
        .cluster
        .node(&pod.node)
        .ok_or_else(|| format!("no node {}", pod.node))?;
    let argvs: Vec<Vec<String>> = services
        .iter()
        .map(|svc| probe_argv(cn, pod, svc, count))
        .collect();
    let outs = cn
        .node
        .run_batch(&argvs, Duration::from_secs(60))
        .map_err(|e| e.to_string())?;
    Ok(argvs
        .iter()
        .zip(outs)
        .map(|(argv, out)| {
            // dp-probe exits 1 when an attempt failed: its lines still say how.
            if !matches!(out.exit, Exit::Code(0) | Exit::Code(1)) {
                return Err(format!(
                    "`{}` {}: {}",
                    argv.join(" "),
                    out.exit,
                    out.stderr_str().trim()
                ));
            }
            out.stdout_str()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    serde_json::from_str(l).map_err(|e| format!("dp-probe printed `{l}`: {e}"))
                })
                .collect()
        })
        .collect())
}

impl Invariant for ServiceConnectivity {
    fn name(&self) -> InvariantName {
        NAME
    }

    fn about(&self) -> &'static str {
        "every pod reaches every service (TCP and UDP) with payload, replies from the service address"
    }

    /// Socket-LB rewrites connect()/sendmsg() in cgroup sock_addr programs.
    fn needs(&self) -> &'static [KernelNeed] {
        &[KernelNeed::ProgType("cgroup_sock_addr")]
    }

    fn check(&self, ctx: &Context<'_>) -> Judgement {
        let per_pod = in_parallel(&ctx.cluster.pods, |pod| {
            match probe_all(ctx, pod, ctx.services, ATTEMPTS) {
                Ok(results) => ctx
                    .services
                    .iter()
                    .zip(results)
                    .map(|(svc, r)| match r {
                        Ok(a) => judge(&pod.name, svc, &a),
                        Err(e) => Judgement::unknown(format!(
                            "{} -> {}: cannot probe: {e}",
                            pod.name, svc.name
                        )),
                    })
                    .collect(),
                Err(e) => vec![Judgement::unknown(format!(
                    "{}: cannot probe its services: {e}",
                    pod.name
                ))],
            }
        });
        merge(&per_pod.into_iter().flatten().collect::<Vec<_>>())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Verdict;
    use super::*;
    use crate::suite::Protocol;

    fn svc() -> ServiceState {
        ServiceState {
            name: "web".into(),
            vip: "10.96.0.10".parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
            target_port: 8080,
            backends: vec!["web-a1".into(), "web-b1".into()],
        }
    }
    fn parse(l: &str) -> Attempt {
        serde_json::from_str(l).unwrap()
    }

    #[test]
    fn answers_from_live_backends_pass() {
        let a = parse(
            r#"{"ok":true,"proto":"tcp","to":"10.96.0.10:80","peer":"10.96.0.10:80","local":"10.244.1.2:40000","backend":"web-b1","echo":"x","errno":null,"error":null,"elapsed_us":300}"#,
        );
        assert_eq!(
            judge("client-a", &svc(), &[a.clone(), a]).verdict,
            Verdict::Pass
        );
    }

    #[test]
    fn a_removed_backend_answering_fails() {
        let a = parse(r#"{"ok":true,"peer":"10.96.0.10:80","backend":"web-a2"}"#);
        let j = judge("client-a", &svc(), &[a]);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.evidence[0].contains(
                "answered by web-a2 which is not a current backend (now: web-a1, web-b1)"
            ),
            "{:?}",
            j.evidence
        );
    }

    #[test]
    fn backend_address_as_peer_fails() {
        let a = parse(r#"{"ok":true,"peer":"10.244.1.3:8080","backend":"web-a1"}"#);
        let j = judge("c", &svc(), &[a]);
        assert!(j.evidence[0]
            .contains("peer address is 10.244.1.3:8080 instead of the service address"));
    }

    #[test]
    fn refused_fails_and_nothing_is_unknown() {
        let a = parse(r#"{"ok":false,"errno":"ECONNREFUSED","error":"connect"}"#);
        assert_eq!(judge("c", &svc(), &[a]).verdict, Verdict::Fail);
        assert_eq!(judge("c", &svc(), &[]).verdict, Verdict::Unknown);
    }
}
