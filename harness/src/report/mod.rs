//! Consumers of the run's events: JUnit XML, the JSON history, artifacts, progress,
//! GitHub Actions output and the markdown summary.

pub mod artifacts;
pub mod github;
pub mod history;
pub mod junit;
pub mod pods;
pub mod progress;
