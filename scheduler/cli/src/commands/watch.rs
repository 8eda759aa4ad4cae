//! `watch`: job events as they happen, resumed across a broken stream.

use super::*;

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
