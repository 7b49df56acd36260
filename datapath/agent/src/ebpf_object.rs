//! The eBPF object built by build.rs, embedded 8-byte aligned (ELF headers and BPF
//! instructions need it). Empty when built with AYA_BUILD_SKIP=1.

pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath"));
