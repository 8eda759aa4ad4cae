//! Conversions between wire messages (`pb::*`) and `suanli_engine` domain types.
//!
//! Domain → wire is infallible (`From`). Wire → domain is `TryFrom`: every field is checked,
//! enums out of range are rejected (a client can send any `i32`), repeated fields are bounded,
//! and specs and inventories then run the engine's own `validate()`. Every failure is a
//! [`ConvertError`] naming the field path, e.g. `spec.gpu.milli: must be between 1 and 1000,
//! got 1500`.
//!
//! Top-level messages name their root: errors from `NodeInventory::try_from` start with
//! `inventory.`, errors from `JobSpec::try_from` with `spec.`. Conversions of parts (a
//! `GpuInfo`, a `LinkPath`) give paths relative to the part; callers nest them with
//! [`ConvertError::within`].

pub mod ids;
pub mod inventory;
pub mod job;
pub mod rendezvous;

use std::fmt;

use suanli_engine::{Problem, ValidationError};

pub use ids::{parse_cid, parse_gpu_model, parse_mig_profile};
pub use inventory::required_inventory;
pub use job::job_state_from_wire;

/// Why a wire message could not become a domain value, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// A required field, sub-message or oneof case was absent.
    Missing { field: String, what: &'static str },
    /// An enum field held a number the schema does not define.
    UnknownEnum {
        field: String,
        enum_name: &'static str,
        value: i32,
        known: String,
    },
    /// A repeated or map field held more entries than any real machine or job has.
    TooMany {
        field: String,
        len: usize,
        max: usize,
    },
    /// A value the domain rejects (bad CID, range, duplicate, ...), with the engine's reason.
    Invalid(#[source] ValidationError),
}

impl ConvertError {
    /// A value at `field` that the domain rejects for `problem`.
    pub fn invalid(field: impl Into<String>, problem: Problem) -> Self {
        ConvertError::Invalid(ValidationError::new(field, problem))
    }

    /// A required value at `field` is absent; `what` says what was expected.
    pub fn missing(field: impl Into<String>, what: &'static str) -> Self {
        ConvertError::Missing {
            field: field.into(),
            what,
        }
    }

    /// The field path the error is about (`spec.gpu.milli`); empty for a bare value.
    pub fn field(&self) -> &str {
        match self {
            ConvertError::Missing { field, .. }
            | ConvertError::UnknownEnum { field, .. }
            | ConvertError::TooMany { field, .. } => field,
            ConvertError::Invalid(e) => &e.field,
        }
    }

    /// Prefixes the field path, for errors from nested messages (`spec.` + `gpu.milli`).
    pub fn within(self, parent: &str) -> Self {
        match self {
            ConvertError::Missing { field, what } => ConvertError::Missing {
                field: join(parent, &field),
                what,
            },
            ConvertError::UnknownEnum {
                field,
                enum_name,
                value,
                known,
            } => ConvertError::UnknownEnum {
                field: join(parent, &field),
                enum_name,
                value,
                known,
            },
            ConvertError::TooMany { field, len, max } => ConvertError::TooMany {
                field: join(parent, &field),
                len,
                max,
            },
            ConvertError::Invalid(e) => ConvertError::Invalid(e.within(parent)),
        }
    }

    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConvertError::Missing { what, .. } => write!(f, "{what} is required"),
            ConvertError::UnknownEnum {
                enum_name,
                value,
                known,
                ..
            } => write!(
                f,
                "{value} is not a known {enum_name} value; known: {known}"
            ),
            ConvertError::TooMany { len, max, .. } => {
                write!(f, "has {len} entries; at most {max}")
            }
            ConvertError::Invalid(e) => write!(f, "{}", e.problem),
        }
    }
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = self.field();
        if !field.is_empty() {
            write!(f, "{field}: ")?;
        }
        self.describe(f)
    }
}

impl From<ValidationError> for ConvertError {
    fn from(e: ValidationError) -> Self {
        ConvertError::Invalid(e)
    }
}

impl From<ConvertError> for tonic::Status {
    fn from(e: ConvertError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// Joins field paths the way `ValidationError::within` does: dots, but no dot before `[`.
fn join(parent: &str, field: &str) -> String {
    if field.is_empty() {
        parent.to_string()
    } else if parent.is_empty() {
        field.to_string()
    } else if field.starts_with('[') {
        format!("{parent}{field}")
    } else {
        format!("{parent}.{field}")
    }
}

/// The value of a required sub-message, or [`ConvertError::Missing`] naming it.
pub fn required<T>(field: &str, value: Option<T>, what: &'static str) -> Result<T, ConvertError> {
    value.ok_or_else(|| ConvertError::missing(field, what))
}

/// Rejects repeated fields longer than `max` before any element is looked at, so a flood of
/// tiny elements costs no more than counting them.
pub(crate) fn check_len(field: &str, len: usize, max: usize) -> Result<(), ConvertError> {
    if len > max {
        Err(ConvertError::TooMany {
            field: field.to_string(),
            len,
            max,
        })
    } else {
        Ok(())
    }
}

/// Converts each element with `convert`, nesting errors under `field[i]`.
pub(crate) fn convert_each<W, D>(
    field: &str,
    items: Vec<W>,
    max: usize,
    mut convert: impl FnMut(W) -> Result<D, ConvertError>,
) -> Result<Vec<D>, ConvertError> {
    check_len(field, items.len(), max)?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| convert(item).map_err(|e| e.within(&format!("{field}[{i}]"))))
        .collect()
}

/// A generated protobuf enum: its name for messages and the values the schema defines.
pub trait WireEnum: TryFrom<i32> + Copy + Into<i32> {
    /// The enum's protobuf name (`Health`).
    const NAME: &'static str;
    /// The protobuf name of a value (`HEALTH_HEALTHY`).
    fn value_name(self) -> &'static str;
}

macro_rules! wire_enum {
    ($($ty:ident),* $(,)?) => {
        $(impl WireEnum for crate::pb::$ty {
            const NAME: &'static str = stringify!($ty);
            fn value_name(self) -> &'static str {
                self.as_str_name()
            }
        })*
    };
}

wire_enum!(
    Health,
    LinkPathKind,
    PortState,
    LinkLayer,
    Requirement,
    NvLinkRemote,
    GpuEventKind,
    JobKind,
    NetworkScope,
    JobState,
    NodeCondition,
    DeviceKind,
);

/// Every value of `E` as `NAME=number`, for error messages.
fn known_values<E: WireEnum>() -> String {
    // Our enums are dense and small; 64 leaves room for growth without a table per enum.
    (0..64)
        .filter_map(|n| E::try_from(n).ok())
        .map(|e| format!("{}={}", e.value_name(), e.into()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads an enum field, rejecting numbers the schema does not define.
pub fn decode_enum<E: WireEnum>(field: &str, raw: i32) -> Result<E, ConvertError> {
    E::try_from(raw).map_err(|_| ConvertError::UnknownEnum {
        field: field.to_string(),
        enum_name: E::NAME,
        value: raw,
        known: known_values::<E>(),
    })
}
