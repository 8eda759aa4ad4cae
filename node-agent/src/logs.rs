//! Replica logs: what a replica writes to standard output and error, kept on this node and
//! served to the scheduler on request.
//!
//! Both streams go, interleaved as written, to `<data-dir>/logs/<job>/<replica>.<attempt>.log`,
//! opened in append mode and handed to the replica itself, so the replica keeps writing (and
//! keeps running) while no agent runs. A watcher caps the file: past the cap it is copied to
//! `<...>.log.1` (replacing the older copy) and truncated; append mode makes the replica's next
//! write land at the new start. Lines written between the copy and the truncation are lost,
//! the usual price of rotating a file its writer keeps open. The logs of jobs that no longer
//! run here are removed when the agent starts, a week after they were last written.
//!
//! The scheduler asks for a log with a `LogRequest`; the answer is a series of `LogChunk`s
//! under flow control: the agent sends at most `window` chunks the scheduler has not
//! acknowledged, so a slow reader at the far end holds neither side's memory.

use std::collections::HashMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use suanli_proto::pb;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;
use tracing::{debug, warn};

/// Largest a log file grows before it is rotated.
pub const DEFAULT_LOG_CAP_BYTES: u64 = 64 * 1024 * 1024;
/// How often a running replica's log is checked against its cap.
const DEFAULT_ROTATE_CHECK: Duration = Duration::from_secs(1);
/// How often a followed log is checked for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Largest `LogChunk.data`.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;
/// Most unacknowledged chunks one request may have in flight.
pub const MAX_WINDOW: u32 = 64;
/// Most log requests one session serves at once.
const MAX_REQUESTS: usize = 64;
/// How long the logs of replicas that no longer run are kept, counted from their last write.
pub const LOG_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How large a log may grow, and how often that is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    pub cap_bytes: u64,
    pub check_every: Duration,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            cap_bytes: DEFAULT_LOG_CAP_BYTES,
            check_every: DEFAULT_ROTATE_CHECK,
        }
    }
}

/// The log of one replica attempt.
pub fn log_path(data_dir: &Path, job_id: &str, replica: u32, attempt: u32) -> PathBuf {
    data_dir
        .join("logs")
        .join(crate::work::sanitize_file(job_id))
        .join(format!("{replica}.{attempt}.log"))
}

/// Where a log's older part goes when it is rotated.
pub fn rotated_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_os_string();
    name.push(".1");
    PathBuf::from(name)
}

/// Starts an empty log and returns two append-mode handles on it, for standard output and
/// standard error.
pub fn create(log: &Path) -> std::io::Result<(std::fs::File, std::fs::File)> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(rotated_path(log)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::File::create(log)?;
    let out = std::fs::OpenOptions::new().append(true).open(log)?;
    let err = out.try_clone()?;
    Ok((out, err))
}

/// Rotates `log` when it is over `cap_bytes`; true when it did.
pub fn rotate_if_over(log: &Path, cap_bytes: u64) -> std::io::Result<bool> {
    let len = match std::fs::metadata(log) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= cap_bytes {
        return Ok(false);
    }
    std::fs::copy(log, rotated_path(log))?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(log)?
        .set_len(0)?;
    Ok(true)
}

/// Keeps `log` under its cap while `running` says the replica runs, and once more after.
pub fn keep_capped(
    log: PathBuf,
    limits: LogLimits,
    running: impl Fn() -> bool + Send + Sync + 'static,
) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(limits.check_every).await;
            let alive = running();
            let path = log.clone();
            match tokio::task::spawn_blocking(move || rotate_if_over(&path, limits.cap_bytes)).await
            {
                Ok(Ok(true)) => debug!(log = %log.display(), "Rotated a replica log."),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => warn!(log = %log.display(), error = %e, "Could not rotate a log."),
                Err(_) => {}
            }
            if !alive {
                return;
            }
        }
    });
}

/// Removes the logs of jobs none of whose replicas run here and that nothing wrote to for
/// [`LOG_RETENTION`], so finished jobs do not fill the disk. Failures are only logged.
pub fn collect_old(data_dir: &Path, running: &[crate::work::RunningRecord]) {
    let Ok(jobs) = std::fs::read_dir(data_dir.join("logs")) else {
        return;
    };
    let live: std::collections::HashSet<String> = running
        .iter()
        .map(|r| crate::work::sanitize_file(&r.job_id))
        .collect();
    for job in jobs.flatten() {
        let name = job.file_name().to_string_lossy().into_owned();
        if live.contains(&name) {
            continue;
        }
        let newest = std::fs::read_dir(job.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|f| f.metadata().and_then(|m| m.modified()).ok())
            .max();
        let stale = newest
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age > LOG_RETENTION);
        if stale && let Err(e) = std::fs::remove_dir_all(job.path()) {
            warn!(job = %name, error = %e, "Could not remove old logs.");
        }
    }
}

/// Where the last `lines` lines of `files` (oldest first, read as one) begin: the index of
/// the file and the offset in it. Only the first `len` bytes of each file count.
fn tail_start(files: &[(PathBuf, u64)], lines: u32) -> std::io::Result<(usize, u64)> {
    const BLOCK: u64 = 64 * 1024;
    let mut newlines = 0u32;
    let mut at_end = true;
    let mut block = vec![0u8; BLOCK as usize];
    for (i, (path, len)) in files.iter().enumerate().rev() {
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut end = *len;
        while end > 0 {
            let start = end.saturating_sub(BLOCK);
            let size = (end - start) as usize;
            file.seek(SeekFrom::Start(start))?;
            file.read_exact(&mut block[..size])?;
            for j in (0..size).rev() {
                let is_newline = block[j] == b'\n';
                // A newline that ends the log closes its last line; it does not start one.
                if std::mem::take(&mut at_end) && is_newline {
                    continue;
                }
                if is_newline {
                    newlines += 1;
                    if newlines == lines {
                        return Ok((i, start + j as u64 + 1));
                    }
                }
            }
            end = start;
        }
    }
    Ok((0, 0))
}

/// Why a request stopped before its last message.
enum Stop {
    /// The scheduler went away or cancelled.
    Gone,
}

/// Sends the chunks of one request, each only once the scheduler has room for it.
struct ChunkSink {
    request_id: u64,
    tx: mpsc::Sender<pb::AgentMessage>,
    credits: Arc<Semaphore>,
}

impl ChunkSink {
    async fn send(&self, chunk: pb::LogChunk) -> Result<(), Stop> {
        let permit = self.credits.acquire().await.map_err(|_| Stop::Gone)?;
        permit.forget();
        let msg = pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::LogChunk(chunk)),
        };
        self.tx.send(msg).await.map_err(|_| Stop::Gone)
    }

    async fn data(&self, data: Vec<u8>) -> Result<(), Stop> {
        self.send(pb::LogChunk {
            request_id: self.request_id,
            data,
            ..Default::default()
        })
        .await
    }

    async fn last(&self, error: String, missing: bool) -> Result<(), Stop> {
        self.send(pb::LogChunk {
            request_id: self.request_id,
            last: true,
            error,
            missing,
            ..Default::default()
        })
        .await
    }

    /// Sends `path` from `from` up to `to` (its end when `None`); returns where it stopped.
    async fn range(&self, path: &Path, from: u64, to: Option<u64>) -> Result<u64, Stop> {
        let mut offset = from;
        loop {
            let want = match to {
                Some(to) if offset >= to => return Ok(offset),
                Some(to) => (to - offset).min(MAX_CHUNK_BYTES as u64) as usize,
                None => MAX_CHUNK_BYTES,
            };
            let path_owned = path.to_path_buf();
            let read = tokio::task::spawn_blocking(move || read_at(&path_owned, offset, want))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            let data = match read {
                Ok(data) => data,
                // Gone or unreadable: what was sent is all there is.
                Err(_) => return Ok(offset),
            };
            if data.is_empty() {
                return Ok(offset);
            }
            offset += data.len() as u64;
            self.data(data).await?;
        }
    }
}

fn read_at(path: &Path, offset: u64, want: usize) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut data = Vec::with_capacity(want);
    file.take(want as u64).read_to_end(&mut data)?;
    Ok(data)
}

fn file_len(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

/// What one request asks for, with where its log is.
struct Wanted {
    log: PathBuf,
    tail_lines: u32,
    follow: bool,
    describe: String,
}

async fn answer(wanted: Wanted, sink: &ChunkSink, running: impl Fn() -> bool) -> Result<(), Stop> {
    let log = wanted.log;
    let rotated = rotated_path(&log);
    // Asked before reading, so output written until the replica ended is still sent.
    let mut alive = wanted.follow && running();
    let (Some(current_len), rotated_len) = (file_len(&log), file_len(&rotated)) else {
        let error = format!("no log for {} on this node", wanted.describe);
        return sink.last(error, true).await;
    };
    let files = [
        (rotated.clone(), rotated_len.unwrap_or(0)),
        (log.clone(), current_len),
    ];
    let (first, from) = if wanted.tail_lines == 0 {
        (0, 0)
    } else {
        let files = files.clone();
        let lines = wanted.tail_lines;
        match tokio::task::spawn_blocking(move || tail_start(&files, lines)).await {
            Ok(Ok(start)) => start,
            Ok(Err(e)) => {
                return sink
                    .last(format!("cannot read {}: {e}", log.display()), false)
                    .await;
            }
            Err(e) => {
                return sink
                    .last(format!("reading the log failed: {e}"), false)
                    .await;
            }
        }
    };
    let mut offset = if first == 0 {
        sink.range(&rotated, from, Some(files[0].1)).await?;
        sink.range(&log, 0, None).await?
    } else {
        sink.range(&log, from, None).await?
    };
    while alive {
        tokio::time::sleep(FOLLOW_POLL).await;
        alive = running();
        if file_len(&log).is_some_and(|len| len < offset) {
            // Rotated since the last read: the rest of what was read from is in the copy.
            sink.range(&rotated, offset, None).await?;
            offset = 0;
        }
        offset = sink.range(&log, offset, None).await?;
    }
    sink.last(String::new(), false).await
}

struct Serving {
    credits: Arc<Semaphore>,
    task: AbortHandle,
}

/// Answers one session's log requests; dropping it stops every answer in progress.
#[derive(Debug)]
pub struct LogServer {
    tx: mpsc::Sender<pb::AgentMessage>,
    runner: crate::work::WorkRunner,
    requests: HashMap<u64, Serving>,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("credits", &self.credits.available_permits())
            .finish()
    }
}

impl LogServer {
    pub fn new(tx: mpsc::Sender<pb::AgentMessage>, runner: crate::work::WorkRunner) -> Self {
        LogServer {
            tx,
            runner,
            requests: HashMap::new(),
        }
    }

    /// Acts on the log messages; hands every other message back.
    pub fn take(&mut self, msg: pb::SchedulerMessage) -> Option<pb::SchedulerMessage> {
        use pb::scheduler_message::Msg;
        match msg.msg {
            Some(Msg::LogRequest(request)) => self.start(request),
            Some(Msg::LogAck(ack)) => {
                if let Some(serving) = self.requests.get(&ack.request_id) {
                    // Never more credit than a window, whatever the scheduler says.
                    let room =
                        (MAX_WINDOW as usize).saturating_sub(serving.credits.available_permits());
                    serving.credits.add_permits((ack.chunks as usize).min(room));
                }
            }
            Some(Msg::LogCancel(cancel)) => {
                if let Some(serving) = self.requests.remove(&cancel.request_id) {
                    serving.task.abort();
                }
            }
            other => return Some(pb::SchedulerMessage { msg: other }),
        }
        None
    }

    fn start(&mut self, request: pb::LogRequest) {
        self.requests.retain(|_, s| !s.task.is_finished());
        let window = request.window.clamp(1, MAX_WINDOW);
        let credits = Arc::new(Semaphore::new(window as usize));
        let sink = ChunkSink {
            request_id: request.request_id,
            tx: self.tx.clone(),
            credits: Arc::clone(&credits),
        };
        if self.requests.len() >= MAX_REQUESTS || self.requests.contains_key(&request.request_id) {
            let error = if self.requests.len() >= MAX_REQUESTS {
                format!("this node already serves {MAX_REQUESTS} log streams")
            } else {
                format!(
                    "log request {} is already being answered",
                    request.request_id
                )
            };
            tokio::spawn(async move {
                let _ = sink.last(error, false).await;
            });
            return;
        }
        let wanted = Wanted {
            log: self
                .runner
                .log_path(&request.job_id, request.replica, request.attempt),
            tail_lines: request.tail_lines,
            follow: request.follow,
            describe: format!(
                "job {} replica {} attempt {}",
                request.job_id, request.replica, request.attempt
            ),
        };
        let runner = self.runner.clone();
        let task = tokio::spawn(async move {
            let running = || runner.runs(&request.job_id, request.replica, request.attempt);
            let _ = answer(wanted, &sink, running).await;
        })
        .abort_handle();
        self.requests
            .insert(request.request_id, Serving { credits, task });
    }
}

impl Drop for LogServer {
    fn drop(&mut self) {
        for serving in self.requests.values() {
            serving.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).expect("write");
    }

    fn tail(files: &[(PathBuf, u64)], lines: u32) -> String {
        let (first, from) = tail_start(files, lines).expect("tail");
        let mut out = Vec::new();
        for (i, (path, len)) in files.iter().enumerate().skip(first) {
            let start = if i == first { from } else { 0 };
            out.extend(read_at(path, start, (*len - start) as usize).unwrap_or_default());
        }
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn the_tail_spans_the_rotated_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("0.1.log.1");
        let new = dir.path().join("0.1.log");
        write(&old, "a\nb\nc\n");
        write(&new, "d\ne\n");
        let files = [(old, 6), (new, 4)];
        assert_eq!(tail(&files, 1), "e\n");
        assert_eq!(tail(&files, 2), "d\ne\n");
        assert_eq!(tail(&files, 3), "c\nd\ne\n");
        assert_eq!(tail(&files, 9), "a\nb\nc\nd\ne\n");
    }

    #[test]
    fn an_unterminated_last_line_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("0.1.log");
        write(&log, "one\ntwo\nthree");
        let files = [(dir.path().join("none"), 0), (log, 13)];
        assert_eq!(tail(&files, 1), "three");
        assert_eq!(tail(&files, 2), "two\nthree");
    }

    fn sh(job: &str, script: &str) -> crate::work::Assignment {
        crate::work::Assignment {
            job_id: job.into(),
            replica: 0,
            attempt: 1,
            command: vec!["sh".into(), "-c".into(), script.into()],
            env: Default::default(),
            gpu_uuids: vec![],
            rendezvous: None,
        }
    }

    fn request(id: u64, job: &str, follow: bool, window: u32) -> pb::SchedulerMessage {
        pb::SchedulerMessage {
            msg: Some(pb::scheduler_message::Msg::LogRequest(pb::LogRequest {
                request_id: id,
                job_id: job.into(),
                replica: 0,
                attempt: 1,
                tail_lines: 0,
                follow,
                window,
            })),
        }
    }

    async fn next_chunk(rx: &mut mpsc::Receiver<pb::AgentMessage>) -> Option<pb::LogChunk> {
        match tokio::time::timeout(Duration::from_millis(700), rx.recv()).await {
            Ok(Some(pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::LogChunk(c)),
            })) => Some(c),
            Ok(other) => panic!("expected a log chunk, got {other:?}"),
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn a_followed_log_ends_with_its_replica() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (runner, _events) = crate::work::WorkRunner::open(dir.path()).expect("open");
        runner.start(sh("talk", "echo a; sleep 0.3; echo b >&2"));
        let (tx, mut rx) = mpsc::channel(16);
        let mut server = LogServer::new(tx, runner.clone());
        assert!(server.take(request(7, "talk", true, 64)).is_none());
        let mut text = Vec::new();
        loop {
            let chunk = next_chunk(&mut rx).await.expect("a chunk");
            assert_eq!(chunk.request_id, 7);
            text.extend(chunk.data);
            if chunk.last {
                assert_eq!(chunk.error, "");
                break;
            }
        }
        assert_eq!(String::from_utf8(text).expect("utf8"), "a\nb\n");
        assert!(server.take(request(8, "nothing", false, 4)).is_none());
        let missing = next_chunk(&mut rx).await.expect("an answer");
        assert!(missing.last && missing.missing, "{missing:?}");
    }

    #[tokio::test]
    async fn a_request_waits_for_acks_and_stops_on_cancel() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (runner, _events) = crate::work::WorkRunner::open(dir.path()).expect("open");
        runner.start(sh("chatty", "while true; do echo tick; sleep 0.02; done"));
        let (tx, mut rx) = mpsc::channel(16);
        let mut server = LogServer::new(tx, runner.clone());
        server.take(request(1, "chatty", true, 2));
        assert!(next_chunk(&mut rx).await.is_some());
        assert!(next_chunk(&mut rx).await.is_some());
        assert!(next_chunk(&mut rx).await.is_none(), "a full window waits");
        server.take(pb::SchedulerMessage {
            msg: Some(pb::scheduler_message::Msg::LogAck(pb::LogAck {
                request_id: 1,
                chunks: 1,
            })),
        });
        assert!(next_chunk(&mut rx).await.is_some(), "one more after an ack");
        assert!(next_chunk(&mut rx).await.is_none());
        server.take(pb::SchedulerMessage {
            msg: Some(pb::scheduler_message::Msg::LogCancel(pb::LogCancel {
                request_id: 1,
            })),
        });
        server.take(pb::SchedulerMessage {
            msg: Some(pb::scheduler_message::Msg::LogAck(pb::LogAck {
                request_id: 1,
                chunks: 2,
            })),
        });
        assert!(
            next_chunk(&mut rx).await.is_none(),
            "nothing after a cancel"
        );
        runner.cancel("chatty", 0, 0, Duration::from_millis(100));
    }

    #[test]
    fn old_logs_of_finished_jobs_are_collected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = log_path(dir.path(), "old", 0, 1);
        create(&old).expect("create");
        let long_ago = std::time::SystemTime::now() - LOG_RETENTION - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .and_then(|f| f.set_modified(long_ago))
            .expect("age it");
        let fresh = log_path(dir.path(), "fresh", 0, 1);
        create(&fresh).expect("create");
        collect_old(dir.path(), &[]);
        assert!(!old.exists());
        assert!(fresh.exists());
    }

    #[test]
    fn rotation_keeps_one_older_copy_and_appends_from_the_start() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let log = log_path(dir.path(), "j/1", 0, 1);
        let (mut out, _err) = create(&log).expect("create");
        out.write_all(b"0123456789\n").expect("write");
        assert!(!rotate_if_over(&log, 64).expect("under the cap"));
        assert!(rotate_if_over(&log, 4).expect("over the cap"));
        out.write_all(b"next\n").expect("write");
        assert_eq!(std::fs::read_to_string(&log).expect("log"), "next\n");
        assert_eq!(
            std::fs::read_to_string(rotated_path(&log)).expect("rotated"),
            "0123456789\n"
        );
        assert!(log.starts_with(dir.path().join("logs").join("j_1")));
    }
}
