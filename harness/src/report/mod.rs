//! Consumers of the run's events: JUnit XML, the JSON history, artifacts, progress.

pub mod artifacts;
pub mod history;
pub mod junit;
pub mod progress;
