//! Identifiers and the shared enums of `types.proto`.
//!
//! CIDs, GPU models and MIG profiles travel as plain strings (see `types.proto`), so their
//! wire → domain direction is a `parse_*` function that names the field; domain → wire is
//! their `Display` (`cid.to_string()`).

use suanli_engine::inventory::{Health, LinkLayer, LinkPath, PortState};
use suanli_engine::job::Requirement;
use suanli_engine::{Cid, GpuModel, MigProfile, Problem};

use super::{ConvertError, decode_enum};
use crate::pb;

/// Parses a CID string at `field`; an empty string is "must not be empty".
pub fn parse_cid(field: &str, text: &str) -> Result<Cid, ConvertError> {
    if text.is_empty() {
        return Err(ConvertError::invalid(field, Problem::Empty));
    }
    text.parse::<Cid>()
        .map_err(|e| ConvertError::invalid(field, Problem::Cid(e)))
}

/// Parses a GPU model (`H100`, upper-cased) at `field`.
pub fn parse_gpu_model(field: &str, text: &str) -> Result<GpuModel, ConvertError> {
    text.parse::<GpuModel>()
        .map_err(|p| ConvertError::invalid(field, p))
}

/// Parses a MIG profile name (`1g.10gb`) at `field`; unknown profiles list the known ones.
pub fn parse_mig_profile(field: &str, text: &str) -> Result<MigProfile, ConvertError> {
    text.parse::<MigProfile>()
        .map_err(|p| ConvertError::invalid(field, p))
}

impl From<LinkPath> for pb::LinkPath {
    fn from(path: LinkPath) -> Self {
        let (kind, nvlink_count) = match path {
            LinkPath::NvLink(n) => (pb::LinkPathKind::Nvlink, n),
            LinkPath::Pix => (pb::LinkPathKind::Pix, 0),
            LinkPath::Pxb => (pb::LinkPathKind::Pxb, 0),
            LinkPath::Phb => (pb::LinkPathKind::Phb, 0),
            LinkPath::Node => (pb::LinkPathKind::Node, 0),
            LinkPath::Sys => (pb::LinkPathKind::Sys, 0),
        };
        pb::LinkPath {
            kind: kind.into(),
            nvlink_count,
        }
    }
}

impl TryFrom<pb::LinkPath> for LinkPath {
    type Error = ConvertError;

    fn try_from(msg: pb::LinkPath) -> Result<Self, ConvertError> {
        let kind: pb::LinkPathKind = decode_enum("kind", msg.kind)?;
        let count = msg.nvlink_count;
        let path = match kind {
            pb::LinkPathKind::Unspecified => {
                return Err(ConvertError::missing("kind", "a link path kind"));
            }
            pb::LinkPathKind::Nvlink => {
                if count == 0 {
                    return Err(ConvertError::invalid(
                        "nvlink_count",
                        Problem::TooSmall { min: 1, got: 0 },
                    ));
                }
                return Ok(LinkPath::NvLink(count));
            }
            pb::LinkPathKind::Pix => LinkPath::Pix,
            pb::LinkPathKind::Pxb => LinkPath::Pxb,
            pb::LinkPathKind::Phb => LinkPath::Phb,
            pb::LinkPathKind::Node => LinkPath::Node,
            pb::LinkPathKind::Sys => LinkPath::Sys,
        };
        if count != 0 {
            // A count on a PCIe path means the sender mixed up two paths; say so, not guess.
            return Err(ConvertError::invalid(
                "nvlink_count",
                Problem::Invalid(format!(
                    "applies only to LINK_PATH_KIND_NVLINK; got {count} for {}",
                    kind.as_str_name()
                )),
            ));
        }
        Ok(path)
    }
}

impl From<Health> for pb::Health {
    fn from(health: Health) -> Self {
        match health {
            Health::Healthy => pb::Health::Healthy,
            Health::Degraded => pb::Health::Degraded,
            Health::Unhealthy => pb::Health::Unhealthy,
        }
    }
}

impl From<pb::Health> for Health {
    /// Unset reads as healthy, as the engine's own default does.
    fn from(health: pb::Health) -> Self {
        match health {
            pb::Health::Unspecified | pb::Health::Healthy => Health::Healthy,
            pb::Health::Degraded => Health::Degraded,
            pb::Health::Unhealthy => Health::Unhealthy,
        }
    }
}

impl From<PortState> for pb::PortState {
    fn from(state: PortState) -> Self {
        match state {
            PortState::Active => pb::PortState::Active,
            PortState::Down => pb::PortState::Down,
            PortState::Init => pb::PortState::Init,
            PortState::Armed => pb::PortState::Armed,
            PortState::Unknown => pb::PortState::Unknown,
        }
    }
}

impl From<pb::PortState> for PortState {
    fn from(state: pb::PortState) -> Self {
        match state {
            pb::PortState::Unspecified | pb::PortState::Unknown => PortState::Unknown,
            pb::PortState::Active => PortState::Active,
            pb::PortState::Down => PortState::Down,
            pb::PortState::Init => PortState::Init,
            pb::PortState::Armed => PortState::Armed,
        }
    }
}

impl From<LinkLayer> for pb::LinkLayer {
    fn from(layer: LinkLayer) -> Self {
        match layer {
            LinkLayer::Infiniband => pb::LinkLayer::Infiniband,
            LinkLayer::Ethernet => pb::LinkLayer::Ethernet,
            LinkLayer::Unknown => pb::LinkLayer::Unknown,
        }
    }
}

impl From<pb::LinkLayer> for LinkLayer {
    fn from(layer: pb::LinkLayer) -> Self {
        match layer {
            pb::LinkLayer::Unspecified | pb::LinkLayer::Unknown => LinkLayer::Unknown,
            pb::LinkLayer::Infiniband => LinkLayer::Infiniband,
            pb::LinkLayer::Ethernet => LinkLayer::Ethernet,
        }
    }
}

impl From<Requirement> for pb::Requirement {
    fn from(requirement: Requirement) -> Self {
        match requirement {
            Requirement::Required => pb::Requirement::Required,
            Requirement::Preferred => pb::Requirement::Preferred,
        }
    }
}

/// An optional requirement: unset means no constraint.
pub(crate) fn optional_requirement(
    field: &str,
    raw: i32,
) -> Result<Option<Requirement>, ConvertError> {
    Ok(match decode_enum::<pb::Requirement>(field, raw)? {
        pb::Requirement::Unspecified => None,
        pb::Requirement::Required => Some(Requirement::Required),
        pb::Requirement::Preferred => Some(Requirement::Preferred),
    })
}

/// A requirement with a default: unset means preferred, as in a job file.
pub(crate) fn requirement_or_default(field: &str, raw: i32) -> Result<Requirement, ConvertError> {
    Ok(optional_requirement(field, raw)?.unwrap_or_default())
}
