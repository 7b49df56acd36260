//! The one skip policy of the harness's tests (integration tests include it through
//! `common`, the qemu provider's unit tests through `#[path]`): a test whose prerequisite
//! is missing (root, qemu, /dev/net/tun, a node image) fails under CI, naming what is
//! missing, so a CI run cannot be green with a tier never run; elsewhere it says
//! `SKIPPED: <reason>` on stderr and the caller returns.

/// True when `CI` is set to anything but empty, `0` or `false` (GitHub Actions sets
/// `CI=true`, .ci/run runs with it).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// Fails under CI, otherwise prints `SKIPPED: <reason>`; the caller returns after it:
/// `if let Some(why) = missing() { return skip(&why); }`.
pub fn skip(reason: &str) {
    if under_ci() {
        panic!("cannot run: {reason} (CI is set: a missing prerequisite is a failure, not a skip)");
    }
    eprintln!("SKIPPED: {reason}");
}

/// `Some(reason)` when the test does not run as root.
#[allow(dead_code)] // not every includer checks root
pub fn not_root(needs: &str) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    (unsafe { libc::geteuid() } != 0).then(|| format!("needs root ({needs})"))
}
