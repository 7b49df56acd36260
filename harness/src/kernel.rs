//! Which kernel a node boots: what `--kernel` and a suite's `topology.nodes[].kernel` say.
//! The provider turns it into a node image (images/build-node-image); this module only
//! knows the forms, so that a typo is a located error before anything boots.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The forms, quoted in errors.
pub const EXPECTED: &str = "a Debian kernel series (5.10, 6.1, 6.12, ...), `newest` (sid's), \
an exact package `linux-image-<release>=<version>`, or the path of a linux-image-*.deb";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KernelSpec {
    /// The newest kernel Debian's archive serves (from sid).
    Newest,
    /// A kernel series, `major.minor`: the newest package of it that Debian serves.
    Series { major: u32, minor: u32 },
    /// One exact Debian package, as apt names it (`linux-image-6.1.0-57-amd64=6.1.192-3`).
    Package { name: String, version: String },
    /// A kernel file on this machine: a `linux-image-*.deb` (or, for the provider's own
    /// tests, a bzImage or vmlinux with its module tree).
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{given}` is not a kernel: expected {EXPECTED}")]
pub struct KernelSpecError {
    pub given: String,
}

impl FromStr for KernelSpec {
    type Err = KernelSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || KernelSpecError {
            given: s.to_owned(),
        };
        let s = s.trim();
        if s == "newest" {
            return Ok(Self::Newest);
        }
        if let Some((name, version)) = s.split_once('=') {
            let ok_name = name.starts_with("linux-image-")
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.+_".contains(&b));
            let ok_version = !version.is_empty()
                && version
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.+~:".contains(&b));
            return if ok_name && ok_version {
                Ok(Self::Package {
                    name: name.to_owned(),
                    version: version.to_owned(),
                })
            } else {
                Err(err())
            };
        }
        if s.ends_with(".deb") || s.contains('/') {
            return Ok(Self::File(PathBuf::from(s)));
        }
        let (major, minor) = s.split_once('.').ok_or_else(err)?;
        let num = |x: &str| -> Option<u32> {
            (!x.is_empty() && x.len() <= 3 && x.bytes().all(|b| b.is_ascii_digit()))
                .then(|| x.parse().ok())
                .flatten()
        };
        match (num(major), num(minor)) {
            (Some(major), Some(minor)) => Ok(Self::Series { major, minor }),
            _ => Err(err()),
        }
    }
}

impl KernelSpec {
    /// The argument `images/build-node-image --kernel` takes.
    pub fn builder_arg(&self) -> std::ffi::OsString {
        match self {
            Self::File(p) => p.as_os_str().to_owned(),
            other => other.to_string().into(),
        }
    }
}

impl fmt::Display for KernelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Newest => f.write_str("newest"),
            Self::Series { major, minor } => write!(f, "{major}.{minor}"),
            Self::Package { name, version } => write!(f, "{name}={version}"),
            Self::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl serde::Serialize for KernelSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for KernelSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One `--kernel` argument: `SPEC` for every node, or `NODE:SPEC` for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelArg {
    pub node: Option<String>,
    pub spec: KernelSpec,
}

impl FromStr for KernelArg {
    type Err = KernelSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // A node name is [a-z0-9-]; no kernel form starts with one followed by ':'.
        if let Some((node, spec)) = s.split_once(':') {
            if !node.is_empty()
                && node
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Ok(Self {
                    node: Some(node.to_owned()),
                    spec: spec.parse()?,
                });
            }
        }
        Ok(Self {
            node: None,
            spec: s.parse()?,
        })
    }
}

impl fmt::Display for KernelArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.node {
            Some(n) => write!(f, "{n}:{}", self.spec),
            None => write!(f, "{}", self.spec),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_parses_and_prints_back() {
        for s in [
            "newest",
            "5.10",
            "6.12",
            "linux-image-6.1.0-57-amd64=6.1.192-3",
            "linux-image-7.2.13+deb14-amd64=7.2.13-1",
            "/tmp/a b/linux-image-5.10.0-32-amd64_5.10.223-1_amd64.deb",
            "./k.deb",
        ] {
            let k: KernelSpec = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(k.to_string(), s);
        }
        assert_eq!(
            "5.10".parse::<KernelSpec>(),
            Ok(KernelSpec::Series {
                major: 5,
                minor: 10
            })
        );
    }

    #[test]
    fn what_is_not_a_kernel_says_what_is() {
        for s in ["", "5", "5.x", "latest", "linux-image-6.1=", "bash=5"] {
            let e = s.parse::<KernelSpec>().expect_err(s);
            assert!(e.to_string().contains("Debian kernel series"), "{e}");
        }
    }

    #[test]
    fn a_node_can_be_named_before_its_kernel() {
        let a: KernelArg = "node-b:5.10".parse().expect("node arg");
        assert_eq!(a.node.as_deref(), Some("node-b"));
        assert_eq!(a.to_string(), "node-b:5.10");
        let a: KernelArg = "node-a:linux-image-6.1.0-57-amd64=6.1.192-3"
            .parse()
            .expect("node arg with a package");
        assert_eq!(a.node.as_deref(), Some("node-a"));
        let a: KernelArg = "6.1".parse().expect("all nodes");
        assert_eq!(a.node, None);
    }
}
