//! A JSON record the running agent keeps where other processes (`status`, the next agent)
//! can read it: a one-entry array map holding the JSON, pinned at a path under the
//! instance's bpffs (it goes with the instance's other pins; `cleanup` removes it). The
//! feature report and the pressure record are kept this way.

use std::{os::fd::AsFd, path::Path};

use aya_obj::generated::bpf_map_type;
use serde::{de::DeserializeOwned, Serialize};

use crate::{layout, sys};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("encoding the {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("decoding the {what} pinned at {path}")]
    Decode {
        what: &'static str,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} ({path})")]
    Sys {
        what: String,
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

/// One kind of record: what it is called in messages and its map's name.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// "features report", "pressure record".
    pub what: &'static str,
    /// The map's name (`dp_features`).
    pub map: &'static str,
}

/// Replaces the record pinned at `path` with `value`.
pub fn write<T: Serialize>(kind: Kind, path: &Path, value: &T) -> Result<(), RecordError> {
    let shown = path.display().to_string();
    let json = serde_json::to_vec(value).map_err(|source| RecordError::Encode {
        what: kind.what,
        source,
    })?;
    let sys_err = |what: &str| {
        let (what, path) = (format!("{what} {}", kind.map), shown.clone());
        move |source| RecordError::Sys { what, path, source }
    };
    let map = sys::map_create(
        bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
        4,
        json.len() as u32,
        1,
        kind.map,
    )
    .map_err(sys_err("creating"))?;
    sys::map_update(map.as_fd(), &0u32.to_ne_bytes(), &json).map_err(sys_err("writing"))?;
    layout::unpin(path).map_err(|source| RecordError::Unpin {
        path: shown.clone(),
        source,
    })?;
    sys::obj_pin(map.as_fd(), path).map_err(sys_err("pinning"))
}

/// The record pinned at `path`, or `None` when there is none.
pub fn read<T: DeserializeOwned>(kind: Kind, path: &Path) -> Result<Option<T>, RecordError> {
    if path.symlink_metadata().is_err() {
        return Ok(None);
    }
    let shown = path.display().to_string();
    let sys_err = |what: &str| {
        let (what, path) = (format!("{what} {}", kind.map), shown.clone());
        move |source| RecordError::Sys { what, path, source }
    };
    let map = sys::obj_get(path).map_err(sys_err("opening"))?;
    let info = sys::map_info(map.as_fd()).map_err(sys_err("reading the info of"))?;
    let mut json = vec![0u8; info.value_size as usize];
    if !sys::map_lookup(map.as_fd(), &0u32.to_ne_bytes(), &mut json).map_err(sys_err("reading"))? {
        return Ok(None);
    }
    serde_json::from_slice(&json)
        .map(Some)
        .map_err(|source| RecordError::Decode {
            what: kind.what,
            path: shown,
            source,
        })
}
