//! `logs`: a replica's output, relayed by the scheduler from its agent.

use super::*;

// ---- logs ------------------------------------------------------------------------------------

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Job id.
    pub id: String,
    /// Replica number.
    #[arg(long, default_value_t = 0)]
    pub replica: u32,
    /// Attempt (1 for the first); the job's latest when absent.
    #[arg(long)]
    pub attempt: Option<u32>,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<u32>,
    /// Keep printing what the replica writes until it ends.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

/// The request `suanli logs` sends; flags are checked before connecting.
pub fn logs_request(args: &LogsArgs) -> Result<pb::LogsRequest, CliError> {
    if args.attempt == Some(0) {
        return Err(CliError::Usage(
            "attempt: attempts count from 1, got 0".into(),
        ));
    }
    if args.tail == Some(0) {
        return Err(CliError::Usage(
            "tail: must be at least 1 line, got 0".into(),
        ));
    }
    Ok(pb::LogsRequest {
        id: args.id.clone(),
        replica: args.replica,
        attempt: args.attempt.unwrap_or(0),
        tail_lines: args.tail.unwrap_or(0),
        follow: args.follow,
    })
}

/// Copies a replica's log to standard output as it arrives, byte for byte.
pub async fn logs(client: &mut Client, request: pb::LogsRequest) -> Result<(), CliError> {
    let mut interrupt = listen_for_interrupt()?;
    let opened = tokio::select! {
        _ = interrupt.recv() => return Ok(()),
        r = client.jobs.logs(request) => r,
    };
    let mut stream = opened.map_err(|s| client.fail(s))?.into_inner();
    loop {
        let message = tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            m = stream.message() => m,
        };
        match message {
            Ok(Some(chunk)) => {
                let mut out = std::io::stdout();
                out.write_all(&chunk.data)
                    .and_then(|()| out.flush())
                    .map_err(|e| match e.kind() {
                        std::io::ErrorKind::BrokenPipe => CliError::StdoutClosed,
                        _ => CliError::Failed(format!("cannot write the log: {e}")),
                    })?;
            }
            Ok(None) => return Ok(()),
            Err(status) => return Err(client.fail(status)),
        }
    }
}
