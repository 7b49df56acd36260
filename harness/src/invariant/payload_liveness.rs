//! payload-liveness (incident C): every request over an accelerated connection gets its
//! answer within a bound (default 2 s). The observation is `dp-probe reqresp` run on the
//! node towards its local pods (`--timeout-ms` = the bound): a read that times out is a
//! hung request. A connection that is ESTABLISHED but answers nothing is a failure, never
//! a pass; a run that made no request at all is unknown.
//!
//! Not yet registered as an `Invariant` (see sockhash_keys_live.rs).

use super::Judgement;

pub const DEFAULT_BOUND_MS: u64 = 2000;

/// Judges one `dp-probe reqresp` summary (its JSON line).
pub fn judge(node: &str, target: &str, summary: &serde_json::Value, bound_ms: u64) -> Judgement {
    let n = |k: &str| summary[k].as_u64().unwrap_or(0);
    if n("requests") == 0 {
        return Judgement::unknown(format!(
            "node {node} -> {target}: no request was made (connect failures: {})",
            n("connect_failures")
        ));
    }
    let problems: Vec<String> = summary["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["hung"].as_u64().unwrap_or(0) > 0 || c["errors"].as_u64().unwrap_or(0) > 0)
        .map(|c| {
            format!(
                "node {node}: connection {} -> {} (cookie {}): {}",
                c["local"].as_str().unwrap_or("?"),
                c["peer"].as_str().unwrap_or("?"),
                c["cookie"],
                c["first_problem"].as_str().unwrap_or("?")
            )
        })
        .collect();
    if n("hung") == 0 && n("errors") == 0 && n("connect_failures") == 0 {
        Judgement::pass(format!(
            "node {node} -> {target}: {} request(s) answered within {bound_ms} ms",
            n("ok")
        ))
    } else {
        Judgement::fail(
            format!(
                "node {node} -> {target}: {} request(s) hung (no answer within {bound_ms} ms), {} error(s), {} connect failure(s)",
                n("hung"),
                n("errors"),
                n("connect_failures")
            ),
            problems,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariant::Verdict;

    #[test]
    fn hung_is_fail_and_nothing_is_unknown() {
        let hung = serde_json::json!({"requests":1,"ok":0,"hung":1,"errors":0,"connect_failures":0,
            "connections":[{"local":"127.0.0.1:40000","peer":"127.0.0.2:8080","cookie":5,"hung":1,"errors":0,
            "first_problem":"request tok: no answer within 1s (read timed out)"}]});
        let j = judge("n", "127.0.0.2:8080", &hung, 1000);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(j.evidence[0].contains("cookie 5"), "{:?}", j.evidence);
        let none = serde_json::json!({"requests":0,"connect_failures":1});
        assert_eq!(judge("n", "x", &none, 1000).verdict, Verdict::Unknown);
        let ok = serde_json::json!({"requests":3,"ok":3,"hung":0,"errors":0,"connect_failures":0});
        assert_eq!(judge("n", "x", &ok, 1000).verdict, Verdict::Pass);
    }
}
