//! Validation errors that name the field and the problem.

use std::fmt;

use crate::cid::CidError;

/// What is wrong with one value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("must not be empty")]
    Empty,
    #[error("is {len} characters long; at most {max}")]
    TooLong { len: usize, max: usize },
    #[error("{value:?} has {ch:?}; allowed are {allowed}")]
    InvalidChar {
        value: String,
        ch: char,
        allowed: &'static str,
    },
    #[error("must be between {min} and {max}, got {got}")]
    OutOfRange { min: i64, max: i64, got: i64 },
    #[error("has control character {ch:?} at position {position}; only printable text is allowed")]
    ControlChar { ch: char, position: usize },
    #[error("must be between {min} and {max}, got {got}")]
    OutOfRangeUnsigned { min: u64, max: u64, got: u64 },
    #[error("must be at least {min}, got {got}")]
    TooSmall { min: i64, got: i64 },
    #[error("unknown {what} {value:?}; known: {known}")]
    Unknown {
        what: &'static str,
        value: String,
        known: String,
    },
    #[error("duplicate {what} {value:?} (first at {first})")]
    Duplicate {
        what: &'static str,
        value: String,
        first: String,
    },
    #[error(transparent)]
    Cid(#[from] CidError),
    #[error("{0}")]
    Invalid(String),
}

/// A problem at a named field path such as `gpu.milli` or `gpus[3].uuid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    pub field: String,
    pub problem: Problem,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, problem: Problem) -> Self {
        ValidationError {
            field: field.into(),
            problem,
        }
    }

    /// Prefixes the field path, for errors from nested values (`spec.` + `gpu.milli`).
    pub fn within(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_string()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.problem)
        } else {
            write!(f, "{}: {}", self.field, self.problem)
        }
    }
}

/// Shorthand for checks: `ensure(cond, "field", problem)?`.
pub fn ensure(
    ok: bool,
    field: &str,
    problem: impl FnOnce() -> Problem,
) -> Result<(), ValidationError> {
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(field, problem()))
    }
}

/// Checks a name-like string: non-empty, at most `max` characters, nothing a terminal would
/// act on (names are printed in tables and logs).
pub fn check_name(field: &str, value: &str, max: usize) -> Result<(), ValidationError> {
    ensure(!value.trim().is_empty(), field, || Problem::Empty)?;
    check_text(field, value, max)
}

/// Checks free text that may be empty (a reason, a path): at most `max` characters and no
/// control characters (ESC, CR, LF, NUL…), which could rewrite what a terminal shows.
pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), ValidationError> {
    let len = value.chars().count();
    ensure(len <= max, field, || Problem::TooLong { len, max })?;
    match value.chars().position(char::is_control) {
        None => Ok(()),
        Some(position) => {
            let ch = value.chars().nth(position).unwrap_or('\0');
            Err(ValidationError::new(
                field,
                Problem::ControlChar { ch, position },
            ))
        }
    }
}

/// Checks `min <= got <= max` for counts and sizes too large for `i64`.
pub fn check_range_u64(field: &str, got: u64, min: u64, max: u64) -> Result<(), ValidationError> {
    ensure((min..=max).contains(&got), field, || {
        Problem::OutOfRangeUnsigned { min, max, got }
    })
}

/// Checks a collection's length against its limit.
pub fn check_count(field: &str, len: usize, max: usize) -> Result<(), ValidationError> {
    ensure(len <= max, field, || {
        Problem::Invalid(format!("has {len} entries; at most {max}"))
    })
}

/// Checks `min <= got <= max`.
pub fn check_range(field: &str, got: i64, min: i64, max: i64) -> Result<(), ValidationError> {
    ensure((min..=max).contains(&got), field, || Problem::OutOfRange {
        min,
        max,
        got,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_fields_join_with_dots_and_brackets() {
        let e = ValidationError::new("uuid", Problem::Empty)
            .within("gpus[2]")
            .within("inventory");
        assert_eq!(e.to_string(), "inventory.gpus[2].uuid: must not be empty");
        let e = ValidationError::new("[0]", Problem::Empty).within("models");
        assert_eq!(e.field, "models[0]");
    }
}
