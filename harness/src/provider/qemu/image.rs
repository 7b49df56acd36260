//! The node image: built and cached by `images/build-node-image`, read from its directory.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use super::error::{tail, QemuError, Result};
use crate::kernel::KernelSpec;

/// The builder's exit status for a kernel that does not exist or is not a kernel.
const BUILDER_BAD_KERNEL: i32 = 2;

/// How QEMU starts the image's kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMethod {
    /// The uncompressed vmlinux through its PVH entry (2x faster under TCG).
    Pvh,
    /// The bzImage, which decompresses itself in the (emulated) guest.
    BzImage,
}

/// A built node image (see images/README.md).
#[derive(Debug, Clone)]
pub struct NodeImage {
    pub dir: PathBuf,
    /// The file QEMU boots with `-kernel`: `vmlinux` or `bzImage`, see `boot`.
    pub kernel: PathBuf,
    pub boot: BootMethod,
    pub initramfs: PathBuf,
    /// The guest's module tree, bind-mounted over /lib/modules/<release> in the guest.
    pub modules: Option<PathBuf>,
    /// `uname -r` of the guest.
    pub kernel_release: String,
    /// Where the kernel came from: `package=version` or a path.
    pub kernel_source: String,
    /// The Debian package and its version (`linux-image-6.1.0-57-amd64`, `6.1.192-3`),
    /// when the kernel came from one.
    pub kernel_package: Option<String>,
    pub kernel_version: Option<String>,
    /// The series the image was first built for (`6.1`, `newest`), when it was a series.
    pub kernel_series: Option<String>,
    /// A shared flock on the image's `in-use` file while this process may boot from it:
    /// `build-node-image --prune` skips images whose lock it cannot take.
    _in_use: Option<Arc<File>>,
}

/// What an image was built from: the kernel and module tree given, if any.
type BuildKey = (Option<KernelSpec>, Option<PathBuf>);

/// Where `build-node-image` lives: `$DP_HARNESS_IMAGES_DIR`, else images/ of the checkout.
pub fn builder_script() -> PathBuf {
    let dir = std::env::var_os("DP_HARNESS_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::checkout::path("images"));
    dir.join("build-node-image")
}

impl NodeImage {
    /// The exact Debian package its kernel came from (`linux-image-...=VERSION`), when it
    /// came from one: what a replay pins.
    pub fn exact_kernel(&self) -> Option<KernelSpec> {
        Some(KernelSpec::Package {
            name: self.kernel_package.clone()?,
            version: self.kernel_version.clone()?,
        })
    }

    /// The image of the kernel `spec` (built, or found in the cache), once per process.
    pub fn for_kernel(spec: &KernelSpec) -> Result<Self> {
        Self::build(Some(spec), None)
    }
    /// Builds the image (or finds it in the cache): Debian's 6.1 by default, or `kernel`
    /// (a series or a file; a bzImage or vmlinux with its `modules` tree).
    pub fn build(kernel: Option<&KernelSpec>, modules: Option<&Path>) -> Result<Self> {
        // Ask the builder once per process and kernel, so that runs booting several
        // clusters pay its cache check (hashing its inputs) once.
        static BUILT: Mutex<Vec<(BuildKey, NodeImage)>> = Mutex::new(Vec::new());
        let key = (kernel.cloned(), modules.map(Path::to_owned));
        let mut built = BUILT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, image)) = built
            .iter()
            .find(|(k, img)| *k == key && img.kernel.exists())
        {
            return Ok(image.clone());
        }
        let image = Self::run_builder(kernel, modules)?;
        built.push((key, image.clone()));
        Ok(image)
    }

    fn run_builder(kernel: Option<&KernelSpec>, modules: Option<&Path>) -> Result<Self> {
        let script = builder_script();
        if !script.is_file() {
            return Err(QemuError::ImageBuilderMissing { path: script });
        }
        let mut cmd = Command::new(&script);
        if let Some(k) = kernel {
            if let KernelSpec::File(path) = k {
                if !path.is_file() {
                    return Err(QemuError::KernelMissing { path: path.clone() });
                }
            }
            cmd.arg("--kernel").arg(k.builder_arg());
        }
        if let Some(m) = modules {
            cmd.arg("--modules").arg(m);
        }
        let out = cmd.output().map_err(|source| QemuError::Spawn {
            command: script.display().to_string(),
            source,
        })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(BUILDER_BAD_KERNEL) {
            return Err(QemuError::KernelUnavailable {
                spec: kernel.map_or_else(|| "(default)".to_owned(), ToString::to_string),
                message: builder_error(&stderr),
            });
        }
        if !out.status.success() {
            return Err(QemuError::ImageBuild {
                script,
                status: out.status.to_string(),
                stderr_tail: tail(&stderr, 20),
            });
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let dir = stdout.lines().last().unwrap_or("").trim();
        if dir.is_empty() {
            return Err(QemuError::ImageBuild {
                script,
                status: "printed no image directory".to_owned(),
                stderr_tail: tail(&stderr, 20),
            });
        }
        Self::open(Path::new(dir))
    }

    /// Reads an image directory made by `build-node-image`.
    pub fn open(dir: &Path) -> Result<Self> {
        // Locked before the files are looked at: a prune that got there first has
        // removed them, one that comes later sees the lock.
        let in_use = hold_in_use(dir);
        let need = |file: &'static str| -> Result<PathBuf> {
            let p = dir.join(file);
            if p.exists() {
                Ok(p)
            } else {
                Err(QemuError::ImageIncomplete {
                    dir: dir.to_owned(),
                    file,
                })
            }
        };
        let manifest_path = need("manifest")?;
        let manifest = std::fs::read_to_string(&manifest_path).map_err(|source| QemuError::Io {
            what: "reading",
            path: manifest_path,
            source,
        })?;
        let field = |key: &str| {
            manifest
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        // Images from before bzImage boots have no `boot` line: they hold a vmlinux.
        let (boot, kernel) = match field("boot").as_deref() {
            Some("bzImage") => (BootMethod::BzImage, need("bzImage")?),
            _ => (BootMethod::Pvh, need("vmlinux")?),
        };
        let initramfs = need("initramfs.cpio.gz")?;
        let kernel_release = field("kernel_release").unwrap_or_default();
        let modules = dir.join("modules").join(&kernel_release);
        Ok(Self {
            dir: dir.to_owned(),
            kernel,
            boot,
            initramfs,
            modules: modules.is_dir().then_some(modules),
            kernel_source: field("kernel_source").unwrap_or_default(),
            kernel_package: field("kernel_package"),
            kernel_version: field("kernel_version"),
            kernel_series: field("kernel_series"),
            kernel_release,
            _in_use: in_use,
        })
    }
}

/// Takes a shared flock on `<dir>/in-use` (released when the last clone is dropped). An
/// image directory we cannot write to (a prebuilt one) is simply not protected.
fn hold_in_use(dir: &Path) -> Option<Arc<File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("in-use"))
        .ok()?;
    // SAFETY: flock on a descriptor we own; it blocks only while a prune removes the image.
    (unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH) } == 0).then(|| Arc::new(file))
}

/// The builder's error, without its `build-node-image: error: ` prefix.
fn builder_error(stderr: &str) -> String {
    let start = stderr
        .find("build-node-image: error: ")
        .map_or(0, |i| i + "build-node-image: error: ".len());
    stderr[start..].trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builders_error_loses_its_prefix_and_keeps_what_exists() {
        let stderr = "build-node-image: refreshing\nbuild-node-image: error: kernel series 4.1: \
                      no package\nDebian serves (build-node-image --list):\n  6.1 linux-image-x 1\n";
        assert_eq!(
            builder_error(stderr),
            "kernel series 4.1: no package\nDebian serves (build-node-image --list):\n  6.1 linux-image-x 1"
        );
    }

    fn image_dir(manifest: &str, files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("manifest"), manifest).expect("manifest");
        for f in files {
            std::fs::write(dir.path().join(f), b"x").expect("file");
        }
        dir
    }

    #[test]
    fn an_image_says_how_it_boots_and_what_it_was_built_from() {
        let dir = image_dir(
            "kernel_release=7.2.13+deb14-amd64\nkernel_series=newest\n\
             kernel_package=linux-image-7.2.13+deb14-amd64\nkernel_version=7.2.13-1\n\
             boot=bzImage\n",
            &["bzImage", "initramfs.cpio.gz"],
        );
        let image = NodeImage::open(dir.path()).expect("open");
        assert_eq!(image.boot, BootMethod::BzImage);
        assert_eq!(image.kernel, dir.path().join("bzImage"));
        assert_eq!(image.kernel_series.as_deref(), Some("newest"));
        assert_eq!(image.kernel_version.as_deref(), Some("7.2.13-1"));
        assert!(dir.path().join("in-use").exists());

        // An image from before bzImage boots: a vmlinux, no package fields.
        let old = image_dir(
            "kernel_release=6.1.0-57-amd64\nkernel_source=linux-image-6.1.0-57-amd64=6.1.192-3\n",
            &["vmlinux", "initramfs.cpio.gz"],
        );
        let image = NodeImage::open(old.path()).expect("open an old image");
        assert_eq!((image.boot, image.kernel_package), (BootMethod::Pvh, None));

        let broken = image_dir(
            "kernel_release=x\nboot=bzImage\n",
            &["vmlinux", "initramfs.cpio.gz"],
        );
        let err = NodeImage::open(broken.path()).expect_err("no bzImage");
        assert!(
            matches!(
                err,
                QemuError::ImageIncomplete {
                    file: "bzImage",
                    ..
                }
            ),
            "{err}"
        );
    }
}
