//! The running agent's [`Report`], kept where `status` (another process) can read it: a
//! one-entry array map `dp_features` holding the report's JSON, pinned at
//! `<bpffs>/features`. It goes with the instance's other pins (`cleanup` removes it).

use std::path::{Path, PathBuf};

use super::Report;

pub use crate::pinned_record::RecordError;

const KIND: crate::pinned_record::Kind = crate::pinned_record::Kind {
    what: "features report",
    map: "dp_features",
};

pub fn pin_path(bpffs: &Path) -> PathBuf {
    bpffs.join("features")
}

/// Replace the pinned report with `report`.
pub fn write(bpffs: &Path, report: &Report) -> Result<(), RecordError> {
    crate::pinned_record::write(KIND, &pin_path(bpffs), report)
}

/// The pinned report, or `None` when there is none.
pub fn read(bpffs: &Path) -> Result<Option<Report>, RecordError> {
    crate::pinned_record::read(KIND, &pin_path(bpffs))
}
