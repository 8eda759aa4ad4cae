//! Exits the scheduler has not acknowledged yet, kept in `<data-dir>/exits.jsonl`.
//!
//! A replica's exit is written here (fsync, then an atomic rename) before the replica is
//! forgotten as running, and stays until the scheduler says its store holds it. A scheduler
//! that was down when a replica ended, or an agent that restarted before the report went
//! out, still learns the real exit code at the next `Hello`, so a finished replica is never
//! taken for a lost one and run again.
//!
//! One JSON object per line, so a damaged file can be reported by line.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the ledger inside the agent's data directory.
pub const LEDGER_FILE: &str = "exits.jsonl";
/// Most exits kept. A scheduler that never acknowledges (one older than acknowledgements)
/// would otherwise grow the file, and the cost of each rewrite, without end; past this the
/// oldest are dropped, which only that scheduler could miss.
pub const MAX_UNACKNOWLEDGED: usize = 10_000;

/// One replica's exit, as the agent saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedExit {
    pub job_id: String,
    pub replica: u32,
    pub attempt: u32,
    /// `-1` when ended by a signal or when the exit status is unknown.
    pub exit_code: i32,
    pub signal: i32,
    pub message: String,
    pub ended_unix_ms: i64,
}

impl RecordedExit {
    fn is(&self, job_id: &str, replica: u32, attempt: u32) -> bool {
        self.job_id == job_id && self.replica == replica && self.attempt == attempt
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot read exit ledger {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "exit ledger {path} line {line}: {message} (move the file away to start without the \
         exits it holds)"
    )]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("cannot write exit ledger {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The unacknowledged exits, in the order they happened, mirrored on disk.
#[derive(Debug)]
pub struct ExitLedger {
    path: PathBuf,
    exits: Vec<RecordedExit>,
}

impl ExitLedger {
    /// Reads the ledger in `data_dir` (empty when there is none).
    pub fn open(data_dir: &Path) -> Result<ExitLedger, LedgerError> {
        let path = data_dir.join(LEDGER_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(LedgerError::Read { path, source }),
        };
        let mut exits = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let exit = serde_json::from_str(line).map_err(|e| LedgerError::Parse {
                path: path.clone(),
                line: i + 1,
                message: e.to_string(),
            })?;
            exits.push(exit);
        }
        Ok(ExitLedger { path, exits })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every exit not acknowledged yet, oldest first.
    pub fn unacknowledged(&self) -> &[RecordedExit] {
        &self.exits
    }

    /// The recorded exit of one attempt of a replica, if it has one.
    pub fn find(&self, job_id: &str, replica: u32, attempt: u32) -> Option<&RecordedExit> {
        self.exits.iter().find(|e| e.is(job_id, replica, attempt))
    }

    /// Keeps `exit` durably; returns once it is on disk. A second exit of the same attempt
    /// is not recorded: the first one is what happened.
    pub fn record(&mut self, exit: RecordedExit) -> Result<(), LedgerError> {
        if self
            .find(&exit.job_id, exit.replica, exit.attempt)
            .is_some()
        {
            return Ok(());
        }
        let before = self.exits.clone();
        self.exits.push(exit);
        if self.exits.len() > MAX_UNACKNOWLEDGED {
            let dropped = self.exits.remove(0);
            tracing::warn!(job = %dropped.job_id, replica = dropped.replica,
                           attempt = dropped.attempt, kept = MAX_UNACKNOWLEDGED,
                           "The scheduler acknowledges no exits; forgetting the oldest.");
        }
        if let Err(e) = self.save() {
            self.exits = before;
            return Err(e);
        }
        Ok(())
    }

    /// Forgets an exit the scheduler stored; returns whether it was held.
    pub fn acknowledge(
        &mut self,
        job_id: &str,
        replica: u32,
        attempt: u32,
    ) -> Result<bool, LedgerError> {
        let Some(at) = self
            .exits
            .iter()
            .position(|e| e.is(job_id, replica, attempt))
        else {
            return Ok(false);
        };
        let removed = self.exits.remove(at);
        if let Err(e) = self.save() {
            self.exits.insert(at, removed);
            return Err(e);
        }
        Ok(true)
    }

    /// Writes the whole ledger beside the old one, syncs it, renames it over the old one and
    /// syncs the directory, so a crash leaves either the old ledger or the new one.
    fn save(&self) -> Result<(), LedgerError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let partial = self.path.with_extension("jsonl.partial");
        let mut text = String::new();
        for exit in &self.exits {
            text.push_str(&serde_json::to_string(exit).expect("an exit serializes"));
            text.push('\n');
        }
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&partial)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&partial, &self.path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|source| LedgerError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(job: &str, attempt: u32, code: i32) -> RecordedExit {
        RecordedExit {
            job_id: job.to_string(),
            replica: 0,
            attempt,
            exit_code: code,
            signal: 0,
            message: String::new(),
            ended_unix_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn an_exit_is_on_disk_until_acknowledged_and_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ledger = ExitLedger::open(dir.path()).expect("open");
        assert!(ledger.unacknowledged().is_empty());
        ledger.record(exit("j1", 1, 0)).expect("record");
        ledger.record(exit("j2", 1, 3)).expect("record");
        // A second report of the same attempt keeps the first.
        ledger.record(exit("j1", 1, 9)).expect("record");

        let reopened = ExitLedger::open(dir.path()).expect("reopen");
        assert_eq!(
            reopened.unacknowledged(),
            &[exit("j1", 1, 0), exit("j2", 1, 3)]
        );

        assert!(ledger.acknowledge("j1", 0, 1).expect("ack"));
        assert!(
            !ledger.acknowledge("j1", 0, 1).expect("second ack"),
            "an ack is idempotent"
        );
        assert!(
            !ledger.acknowledge("j2", 0, 2).expect("other attempt"),
            "an ack names the attempt"
        );
        let reopened = ExitLedger::open(dir.path()).expect("reopen");
        assert_eq!(reopened.unacknowledged(), &[exit("j2", 1, 3)]);
        assert!(
            !dir.path().join("exits.jsonl.partial").exists(),
            "nothing half-written is left"
        );
    }

    #[test]
    fn a_corrupt_ledger_is_an_error_naming_the_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = serde_json::to_string(&exit("j1", 1, 0)).expect("json");
        std::fs::write(
            dir.path().join(LEDGER_FILE),
            format!("{good}\n{{\"job_id\": \"j2\", \"repl\n"),
        )
        .expect("write");
        let err = ExitLedger::open(dir.path()).expect_err("corrupt");
        let text = err.to_string();
        assert!(text.contains("exits.jsonl line 2"), "{text}");
        assert!(matches!(err, LedgerError::Parse { line: 2, .. }), "{err:?}");
    }

    #[test]
    fn a_failed_write_keeps_memory_as_the_disk_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ledger = ExitLedger::open(dir.path()).expect("open");
        ledger.record(exit("j1", 1, 0)).expect("record");
        // The partial file's place is taken by a directory: the next write cannot happen.
        std::fs::create_dir(dir.path().join("exits.jsonl.partial")).expect("mkdir");
        let err = ledger.record(exit("j2", 1, 0)).expect_err("write fails");
        assert!(err.to_string().contains("exits.jsonl"), "{err}");
        assert_eq!(ledger.unacknowledged(), &[exit("j1", 1, 0)]);
        assert!(ledger.acknowledge("j1", 0, 1).is_err());
        assert_eq!(ledger.unacknowledged(), &[exit("j1", 1, 0)]);
    }
}
