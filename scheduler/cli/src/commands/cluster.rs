//! The cluster: `resolve`, `top`, `cordon`, `uncordon`, `drain`, `node remove`.

use super::*;

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
