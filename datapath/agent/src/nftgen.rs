//! The nf_tables ruleset generation of this thread's network namespace
//! (`NFT_MSG_GETGEN` over `NETLINK_NETFILTER`): the kernel bumps it on every committed
//! change, by anyone (iptables-nft, nft, kube-proxy). The periodic DP_FORWARD reconcile
//! reads the filter table only when it moved, instead of running `iptables` every period
//! (in a TCG guest each run cost ~0.1-0.8 s of CPU, and nothing had changed).

use std::io;
use std::mem;

use crate::netlink::{self, NlMsgHdr, NLMSG_ERROR};

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NfGenMsg {
    family: u8,
    version: u8,
    res_id: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    hdr: NlMsgHdr,
    gen: NfGenMsg,
}

/// The current generation id.
pub fn generation() -> io::Result<u32> {
    let req = Request {
        hdr: NlMsgHdr {
            len: mem::size_of::<Request>() as u32,
            ty: (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN,
            flags: libc::NLM_F_REQUEST as u16,
            seq: 1,
            pid: 0,
        },
        gen: NfGenMsg::default(),
    };
    let fd = netlink::send_request(NETLINK_NETFILTER, &req)?;
    let mut buf = [0u8; 512];
    let n = netlink::recv(&fd, &mut buf)?;
    parse(&buf[..n])
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("NFT_MSG_GETGEN: {what}"),
    )
}

/// The generation id in a `NFT_MSG_NEWGEN` answer.
fn parse(data: &[u8]) -> io::Result<u32> {
    let hl = mem::size_of::<NlMsgHdr>();
    if data.len() < hl {
        return Err(bad("short answer"));
    }
    let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let ty = u16::from_ne_bytes([data[4], data[5]]);
    if len > data.len() || len < hl {
        return Err(bad("truncated answer"));
    }
    if ty == NLMSG_ERROR {
        let errno = data
            .get(hl..hl + 4)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(-libc::EIO);
        return Err(io::Error::from_raw_os_error(-errno));
    }
    if ty != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
        return Err(bad(&format!("unexpected message type {ty:#x}")));
    }
    // Attributes (len u16, type u16, value, padded to 4) after the nfgenmsg.
    let mut off = hl + mem::size_of::<NfGenMsg>();
    while off + 4 <= len {
        let alen = u16::from_ne_bytes([data[off], data[off + 1]]) as usize;
        let aty = u16::from_ne_bytes([data[off + 2], data[off + 3]]) & 0x3fff;
        if alen < 4 || off + alen > len {
            return Err(bad("malformed attribute"));
        }
        if aty == NFTA_GEN_ID && alen >= 8 {
            let v = &data[off + 4..off + 8];
            return Ok(u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
        }
        off += (alen + 3) & !3;
    }
    Err(bad("no NFTA_GEN_ID"))
}

/// The datapath's one skip policy (a failure under CI), shared with its acceptance tests.
#[cfg(test)]
#[path = "../tests/common/skip.rs"]
pub(crate) mod skip;

#[cfg(test)]
mod tests {
    use super::skip;
    use super::*;

    #[test]
    fn the_generation_id_is_read_from_a_newgen_answer() {
        let mut msg = Vec::new();
        let total = 16 + 4 + 8 + 8;
        msg.extend_from_slice(&(total as u32).to_ne_bytes());
        msg.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN).to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&[0; 4]); // nfgenmsg
                                        // NFTA_GEN_PROC_PID first (another attribute), then NFTA_GEN_ID.
        msg.extend_from_slice(&8u16.to_ne_bytes());
        msg.extend_from_slice(&2u16.to_ne_bytes());
        msg.extend_from_slice(&77u32.to_be_bytes());
        msg.extend_from_slice(&8u16.to_ne_bytes());
        msg.extend_from_slice(&NFTA_GEN_ID.to_ne_bytes());
        msg.extend_from_slice(&4242u32.to_be_bytes());
        assert_eq!(parse(&msg).unwrap(), 4242);
        assert!(parse(&msg[..10]).is_err());
    }

    /// Against the kernel: a rule change by `iptables-nft` in a fresh network namespace
    /// moves the generation; reading it does not. Needs root and iptables-nft.
    #[test]
    fn a_rule_change_moves_the_generation_and_a_read_does_not() {
        if let Some(why) = skip::not_root("a network namespace, nf_tables") {
            return skip::skip(&why);
        }
        if std::process::Command::new("iptables-nft")
            .arg("--version")
            .output()
            .is_err()
        {
            return skip::skip("iptables-nft not found (ci/setup installs iptables)");
        }
        // A thread of its own: unshare moves only this thread (and what it starts).
        std::thread::spawn(|| {
            // SAFETY: unshare affects only the calling thread.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            let ipt = |args: &[&str]| {
                let out = std::process::Command::new("iptables-nft")
                    .args(args)
                    .output()
                    .expect("iptables-nft runs");
                assert!(out.status.success(), "{args:?}: {out:?}");
            };
            ipt(&["-t", "filter", "-S"]);
            let g1 = generation().expect("generation");
            ipt(&["-t", "filter", "-S"]);
            assert_eq!(generation().unwrap(), g1, "a read must not move it");
            ipt(&["-t", "filter", "-N", "DP_GEN_TEST"]);
            let g2 = generation().unwrap();
            assert_ne!(g2, g1, "a new chain must move it");
        })
        .join()
        .expect("test thread");
    }
}
