//! The JSON lines dp-probe speaks: a server's answer, a client's record of one attempt,
//! the summaries of `reqresp` and `churn`, the keys `plant-sockhash` planted and the events
//! of a connection `hold` keeps. Declared once, for dp-probe (which prints them), the harness
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

/// The line `plant-sockhash` prints after `planted `: the stale keys it put in a pinned
/// sockhash, each pointing at an established decoy socket of its own.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Planted {
    pub map: String,
    /// Whose view of a connection the keys are written in (`server` or `client`).
    pub key_for: String,
    pub keys: Vec<PlantedKey>,
    /// The first key's decoy.
    pub decoy: Decoy,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PlantedKey {
    pub family: String,
    pub src: String,
    pub dst: String,
    /// What a lookup of the key returned after the update: its decoy's cookie.
    pub cookie: u64,
    /// The decoy this key points at.
    pub decoy: Decoy,
}

/// An established socket a planted key points at.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Decoy {
    pub local: String,
    pub peer: String,
    pub cookie: u64,
}

/// The one line `churn` prints at the end.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChurnSummary {
    pub to: String,
    pub connections: u32,
    pub ok: u32,
    pub failed: u32,
    /// Failures that were a read timing out: the connection was up, the answer never came.
    pub hung: u32,
    pub elapsed_ms: u64,
    /// The first failures (at most 20): local address and what went wrong.
    pub failures: Vec<String>,
}

/// One line of `hold`: a long-lived TCP connection, one request/answer every interval,
/// one line per event. `at_ms` is the node's wall clock (ms since the Unix epoch), so the
/// harness compares it with the node's own `date`, never with its own clock.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "lowercase", deny_unknown_fields)]
pub enum HoldEvent {
    /// Connected: the addresses as the client sees them (`getsockname`, `getpeername`).
    Opened {
        at_ms: u64,
        to: String,
        local: String,
        peer: String,
    },
    /// Request `seq` came back unchanged from `backend`, `rtt_us` after it was sent.
    Answered {
        at_ms: u64,
        seq: u64,
        backend: String,
        rtt_us: u64,
    },
    /// The connection ended (or never opened): what went wrong, on request `seq` (0: the
    /// connect). The last line; `hold` exits after it.
    Ended {
        at_ms: u64,
        seq: u64,
        #[serde(deserialize_with = "present")]
        errno: Option<i32>,
        error: String,
    },
}

impl HoldEvent {
    pub fn at_ms(&self) -> u64 {
        match self {
            HoldEvent::Opened { at_ms, .. }
            | HoldEvent::Answered { at_ms, .. }
            | HoldEvent::Ended { at_ms, .. } => *at_ms,
        }
    }
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
    fn churn_and_planted_lines_read_strictly() {
        let churn = r#"{"to":"10.244.1.2:8080","connections":3,"ok":2,"failed":1,"hung":1,"elapsed_ms":40,"failures":["172.31.0.1:20001: read timed out"]}"#;
        let c: ChurnSummary = serde_json::from_str(churn).expect("reads");
        assert_eq!((c.connections, c.hung), (3, 1));
        assert_eq!(serde_json::to_string(&c).expect("serializable"), churn);
        let e =
            serde_json::from_str::<ChurnSummary>(&churn.replace("\"connections\"", "\"conns\""))
                .expect_err("renamed");
        assert!(e.to_string().contains("conns"), "{e}");
        let planted = r#"{"map":"/sys/fs/bpf/x/dp_sockhash","key_for":"server","keys":[{"family":"inet","src":"10.244.1.2:8080","dst":"172.31.0.1:20000","cookie":7,"decoy":{"local":"127.0.0.1:1","peer":"127.0.0.1:2","cookie":7}}],"decoy":{"local":"127.0.0.1:1","peer":"127.0.0.1:2","cookie":7}}"#;
        let p: Planted = serde_json::from_str(planted).expect("reads");
        assert_eq!(p.keys[0].decoy.cookie, 7);
        assert!(serde_json::from_str::<Planted>(
            &planted.replace("\"map\":\"/sys/fs/bpf/x/dp_sockhash\",", "")
        )
        .is_err());
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

    #[test]
    fn hold_events_read_strictly() {
        let lines = [
            r#"{"event":"opened","at_ms":1000,"to":"10.96.0.10:80","local":"10.244.1.2:40000","peer":"10.96.0.10:80"}"#,
            r#"{"event":"answered","at_ms":1200,"seq":1,"backend":"web-b1","rtt_us":90}"#,
            r#"{"event":"ended","at_ms":1400,"seq":2,"errno":104,"error":"read: Connection reset by peer (os error 104)"}"#,
        ];
        for line in lines {
            let e: HoldEvent = serde_json::from_str(line).expect(line);
            assert_eq!(serde_json::to_string(&e).expect("serializable"), line);
        }
        let ended: HoldEvent = serde_json::from_str(lines[2]).expect("reads");
        assert_eq!(ended.at_ms(), 1400);
        for (bad, why) in [
            (lines[1].replace("\"rtt_us\"", "\"rtt\""), "rtt"),
            (lines[1].replace(",\"seq\":1", ""), "seq"),
            (lines[2].replace("\"errno\":104,", ""), "errno"),
            (lines[0].replace("opened", "connected"), "connected"),
        ] {
            let e = serde_json::from_str::<HoldEvent>(&bad).expect_err(&bad);
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }
}

/// What `fill-map` did to one pinned map.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MapFilled {
    pub map: String,
    /// Foreign keys inserted (`first` .. `first + inserted`).
    pub inserted: u32,
    /// Foreign keys that were there already (an earlier fill).
    pub present: u32,
    /// The errno of the insert the kernel refused (E2BIG: the map is full); null when the
    /// limit came first.
    #[serde(deserialize_with = "present")]
    pub refused_errno: Option<i32>,
    /// The refusal as text (`Argument list too long (os error 7)`), or another failure.
    #[serde(deserialize_with = "present")]
    pub error: Option<String>,
}

/// What `fill-sockhash` did: foreign sockets' keys put into a pinned sockhash until the
/// kernel refused one more. The process keeps the sockets (and so the entries) until it
/// is stopped; the kernel removes a closed socket's entries itself.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SockhashFilled {
    pub map: String,
    /// Established loopback sockets the filler opened (two per connection).
    pub sockets: u32,
    /// Their keys inserted (each its own tuple, so the datapath's collector finds them live).
    pub inserted: u32,
    /// The errno of the insert the kernel refused (E2BIG: the map is full); null when the
    /// limit came first.
    #[serde(deserialize_with = "present")]
    pub refused_errno: Option<i32>,
    #[serde(deserialize_with = "present")]
    pub error: Option<String>,
}

/// What `clear-map` removed from one pinned map.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MapCleared {
    pub map: String,
    /// Foreign keys deleted.
    pub deleted: u32,
    /// Foreign keys that were no longer there (someone else deleted them).
    pub absent: u32,
    #[serde(deserialize_with = "present")]
    pub error: Option<String>,
}
