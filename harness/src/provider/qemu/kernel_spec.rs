//! Which kernel a node image is built from: a kernel series that Debian's archive serves
//! (`5.10`, `6.1`, `6.12`, `newest` for sid's newest), resolved by `images/build-node-image`
//! to an exact package and version, or a file (a `linux-image-*.deb`, a bzImage, a vmlinux).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A `--kernel` SPEC. A string of the form `<major>.<minor>` or `newest` is a series; any
/// other is a path, which must name an existing file (write `./6.1` for a file called 6.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KernelSpec {
    /// The newest `linux-image-<major>.<minor>*-amd64` across Debian's releases.
    Series { major: u32, minor: u32 },
    /// The newest series that sid (unstable) serves.
    Newest,
    /// A kernel file, canonical so that a replay line names it wherever it runs from.
    Path(PathBuf),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelSpecError {
    #[error("kernel: empty; {EXPECTED}")]
    Empty,
    #[error("kernel {spec}: no such file, and not a kernel series; {EXPECTED}")]
    NotFound { spec: String },
    #[error("kernel {spec}: not a regular file; {EXPECTED}")]
    NotAFile { spec: String },
}

const EXPECTED: &str = "a kernel is a series Debian serves (5.10, 6.1, 6.12, newest; \
     `images/build-node-image --list` shows them) or the path of a linux-image-*.deb, a \
     bzImage or a vmlinux";

impl KernelSpec {
    /// The argument `build-node-image --kernel` takes.
    pub fn builder_arg(&self) -> std::ffi::OsString {
        match self {
            KernelSpec::Path(p) => p.as_os_str().to_owned(),
            other => other.to_string().into(),
        }
    }
}

fn parse_series(s: &str) -> Option<(u32, u32)> {
    let (major, minor) = s.split_once('.')?;
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(major) || !digits(minor) {
        return None;
    }
    Some((major.parse().ok()?, minor.parse().ok()?))
}

impl FromStr for KernelSpec {
    type Err = KernelSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(KernelSpecError::Empty);
        }
        if s == "newest" {
            return Ok(KernelSpec::Newest);
        }
        if let Some((major, minor)) = parse_series(s) {
            return Ok(KernelSpec::Series { major, minor });
        }
        let path = std::fs::canonicalize(s)
            .map_err(|_| KernelSpecError::NotFound { spec: s.to_owned() })?;
        if !path.is_file() {
            return Err(KernelSpecError::NotAFile { spec: s.to_owned() });
        }
        Ok(KernelSpec::Path(path))
    }
}

impl fmt::Display for KernelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelSpec::Series { major, minor } => write!(f, "{major}.{minor}"),
            KernelSpec::Newest => f.write_str("newest"),
            KernelSpec::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_and_newest_parse_and_print_back() {
        for s in ["5.10", "6.1", "6.12", "7.2", "4.1", "newest"] {
            let spec: KernelSpec = s.parse().expect(s);
            assert_eq!(spec.to_string(), s);
            assert_eq!(spec.builder_arg(), std::ffi::OsString::from(s));
        }
        assert_eq!(
            "6.12".parse(),
            Ok(KernelSpec::Series {
                major: 6,
                minor: 12
            })
        );
    }

    #[test]
    fn a_path_is_canonical_and_must_be_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("linux-image-x.deb");
        std::fs::write(&file, b"x").expect("write");
        let spec: KernelSpec = file.to_str().expect("utf-8").parse().expect("a file");
        assert_eq!(
            spec,
            KernelSpec::Path(std::fs::canonicalize(&file).expect("canonical"))
        );

        let dir_spec = dir.path().to_str().expect("utf-8").to_owned();
        assert_eq!(
            dir_spec.parse::<KernelSpec>(),
            Err(KernelSpecError::NotAFile { spec: dir_spec })
        );
    }

    #[test]
    fn what_is_neither_a_series_nor_a_file_says_what_a_kernel_is() {
        for s in [
            "6",
            "6.x",
            "v6.1",
            "6.1.0",
            "./no-such-kernel.deb",
            "latest",
        ] {
            let err = s.parse::<KernelSpec>().expect_err(s);
            assert_eq!(err, KernelSpecError::NotFound { spec: s.to_owned() });
            let text = err.to_string();
            assert!(
                text.contains("no such file") && text.contains("5.10, 6.1, 6.12, newest"),
                "{text}"
            );
        }
        assert_eq!("".parse::<KernelSpec>(), Err(KernelSpecError::Empty));
    }
}
