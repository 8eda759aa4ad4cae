//! A connection to the scheduler's JobService and ClusterService, with the caller's token on
//! every call.

use std::time::Duration;

use suanli_proto::pb::cluster_service_client::ClusterServiceClient;
use suanli_proto::pb::job_service_client::JobServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::config::Settings;
use crate::error::CliError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Unary calls that take longer than this are given up on; streams have no limit.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest message sent or accepted. Matches the scheduler's own cap (`MAX_MESSAGE_BYTES` in
/// `scheduler/server/src/server.rs`): below it (tonic's default is 4 MiB), a submit or cancel
/// that succeeded was reported as an error because the answer echoing a large job was refused.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Adds `authorization: Bearer <token>` when a token is configured.
#[derive(Debug, Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Auth>;

#[derive(Debug, Clone)]
pub struct Client {
    pub addr: String,
    pub jobs: JobServiceClient<Authed>,
    pub cluster: ClusterServiceClient<Authed>,
}

impl Client {
    /// Connects now, so an unreachable scheduler is reported before any call.
    pub async fn connect(settings: &Settings) -> Result<Client, CliError> {
        let auth = match &settings.token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| {
                        CliError::Usage("the token cannot be sent as a gRPC header".into())
                    })?,
            ),
            None => None,
        };
        let unreachable = |detail: String| CliError::Unreachable {
            addr: format!("{} ({})", settings.addr, settings.addr_origin),
            detail,
        };
        let channel = Endpoint::from_shared(settings.addr.clone())
            .map_err(|e| CliError::Usage(format!("scheduler address {}: {e}", settings.addr)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        let auth = Auth(auth);
        Ok(Client {
            addr: settings.addr.clone(),
            jobs: JobServiceClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            cluster: ClusterServiceClient::with_interceptor(channel, auth)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        })
    }

    /// Maps a failed call's status to the error the user sees.
    pub fn fail(&self, status: Status) -> CliError {
        CliError::from_status(status, &self.addr)
    }
}

/// A unary request with the call timeout set.
pub fn unary<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

/// `transport error: tcp connect error: Connection refused (os error 111)`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}
