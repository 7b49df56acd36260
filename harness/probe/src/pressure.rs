//! `fill-map` and `clear-map`: a foreign writer for the map-pressure fault. It fills one of
//! the datapath's service maps with entries no real service uses (service addresses in
//! 198.18.0.0/15, the benchmarking range; ids from `--first`, far above the agent's)
//! until the kernel refuses one more, and later deletes exactly those keys.
//!
//! The layouts are the datapath's documented contract (datapath/README.md, "Maps"),
//! re-encoded here on purpose: this tool judges the datapath and shares no code with it.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::cli::{ClearMapArgs, FillMapArgs, FillSockhashArgs, MapKind};
use crate::sockmap::{bpf, obj_get, ElemAttr};
use crate::wire::{MapCleared, MapFilled, SockhashFilled};
use crate::{EXIT_FAILED, EXIT_OK};

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_NOEXIST: u64 = 1;
const PROTO_TCP: u8 = 6;
const FOREIGN_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);

/// The `i`th foreign key and its value, in the map's layout.
pub fn entry(kind: MapKind, first: u32, port: u16, i: u32) -> (Vec<u8>, Vec<u8>) {
    let addr_port_proto = |addr: Ipv4Addr| {
        let mut v = addr.octets().to_vec();
        v.extend_from_slice(&port.to_be_bytes());
        v.extend_from_slice(&[PROTO_TCP, 0]);
        v
    };
    match kind {
        MapKind::Services => {
            let key = addr_port_proto(Ipv4Addr::from(u32::from(FOREIGN_NET).wrapping_add(i)));
            let mut value = 0u32.to_ne_bytes().to_vec();
            value.extend_from_slice(&first.wrapping_add(i).to_ne_bytes());
            (key, value)
        }
        MapKind::Slots => {
            let mut key = first.to_ne_bytes().to_vec();
            key.extend_from_slice(&i.to_ne_bytes());
            (key, first.to_ne_bytes().to_vec())
        }
        MapKind::Backends => (
            first.wrapping_add(i).to_ne_bytes().to_vec(),
            addr_port_proto(Ipv4Addr::new(198, 18, 0, 1)),
        ),
    }
}

fn update_noexist(map: &OwnedFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        flags: BPF_NOEXIST,
        ..Default::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

fn delete(map: &OwnedFd, key: &[u8]) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        ..Default::default()
    };
    bpf(BPF_MAP_DELETE_ELEM, &mut attr).map(drop)
}

fn print<T: serde::Serialize>(v: &T) {
    match serde_json::to_string(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("dp-probe: encoding the summary: {e}"),
    }
}

/// Inserts foreign keys (never replacing one) until the kernel refuses: exit 0 when it
/// refused with E2BIG (the map is full), 1 otherwise.
pub fn fill(a: &FillMapArgs) -> u8 {
    let mut out = MapFilled {
        map: a.map.display().to_string(),
        inserted: 0,
        present: 0,
        refused_errno: None,
        error: None,
    };
    let map = match obj_get(&a.map) {
        Ok(m) => m,
        Err(e) => {
            out.error = Some(format!("BPF_OBJ_GET: {e}"));
            print(&out);
            return EXIT_FAILED;
        }
    };
    for i in 0..a.limit {
        let (key, value) = entry(a.kind, a.first, a.port, i);
        match update_noexist(&map, &key, &value) {
            Ok(()) => out.inserted = i + 1 - out.present,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => out.present += 1,
            Err(e) => {
                out.refused_errno = e.raw_os_error();
                out.error = Some(e.to_string());
                break;
            }
        }
    }
    print(&out);
    if out.refused_errno == Some(libc::E2BIG) {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

/// Deletes the foreign keys `first` .. `first + count`; one that is gone already is
/// counted, not an error.
pub fn clear(a: &ClearMapArgs) -> u8 {
    let mut out = MapCleared {
        map: a.map.display().to_string(),
        deleted: 0,
        absent: 0,
        error: None,
    };
    let map = match obj_get(&a.map) {
        Ok(m) => m,
        Err(e) => {
            out.error = Some(format!("BPF_OBJ_GET: {e}"));
            print(&out);
            return EXIT_FAILED;
        }
    };
    for i in 0..a.count {
        let (key, _) = entry(a.kind, a.first, a.port, i);
        match delete(&map, &key) {
            Ok(()) => out.deleted += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => out.absent += 1,
            Err(e) => {
                out.error = Some(format!("BPF_MAP_DELETE_ELEM key {i}: {e}"));
                break;
            }
        }
    }
    print(&out);
    if out.error.is_none() {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

/// The line `fill-sockhash` prints after its summary once it holds a full map.
pub const HOLDING_LINE: &str = "holding";

/// Fills the sockhash with the keys of loopback connections of our own (each socket under
/// its own tuple, so it is live to any collector), never replacing a key, until the kernel
/// refuses one more; prints the summary and keeps the sockets until a signal ends the
/// process. Exit 1 (at once) when the map did not fill.
pub fn fill_sockhash(a: &FillSockhashArgs) -> u8 {
    let mut out = SockhashFilled {
        map: a.map.display().to_string(),
        sockets: 0,
        inserted: 0,
        refused_errno: None,
        error: None,
    };
    let kept = match fill_sockhash_inner(a, &mut out) {
        Ok(kept) => kept,
        Err(e) => {
            out.error = Some(e);
            Vec::new()
        }
    };
    print(&out);
    if out.refused_errno != Some(libc::E2BIG) {
        return EXIT_FAILED;
    }
    // The entries live as long as their sockets: hold them until we are stopped.
    let _kept = kept;
    println!("{HOLDING_LINE}");
    loop {
        // SAFETY: pause() has no preconditions; it returns only on a signal.
        unsafe { libc::pause() };
    }
}

fn fill_sockhash_inner(
    a: &FillSockhashArgs,
    out: &mut SockhashFilled,
) -> Result<Vec<std::net::TcpStream>, String> {
    use std::net::{SocketAddr, SocketAddrV4};
    // Two descriptors per connection: lift the soft limit to the hard one.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    let map = obj_get(&a.map).map_err(|e| format!("BPF_OBJ_GET {}: {e}", a.map.display()))?;
    let listener = crate::sock::tcp_listener(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("loopback listener: {e}"))?;
    let laddr = match listener.local_addr() {
        Ok(SocketAddr::V4(a)) => a,
        other => return Err(format!("loopback listener address: {other:?}")),
    };
    let mut kept = Vec::new();
    'fill: while out.inserted < a.limit {
        let client =
            std::net::TcpStream::connect(laddr).map_err(|e| format!("connect to {laddr}: {e}"))?;
        let (server, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        for s in [client, server] {
            let (SocketAddr::V4(local), SocketAddr::V4(peer)) = (
                s.local_addr().map_err(|e| e.to_string())?,
                s.peer_addr().map_err(|e| e.to_string())?,
            ) else {
                return Err("a loopback socket is not IPv4".into());
            };
            out.sockets += 1;
            let key = crate::sockmap::sockhash_key(local, peer);
            let fd = u64::try_from(s.as_raw_fd()).map_err(|e| e.to_string())?;
            kept.push(s);
            match update_noexist(&map, &key, &fd.to_ne_bytes()) {
                Ok(()) => out.inserted += 1,
                Err(e) => {
                    out.refused_errno = e.raw_os_error();
                    out.error = Some(e.to_string());
                    break 'fill;
                }
            }
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_entries_have_the_datapaths_layout() {
        let (k, v) = entry(MapKind::Services, 0x4000_0000, 80, 3);
        assert_eq!(k, vec![198, 18, 0, 3, 0, 80, 6, 0], "ServiceKey: 8 bytes");
        assert_eq!(v.len(), 8, "ServiceValue");
        assert_eq!(&v[4..], &0x4000_0003u32.to_ne_bytes());
        let (k, v) = entry(MapKind::Slots, 0x4000_0000, 80, 7);
        assert_eq!((k.len(), v.len()), (8, 4), "SlotKey -> u32");
        assert_eq!(&k[4..], &7u32.to_ne_bytes());
        let (k, v) = entry(MapKind::Backends, 0x4000_0000, 80, 1);
        assert_eq!(k, 0x4000_0001u32.to_ne_bytes().to_vec());
        assert_eq!(v, vec![198, 18, 0, 1, 0, 80, 6, 0], "Backend: 8 bytes");
    }
}
