//! HTTP endpoints: `/healthz` and `/metrics` (Prometheus text format, see `metrics`), and the
//! listener that serves them and the extender within bounds of time and memory:
//!
//! - a connection must send a whole request head within `header_read_timeout` of opening or
//!   of its previous answer (so idle keep-alive connections are closed after it too);
//! - a body must arrive within `body_read_timeout` of its head, and no larger than its
//!   route's limit, which is enforced while reading, with or without `Content-Length`;
//! - an answer the client stops reading ends its connection after `write_timeout`;
//! - at most [`MAX_CONNECTIONS`] connections are open at once.
//!
//! There is no timeout on a handler itself: dropping a bind halfway would skip the step that
//! gives a pod's GPUs back when Kubernetes refuses the binding. Handlers wait only on the core
//! and the Kubernetes API, whose client has timeouts of its own.

mod metrics;

pub use metrics::PlacementLatency;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinSet;
use tokio_stream::StreamExt as _;
use tower::ServiceExt as _;
use tracing::{debug, warn};

use crate::config::HttpSettings;
use crate::core::{CoreError, CoreHandle, MetricsView};
use crate::extender::ExtenderCounters;

/// Most HTTP connections open at once; past it the listener accepts no more until one closes.
/// Every connection holds a file descriptor, and the gRPC side and the database need those
/// too: a flood of idle or slow connections must not use them all up.
pub const MAX_CONNECTIONS: usize = 512;

/// The most a request to `/healthz` or `/metrics` may carry: they read no body.
pub const MAX_SMALL_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct HttpState {
    pub core: CoreHandle,
    pub latency: PlacementLatency,
    pub extender: Arc<ExtenderCounters>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(scrape))
        .route_layer(middleware::from_fn(refuse_bodies_past_small_limit))
        .with_state(state)
}

/// `/healthz` and `/metrics` read no body; one declared larger than [`MAX_SMALL_BODY_BYTES`]
/// is refused. (One sent without a length is never read: the connection closes after the
/// answer.)
async fn refuse_bodies_past_small_limit(request: Request, next: Next) -> Response {
    match declared_length_fits(request.headers(), MAX_SMALL_BODY_BYTES) {
        Ok(()) => next.run(request).await,
        Err(e) => (e.status(), format!("{e}\n")).into_response(),
    }
}

// ---- request bodies -----------------------------------------------------------------------

/// How large a request body may be and how long it may take to arrive.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    pub max_bytes: usize,
    pub timeout: Duration,
}

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body is larger than the limit of {}", Size(*limit))]
    TooLarge { limit: usize },
    #[error("request body did not arrive within {after:?}")]
    TimedOut { after: Duration },
    #[error("cannot read the request body: {0}")]
    Read(axum::Error),
}

impl BodyError {
    /// 413, 408, or 400 for a body that broke off.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TimedOut { .. } => StatusCode::REQUEST_TIMEOUT,
            BodyError::Read(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// A byte count as people write limits: `32 MiB`, `64 KiB`, `1000 bytes`.
#[derive(Debug, Clone, Copy)]
struct Size(usize);

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const KIB: usize = 1024;
        const MIB: usize = 1024 * 1024;
        match self.0 {
            n if n >= MIB && n % MIB == 0 => write!(f, "{} MiB", n / MIB),
            n if n >= KIB && n % KIB == 0 => write!(f, "{} KiB", n / KIB),
            n => write!(f, "{n} bytes"),
        }
    }
}

/// Refuses a body whose `Content-Length` is past `max_bytes` before a byte of it is read.
pub fn declared_length_fits(headers: &HeaderMap, max_bytes: usize) -> Result<(), BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > max_bytes as u64 => Err(BodyError::TooLarge { limit: max_bytes }),
        _ => Ok(()),
    }
}

/// Reads a request body whole, refusing it as soon as it passes `limit.max_bytes` (declared
/// or counted while reading, so a chunked body is cut off too) or `limit.timeout` passes.
/// At most `max_bytes` is ever held.
pub async fn read_body(request: Request, limit: BodyLimit) -> Result<Bytes, BodyError> {
    declared_length_fits(request.headers(), limit.max_bytes)?;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let read = async {
        let mut data = request.into_body().into_data_stream();
        let mut body: Vec<u8> = Vec::with_capacity(declared.min(limit.max_bytes));
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(BodyError::Read)?;
            let len = body.len() + chunk.len();
            if len > limit.max_bytes {
                return Err(BodyError::TooLarge {
                    limit: limit.max_bytes,
                });
            }
            if len > body.capacity() {
                // Grow by doubling, but never past the limit.
                let want = (body.capacity() * 2).max(len).min(limit.max_bytes);
                body.reserve_exact(want - body.len());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    };
    tokio::time::timeout(limit.timeout, read)
        .await
        .map_err(|_| BodyError::TimedOut {
            after: limit.timeout,
        })?
}

/// The core's counts, its new latency samples folded into the histogram: whichever endpoint
/// asks takes them from the core, so neither may drop them.
async fn core_view(state: &HttpState) -> Result<MetricsView, CoreError> {
    let view = state.core.metrics().await?;
    state.latency.observe(&view.placement_latencies_s);
    Ok(view)
}

async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    match core_view(&state).await {
        Ok(_) => (StatusCode::OK, "ok\n".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

async fn scrape(State(state): State<HttpState>) -> Response {
    let text = match core_view(&state).await {
        Ok(view) => metrics::render(&view, &state.latency, &state.extender),
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    };
    match text {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            warn!(error = %e, "Cannot encode the metrics.");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the metrics\n",
            )
                .into_response()
        }
    }
}

// ---- the listener --------------------------------------------------------------------------

/// The listener's time limits, from `[http]`.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub body_read: Duration,
    pub write: Duration,
}

impl From<&HttpSettings> for Timeouts {
    fn from(s: &HttpSettings) -> Self {
        // A zero timeout would refuse every request; one millisecond is the least.
        let ms = |v: u64| Duration::from_millis(v.max(1));
        Timeouts {
            header_read: ms(s.header_read_timeout_ms),
            body_read: ms(s.body_read_timeout_ms),
            write: ms(s.write_timeout_ms),
        }
    }
}

/// Serves `app` over HTTP/1.1 until `stop` fires, then lets the requests in flight finish.
///
/// hyper's own connection loop, not `axum::serve`, which cannot set a header read timeout.
/// hyper starts that timer whenever a connection waits for a request head, on opening and
/// after each answer, so it is the idle keep-alive timeout as well.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    timeouts: Timeouts,
    mut stop: oneshot::Receiver<()>,
) {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stopping, stopping_rx) = watch::channel(());
    let mut connections = JoinSet::new();
    loop {
        let next = async {
            let slot = slots.clone().acquire_owned().await;
            (slot, listener.accept().await)
        };
        let (slot, accepted) = tokio::select! {
            _ = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            next = next => next,
        };
        let Ok(slot) = slot else { break };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: wait for some to come back.
                warn!(error = %e, "Cannot accept an HTTP connection.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "Could not set TCP_NODELAY.");
        }
        let http1 = http1.clone();
        let app = app.clone();
        let mut stopping = stopping_rx.clone();
        connections.spawn(async move {
            let _slot = slot;
            let io = TokioIo::new(WriteTimeout::new(stream, timeouts.write));
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    app.clone().oneshot(request.map(Body::new))
                });
            let connection = http1.serve_connection(io, service);
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = stopping.changed() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                debug!(error = %e, "HTTP connection ended with an error.");
            }
        });
    }
    drop(listener);
    drop(stopping);
    while connections.join_next().await.is_some() {}
}

/// A socket whose writes fail once the client has taken no bytes for `limit`: a client that
/// stops reading cannot keep its connection, and the answer waiting for it, forever.
#[derive(Debug)]
struct WriteTimeout {
    io: TcpStream,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WriteTimeout {
    fn new(io: TcpStream, limit: Duration) -> Self {
        WriteTimeout {
            io,
            limit,
            stalled: None,
        }
    }

    /// Called when a write could not proceed: an error once it has not for `limit`.
    fn poll_stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing of the answer for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => self.poll_stalled(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl AsyncRead for WriteTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progress(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progress(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.progress(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_limits_are_written() {
        assert_eq!(Size(32 * 1024 * 1024).to_string(), "32 MiB");
        assert_eq!(Size(64 * 1024).to_string(), "64 KiB");
        assert_eq!(Size(1000).to_string(), "1000 bytes");
    }
}
