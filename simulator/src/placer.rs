//! The narrow interface the protocols drive. Its production implementation
//! ([`crate::engine::EngineFactory`]) calls `suanli-engine`; the protocols never decide
//! where anything goes themselves.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::model::{NodeShape, Request};

/// The six policies the FGD paper compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    Random,
    DotProduct,
    GpuClustering,
    GpuPacking,
    BestFit,
    Fgd,
}

impl Policy {
    pub const ALL: [Policy; 6] = [
        Policy::Random,
        Policy::DotProduct,
        Policy::GpuClustering,
        Policy::GpuPacking,
        Policy::BestFit,
        Policy::Fgd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Random => "random",
            Policy::DotProduct => "dot-product",
            Policy::GpuClustering => "gpu-clustering",
            Policy::GpuPacking => "gpu-packing",
            Policy::BestFit => "best-fit",
            Policy::Fgd => "fgd",
        }
    }

    /// Unallocated GPU % at arrived = 100% on `openb_pod_list_default`, mean of 10 seeds,
    /// as the FGD paper (USENIX ATC '23) reports it.
    pub fn published_unallocated_pct(self) -> f64 {
        match self {
            Policy::Random => 13.70,
            Policy::DotProduct => 9.38,
            Policy::GpuClustering => 8.35,
            Policy::GpuPacking => 8.22,
            Policy::BestFit => 7.14,
            Policy::Fgd => 4.77,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown policy {0:?}; known: random, dot-product, gpu-clustering, gpu-packing, best-fit, fgd"
)]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = s.trim().to_ascii_lowercase().replace('_', "-");
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == key || p.name().replace('-', "") == key)
            .ok_or_else(|| UnknownPolicy(s.to_string()))
    }
}

/// Parses `fgd,best-fit`; `all` means the six.
pub fn parse_policies(text: &str) -> Result<Vec<Policy>, UnknownPolicy> {
    if text.trim() == "all" {
        return Ok(Policy::ALL.to_vec());
    }
    let mut out = Vec::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let policy: Policy = part.parse()?;
        if !out.contains(&policy) {
            out.push(policy);
        }
    }
    if out.is_empty() {
        return Err(UnknownPolicy(text.to_string()));
    }
    Ok(out)
}

/// Something placed, to hand back on release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlacementId(pub u64);

/// One cluster under one policy.
pub trait Placer: Send {
    /// Places one pod, or says it does not fit anywhere now.
    fn place(&mut self, request: &Request) -> Option<PlacementId>;
    fn release(&mut self, placement: PlacementId);
    fn used_gpu_milli(&self) -> u64;
    fn total_gpu_milli(&self) -> u64;
    /// Free GPU milli that the expected workload mix cannot use, when the engine measures it.
    fn fragmented_gpu_milli(&self) -> Option<f64>;

    /// Places `replicas` copies all-or-nothing.
    fn place_gang(&mut self, request: &Request, replicas: u32) -> Option<Vec<PlacementId>> {
        let mut placed = Vec::with_capacity(replicas as usize);
        for _ in 0..replicas {
            match self.place(request) {
                Some(id) => placed.push(id),
                None => {
                    for id in placed {
                        self.release(id);
                    }
                    return None;
                }
            }
        }
        Some(placed)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the cluster for policy {policy}: {reason}")]
pub struct BuildError {
    pub policy: Policy,
    pub reason: String,
}

/// Builds a fresh cluster for one run.
pub trait PlacerFactory: Sync {
    /// The expected workload FGD measures fragmentation against, built once per input.
    type Mix: Sync;

    fn mix(&self, requests: &[Request]) -> Result<Self::Mix, MixError>;

    fn build(
        &self,
        nodes: &[NodeShape],
        policy: Policy,
        seed: u64,
        mix: &Self::Mix,
    ) -> Result<Box<dyn Placer>, BuildError>;
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the expected workload mix: {0}")]
pub struct MixError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_by_name_and_alias() {
        assert_eq!(
            parse_policies("fgd,best-fit").ok(),
            Some(vec![Policy::Fgd, Policy::BestFit])
        );
        assert_eq!(parse_policies("all").ok().map(|p| p.len()), Some(6));
        assert_eq!("BestFit".parse::<Policy>().ok(), Some(Policy::BestFit));
        assert_eq!(
            "dot_product".parse::<Policy>().ok(),
            Some(Policy::DotProduct)
        );
        let err = parse_policies("fgd,worst-fit").expect_err("unknown policy");
        assert_eq!(err, UnknownPolicy("worst-fit".into()));
    }
}
