//! A link's queueing disciplines as `tc qdisc show` prints them: whether netem is on it
//! (link-degrade proves its fault and its heal with this).

use std::time::Duration;

use super::{run_ok, ObserveError};
use crate::node::Node;

/// The qdiscs of `dev` on `node`, one per line as tc printed them.
pub fn qdiscs(node: &dyn Node, dev: &str) -> Result<Vec<String>, ObserveError> {
    let text = run_ok(
        node,
        &["tc", "qdisc", "show", "dev", dev],
        Duration::from_secs(30),
    )?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
        .collect())
}

/// Is one of `qdiscs` a netem (`qdisc netem 8001: root refcnt 2 limit 1000 delay 77ms ...`)?
pub fn has_netem(qdiscs: &[String]) -> bool {
    qdiscs
        .iter()
        .any(|l| l.split_whitespace().nth(1) == Some("netem"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netem_is_found_by_its_kind_not_by_a_word_anywhere() {
        let degraded =
            vec!["qdisc netem 8001: root refcnt 2 limit 1000 delay 77ms loss 9%".to_owned()];
        assert!(has_netem(&degraded));
        let plain = vec!["qdisc fq_codel 0: root refcnt 2 limit 10240p flows 1024".to_owned()];
        assert!(!has_netem(&plain));
        assert!(!has_netem(&[]));
    }
}
