//! no-cross-delivery (incident C): bytes sent on a connection arrive on that connection.
//! Every `dp-probe reqresp` request carries a token unique to its connection and sequence
//! number; the server echoes what arrived on the same connection, so an answer echoing
//! another token means bytes crossed to another socket.
//!
//! Not yet registered as an `Invariant` (see sockhash_keys_live.rs).

use super::Judgement;

pub fn judge(node: &str, target: &str, summary: &serde_json::Value) -> Judgement {
    let crossed = summary["cross_delivered"].as_u64().unwrap_or(0);
    if summary["requests"].as_u64().unwrap_or(0) == 0 {
        return Judgement::unknown(format!("node {node} -> {target}: no request was made"));
    }
    if crossed == 0 {
        return Judgement::pass(format!(
            "node {node} -> {target}: every answer echoed its own connection's request"
        ));
    }
    let evidence = summary["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["cross_delivered"].as_u64().unwrap_or(0) > 0)
        .map(|c| {
            format!(
                "node {node}: connection {} -> {}: {}",
                c["local"].as_str().unwrap_or("?"),
                c["peer"].as_str().unwrap_or("?"),
                c["first_problem"].as_str().unwrap_or("?")
            )
        })
        .collect();
    Judgement::fail(
        format!("node {node} -> {target}: {crossed} answer(s) carried another connection's bytes"),
        evidence,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariant::Verdict;

    #[test]
    fn a_foreign_echo_fails() {
        let s = serde_json::json!({"requests":2,"cross_delivered":1,"connections":[
            {"local":"a","peer":"b","cross_delivered":1,"first_problem":"request tok-1-0-1: the answer echoed \"tok-1-1-0\""}]});
        let j = judge("n", "b", &s);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(j.evidence[0].contains("tok-1-1-0"));
        let ok = serde_json::json!({"requests":2,"cross_delivered":0});
        assert_eq!(judge("n", "b", &ok).verdict, Verdict::Pass);
    }
}
