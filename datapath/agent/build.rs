//! Builds the eBPF object (datapath/ebpf) for bpfel-unknown-none and leaves it in
//! OUT_DIR/datapath, where src/ebpf_object.rs embeds it.
//!
//! Building `core` for the BPF target needs a compiler that accepts `-Z build-std` and the
//! `core` source matching it exactly, plus `bpf-linker` (see shared/notes/toolchain.md).
//! Two routes exist, tried in this order:
//! 1. `$DATAPATH_EBPF_TOOLCHAIN`, if set: that rustup toolchain, with RUSTC_BOOTSTRAP=1.
//! 2. `debian-web`: Debian's rustc-web + rust-web-src linked as a rustup toolchain
//!    (`ci/setup` does it), with RUSTC_BOOTSTRAP=1 for the nested build.
//! 3. `nightly` with the rust-src component.
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build (lint-only jobs): an empty object is embedded
//! and `datapathd run` refuses to start.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context as _, Result};

/// Name of the eBPF crate's `[[bin]]`, which is also the file name aya-build writes.
const EBPF_BIN: &str = "datapath";
/// The masquerade object (the eBPF crate's second `[[bin]]`), embedded by src/masq.rs.
const MASQ_BIN: &str = "masq";
/// The pod networking object (the eBPF crate's third `[[bin]]`), embedded by src/pods/.
const PODS_BIN: &str = "pods";

fn main() -> Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let manifest_dir = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR not set"))?,
    );
    let ebpf_dir = manifest_dir.join("../ebpf");
    let common_dir = manifest_dir.join("../common");
    println!(
        "cargo:rerun-if-changed={}",
        common_dir.join("src").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        common_dir.join("Cargo.toml").display()
    );
    println!("cargo:rerun-if-env-changed=DATAPATH_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");

    let object = out_dir.join(EBPF_BIN);
    if skip_requested() {
        println!("cargo:warning=AYA_BUILD_SKIP is set: embedding an empty eBPF object; `datapathd run` will refuse to start");
        fs::write(&object, b"").with_context(|| format!("writing {}", object.display()))?;
        let masq = out_dir.join(MASQ_BIN);
        fs::write(&masq, b"").with_context(|| format!("writing {}", masq.display()))?;
        let pods = out_dir.join(PODS_BIN);
        fs::write(&pods, b"").with_context(|| format!("writing {}", pods.display()))?;
        return Ok(());
    }

    let route = pick_route()?;
    println!(
        "cargo:warning=building the eBPF object with rustup toolchain `{}` ({})",
        route.toolchain, route.why
    );
    if route.bootstrap {
        // aya-build adds `-Z build-std=core` when RUSTC_BOOTSTRAP=1; the nested cargo
        // inherits it. Build scripts are single-threaded here.
        env::set_var("RUSTC_BOOTSTRAP", "1");
    }
    let ebpf_dir_str = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("eBPF crate path is not UTF-8: {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "datapath-ebpf",
            root_dir: ebpf_dir_str,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&route.toolchain),
    )
    .context("building the eBPF object (datapath/ebpf) failed")?;
    if !object.exists() {
        bail!(
            "the eBPF build finished but produced no {}: is the `[[bin]]` of datapath/ebpf still named `{EBPF_BIN}`?",
            object.display()
        );
    }
    Ok(())
}

fn skip_requested() -> bool {
    env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

struct Route {
    toolchain: String,
    bootstrap: bool,
    why: &'static str,
}

fn pick_route() -> Result<Route> {
    let mut missing = Vec::new();

    if which("rustup").is_none() {
        bail!("cannot build the eBPF object: `rustup` is not on PATH (aya-build runs `rustup run <toolchain> cargo`). Run ci/setup, or set AYA_BUILD_SKIP=1 for a lint-only build.");
    }
    if which("bpf-linker").is_none() {
        missing.push("bpf-linker is not on PATH (ci/setup installs it: `cargo install bpf-linker --no-default-features --features llvm-22` with LLVM 22 first on PATH)".to_string());
    }

    let route = if let Ok(name) = env::var("DATAPATH_EBPF_TOOLCHAIN") {
        match toolchain_core_src(&name) {
            Ok(()) => Some(Route {
                toolchain: name,
                bootstrap: true,
                why: "chosen by DATAPATH_EBPF_TOOLCHAIN, with RUSTC_BOOTSTRAP=1",
            }),
            Err(e) => {
                missing.push(format!("DATAPATH_EBPF_TOOLCHAIN={name}: {e}"));
                None
            }
        }
    } else {
        match toolchain_core_src("debian-web") {
            Ok(()) => Some(Route {
                toolchain: "debian-web".into(),
                bootstrap: true,
                why: "Debian rustc-web + rust-web-src, with RUSTC_BOOTSTRAP=1",
            }),
            Err(debian) => match toolchain_core_src("nightly") {
                Ok(()) => Some(Route {
                    toolchain: "nightly".into(),
                    bootstrap: false,
                    why: "rustup nightly with rust-src",
                }),
                Err(nightly) => {
                    missing.push(format!("route 1, toolchain `debian-web` (Debian rustc-web + rust-web-src, linked by `rustup toolchain link debian-web /usr`): {debian}"));
                    missing.push(format!("route 2, toolchain `nightly` with rust-src (`rustup toolchain install nightly --component rust-src`): {nightly}"));
                    None
                }
            },
        }
    };

    match route {
        Some(route) if missing.is_empty() => Ok(route),
        _ => Err(anyhow!(
            "cannot build the eBPF object; missing:\n  - {}\nRun ci/setup, or set AYA_BUILD_SKIP=1 for a lint-only build.",
            missing.join("\n  - ")
        )),
    }
}

/// Ok when `toolchain` exists and its sysroot has the `core` source build-std needs.
fn toolchain_core_src(toolchain: &str) -> Result<(), String> {
    let output = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .map_err(|e| format!("running `rustup run {toolchain} rustc`: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "the toolchain is not installed (`rustup run {toolchain} rustc` failed: {})",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let core = Path::new(&sysroot).join("lib/rustlib/src/rust/library/core");
    if !core.is_dir() {
        return Err(format!(
            "no core source at {} (install rust-web-src for debian-web, or the rust-src component for a nightly)",
            core.display()
        ));
    }
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
