//! Assembles the daemon: store, core, gRPC services and HTTP endpoints on their sockets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use suanli_proto::pb;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{debug, info, warn};

use crate::auth::Authenticator;
use crate::config::ServerConfig;
use crate::core::{self, CoreConfig, CoreHandle};
use crate::extender::{ExtenderSettings, ExtenderState};
use crate::grpc::Services;
use crate::http::{HttpState, router};
use crate::kubernetes::KubeApi;
use crate::store::{Durability, Store};

/// Largest gRPC message accepted: a hostile client cannot make the server buffer more.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Streams one client connection may have open at once (CLI calls, watches, a session).
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Core(#[from] crate::core::CoreError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Kube(#[from] crate::kubernetes::KubeError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running scheduler. Dropping it does not stop it; call [`RunningServer::shutdown`].
#[derive(Debug)]
pub struct RunningServer {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub core: CoreHandle,
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    core_thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningServer {
    /// Stops serving, lets in-flight calls finish, and stops the core.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        self.core.shutdown();
        if let Some(thread) = self.core_thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    let durability = if config.durability == "normal" {
        Durability::Normal
    } else {
        Durability::Full
    };
    let store = Store::open(&config.data_dir, durability)?;
    let reader = Store::open(&config.data_dir, durability)?;
    let auth = Authenticator::new(&config.auth);
    if auth.is_open() {
        warn!(
            "No tokens configured: every caller is treated as an admin. Configure [auth] for anything but local use."
        );
    }
    let (core, core_thread) = core::start(
        store,
        CoreConfig {
            policy: config.policy.clone(),
            seed: config.seed,
            heartbeat_timeout: Duration::from_millis(config.heartbeat_timeout_ms),
            max_attempts: config.max_attempts,
            quotas: config.quota_table(std::path::Path::new("config"))?,
            catalog: config.domain_catalog(std::path::Path::new("config"))?,
            preemption: core::PreemptionConfig {
                enabled: config.preemption.enabled,
                min_runtime_s: config.preemption.min_runtime_s,
                max_victims: config.preemption.max_victims,
            },
            clock: std::sync::Arc::new(crate::clock::SystemClock),
        },
    )?;
    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.grpc_addr,
            source,
        })?;
    let http_listener = TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.http_addr,
            source,
        })?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|source| ServerError::Bind {
            addr: config.grpc_addr,
            source,
        })?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|source| ServerError::Bind {
            addr: config.http_addr,
            source,
        })?;

    let services = Services {
        core: core.clone(),
        auth,
        reader: Arc::new(Mutex::new(reader)),
        heartbeat_interval_ms: config.heartbeat_interval_ms,
        telemetry_interval_ms: config.telemetry_interval_ms,
        telemetry: Arc::new(Mutex::new(HashMap::new())),
        logs: Arc::default(),
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (grpc_stop_tx, grpc_stop_rx) = oneshot::channel::<()>();
    let (http_stop_tx, http_stop_rx) = oneshot::channel::<()>();
    let mut stop_others: Vec<oneshot::Sender<()>> = Vec::new();

    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        // A peer that stops answering pings is gone; its streams are ended.
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        // A request that does not arrive whole in time (slow headers, a slow body, a session
        // that never says hello) is ended; answered streams are not limited by this.
        .timeout(Duration::from_millis(config.grpc.request_timeout_ms.max(1)))
        // One connection cannot open streams or queue calls without bound.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .concurrency_limit_per_connection(MAX_STREAMS_PER_CONNECTION as usize)
        .layer(tower::util::MapResponseLayer::new(
            crate::grpc::undecodable_is_invalid::<tonic::body::Body>,
        ))
        .add_service(
            pb::job_service_server::JobServiceServer::new(services.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::cluster_service_server::ClusterServiceServer::new(services.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::agent_service_server::AgentServiceServer::new(services)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        );
    let grpc_task = tokio::spawn(async move {
        // Small request/response pairs (registration, CLI calls) would otherwise wait on
        // delayed ACKs; tonic sets this only on listeners it binds itself.
        let incoming = TcpListenerStream::new(grpc_listener).map(|accepted| {
            if let Ok(stream) = &accepted
                && let Err(e) = stream.set_nodelay(true)
            {
                debug!(error = %e, "Could not set TCP_NODELAY.");
            }
            accepted
        });
        if let Err(e) = grpc
            .serve_with_incoming_shutdown(incoming, async {
                let _ = grpc_stop_rx.await;
            })
            .await
        {
            warn!(error = %e, "gRPC server stopped with an error.");
        }
    });
    let kube = match config.kubernetes.api.as_str() {
        "" => None,
        api => Some(KubeApi::connect(api)?),
    };
    let counters = Arc::new(crate::extender::ExtenderCounters::default());
    let http_timeouts = crate::http::Timeouts::from(&config.http);
    let app = router(HttpState {
        core: core.clone(),
        latency: crate::http::PlacementLatency::default(),
        extender: counters.clone(),
    })
    .merge(crate::extender::router(ExtenderState {
        core: core.clone(),
        settings: Arc::new(ExtenderSettings {
            gpu_resource: config.kubernetes.gpu_resource.clone(),
        }),
        kube: kube.clone(),
        counters,
        limits: crate::extender::ExtenderLimits::new(http_timeouts.body_read),
    }));
    let mut tasks = Vec::new();
    if let Some(kube) = kube {
        let (reconcile_stop_tx, reconcile_stop_rx) = oneshot::channel::<()>();
        stop_others.push(reconcile_stop_tx);
        tasks.push(tokio::spawn(crate::kubernetes::reconcile_loop(
            core.clone(),
            kube,
            Duration::from_secs(config.kubernetes.reconcile_interval_s),
            reconcile_stop_rx,
        )));
    }
    let http_task = tokio::spawn(crate::http::serve(
        http_listener,
        app,
        http_timeouts,
        http_stop_rx,
    ));
    let fanout = tokio::spawn(async move {
        let _ = stop_rx.await;
        let _ = grpc_stop_tx.send(());
        let _ = http_stop_tx.send(());
        for stop in stop_others {
            let _ = stop.send(());
        }
    });
    tasks.extend([grpc_task, http_task, fanout]);
    info!(grpc = %grpc_addr, http = %http_addr, data_dir = %config.data_dir.display(), "Scheduler serving.");
    Ok(RunningServer {
        grpc_addr,
        http_addr,
        core,
        stop: Some(stop_tx),
        tasks,
        core_thread: Some(core_thread),
    })
}
