//! The JSON lines dp-probe speaks: a server's answer, a client's record of one attempt.

use serde::{Deserialize, Serialize};

/// What `serve` sends back for every request line (TCP) or datagram (UDP), as one line.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
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
pub struct Attempt {
    /// An answer came back and echoed the request exactly.
    pub ok: bool,
    pub proto: String,
    /// The address the client was asked to reach.
    pub to: String,
    /// TCP: `getpeername()` after connect. UDP: the source address of the reply.
    pub peer: Option<String>,
    /// The client's own address (`getsockname()`).
    pub local: Option<String>,
    /// The answering backend's `--id`.
    pub backend: Option<String>,
    /// The request as the backend saw it.
    pub echo: Option<String>,
    /// The OS error number of the failed call; `ETIMEDOUT` for a deadline that passed.
    pub errno: Option<i32>,
    pub error: Option<String>,
    /// From the first call to the close, in microseconds.
    pub elapsed_us: u64,
    /// The client's address as the backend saw it (its answer's `peer`): shows a NAT on
    /// the way, e.g. the node's address after a masquerade. Omitted when no answer came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_as: Option<String>,
}

/// The longest request or answer either side reads, in bytes.
pub const MAX_LINE: usize = 64 * 1024;

/// Strips one trailing `\n` (and a `\r` before it).
pub fn strip_line_end(s: &str) -> &str {
    let s = s.strip_suffix('\n').unwrap_or(s);
    s.strip_suffix('\r').unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_prints_nulls_in_order() {
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
        assert_eq!(
            serde_json::to_string(&a).expect("serializable"),
            r#"{"ok":false,"proto":"tcp","to":"127.0.0.1:1","peer":null,"local":null,"backend":null,"echo":null,"errno":111,"error":"connect: Connection refused","elapsed_us":12}"#
        );
    }

    #[test]
    fn line_ends() {
        assert_eq!(strip_line_end("a\r\n"), "a");
        assert_eq!(strip_line_end("a\n"), "a");
        assert_eq!(strip_line_end("a"), "a");
        assert_eq!(strip_line_end("a\n\n"), "a\n");
    }
}
