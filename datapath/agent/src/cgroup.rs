//! What is attached to a cgroup, per hook, as the kernel reports it; and the sweep that
//! detaches programs of ours a previous run left there.
//!
//! `BPF_PROG_QUERY` lists program ids per attach type but (on 6.18) no link ids, and the
//! same flags for links and legacy attachments. So attachments are told apart by matching
//! the query against the cgroup links in the kernel (link info: cgroup id = the cgroup
//! directory's inode number, attach type, program id).

use std::{
    collections::VecDeque,
    fs::File,
    io,
    os::{
        fd::{AsFd, BorrowedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

use datapath_common::OBJECT_PREFIX;

use crate::{
    hooks::Hook,
    sys::{self, LinkInfo, Obj, ProgInfo, SysError},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot open cgroup {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} on cgroup {path}")]
    Sys {
        what: String,
        path: PathBuf,
        #[source]
        source: SysError,
    },
}

/// An open cgroup v2 directory.
#[derive(Debug)]
pub struct Cgroup {
    pub path: PathBuf,
    pub id: u64,
    file: File,
}

impl Cgroup {
    pub fn open(path: &Path) -> Result<Self, CgroupError> {
        let open_err = |source| CgroupError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let id = file.metadata().map_err(open_err)?.ino();
        Ok(Self {
            path: path.to_path_buf(),
            id,
            file,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    fn sys_err(&self, what: String) -> impl FnOnce(SysError) -> CgroupError + '_ {
        move |source| CgroupError::Sys {
            what,
            path: self.path.clone(),
            source,
        }
    }

    /// Every cgroup link attached here (all hooks).
    pub fn links(&self) -> Result<Vec<LinkInfo>, CgroupError> {
        sys::cgroup_links(self.id).map_err(self.sys_err("listing links".into()))
    }

    /// Programs attached directly to this cgroup on `hook`, in run order.
    pub fn attachments(
        &self,
        hook: Hook,
        links: &[LinkInfo],
    ) -> Result<Vec<Attachment>, CgroupError> {
        let ids = match sys::prog_query(self.fd(), hook.attach_type()) {
            Ok(ids) => ids,
            // An attach type this kernel does not know (getpeername4 before 5.8): nothing
            // can be attached there.
            Err(e) if e.is(libc::EINVAL) => Vec::new(),
            Err(e) => return Err(self.sys_err(format!("querying {hook} programs"))(e)),
        };
        let mut unused: Vec<&LinkInfo> = links
            .iter()
            .filter(|l| l.attach_type == hook.attach_type())
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let link_id = unused
                .iter()
                .position(|l| l.prog_id == id)
                .map(|pos| unused.swap_remove(pos).id);
            let prog = match sys::fd_by_id(Obj::Prog, id).and_then(|fd| sys::prog_info(fd.as_fd()))
            {
                Ok(p) => p,
                // Detached and freed since the query.
                Err(e) if e.is(libc::ENOENT) => continue,
                Err(e) => return Err(self.sys_err(format!("reading program {id}"))(e)),
            };
            out.push(Attachment { prog, link_id });
        }
        Ok(out)
    }

    /// Detach every program of ours on `hook` except the one attached through link
    /// `keep`: legacy attachments with `BPF_PROG_DETACH`, links with `BPF_LINK_DETACH`.
    /// Returns what was detached.
    pub fn sweep(&self, hook: Hook, keep: Option<u32>) -> Result<Vec<Attachment>, CgroupError> {
        let links = self.links()?;
        let mut swept = Vec::new();
        for a in self.attachments(hook, &links)? {
            if !a.is_ours() || (a.link_id.is_some() && a.link_id == keep) {
                continue;
            }
            let result = match a.link_id {
                Some(link_id) => {
                    sys::fd_by_id(Obj::Link, link_id).and_then(|fd| sys::link_detach(fd.as_fd()))
                }
                None => sys::fd_by_id(Obj::Prog, a.prog.id)
                    .and_then(|fd| sys::prog_detach(self.fd(), fd.as_fd(), hook.attach_type())),
            };
            match result {
                Ok(()) => swept.push(a),
                // Gone meanwhile: nothing left to detach.
                Err(e) if e.is(libc::ENOENT) => {}
                Err(e) => {
                    return Err(self.sys_err(format!(
                        "detaching {} program {} ({})",
                        hook, a.prog.id, a.prog.name
                    ))(e))
                }
            }
        }
        Ok(swept)
    }
}

/// One program attached to a cgroup hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub prog: ProgInfo,
    /// The link that attaches it; `None` for a legacy `BPF_PROG_ATTACH`.
    pub link_id: Option<u32>,
}

impl Attachment {
    pub fn is_ours(&self) -> bool {
        self.prog.name.starts_with(OBJECT_PREFIX)
    }
}

/// Find the path of the cgroup v2 directory whose id is `id`, under the cgroup2 mounts.
pub fn find_by_id(mounts: &[PathBuf], id: u64) -> Option<PathBuf> {
    const MAX_DIRS: usize = 100_000;
    let mut queue: VecDeque<PathBuf> = mounts.iter().cloned().collect();
    let mut seen = 0usize;
    while let Some(dir) = queue.pop_front() {
        seen += 1;
        if seen > MAX_DIRS {
            return None;
        }
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        if meta.ino() == id {
            return Some(dir);
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                queue.push_back(e.path());
            }
        }
    }
    None
}
