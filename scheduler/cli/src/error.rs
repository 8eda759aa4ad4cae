//! What can go wrong in one `suanli` invocation, and the exit code each case gets.

use tonic::{Code, Status};

/// Exit codes scripts can rely on.
pub mod exit {
    /// The scheduler answered with an error (not found, refused, failed precondition).
    pub const SERVER: u8 = 1;
    /// Bad flags, a bad job file or config, or input the scheduler rejected as invalid.
    pub const USAGE: u8 = 2;
    /// The scheduler could not be reached.
    pub const UNREACHABLE: u8 = 3;
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input caught before anything was sent.
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the scheduler at {addr}: {detail}")]
    Unreachable { addr: String, detail: String },
    /// An error status from the scheduler, with a hint where one helps.
    #[error("{}", describe_status(.status, .hint.as_deref()))]
    Server {
        status: Status,
        hint: Option<String>,
    },
    /// The command ran but its outcome is a failure (a stream ended, a demo job failed).
    #[error("{0}")]
    Failed(String),
    /// Whoever read our output stopped reading (`suanli get jobs | head`): not an error.
    #[error("standard output was closed")]
    StdoutClosed,
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::Unreachable { .. } => exit::UNREACHABLE,
            CliError::Server { status, .. } => match status.code() {
                Code::InvalidArgument | Code::OutOfRange => exit::USAGE,
                Code::Unavailable => exit::UNREACHABLE,
                _ => exit::SERVER,
            },
            CliError::Failed(_) => exit::SERVER,
            CliError::StdoutClosed => 0,
        }
    }

    /// Maps a status from a call to `addr`: transport failures mean the scheduler is
    /// unreachable, everything else is the scheduler's own answer.
    pub fn from_status(status: Status, addr: &str) -> CliError {
        match status.code() {
            Code::Unavailable => CliError::Unreachable {
                addr: addr.to_string(),
                detail: status.message().to_string(),
            },
            Code::Unauthenticated => CliError::Server {
                status,
                hint: Some(
                    "pass --token, set SUANLI_TOKEN, or put `token = \"...\"` in the config file"
                        .to_string(),
                ),
            },
            _ => CliError::Server { status, hint: None },
        }
    }
}

fn code_text(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "invalid argument",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::Unauthenticated => "unauthenticated",
        Code::FailedPrecondition => "failed precondition",
        Code::ResourceExhausted => "resource exhausted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "not implemented by this scheduler",
        Code::DeadlineExceeded => "timed out",
        Code::Cancelled => "cancelled",
        Code::Aborted => "aborted",
        Code::Unavailable => "unavailable",
        Code::Internal => "internal scheduler error",
        Code::DataLoss => "data loss",
        Code::Unknown | Code::Ok => "error",
    }
}

fn describe_status(status: &Status, hint: Option<&str>) -> String {
    // The scheduler's words may quote what a user typed: never raw control characters.
    let mut text = format!(
        "{}: {}",
        code_text(status.code()),
        crate::output::printable(status.message())
    );
    if let Some(hint) = hint {
        text.push_str(&format!(" ({hint})"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_exit_codes() {
        let addr = "http://127.0.0.1:1";
        let code = |s: Status| CliError::from_status(s, addr).exit_code();
        assert_eq!(code(Status::not_found("job j-1 not found")), exit::SERVER);
        assert_eq!(
            code(Status::invalid_argument("spec.replicas: ...")),
            exit::USAGE
        );
        assert_eq!(
            code(Status::unavailable("connection refused")),
            exit::UNREACHABLE
        );
        assert_eq!(code(Status::permission_denied("admin only")), exit::SERVER);
        assert_eq!(code(Status::unauthenticated("unknown token")), exit::SERVER);
    }

    #[test]
    fn messages_keep_the_servers_words() {
        let e = CliError::from_status(
            Status::invalid_argument("spec.gpu.milli: must be between 1 and 1000, got 1500"),
            "http://x",
        );
        assert_eq!(
            e.to_string(),
            "invalid argument: spec.gpu.milli: must be between 1 and 1000, got 1500"
        );
        let e = CliError::from_status(Status::unauthenticated("unknown token"), "http://x");
        assert!(
            e.to_string()
                .starts_with("unauthenticated: unknown token (pass --token")
        );
    }
}
