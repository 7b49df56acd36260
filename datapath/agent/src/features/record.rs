//! The running agent's [`Report`], kept where `status` (another process) can read it: a
//! one-entry array map `dp_features` holding the report's JSON, pinned at
//! `<bpffs>/features`. It goes with the instance's other pins (`cleanup` removes it).

use std::{
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya_obj::generated::bpf_map_type;

use super::Report;
use crate::{layout, sys};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("encoding the features report")]
    Encode(#[source] serde_json::Error),
    #[error("decoding the features report pinned at {path}")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} ({path})")]
    Sys {
        what: &'static str,
        path: String,
        #[source]
        source: sys::SysError,
    },
    #[error("removing the old pin {path}")]
    Unpin {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub fn pin_path(bpffs: &Path) -> PathBuf {
    bpffs.join("features")
}

/// Replace the pinned report with `report`.
pub fn write(bpffs: &Path, report: &Report) -> Result<(), RecordError> {
    let path = pin_path(bpffs);
    let shown = path.display().to_string();
    let json = serde_json::to_vec(report).map_err(RecordError::Encode)?;
    let sys_err = |what| {
        let path = shown.clone();
        move |source| RecordError::Sys { what, path, source }
    };
    let map = sys::map_create(
        bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
        4,
        json.len() as u32,
        1,
        "dp_features",
    )
    .map_err(sys_err("creating dp_features"))?;
    sys::map_update(map.as_fd(), &0u32.to_ne_bytes(), &json)
        .map_err(sys_err("writing dp_features"))?;
    layout::unpin(&path).map_err(|source| RecordError::Unpin {
        path: shown.clone(),
        source,
    })?;
    sys::obj_pin(map.as_fd(), &path).map_err(sys_err("pinning dp_features"))
}

/// The pinned report, or `None` when there is none.
pub fn read(bpffs: &Path) -> Result<Option<Report>, RecordError> {
    let path = pin_path(bpffs);
    if path.symlink_metadata().is_err() {
        return Ok(None);
    }
    let shown = path.display().to_string();
    let sys_err = |what| {
        let path = shown.clone();
        move |source| RecordError::Sys { what, path, source }
    };
    let map = sys::obj_get(&path).map_err(sys_err("opening dp_features"))?;
    let info = sys::map_info(map.as_fd()).map_err(sys_err("reading dp_features' info"))?;
    let mut json = vec![0u8; info.value_size as usize];
    if !sys::map_lookup(map.as_fd(), &0u32.to_ne_bytes(), &mut json)
        .map_err(sys_err("reading dp_features"))?
    {
        return Ok(None);
    }
    serde_json::from_slice(&json)
        .map(Some)
        .map_err(|source| RecordError::Decode {
            path: shown,
            source,
        })
}
