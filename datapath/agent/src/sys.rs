//! Raw `bpf(2)` calls for what aya 0.14 does not offer: opening pins, atomic link
//! updates, cgroup queries, legacy attach/detach, object info and id iteration, and map
//! creation (so that the agent can pin each map itself, one step at a time).
//!
//! Each attribute struct below mirrors the part of `union bpf_attr` its command reads
//! (linux/include/uapi/linux/bpf.h). The kernel accepts a shorter `bpf_attr` and treats
//! the missing tail as zero, so every struct stops after the last field we use.

use std::{
    ffi::CString,
    io, mem,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    os::unix::ffi::OsStrExt as _,
    path::Path,
};

use aya_obj::generated::{bpf_cmd, bpf_link_info, bpf_map_info, bpf_prog_info};

/// A failed `bpf(2)` command: which one, and the errno.
#[derive(Debug, thiserror::Error)]
#[error("bpf({call}) failed")]
pub struct SysError {
    pub call: &'static str,
    #[source]
    pub io_error: io::Error,
}

impl SysError {
    pub fn errno(&self) -> Option<i32> {
        self.io_error.raw_os_error()
    }
    pub fn is(&self, errno: i32) -> bool {
        self.errno() == Some(errno)
    }
}

pub type Result<T> = std::result::Result<T, SysError>;

fn bpf<T>(cmd: bpf_cmd, call: &'static str, attr: &mut T) -> Result<i64> {
    // SAFETY: `attr` is a #[repr(C)] prefix of `union bpf_attr` for `cmd`, valid for
    // reads and writes of size_of::<T>() bytes; the kernel writes only within that size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut T as *mut libc::c_void,
            mem::size_of::<T>() as libc::c_long,
        )
    };
    if ret < 0 {
        Err(SysError {
            call,
            io_error: io::Error::last_os_error(),
        })
    } else {
        Ok(ret)
    }
}

fn bpf_fd<T>(cmd: bpf_cmd, call: &'static str, attr: &mut T) -> Result<OwnedFd> {
    let fd = bpf(cmd, call, attr)?;
    // SAFETY: on success these commands return a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    fd.as_raw_fd() as u32
}

fn c_path(path: &Path, call: &'static str) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| SysError {
        call,
        io_error: io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"),
    })
}

#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `BPF_OBJ_GET`: open a pinned object (map, program or link).
pub fn obj_get(path: &Path) -> Result<OwnedFd> {
    let c = c_path(path, "BPF_OBJ_GET")?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        ..Default::default()
    };
    bpf_fd(bpf_cmd::BPF_OBJ_GET, "BPF_OBJ_GET", &mut attr)
}

/// `BPF_OBJ_PIN`: pin an object at `path` (fails with EEXIST if the path exists).
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let c = c_path(path, "BPF_OBJ_PIN")?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd_u32(fd),
        file_flags: 0,
    };
    bpf(bpf_cmd::BPF_OBJ_PIN, "BPF_OBJ_PIN", &mut attr).map(drop)
}

#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// `BPF_MAP_CREATE` without BTF: the maps are plain hash/LRU/array maps.
pub fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    name: &str,
) -> Result<OwnedFd> {
    let mut map_name = [0u8; 16];
    for (dst, src) in map_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src;
    }
    let mut attr = MapCreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags: 0,
        inner_map_fd: 0,
        numa_node: 0,
        map_name,
    };
    bpf_fd(bpf_cmd::BPF_MAP_CREATE, "BPF_MAP_CREATE", &mut attr)
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `BPF_MAP_LOOKUP_ELEM` into `value`; `Ok(false)` when the key is absent.
pub fn map_lookup(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> Result<bool> {
    let mut attr = MapElemAttr {
        map_fd: fd_u32(fd),
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        ..Default::default()
    };
    match bpf(
        bpf_cmd::BPF_MAP_LOOKUP_ELEM,
        "BPF_MAP_LOOKUP_ELEM",
        &mut attr,
    ) {
        Ok(_) => Ok(true),
        Err(e) if e.is(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_UPDATE_ELEM` with `BPF_ANY`.
pub fn map_update(fd: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> Result<()> {
    let mut attr = MapElemAttr {
        map_fd: fd_u32(fd),
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        ..Default::default()
    };
    bpf(
        bpf_cmd::BPF_MAP_UPDATE_ELEM,
        "BPF_MAP_UPDATE_ELEM",
        &mut attr,
    )
    .map(drop)
}

/// `BPF_MAP_DELETE_ELEM`; `Ok(false)` when the key was already absent.
pub fn map_delete(fd: BorrowedFd<'_>, key: &[u8]) -> Result<bool> {
    let mut attr = MapElemAttr {
        map_fd: fd_u32(fd),
        key: key.as_ptr() as u64,
        ..Default::default()
    };
    match bpf(
        bpf_cmd::BPF_MAP_DELETE_ELEM,
        "BPF_MAP_DELETE_ELEM",
        &mut attr,
    ) {
        Ok(_) => Ok(true),
        Err(e) if e.is(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// All keys of a map (`BPF_MAP_GET_NEXT_KEY` from no key). A key deleted while we walk
/// restarts the walk at the first key, as the kernel does; duplicates are harmless here.
pub fn map_keys(fd: BorrowedFd<'_>, key_size: usize, limit: usize) -> Result<Vec<Vec<u8>>> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut next = vec![0u8; key_size];
    loop {
        let prev = keys.last();
        let mut attr = MapElemAttr {
            map_fd: fd_u32(fd),
            key: prev.map_or(0, |k| k.as_ptr() as u64),
            value: next.as_mut_ptr() as u64,
            ..Default::default()
        };
        match bpf(
            bpf_cmd::BPF_MAP_GET_NEXT_KEY,
            "BPF_MAP_GET_NEXT_KEY",
            &mut attr,
        ) {
            Ok(_) => keys.push(next.clone()),
            Err(e) if e.is(libc::ENOENT) => return Ok(keys),
            Err(e) => return Err(e),
        }
        if keys.len() >= limit {
            return Ok(keys);
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Legacy `BPF_PROG_ATTACH` (used only by the `stale-cgroup-prog` mutant).
pub fn prog_attach(
    cgroup: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    attach_type: u32,
    flags: u32,
) -> Result<()> {
    let mut attr = AttachAttr {
        target_fd: fd_u32(cgroup),
        attach_bpf_fd: fd_u32(prog),
        attach_type,
        attach_flags: flags,
        replace_bpf_fd: 0,
    };
    bpf(bpf_cmd::BPF_PROG_ATTACH, "BPF_PROG_ATTACH", &mut attr).map(drop)
}

/// `BPF_PROG_DETACH` of one legacy attachment of `prog` from `cgroup`.
pub fn prog_detach(cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>, attach_type: u32) -> Result<()> {
    let mut attr = AttachAttr {
        target_fd: fd_u32(cgroup),
        attach_bpf_fd: fd_u32(prog),
        attach_type,
        ..Default::default()
    };
    bpf(bpf_cmd::BPF_PROG_DETACH, "BPF_PROG_DETACH", &mut attr).map(drop)
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// `BPF_PROG_QUERY` on a cgroup for one attach type: the ids of the programs attached
/// directly to it (not inherited), in run order. Link ids are not reported for cgroup
/// hooks on 6.18; see [`cgroup_links`].
pub fn prog_query(cgroup: BorrowedFd<'_>, attach_type: u32) -> Result<Vec<u32>> {
    let mut cap = 64usize;
    loop {
        let mut ids = vec![0u32; cap];
        let mut attr = QueryAttr {
            target_fd: fd_u32(cgroup),
            attach_type,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: cap as u32,
            ..Default::default()
        };
        match bpf(bpf_cmd::BPF_PROG_QUERY, "BPF_PROG_QUERY", &mut attr) {
            Ok(_) => {
                ids.truncate(attr.prog_cnt as usize);
                return Ok(ids);
            }
            Err(e) if e.is(libc::ENOSPC) && cap < 1 << 16 => {
                cap = (attr.prog_cnt as usize).max(cap * 2)
            }
            Err(e) => return Err(e),
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// `BPF_LINK_UPDATE` with `BPF_F_REPLACE`: swap the link's program atomically, only if it
/// still runs `old_prog` (EPERM otherwise). ENOLINK: the link's cgroup is gone.
pub fn link_update(
    link: BorrowedFd<'_>,
    new_prog: BorrowedFd<'_>,
    old_prog: BorrowedFd<'_>,
) -> Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: fd_u32(link),
        new_prog_fd: fd_u32(new_prog),
        flags: aya_obj::generated::BPF_F_REPLACE,
        old_prog_fd: fd_u32(old_prog),
    };
    bpf(bpf_cmd::BPF_LINK_UPDATE, "BPF_LINK_UPDATE", &mut attr).map(drop)
}

#[repr(C)]
#[derive(Default)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// `BPF_LINK_DETACH`: detach a link even while other fds or pins still hold it.
pub fn link_detach(link: BorrowedFd<'_>) -> Result<()> {
    let mut attr = LinkDetachAttr {
        link_fd: fd_u32(link),
    };
    bpf(bpf_cmd::BPF_LINK_DETACH, "BPF_LINK_DETACH", &mut attr).map(drop)
}

#[repr(C)]
#[derive(Default)]
struct IdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// Which kind of kernel object an id names.
#[derive(Clone, Copy, Debug)]
pub enum Obj {
    Prog,
    Map,
    Link,
}

/// `BPF_{PROG,MAP,LINK}_GET_FD_BY_ID`.
pub fn fd_by_id(kind: Obj, id: u32) -> Result<OwnedFd> {
    let (cmd, call) = match kind {
        Obj::Prog => (bpf_cmd::BPF_PROG_GET_FD_BY_ID, "BPF_PROG_GET_FD_BY_ID"),
        Obj::Map => (bpf_cmd::BPF_MAP_GET_FD_BY_ID, "BPF_MAP_GET_FD_BY_ID"),
        Obj::Link => (bpf_cmd::BPF_LINK_GET_FD_BY_ID, "BPF_LINK_GET_FD_BY_ID"),
    };
    let mut attr = IdAttr {
        id,
        ..Default::default()
    };
    bpf_fd(cmd, call, &mut attr)
}

/// Every id of one kind of object in the kernel (`BPF_*_GET_NEXT_ID`).
pub fn all_ids(kind: Obj) -> Result<Vec<u32>> {
    let (cmd, call) = match kind {
        Obj::Prog => (bpf_cmd::BPF_PROG_GET_NEXT_ID, "BPF_PROG_GET_NEXT_ID"),
        Obj::Map => (bpf_cmd::BPF_MAP_GET_NEXT_ID, "BPF_MAP_GET_NEXT_ID"),
        Obj::Link => (bpf_cmd::BPF_LINK_GET_NEXT_ID, "BPF_LINK_GET_NEXT_ID"),
    };
    let mut ids = Vec::new();
    let mut start = 0u32;
    loop {
        let mut attr = IdAttr {
            id: start,
            ..Default::default()
        };
        match bpf(cmd, call, &mut attr) {
            Ok(_) => {
                ids.push(attr.next_id);
                start = attr.next_id;
            }
            Err(e) if e.is(libc::ENOENT) => return Ok(ids),
            Err(e) => return Err(e),
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn obj_info<T>(fd: BorrowedFd<'_>, info: &mut T) -> Result<()> {
    let mut attr = InfoAttr {
        bpf_fd: fd_u32(fd),
        info_len: mem::size_of::<T>() as u32,
        info: info as *mut T as u64,
    };
    bpf(
        bpf_cmd::BPF_OBJ_GET_INFO_BY_FD,
        "BPF_OBJ_GET_INFO_BY_FD",
        &mut attr,
    )
    .map(drop)
}

fn c_name(name: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// What the kernel says about a program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgInfo {
    pub id: u32,
    pub name: String,
    pub prog_type: u32,
    pub map_ids: Vec<u32>,
}

pub fn prog_info(fd: BorrowedFd<'_>) -> Result<ProgInfo> {
    // SAFETY: bpf_prog_info is plain integers and arrays; all-zero is valid.
    let mut info: bpf_prog_info = unsafe { mem::zeroed() };
    obj_info(fd, &mut info)?;
    let nr = info.nr_map_ids as usize;
    let mut map_ids = vec![0u32; nr];
    if nr > 0 {
        // SAFETY: as above.
        let mut again: bpf_prog_info = unsafe { mem::zeroed() };
        again.nr_map_ids = nr as u32;
        again.map_ids = map_ids.as_mut_ptr() as u64;
        obj_info(fd, &mut again)?;
        map_ids.truncate((again.nr_map_ids as usize).min(nr));
    }
    Ok(ProgInfo {
        id: info.id,
        name: c_name(&info.name),
        prog_type: info.type_,
        map_ids,
    })
}

/// What the kernel says about a map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapInfo {
    pub id: u32,
    pub name: String,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
}

pub fn map_info(fd: BorrowedFd<'_>) -> Result<MapInfo> {
    // SAFETY: bpf_map_info is plain integers and arrays; all-zero is valid.
    let mut info: bpf_map_info = unsafe { mem::zeroed() };
    obj_info(fd, &mut info)?;
    Ok(MapInfo {
        id: info.id,
        name: c_name(&info.name),
        map_type: info.type_,
        key_size: info.key_size,
        value_size: info.value_size,
        max_entries: info.max_entries,
        map_flags: info.map_flags,
    })
}

/// What the kernel says about a link; the cgroup fields are set for cgroup links only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub id: u32,
    pub prog_id: u32,
    pub link_type: u32,
    /// The cgroup's id (its inode number on cgroup2); 0 once the cgroup is gone.
    pub cgroup_id: u64,
    pub attach_type: u32,
}

pub const BPF_LINK_TYPE_CGROUP: u32 =
    aya_obj::generated::bpf_link_type::BPF_LINK_TYPE_CGROUP as u32;

pub fn link_info(fd: BorrowedFd<'_>) -> Result<LinkInfo> {
    // SAFETY: bpf_link_info is plain integers and unions of them; all-zero is valid.
    let mut info: bpf_link_info = unsafe { mem::zeroed() };
    obj_info(fd, &mut info)?;
    let (cgroup_id, attach_type) = if info.type_ == BPF_LINK_TYPE_CGROUP {
        // SAFETY: the kernel filled the `cgroup` member for a cgroup link.
        let cg = unsafe { info.__bindgen_anon_1.cgroup };
        (cg.cgroup_id, cg.attach_type)
    } else {
        (0, 0)
    };
    Ok(LinkInfo {
        id: info.id,
        prog_id: info.prog_id,
        link_type: info.type_,
        cgroup_id,
        attach_type,
    })
}

/// How often a link id that answers EAGAIN is asked again, 1 ms apart.
const LINK_SETTLE_TRIES: u32 = 200;

/// Every cgroup link in the kernel attached to cgroup `cgroup_id` (all attach types).
/// Links that vanish while we look are skipped; so are links another process is still
/// creating (EAGAIN: an id given out, the link not settled yet; on a shared kernel other
/// agents start at the same moment), once they stay unsettled for a while: a link that
/// is not settled is attached to nothing yet.
pub fn cgroup_links(cgroup_id: u64) -> Result<Vec<LinkInfo>> {
    let mut out = Vec::new();
    for id in all_ids(Obj::Link)? {
        let mut tries = 0;
        let fd = loop {
            match fd_by_id(Obj::Link, id) {
                Err(e) if e.is(libc::EAGAIN) && tries < LINK_SETTLE_TRIES => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                r => break r,
            }
        };
        let fd = match fd {
            Ok(fd) => fd,
            Err(e) if e.is(libc::ENOENT) || e.is(libc::EAGAIN) => continue,
            Err(e) => return Err(e),
        };
        let info = match link_info(std::os::fd::AsFd::as_fd(&fd)) {
            Ok(i) => i,
            Err(e) if e.is(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        if info.link_type == BPF_LINK_TYPE_CGROUP && info.cgroup_id == cgroup_id {
            out.push(info);
        }
    }
    Ok(out)
}

/// One BPF instruction (`struct bpf_insn`): opcode, dst/src registers, offset, immediate.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    /// `r0 = imm` (BPF_ALU64 | BPF_MOV | BPF_K).
    pub const fn mov_r0(imm: i32) -> Insn {
        Insn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm,
        }
    }

    /// `exit` (BPF_JMP | BPF_EXIT).
    pub const EXIT: Insn = Insn {
        code: 0x95,
        regs: 0,
        off: 0,
        imm: 0,
    };
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `BPF_PROG_LOAD` of a small hand-written program (the feature probes); GPL-licensed so
/// that every helper is allowed.
pub fn prog_load(prog_type: u32, expected_attach_type: u32, insns: &[Insn]) -> Result<OwnedFd> {
    prog_load_logged(prog_type, expected_attach_type, insns, &mut [])
}

/// [`prog_load`] with the verifier's log (level 1) written into `log` (if not empty).
pub fn prog_load_logged(
    prog_type: u32,
    expected_attach_type: u32,
    insns: &[Insn],
    log: &mut [u8],
) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type,
        ..Default::default()
    };
    if !log.is_empty() {
        attr.log_level = 1;
        attr.log_size = log.len() as u32;
        attr.log_buf = log.as_mut_ptr() as u64;
    }
    bpf_fd(bpf_cmd::BPF_PROG_LOAD, "BPF_PROG_LOAD", &mut attr)
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    /// A cgroup fd, or an ifindex for tcx.
    target: u32,
    attach_type: u32,
    flags: u32,
}

/// `BPF_LINK_CREATE` of `prog` on `target` (a cgroup fd, or an interface index for tcx).
pub fn link_create(prog: BorrowedFd<'_>, target: u32, attach_type: u32) -> Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: fd_u32(prog),
        target,
        attach_type,
        flags: 0,
    };
    bpf_fd(bpf_cmd::BPF_LINK_CREATE, "BPF_LINK_CREATE", &mut attr)
}
