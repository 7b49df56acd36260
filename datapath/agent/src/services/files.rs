//! Which files of the services directory are read.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The services files directly in `dir`, in name order, with what `stat` says of them. Symlinks are followed (a
/// ConfigMap mount is a set of symlinks into a hidden `..data` directory); a dangling one is
/// skipped like a file that was removed.
pub(super) fn service_files(dir: &Path) -> io::Result<Vec<(PathBuf, fs::Metadata)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !is_service_file_name(&entry.file_name()) {
            continue;
        }
        let path = entry.path();
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => files.push((path, meta)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// `*.yaml`, `*.yml`, `*.json`, and not a dotfile (`.#x.yaml`, `.x.yaml.swp`, `..data`).
pub(super) fn is_service_file_name(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    if name.starts_with('.') {
        return false;
    }
    let Some((stem, ext)) = name.rsplit_once('.') else {
        return false;
    };
    !stem.is_empty() && matches!(ext, "yaml" | "yml" | "json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a.yaml", "svc.yml", "x.json", "a.b.yaml"] {
            assert!(is_service_file_name(OsStr::new(good)), "{good}");
        }
        for bad in [
            ".a.yaml",
            ".#a.yaml",
            "a.yaml~",
            "a.yaml.swp",
            "#a.yaml#",
            "..data",
            "a.txt",
            "yaml",
            "README",
            "a.YAML.bak",
        ] {
            assert!(!is_service_file_name(OsStr::new(bad)), "{bad}");
        }
    }
}
