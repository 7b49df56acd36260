//! The checkout the harness runs from: suites/, reports/ and images/ are found there, not
//! in the directory the binary happened to be built in (a harness built in one clone and
//! run from another, or installed, must use the clone it is run from).

use std::path::{Path, PathBuf};

/// A directory is a checkout of this project when it has these.
const MARKERS: [&str; 2] = ["suites", "images/build-node-image"];

fn is_checkout(dir: &Path) -> bool {
    MARKERS.iter().all(|m| dir.join(m).exists())
}

fn first_checkout_above(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|d| is_checkout(d))
        .and_then(|d| std::fs::canonicalize(d).ok())
}

/// The checkout's root, canonical: the first checkout at or above the working
/// directory, else the one holding this executable (target/<profile>/harness), else the
/// one this crate was compiled from.
pub fn root() -> Option<PathBuf> {
    if let Some(r) = std::env::current_dir()
        .ok()
        .and_then(|d| first_checkout_above(&d))
    {
        return Some(r);
    }
    if let Some(r) = std::env::current_exe()
        .ok()
        .and_then(|e| first_checkout_above(&e))
    {
        return Some(r);
    }
    first_checkout_above(Path::new(env!("CARGO_MANIFEST_DIR")))
}

/// `name` under the checkout's root, or relative to the working directory when no
/// checkout is found.
pub fn path(name: &str) -> PathBuf {
    root()
        .map(|r| r.join(name))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// `p` made absolute and canonical where it exists (its existing parent otherwise), for
/// paths printed to be pasted into a shell elsewhere.
pub fn canonical(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
            canonical(parent).join(name)
        }
        _ => std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkout_is_found_from_a_directory_inside_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("a clone, with spaces");
        std::fs::create_dir_all(root.join("suites")).expect("suites");
        std::fs::create_dir_all(root.join("images")).expect("images");
        std::fs::write(root.join("images/build-node-image"), "").expect("script");
        let deep = root.join("harness/src");
        std::fs::create_dir_all(&deep).expect("deep");
        assert_eq!(
            first_checkout_above(&deep),
            Some(std::fs::canonicalize(&root).expect("canonical"))
        );
        assert_eq!(first_checkout_above(tmp.path()), None);
    }

    #[test]
    fn canonical_resolves_dot_dot_even_for_a_file_not_yet_written() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(tmp.path().join("a/b")).expect("dirs");
        let p = tmp.path().join("a/b/../new.xml");
        assert_eq!(
            canonical(&p),
            std::fs::canonicalize(tmp.path())
                .expect("canonical")
                .join("a/new.xml")
        );
    }
}
