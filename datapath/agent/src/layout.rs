//! Where an instance keeps its pins: `<bpffs dir>/maps/<map>` and `<bpffs dir>/links/<hook>`.

use std::{
    io,
    path::{Path, PathBuf},
};

use crate::hooks::Hook;

/// Default per-instance bpffs directory.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/datapathd";

#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn map_pin(&self, map: &str) -> PathBuf {
        self.maps_dir().join(map)
    }

    pub fn link_pin(&self, hook: Hook) -> PathBuf {
        self.links_dir().join(hook.name())
    }

    /// Create the instance directory and its `maps/` and `links/` (bpffs allows mkdir).
    pub fn create_dirs(&self) -> io::Result<()> {
        std::fs::create_dir_all(self.maps_dir())?;
        std::fs::create_dir_all(self.links_dir())
    }
}

/// Remove a pin; a missing one is not an error.
pub fn unpin(path: &Path) -> io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}
