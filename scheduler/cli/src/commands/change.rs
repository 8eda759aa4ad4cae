//! Changing a job: `cancel` and `update`.

use super::*;

// ---- cancel ----------------------------------------------------------------------------------

pub async fn cancel(
    client: &mut Client,
    id: &str,
    reason: &str,
    format: Format,
) -> Result<(), CliError> {
    let job = client
        .jobs
        .cancel(unary(pb::CancelJobRequest {
            id: id.to_string(),
            reason: reason.to_string(),
        }))
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    let job = JobView::from_wire(job)?;
    show(format, &job, || {
        output::line(&format!("job/{} cancelled ({})", job.id, job.name))
    })
}

// ---- update ----------------------------------------------------------------------------------

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Job id.
    pub id: String,
    /// New priority; higher runs first and may preempt lower.
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// New queue within the job's tenant.
    #[arg(long)]
    pub queue: Option<String>,
    /// Whether the job may be stopped for higher-priority work or to reclaim quota.
    #[arg(long, value_name = "BOOL")]
    pub preemptible: Option<bool>,
    /// New time limit, counted from the job's placement: `90s`, `30m`, `2h`, `1d`, `1h30m`,
    /// or a number of seconds. A running job already past it is stopped.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub time_limit: Option<String>,
    /// New size of an elastic job, between its min_replicas and replicas. A running job
    /// stops its highest replicas; growing one is not supported yet.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub replicas: Option<String>,
}

/// The longest unit first, so that `1h30m` reads as written.
const DURATION_UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

/// Seconds in a duration such as `90s`, `30m`, `2h`, `1d`, `1h30m`, or a bare number of
/// seconds; the error says what is wrong with `text`, for a message naming the flag.
pub fn parse_duration_s(text: &str) -> Result<u64, String> {
    let shown = output::printable(text);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("is empty; give a duration like 30m, 2h or 90s".into());
    }
    if trimmed.starts_with('-') {
        return Err(format!("must be positive, got \"{shown}\""));
    }
    let garbage = || {
        format!("\"{shown}\" is not a duration; use e.g. 90s, 30m, 2h, 1d or a number of seconds")
    };
    if trimmed.bytes().all(|b| b.is_ascii_digit()) {
        let seconds: u64 = trimmed
            .parse()
            .map_err(|_| format!("\"{shown}\" is too long"))?;
        return positive(seconds, &shown);
    }
    let mut total: u64 = 0;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(garbage());
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("\"{shown}\" is too long"))?;
        let unit = rest[digits..].chars().next().ok_or_else(garbage)?;
        let (_, scale) = DURATION_UNITS
            .iter()
            .find(|(u, _)| *u == unit.to_ascii_lowercase())
            .ok_or_else(garbage)?;
        total = number
            .checked_mul(*scale)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| format!("\"{shown}\" is too long"))?;
        rest = &rest[digits + unit.len_utf8()..];
    }
    positive(total, &shown)
}

fn positive(seconds: u64, shown: &str) -> Result<u64, String> {
    if seconds == 0 {
        Err(format!("must be positive, got \"{shown}\""))
    } else {
        Ok(seconds)
    }
}

/// A replica count as `--replicas` takes it.
fn parse_replicas(text: &str) -> Result<u32, String> {
    let shown = output::printable(text);
    match text.trim().parse::<i64>() {
        Ok(n) if n < 1 => Err(format!("must be at least 1, got {n}")),
        Ok(n) => u32::try_from(n).map_err(|_| format!("{n} is too many")),
        Err(_) => Err(format!("\"{shown}\" is not a number of replicas")),
    }
}

/// The request `args` ask for, checked before anything is sent.
pub fn update_request(args: &UpdateArgs) -> Result<pb::UpdateJobRequest, CliError> {
    let time_limit_s = args
        .time_limit
        .as_deref()
        .map(parse_duration_s)
        .transpose()
        .map_err(|e| CliError::Usage(format!("--time-limit: {e}")))?;
    let replicas = args
        .replicas
        .as_deref()
        .map(parse_replicas)
        .transpose()
        .map_err(|e| CliError::Usage(format!("--replicas: {e}")))?;
    let request = pb::UpdateJobRequest {
        id: args.id.clone(),
        priority: args.priority,
        preemptible: args.preemptible,
        queue: args.queue.clone(),
        time_limit_s,
        replicas,
    };
    if request.priority.is_none()
        && request.preemptible.is_none()
        && request.queue.is_none()
        && request.time_limit_s.is_none()
        && request.replicas.is_none()
    {
        return Err(CliError::Usage(
            "nothing to change: give --priority, --queue, --preemptible, --time-limit or \
             --replicas"
                .into(),
        ));
    }
    Ok(request)
}

pub async fn update(
    client: &mut Client,
    request: pb::UpdateJobRequest,
    format: Format,
) -> Result<(), CliError> {
    let mut changed = Vec::new();
    let job = client
        .jobs
        .update(unary(request.clone()))
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    let job = JobView::from_wire(job)?;
    let spec = &job.spec;
    if request.priority.is_some() {
        changed.push(format!("priority {}", spec.priority));
    }
    if request.queue.is_some() {
        changed.push(format!("queue {}", spec.queue));
    }
    if request.preemptible.is_some() {
        changed.push(format!("preemptible {}", spec.preemptible));
    }
    if let Some(limit) = spec.time_limit_s.filter(|_| request.time_limit_s.is_some()) {
        changed.push(format!("time limit {limit} s"));
    }
    if request.replicas.is_some() {
        changed.push(format!("replicas {}", spec.replicas));
    }
    show(format, &job, || {
        output::line(&format!(
            "job/{} updated ({}): {}",
            job.id,
            job.name,
            changed.join(", ")
        ))
    })
}

#[cfg(test)]
mod update_tests {
    use super::{UpdateArgs, parse_duration_s, update_request};

    #[test]
    fn durations_read_as_written() {
        for (text, seconds) in [
            ("90s", 90),
            ("30m", 1_800),
            ("2h", 7_200),
            ("1d", 86_400),
            ("1h30m", 5_400),
            ("45", 45),
            (" 2H ", 7_200),
        ] {
            assert_eq!(parse_duration_s(text), Ok(seconds), "{text}");
        }
    }

    #[test]
    fn bad_durations_say_why() {
        for (text, why) in [
            ("", "is empty; give a duration like 30m, 2h or 90s"),
            ("-5m", "must be positive, got \"-5m\""),
            ("0", "must be positive, got \"0\""),
            ("0h0m", "must be positive, got \"0h0m\""),
            (
                "soon",
                "\"soon\" is not a duration; use e.g. 90s, 30m, 2h, 1d or a number of seconds",
            ),
            (
                "5x",
                "\"5x\" is not a duration; use e.g. 90s, 30m, 2h, 1d or a number of seconds",
            ),
            (
                "h",
                "\"h\" is not a duration; use e.g. 90s, 30m, 2h, 1d or a number of seconds",
            ),
            (
                "99999999999999999999",
                "\"99999999999999999999\" is too long",
            ),
            ("999999999999999999d", "\"999999999999999999d\" is too long"),
        ] {
            assert_eq!(parse_duration_s(text), Err(why.to_string()), "{text:?}");
        }
    }

    fn args(time_limit: Option<&str>, replicas: Option<&str>) -> UpdateArgs {
        UpdateArgs {
            id: "j-00000001".into(),
            priority: None,
            queue: None,
            preemptible: None,
            time_limit: time_limit.map(str::to_string),
            replicas: replicas.map(str::to_string),
        }
    }

    #[test]
    fn flags_are_checked_before_sending() {
        let request = update_request(&args(Some("2h"), Some("3"))).expect("valid");
        assert_eq!(
            (request.time_limit_s, request.replicas),
            (Some(7_200), Some(3))
        );
        let message = |a: UpdateArgs| update_request(&a).expect_err("refused").to_string();
        assert_eq!(
            message(args(Some("-1h"), None)),
            "--time-limit: must be positive, got \"-1h\""
        );
        assert_eq!(
            message(args(None, Some("0"))),
            "--replicas: must be at least 1, got 0"
        );
        assert_eq!(
            message(args(None, Some("-2"))),
            "--replicas: must be at least 1, got -2"
        );
        assert_eq!(
            message(args(None, Some("two"))),
            "--replicas: \"two\" is not a number of replicas"
        );
        assert_eq!(
            message(args(None, None)),
            "nothing to change: give --priority, --queue, --preemptible, --time-limit or \
             --replicas"
        );
    }
}
