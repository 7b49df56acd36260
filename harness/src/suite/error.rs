//! Errors of a suite file: file, line, column, key path, what is wrong, the expected form.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error("cannot read suite file {file}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Box<Located>),
}

/// Where and what.
#[derive(Debug)]
pub struct Located {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// `services[1].port`; `.` for the whole document.
    pub path: String,
    pub message: String,
    pub expected: &'static str,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: at `{}`: {}\n  expected form: {}",
            self.file.display(),
            self.line,
            self.column,
            self.path,
            self.message,
            self.expected
        )
    }
}

impl SuiteError {
    pub(super) fn from_serde(
        file: &Path,
        text: &str,
        e: serde_path_to_error::Error<serde_yaml::Error>,
    ) -> SuiteError {
        let path = e.path().to_string();
        let inner = e.inner();
        let (line, column) = inner
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or_else(|| (text.lines().count().max(1), 1));
        // serde_yaml appends "at line L column C" itself; we print the place up front.
        let mut message = inner.to_string();
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        // ...and sometimes prefixes the path it knows.
        if let Some((head, rest)) = message.split_once(": ") {
            if !head.contains(' ') && (head == path || path.ends_with(head) || head.contains('[')) {
                message = rest.to_string();
            }
        }
        SuiteError::Invalid(Box::new(Located {
            file: file.to_path_buf(),
            line,
            column,
            path,
            message,
            expected: expected_for(e.path().to_string().as_str()),
        }))
    }

    /// A cross-reference error found after parsing: the place is the first line (at or
    /// after the key of the first path segment) that holds `needle`.
    pub(super) fn invalid(
        file: &Path,
        text: &str,
        path: String,
        needle: &str,
        message: String,
        expected: &'static str,
    ) -> SuiteError {
        let top = path.split(['.', '[']).next().unwrap_or("");
        let start = text
            .lines()
            .position(|l| l.starts_with(&format!("{top}:")))
            .unwrap_or(0);
        let (line, column) = text
            .lines()
            .enumerate()
            .skip(start)
            .find_map(|(i, l)| l.find(needle).map(|c| (i + 1, c + 1)))
            .unwrap_or((start + 1, 1));
        SuiteError::Invalid(Box::new(Located {
            file: file.to_path_buf(),
            line,
            column,
            path,
            message,
            expected,
        }))
    }
}

/// The expected form of the element at `path`.
fn expected_for(path: &str) -> &'static str {
    if path.starts_with("topology") {
        super::topology::EXPECTED
    } else if path.starts_with("services") {
        super::service::EXPECTED
    } else if path.contains(".steps") {
        super::step::EXPECTED
    } else if path.starts_with("scenarios") {
        super::scenario::EXPECTED
    } else if path.starts_with("must-catch") {
        super::must_catch::EXPECTED
    } else {
        "a suite: {name, description, repeat, topology, services, scenarios, must-catch, providers}"
    }
}
