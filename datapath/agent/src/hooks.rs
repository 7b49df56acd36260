//! The cgroup hooks the datapath attaches to, and what each needs: the four sock_addr
//! hooks of socket-LB and the sock_ops hook of socket acceleration.

use aya_obj::generated::bpf_attach_type;
use datapath_common::{
    PROG_CONNECT4, PROG_GETPEERNAME4, PROG_RECVMSG4, PROG_SENDMSG4, PROG_SOCKOPS,
};

/// One cgroup hook: its program, its attach type, and the name of its link pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    Connect4,
    Sendmsg4,
    Recvmsg4,
    Getpeername4,
    /// sock_ops: puts established node <-> local pod connections into `dp_sockhash`.
    SockOps,
}

impl Hook {
    /// In load and attach order.
    pub const ALL: [Hook; 5] = [
        Hook::Connect4,
        Hook::Sendmsg4,
        Hook::Recvmsg4,
        Hook::Getpeername4,
        Hook::SockOps,
    ];

    /// Short name: the pin file under `links/` and the suffix of failpoint names.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Connect4 => "connect4",
            Hook::Sendmsg4 => "sendmsg4",
            Hook::Recvmsg4 => "recvmsg4",
            Hook::Getpeername4 => "getpeername4",
            Hook::SockOps => "sockops",
        }
    }

    /// Kernel name of our program for this hook.
    pub fn program(self) -> &'static str {
        match self {
            Hook::Connect4 => PROG_CONNECT4,
            Hook::Sendmsg4 => PROG_SENDMSG4,
            Hook::Recvmsg4 => PROG_RECVMSG4,
            Hook::Getpeername4 => PROG_GETPEERNAME4,
            Hook::SockOps => PROG_SOCKOPS,
        }
    }

    /// `enum bpf_attach_type` value.
    pub fn attach_type(self) -> u32 {
        (match self {
            Hook::Connect4 => bpf_attach_type::BPF_CGROUP_INET4_CONNECT,
            Hook::Sendmsg4 => bpf_attach_type::BPF_CGROUP_UDP4_SENDMSG,
            Hook::Recvmsg4 => bpf_attach_type::BPF_CGROUP_UDP4_RECVMSG,
            Hook::Getpeername4 => bpf_attach_type::BPF_CGROUP_INET4_GETPEERNAME,
            Hook::SockOps => bpf_attach_type::BPF_CGROUP_SOCK_OPS,
        }) as u32
    }

    /// The attach type as bpftool names it (`bpftool cgroup show`).
    pub fn bpftool_attach_type(self) -> &'static str {
        match self {
            Hook::Connect4 => "cgroup_inet4_connect",
            Hook::Sendmsg4 => "cgroup_udp4_sendmsg",
            Hook::Recvmsg4 => "cgroup_udp4_recvmsg",
            Hook::Getpeername4 => "cgroup_inet4_getpeername",
            Hook::SockOps => "sock_ops",
        }
    }
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
