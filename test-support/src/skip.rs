//! The one skip policy of the workspace's tests (the harness's and the datapath's,
//! integration and unit tests alike): a test whose prerequisite is missing (root, qemu,
//! /dev/net/tun, a tool, a node image) fails under CI, naming what is missing, so a CI
//! run cannot be green with a tier never run; elsewhere it says `SKIPPED: <reason>` on
//! stderr and the caller returns.

/// True when `CI` is set to anything but empty, `0` or `false` (GitHub Actions sets
/// `CI=true`, .ci/run runs with it).
pub fn under_ci() -> bool {
    ci_says_run(std::env::var("CI").ok().as_deref())
}

/// The rule of [`under_ci`] on the variable's value (`None`: unset).
fn ci_says_run(value: Option<&str>) -> bool {
    value.is_some_and(|v| !matches!(v, "" | "0" | "false"))
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
pub fn not_root(needs: &str) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    (unsafe { libc::geteuid() } != 0).then(|| format!("needs root ({needs})"))
}

#[cfg(test)]
mod tests {
    use super::ci_says_run;

    #[test]
    fn ci_is_set_unless_empty_zero_or_false() {
        assert!(ci_says_run(Some("true")));
        assert!(ci_says_run(Some("1")));
        assert!(!ci_says_run(None));
        assert!(!ci_says_run(Some("")));
        assert!(!ci_says_run(Some("0")));
        assert!(!ci_says_run(Some("false")));
    }
}
