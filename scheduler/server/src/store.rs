//! Durable state in one SQLite database (WAL mode) under the data directory.
//!
//! Every write that a client is told about happens inside one transaction with the event that
//! records it, so after a crash the job table and the event log agree. Specs, inventories and
//! placements are stored as JSON of the engine's domain types: the schema stays small and the
//! domain types stay the single definition.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Serialize, de::DeserializeOwned};
use suanli_engine::job::JobId;
use suanli_engine::{Cid, JobSpec, JobState, NodeInventory};

use crate::clock::{Clock, SystemClock};

pub const DB_FILE: &str = "suanli.db";

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE jobs (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    tenant     TEXT NOT NULL,
    queue      TEXT NOT NULL,
    kind       TEXT NOT NULL,
    state      TEXT NOT NULL,
    priority   INTEGER NOT NULL,
    spec       TEXT NOT NULL,
    placement  TEXT,
    reason     TEXT NOT NULL DEFAULT '',
    attempts   INTEGER NOT NULL DEFAULT 0,
    request_id TEXT UNIQUE,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    started_ms INTEGER NOT NULL DEFAULT 0,
    finished_ms INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_by_state ON jobs(state, seq);
CREATE INDEX jobs_by_tenant ON jobs(tenant, seq);
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT NOT NULL,
    at_ms      INTEGER NOT NULL,
    from_state TEXT,
    to_state   TEXT NOT NULL,
    reason     TEXT NOT NULL,
    message    TEXT NOT NULL
);
CREATE INDEX events_by_job ON events(job_id, seq);
CREATE TABLE nodes (
    cid         TEXT PRIMARY KEY,
    generation  INTEGER NOT NULL,
    inventory   TEXT NOT NULL,
    cordoned    INTEGER NOT NULL DEFAULT 0,
    lost        INTEGER NOT NULL DEFAULT 0,
    last_seen_ms INTEGER NOT NULL
);
"#,
    r#"
ALTER TABLE nodes ADD COLUMN cordon_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;
"#,
    // The SHA-256 of the node credential issued at the node's first registration; NULL for
    // nodes registered before credentials existed (their next registration is given one).
    r#"
ALTER TABLE nodes ADD COLUMN credential_sha256 TEXT;
"#,
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored {what} is not valid JSON: {source}")]
    Corrupt {
        what: String,
        source: serde_json::Error,
    },
    #[error("job {0} not found")]
    JobNotFound(JobId),
    #[error("job {id} is {current}; it cannot become {requested}")]
    BadTransition {
        id: JobId,
        current: JobState,
        requested: JobState,
    },
    #[error("database {path} has schema version {found}, newer than this binary knows ({known})")]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        known: usize,
    },
}

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync on every commit: an acknowledged write survives power loss.
    #[default]
    Full,
    /// WAL without fsync per commit: survives a crashed or killed process, not power loss.
    Normal,
}

/// One job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    pub spec: JobSpec,
    pub state: JobState,
    /// The engine's placement, as JSON, while the job holds resources.
    pub placement: Option<serde_json::Value>,
    /// Why the job is where it is (pending reason, failure message).
    pub reason: String,
    pub attempts: u32,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// When it last started running; 0 if never.
    pub started_ms: i64,
    /// When it reached a terminal state; 0 if not yet.
    pub finished_ms: i64,
}

/// A job to store: the validated spec and the client's idempotency key, if any.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub spec: JobSpec,
    pub request_id: Option<String>,
}

/// One lifecycle transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    pub seq: i64,
    pub job_id: JobId,
    pub at_ms: i64,
    pub from: Option<JobState>,
    pub to: JobState,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub inventory: NodeInventory,
    pub cordoned: bool,
    /// Why it was cordoned or drained, as the operator said.
    pub cordon_reason: String,
    /// Drained: cordoned and its jobs sent elsewhere.
    pub draining: bool,
    pub lost: bool,
    pub last_seen_ms: i64,
    /// SHA-256 (hex) of the node's credential; `None` until one is issued.
    pub credential_sha256: Option<String>,
}

/// Which jobs to list; `None` fields match everything.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub tenant: Option<String>,
    pub queue: Option<String>,
    pub states: Vec<JobState>,
    /// Return jobs past this id in listing order (the previous page's last id).
    pub after: Option<JobId>,
    pub limit: usize,
    /// Newest first.
    pub newest_first: bool,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// What stamps jobs and events: the core's clock, so a replay with a set clock stores
    /// the times it decided by.
    clock: Arc<dyn Clock>,
}

impl Store {
    /// Opens (creating if needed) `<data_dir>/suanli.db` and brings its schema up to date.
    pub fn open(data_dir: &Path, durability: Durability) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let conn = Connection::open(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            match durability {
                Durability::Full => "FULL",
                Durability::Normal => "NORMAL",
            },
        )?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut store = Store {
            conn,
            path,
            clock: Arc::new(SystemClock),
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stamps what is stored from now on with `clock`.
    pub fn set_clock(&mut self, clock: Arc<dyn Clock>) {
        self.clock = clock;
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))?;
        let applied = usize::try_from(version).unwrap_or(usize::MAX);
        if applied > MIGRATIONS.len() {
            return Err(StoreError::SchemaTooNew {
                path: self.path.clone(),
                found: version,
                known: MIGRATIONS.len(),
            });
        }
        let tx = self.conn.transaction()?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
            tx.execute_batch(sql)?;
            tx.pragma_update(
                None,
                "user_version",
                i64::try_from(i + 1).unwrap_or(i64::MAX),
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Opens a batch: until [`Store::commit_batch`], every write joins one transaction, so a
    /// whole scheduling slice costs one fsync. (Each write uses a savepoint, which nests in
    /// the batch and is a transaction of its own outside one.)
    pub fn begin_batch(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    pub fn commit_batch(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    /// Abandons a batch after a failure; nothing written since `begin_batch` remains.
    pub fn rollback_batch(&mut self) {
        if let Err(e) = self.conn.execute_batch("ROLLBACK") {
            tracing::warn!(error = %e, "Rollback failed.");
        }
    }

    /// Stores a new pending job and its first event; returns the record once committed.
    pub fn insert_job(&mut self, spec: &JobSpec) -> Result<JobRecord, StoreError> {
        let job = NewJob {
            spec: spec.clone(),
            request_id: None,
        };
        let mut records = self.insert_jobs(std::slice::from_ref(&job))?;
        Ok(records.remove(0))
    }

    /// Stores several new jobs in one transaction (one fsync): the server batches concurrent
    /// submits through this. A job whose `request_id` its tenant used before is not stored
    /// again; the earlier job is returned in its place.
    pub fn insert_jobs(&mut self, jobs: &[NewJob]) -> Result<Vec<JobRecord>, StoreError> {
        Ok(self
            .insert_jobs_with_events(jobs)?
            .into_iter()
            .map(|(record, _)| record)
            .collect())
    }

    /// [`Store::insert_jobs`], also returning the submission event of each job stored now
    /// (`None` for a repeated request id).
    pub fn insert_jobs_with_events(
        &mut self,
        jobs: &[NewJob],
    ) -> Result<Vec<(JobRecord, Option<EventRecord>)>, StoreError> {
        let now = self.now_ms();
        let tx = self.conn.savepoint()?;
        let mut records = Vec::with_capacity(jobs.len());
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO jobs (id, tenant, queue, kind, state, priority, spec, request_id,
                     created_ms, updated_ms)
                 VALUES ('', ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
            )?;
            let mut existing = tx.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE request_id = ?1"
            ))?;
            let mut set_id = tx.prepare_cached("UPDATE jobs SET id = ?1 WHERE seq = ?2")?;
            let mut event = tx.prepare_cached(
                "INSERT INTO events (job_id, at_ms, from_state, to_state, reason, message)
                 VALUES (?1, ?2, NULL, ?3, 'submitted', ?4)",
            )?;
            for job in jobs {
                // Keys are per tenant: one tenant's key never finds another tenant's job.
                let key = job
                    .request_id
                    .as_ref()
                    .map(|k| format!("{}/{k}", job.spec.tenant));
                if let Some(key) = &key
                    && let Some(record) =
                        existing.query_row(params![key], read_job_row).optional()?
                {
                    records.push((record?, None));
                    continue;
                }
                let spec = &job.spec;
                insert.execute(params![
                    spec.tenant,
                    spec.queue,
                    to_json(&spec.kind)?,
                    JobState::Pending.as_str(),
                    spec.priority,
                    to_json(spec)?,
                    key,
                    now,
                ])?;
                let seq = tx.last_insert_rowid();
                let id = JobId(format!("j-{seq:08}"));
                set_id.execute(params![id.0, seq])?;
                let message = format!("submitted by tenant {}", spec.tenant);
                event.execute(params![id.0, now, JobState::Pending.as_str(), message])?;
                let submitted = EventRecord {
                    seq: tx.last_insert_rowid(),
                    job_id: id.clone(),
                    at_ms: now,
                    from: None,
                    to: JobState::Pending,
                    reason: "submitted".to_string(),
                    message,
                };
                let record = JobRecord {
                    id,
                    spec: spec.clone(),
                    state: JobState::Pending,
                    placement: None,
                    reason: String::new(),
                    attempts: 0,
                    created_ms: now,
                    updated_ms: now,
                    started_ms: 0,
                    finished_ms: 0,
                };
                records.push((record, Some(submitted)));
            }
        }
        tx.commit()?;
        Ok(records)
    }

    pub fn job(&self, id: &JobId) -> Result<JobRecord, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                params![id.0],
                read_job_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::JobNotFound(id.clone()))?
    }

    /// Jobs matching `filter`, oldest first, at most `filter.limit` (all when 0).
    pub fn jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1=1");
        let mut args: Vec<String> = Vec::new();
        if let Some(tenant) = &filter.tenant {
            args.push(tenant.clone());
            sql.push_str(&format!(" AND tenant = ?{}", args.len()));
        }
        if let Some(queue) = &filter.queue {
            args.push(queue.clone());
            sql.push_str(&format!(" AND queue = ?{}", args.len()));
        }
        if !filter.states.is_empty() {
            let mut holders = Vec::new();
            for state in &filter.states {
                args.push(state.as_str().to_string());
                holders.push(format!("?{}", args.len()));
            }
            sql.push_str(&format!(" AND state IN ({})", holders.join(",")));
        }
        if let Some(after) = &filter.after {
            args.push(after.0.clone());
            sql.push_str(&format!(" AND id > ?{}", args.len()));
        }
        if filter.newest_first {
            sql = sql.replace(" AND id > ?", " AND id < ?");
            sql.push_str(" ORDER BY id DESC");
        } else {
            sql.push_str(" ORDER BY id");
        }
        if filter.limit > 0 {
            sql.push_str(&format!(" LIMIT {}", filter.limit));
        }
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), read_job_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row??);
        }
        Ok(out)
    }

    /// Moves a job to `to` if the lifecycle allows it, recording the event in the same
    /// transaction. `placement` replaces the stored placement (`Some(None)` clears it).
    pub fn transition(
        &mut self,
        id: &JobId,
        to: JobState,
        reason: &str,
        message: &str,
        placement: Option<Option<&serde_json::Value>>,
    ) -> Result<EventRecord, StoreError> {
        let now = self.now_ms();
        let tx = self.conn.savepoint()?;
        let current = job_state(&tx, id)?;
        if !current.can_become(to) {
            return Err(StoreError::BadTransition {
                id: id.clone(),
                current,
                requested: to,
            });
        }
        // A job that goes back to pending after it held resources has used an attempt.
        let bump_attempt = i64::from(to == JobState::Placed);
        let started = if to == JobState::Running { now } else { 0 };
        let finished = if to.is_terminal() { now } else { 0 };
        tx.execute(
            "UPDATE jobs SET state = ?1, reason = ?2, updated_ms = ?3, attempts = attempts + ?4,
                 started_ms = CASE WHEN ?5 > 0 THEN ?5 ELSE started_ms END,
                 finished_ms = CASE WHEN ?6 > 0 THEN ?6 ELSE finished_ms END
             WHERE id = ?7",
            params![
                to.as_str(),
                message,
                now,
                bump_attempt,
                started,
                finished,
                id.0
            ],
        )?;
        if let Some(placement) = placement {
            let json = placement.map(to_json).transpose()?;
            tx.execute(
                "UPDATE jobs SET placement = ?1 WHERE id = ?2",
                params![json, id.0],
            )?;
        }
        tx.execute(
            "INSERT INTO events (job_id, at_ms, from_state, to_state, reason, message)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id.0, now, current.as_str(), to.as_str(), reason, message],
        )?;
        let seq = tx.last_insert_rowid();
        tx.commit()?;
        Ok(EventRecord {
            seq,
            job_id: id.clone(),
            at_ms: now,
            from: Some(current),
            to,
            reason: reason.to_string(),
            message: message.to_string(),
        })
    }

    /// Stores a job's placement (replica progress changed) without an event.
    pub fn set_placement<T: Serialize>(
        &mut self,
        id: &JobId,
        placement: &T,
    ) -> Result<(), StoreError> {
        let changed = self.conn.execute(
            "UPDATE jobs SET placement = ?1, updated_ms = ?2 WHERE id = ?3",
            params![to_json(placement)?, self.now_ms(), id.0],
        )?;
        if changed == 0 {
            return Err(StoreError::JobNotFound(id.clone()));
        }
        Ok(())
    }

    /// Records why a pending job is still pending, without an event (it changes often).
    pub fn set_reason(&mut self, id: &JobId, reason: &str) -> Result<(), StoreError> {
        let changed = self.conn.execute(
            "UPDATE jobs SET reason = ?1 WHERE id = ?2",
            params![reason, id.0],
        )?;
        if changed == 0 {
            return Err(StoreError::JobNotFound(id.clone()));
        }
        Ok(())
    }

    /// How many jobs match `filter`, ignoring its paging.
    pub fn count_jobs(&self, filter: &JobFilter) -> Result<u64, StoreError> {
        let unpaged = JobFilter {
            after: None,
            limit: 0,
            ..filter.clone()
        };
        Ok(self.jobs(&unpaged)?.len() as u64)
    }

    /// Replaces a job's spec (priority, preemptibility or queue changed), recording an event.
    pub fn update_spec(
        &mut self,
        id: &JobId,
        spec: &JobSpec,
        message: &str,
    ) -> Result<EventRecord, StoreError> {
        let now = self.now_ms();
        let tx = self.conn.savepoint()?;
        let state = job_state(&tx, id)?;
        tx.execute(
            "UPDATE jobs SET spec = ?1, queue = ?2, priority = ?3, updated_ms = ?4 WHERE id = ?5",
            params![to_json(spec)?, spec.queue, spec.priority, now, id.0],
        )?;
        tx.execute(
            "INSERT INTO events (job_id, at_ms, from_state, to_state, reason, message)
             VALUES (?1, ?2, ?3, ?3, 'updated', ?4)",
            params![id.0, now, state.as_str(), message],
        )?;
        let seq = tx.last_insert_rowid();
        tx.commit()?;
        Ok(EventRecord {
            seq,
            job_id: id.clone(),
            at_ms: now,
            from: Some(state),
            to: state,
            reason: "updated".to_string(),
            message: message.to_string(),
        })
    }

    /// Events after `after_seq` (all when 0), optionally for one job, oldest first.
    pub fn events(
        &self,
        job: Option<&JobId>,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let limit = if limit == 0 { i64::MAX } else { limit as i64 };
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, job_id, at_ms, from_state, to_state, reason, message FROM events
             WHERE seq > ?1 AND (?2 IS NULL OR job_id = ?2) ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![after_seq, job.map(|j| &j.0), limit], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, String>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, job_id, at_ms, from, to, reason, message) = row?;
            out.push(EventRecord {
                seq,
                job_id: JobId(job_id),
                at_ms,
                from: from.as_deref().map(parse_state).transpose()?,
                to: parse_state(&to)?,
                reason,
                message,
            });
        }
        Ok(out)
    }

    /// Inserts or replaces a node's inventory, keeping its cordon flag and clearing `lost`.
    pub fn upsert_node(&mut self, inventory: &NodeInventory) -> Result<(), StoreError> {
        self.register_node(inventory, None)
    }

    /// [`Store::upsert_node`], also recording the hash of a newly issued node credential, in
    /// one statement (one commit) per registration.
    pub fn register_node(
        &mut self,
        inventory: &NodeInventory,
        credential_sha256: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO nodes (cid, generation, inventory, last_seen_ms, credential_sha256)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(cid) DO UPDATE SET generation = excluded.generation,
                 inventory = excluded.inventory, last_seen_ms = excluded.last_seen_ms, lost = 0,
                 credential_sha256 = COALESCE(excluded.credential_sha256, credential_sha256)",
            params![
                inventory.cid.to_string(),
                i64::try_from(inventory.generation).unwrap_or(i64::MAX),
                to_json(inventory)?,
                self.now_ms(),
                credential_sha256,
            ],
        )?;
        Ok(())
    }

    pub fn set_node_flags(
        &mut self,
        cid: &Cid,
        cordoned: Option<bool>,
        lost: Option<bool>,
    ) -> Result<bool, StoreError> {
        let changed = self.conn.execute(
            "UPDATE nodes SET cordoned = COALESCE(?1, cordoned), lost = COALESCE(?2, lost)
             WHERE cid = ?3",
            params![cordoned, lost, cid.to_string()],
        )?;
        Ok(changed > 0)
    }

    /// Records a node's cordon: whether, why, and whether it is being drained.
    pub fn set_node_cordon(
        &mut self,
        cid: &Cid,
        cordoned: bool,
        reason: &str,
        draining: bool,
    ) -> Result<bool, StoreError> {
        let changed = self.conn.execute(
            "UPDATE nodes SET cordoned = ?1, cordon_reason = ?2, draining = ?3 WHERE cid = ?4",
            params![cordoned, reason, draining, cid.to_string()],
        )?;
        Ok(changed > 0)
    }

    /// Forgets a node: its inventory, flags and credential.
    pub fn delete_node(&mut self, cid: &Cid) -> Result<bool, StoreError> {
        let changed = self
            .conn
            .execute("DELETE FROM nodes WHERE cid = ?1", params![cid.to_string()])?;
        Ok(changed > 0)
    }

    /// Every stored node, by CID. A row that no longer reads (an inventory or CID this
    /// version refuses) is left out with a warning and left in the database untouched: one
    /// bad row must not keep the scheduler from starting.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT cid, inventory, cordoned, lost, last_seen_ms, cordon_reason, draining,
                    credential_sha256
             FROM nodes ORDER BY cid",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, bool>(2)?,
                row.get::<_, bool>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, bool>(6)?,
                row.get::<_, Option<String>>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (cid, inventory, cordoned, lost, last_seen_ms, cordon_reason, draining, credential) =
                row?;
            let inventory: NodeInventory = match from_json(
                &format!("inventory of node {cid}"),
                &inventory,
            ) {
                Ok(inventory) => inventory,
                Err(e) => {
                    tracing::warn!(node = %cid, error = %e, "Skipping a stored node that does not read.");
                    continue;
                }
            };
            out.push(NodeRecord {
                inventory,
                cordoned,
                cordon_reason,
                draining,
                lost,
                last_seen_ms,
                credential_sha256: credential,
            });
        }
        Ok(out)
    }

    /// Counts jobs per state, for metrics.
    pub fn job_counts(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state")?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (state, count) = row?;
            out.push((parse_state(&state)?, u64::try_from(count).unwrap_or(0)));
        }
        Ok(out)
    }
}

const JOB_COLUMNS: &str =
    "id, spec, state, placement, reason, attempts, created_ms, updated_ms, started_ms, finished_ms";

fn read_job_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<JobRecord, StoreError>> {
    let id: String = row.get(0)?;
    let spec: String = row.get(1)?;
    let state: String = row.get(2)?;
    let placement: Option<String> = row.get(3)?;
    let reason: String = row.get(4)?;
    let attempts: i64 = row.get(5)?;
    let created_ms: i64 = row.get(6)?;
    let updated_ms: i64 = row.get(7)?;
    let started_ms: i64 = row.get(8)?;
    let finished_ms: i64 = row.get(9)?;
    Ok((|| {
        Ok(JobRecord {
            spec: from_json(&format!("spec of job {id}"), &spec)?,
            state: parse_state(&state)?,
            placement: placement
                .map(|p| from_json(&format!("placement of job {id}"), &p))
                .transpose()?,
            reason,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            created_ms,
            updated_ms,
            started_ms,
            finished_ms,
            id: JobId(id),
        })
    })())
}

/// A job's stored state, read inside the caller's transaction.
fn job_state(conn: &Connection, id: &JobId) -> Result<JobState, StoreError> {
    let state: Option<String> = conn
        .query_row("SELECT state FROM jobs WHERE id = ?1", params![id.0], |r| {
            r.get(0)
        })
        .optional()?;
    parse_state(&state.ok_or_else(|| StoreError::JobNotFound(id.clone()))?)
}

fn parse_state(text: &str) -> Result<JobState, StoreError> {
    text.parse().map_err(|p| StoreError::Corrupt {
        what: format!("job state {text:?}"),
        source: serde::de::Error::custom(p),
    })
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Corrupt {
        what: "value being written".to_string(),
        source,
    })
}

fn from_json<T: DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Corrupt {
        what: what.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use suanli_engine::job::{GpuPolicy, GpuRequest, JobKind};

    fn spec(name: &str, tenant: &str) -> JobSpec {
        let mut spec = JobSpec::new(name, JobKind::Training);
        spec.tenant = tenant.to_string();
        spec.replicas = 2;
        spec.gpu = Some(GpuRequest {
            policy: GpuPolicy::Exclusive { count: 8 },
            models: vec!["H100".parse().expect("valid model")],
        });
        spec
    }

    fn open(dir: &Path) -> Store {
        Store::open(dir, Durability::Normal).expect("opens")
    }

    #[test]
    fn submitted_jobs_survive_reopen_with_their_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids: Vec<JobId> = {
            let mut store = open(dir.path());
            let a = store.insert_job(&spec("a", "research")).expect("stored");
            let b = store.insert_job(&spec("b", "prod")).expect("stored");
            vec![a.id, b.id]
        };
        let store = open(dir.path());
        let a = store.job(&ids[0]).expect("found");
        assert_eq!(a.spec, spec("a", "research"));
        assert_eq!(a.state, JobState::Pending);
        assert_eq!(ids[0].0, "j-00000001");
        let events = store.events(None, 0, 0).expect("events");
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].job_id, ids[1]);
        assert_eq!(events[1].to, JobState::Pending);
        assert_eq!(events[1].reason, "submitted");
    }

    #[test]
    fn transitions_follow_the_lifecycle_and_keep_placement() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = open(dir.path());
        let job = store.insert_job(&spec("a", "t")).expect("stored");
        let placement = serde_json::json!({"replicas": [{"node": "cid:a/b/c/n1"}]});
        store
            .transition(
                &job.id,
                JobState::Placed,
                "Placed",
                "on n1",
                Some(Some(&placement)),
            )
            .expect("pending → placed");
        let err = store
            .transition(&job.id, JobState::Succeeded, "Done", "", None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "job j-00000001 is placed; it cannot become succeeded"
        );
        store
            .transition(&job.id, JobState::Running, "Started", "", None)
            .expect("placed → running");
        let record = store.job(&job.id).expect("found");
        assert_eq!(record.state, JobState::Running);
        assert_eq!(record.placement, Some(placement));
        assert_eq!(record.attempts, 1);
        store
            .transition(
                &job.id,
                JobState::Pending,
                "NodeLost",
                "n1 lost",
                Some(None),
            )
            .expect("running → pending");
        let record = store.job(&job.id).expect("found");
        assert_eq!(record.placement, None);
        let events = store.events(Some(&job.id), 0, 0).expect("events");
        let path: Vec<_> = events.iter().map(|e| e.to).collect();
        assert_eq!(
            path,
            [
                JobState::Pending,
                JobState::Placed,
                JobState::Running,
                JobState::Pending
            ]
        );
    }

    #[test]
    fn listing_filters_and_pages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = open(dir.path());
        let specs: Vec<JobSpec> = (0..5)
            .map(|i| spec(&format!("j{i}"), if i % 2 == 0 { "even" } else { "odd" }))
            .collect();
        let jobs: Vec<NewJob> = specs
            .into_iter()
            .map(|spec| NewJob {
                spec,
                request_id: None,
            })
            .collect();
        store.insert_jobs(&jobs).expect("stored");
        let even = store
            .jobs(&JobFilter {
                tenant: Some("even".into()),
                ..Default::default()
            })
            .expect("listed");
        assert_eq!(even.len(), 3);
        let page1 = store
            .jobs(&JobFilter {
                limit: 2,
                ..Default::default()
            })
            .expect("listed");
        let page2 = store
            .jobs(&JobFilter {
                limit: 2,
                after: Some(page1[1].id.clone()),
                ..Default::default()
            })
            .expect("listed");
        assert_eq!(page2[0].id.0, "j-00000003");
        let running = store
            .jobs(&JobFilter {
                states: vec![JobState::Running],
                ..Default::default()
            })
            .expect("listed");
        assert!(running.is_empty());
        assert_eq!(
            store.job_counts().expect("counts"),
            vec![(JobState::Pending, 5)]
        );
    }

    #[test]
    fn a_retried_submit_returns_the_first_job() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = open(dir.path());
        let job = NewJob {
            spec: spec("a", "t"),
            request_id: Some("req-1".into()),
        };
        let first = store
            .insert_jobs(std::slice::from_ref(&job))
            .expect("stored");
        let again = store.insert_jobs(&[job.clone(), job]).expect("stored");
        assert_eq!(again[0].id, first[0].id);
        assert_eq!(again[1].id, first[0].id);
        assert_eq!(store.count_jobs(&JobFilter::default()).expect("count"), 1);
        // The same key from another tenant is another job.
        let other = NewJob {
            spec: spec("a", "someone-else"),
            request_id: Some("req-1".into()),
        };
        let theirs = store.insert_jobs(&[other]).expect("stored");
        assert_ne!(theirs[0].id, first[0].id);
    }

    #[test]
    fn newest_first_pages_backwards_and_updates_are_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = open(dir.path());
        for i in 0..3 {
            store
                .insert_job(&spec(&format!("j{i}"), "t"))
                .expect("stored");
        }
        let filter = JobFilter {
            newest_first: true,
            limit: 2,
            ..Default::default()
        };
        let page1 = store.jobs(&filter).expect("listed");
        assert_eq!(page1[0].id.0, "j-00000003");
        let page2 = store
            .jobs(&JobFilter {
                after: Some(page1[1].id.clone()),
                ..filter
            })
            .expect("listed");
        assert_eq!(page2.len(), 1);
        assert_eq!(page2[0].id.0, "j-00000001");
        let mut changed = page2[0].spec.clone();
        changed.priority = 50;
        let event = store
            .update_spec(&page2[0].id, &changed, "priority 0 → 50")
            .expect("updated");
        assert_eq!(event.reason, "updated");
        assert_eq!(store.job(&page2[0].id).expect("found").spec.priority, 50);
    }

    #[test]
    fn a_batch_commits_or_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = open(dir.path());
        let kept = store.insert_job(&spec("kept", "t")).expect("stored");
        store.begin_batch().expect("begins");
        store
            .transition(&kept.id, JobState::Placed, "placed", "", None)
            .expect("joins the batch");
        store
            .insert_job(&spec("lost", "t"))
            .expect("joins the batch");
        store.rollback_batch();
        assert_eq!(store.job(&kept.id).expect("found").state, JobState::Pending);
        assert_eq!(store.count_jobs(&JobFilter::default()).expect("count"), 1);
        store.begin_batch().expect("begins");
        store
            .transition(&kept.id, JobState::Placed, "placed", "", None)
            .expect("joins the batch");
        store.commit_batch().expect("commits");
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.job(&kept.id).expect("found").state, JobState::Placed);
        assert_eq!(store.events(Some(&kept.id), 0, 0).expect("events").len(), 2);
    }

    #[test]
    fn unknown_job_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = open(dir.path());
        let id = JobId("j-404".into());
        assert_eq!(
            store.job(&id).unwrap_err().to_string(),
            "job j-404 not found"
        );
        assert_eq!(
            store
                .transition(&id, JobState::Cancelled, "", "", None)
                .unwrap_err()
                .to_string(),
            "job j-404 not found"
        );
    }

    #[test]
    fn a_newer_schema_is_refused_not_damaged() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = open(dir.path());
            store
                .conn
                .pragma_update(None, "user_version", 99)
                .expect("set version");
        }
        let err = Store::open(dir.path(), Durability::Normal).unwrap_err();
        assert!(err.to_string().contains(&format!(
            "schema version 99, newer than this binary knows ({})",
            MIGRATIONS.len()
        )));
    }

    #[test]
    fn a_first_version_database_gains_cordon_reasons() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let conn = Connection::open(dir.path().join(DB_FILE)).expect("opens");
            conn.execute_batch(MIGRATIONS[0]).expect("first schema");
            conn.pragma_update(None, "user_version", 1)
                .expect("version");
            conn.execute(
                "INSERT INTO nodes (cid, generation, inventory, cordoned, last_seen_ms)
                 VALUES ('cid:a/b/c/n1', 1, ?1, 1, 0)",
                params![
                    r#"{"cid":"cid:a/b/c/n1","generation":1,"cpu_milli":1000,"memory_mib":1024}"#
                ],
            )
            .expect("old row");
        }
        let mut store = Store::open(dir.path(), Durability::Normal).expect("migrates");
        let nodes = store.nodes().expect("nodes");
        assert_eq!(nodes.len(), 1);
        assert!(nodes[0].cordoned, "kept from the old schema");
        assert_eq!(
            (nodes[0].cordon_reason.as_str(), nodes[0].draining),
            ("", false)
        );
        let cid = nodes[0].inventory.cid.clone();
        store
            .set_node_cordon(&cid, true, "bad DIMM", true)
            .expect("cordons");
        let nodes = store.nodes().expect("nodes");
        assert_eq!(
            (nodes[0].cordon_reason.as_str(), nodes[0].draining),
            ("bad DIMM", true)
        );
    }
}
