//! Submitting jobs and reading them: `submit`, `get`, `describe`.

use super::*;

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
