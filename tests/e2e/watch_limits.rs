//! A real `suanli-scheduler` process with 1,000 Watch streams whose clients never read: its
//! resident memory, read from `/proc`, stays within a stated bound, each stream ends saying
//! where to resume, and a new watch from there continues without a gap.

use std::time::Duration;

use suanli_proto::pb;
use suanli_proto::pb::job_service_client::JobServiceClient;
use suanli_tests::{ADMIN_TOKEN, start_scheduler, write_scheduler_config};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};

/// Events the scheduler holds for one watcher that does not read (its `WATCH_BUFFER`).
const BOUND: usize = 1024;
/// Watchers that never read.
const STREAMS: usize = 1000;
/// Watch streams per HTTP/2 connection, below the server's concurrent-stream limit.
const STREAMS_PER_CONNECTION: usize = 100;
/// Events every watcher is offered: many times the bound.
const EVENTS: usize = 4 * BOUND;
/// Concurrent submitters, so the jobs (one event each) arrive quickly.
const SUBMITTERS: usize = 8;
/// What a buffered event may cost the scheduler: the queued message and its strings, and
/// its share of the HTTP/2 and encoding buffers.
const BYTES_PER_BUFFERED_EVENT: u64 = 512;
/// Everything else that grows in the scheduler: per-stream tasks and HTTP/2 state, the
/// store's page cache, the jobs themselves.
const SLACK_BYTES: u64 = 128 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;

/// A field of `/proc/<pid>/status` in bytes (`VmRSS`, `VmHWM`).
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    text.lines()
        .find_map(|line| {
            let kib = line.strip_prefix(field)?.strip_prefix(':')?;
            kib.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
        .map(|kib| kib * 1024)
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

fn authed<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().expect("ascii"),
    );
    req
}

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connects")
}

fn job(name: &str) -> pb::JobSpec {
    pb::JobSpec {
        name: name.into(),
        tenant: "research".into(),
        kind: pb::JobKind::Training.into(),
        replicas: 1,
        command: vec!["python".into(), "train.py".into()],
        gpu: Some(pb::GpuRequest {
            policy: Some(pb::gpu_request::Policy::Exclusive(pb::ExclusiveGpus {
                count: 1,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Submits a job; returns its id.
async fn submit(jobs: &mut JobServiceClient<Channel>, name: &str) -> String {
    jobs.submit(authed(pb::SubmitJobRequest {
        spec: Some(job(name)),
        request_id: String::new(),
    }))
    .await
    .expect("submits")
    .into_inner()
    .job
    .expect("job")
    .id
}

/// The sequence number of a job's first event.
async fn first_event_seq(jobs: &mut JobServiceClient<Channel>, id: &str) -> u64 {
    let mut history = jobs
        .watch(authed(pb::WatchJobsRequest {
            job_id: id.into(),
            from_seq: None,
            tenant: String::new(),
            replay_only: true,
        }))
        .await
        .expect("watch")
        .into_inner();
    history
        .next()
        .await
        .expect("an event")
        .expect("ok event")
        .seq
}

fn watch_request(from_seq: Option<u64>) -> pb::WatchJobsRequest {
    pb::WatchJobsRequest {
        job_id: String::new(),
        from_seq,
        tenant: String::new(),
        replay_only: false,
    }
}

async fn open_watch(
    jobs: &mut JobServiceClient<Channel>,
    from_seq: Option<u64>,
) -> Streaming<pb::JobEvent> {
    jobs.watch(authed(watch_request(from_seq)))
        .await
        .expect("watch opens")
        .into_inner()
}

/// Reads a stream to its end: the sequence numbers it delivered and the status it ended with.
async fn drain(mut stream: Streaming<pb::JobEvent>) -> (Vec<u64>, tonic::Status) {
    let mut seqs = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("the stream moves within 60 s");
        match next {
            Some(Ok(e)) => seqs.push(e.seq),
            Some(Err(status)) => return (seqs, status),
            None => panic!(
                "the stream ended without a status after {} events",
                seqs.len()
            ),
        }
    }
}

/// `resume with from_seq = S` → S.
fn resume_seq(status: &tonic::Status) -> u64 {
    let (_, tail) = status
        .message()
        .split_once("resume with from_seq = ")
        .unwrap_or_else(|| panic!("no resume point in {:?}", status.message()));
    tail.trim().parse().expect("a sequence number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_that_never_read_cost_bounded_memory_and_resume_without_a_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_scheduler_config(dir.path(), 60_000);
    let scheduler = start_scheduler(&config, &dir.path().join("data"), None);
    let pid = scheduler.proc.pid();
    let mut connections = Vec::new();
    for _ in 0..STREAMS.div_ceil(STREAMS_PER_CONNECTION) {
        connections.push(JobServiceClient::new(channel(&scheduler.grpc).await));
    }
    // Jobs go in on a connection of their own: the watchers that never read fill their
    // connections' HTTP/2 windows, which would hold up any reply sent on them.
    let mut jobs = JobServiceClient::new(channel(&scheduler.grpc).await);
    // Warm up the paths the measurement crosses, so first-use allocations do not count.
    let warm = submit(&mut jobs, "warm-up").await;
    let first_seq = first_event_seq(&mut jobs, &warm).await + 1;

    let before = proc_status_bytes(pid, "VmRSS");
    let mut streams = Vec::with_capacity(STREAMS);
    for i in 0..STREAMS {
        let client = &mut connections[i / STREAMS_PER_CONNECTION];
        streams.push(open_watch(client, None).await);
    }

    let mut submitters = Vec::new();
    for s in 0..SUBMITTERS {
        let mut client = jobs.clone();
        submitters.push(tokio::spawn(async move {
            for i in (s..EVENTS - 1).step_by(SUBMITTERS) {
                submit(&mut client, &format!("j{i}")).await;
            }
        }));
    }
    for s in submitters {
        s.await.expect("submitter");
    }
    // The last job is submitted alone, so its event is the newest.
    let last = submit(&mut jobs, "last").await;
    let last_seq = first_event_seq(&mut jobs, &last).await;
    assert_eq!(last_seq - first_seq + 1, EVENTS as u64, "one event per job");

    // Peak memory while every watcher holds all it may before anyone reads.
    let peak_growth = proc_status_bytes(pid, "VmHWM").saturating_sub(before);
    let bound = STREAMS as u64 * (BOUND as u64 + 1) * BYTES_PER_BUFFERED_EVENT + SLACK_BYTES;
    // Holding every event for every watcher would cost more than the bound allows.
    let unbounded = STREAMS as u64 * EVENTS as u64 * BYTES_PER_BUFFERED_EVENT;
    assert!(
        bound < unbounded,
        "the test can tell bounded from unbounded"
    );
    eprintln!(
        "{STREAMS} watchers that never read, {EVENTS} events: scheduler peak RSS grew {} MiB \
         (bound {} MiB; {} MiB if every watcher held every event)",
        peak_growth / MIB,
        bound / MIB,
        unbounded / MIB
    );
    assert!(
        peak_growth <= bound,
        "peak RSS grew {peak_growth} bytes, over the bound of {bound}"
    );

    // Every watcher fell behind: it got what fit, then a status saying where to resume. The
    // streams share connections, so they are read together: data unread on one stream holds
    // connection window the others need.
    let drains: Vec<_> = streams
        .into_iter()
        .map(|stream| tokio::spawn(drain(stream)))
        .collect();
    let mut drained = Vec::with_capacity(STREAMS);
    for d in drains {
        drained.push(d.await.expect("drain task"));
    }
    for (_, status) in &drained {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().starts_with(&format!(
                "watcher fell behind by more than {BOUND} events; resume with from_seq = "
            )),
            "{status:?}"
        );
    }
    let (seqs, status) = &drained[0];
    let resume = resume_seq(status);
    assert_eq!(
        seqs.first(),
        Some(&first_seq),
        "a live watch starts at the next event"
    );
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap before the cut"
    );
    assert_eq!(
        seqs.last().map(|s| s + 1),
        Some(resume),
        "resume at the first missed"
    );
    assert!(resume <= last_seq, "it was cut off before the end");

    // A fresh watch from the resume point replays the rest (in pages) and goes on live.
    let mut resumed = open_watch(&mut jobs, Some(resume)).await;
    let mut expect = resume;
    while expect <= last_seq {
        let e = tokio::time::timeout(Duration::from_secs(60), resumed.next())
            .await
            .expect("an event within 60 s")
            .expect("stream open")
            .expect("ok event");
        assert_eq!(e.seq, expect, "no gap, no repeat");
        expect += 1;
    }
    let after = submit(&mut jobs, "after").await;
    let e = tokio::time::timeout(Duration::from_secs(60), resumed.next())
        .await
        .expect("a live event within 60 s")
        .expect("stream open")
        .expect("ok event");
    assert_eq!((e.seq, e.job_id), (last_seq + 1, after));
}
