//! Trace importers: Alibaba `openb` node and pod lists, the Microsoft Philly job list.
//!
//! Every problem names the file, the line, the column and the reason. With
//! [`RowPolicy::Skip`] a bad data row is counted and skipped instead of failing the import;
//! problems with the file itself (unreadable, empty, bad header) always fail.

mod csvrows;
pub mod openb;
pub mod philly;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use csvrows::{Field, RowReader};

/// What to do with a malformed data row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowPolicy {
    Fail,
    Skip,
}

/// Where a problem is: file, 1-based line, and 1-based column with its name when known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub file: PathBuf,
    pub line: u64,
    pub column: Option<usize>,
    pub field: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)?;
        if let Some(column) = self.column {
            write!(f, ":{column}")?;
        }
        if let Some(field) = &self.field {
            write!(f, " ({field})")?;
        }
        Ok(())
    }
}

/// A malformed data row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{location}: {reason}")]
pub struct RowError {
    pub location: Location,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: cannot read: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: empty file: expected a header row ({expected})", file.display())]
    Empty { file: PathBuf, expected: String },
    #[error("{}:1: bad header: {reason}", file.display())]
    Header { file: PathBuf, reason: String },
    #[error("{}: no data rows after the header", file.display())]
    NoRows { file: PathBuf },
    #[error("{}: all {skipped} data rows are malformed; the first: {first}", file.display())]
    AllRowsBad {
        file: PathBuf,
        skipped: usize,
        first: Box<RowError>,
    },
    #[error(transparent)]
    Row(Box<RowError>),
}

impl From<RowError> for ImportError {
    fn from(err: RowError) -> Self {
        ImportError::Row(Box::new(err))
    }
}

/// What an import produced, and what it skipped under [`RowPolicy::Skip`].
#[derive(Debug, Clone)]
pub struct Imported<T> {
    pub items: Vec<T>,
    pub skipped: Vec<RowError>,
}

impl<T> Imported<T> {
    pub fn skipped_count(&self) -> usize {
        self.skipped.len()
    }
}

/// Collects rows under a [`RowPolicy`]: a bad row fails the import or is set aside.
pub(crate) struct Collector<T> {
    policy: RowPolicy,
    file: PathBuf,
    items: Vec<T>,
    skipped: Vec<RowError>,
}

impl<T> Collector<T> {
    pub(crate) fn new(file: &Path, policy: RowPolicy) -> Self {
        Collector {
            policy,
            file: file.to_path_buf(),
            items: Vec::new(),
            skipped: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, row: Result<T, RowError>) -> Result<(), ImportError> {
        match row {
            Ok(item) => self.items.push(item),
            Err(err) if self.policy == RowPolicy::Skip => self.skipped.push(err),
            Err(err) => return Err(err.into()),
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<Imported<T>, ImportError> {
        if self.items.is_empty() {
            let skipped = self.skipped.len();
            return Err(match self.skipped.into_iter().next() {
                None => ImportError::NoRows { file: self.file },
                Some(first) => ImportError::AllRowsBad {
                    skipped,
                    file: self.file,
                    first: Box::new(first),
                },
            });
        }
        Ok(Imported {
            items: self.items,
            skipped: self.skipped,
        })
    }
}
