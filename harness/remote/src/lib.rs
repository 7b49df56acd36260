//! dp-remote: one long-lived process per VM node that runs the harness's commands, reads
//! and writes files and waits for conditions *inside* the guest, over one SSH channel.
//!
//! Why: under TCG every process a guest starts costs ~0.1 s of emulated CPU (`cat` and
//! `stat` alike), and a bash loop polling a file every 50 ms ate the CPU of the agent it
//! was waiting for. Per command, plain SSH needed dropbear's session, a bash wrapper,
//! `timeout` and a second bash; a batch added mktemp, seq, cat and stat per part. Here a
//! command is one fork/exec of the command itself, and files, waits, signals and exit
//! statuses need no process at all.
//!
//! The protocol ([`wire`]) is a JSON header line followed by raw payload bytes whose
//! lengths the header gives; requests carry ids and are answered in any order, so the
//! harness can have many in flight on one channel.

pub mod server;
pub mod wire;
