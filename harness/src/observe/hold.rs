//! The held connections (cluster/hold.rs) as their clients recorded them: each node's
//! manifest, every connection's `dp-probe hold` events (dp-wire [`HoldEvent`], read
//! strictly) and the node's own clock when they were read, since the events carry the
//! node's time.

use std::path::Path;
use std::time::Duration;

use dp_wire::HoldEvent;

use super::ObserveError;
use crate::cluster::hold::{HeldConn, MANIFEST};
use crate::cluster::ClusterNode;

/// One connection and what its client recorded so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub conn: HeldConn,
    pub events: Vec<HoldEvent>,
}

/// A node's held connections, read at `now_ms` (its wall clock, ms since the epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeHolds {
    pub node: String,
    pub now_ms: u64,
    pub held: Vec<Held>,
}

/// Reads the manifest, the clock and every connection's events on `cn`. A node without
/// a manifest holds nothing (`None`): its pods' connections were not opened there.
pub fn observe(cn: &ClusterNode) -> Result<Option<NodeHolds>, ObserveError> {
    let node = cn.node.as_ref();
    let manifest_path = cn.work_dir.join(MANIFEST);
    let Ok(manifest) = node.read_file(&manifest_path) else {
        return Ok(None);
    };
    let manifest = String::from_utf8_lossy(&manifest);
    let conns: Vec<HeldConn> = serde_json::from_str(&manifest).map_err(|e| {
        ObserveError::unreadable(
            node.name(),
            format!("read {}", manifest_path.display()),
            &manifest,
            e,
        )
    })?;
    // The clock first: an event read afterwards may be newer, never older, than `now`.
    let argv = ["date", "+%s%3N"];
    let clock = super::run_ok(node, &argv, Duration::from_secs(10))?;
    let now_ms = parse_clock(&clock).ok_or_else(|| {
        ObserveError::unreadable(
            node.name(),
            argv.join(" "),
            &clock,
            "not milliseconds since the epoch",
        )
    })?;
    let mut held = Vec::new();
    for conn in conns {
        let text = node.read_file(&conn.file)?;
        let events = parse_events(node.name(), &conn.file, &String::from_utf8_lossy(&text))?;
        held.push(Held { conn, events });
    }
    Ok(Some(NodeHolds {
        node: node.name().to_owned(),
        now_ms,
        held,
    }))
}

fn parse_clock(s: &str) -> Option<u64> {
    s.trim().parse().ok()
}

/// The complete lines of a hold's file, each a [`HoldEvent`]. A last line without its
/// newline is still being written and is left for the next read; any other line that
/// is not an event is unreadable (a harness error, never a broken connection).
pub fn parse_events(node: &str, file: &Path, text: &str) -> Result<Vec<HoldEvent>, ObserveError> {
    let complete = match text.rfind('\n') {
        Some(i) => &text[..i],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|e| {
                ObserveError::unreadable(node, format!("read {}", file.display()), l, e)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORDED: &str =
        include_str!("../invariant/testdata/conn-disrupt/hold-server-killed.jsonl");

    #[test]
    fn reads_recorded_events_and_leaves_a_partial_line() {
        let f = Path::new("/w/hold.jsonl");
        let all = parse_events("node-a", f, RECORDED).expect("recorded output reads");
        assert_eq!(all.len(), 10);
        assert!(matches!(all[0], HoldEvent::Opened { .. }));
        assert!(matches!(all[9], HoldEvent::Ended { seq: 9, .. }));
        let partial = format!("{RECORDED}{{\"event\":\"answ");
        assert_eq!(
            parse_events("node-a", f, &partial).expect("reads").len(),
            10
        );
        assert!(parse_events("node-a", f, "").expect("empty").is_empty());
    }

    #[test]
    fn a_drifted_line_is_a_harness_error() {
        let drifted = RECORDED.replace("\"rtt_us\"", "\"rtt\"");
        let e = parse_events("node-a", Path::new("/w/h.jsonl"), &drifted).expect_err("drifted");
        assert!(e.is_harness_error(), "{}", e.report());
        assert!(e.report().contains("rtt"), "{}", e.report());
        assert_eq!(parse_clock("1796565969758\n"), Some(1_796_565_969_758));
        assert_eq!(parse_clock("%3N"), None);
    }
}
