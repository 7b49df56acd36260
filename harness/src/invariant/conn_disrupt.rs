//! conn-disrupt: long-lived TCP connections opened at deploy time, before any fault (one
//! `dp-probe hold` from every pod to every TCP service and to every TCP pod server on
//! another node: cluster/hold.rs), keep carrying payload during and after it. As
//! cilium-cli's conn-disrupt test: a connection that ended fails, named with its
//! addresses and the error; the longest stall of each connection is reported.
//!
//! A stall is the gap between two answers, or from the last answer to the moment the
//! judge reads the connection. Allowed: [`STALL_BOUND`]; faults such as link-degrade add
//! delay, an agent restart must add none (socket-LB translated at connect time, the
//! established connection never sees the agent). A stall across the heal of a fault
//! whose step sets `recover-within-s` (a partition: TCP retransmits through the cut and
//! must resume after it) may last until that bound after the heal. A connection that is
//! stalling when read, within what it is allowed, is read again until it answers or
//! runs out of allowance: the verdict is never decided on a stall still in progress.
//! Named in a fault's `during`, it judges with the previous heal's window (if any): a
//! fault that cuts traffic fails it there by design; name it in the check after the heal.

use std::time::{Duration, Instant};

use dp_wire::HoldEvent;

use super::{Context, Invariant, Judgement, Verdict};
use crate::cluster::in_parallel;
use crate::observe::hold::{self, Held, NodeHolds};
use crate::observe::ObserveError;
use crate::suite::{InvariantName, Needs};

pub const NAME: InvariantName = InvariantName::new("conn-disrupt");
pub struct ConnDisrupt;

/// The longest acceptable stall outside a heal's recovery window.
pub const STALL_BOUND: Duration = Duration::from_secs(5);
/// A connection whose last answer is older than this (several request intervals) is
/// stalling now: read it again rather than judge it mid-stall.
const STALLING_AFTER: Duration = Duration::from_millis(1000);
/// Between two reads of connections that were stalling.
const REREAD: Duration = Duration::from_millis(250);

/// The last heal, as seen from each node's clock when its connections were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealWindow {
    /// How long before the read the heal ended.
    pub ago: Duration,
    /// Its step's `recover-within-s`.
    pub within: Duration,
}

/// One connection's account.
#[derive(Debug, Clone, PartialEq)]
enum Account {
    Fine {
        longest: Duration,
    },
    /// Stalling now, still within what it is allowed: read again.
    Stalling {
        longest: Duration,
    },
    Broken {
        longest: Duration,
        why: String,
    },
}

fn ms(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Judges one connection read at `now_ms` (its node's clock).
fn account(h: &Held, now_ms: u64, heal: Option<HealWindow>) -> Account {
    let heal_at = heal.map(|w| {
        let at = now_ms.saturating_sub(w.ago.as_millis() as u64);
        (at, at + w.within.as_millis() as u64)
    });
    // A stall from `a` to `b` (ms) is allowed when short, or when it spans the heal and
    // ends within the heal's recovery bound.
    let allowed = |a: u64, b: u64| {
        Duration::from_millis(b.saturating_sub(a)) <= STALL_BOUND
            || heal_at.is_some_and(|(at, until)| a <= at && b <= until)
    };
    let answers: Vec<u64> = h
        .events
        .iter()
        .filter(|e| matches!(e, HoldEvent::Answered { .. }))
        .map(HoldEvent::at_ms)
        .collect();
    let gaps = answers.windows(2).map(|w| (w[0], w[1]));
    let mut longest = Duration::ZERO;
    let mut too_long: Option<(u64, u64)> = None;
    for (a, b) in gaps {
        longest = longest.max(Duration::from_millis(b.saturating_sub(a)));
        if !allowed(a, b) && too_long.is_none_or(|(x, y)| b - a > y - x) {
            too_long = Some((a, b));
        }
    }
    if let Some(HoldEvent::Ended {
        seq, errno, error, ..
    }) = h
        .events
        .iter()
        .find(|e| matches!(e, HoldEvent::Ended { .. }))
    {
        let what = if *seq == 0 {
            "could not open".to_owned()
        } else {
            format!("ended on request {seq}")
        };
        let errno = errno.map(|n| format!(" (errno {n})")).unwrap_or_default();
        return Account::Broken {
            longest,
            why: format!("{what}: {error}{errno}"),
        };
    }
    let Some(&last) = answers.last() else {
        return Account::Broken {
            longest,
            why: "never answered".into(),
        };
    };
    let open = Duration::from_millis(now_ms.saturating_sub(last));
    longest = longest.max(open);
    if let Some((a, b)) = too_long {
        return Account::Broken {
            longest,
            why: format!(
                "stalled {} (no answer between two requests)",
                ms(Duration::from_millis(b - a))
            ),
        };
    }
    if open <= STALLING_AFTER {
        Account::Fine { longest }
    } else if allowed(last, now_ms) {
        Account::Stalling { longest }
    } else {
        Account::Broken {
            longest,
            why: format!("stalled: no answer for {}", ms(open)),
        }
    }
}

/// `client-a -> service web 10.96.0.10:80 (local 10.244.1.2:40000, peer 10.96.0.10:80, backend web-b1)`.
fn name(h: &Held) -> String {
    let mut s = format!("{} -> {} {}", h.conn.client, h.conn.target, h.conn.to);
    let opened = h.events.iter().find_map(|e| match e {
        HoldEvent::Opened { local, peer, .. } => Some(format!("local {local}, peer {peer}")),
        _ => None,
    });
    let backend = h.events.iter().rev().find_map(|e| match e {
        HoldEvent::Answered { backend, .. } => Some(format!("backend {backend}")),
        _ => None,
    });
    let detail: Vec<String> = opened.into_iter().chain(backend).collect();
    if !detail.is_empty() {
        s.push_str(&format!(" ({})", detail.join(", ")));
    }
    s
}

/// The verdict on every node's connections, and whether some connection is stalling
/// within its allowance (then the caller reads again before deciding).
pub fn judge(nodes: &[NodeHolds], heal: Option<HealWindow>) -> (Judgement, bool) {
    let mut evidence = Vec::new();
    let mut broken = Vec::new();
    let mut stalling = false;
    let mut worst: Option<(Duration, String)> = None;
    let mut n = 0;
    for node in nodes {
        for h in &node.held {
            n += 1;
            let answers = h
                .events
                .iter()
                .filter(|e| matches!(e, HoldEvent::Answered { .. }))
                .count();
            let who = name(h);
            let (longest, line) = match account(h, node.now_ms, heal) {
                Account::Fine { longest } => (
                    longest,
                    format!("{who}: {answers} answers, longest stall {}", ms(longest)),
                ),
                Account::Stalling { longest } => {
                    stalling = true;
                    (
                        longest,
                        format!("{who}: {answers} answers, stalling ({})", ms(longest)),
                    )
                }
                Account::Broken { longest, why } => {
                    broken.push(format!("{who}: {why}"));
                    (
                        longest,
                        format!(
                            "{who}: {answers} answers, longest stall {}: {why}",
                            ms(longest)
                        ),
                    )
                }
            };
            if worst.as_ref().is_none_or(|(d, _)| longest > *d) {
                worst = Some((longest, who));
            }
            evidence.push(line);
        }
    }
    let bound = match heal {
        Some(w) => format!(
            "bound {}, or until {} after the heal for a stall across it",
            ms(STALL_BOUND),
            ms(w.within)
        ),
        None => format!("bound {}", ms(STALL_BOUND)),
    };
    let Some((longest, who)) = worst else {
        return (
            Judgement::unknown("no held connections: the deploy opened none (is conn-disrupt named in this scenario?)"),
            false,
        );
    };
    let verdict = if !broken.is_empty() {
        Verdict::Fail
    } else if stalling {
        Verdict::Unknown
    } else {
        Verdict::Pass
    };
    let summary = match verdict {
        Verdict::Fail => format!(
            "{} of {n} held connections broke: {} ({bound})",
            broken.len(),
            broken.join("; ")
        ),
        Verdict::Unknown => {
            format!("held connections still stalling when the judge gave up ({bound})")
        }
        _ => format!(
            "{n} held connections kept carrying payload; longest stall {} ({who}; {bound})",
            ms(longest)
        ),
    };
    (
        Judgement {
            verdict,
            summary,
            evidence,
        },
        stalling && broken.is_empty(),
    )
}

impl Invariant for ConnDisrupt {
    fn name(&self) -> InvariantName {
        NAME
    }

    fn suite_needs(&self) -> Needs {
        Needs {
            held_connections: true,
            ..Needs::default()
        }
    }

    fn about(&self) -> &'static str {
        "TCP connections opened at deploy (pods to services and to pods on other nodes) \
         keep answering through faults and never end; reports each one's longest stall"
    }

    fn check(&self, ctx: &Context<'_>) -> Result<Judgement, ObserveError> {
        let window = ctx.healed.and_then(|h| Some((h.at, h.within?)));
        let started = Instant::now();
        // Long enough for a stall within its allowance to resolve either way.
        let patience = STALL_BOUND
            + window.map_or(Duration::ZERO, |(at, within)| {
                within.saturating_sub(at.elapsed())
            });
        loop {
            let read = in_parallel(&ctx.cluster.nodes, hold::observe);
            let heal = window.map(|(at, within)| HealWindow {
                ago: at.elapsed(),
                within,
            });
            let mut nodes = Vec::new();
            for r in read {
                match r {
                    Ok(Some(n)) => nodes.push(n),
                    Ok(None) => {}
                    Err(e) => {
                        return super::unknown_unless_harness("cannot read the held connections", e)
                    }
                }
            }
            let (j, stalling) = judge(&nodes, heal);
            if !stalling || started.elapsed() >= patience {
                return Ok(j);
            }
            // Waiting for the stalled connections to answer or run out of allowance.
            std::thread::sleep(REREAD);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::hold::HeldConn;

    const KILLED: &str = include_str!("testdata/conn-disrupt/hold-server-killed.jsonl");

    fn held(text: &str) -> Held {
        let file = std::path::PathBuf::from("/w/hold.jsonl");
        Held {
            conn: HeldConn {
                client: "client-a".into(),
                target: "pod web-b1".into(),
                to: "127.0.0.1:18080".parse().expect("addr"),
                file: file.clone(),
            },
            events: hold::parse_events("node-a", &file, text).expect("recorded output reads"),
        }
    }

    fn node(now_ms: u64, held: Vec<Held>) -> NodeHolds {
        NodeHolds {
            node: "node-a".into(),
            now_ms,
            held,
        }
    }

    /// The recorded connection up to its 8th answer: the server was alive then.
    fn answering() -> String {
        KILLED.lines().take(9).map(|l| format!("{l}\n")).collect()
    }
    const LAST_ANSWER: u64 = 1_796_565_969_558;

    #[test]
    fn a_connection_whose_server_was_killed_fails_naming_it_and_the_error() {
        let (j, stalling) = judge(&[node(LAST_ANSWER + 500, vec![held(KILLED)])], None);
        assert_eq!(j.verdict, Verdict::Fail, "{j:?}");
        assert!(!stalling);
        assert!(
            j.summary.contains(
                "client-a -> pod web-b1 127.0.0.1:18080 (local 127.0.0.1:41844, peer \
                 127.0.0.1:18080, backend web-b1): ended on request 9: the peer closed the \
                 connection before answering request 9"
            ),
            "{}",
            j.summary
        );
    }

    #[test]
    fn an_answering_connection_passes_with_its_longest_stall() {
        let (j, stalling) = judge(&[node(LAST_ANSWER + 150, vec![held(&answering())])], None);
        assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
        assert!(!stalling);
        assert!(
            j.summary
                .contains("1 held connections kept carrying payload; longest stall 0.2 s"),
            "{}",
            j.summary
        );
        assert!(
            j.evidence[0].contains("8 answers, longest stall 0.2 s"),
            "{:?}",
            j.evidence
        );
    }

    #[test]
    fn a_stall_in_progress_is_read_again_then_fails_past_the_bound() {
        let (j, stalling) = judge(&[node(LAST_ANSWER + 2_000, vec![held(&answering())])], None);
        assert!(stalling, "{j:?}");
        let (j, stalling) = judge(&[node(LAST_ANSWER + 6_000, vec![held(&answering())])], None);
        assert!(!stalling);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.summary.contains("stalled: no answer for 6.0 s"),
            "{}",
            j.summary
        );
    }

    /// Derived from the recording: a 7 s gap between two answers (a cut), then answers
    /// again.
    fn cut_and_resumed() -> String {
        answering()
            .lines()
            .map(|l| {
                let e: HoldEvent = serde_json::from_str(l).expect("event");
                match e {
                    HoldEvent::Answered {
                        at_ms,
                        seq,
                        backend,
                        rtt_us,
                    } if seq >= 5 => serde_json::to_string(&HoldEvent::Answered {
                        at_ms: at_ms + 7_000,
                        seq,
                        backend,
                        rtt_us,
                    })
                    .expect("json"),
                    _ => l.to_owned(),
                }
            })
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn a_long_stall_fails_unless_it_spans_a_heal_within_its_bound() {
        let text = cut_and_resumed();
        let now = LAST_ANSWER + 7_000 + 100;
        let (j, _) = judge(&[node(now, vec![held(&text)])], None);
        assert_eq!(j.verdict, Verdict::Fail, "{j:?}");
        assert!(j.summary.contains("stalled 7.2 s"), "{}", j.summary);
        // Healed 2 s before the read, in the middle of the gap; answers resumed at once.
        let heal = HealWindow {
            ago: Duration::from_millis(2_500),
            within: Duration::from_secs(10),
        };
        let (j, _) = judge(&[node(now, vec![held(&text)])], Some(heal));
        assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
        assert!(j.summary.contains("longest stall 7.2 s"), "{}", j.summary);
        assert!(
            j.summary.contains("until 10.0 s after the heal"),
            "{}",
            j.summary
        );
        // Resumed later than the heal's bound allows: 1.8 s after it, bound 1 s.
        let tight = HealWindow {
            ago: Duration::from_millis(2_500),
            within: Duration::from_secs(1),
        };
        assert_eq!(
            judge(&[node(now, vec![held(&text)])], Some(tight))
                .0
                .verdict,
            Verdict::Fail
        );
    }

    #[test]
    fn nothing_held_is_unknown_never_pass() {
        let (j, _) = judge(&[node(1, Vec::new())], None);
        assert_eq!(j.verdict, Verdict::Unknown);
        let (j, _) = judge(&[node(1, vec![held("")])], None);
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(j.summary.contains("never answered"), "{}", j.summary);
    }
}
