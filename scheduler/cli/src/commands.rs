//! One function per subcommand: build the request, call, turn the answer into views, print.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use suanli_engine::JobSpec;
use suanli_proto::pb;
use tokio::time::timeout;

use crate::client::{Client, unary};
use crate::error::CliError;
use crate::jobfile::parse_jobs;
use crate::output::{self, Format};
use crate::view::{
    DescribeView, EventView, ExplainView, JobList, JobView, NodeList, NodeView, ResolveView,
    TelemetryView,
};

/// Writes to standard output; a closed pipe ends the command quietly.
pub fn emit(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(CliError::StdoutClosed),
        Err(e) => Err(CliError::Failed(format!("cannot write output: {e}"))),
    }
}

/// Prints `value` as data, or the table `table` builds.
fn show<T: Serialize>(
    format: Format,
    value: &T,
    table: impl FnOnce() -> String,
) -> Result<(), CliError> {
    if format.is_data() {
        emit(&output::data(format, value)?)
    } else {
        emit(&table())
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// ---- submit ----------------------------------------------------------------------------------

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Job file (YAML, several jobs separated by `---`); `-` reads standard input. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
    /// Check the files and print the jobs without submitting them.
    #[arg(long)]
    pub dry_run: bool,
    /// Idempotency key: submitting again with the same key returns the first submission.
    /// With several jobs, `-<n>` is appended for the n-th (from 1).
    #[arg(long)]
    pub request_id: Option<String>,
}

/// A job read from a file, with where it came from for messages.
#[derive(Debug, Clone)]
pub struct FileJob {
    pub file: String,
    pub spec: JobSpec,
}

pub fn read_job_files(files: &[String]) -> Result<Vec<FileJob>, CliError> {
    let mut jobs = Vec::new();
    let mut stdin_used = false;
    for file in files {
        let (name, text) = if file == "-" {
            if stdin_used {
                return Err(CliError::Usage("`-f -` may be given only once".into()));
            }
            stdin_used = true;
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| CliError::Usage(format!("cannot read standard input: {e}")))?;
            ("<stdin>".to_string(), text)
        } else {
            let text = std::fs::read_to_string(file)
                .map_err(|e| CliError::Usage(format!("cannot read {file}: {e}")))?;
            (file.clone(), text)
        };
        let specs = parse_jobs(&name, &text).map_err(|e| CliError::Usage(e.to_string()))?;
        jobs.extend(specs.into_iter().map(|spec| FileJob {
            file: name.clone(),
            spec,
        }));
    }
    Ok(jobs)
}

pub fn print_dry_run(jobs: &[FileJob], format: Format) -> Result<(), CliError> {
    let specs: Vec<&JobSpec> = jobs.iter().map(|j| &j.spec).collect();
    show(format, &specs, || {
        let mut table = output::Table::new(&["FILE", "NAME", "KIND", "REPLICAS", "GPU", "TENANT"]);
        for j in jobs {
            table.row(vec![
                j.file.clone(),
                j.spec.name.clone(),
                format!("{:?}", j.spec.kind).to_ascii_lowercase(),
                j.spec.replicas.to_string(),
                output::gpu_summary(&j.spec),
                j.spec.tenant.clone(),
            ]);
        }
        format!(
            "{}{} job(s) valid; nothing submitted (--dry-run)\n",
            table.render(),
            jobs.len()
        )
    })
}

pub async fn submit_one(
    client: &mut Client,
    spec: JobSpec,
    request_id: String,
) -> Result<JobView, CliError> {
    let reply = client
        .jobs
        .submit(unary(pb::SubmitJobRequest {
            spec: Some(spec.into()),
            request_id,
        }))
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    let job = reply.job.ok_or_else(|| {
        CliError::Failed("the scheduler accepted the job but sent it back empty".into())
    })?;
    JobView::from_wire(job)
}

pub async fn submit(
    client: &mut Client,
    jobs: Vec<FileJob>,
    args: &SubmitArgs,
    format: Format,
) -> Result<(), CliError> {
    let count = jobs.len();
    let mut submitted = Vec::new();
    for (i, job) in jobs.into_iter().enumerate() {
        let request_id = match &args.request_id {
            Some(id) if count == 1 => id.clone(),
            Some(id) => format!("{id}-{}", i + 1),
            None => String::new(),
        };
        let name = job.spec.name.clone();
        match submit_one(client, job.spec, request_id).await {
            Ok(view) => {
                if !format.is_data() {
                    emit(&output::line(&format!(
                        "job/{} submitted ({name})",
                        view.id
                    )))?;
                }
                submitted.push(view);
            }
            Err(e) => {
                // Say which job failed; the ones before it stay submitted.
                let context = format!("{} job {name:?}", job.file);
                return Err(match e {
                    CliError::Server { status, hint } => CliError::Server {
                        status: tonic::Status::new(
                            status.code(),
                            format!("{context}: {}", status.message()),
                        ),
                        hint,
                    },
                    other => other,
                });
            }
        }
    }
    if format.is_data() {
        if submitted.len() == 1 {
            emit(&output::data(format, &submitted[0])?)?;
        } else {
            let total = submitted.len() as u64;
            emit(&output::data(
                format,
                &JobList {
                    items: submitted,
                    total,
                    next_page_token: String::new(),
                },
            )?)?;
        }
    }
    Ok(())
}

// ---- get -------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KindArg {
    Training,
    Inference,
}

#[derive(Debug, Args)]
pub struct ListJobsArgs {
    /// Only jobs in these states (repeat or comma-separate): pending, placed, running,
    /// succeeded, failed, cancelled, preempted.
    #[arg(long, value_delimiter = ',')]
    pub state: Vec<String>,
    /// Only this tenant's jobs.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only jobs in this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Only jobs of this kind.
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// Jobs per page; 0 means the scheduler's default.
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    /// Fetch every page, not only the first.
    #[arg(long)]
    pub all_pages: bool,
}

fn parse_states(states: &[String]) -> Result<Vec<i32>, CliError> {
    states
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse::<suanli_engine::JobState>()
                .map(|state| pb::JobState::from(state) as i32)
                .map_err(|e| CliError::Usage(format!("--state: {e}")))
        })
        .collect()
}

pub async fn list_jobs(
    client: &mut Client,
    args: &ListJobsArgs,
    format: Format,
) -> Result<(), CliError> {
    let states = parse_states(&args.state)?;
    let kind = match args.kind {
        None => pb::JobKind::Unspecified,
        Some(KindArg::Training) => pb::JobKind::Training,
        Some(KindArg::Inference) => pb::JobKind::Inference,
    };
    let mut items = Vec::new();
    let mut pager = Pager::default();
    let (total, next) = loop {
        let reply = client
            .jobs
            .list(unary(pb::ListJobsRequest {
                tenant: args.tenant.clone().unwrap_or_default(),
                queue: args.queue.clone().unwrap_or_default(),
                states: states.clone(),
                kind: kind as i32,
                page: Some(pb::PageRequest {
                    page_size: args.limit,
                    page_token: pager.token().to_string(),
                }),
            }))
            .await
            .map_err(|s| client.fail(s))?
            .into_inner();
        for job in reply.jobs {
            items.push(JobView::from_wire(job)?);
        }
        let page = reply.page.unwrap_or_default();
        if !args.all_pages || !pager.advance(page.next_page_token.clone())? {
            break (page.total_size, page.next_page_token);
        }
    };
    let list = JobList {
        items,
        total,
        next_page_token: next,
    };
    show(format, &list, || {
        if list.items.is_empty() {
            return "No jobs found.\n".to_string();
        }
        let mut text = output::jobs_table(&list.items, format == Format::Wide, now_ms());
        if !list.next_page_token.is_empty() {
            text.push_str(&format!(
                "({} of {} jobs shown; pass --all-pages for the rest)\n",
                list.items.len(),
                list.total
            ));
        }
        text
    })
}

/// Walks a listing page by page. A server that hands back a token it gave before would make
/// the walk endless; that is an error, not a silently cut list.
#[derive(Debug, Default)]
pub struct Pager {
    token: String,
    seen: std::collections::HashSet<String>,
}

impl Pager {
    /// The token for the next request (empty for the first).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Takes the token a reply ended with: `Ok(true)` to fetch the page it names,
    /// `Ok(false)` when it was the last page.
    pub fn advance(&mut self, next: String) -> Result<bool, CliError> {
        if next.is_empty() {
            return Ok(false);
        }
        if !self.seen.insert(next.clone()) {
            return Err(CliError::Failed(format!(
                "the scheduler sent page token {next:?} twice; stopping rather than loop"
            )));
        }
        self.token = next;
        Ok(true)
    }
}

pub async fn fetch_job(client: &mut Client, id: &str) -> Result<JobView, CliError> {
    let job = client
        .jobs
        .get(unary(pb::GetJobRequest { id: id.to_string() }))
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    JobView::from_wire(job)
}

pub async fn get_job(client: &mut Client, id: &str, format: Format) -> Result<(), CliError> {
    let job = fetch_job(client, id).await?;
    show(format, &job, || {
        output::jobs_table(std::slice::from_ref(&job), format == Format::Wide, now_ms())
    })
}

pub async fn fetch_nodes(client: &mut Client, prefix: &str) -> Result<Vec<NodeView>, CliError> {
    let mut nodes = Vec::new();
    let mut pager = Pager::default();
    loop {
        let reply = client
            .cluster
            .list_nodes(unary(pb::ListNodesRequest {
                prefix: prefix.to_string(),
                page: Some(pb::PageRequest {
                    page_size: 0,
                    page_token: pager.token().to_string(),
                }),
            }))
            .await
            .map_err(|s| client.fail(s))?
            .into_inner();
        for node in reply.nodes {
            nodes.push(NodeView::from_wire(node)?);
        }
        if !pager.advance(reply.page.map(|p| p.next_page_token).unwrap_or_default())? {
            return Ok(nodes);
        }
    }
}

pub async fn list_nodes(client: &mut Client, prefix: &str, format: Format) -> Result<(), CliError> {
    let list = NodeList {
        items: fetch_nodes(client, prefix).await?,
    };
    show(format, &list, || {
        if list.items.is_empty() {
            "No nodes found.\n".to_string()
        } else {
            output::nodes_table(&list.items, format == Format::Wide)
        }
    })
}

pub async fn get_node(client: &mut Client, cid: &str, format: Format) -> Result<(), CliError> {
    let status = client
        .cluster
        .get_node(unary(pb::GetNodeRequest {
            cid: cid.to_string(),
        }))
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    let node = NodeView::from_wire(status)?;
    show(format, &node, || output::node_detail(&node, now_ms()))
}

// ---- describe --------------------------------------------------------------------------------

/// Longest wait for a job's stored events; the server ends a replay-only stream by itself.
const REPLAY_WAIT: Duration = Duration::from_secs(10);

/// A job's stored events, oldest first: `Watch` in replay-only mode.
pub async fn job_events(client: &mut Client, job: &JobView) -> Result<Vec<EventView>, CliError> {
    let mut stream = client
        .jobs
        .watch(unary(pb::WatchJobsRequest {
            job_id: job.id.clone(),
            from_seq: Some(1),
            tenant: String::new(),
            replay_only: true,
        }))
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    let started = tokio::time::Instant::now();
    let mut events = Vec::new();
    loop {
        match timeout(
            REPLAY_WAIT.saturating_sub(started.elapsed()),
            stream.message(),
        )
        .await
        {
            Ok(Ok(Some(event))) => events.push(EventView::from(event)),
            Ok(Ok(None)) | Err(_) => break,
            Ok(Err(status)) => return Err(client.fail(status)),
        }
    }
    Ok(events)
}

pub async fn explain(client: &mut Client, id: &str) -> Result<ExplainView, CliError> {
    let reply = client
        .jobs
        .explain(unary(pb::ExplainJobRequest { id: id.to_string() }))
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    Ok(ExplainView::from(reply))
}

pub async fn describe_job(client: &mut Client, id: &str, format: Format) -> Result<(), CliError> {
    let job = fetch_job(client, id).await?;
    let explanation = explain(client, id).await?;
    let events = job_events(client, &job).await?;
    let view = DescribeView {
        job,
        events,
        explanation,
    };
    show(format, &view, || output::describe_text(&view, now_ms()))
}

// ---- cancel ----------------------------------------------------------------------------------

pub async fn cancel(
    client: &mut Client,
    id: &str,
    reason: &str,
    format: Format,
) -> Result<(), CliError> {
    let job = client
        .jobs
        .cancel(unary(pb::CancelJobRequest {
            id: id.to_string(),
            reason: reason.to_string(),
        }))
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    let job = JobView::from_wire(job)?;
    show(format, &job, || {
        output::line(&format!("job/{} cancelled ({})", job.id, job.name))
    })
}

// ---- update ----------------------------------------------------------------------------------

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Job id.
    pub id: String,
    /// New priority; higher runs first and may preempt lower.
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// New queue within the job's tenant.
    #[arg(long)]
    pub queue: Option<String>,
    /// Whether the job may be stopped for higher-priority work or to reclaim quota.
    #[arg(long, value_name = "BOOL")]
    pub preemptible: Option<bool>,
    /// New time limit, counted from the job's placement: `90s`, `30m`, `2h`, `1d`, `1h30m`,
    /// or a number of seconds. A running job already past it is stopped.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub time_limit: Option<String>,
    /// New size of an elastic job, between its min_replicas and replicas. A running job
    /// stops its highest replicas; growing one is not supported yet.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub replicas: Option<String>,
}

/// The longest unit first, so that `1h30m` reads as written.
const DURATION_UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

/// Seconds in a duration such as `90s`, `30m`, `2h`, `1d`, `1h30m`, or a bare number of
/// seconds; the error says what is wrong with `text`, for a message naming the flag.
pub fn parse_duration_s(text: &str) -> Result<u64, String> {
    let shown = output::printable(text);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("is empty; give a duration like 30m, 2h or 90s".into());
    }
    if trimmed.starts_with('-') {
        return Err(format!("must be positive, got \"{shown}\""));
    }
    let garbage = || {
        format!("\"{shown}\" is not a duration; use e.g. 90s, 30m, 2h, 1d or a number of seconds")
    };
    if trimmed.bytes().all(|b| b.is_ascii_digit()) {
        let seconds: u64 = trimmed
            .parse()
            .map_err(|_| format!("\"{shown}\" is too long"))?;
        return positive(seconds, &shown);
    }
    let mut total: u64 = 0;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(garbage());
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("\"{shown}\" is too long"))?;
        let unit = rest[digits..].chars().next().ok_or_else(garbage)?;
        let (_, scale) = DURATION_UNITS
            .iter()
            .find(|(u, _)| *u == unit.to_ascii_lowercase())
            .ok_or_else(garbage)?;
        total = number
            .checked_mul(*scale)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| format!("\"{shown}\" is too long"))?;
        rest = &rest[digits + unit.len_utf8()..];
    }
    positive(total, &shown)
}

fn positive(seconds: u64, shown: &str) -> Result<u64, String> {
    if seconds == 0 {
        Err(format!("must be positive, got \"{shown}\""))
    } else {
        Ok(seconds)
    }
}

/// A replica count as `--replicas` takes it.
fn parse_replicas(text: &str) -> Result<u32, String> {
    let shown = output::printable(text);
    match text.trim().parse::<i64>() {
        Ok(n) if n < 1 => Err(format!("must be at least 1, got {n}")),
        Ok(n) => u32::try_from(n).map_err(|_| format!("{n} is too many")),
        Err(_) => Err(format!("\"{shown}\" is not a number of replicas")),
    }
}

/// The request `args` ask for, checked before anything is sent.
pub fn update_request(args: &UpdateArgs) -> Result<pb::UpdateJobRequest, CliError> {
    let time_limit_s = args
        .time_limit
        .as_deref()
        .map(parse_duration_s)
        .transpose()
        .map_err(|e| CliError::Usage(format!("--time-limit: {e}")))?;
    let replicas = args
        .replicas
        .as_deref()
        .map(parse_replicas)
        .transpose()
        .map_err(|e| CliError::Usage(format!("--replicas: {e}")))?;
    let request = pb::UpdateJobRequest {
        id: args.id.clone(),
        priority: args.priority,
        preemptible: args.preemptible,
        queue: args.queue.clone(),
        time_limit_s,
        replicas,
    };
    if request.priority.is_none()
        && request.preemptible.is_none()
        && request.queue.is_none()
        && request.time_limit_s.is_none()
        && request.replicas.is_none()
    {
        return Err(CliError::Usage(
            "nothing to change: give --priority, --queue, --preemptible, --time-limit or \
             --replicas"
                .into(),
        ));
    }
    Ok(request)
}

pub async fn update(
    client: &mut Client,
    request: pb::UpdateJobRequest,
    format: Format,
) -> Result<(), CliError> {
    let mut changed = Vec::new();
    let job = client
        .jobs
        .update(unary(request.clone()))
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    let job = JobView::from_wire(job)?;
    let spec = &job.spec;
    if request.priority.is_some() {
        changed.push(format!("priority {}", spec.priority));
    }
    if request.queue.is_some() {
        changed.push(format!("queue {}", spec.queue));
    }
    if request.preemptible.is_some() {
        changed.push(format!("preemptible {}", spec.preemptible));
    }
    if let Some(limit) = spec.time_limit_s.filter(|_| request.time_limit_s.is_some()) {
        changed.push(format!("time limit {limit} s"));
    }
    if request.replicas.is_some() {
        changed.push(format!("replicas {}", spec.replicas));
    }
    show(format, &job, || {
        output::line(&format!(
            "job/{} updated ({}): {}",
            job.id,
            job.name,
            changed.join(", ")
        ))
    })
}

// ---- watch -----------------------------------------------------------------------------------

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only this job's events; all visible jobs when absent.
    pub id: Option<String>,
    /// Replay stored events from this sequence number first (1 = from the beginning).
    #[arg(long)]
    pub from_seq: Option<u64>,
    /// Only this tenant's jobs (admins).
    #[arg(long)]
    pub tenant: Option<String>,
}

/// Listens for Ctrl-C from the moment it is called. `tokio::signal::ctrl_c()` only installs
/// its handler when first polled, so a Ctrl-C that came before that poll killed the process
/// instead of ending the command cleanly.
pub fn listen_for_interrupt() -> Result<tokio::signal::unix::Signal, CliError> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| CliError::Failed(format!("cannot listen for Ctrl-C: {e}")))
}

pub async fn watch(client: &mut Client, args: &WatchArgs, format: Format) -> Result<(), CliError> {
    let mut interrupt = listen_for_interrupt()?;
    let mut names: HashMap<String, Option<String>> = HashMap::new();
    let mut cursor = WatchCursor::new(args.from_seq);
    // Resumes in a row that brought no new event; any event printed starts the count over.
    let mut fruitless = 0;
    let mut resume_hint = None;
    loop {
        let request = pb::WatchJobsRequest {
            job_id: args.id.clone().unwrap_or_default(),
            from_seq: cursor.resume_from(resume_hint),
            tenant: args.tenant.clone().unwrap_or_default(),
            replay_only: false,
        };
        let opened = tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            r = client.jobs.watch(request) => r,
        };
        let end = match opened {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    let message = tokio::select! {
                        _ = interrupt.recv() => return Ok(()),
                        m = stream.message() => m,
                    };
                    let event = match message {
                        Ok(Some(e)) => EventView::from(e),
                        Ok(None) => {
                            break StreamEnd::Broken(CliError::Failed(
                                "the scheduler ended the event stream".into(),
                            ));
                        }
                        Err(status) => break StreamEnd::of(status, client),
                    };
                    if !cursor.take(event.seq) {
                        continue; // Printed before the stream was resumed.
                    }
                    fruitless = 0;
                    emit(&watch_text(client, &mut names, &event, format).await?)?;
                }
            }
            // The first open fails as any call does; later ones are resumes.
            Err(status) if cursor.resumed => StreamEnd::of(status, client),
            Err(status) => return Err(client.fail(status)),
        };
        fruitless += 1;
        let pause = match end {
            StreamEnd::Fatal(e) => return Err(e),
            StreamEnd::Broken(e) | StreamEnd::FellBehind(_, e) if fruitless > RESUME_ATTEMPTS => {
                return Err(e);
            }
            StreamEnd::FellBehind(hint, _) => {
                resume_hint = hint;
                if let Some(from) = cursor.resume_from(hint) {
                    eprintln!("suanli: watch fell behind the scheduler; resuming from seq {from}");
                }
                Duration::ZERO
            }
            StreamEnd::Broken(e) => {
                let pause = resume_backoff(fruitless);
                eprintln!(
                    "suanli: watch interrupted ({}); resuming in {} ms",
                    output::printable(&e.to_string()),
                    pause.as_millis()
                );
                pause
            }
        };
        cursor.resumed = true;
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Reopens of a broken watch in a row that may bring nothing before `watch` gives up.
const RESUME_ATTEMPTS: u32 = 6;
/// The pause before the first reopen; it doubles up to [`RESUME_BACKOFF_MAX`].
const RESUME_BACKOFF_FIRST: Duration = Duration::from_millis(250);
const RESUME_BACKOFF_MAX: Duration = Duration::from_secs(4);

/// The pause before the `attempt`-th reopen in a row (from 1): 250 ms, 500 ms, 1 s, 2 s, 4 s,
/// 4 s: about 12 s in all, enough for a scheduler to restart.
fn resume_backoff(attempt: u32) -> Duration {
    RESUME_BACKOFF_FIRST
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(RESUME_BACKOFF_MAX)
}

/// Where a watch stands in the event log, so a resumed stream prints nothing twice and skips
/// nothing: it reopens at the event after the last one printed.
#[derive(Debug)]
struct WatchCursor {
    /// What the user asked for (`--from-seq`).
    from_seq: Option<u64>,
    /// The last event printed.
    last_seen: Option<u64>,
    /// Whether the stream has been opened again since the first time.
    resumed: bool,
}

impl WatchCursor {
    fn new(from_seq: Option<u64>) -> WatchCursor {
        WatchCursor {
            from_seq,
            last_seen: None,
            resumed: false,
        }
    }

    /// `from_seq` for the next stream: after the last event printed; before any, where the
    /// scheduler said to resume, else where the user started. A watch of live events only
    /// whose stream breaks before its first event has no place in the log yet and goes on
    /// with live events.
    fn resume_from(&self, hint: Option<u64>) -> Option<u64> {
        self.last_seen.map(|seq| seq + 1).or(hint).or(self.from_seq)
    }

    /// Whether `seq` is new; if so it counts as printed.
    fn take(&mut self, seq: u64) -> bool {
        if self.last_seen.is_some_and(|last| seq <= last) {
            return false;
        }
        self.last_seen = Some(seq);
        true
    }
}

/// How a watch stream ended, and what to do about it.
#[derive(Debug)]
enum StreamEnd {
    /// The scheduler cut off this reader for falling behind, naming where to resume:
    /// reopen at once.
    FellBehind(Option<u64>, CliError),
    /// The connection broke or the scheduler closed the stream: reopen after a pause.
    Broken(CliError),
    /// Not something reopening cures.
    Fatal(CliError),
}

impl StreamEnd {
    fn of(status: tonic::Status, client: &Client) -> StreamEnd {
        use tonic::Code;
        match status.code() {
            Code::ResourceExhausted => match resume_point(status.message()) {
                Some(seq) => StreamEnd::FellBehind(Some(seq), client.fail(status)),
                None => StreamEnd::Fatal(client.fail(status)),
            },
            // What a broken connection or an unreachable scheduler looks like to tonic.
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled => {
                StreamEnd::Broken(client.fail(status))
            }
            _ => StreamEnd::Fatal(client.fail(status)),
        }
    }
}

/// `watcher fell behind by more than 1024 events; resume with from_seq = 4242` → 4242.
fn resume_point(message: &str) -> Option<u64> {
    let (_, tail) = message.split_once("resume with from_seq = ")?;
    let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// One event as `watch` prints it.
async fn watch_text(
    client: &mut Client,
    names: &mut HashMap<String, Option<String>>,
    event: &EventView,
    format: Format,
) -> Result<String, CliError> {
    Ok(match format {
        Format::Json => output::json_line(event)?,
        Format::Yaml => format!("---\n{}", output::data(Format::Yaml, event)?),
        Format::Table | Format::Wide => {
            if !names.contains_key(&event.job_id) {
                // Names make the stream readable; a job we may not read stays unnamed.
                let name = fetch_job(client, &event.job_id).await.ok().map(|j| j.name);
                names.insert(event.job_id.clone(), name);
            }
            let name = names.get(&event.job_id).cloned().flatten();
            output::event_line(event, name.as_deref())
        }
    })
}

#[cfg(test)]
mod watch_tests {
    use super::{WatchCursor, resume_backoff, resume_point};
    use std::time::Duration;

    #[test]
    fn a_resumed_watch_prints_nothing_twice_and_skips_nothing() {
        let mut cursor = WatchCursor::new(Some(1));
        assert_eq!(cursor.resume_from(None), Some(1));
        assert!(cursor.take(1));
        assert!(cursor.take(2));
        assert_eq!(
            cursor.resume_from(Some(7)),
            Some(3),
            "after the last printed"
        );
        assert!(!cursor.take(2), "a replayed event is not printed again");
        assert!(cursor.take(3));

        let mut live = WatchCursor::new(None);
        assert_eq!(live.resume_from(None), None);
        assert_eq!(
            live.resume_from(Some(40)),
            Some(40),
            "where the scheduler said"
        );
        assert!(live.take(40));
        assert_eq!(live.resume_from(None), Some(41));
    }

    #[test]
    fn the_resume_point_is_read_from_the_status() {
        assert_eq!(
            resume_point(
                "watcher fell behind by more than 1024 events; resume with from_seq = 4242"
            ),
            Some(4242)
        );
        assert_eq!(resume_point("too many watchers"), None);
    }

    #[test]
    fn resumes_back_off_to_a_ceiling() {
        let pauses: Vec<Duration> = (1..=7).map(resume_backoff).collect();
        assert_eq!(pauses[0], Duration::from_millis(250));
        assert_eq!(pauses[2], Duration::from_secs(1));
        assert_eq!(pauses[6], Duration::from_secs(4));
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
    }
}

// ---- resolve ---------------------------------------------------------------------------------

#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// CID prefix (`cid:acme/cn-east-1`); `cid:` alone or an empty string means everything.
    pub prefix: String,
    /// Only GPUs of this model (`H100`).
    #[arg(long)]
    pub model: Option<String>,
    /// Only nodes with at least this many GPUs without any grant.
    #[arg(long, default_value_t = 0)]
    pub free_gpus: u32,
    /// Only GPUs with at least this much unallocated memory.
    #[arg(long, default_value_t = 0)]
    pub min_free_memory_mib: u64,
    /// Only GPUs that have (or could create) a free instance of this MIG profile.
    #[arg(long)]
    pub mig_profile: Option<String>,
    /// Only nodes with an active RDMA port of at least this rate.
    #[arg(long, default_value_t = 0.0)]
    pub min_rdma_gbps: f64,
}

pub async fn resolve(
    client: &mut Client,
    args: &ResolveArgs,
    format: Format,
) -> Result<(), CliError> {
    if !(args.min_rdma_gbps.is_finite() && args.min_rdma_gbps >= 0.0) {
        return Err(CliError::Usage(format!(
            "--min-rdma-gbps: {} is not a rate",
            args.min_rdma_gbps
        )));
    }
    let prefix = match args.prefix.trim() {
        "cid:" => String::new(),
        p => p.to_string(),
    };
    // Every match, page by page: a resolve answers a question about the whole cluster.
    let mut all = pb::ResolveResponse::default();
    let mut pager = Pager::default();
    loop {
        let reply = client
            .cluster
            .resolve(unary(pb::ResolveRequest {
                prefix: prefix.clone(),
                model: args.model.clone().unwrap_or_default(),
                min_free_gpus: args.free_gpus,
                min_free_memory_mib: args.min_free_memory_mib,
                mig_profile: args.mig_profile.clone().unwrap_or_default(),
                min_rdma_rate_gbps: args.min_rdma_gbps,
                page: Some(pb::PageRequest {
                    page_size: 0,
                    page_token: pager.token().to_string(),
                }),
            }))
            .await
            .map_err(|s| client.fail(s))?
            .into_inner();
        all.nodes.extend(reply.nodes);
        if !pager.advance(reply.page.map(|p| p.next_page_token).unwrap_or_default())? {
            break;
        }
    }
    let view = ResolveView::from(all);
    show(format, &view, || {
        if view.nodes.is_empty() {
            "No node matches.\n".to_string()
        } else {
            output::resolve_table(&view, format == Format::Wide)
        }
    })
}

#[cfg(test)]
mod pager_tests {
    use super::Pager;

    #[test]
    fn a_pager_walks_to_the_end_and_refuses_a_loop() {
        let mut pager = Pager::default();
        assert_eq!(pager.token(), "");
        assert!(pager.advance("p2".into()).expect("new token"));
        assert_eq!(pager.token(), "p2");
        assert!(pager.advance("p3".into()).expect("new token"));
        let err = pager.advance("p2".into()).expect_err("seen before");
        assert!(err.to_string().contains("\"p2\" twice"), "{err}");
        assert!(!Pager::default().advance(String::new()).expect("last page"));
    }
}

// ---- top -------------------------------------------------------------------------------------

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Only nodes under this CID prefix.
    pub prefix: Option<String>,
    /// Refresh until Ctrl-C instead of printing once.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between refreshes with --watch.
    #[arg(long, default_value_t = 2)]
    pub interval: u64,
}

pub async fn fetch_telemetry(client: &mut Client, prefix: &str) -> Result<TelemetryView, CliError> {
    let reply = client
        .cluster
        .telemetry(unary(pb::TelemetryRequest {
            prefix: prefix.to_string(),
        }))
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    Ok(TelemetryView::from(reply))
}

pub async fn top(client: &mut Client, args: &TopArgs, format: Format) -> Result<(), CliError> {
    let prefix = args.prefix.clone().unwrap_or_default();
    if !args.watch {
        let view = fetch_telemetry(client, &prefix).await?;
        return show(format, &view, || {
            output::telemetry_table(&view, None, now_ms())
        });
    }
    if args.interval == 0 {
        return Err(CliError::Usage(
            "--interval: must be at least 1 second".into(),
        ));
    }
    let mut interrupt = listen_for_interrupt()?;
    let clear = std::io::stdout().is_terminal();
    let mut previous: Option<TelemetryView> = None;
    let mut ticker = tokio::time::interval(Duration::from_secs(args.interval));
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let view = fetch_telemetry(client, &prefix).await?;
        let text = match format {
            Format::Json => output::json_line(&view)?,
            Format::Yaml => format!("---\n{}", output::data(Format::Yaml, &view)?),
            Format::Table | Format::Wide => {
                let mut text = String::new();
                if clear {
                    text.push_str("\x1b[H\x1b[2J");
                }
                text.push_str(&format!(
                    "Every {}s: suanli top   {}\n\n",
                    args.interval,
                    output::format_time(now_ms())
                ));
                text.push_str(&output::telemetry_table(&view, previous.as_ref(), now_ms()));
                if !clear {
                    text.push('\n');
                }
                text
            }
        };
        emit(&text)?;
        previous = Some(view);
    }
}

// ---- cordon, uncordon, drain -----------------------------------------------------------------

pub async fn cordon(
    client: &mut Client,
    cid: &str,
    cordoned: bool,
    reason: &str,
    format: Format,
) -> Result<(), CliError> {
    let status = if cordoned {
        client
            .cluster
            .cordon(unary(pb::CordonRequest {
                cid: cid.to_string(),
                reason: reason.to_string(),
            }))
            .await
    } else {
        client
            .cluster
            .uncordon(unary(pb::UncordonRequest {
                cid: cid.to_string(),
            }))
            .await
    }
    .map_err(|s| client.fail(s))?
    .into_inner();
    let node = NodeView::from_wire(status)?;
    let verb = if cordoned { "cordoned" } else { "uncordoned" };
    show(format, &node, || {
        output::line(&format!("node/{} {verb}", node.cid))
    })
}

#[derive(Debug, Serialize)]
struct DrainView {
    node: NodeView,
    evicted_job_ids: Vec<String>,
}

pub async fn drain(
    client: &mut Client,
    cid: &str,
    reason: &str,
    grace_period_ms: u32,
    format: Format,
) -> Result<(), CliError> {
    let reply = client
        .cluster
        .drain(unary(pb::DrainRequest {
            cid: cid.to_string(),
            reason: reason.to_string(),
            grace_period_ms,
        }))
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    let node = reply
        .node
        .ok_or_else(|| CliError::Failed("the scheduler drained the node but sent no status".into()))
        .and_then(NodeView::from_wire)?;
    let view = DrainView {
        node,
        evicted_job_ids: reply.evicted_job_ids,
    };
    show(format, &view, || {
        let evicted = if view.evicted_job_ids.is_empty() {
            "no jobs to move".to_string()
        } else {
            format!(
                "jobs moved back to pending: {}",
                view.evicted_job_ids.join(", ")
            )
        };
        output::line(&format!("node/{} drained; {evicted}", view.node.cid))
    })
}

// ---- node remove -----------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct RemovedNodeView {
    cid: String,
    /// Jobs that had replicas on the node and went back to pending (only with `--force`).
    requeued_job_ids: Vec<String>,
}

pub async fn remove_node(
    client: &mut Client,
    cid: &str,
    force: bool,
    format: Format,
) -> Result<(), CliError> {
    let reply = client
        .cluster
        .remove_node(unary(pb::RemoveNodeRequest {
            cid: cid.to_string(),
            force,
        }))
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    let view = RemovedNodeView {
        cid: if reply.cid.is_empty() {
            cid.to_string()
        } else {
            reply.cid
        },
        requeued_job_ids: reply.requeued_job_ids,
    };
    show(format, &view, || remove_node_text(&view))
}

fn remove_node_text(view: &RemovedNodeView) -> String {
    if view.requeued_job_ids.is_empty() {
        output::line(&format!("node/{} removed", view.cid))
    } else {
        output::line(&format!(
            "node/{} removed; jobs moved back to pending: {}",
            view.cid,
            view.requeued_job_ids.join(", ")
        ))
    }
}

#[cfg(test)]
mod update_tests {
    use super::{UpdateArgs, parse_duration_s, update_request};

    #[test]
    fn durations_read_as_written() {
        for (text, seconds) in [
            ("90s", 90),
            ("30m", 1_800),
            ("2h", 7_200),
            ("1d", 86_400),
            ("1h30m", 5_400),
            ("45", 45),
            (" 2H ", 7_200),
        ] {
            assert_eq!(parse_duration_s(text), Ok(seconds), "{text}");
        }
    }

    #[test]
    fn bad_durations_say_why() {
        for (text, why) in [
            ("", "is empty; give a duration like 30m, 2h or 90s"),
            ("-5m", "must be positive, got \"-5m\""),
            ("0", "must be positive, got \"0\""),
            ("0h0m", "must be positive, got \"0h0m\""),
            (
                "soon",
                "\"soon\" is not a duration; use e.g. 90s, 30m, 2h, 1d or a number of seconds",
            ),
            (
                "5x",
                "\"5x\" is not a duration; use e.g. 90s, 30m, 2h, 1d or a number of seconds",
            ),
            (
                "h",
                "\"h\" is not a duration; use e.g. 90s, 30m, 2h, 1d or a number of seconds",
            ),
            (
                "99999999999999999999",
                "\"99999999999999999999\" is too long",
            ),
            ("999999999999999999d", "\"999999999999999999d\" is too long"),
        ] {
            assert_eq!(parse_duration_s(text), Err(why.to_string()), "{text:?}");
        }
    }

    fn args(time_limit: Option<&str>, replicas: Option<&str>) -> UpdateArgs {
        UpdateArgs {
            id: "j-00000001".into(),
            priority: None,
            queue: None,
            preemptible: None,
            time_limit: time_limit.map(str::to_string),
            replicas: replicas.map(str::to_string),
        }
    }

    #[test]
    fn flags_are_checked_before_sending() {
        let request = update_request(&args(Some("2h"), Some("3"))).expect("valid");
        assert_eq!(
            (request.time_limit_s, request.replicas),
            (Some(7_200), Some(3))
        );
        let message = |a: UpdateArgs| update_request(&a).expect_err("refused").to_string();
        assert_eq!(
            message(args(Some("-1h"), None)),
            "--time-limit: must be positive, got \"-1h\""
        );
        assert_eq!(
            message(args(None, Some("0"))),
            "--replicas: must be at least 1, got 0"
        );
        assert_eq!(
            message(args(None, Some("-2"))),
            "--replicas: must be at least 1, got -2"
        );
        assert_eq!(
            message(args(None, Some("two"))),
            "--replicas: \"two\" is not a number of replicas"
        );
        assert_eq!(
            message(args(None, None)),
            "nothing to change: give --priority, --queue, --preemptible, --time-limit or \
             --replicas"
        );
    }
}
