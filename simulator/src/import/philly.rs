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
    // Four digits, so the year fits i16; month and day are checked by `Date::new`.
    let date = jiff::civil::Date::new(
        i16::try_from(year).ok()?,
        i8::try_from(month).ok()?,
        i8::try_from(day).ok()?,
    )
    .ok()?;
    // A leap second (`:60`) is accepted and counts as the next minute's first second, which
    // `jiff::civil::Time` would refuse; so only the date goes through the calendar.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = date.duration_since(jiff::civil::date(1970, 1, 1));
    Some(days.as_secs() + hour * 3600 + minute * 60 + second)
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

    #[test]
    fn timestamps_cross_leap_days_and_year_boundaries() {
        assert_eq!(parse_timestamp("2016-02-29 23:59:59"), Some(1_456_790_399));
        assert_eq!(parse_timestamp("2016-03-01 00:00:00"), Some(1_456_790_400));
        assert_eq!(parse_timestamp("2017-12-31 23:59:59"), Some(1_514_764_799));
        assert_eq!(parse_timestamp("2018-01-01 00:00:00"), Some(1_514_764_800));
        assert_eq!(parse_timestamp("2000-02-29 00:00:00"), Some(951_782_400));
        assert_eq!(parse_timestamp("1900-02-29 00:00:00"), None);
        assert_eq!(parse_timestamp("1969-12-31 23:59:59"), Some(-1));
        assert_eq!(parse_timestamp("2017-04-31 00:00:00"), None);
        assert_eq!(parse_timestamp("2017-10-00 00:00:00"), None);
        // A leap second is the next minute's first second.
        assert_eq!(parse_timestamp("2016-12-31 23:59:60"), Some(1_483_228_800));
        assert_eq!(parse_timestamp("2017-10-09 24:00:00"), None);
    }
}
