//! pod-to-external: every pod reaches the external host (outside the cluster, on the
//! underlay) over TCP with payload both ways, and the host sees the connection coming from
//! an address other than the pod's (the datapath's masquerade). Incident B shows here as
//! an attempt whose connect succeeded (peer and local known) and whose request then timed
//! out: established, then nothing.

use std::time::Duration;

use super::{merge, Context, Invariant, Judgement};
use crate::cluster::in_parallel;
use crate::cluster::{ExternalHost, Pod};
use crate::observe::features::KernelNeed;
use crate::suite::InvariantName;

pub const ATTEMPTS: u32 = 3;
/// Per attempt; a hung connection costs this much.
pub const TIMEOUT_MS: u32 = 3000;

pub const NAME: InvariantName = InvariantName::new("pod-to-external");
pub struct PodToExternal;

/// One attempt as `dp-probe connect` reports it (the fields this judge reads).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Attempt {
    #[serde(default)]
    pub ok: bool,
    #[serde(default)]
    pub peer: Option<String>,
    #[serde(default)]
    pub local: Option<String>,
    #[serde(default)]
    pub echo: Option<String>,
    #[serde(default)]
    pub seen_as: Option<String>,
    #[serde(default)]
    pub errno: Option<serde_json::Value>,
    #[serde(default)]
    pub error: Option<String>,
}

pub fn judge(pod: &Pod, ext: &ExternalHost, attempts: &[Attempt]) -> Judgement {
    if attempts.is_empty() {
        return Judgement::unknown(format!("{} -> {}: no attempt reported", pod.name, ext.name));
    }
    let mut bad = Vec::new();
    for (i, a) in attempts.iter().enumerate() {
        let what = format!(
            "{} ({}) -> {} ({}) attempt {}",
            pod.name,
            pod.ip,
            ext.name,
            ext.addr,
            i + 1
        );
        if !a.ok {
            let why = format!(
                "{} {}",
                a.errno.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                a.error.as_deref().unwrap_or("")
            );
            match (&a.local, &a.peer) {
                (Some(local), Some(peer)) => bad.push(format!(
                    "{what}: established as {local} -> {peer} but no payload came back ({})",
                    why.trim()
                )),
                _ => bad.push(format!("{what}: failed: {}", why.trim())),
            }
            continue;
        }
        let seen_ip = a
            .seen_as
            .as_deref()
            .and_then(|s| s.rsplit_once(':'))
            .map(|(ip, _)| ip);
        match seen_ip {
            Some(ip) if ip == pod.ip.to_string() => bad.push(format!(
                "{what}: the external host saw the pod's own address {ip}: not masqueraded"
            )),
            Some(_) => {}
            None => bad.push(format!(
                "{what}: the answer did not say which address the host saw"
            )),
        }
    }
    if bad.is_empty() {
        Judgement::pass(format!(
            "{} -> {}: {} answers with payload",
            pod.name,
            ext.name,
            attempts.len()
        ))
    } else {
        Judgement::fail(
            format!(
                "{} cannot reach the external host {} with payload",
                pod.name, ext.addr
            ),
            bad,
        )
    }
}

/// `count` attempts from `pod` (on its node) to the external host.
pub fn probe(
    ctx: &Context<'_>,
    pod: &Pod,
    ext: &ExternalHost,
    count: u32,
) -> Result<Vec<Attempt>, String> {
    let cn = ctx
        .cluster
        .node(&pod.node)
        .ok_or_else(|| format!("no node {}", pod.node))?;
    let probe = cn.dp_probe.display().to_string();
    let netns = pod.netns.display().to_string();
    let to = ext.addr.to_string();
    let payload = format!("{}->{}", pod.name, ext.name);
    let (count, timeout) = (count.to_string(), TIMEOUT_MS.to_string());
    let argv = [
        probe.as_str(),
        "connect",
        "--to",
        &to,
        "--proto",
        "tcp",
        "--payload",
        &payload,
        "--timeout-ms",
        &timeout,
        "--netns",
        &netns,
        "--count",
        &count,
    ];
    let out = cn
        .node
        .run(&argv, Duration::from_secs(120))
        .map_err(|e| e.to_string())?;
    if !matches!(
        out.exit,
        crate::node::Exit::Code(0) | crate::node::Exit::Code(1)
    ) {
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
        .map(|l| serde_json::from_str(l).map_err(|e| format!("dp-probe printed `{l}`: {e}")))
        .collect()
}

impl Invariant for PodToExternal {
    fn name(&self) -> InvariantName {
        NAME
    }

    fn about(&self) -> &'static str {
        "every pod reaches the external host with payload (masquerade)"
    }

    /// Pod traffic leaves through the BPF masquerade (tc), replies come back by redirect_neigh.
    fn needs(&self) -> &'static [KernelNeed] {
        &[
            KernelNeed::ProgType("sched_cls"),
            KernelNeed::Helper("sched_cls", "bpf_l4_csum_replace"),
            KernelNeed::Helper("sched_cls", "bpf_redirect_neigh"),
        ]
    }

    fn check(&self, ctx: &Context<'_>) -> Judgement {
        let Some(ext) = &ctx.cluster.external else {
            return Judgement::unknown(
                "the cluster has no external host (the provider did not bring one up)",
            );
        };
        let js = in_parallel(&ctx.cluster.pods, |pod| {
            match probe(ctx, pod, ext, ATTEMPTS) {
                Ok(a) => judge(pod, ext, &a),
                Err(e) => {
                    Judgement::unknown(format!("{} -> {}: cannot probe: {e}", pod.name, ext.name))
                }
            }
        });
        merge(&js)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Verdict;
    use super::*;

    fn pod() -> Pod {
        Pod {
            name: "client-a".into(),
            node: "node-a".into(),
            ip: "10.244.1.2".parse().unwrap(),
            netns: "/run/netns/p".into(),
            cgroup: "/sys/fs/cgroup/p".into(),
        }
    }
    fn ext() -> ExternalHost {
        ExternalHost {
            name: "external".into(),
            addr: "172.31.0.200:8080".parse().unwrap(),
            netns: "/run/netns/x".into(),
            on_host: None,
        }
    }
    fn parse(l: &str) -> Attempt {
        serde_json::from_str(l).unwrap()
    }

    #[test]
    fn masqueraded_answers_pass() {
        let a = parse(
            r#"{"ok":true,"peer":"172.31.0.200:8080","local":"10.244.1.2:40000","echo":"x","seen_as":"172.31.0.1:61234"}"#,
        );
        assert_eq!(judge(&pod(), &ext(), &[a]).verdict, Verdict::Pass);
    }

    #[test]
    fn established_then_hung_fails_with_the_signature() {
        let a = parse(
            r#"{"ok":false,"peer":"172.31.0.200:8080","local":"10.244.1.2:40000","errno":110,"error":"read: timed out"}"#,
        );
        let j = judge(&pod(), &ext(), &[a]);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.evidence.iter().any(|e| e.contains(
                "established as 10.244.1.2:40000 -> 172.31.0.200:8080 but no payload came back"
            )),
            "{:?}",
            j.evidence
        );
    }

    #[test]
    fn unmasqueraded_fails_and_nothing_is_unknown() {
        let a = parse(r#"{"ok":true,"seen_as":"10.244.1.2:40000"}"#);
        assert!(judge(&pod(), &ext(), &[a]).evidence[0].contains("not masqueraded"));
        assert_eq!(judge(&pod(), &ext(), &[]).verdict, Verdict::Unknown);
    }
}
