//! The node image: built and cached by `images/build-node-image`, read from its directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use super::error::{tail, QemuError, Result};
use crate::kernel::KernelSpec;

/// A built node image (see images/README.md).
#[derive(Debug, Clone)]
pub struct NodeImage {
    pub dir: PathBuf,
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
    /// The guest's module tree, bind-mounted over /lib/modules/<release> in the guest.
    pub modules: Option<PathBuf>,
    /// `uname -r` of the guest.
    pub kernel_release: String,
    /// Where the kernel came from: `package=version` or a path.
    pub kernel_source: String,
    /// The exact Debian package the kernel came from, when it came from one.
    pub kernel_package: Option<KernelSpec>,
}

/// What an image was built from: the kernel and module tree given, if any.
type BuildKey = (Option<PathBuf>, Option<PathBuf>);

/// Where `build-node-image` lives: `$DP_HARNESS_IMAGES_DIR`, else images/ of the checkout.
pub fn builder_script() -> PathBuf {
    let dir = std::env::var_os("DP_HARNESS_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::checkout::path("images"));
    dir.join("build-node-image")
}

impl NodeImage {
    /// The image of the kernel `spec` (built, or found in the cache), once per process.
    pub fn for_kernel(spec: &KernelSpec) -> Result<Self> {
        static BUILT: Mutex<Vec<(KernelSpec, NodeImage)>> = Mutex::new(Vec::new());
        let mut built = BUILT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, image)) = built
            .iter()
            .find(|(k, img)| k == spec && img.vmlinux.exists())
        {
            return Ok(image.clone());
        }
        let image = Self::run_builder_with(&[
            std::ffi::OsString::from("--kernel"),
            std::ffi::OsString::from(spec.to_string()),
        ])
        .map_err(|e| match e {
            QemuError::ImageBuild {
                status,
                stderr_tail,
                ..
            } if status.contains("exit status: 2") => QemuError::KernelUnavailable {
                spec: spec.to_string(),
                message: stderr_tail,
            },
            other => other,
        })?;
        built.push((spec.clone(), image.clone()));
        Ok(image)
    }

    /// Builds the image (or finds it in the cache): Debian's kernel by default, or the
    /// kernel at `kernel` (a .deb, a bzImage or a vmlinux) with its `modules` tree.
    pub fn build(kernel: Option<&Path>, modules: Option<&Path>) -> Result<Self> {
        // The builder's cache check costs ~1.5 s (apt-cache): ask it once per process and
        // kernel, so that runs booting several clusters pay it once.
        static BUILT: Mutex<Vec<(BuildKey, NodeImage)>> = Mutex::new(Vec::new());
        let key = (kernel.map(Path::to_owned), modules.map(Path::to_owned));
        let mut built = BUILT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, image)) = built
            .iter()
            .find(|(k, img)| *k == key && img.vmlinux.exists())
        {
            return Ok(image.clone());
        }
        let image = Self::run_builder(kernel, modules)?;
        built.push((key, image.clone()));
        Ok(image)
    }

    fn run_builder(kernel: Option<&Path>, modules: Option<&Path>) -> Result<Self> {
        let mut args = Vec::new();
        if let Some(k) = kernel {
            if !k.is_file() {
                return Err(QemuError::KernelMissing { path: k.to_owned() });
            }
            args.extend(["--kernel".into(), k.as_os_str().to_owned()]);
        }
        if let Some(m) = modules {
            args.extend(["--modules".into(), m.as_os_str().to_owned()]);
        }
        Self::run_builder_with(&args)
    }

    fn run_builder_with(args: &[std::ffi::OsString]) -> Result<Self> {
        let script = builder_script();
        if !script.is_file() {
            return Err(QemuError::ImageBuilderMissing { path: script });
        }
        let mut cmd = Command::new(&script);
        cmd.args(args);
        let out = cmd.output().map_err(|source| QemuError::Spawn {
            command: script.display().to_string(),
            source,
        })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
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
        let vmlinux = need("vmlinux")?;
        let initramfs = need("initramfs.cpio.gz")?;
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
                .unwrap_or("")
                .to_owned()
        };
        let kernel_release = field("kernel_release");
        let kernel_source = field("kernel_source");
        let kernel_package = kernel_source
            .parse::<KernelSpec>()
            .ok()
            .filter(|k| matches!(k, KernelSpec::Package { .. }));
        let modules = dir.join("modules").join(&kernel_release);
        Ok(Self {
            dir: dir.to_owned(),
            vmlinux,
            initramfs,
            modules: modules.is_dir().then_some(modules),
            kernel_source,
            kernel_package,
            kernel_release,
        })
    }
}
