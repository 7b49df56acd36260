//! The few socket calls std does not offer: SO_REUSEADDR before bind, bind before connect,
//! and a connect with a deadline from a chosen source address.

use std::io;
use std::mem;
use std::net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = addr.port().to_be();
    sa.sin_addr = libc::in_addr {
        s_addr: u32::from(*addr.ip()).to_be(),
    };
    sa
}

fn socket(ty: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned descriptor is owned by the OwnedFd below.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd was just returned by socket() and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value points at a c_int that lives across the call.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn bind(fd: RawFd, addr: SocketAddrV4) -> io::Result<()> {
    let sa = sockaddr_in(addr);
    // SAFETY: sa is a valid sockaddr_in of the length passed.
    cvt(unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            mem::size_of_val(&sa) as libc::socklen_t,
        )
    })
    .map(drop)
}

fn reuse_and_bind(fd: &OwnedFd, addr: SocketAddrV4) -> io::Result<()> {
    set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind(fd.as_raw_fd(), addr)
}

/// A listening TCP socket with SO_REUSEADDR, so a restarted backend can bind at once.
pub fn tcp_listener(addr: SocketAddrV4) -> io::Result<TcpListener> {
    let fd = socket(libc::SOCK_STREAM)?;
    reuse_and_bind(&fd, addr)?;
    // SAFETY: plain syscall on a socket we own.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 1024) })?;
    Ok(TcpListener::from(fd))
}

/// A UDP socket bound to `addr` with SO_REUSEADDR.
pub fn udp_socket(addr: SocketAddrV4) -> io::Result<UdpSocket> {
    let fd = socket(libc::SOCK_DGRAM)?;
    reuse_and_bind(&fd, addr)?;
    Ok(UdpSocket::from(fd))
}

/// Why a connect did not complete: the call that failed and its error, or our deadline.
#[derive(Debug)]
pub enum ConnectError {
    /// A system call failed; `call` names it.
    Os {
        call: &'static str,
        source: io::Error,
    },
    /// The deadline passed before the handshake completed.
    TimedOut,
}

/// Connects to `to` (from `bind` when given), giving up after `timeout`.
/// Blocking again once connected.
pub fn tcp_connect(
    to: SocketAddrV4,
    bind_to: Option<SocketAddrV4>,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let os = |call| move |source| ConnectError::Os { call, source };
    let fd = socket(libc::SOCK_STREAM | libc::SOCK_NONBLOCK).map_err(os("socket"))?;
    if let Some(local) = bind_to {
        reuse_and_bind(&fd, local).map_err(os("bind"))?;
    }
    let sa = sockaddr_in(to);
    // SAFETY: sa is a valid sockaddr_in of the length passed.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            mem::size_of_val(&sa) as libc::socklen_t,
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(ConnectError::Os {
                call: "connect",
                source: err,
            });
        }
        wait_writable(&fd, timeout)?;
        let so_error = take_so_error(&fd).map_err(os("getsockopt(SO_ERROR)"))?;
        if so_error != 0 {
            return Err(ConnectError::Os {
                call: "connect",
                source: io::Error::from_raw_os_error(so_error),
            });
        }
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false).map_err(os("fcntl"))?;
    Ok(stream)
}

fn wait_writable(fd: &OwnedFd, timeout: Duration) -> Result<(), ConnectError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(ConnectError::TimedOut);
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // Round up so a sub-millisecond remainder still waits instead of spinning.
        let ms = libc::c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one pollfd that lives across the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ConnectError::Os {
                call: "poll",
                source: err,
            });
        }
        if rc > 0 {
            return Ok(());
        }
    }
}

fn take_so_error(fd: &OwnedFd) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len live across the call and len is value's size.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_and_connect_on_loopback() {
        let listener = tcp_listener("127.0.0.1:0".parse().expect("address")).expect("listen");
        let std::net::SocketAddr::V4(addr) = listener.local_addr().expect("local addr") else {
            panic!("IPv4 listener expected")
        };
        let stream = tcp_connect(addr, None, Duration::from_secs(2)).expect("connect");
        assert_eq!(
            stream.peer_addr().expect("peer"),
            std::net::SocketAddr::V4(addr)
        );
    }

    #[test]
    fn refused_is_an_os_error() {
        // Find a free port, close it, then connect to it: nothing listens there now.
        let listener = tcp_listener("127.0.0.1:0".parse().expect("address")).expect("listen");
        let std::net::SocketAddr::V4(addr) = listener.local_addr().expect("local addr") else {
            panic!("IPv4 listener expected")
        };
        drop(listener);
        match tcp_connect(addr, None, Duration::from_secs(2)) {
            Err(ConnectError::Os {
                call: "connect",
                source,
            }) => {
                assert_eq!(source.raw_os_error(), Some(libc::ECONNREFUSED))
            }
            other => panic!("expected ECONNREFUSED, got {other:?}"),
        }
    }
}
