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
        write!(f, "{}: {}", self.field, self.problem)
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

/// Checks a name-like string: non-empty, at most `max` characters.
pub fn check_name(field: &str, value: &str, max: usize) -> Result<(), ValidationError> {
    ensure(!value.trim().is_empty(), field, || Problem::Empty)?;
    let len = value.chars().count();
    ensure(len <= max, field, || Problem::TooLong { len, max })
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
