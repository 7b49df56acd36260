//! Polling for changes in the services directory. inotify does not see changes made
//! through 9p (a VM's shared folder), so this compares a cheap snapshot instead: the
//! services files' names, sizes, modification times and inode numbers.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::files;

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime_s: i64,
    mtime_ns: i64,
    /// A file replaced by rename (how editors and `kubectl cp` write) gets a new inode even
    /// when its size and timestamp look the same.
    ino: u64,
}

/// Tells whether the services directory changed since the last look.
#[derive(Debug)]
pub struct DirWatcher {
    dir: PathBuf,
    last: Option<BTreeMap<PathBuf, Stamp>>,
}

impl DirWatcher {
    /// Looks at nothing yet: the first [`DirWatcher::changed`] returns true, so a caller
    /// that loads on `true` cannot miss what happened before it started watching.
    pub fn new(dir: PathBuf) -> Self {
        DirWatcher { dir, last: None }
    }

    /// True when a services file was added, changed or removed since the last call (and on
    /// the first call). Cheap enough to call every 200 ms: one directory listing and one
    /// `stat` per services file. Fails when the directory cannot be listed.
    pub fn changed(&mut self) -> io::Result<bool> {
        let now = self.snapshot()?;
        let changed = self.last.as_ref() != Some(&now);
        self.last = Some(now);
        Ok(changed)
    }

    fn snapshot(&self) -> io::Result<BTreeMap<PathBuf, Stamp>> {
        let mut stamps = BTreeMap::new();
        for (path, m) in files::service_files(&self.dir)? {
            let stamp = Stamp {
                len: m.len(),
                mtime_s: m.mtime(),
                mtime_ns: m.mtime_nsec(),
                ino: m.ino(),
            };
            stamps.insert(path, stamp);
        }
        Ok(stamps)
    }
}
