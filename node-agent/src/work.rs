//! Running assigned work: one child process per replica, with `CUDA_VISIBLE_DEVICES` set to
//! exactly the assigned GPU/MIG UUIDs, stopped with SIGTERM then SIGKILL on cancel.
//!
//! What runs is written to `<data-dir>/running.json`, so an agent that restarts finds its
//! replicas again (checking in `/proc` that each pid is still the process it started) and
//! reports them instead of forgetting them. What ended is kept in the exit ledger
//! ([`crate::ledger`]) until the scheduler acknowledges it.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, info, info_span, warn};

use crate::ledger::{ExitLedger, LedgerError, RecordedExit};
use crate::logs::LogLimits;
use crate::rendezvous::{Rendezvous, hostfile_text, merged_env, rendezvous_env};

/// How often adopted processes (started by an earlier agent) are checked for exit.
const ADOPTED_POLL: Duration = Duration::from_millis(500);
/// Lines of standard error kept in `WorkExited.message` for a failed replica.
const STDERR_TAIL_LINES: usize = 20;

pub fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// One replica to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub job_id: String,
    pub replica: u32,
    pub attempt: u32,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub gpu_uuids: Vec<String>,
    /// Where the job's other replicas are; `None` runs the replica without a rendezvous
    /// environment.
    pub rendezvous: Option<Rendezvous>,
}

/// A replica this agent runs (or an earlier agent on this node started).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningRecord {
    pub job_id: String,
    pub replica: u32,
    pub attempt: u32,
    pub pid: u32,
    pub gpu_uuids: Vec<String>,
    pub started_unix_ms: i64,
    /// `/proc/<pid>/stat` start time (clock ticks since boot), to tell a reused pid apart.
    pub proc_start_ticks: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkEvent {
    Started(RunningRecord),
    Exited {
        job_id: String,
        replica: u32,
        attempt: u32,
        /// `-1` when ended by a signal or when the exit status is unknown.
        exit_code: i32,
        signal: i32,
        message: String,
        ended_unix_ms: i64,
    },
}

impl From<RecordedExit> for WorkEvent {
    fn from(e: RecordedExit) -> WorkEvent {
        WorkEvent::Exited {
            job_id: e.job_id,
            replica: e.replica,
            attempt: e.attempt,
            exit_code: e.exit_code,
            signal: e.signal,
            message: e.message,
            ended_unix_ms: e.ended_unix_ms,
        }
    }
}

type Key = (String, u32);

#[derive(Debug)]
struct Entry {
    record: RunningRecord,
    stop: Option<oneshot::Sender<Duration>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read running-work state {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("running-work state {path} line {line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("cannot write running-work state {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Starts, watches and stops replicas; reports what happens on an event channel.
#[derive(Debug, Clone)]
pub struct WorkRunner {
    data_dir: PathBuf,
    running: Arc<Mutex<BTreeMap<Key, Entry>>>,
    /// Exits the scheduler has not acknowledged.
    exits: Arc<Mutex<ExitLedger>>,
    events: mpsc::UnboundedSender<WorkEvent>,
    log_limits: LogLimits,
}

impl WorkRunner {
    /// Opens the runner on `data_dir`, adopting replicas an earlier agent left running.
    pub fn open(
        data_dir: &Path,
    ) -> Result<(WorkRunner, mpsc::UnboundedReceiver<WorkEvent>), StateError> {
        std::fs::create_dir_all(data_dir.join("work")).map_err(|source| StateError::Write {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let runner = WorkRunner {
            data_dir: data_dir.to_path_buf(),
            running: Arc::new(Mutex::new(BTreeMap::new())),
            exits: Arc::new(Mutex::new(ExitLedger::open(data_dir)?)),
            events: tx,
            log_limits: LogLimits::default(),
        };
        let previous = runner.load_state()?;
        for record in previous {
            if still_running(&record) {
                info!(job = %record.job_id, replica = record.replica, pid = record.pid,
                      "Adopted work an earlier agent started.");
                runner.adopt(record);
            } else if runner.recorded_exit(&record.job_id, record.replica, record.attempt) {
                // The agent stopped between keeping the exit and forgetting the replica:
                // the ledger has the real exit, which the next hello reports.
            } else {
                info!(job = %record.job_id, replica = record.replica, pid = record.pid,
                      "Work from an earlier agent ended while no agent watched it.");
                runner.report_exit(RecordedExit {
                    job_id: record.job_id,
                    replica: record.replica,
                    attempt: record.attempt,
                    exit_code: -1,
                    signal: 0,
                    message: "ended while the agent was down; exit status unknown".to_string(),
                    ended_unix_ms: unix_ms_now(),
                });
            }
        }
        runner.save_state()?;
        crate::logs::collect_old(data_dir, &runner.running_now());
        Ok((runner, rx))
    }

    fn state_path(&self) -> PathBuf {
        self.data_dir.join("running.json")
    }

    /// The hostfile of one replica, beside its logs.
    pub fn hostfile_path(&self, job_id: &str, replica: u32, attempt: u32) -> PathBuf {
        let stem = format!("{}.{replica}.{attempt}", sanitize_file(job_id));
        self.data_dir.join("work").join(format!("{stem}.hosts"))
    }

    /// The replica's environment: its rendezvous (writing its hostfile), then the job's own.
    fn replica_env(&self, a: &Assignment) -> Result<BTreeMap<String, String>, String> {
        let Some(r) = &a.rendezvous else {
            return Ok(a.env.clone());
        };
        let hostfile = self.hostfile_path(&a.job_id, a.replica, a.attempt);
        std::fs::write(&hostfile, hostfile_text(&r.peers))
            .map_err(|e| format!("cannot write hostfile {}: {e}", hostfile.display()))?;
        let own = rendezvous_env(
            &a.job_id,
            a.attempt,
            a.replica,
            a.gpu_uuids.len(),
            r,
            &hostfile,
        );
        Ok(merged_env(own, &a.env))
    }

    /// Where a replica's standard output and error go, interleaved.
    pub fn log_path(&self, job_id: &str, replica: u32, attempt: u32) -> PathBuf {
        crate::logs::log_path(&self.data_dir, job_id, replica, attempt)
    }

    /// Caps the logs of replicas started from now on at `limits`.
    pub fn with_log_limits(mut self, limits: LogLimits) -> WorkRunner {
        self.log_limits = limits;
        self
    }

    /// Whether this attempt of the replica runs here now.
    pub fn runs(&self, job_id: &str, replica: u32, attempt: u32) -> bool {
        self.lock()
            .get(&(job_id.to_string(), replica))
            .is_some_and(|e| e.record.attempt == attempt)
    }

    /// Keeps a running replica's log under the cap until the replica ends.
    fn cap_log(&self, job_id: &str, replica: u32, attempt: u32) {
        let runner = self.clone();
        let job_id = job_id.to_string();
        crate::logs::keep_capped(
            self.log_path(&job_id, replica, attempt),
            self.log_limits,
            move || runner.runs(&job_id, replica, attempt),
        );
    }

    fn load_state(&self) -> Result<Vec<RunningRecord>, StateError> {
        let path = self.state_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        serde_json::from_str(&text).map_err(|e| StateError::Parse {
            path,
            line: e.line(),
            message: e.to_string(),
        })
    }

    fn save_state(&self) -> Result<(), StateError> {
        let records: Vec<RunningRecord> = self.running_now();
        let path = self.state_path();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&records).expect("records always serialize");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| StateError::Write { path, source })
    }

    fn save_or_warn(&self) {
        if let Err(e) = self.save_state() {
            warn!(error = %e, "Could not record running work.");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Entry>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What runs now, for `Hello.running`.
    pub fn running_now(&self) -> Vec<RunningRecord> {
        self.lock().values().map(|e| e.record.clone()).collect()
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, ExitLedger> {
        self.exits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Exits the scheduler has not acknowledged, oldest first, for `Hello`.
    pub fn unacknowledged_exits(&self) -> Vec<RecordedExit> {
        self.ledger().unacknowledged().to_vec()
    }

    fn recorded_exit(&self, job_id: &str, replica: u32, attempt: u32) -> bool {
        self.ledger().find(job_id, replica, attempt).is_some()
    }

    /// The scheduler stored this exit: stop keeping it.
    pub fn acknowledge(&self, job_id: &str, replica: u32, attempt: u32) {
        match self.ledger().acknowledge(job_id, replica, attempt) {
            Ok(true) => {}
            Ok(false) => {
                info!(job = %job_id, replica, attempt, "Acknowledged exit was not held; ignored.")
            }
            // Kept, so it is sent again at the next hello; the scheduler ignores a repeat.
            Err(e) => warn!(error = %e, "Could not forget an acknowledged exit."),
        }
    }

    /// Keeps an exit in the ledger until the scheduler acknowledges it.
    fn keep_exit(&self, exit: &RecordedExit) {
        if let Err(e) = self.ledger().record(exit.clone()) {
            // Still reported now; only a scheduler restart before it is stored loses it.
            warn!(error = %e, job = %exit.job_id, replica = exit.replica,
                  "Could not keep an exit until the scheduler acknowledges it.");
        }
    }

    /// Keeps an exit in the ledger, then reports it on the event channel.
    fn report_exit(&self, exit: RecordedExit) {
        self.keep_exit(&exit);
        let _ = self.events.send(exit.into());
    }

    /// Starts a replica. A replica that already runs is left alone (the scheduler may send
    /// an assignment again after a reconnect).
    pub fn start(&self, a: Assignment) {
        let key = (a.job_id.clone(), a.replica);
        if self.lock().contains_key(&key) {
            info!(job = %a.job_id, replica = a.replica, "Assignment already running; ignored.");
            return;
        }
        // An attempt runs once: one that already ended is reported again, not run again.
        let ended = self.ledger().find(&a.job_id, a.replica, a.attempt).cloned();
        if let Some(exit) = ended {
            info!(job = %a.job_id, replica = a.replica, attempt = a.attempt,
                  "Assignment already ran; reporting its exit again.");
            let _ = self.events.send(exit.into());
            return;
        }
        let exited = |message: String| RecordedExit {
            job_id: a.job_id.clone(),
            replica: a.replica,
            attempt: a.attempt,
            exit_code: -1,
            signal: 0,
            message,
            ended_unix_ms: unix_ms_now(),
        };
        let Some((program, args)) = a.command.split_first() else {
            self.report_exit(exited("assignment has no command".to_string()));
            return;
        };
        let env = match self.replica_env(&a) {
            Ok(env) => env,
            Err(message) => {
                self.report_exit(exited(message));
                return;
            }
        };
        let log_path = self.log_path(&a.job_id, a.replica, a.attempt);
        let files = crate::logs::create(&log_path);
        let (out, err) = match files {
            Ok(f) => f,
            Err(e) => {
                self.report_exit(exited(format!(
                    "cannot create log {}: {e}",
                    log_path.display()
                )));
                return;
            }
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .envs(&env)
            // Exactly the granted devices: an empty list hides every GPU.
            .env("CUDA_VISIBLE_DEVICES", a.gpu_uuids.join(","))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group, so a cancel reaches everything the replica started.
            .process_group(0)
            // The replica outlives an agent restart; the next agent adopts it.
            .kill_on_drop(false);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                warn!(job = %a.job_id, replica = a.replica, error = %e, "Could not start work.");
                self.report_exit(exited(format!("cannot start {program:?}: {e}")));
                return;
            }
        };
        let pid = child.id().unwrap_or(0);
        let record = RunningRecord {
            job_id: a.job_id.clone(),
            replica: a.replica,
            attempt: a.attempt,
            pid,
            gpu_uuids: a.gpu_uuids.clone(),
            started_unix_ms: unix_ms_now(),
            proc_start_ticks: proc_start_ticks(pid).unwrap_or(0),
        };
        let (stop_tx, stop_rx) = oneshot::channel::<Duration>();
        self.lock().insert(
            key.clone(),
            Entry {
                record: record.clone(),
                stop: Some(stop_tx),
            },
        );
        self.save_or_warn();
        info!(job = %a.job_id, replica = a.replica, pid, gpus = %a.gpu_uuids.join(","),
              "Started work.");
        let _ = self.events.send(WorkEvent::Started(record));
        self.cap_log(&a.job_id, a.replica, a.attempt);

        let runner = self.clone();
        let span = info_span!("work", job = %a.job_id, replica = a.replica, pid);
        tokio::spawn(
            async move {
                let status = tokio::select! {
                    status = child.wait() => status,
                    Ok(grace) = stop_rx => {
                        signal_group(pid, Signal::SIGTERM);
                        match tokio::time::timeout(grace, child.wait()).await {
                            Ok(status) => status,
                            Err(_) => {
                                info!(grace_ms = grace.as_millis() as u64,
                                      "Grace period over; sending SIGKILL.");
                                signal_group(pid, Signal::SIGKILL);
                                child.wait().await
                            }
                        }
                    }
                };
                let (exit_code, signal, mut message) = match status {
                    Ok(s) => match (s.code(), s.signal()) {
                        (Some(code), _) => (code, 0, String::new()),
                        (None, Some(sig)) => (-1, sig, String::new()),
                        (None, None) => (-1, 0, "no exit status".to_string()),
                    },
                    Err(e) => (-1, 0, format!("waiting for the process failed: {e}")),
                };
                if exit_code != 0 && message.is_empty() {
                    message = stderr_tail(&log_path);
                }
                // A replica's own children may outlive it; they belong to the replica.
                signal_group(pid, Signal::SIGKILL);
                info!(exit_code, signal, "Work exited.");
                runner.finish(&key, exit_code, signal, message);
            }
            .instrument(span),
        );
    }

    /// Watches a replica an earlier agent started: it is not our child, so poll `/proc`.
    fn adopt(&self, record: RunningRecord) {
        let key = (record.job_id.clone(), record.replica);
        let (stop_tx, mut stop_rx) = oneshot::channel::<Duration>();
        self.lock().insert(
            key.clone(),
            Entry {
                record: record.clone(),
                stop: Some(stop_tx),
            },
        );
        self.cap_log(&record.job_id, record.replica, record.attempt);
        let runner = self.clone();
        let span =
            info_span!("work", job = %record.job_id, replica = record.replica, pid = record.pid);
        tokio::spawn(
            async move {
                let mut killed_by: Option<Signal> = None;
                let mut deadline: Option<tokio::time::Instant> = None;
                while still_running(&record) {
                    tokio::select! {
                        Ok(grace) = &mut stop_rx, if killed_by.is_none() => {
                            signal_group(record.pid, Signal::SIGTERM);
                            killed_by = Some(Signal::SIGTERM);
                            deadline = Some(tokio::time::Instant::now() + grace);
                        }
                        () = tokio::time::sleep(ADOPTED_POLL) => {
                            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                                signal_group(record.pid, Signal::SIGKILL);
                                killed_by = Some(Signal::SIGKILL);
                                deadline = None;
                            }
                        }
                    }
                }
                let (signal, message) = match killed_by {
                    Some(sig) => (sig as i32, "stopped on cancel".to_string()),
                    None => (
                        0,
                        "exit status unknown: started by an earlier agent".to_string(),
                    ),
                };
                runner.finish(&key, -1, signal, message);
            }
            .instrument(span),
        );
    }

    /// Records a replica's exit. The ledger is written before `running.json` drops the
    /// replica, so a crash in between leaves the exit known, never the replica missing.
    fn finish(&self, key: &Key, exit_code: i32, signal: i32, message: String) {
        let record = self.lock().get(key).map(|e| e.record.clone());
        let Some(record) = record else {
            return;
        };
        let exit = RecordedExit {
            job_id: record.job_id,
            replica: record.replica,
            attempt: record.attempt,
            exit_code,
            signal,
            message,
            ended_unix_ms: unix_ms_now(),
        };
        self.keep_exit(&exit);
        self.lock().remove(key);
        self.save_or_warn();
        let _ = self.events.send(exit.into());
    }

    /// Stops a replica: SIGTERM to its process group, SIGKILL after `grace`. `attempt` 0
    /// means whichever attempt runs. Unknown work is ignored.
    pub fn cancel(&self, job_id: &str, replica: u32, attempt: u32, grace: Duration) {
        let mut running = self.lock();
        let Some(entry) = running.get_mut(&(job_id.to_string(), replica)) else {
            info!(job = %job_id, replica, "Cancel for work that does not run here; ignored.");
            return;
        };
        if attempt != 0 && attempt != entry.record.attempt {
            info!(job = %job_id, replica, attempt, running_attempt = entry.record.attempt,
                  "Cancel for another attempt; ignored.");
            return;
        }
        if let Some(stop) = entry.stop.take() {
            info!(job = %job_id, replica, grace_ms = grace.as_millis() as u64, "Cancelling work.");
            let _ = stop.send(grace);
        }
    }
}

fn signal_group(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if raw <= 0 {
        return;
    }
    // ESRCH (already gone) is the normal end of a race with the process exiting.
    let _ = killpg(Pid::from_raw(raw), signal);
}

/// Field 22 of `/proc/<pid>/stat` (after the parenthesised command, which may hold spaces).
fn proc_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    // After the command: state is field 3, so start time (22) is the 20th from here.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Alive, not a zombie, and the same process (start time) as recorded.
fn still_running(record: &RunningRecord) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", record.pid)) else {
        return false;
    };
    let Some((_, after)) = stat.rsplit_once(')') else {
        return false;
    };
    let state = after.split_whitespace().next().unwrap_or("");
    if state == "Z" || state == "X" {
        return false;
    }
    record.proc_start_ticks == 0 || proc_start_ticks(record.pid) == Some(record.proc_start_ticks)
}

fn stderr_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
}

pub(crate) fn sanitize_file(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(job: &str, command: &[&str], gpus: &[&str]) -> Assignment {
        Assignment {
            job_id: job.to_string(),
            replica: 0,
            attempt: 1,
            command: command.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            gpu_uuids: gpus.iter().map(|s| s.to_string()).collect(),
            rendezvous: None,
        }
    }

    async fn next_exit(rx: &mut mpsc::UnboundedReceiver<WorkEvent>) -> (i32, i32, String) {
        loop {
            match rx.recv().await.expect("runner alive") {
                WorkEvent::Exited {
                    exit_code,
                    signal,
                    message,
                    ..
                } => return (exit_code, signal, message),
                WorkEvent::Started(_) => {}
            }
        }
    }

    #[tokio::test]
    async fn exit_codes_and_stderr_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (runner, mut rx) = WorkRunner::open(dir.path()).expect("open");
        runner.start(assignment(
            "j1",
            &["sh", "-c", "echo boom >&2; exit 3"],
            &[],
        ));
        assert_eq!(next_exit(&mut rx).await, (3, 0, "boom".to_string()));
        assert!(runner.running_now().is_empty());
    }

    #[tokio::test]
    async fn cuda_visible_devices_is_exactly_the_assignment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (runner, mut rx) = WorkRunner::open(dir.path()).expect("open");
        let script = ["sh", "-c", "printf '%s' \"${CUDA_VISIBLE_DEVICES-unset}\""];
        runner.start(assignment("two", &script, &["GPU-a", "MIG-b"]));
        assert_eq!(next_exit(&mut rx).await.0, 0);
        runner.start(assignment("none", &script, &[]));
        assert_eq!(next_exit(&mut rx).await.0, 0);
        let read = |job| std::fs::read_to_string(runner.log_path(job, 0, 1)).expect("log");
        assert_eq!(read("two"), "GPU-a,MIG-b");
        assert_eq!(read("none"), "");
    }

    #[tokio::test]
    async fn a_replica_gets_its_rendezvous_and_hostfile_under_the_users_env() {
        use crate::rendezvous::Peer;
        let dir = tempfile::tempdir().expect("tempdir");
        let (runner, mut rx) = WorkRunner::open(dir.path()).expect("open");
        let script = "printf '%s %s %s|' \"$NODE_RANK\" \"$MASTER_ADDR\" \"$MASTER_PORT\"; \
                      cat \"$SUANLI_HOSTFILE\"";
        let mut a = assignment("gang", &["sh", "-c", script], &["GPU-a", "GPU-b"]);
        a.replica = 1;
        a.env.insert("MASTER_PORT".into(), "29500".into());
        a.rendezvous = Some(Rendezvous {
            job_name: "gang".into(),
            node_cid: "cid:acme/r/d/n2".into(),
            peers: vec![
                Peer {
                    replica: 0,
                    address: "10.0.0.1".into(),
                    gpus: 2,
                },
                Peer {
                    replica: 1,
                    address: "10.0.0.2".into(),
                    gpus: 2,
                },
            ],
            master_port: 23456,
            ib_hcas: vec![],
            socket_ifname: None,
        });
        runner.start(a);
        assert_eq!(next_exit(&mut rx).await.0, 0);
        let out = std::fs::read_to_string(runner.log_path("gang", 1, 1)).expect("log");
        assert_eq!(out, "1 10.0.0.1 29500|10.0.0.1 slots=2\n10.0.0.2 slots=2\n");
        assert!(runner.hostfile_path("gang", 1, 1).starts_with(dir.path()));
    }

    #[tokio::test]
    async fn a_missing_program_is_an_exit_with_a_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (runner, mut rx) = WorkRunner::open(dir.path()).expect("open");
        runner.start(assignment("x", &["/nonexistent/program"], &[]));
        let (code, _, message) = next_exit(&mut rx).await;
        assert_eq!(code, -1);
        assert!(
            message.starts_with("cannot start \"/nonexistent/program\""),
            "{message}"
        );
    }

    #[tokio::test]
    async fn cancel_escalates_to_sigkill_after_the_grace_period() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (runner, mut rx) = WorkRunner::open(dir.path()).expect("open");
        // Ignores SIGTERM, so only SIGKILL ends it.
        let script = "trap '' TERM; echo ready; sleep 60 & wait";
        runner.start(assignment("stubborn", &["sh", "-c", script], &[]));
        let WorkEvent::Started(_) = rx.recv().await.expect("started") else {
            panic!("expected WorkStarted first");
        };
        // Cancel only once the trap is installed.
        let out = runner.log_path("stubborn", 0, 1);
        while !std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("ready")
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        runner.cancel("stubborn", 0, 0, Duration::from_millis(200));
        assert_eq!(next_exit(&mut rx).await.1, Signal::SIGKILL as i32);
    }

    #[tokio::test]
    async fn an_exit_is_kept_until_acknowledged_even_across_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (runner, mut rx) = WorkRunner::open(dir.path()).expect("open");
        runner.start(assignment("kept", &["sh", "-c", "exit 0"], &[]));
        assert_eq!(next_exit(&mut rx).await.0, 0);
        let kept = runner.unacknowledged_exits();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!((kept[0].job_id.as_str(), kept[0].attempt), ("kept", 1));

        // A new agent on the same data directory still has it to report.
        drop(runner);
        let (runner, mut rx) = WorkRunner::open(dir.path()).expect("reopen");
        assert_eq!(runner.unacknowledged_exits(), kept);
        assert!(runner.running_now().is_empty());

        // The same attempt assigned again is not run again: its exit is reported again.
        runner.start(assignment("kept", &["sh", "-c", "exit 7"], &[]));
        assert_eq!(next_exit(&mut rx).await.0, 0);
        assert!(
            !matches!(rx.try_recv(), Ok(WorkEvent::Started(_))),
            "nothing started"
        );

        runner.acknowledge("kept", 0, 1);
        assert!(runner.unacknowledged_exits().is_empty());
        drop(runner);
        let (runner, _rx) = WorkRunner::open(dir.path()).expect("reopen");
        assert!(
            runner.unacknowledged_exits().is_empty(),
            "the ack is durable"
        );
    }

    #[tokio::test]
    async fn an_exit_in_the_ledger_wins_over_a_stale_running_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = RunningRecord {
            job_id: "done".into(),
            replica: 0,
            attempt: 2,
            pid: u32::MAX - 1,
            gpu_uuids: vec![],
            started_unix_ms: 1,
            proc_start_ticks: 0,
        };
        // As an agent killed between keeping the exit and rewriting running.json leaves it.
        std::fs::write(
            dir.path().join("running.json"),
            serde_json::to_string(&[&record]).expect("json"),
        )
        .expect("write state");
        let mut ledger = ExitLedger::open(dir.path()).expect("ledger");
        let exit = RecordedExit {
            job_id: "done".into(),
            replica: 0,
            attempt: 2,
            exit_code: 0,
            signal: 0,
            message: String::new(),
            ended_unix_ms: 5,
        };
        ledger.record(exit.clone()).expect("record");
        let (runner, mut rx) = WorkRunner::open(dir.path()).expect("open");
        assert_eq!(runner.unacknowledged_exits(), vec![exit]);
        assert!(
            rx.try_recv().is_err(),
            "no 'exit status unknown' is made up"
        );
    }

    #[test]
    fn a_corrupt_ledger_stops_the_runner_with_the_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("exits.jsonl"), "not json\n").expect("write");
        let err = WorkRunner::open(dir.path()).expect_err("corrupt");
        assert!(err.to_string().contains("exits.jsonl line 1"), "{err}");
    }

    #[tokio::test]
    async fn a_restarted_runner_adopts_live_work_and_reports_dead_work() {
        let dir = tempfile::tempdir().expect("tempdir");
        // As the runner starts work: leader of its own process group.
        let live = std::os::unix::process::CommandExt::process_group(
            std::process::Command::new("sleep").arg("60"),
            0,
        )
        .spawn()
        .expect("spawn sleep");
        let live_record = RunningRecord {
            job_id: "live".into(),
            replica: 2,
            attempt: 1,
            pid: live.id(),
            gpu_uuids: vec!["GPU-a".into()],
            started_unix_ms: 1,
            proc_start_ticks: proc_start_ticks(live.id()).expect("stat readable"),
        };
        let dead_record = RunningRecord {
            job_id: "dead".into(),
            pid: u32::MAX - 1,
            ..live_record.clone()
        };
        std::fs::write(
            dir.path().join("running.json"),
            serde_json::to_string(&[&live_record, &dead_record]).expect("json"),
        )
        .expect("write state");
        let (runner, mut rx) = WorkRunner::open(dir.path()).expect("open");
        assert_eq!(runner.running_now(), vec![live_record]);
        let (code, _, message) = next_exit(&mut rx).await;
        assert_eq!(code, -1);
        assert!(message.contains("agent was down"), "{message}");
        // The adopted replica is not our child: cancel reaches it through its pid.
        runner.cancel("live", 2, 0, Duration::from_secs(5));
        let (_, signal, _) = next_exit(&mut rx).await;
        assert_eq!(signal, Signal::SIGTERM as i32);
        let mut live = live;
        let _ = live.wait();
    }
}
