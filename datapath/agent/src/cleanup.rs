//! `datapathd cleanup`: remove every object of this instance. Pinned links are detached
//! (`BPF_LINK_DETACH`, so that a still-running agent's fd cannot keep them attached) and
//! unpinned; programs of ours left on the cgroup by legacy attachments or stray links are
//! detached (the cgroup given with --cgroup, and the one the pinned links were attached
//! to); pinned maps and the instance directory are removed. Idempotent.

use std::{collections::BTreeSet, os::fd::AsFd, path::Path};

use tracing::info;

use crate::{
    cgroup::{self, Cgroup, CgroupError},
    hooks::Hook,
    layout::{self, Layout},
    prereq, sys,
};

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(transparent)]
    Prereq(#[from] prereq::PrereqError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("removing {path}")]
    Remove {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a cleanup removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub links: usize,
    pub detached: usize,
    pub pins: usize,
}

pub fn cleanup(bpffs: &Path, cgroup_path: Option<&Path>) -> Result<Removed, CleanupError> {
    prereq::require_root()?;
    let layout = Layout::new(bpffs);
    let mut removed = Removed::default();
    let mut cgroup_ids = BTreeSet::new();

    if layout.root().exists() {
        prereq::check_bpffs(layout.root())?;
        for hook in Hook::ALL {
            let pin = layout.link_pin(hook);
            if pin.symlink_metadata().is_err() {
                continue;
            }
            if let Ok(fd) = sys::obj_get(&pin) {
                if let Ok(info) = sys::link_info(fd.as_fd()) {
                    if info.cgroup_id != 0 {
                        cgroup_ids.insert(info.cgroup_id);
                    }
                }
                // Errors mean it is not a link or already detached: unpinning is enough.
                let _ = sys::link_detach(fd.as_fd());
            }
            remove(&pin)?;
            removed.links += 1;
            info!(%hook, pin = %pin.display(), "detached and unpinned link");
        }
    }

    let mut cgroups = Vec::new();
    if let Some(p) = cgroup_path {
        prereq::check_cgroup(p)?;
        cgroups.push(Cgroup::open(p)?);
    }
    if !cgroup_ids.is_empty() {
        let mounts = prereq::cgroup2_mounts()?;
        for id in cgroup_ids {
            if cgroups.iter().any(|c| c.id == id) {
                continue;
            }
            if let Some(p) = cgroup::find_by_id(&mounts, id) {
                cgroups.push(Cgroup::open(&p)?);
            }
        }
    }
    for cg in &cgroups {
        for hook in Hook::ALL {
            for a in cg.sweep(hook, None)? {
                info!(%hook, prog_id = a.prog.id, name = %a.prog.name, cgroup = %cg.path.display(), "detached");
                removed.detached += 1;
            }
        }
    }

    if layout.root().exists() {
        removed.detached += detach_skmsg(&layout);
        removed.pins += remove_tree(layout.root())?;
    }
    Ok(removed)
}

/// Detach the sk_msg program(s) from the pinned dp_sockhash, so nothing of ours stays
/// attached however long the map lives on (a socket or a program may still hold it).
fn detach_skmsg(layout: &Layout) -> usize {
    let attach_type = aya_obj::generated::bpf_attach_type::BPF_SK_MSG_VERDICT as u32;
    let Ok(map) = sys::obj_get(&layout.map_pin(datapath_common::MAP_SOCKHASH)) else {
        return 0;
    };
    let mut n = 0;
    for id in sys::prog_query(map.as_fd(), attach_type).unwrap_or_default() {
        let detached = sys::fd_by_id(sys::Obj::Prog, id)
            .and_then(|prog| sys::prog_detach(map.as_fd(), prog.as_fd(), attach_type));
        if detached.is_ok() {
            info!(prog_id = id, "detached sk_msg program from dp_sockhash");
            n += 1;
        }
    }
    n
}

fn remove(path: &Path) -> Result<bool, CleanupError> {
    layout::unpin(path).map_err(|source| CleanupError::Remove {
        path: path.display().to_string(),
        source,
    })
}

/// Remove a directory of pins, counting the pins.
fn remove_tree(dir: &Path) -> Result<usize, CleanupError> {
    let err = |source| CleanupError::Remove {
        path: dir.display().to_string(),
        source,
    };
    let mut count = 0;
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries {
                let e = e.map_err(err)?;
                let path = e.path();
                if e.file_type().map_err(err)?.is_dir() {
                    count += remove_tree(&path)?;
                } else if remove(&path)? {
                    info!(pin = %path.display(), "unpinned");
                    count += 1;
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(err(e)),
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(count),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(count),
        Err(e) => Err(err(e)),
    }
}
