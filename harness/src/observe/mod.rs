//! The judge's eyes: the kernel's own view (bpftool JSON, ip, iptables-save, the
//! filesystem), read through a node. Shares no code with datapath/agent; the agent's own
//! `status --json` is only ever a cross-check.

pub mod bpf;
pub mod features;
pub mod host;
pub mod iptables;
pub mod reach;
pub mod sockhash;
