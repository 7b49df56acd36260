//! The instance's pins, held open so they can be made again. When a node's bpffs is
//! unmounted and mounted again under a running agent, every pin under `--bpffs` is gone,
//! but each pinned object lives on while a process holds an fd of it. So once started,
//! the agent holds an fd of everything it pinned (maps, cgroup and tc links, the features
//! record) and remembers its directories (`maps/`, `links/`, the markers); when a pin
//! vanishes it pins the object it holds again. Nothing is detached or reloaded: the links
//! keep their programs attached throughout, and the next agent finds the pins it takes
//! over.

use std::{
    io,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use crate::{prereq, sys};

#[derive(Debug, thiserror::Error)]
pub enum PinsError {
    #[error("listing {path}")]
    List {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("opening pin {path}")]
    Open {
        path: String,
        #[source]
        source: sys::SysError,
    },
    #[error("{path} is not on a bpf filesystem (bpffs not mounted again yet?)")]
    NoBpffs {
        path: String,
        #[source]
        source: prereq::PrereqError,
    },
    #[error("creating directory {path}")]
    Mkdir {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("pinning again at {path}")]
    Pin {
        path: String,
        #[source]
        source: sys::SysError,
    },
}

enum Held {
    Dir,
    Object(OwnedFd),
}

/// Everything under the instance's bpffs directory, as it was when held.
pub struct HeldPins {
    root: PathBuf,
    /// Parents before their children, so a restore can go in order.
    entries: Vec<(PathBuf, Held)>,
}

impl HeldPins {
    /// Opens every pin under `root` (and notes every directory), except that the
    /// directories in `own` are held as directories only:
    /// the objects pinned in them come and go while the agent runs and the part that
    /// pins them holds and pins them again itself (a deleted pod's tc link must not come
    /// back).
    pub fn hold_except(root: &Path, own: &[PathBuf]) -> Result<HeldPins, PinsError> {
        let mut entries = Vec::new();
        walk(root, own, &mut entries)?;
        Ok(HeldPins {
            root: root.to_path_buf(),
            entries,
        })
    }

    /// How many objects are held.
    pub fn objects(&self) -> usize {
        self.entries
            .iter()
            .filter(|(_, h)| matches!(h, Held::Object(_)))
            .count()
    }

    /// The held paths that are gone (the root first, if it is).
    pub fn missing(&self) -> Vec<&Path> {
        std::iter::once(self.root.as_path())
            .chain(self.entries.iter().map(|(p, _)| p.as_path()))
            .filter(|p| p.symlink_metadata().is_err())
            .collect()
    }

    /// Makes every missing directory and pins every missing object again; returns what
    /// was restored. Refuses while `root` is not on a bpffs (between an unmount and the
    /// next mount, pins would land on whatever is below, or nowhere).
    pub fn restore(&self) -> Result<Vec<PathBuf>, PinsError> {
        prereq::check_bpffs(&self.root).map_err(|source| PinsError::NoBpffs {
            path: self.root.display().to_string(),
            source,
        })?;
        let mut restored = Vec::new();
        if self.root.symlink_metadata().is_err() {
            std::fs::create_dir_all(&self.root).map_err(|source| PinsError::Mkdir {
                path: self.root.display().to_string(),
                source,
            })?;
            restored.push(self.root.clone());
        }
        for (path, held) in &self.entries {
            if path.symlink_metadata().is_ok() {
                continue;
            }
            match held {
                Held::Dir => std::fs::create_dir(path).map_err(|source| PinsError::Mkdir {
                    path: path.display().to_string(),
                    source,
                })?,
                Held::Object(fd) => {
                    sys::obj_pin(fd.as_fd(), path).map_err(|source| PinsError::Pin {
                        path: path.display().to_string(),
                        source,
                    })?
                }
            }
            restored.push(path.clone());
        }
        Ok(restored)
    }
}

fn walk(dir: &Path, own: &[PathBuf], out: &mut Vec<(PathBuf, Held)>) -> Result<(), PinsError> {
    let list_err = |source| PinsError::List {
        path: dir.display().to_string(),
        source,
    };
    let mut children: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(list_err)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(list_err)?;
    children.sort();
    for path in children {
        let meta = path.symlink_metadata().map_err(|source| PinsError::List {
            path: path.display().to_string(),
            source,
        })?;
        if meta.is_dir() {
            out.push((path.clone(), Held::Dir));
            if !own.contains(&path) {
                walk(&path, own, out)?;
            }
        } else {
            let fd = sys::obj_get(&path).map_err(|source| PinsError::Open {
                path: path.display().to_string(),
                source,
            })?;
            out.push((path, Held::Object(fd)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    // The tests' one skip policy.
    use dp_test_support::skip;
    use std::process::Command;

    /// A bpffs of the test's own, unmounted however the test ends.
    struct Bpffs {
        _dir: tempfile::TempDir,
        mount: PathBuf,
    }

    impl Bpffs {
        fn mount(&self) {
            sh(&["mount", "-t", "bpf", "bpf", &self.mount.to_string_lossy()]);
        }
        fn umount(&self) {
            sh(&["umount", &self.mount.to_string_lossy()]);
        }
    }

    impl Drop for Bpffs {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.mount).status();
        }
    }

    fn sh(argv: &[&str]) {
        let st = Command::new(argv[0])
            .args(&argv[1..])
            .status()
            .unwrap_or_else(|e| panic!("running {argv:?}: {e}"));
        assert!(st.success(), "{argv:?}: {st}");
    }

    /// Against the kernel (root): a map pinned under a bpffs that is unmounted and mounted
    /// again is pinned again, the same map (same id), with its directory; while no bpffs
    /// is mounted there the restore refuses rather than pin elsewhere.
    #[test]
    fn pins_lost_to_a_remount_are_made_again_with_the_same_objects() {
        if let Some(why) = skip::not_root("mounting a bpffs, BPF_MAP_CREATE") {
            return skip::skip(&why);
        }
        let dir = tempfile::tempdir().expect("a scratch directory");
        let fs = Bpffs {
            mount: dir.path().join("bpf"),
            _dir: dir,
        };
        std::fs::create_dir(&fs.mount).expect("mkdir mount point");
        fs.mount();
        let root = fs.mount.join("inst");
        let pin = root.join("maps").join("dp_test");
        std::fs::create_dir_all(pin.parent().expect("maps/")).expect("mkdir maps/");
        // BPF_MAP_TYPE_ARRAY
        let map = sys::map_create(2, 4, 8, 1, "dp_test").expect("BPF_MAP_CREATE");
        let id = sys::map_info(map.as_fd()).expect("map info").id;
        sys::obj_pin(map.as_fd(), &pin).expect("BPF_OBJ_PIN");
        drop(map);

        let held = HeldPins::hold_except(&root, &[]).expect("hold");
        assert_eq!(held.objects(), 1);
        assert!(held.missing().is_empty());

        fs.umount();
        assert_eq!(held.missing().first().copied(), Some(root.as_path()));
        let refused = held.restore().expect_err("no bpffs mounted there");
        assert!(matches!(refused, PinsError::NoBpffs { .. }), "{refused:?}");

        fs.mount();
        let restored = held.restore().expect("restore");
        assert_eq!(restored, vec![root.clone(), root.join("maps"), pin.clone()]);
        assert!(held.missing().is_empty());
        let again = sys::obj_get(&pin).expect("the pin is back");
        assert_eq!(sys::map_info(again.as_fd()).expect("map info").id, id);
        assert!(held.restore().expect("nothing to do").is_empty());
    }
}
