//! The JSON lines dp-probe speaks: a server's answer, a client's record of one attempt and
//! the summary of `reqresp`. Declared once, for dp-probe (which prints them), the harness
//! and the datapath's tests (which read them).
//!
//! Reading is strict: an unknown field or a missing one is an error, never a default. A
//! changed wire format must read as a broken reader (a harness error), not as a probe that
//! failed (a false verdict). Optional values are printed as `null` and must be there.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// An `Option` field that must be present (possibly `null`). serde's derive would read a
/// missing `Option` field as `None`; going through `deserialize_with` makes it an error.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d)
}

/// What `serve` sends back for every request line (TCP) or datagram (UDP), as one line.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// The server's `--id`.
    pub backend: String,
    /// The address the request arrived at, as the server sees it.
    pub local: String,
    /// The client's address, as the server sees it.
    pub peer: String,
    /// The request, without its line ending.
    pub echo: String,
}

/// What `connect` prints for one attempt. Failures are data: `errno` and `error` say what
/// went wrong, and the fields that were learned before it went wrong are kept.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Attempt {
    /// An answer came back and echoed the request exactly.
    pub ok: bool,
    pub proto: String,
    /// The address the client was asked to reach.
    pub to: String,
    /// TCP: `getpeername()` after connect. UDP: the source address of the reply.
    #[serde(deserialize_with = "present")]
    pub peer: Option<String>,
    /// The client's own address (`getsockname()`).
    #[serde(deserialize_with = "present")]
    pub local: Option<String>,
    /// The answering backend's `--id`.
    #[serde(deserialize_with = "present")]
    pub backend: Option<String>,
    /// The request as the backend saw it.
    #[serde(deserialize_with = "present")]
    pub echo: Option<String>,
    /// The OS error number of the failed call; `ETIMEDOUT` for a deadline that passed.
    #[serde(deserialize_with = "present")]
    pub errno: Option<i32>,
    #[serde(deserialize_with = "present")]
    pub error: Option<String>,
    /// From the first call to the close, in microseconds.
    pub elapsed_us: u64,
    /// The client's address as the backend saw it (its answer's `peer`): shows a NAT on
    /// the way, e.g. the node's address after a masquerade. The one field dp-probe omits,
    /// when no answer came (its output has always done so); a renamed field is still an
    /// error (unknown field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_as: Option<String>,
}

/// One connection of `reqresp`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConnReport {
    pub local: String,
    pub peer: String,
    /// `SO_COOKIE`: the key datapath status and `ss -e` (`sk:` in hex) show.
    pub cookie: u64,
    pub requests: u32,
    pub ok: u32,
    pub hung: u32,
    pub cross_delivered: u32,
    pub errors: u32,
    /// The first problem on this connection (it is not used again after one).
    #[serde(deserialize_with = "present")]
    pub first_problem: Option<String>,
}

/// The one line `reqresp` prints at the end.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReqRespSummary {
    pub to: String,
    pub requests: u32,
    pub ok: u32,
    pub hung: u32,
    pub cross_delivered: u32,
    pub errors: u32,
    pub connect_failures: u32,
    pub elapsed_ms: u64,
    /// Answered requests per second over the whole run.
    pub rate_per_s: f64,
    /// Nearest-rank percentiles of answered requests, microseconds, by name (`p50`,
    /// `p99`, `max`); empty when nothing was answered.
    pub latency_us: BTreeMap<String, u64>,
    pub connections: Vec<ConnReport>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFUSED: &str = r#"{"ok":false,"proto":"tcp","to":"127.0.0.1:1","peer":null,"local":null,"backend":null,"echo":null,"errno":111,"error":"connect: Connection refused","elapsed_us":12}"#;

    #[test]
    fn attempt_prints_nulls_in_order_and_reads_back() {
        let a = Attempt {
            ok: false,
            proto: "tcp".into(),
            to: "127.0.0.1:1".into(),
            peer: None,
            local: None,
            backend: None,
            echo: None,
            errno: Some(111),
            error: Some("connect: Connection refused".into()),
            elapsed_us: 12,
            seen_as: None,
        };
        assert_eq!(serde_json::to_string(&a).expect("serializable"), REFUSED);
        assert_eq!(serde_json::from_str::<Attempt>(REFUSED).expect("reads"), a);
    }

    #[test]
    fn a_renamed_field_is_an_error_that_names_it() {
        let renamed = REFUSED.replace("\"ok\"", "\"okay\"");
        let e = serde_json::from_str::<Attempt>(&renamed).expect_err("unknown field");
        assert!(e.to_string().contains("unknown field `okay`"), "{e}");
    }

    #[test]
    fn a_missing_optional_field_is_an_error() {
        let missing = REFUSED.replace("\"peer\":null,", "");
        let e = serde_json::from_str::<Attempt>(&missing).expect_err("missing field");
        assert!(e.to_string().contains("missing field `peer`"), "{e}");
    }

    #[test]
    fn reqresp_summary_round_trips() {
        let line = r#"{"to":"10.244.1.2:8080","requests":2,"ok":2,"hung":0,"cross_delivered":0,"errors":0,"connect_failures":0,"elapsed_ms":3,"rate_per_s":666.5,"latency_us":{"max":120,"p50":90,"p99":120},"connections":[{"local":"172.31.0.1:40000","peer":"10.244.1.2:8080","cookie":4097,"requests":2,"ok":2,"hung":0,"cross_delivered":0,"errors":0,"first_problem":null}]}"#;
        let s: ReqRespSummary = serde_json::from_str(line).expect("reads");
        assert_eq!(s.connections[0].cookie, 4097);
        assert_eq!(serde_json::to_string(&s).expect("serializable"), line);
        let e = serde_json::from_str::<ReqRespSummary>(
            &line.replace("\"hung\":0,\"cross", "\"stuck\":0,\"cross"),
        )
        .expect_err("renamed");
        assert!(e.to_string().contains("stuck"), "{e}");
    }
}
