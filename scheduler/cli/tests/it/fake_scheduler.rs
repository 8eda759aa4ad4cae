//! The `suanli` binary against a scripted JobService on 127.0.0.1, reached through a TCP
//! proxy the test can cut: what the CLI does when the scheduler cuts off a watch that fell
//! behind or the connection breaks, and with answers larger than tonic's default 4 MiB.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use suanli_engine::JobSpec;
use suanli_engine::job::JobKind;
use suanli_proto::pb;
use suanli_proto::pb::job_service_server::{JobService, JobServiceServer};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdout};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

use crate::{command, finish};

/// What one Watch call sends. After its steps a stream stays open, as a live watch does.
#[derive(Debug, Clone)]
enum Step {
    Event(u64),
    /// Ends the stream with RESOURCE_EXHAUSTED and this message.
    FellBehind(&'static str),
}

#[derive(Debug, Default)]
struct Script {
    /// What each Watch call sends, in call order.
    watches: VecDeque<Vec<Step>>,
    /// The `from_seq` of every Watch call received.
    requested_from_seqs: Vec<Option<u64>>,
    /// Senders of the streams left open.
    open: Vec<mpsc::Sender<Result<pb::JobEvent, Status>>>,
}

/// Serves Watch from a script, and Get, Submit and Cancel with one large job.
#[derive(Debug, Clone, Default)]
struct FakeJobs {
    script: Arc<Mutex<Script>>,
    /// `last_reason` of the job every unary call answers with.
    reason_bytes: usize,
}

impl FakeJobs {
    fn job(&self) -> pb::Job {
        pb::Job {
            id: "j-00000001".into(),
            spec: Some(JobSpec::new("big", JobKind::Training).into()),
            state: pb::JobState::Pending as i32,
            last_reason: "r".repeat(self.reason_bytes),
            ..Default::default()
        }
    }

    fn requested_from_seqs(&self) -> Vec<Option<u64>> {
        self.script
            .lock()
            .expect("lock")
            .requested_from_seqs
            .clone()
    }
}

fn event(seq: u64) -> pb::JobEvent {
    pb::JobEvent {
        job_id: "j-00000001".into(),
        seq,
        unix_ms: 1_732_683_301_000,
        from_state: pb::JobState::Unspecified as i32,
        to_state: pb::JobState::Pending as i32,
        reason: "submitted".into(),
        message: format!("event {seq}"),
    }
}

type EventStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for FakeJobs {
    async fn submit(
        &self,
        _: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        Ok(Response::new(pb::SubmitJobResponse {
            job: Some(self.job()),
        }))
    }

    async fn get(&self, _: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        Ok(Response::new(self.job()))
    }

    async fn list(
        &self,
        _: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn update(&self, _: Request<pb::UpdateJobRequest>) -> Result<Response<pb::Job>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn cancel(&self, _: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        Ok(Response::new(self.job()))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<pb::WatchJobsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let mut script = self.script.lock().expect("lock");
        script.requested_from_seqs.push(request.get_ref().from_seq);
        let steps = script.watches.pop_front().unwrap_or_default();
        let (tx, rx) = mpsc::channel(steps.len() + 1);
        for step in steps {
            let item = match step {
                Step::Event(seq) => Ok(event(seq)),
                Step::FellBehind(message) => Err(Status::resource_exhausted(message)),
            };
            tx.try_send(item).expect("room for every step");
        }
        script.open.push(tx);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn explain(
        &self,
        _: Request<pb::ExplainJobRequest>,
    ) -> Result<Response<pb::ExplainJobResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    type LogsStream = ReceiverStream<Result<pb::LogsChunk, Status>>;

    async fn logs(
        &self,
        _: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
}

async fn serve(fake: FakeJobs) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(JobServiceServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

/// A TCP proxy in front of the fake: cutting its connections is a network failure as the CLI
/// sees one, and closing it makes the scheduler unreachable.
struct Proxy {
    addr: SocketAddr,
    accept: JoinHandle<()>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(backend: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(Mutex::new(Vec::new()));
        let held = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().expect("lock").push(pipe);
            }
        });
        Proxy {
            addr,
            accept,
            connections,
        }
    }

    /// Breaks every connection open through the proxy.
    fn cut(&self) {
        for pipe in self.connections.lock().expect("lock").drain(..) {
            pipe.abort();
        }
    }

    /// Breaks every connection and stops listening.
    fn close(self) {
        self.accept.abort();
        self.cut();
    }
}

/// `suanli watch --from-seq 1 -o json` against `addr`, its output lines and the process.
fn spawn_watch(addr: SocketAddr, home: &std::path::Path) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut cmd = command(home);
    cmd.args([
        "--addr",
        &format!("http://{addr}"),
        "watch",
        "--from-seq",
        "1",
        "-o",
        "json",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("runs");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, lines)
}

async fn next_seq(lines: &mut Lines<BufReader<ChildStdout>>) -> u64 {
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("an event within 30 s")
        .expect("readable")
        .expect("the watch is still printing");
    let event: Value = serde_json::from_str(&line).expect("one JSON object per line");
    event["seq"].as_u64().expect("a seq")
}

async fn interrupt(mut child: Child) -> (Option<i32>, String) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().expect("running")).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("signal");
    let mut stderr = child.stderr.take().expect("stderr");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after Ctrl-C")
        .expect("status");
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text)
        .await
        .expect("stderr");
    (status.code(), text)
}

const FELL_BEHIND: &str = "watcher fell behind by more than 1024 events; resume with from_seq = 4";

/// Cut off for falling behind, the watch reopens where the scheduler said; after a broken
/// connection it reopens after the last event it printed. Replayed events are not printed
/// again, and none is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_falling_behind_and_after_a_broken_connection() {
    let fake = FakeJobs::default();
    fake.script.lock().expect("lock").watches = VecDeque::from([
        vec![
            Step::Event(1),
            Step::Event(2),
            Step::Event(3),
            Step::FellBehind(FELL_BEHIND),
        ],
        // The replay overlaps what was printed.
        vec![Step::Event(3), Step::Event(4), Step::Event(5)],
        vec![Step::Event(5), Step::Event(6)],
    ]);
    let proxy = Proxy::start(serve(fake.clone()).await).await;
    let home = tempfile::tempdir().expect("tempdir");
    let (child, mut lines) = spawn_watch(proxy.addr, home.path());

    let mut printed = Vec::new();
    while printed.last() != Some(&5) {
        printed.push(next_seq(&mut lines).await);
    }
    proxy.cut();
    while printed.last() != Some(&6) {
        printed.push(next_seq(&mut lines).await);
    }
    let (code, stderr) = interrupt(child).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        printed,
        [1, 2, 3, 4, 5, 6],
        "nothing twice, nothing skipped"
    );
    assert_eq!(fake.requested_from_seqs(), [Some(1), Some(4), Some(6)]);
    assert!(
        stderr.contains("resuming from seq 4") && stderr.contains("watch interrupted"),
        "{stderr}"
    );
    proxy.close();
}

/// A scheduler that stays unreachable: a bounded number of reopens with backoff, then exit 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_gives_up_on_a_scheduler_that_stays_unreachable() {
    let fake = FakeJobs::default();
    fake.script.lock().expect("lock").watches = VecDeque::from([vec![Step::Event(1)]]);
    let proxy = Proxy::start(serve(fake.clone()).await).await;
    let home = tempfile::tempdir().expect("tempdir");
    let (mut child, mut lines) = spawn_watch(proxy.addr, home.path());
    assert_eq!(next_seq(&mut lines).await, 1);
    proxy.close();
    let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
        .await
        .expect("gives up within 120 s")
        .expect("status");
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .await
        .expect("stderr");
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("error: cannot reach the scheduler at ")),
        "{stderr}"
    );
    assert_eq!(
        fake.requested_from_seqs(),
        [Some(1)],
        "nothing got through once closed"
    );
}

/// Answers up to the scheduler's own 16 MiB cap are read: a submit or cancel that echoes a
/// large job succeeds instead of reporting an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_larger_than_4_mib_are_accepted() {
    let fake = FakeJobs {
        reason_bytes: 6 * 1024 * 1024,
        ..FakeJobs::default()
    };
    let addr = format!("http://{}", serve(fake).await);
    let home = tempfile::tempdir().expect("tempdir");
    let file = home.path().join("job.yaml");
    std::fs::write(&file, "name: big\n").expect("write");
    let file = file.display().to_string();
    for args in [
        vec!["submit", "-f", &file, "-o", "json"],
        vec!["get", "job", "j-00000001", "-o", "json"],
        vec!["cancel", "j-00000001", "-o", "json"],
    ] {
        let mut cmd = command(home.path());
        cmd.args(["--addr", &addr]).args(&args);
        let run = finish(cmd).await;
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        let job = run.json();
        assert_eq!(
            job["last_reason"].as_str().map(str::len),
            Some(6 * 1024 * 1024),
            "{args:?}"
        );
    }
}
