//! Real traffic as the judge's eyes: `dp-probe connect` from a pod (its netns and cgroup)
//! to pod servers, services and the external host; one JSON line per attempt, read as
//! dp-wire's [`Attempt`], strictly (a line the harness cannot read is a harness error).

use std::net::SocketAddrV4;
use std::time::Duration;

use dp_wire::Attempt;

use super::ObserveError;
use crate::cluster::service::ServiceState;
use crate::cluster::{Cluster, ClusterNode, ExternalHost, Pod};
use crate::node::Exit;
use crate::suite::Protocol;

/// A pod's server as a direct target: the first port of the first service it backs.
#[derive(Debug, Clone, PartialEq)]
pub struct PodServer {
    pub pod: String,
    pub node: String,
    pub addr: SocketAddrV4,
    pub proto: Protocol,
}

/// Every pod that runs a server (it backs a service), with one address of it.
pub fn pod_servers(cluster: &Cluster, services: &[ServiceState]) -> Vec<PodServer> {
    cluster
        .pods
        .iter()
        .filter_map(|p| {
            let s = services.iter().find(|s| s.backends.contains(&p.name))?;
            Some(PodServer {
                pod: p.name.clone(),
                node: p.node.clone(),
                addr: SocketAddrV4::new(p.ip, s.target_port),
                proto: s.protocol,
            })
        })
        .collect()
}

fn node_of<'c>(cluster: &'c Cluster, pod: &Pod) -> Result<&'c ClusterNode, ObserveError> {
    cluster.node(&pod.node).ok_or_else(|| {
        ObserveError::unavailable(&pod.node, format!("no such node (pod {})", pod.name))
    })
}

/// dp-probe's lines: one attempt each. A line that is not an [`Attempt`] (a field renamed,
/// added or missing) is unreadable, never a failed attempt.
pub fn parse_attempts(node: &str, command: &str, text: &str) -> Result<Vec<Attempt>, ObserveError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| ObserveError::unreadable(node, command, l, e)))
        .collect()
}

/// `connect` exits 1 when an attempt failed: its lines still say how. Anything else is
/// the probe not running.
fn attempts_of(
    node: &str,
    argv: &[String],
    out: &crate::node::Output,
) -> Result<Vec<Attempt>, ObserveError> {
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    if !matches!(out.exit, Exit::Code(0) | Exit::Code(1)) {
        return Err(ObserveError::failed(node, &args, out));
    }
    parse_attempts(node, &args.join(" "), &out.stdout_str())
}

/// Marks the start of one target's output in [`connect_each`]'s batch.
const MARK: &str = "== dp-pod-to-pod ";

/// One attempt from pod `from` to each of `to`, in one remote command; per target, what
/// `dp-probe` printed.
pub fn connect_each(
    cluster: &Cluster,
    from: &Pod,
    to: &[PodServer],
) -> Result<Vec<(PodServer, Vec<Attempt>)>, ObserveError> {
    let cn = node_of(cluster, from)?;
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
    argv.extend(
        to.iter()
            .map(|t| format!("{},{}", t.proto.as_str(), t.addr)),
    );
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = cn
        .node
        .run(&args, Duration::from_secs(30 + 5 * to.len() as u64))?;
    if !out.success() {
        return Err(ObserveError::failed(cn.name(), &args, &out));
    }
    split_by_target(cn.name(), &out.stdout_str(), to)
}

/// Splits [`connect_each`]'s output by target.
pub fn split_by_target(
    node: &str,
    text: &str,
    to: &[PodServer],
) -> Result<Vec<(PodServer, Vec<Attempt>)>, ObserveError> {
    const COMMAND: &str = "dp-probe connect (one per pod server)";
    let mut res: Vec<(PodServer, Vec<Attempt>)> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(t) = line.strip_prefix(MARK) {
            let t = to
                .iter()
                .find(|x| format!("{},{}", x.proto.as_str(), x.addr) == t.trim())
                .ok_or_else(|| {
                    ObserveError::unreadable(
                        node,
                        COMMAND,
                        line,
                        "output for a target not asked for",
                    )
                })?;
            res.push((t.clone(), Vec::new()));
        } else if let Some((_, a)) = res.last_mut() {
            a.extend(parse_attempts(node, COMMAND, line)?);
        }
    }
    Ok(res)
}

/// The `dp-probe connect` command line for one pod and service.
fn service_argv(cn: &ClusterNode, pod: &Pod, svc: &ServiceState, count: u32) -> Vec<String> {
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

/// `count` attempts from `pod` to each of `services` (one round trip to its node); one
/// result per service.
pub fn connect_services(
    cluster: &Cluster,
    pod: &Pod,
    services: &[ServiceState],
    count: u32,
) -> Result<Vec<Result<Vec<Attempt>, ObserveError>>, ObserveError> {
    let cn = node_of(cluster, pod)?;
    let argvs: Vec<Vec<String>> = services
        .iter()
        .map(|svc| service_argv(cn, pod, svc, count))
        .collect();
    let outs = cn.node.run_batch(&argvs, Duration::from_secs(60))?;
    Ok(argvs
        .iter()
        .zip(outs)
        .map(|(argv, out)| attempts_of(cn.name(), argv, &out))
        .collect())
}

/// `count` TCP attempts from `pod` (on its node) to the external host, each waiting up
/// to `timeout_ms`.
pub fn connect_external(
    cluster: &Cluster,
    pod: &Pod,
    ext: &ExternalHost,
    count: u32,
    timeout_ms: u32,
) -> Result<Vec<Attempt>, ObserveError> {
    let cn = node_of(cluster, pod)?;
    let argv: Vec<String> = [
        &cn.dp_probe.display().to_string(),
        "connect",
        "--to",
        &ext.addr.to_string(),
        "--proto",
        "tcp",
        "--payload",
        &format!("{}->{}", pod.name, ext.name),
        "--timeout-ms",
        &timeout_ms.to_string(),
        "--netns",
        &pod.netns.display().to_string(),
        "--count",
        &count.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = cn.node.run(&args, Duration::from_secs(120))?;
    attempts_of(cn.name(), &argv, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(pod: &str, node: &str, addr: &str) -> PodServer {
        PodServer {
            pod: pod.into(),
            node: node.into(),
            addr: addr.parse().unwrap(),
            proto: Protocol::Tcp,
        }
    }

    const REFUSED: &str = r#"{"ok":false,"proto":"tcp","to":"10.244.1.11:8080","peer":null,"local":null,"backend":null,"echo":null,"errno":111,"error":"connect: Connection refused","elapsed_us":80}"#;

    #[test]
    fn batch_output_splits_by_target() {
        let to = [
            server("web-b1", "node-b", "10.244.2.10:8080"),
            server("web-a1", "node-a", "10.244.1.11:8080"),
        ];
        let out = format!("{MARK}tcp,10.244.2.10:8080\n{MARK}tcp,10.244.1.11:8080\n{REFUSED}\n");
        let r = split_by_target("n", &out, &to).expect("splits");
        assert_eq!(r.len(), 2);
        assert!(r[0].1.is_empty());
        assert_eq!(r[1].1[0].errno, Some(111));
    }

    #[test]
    fn a_renamed_field_is_a_harness_error() {
        let to = [server("web-a1", "node-a", "10.244.1.11:8080")];
        let out = format!(
            "{MARK}tcp,10.244.1.11:8080\n{}\n",
            REFUSED.replace("\"errno\"", "\"err_no\"")
        );
        let e = split_by_target("node-a", &out, &to).expect_err("unreadable");
        assert!(e.is_harness_error());
        assert!(
            e.report().contains("unknown field `err_no`"),
            "{}",
            e.report()
        );
        let e = split_by_target("node-a", &format!("{MARK}tcp,10.0.0.1:1\n"), &to)
            .expect_err("unasked target");
        assert!(e.is_harness_error());
    }
}
