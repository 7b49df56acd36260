//! The one error of observing a node: which node, which command, and why. Whether it is
//! the harness's own fault (output its parsers cannot read) or the node's (unreachable, a
//! command that failed) decides between a harness error and an Unknown verdict.

use crate::node::{Exit, NodeError, Output};

/// A parser's complaint about a command's output.
pub type ParseError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// The node could not run the command (unreachable, timed out, could not start it);
    /// the node's error names the node and the command.
    #[error(transparent)]
    Run(#[from] NodeError),
    /// The command ran and failed.
    #[error("node {node}: `{command}` failed ({exit}): {stderr}")]
    Failed {
        node: String,
        command: String,
        exit: Exit,
        stderr: String,
    },
    /// The node lacks what the observation needs (no such node, no address known).
    #[error("node {node}: {what}")]
    Unavailable { node: String, what: String },
    /// The command printed what the harness's parser cannot read: the harness's bug or
    /// a tool (ours or the system's) whose output changed. Never a verdict on the
    /// datapath.
    #[error("node {node}: `{command}` printed what the harness cannot read: `{output}`")]
    Unreadable {
        node: String,
        command: String,
        /// The offending output, shortened.
        output: String,
        #[source]
        source: ParseError,
    },
}

/// How much of an unreadable output an error keeps.
const OUTPUT_KEPT: usize = 400;

impl ObserveError {
    /// Output the harness cannot read is its own error (the run exits 3), not something
    /// it failed to observe about the cluster (an Unknown verdict).
    pub fn is_harness_error(&self) -> bool {
        matches!(self, ObserveError::Unreadable { .. })
    }

    pub fn failed(node: &str, argv: &[&str], out: &Output) -> ObserveError {
        ObserveError::Failed {
            node: node.to_string(),
            command: argv.join(" "),
            exit: out.exit,
            stderr: out.stderr_str().trim().to_string(),
        }
    }

    pub fn unreadable(
        node: &str,
        command: impl Into<String>,
        output: &str,
        source: impl Into<ParseError>,
    ) -> ObserveError {
        let mut output = output.trim().to_string();
        if output.len() > OUTPUT_KEPT {
            let mut end = OUTPUT_KEPT;
            while !output.is_char_boundary(end) {
                end -= 1;
            }
            output.truncate(end);
            output.push_str("...");
        }
        ObserveError::Unreadable {
            node: node.to_string(),
            command: command.into(),
            output,
            source: source.into(),
        }
    }

    pub fn unavailable(node: &str, what: impl Into<String>) -> ObserveError {
        ObserveError::Unavailable {
            node: node.to_string(),
            what: what.into(),
        }
    }

    /// The message with its causes, `: `-separated (for verdict summaries).
    pub fn report(&self) -> String {
        let mut s = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cause = c.source();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreadable_output_is_a_harness_error() {
        let e = ObserveError::unreadable(
            "node-a",
            "dp-probe connect",
            "{\"okay\":true}",
            "unknown field `okay`",
        );
        assert!(e.is_harness_error());
        assert_eq!(
            e.report(),
            "node node-a: `dp-probe connect` printed what the harness cannot read: \
             `{\"okay\":true}`: unknown field `okay`"
        );
        assert!(!ObserveError::unavailable("node-a", "no address").is_harness_error());
    }
}
