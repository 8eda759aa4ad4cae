//! The Microsoft Philly job list: `timestamp,duration,num_gpus,gpu_time,cluster`.
//!
//! `timestamp` is the submission time (`YYYY-MM-DD HH:MM:SS`, UTC), `duration` the run time
//! in seconds, `cluster` the virtual cluster, which the replay treats as the tenant.

use std::path::Path;

use super::csvrows::Row;
use super::{Collector, Field, ImportError, Imported, RowError, RowPolicy, RowReader};

pub static JOB_FIELDS: &[Field] = &[
    Field::required("timestamp"),
    Field::required("duration"),
    Field::required("num_gpus"),
    Field::optional("gpu_time"),
    Field::required("cluster"),
];

/// More GPUs than this for one job is a data error.
pub const MAX_JOB_GPUS: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhillyJob {
    /// 1-based line in the file, kept so equal timestamps replay in file order.
    pub line: u64,
    /// Seconds since the Unix epoch.
    pub submitted: i64,
    pub duration: u64,
    pub num_gpus: u32,
    pub virtual_cluster: String,
}

pub fn load_jobs(path: &Path, policy: RowPolicy) -> Result<Imported<PhillyJob>, ImportError> {
    let mut rows = RowReader::open(path, JOB_FIELDS)?;
    let mut out = Collector::new(path, policy);
    while let Some(row) = rows.next_row()? {
        out.push(row.and_then(|r| parse_job(&r)))?;
    }
    out.finish()
}

fn parse_job(row: &Row<'_>) -> Result<PhillyJob, RowError> {
    let text = row.text("timestamp")?;
    let submitted = parse_timestamp(text).ok_or_else(|| {
        row.error(
            "timestamp",
            format!("bad timestamp {text:?}, expected YYYY-MM-DD HH:MM:SS"),
        )
    })?;
    let duration = row.non_negative("duration")?.round() as u64;
    let num_gpus = row.count("num_gpus")?;
    if num_gpus == 0 {
        return Err(row.error("num_gpus", "num_gpus 0; a Philly job uses at least one GPU"));
    }
    if num_gpus > MAX_JOB_GPUS {
        return Err(row.error(
            "num_gpus",
            format!("{num_gpus} GPUs, at most {MAX_JOB_GPUS}"),
        ));
    }
    if row.get("gpu_time").is_some_and(|v| !v.is_empty()) {
        row.non_negative("gpu_time")?;
    }
    let virtual_cluster = row.text("cluster")?.to_string();
    Ok(PhillyJob {
        line: row.line(),
        submitted,
        duration,
        num_gpus: num_gpus as u32,
        virtual_cluster,
    })
}

/// `YYYY-MM-DD HH:MM:SS` (or with a `T`) as seconds since the Unix epoch, UTC.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() != 19
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    if bytes[10] != b' ' && bytes[10] != b'T' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = &text[range];
        if part.bytes().all(|b| b.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_as_utc_epoch_seconds() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00"), Some(0));
        assert_eq!(parse_timestamp("2017-10-09 07:01:55"), Some(1_507_532_515));
        assert_eq!(parse_timestamp("2016-02-29T12:00:00"), Some(1_456_747_200));
        assert_eq!(parse_timestamp("2017-02-29 00:00:00"), None);
        assert_eq!(parse_timestamp("2017-13-01 00:00:00"), None);
        assert_eq!(parse_timestamp("2017/10/09 07:01:55"), None);
        assert_eq!(parse_timestamp("yesterday"), None);
    }
}
