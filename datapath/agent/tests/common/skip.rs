//! The one skip policy of the datapath's tests (the acceptance tests include it through
//! `common`, unit tests that need the kernel through `#[path]`): a test whose prerequisite
//! is missing (root, a tool) fails under CI, naming what is missing, so a CI run cannot be
//! green with a tier never run; elsewhere it says `SKIPPED: <reason>` on stderr and the
//! caller returns.

/// True when `CI` is set to anything but empty, `0` or `false` (GitHub Actions sets
/// `CI=true`, .ci/run runs with it).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// Fails under CI, otherwise prints `SKIPPED: <reason>`; the caller returns after it.
pub fn skip(reason: &str) {
    if under_ci() {
        panic!("cannot run: {reason} (CI is set: a missing prerequisite is a failure, not a skip)");
    }
    eprintln!("SKIPPED: {reason}");
}

/// `Some(reason)` when the test does not run as root.
pub fn not_root(needs: &str) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    (unsafe { libc::geteuid() } != 0).then(|| format!("needs root ({needs})"))
}
