//! The `suanli` client: connection, commands, views of wire messages and their rendering.
//! The `suanli` binary is clap definitions over this; `suanli-demo` reuses it to drive and
//! show an in-process cluster, so the client itself links no scheduler or agent code.

pub mod client;
pub mod commands;
pub mod config;
pub mod error;
pub mod jobfile;
pub mod output;
pub mod view;

/// Runs a command-line program's work to its exit code: logs to stderr when `SUANLI_LOG`
/// names a filter, drives `work` on a small runtime, and prints an error as `error: …`, line
/// by line so a multi-line message (a config file's parse error) keeps its shape while control
/// characters inside any line are escaped. A closed stdout is not an error.
pub fn run_to_exit(
    work: impl std::future::Future<Output = Result<(), error::CliError>>,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    if let Ok(filter) = std::env::var("SUANLI_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) | Err(error::CliError::StdoutClosed) => ExitCode::SUCCESS,
        Err(e) => {
            let text = e.to_string();
            let lines: Vec<_> = text.split('\n').map(output::printable).collect();
            eprintln!("error: {}", lines.join("\n"));
            ExitCode::from(e.exit_code())
        }
    }
}
