//! The policies by name: [`PolicyKind`], parsed from our names or the paper simulator's.

use std::fmt;
use std::str::FromStr;

/// A placement policy, selectable by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    Random,
    BestFit,
    DotProduct,
    GpuPacking,
    GpuClustering,
    Fgd,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 6] = [
        PolicyKind::Random,
        PolicyKind::BestFit,
        PolicyKind::DotProduct,
        PolicyKind::GpuPacking,
        PolicyKind::GpuClustering,
        PolicyKind::Fgd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Random => "random",
            PolicyKind::BestFit => "best-fit",
            PolicyKind::DotProduct => "dot-product",
            PolicyKind::GpuPacking => "gpu-packing",
            PolicyKind::GpuClustering => "gpu-clustering",
            PolicyKind::Fgd => "fgd",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a policy cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "unknown policy {name:?}; known: random, best-fit, dot-product, gpu-packing, gpu-clustering, fgd"
    )]
    Unknown { name: String },
    #[error("policy fgd needs the expected workload mix")]
    MissingMix,
}

impl FromStr for PolicyKind {
    type Err = PolicyError;

    /// Our names, and the paper simulator's (`BestFit`, `DotProd`, `GpuPacking`, `FGD`, ...).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let folded: String = s
            .chars()
            .filter(|c| !matches!(c, '-' | '_' | ' '))
            .collect::<String>()
            .to_ascii_lowercase();
        Ok(match folded.as_str() {
            "random" => PolicyKind::Random,
            "bestfit" => PolicyKind::BestFit,
            "dotproduct" | "dotprod" => PolicyKind::DotProduct,
            "gpupacking" | "packing" => PolicyKind::GpuPacking,
            "gpuclustering" | "clustering" => PolicyKind::GpuClustering,
            "fgd" | "frag" => PolicyKind::Fgd,
            _ => {
                return Err(PolicyError::Unknown {
                    name: s.to_string(),
                });
            }
        })
    }
}
