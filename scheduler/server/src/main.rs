//! `suanli-scheduler`: the scheduler daemon.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use suanli_scheduler::config::ServerConfig;

#[derive(Debug, Parser)]
#[command(
    name = "suanli-scheduler",
    version,
    about = "Suanli's GPU-aware scheduler daemon"
)]
struct Args {
    /// Configuration file (TOML); flags override it.
    #[arg(long, env = "SUANLI_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address (port 0 picks a free port).
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// HTTP listen address for /metrics and /healthz.
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// Where the SQLite database lives.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Placement policy: fgd, best-fit, dot-product, gpu-packing, gpu-clustering, random.
    #[arg(long)]
    policy: Option<String>,
    /// Agent heartbeat timeout in milliseconds.
    #[arg(long)]
    heartbeat_timeout_ms: Option<u64>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let mut config = match &args.config {
        Some(path) => ServerConfig::load(path)?,
        None => ServerConfig::default(),
    };
    if let Some(a) = args.grpc_addr {
        config.grpc_addr = a;
    }
    if let Some(a) = args.http_addr {
        config.http_addr = a;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(p) = args.policy {
        config.policy = p;
    }
    if let Some(t) = args.heartbeat_timeout_ms {
        config.heartbeat_timeout_ms = t;
    }
    let server = suanli_scheduler::server::start(config)
        .await
        .context("cannot start the scheduler")?;
    // One machine-readable line, so scripts and tests can find ports chosen with port 0.
    println!(
        "listening grpc={} http={}",
        server.grpc_addr, server.http_addr
    );
    wait_for_signal().await;
    tracing::info!("Shutting down.");
    server.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
