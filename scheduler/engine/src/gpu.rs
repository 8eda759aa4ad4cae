//! GPU models and MIG profiles.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::validation::Problem;

/// A GPU model as jobs name it (`H100`, `A100-80GB`, `V100M32`): upper-case letters, digits,
/// `-`, `_` and `.`, at most 32 characters. Parsing upper-cases, so `h100` and `H100` are
/// the same model.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GpuModel(String);

impl GpuModel {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The model for an NVML product name such as `NVIDIA H100 80GB HBM3`.
    ///
    /// The short model keeps the memory size only where one family ships several
    /// (`A100-40GB` vs `A100-80GB`), so that jobs can say `H100` for any H100.
    pub fn from_product_name(product: &str) -> GpuModel {
        let upper = product.to_ascii_uppercase();
        let words: Vec<&str> = upper
            .split_whitespace()
            .filter(|w| !matches!(*w, "NVIDIA" | "TESLA" | "GEFORCE" | "QUADRO"))
            .collect();
        let family = words.first().copied().unwrap_or("UNKNOWN");
        let memory = words
            .iter()
            .find(|w| w.ends_with("GB") && w[..w.len() - 2].chars().all(|c| c.is_ascii_digit()))
            .copied();
        let name = match (family, memory) {
            ("A100", Some(mem)) => format!("A100-{mem}"),
            (family, _) => family.to_string(),
        };
        let cleaned: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .take(32)
            .collect();
        GpuModel(if cleaned.is_empty() {
            "UNKNOWN".to_string()
        } else {
            cleaned
        })
    }
}

impl FromStr for GpuModel {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(Problem::Empty);
        }
        if s.len() > 32 {
            return Err(Problem::TooLong {
                len: s.len(),
                max: 32,
            });
        }
        if let Some(ch) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(Problem::InvalidChar {
                value: s.to_string(),
                ch,
                allowed: "letters, digits, '-', '_' and '.'",
            });
        }
        Ok(GpuModel(s.to_ascii_uppercase()))
    }
}

impl fmt::Display for GpuModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for GpuModel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for GpuModel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse()
            .map_err(|p: Problem| serde::de::Error::custom(format!("GPU model {text:?}: {p}")))
    }
}

/// One row of NVIDIA's GPU-instance profile table for a GPU memory class.
///
/// A MIG-capable GPU has 7 compute slices and 8 memory slices; an instance occupies
/// `memory_slices` consecutive memory slices starting at one of `starts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigProfileSpec {
    pub name: &'static str,
    pub compute_slices: u8,
    pub memory_slices: u8,
    pub starts: &'static [u8],
    pub max_instances: u8,
    /// The memory class (total GPU memory in GB as NVIDIA rounds it) this row belongs to.
    pub gpu_memory_gb: u16,
}

const fn row(
    name: &'static str,
    compute_slices: u8,
    memory_slices: u8,
    starts: &'static [u8],
    max_instances: u8,
    gpu_memory_gb: u16,
) -> MigProfileSpec {
    MigProfileSpec {
        name,
        compute_slices,
        memory_slices,
        starts,
        max_instances,
        gpu_memory_gb,
    }
}

const EVERY_SLICE: &[u8] = &[0, 1, 2, 3, 4, 5, 6];
const EVEN_SLICES: &[u8] = &[0, 2, 4, 6];
const TWO_SLICE_STARTS: &[u8] = &[0, 2, 4];
const HALVES: &[u8] = &[0, 4];
const FIRST: &[u8] = &[0];

/// NVIDIA's GPU-instance profiles (MIG user guide, "Supported MIG profiles"), per memory class.
/// The 80 GB rows match `nvidia-smi mig -lgip` on an H100 80GB HBM3.
pub const MIG_PROFILES: &[MigProfileSpec] = &[
    // A100 40GB
    row("1g.5gb", 1, 1, EVERY_SLICE, 7, 40),
    row("1g.5gb+me", 1, 1, EVERY_SLICE, 1, 40),
    row("1g.10gb", 1, 2, EVEN_SLICES, 4, 40),
    row("2g.10gb", 2, 2, TWO_SLICE_STARTS, 3, 40),
    row("3g.20gb", 3, 4, HALVES, 2, 40),
    row("4g.20gb", 4, 4, FIRST, 1, 40),
    row("7g.40gb", 7, 8, FIRST, 1, 40),
    // A100 80GB, H100 80GB
    row("1g.10gb", 1, 1, EVERY_SLICE, 7, 80),
    row("1g.10gb+me", 1, 1, EVERY_SLICE, 1, 80),
    row("1g.20gb", 1, 2, EVEN_SLICES, 4, 80),
    row("2g.20gb", 2, 2, TWO_SLICE_STARTS, 3, 80),
    row("3g.40gb", 3, 4, HALVES, 2, 80),
    row("4g.40gb", 4, 4, FIRST, 1, 80),
    row("7g.80gb", 7, 8, FIRST, 1, 80),
    // H100 94GB / H100 NVL
    row("1g.12gb", 1, 1, EVERY_SLICE, 7, 94),
    row("1g.12gb+me", 1, 1, EVERY_SLICE, 1, 94),
    row("1g.24gb", 1, 2, EVEN_SLICES, 4, 94),
    row("2g.24gb", 2, 2, TWO_SLICE_STARTS, 3, 94),
    row("3g.47gb", 3, 4, HALVES, 2, 94),
    row("4g.47gb", 4, 4, FIRST, 1, 94),
    row("7g.94gb", 7, 8, FIRST, 1, 94),
    // H200 141GB
    row("1g.18gb", 1, 1, EVERY_SLICE, 7, 141),
    row("1g.18gb+me", 1, 1, EVERY_SLICE, 1, 141),
    row("1g.35gb", 1, 2, EVEN_SLICES, 4, 141),
    row("2g.35gb", 2, 2, TWO_SLICE_STARTS, 3, 141),
    row("3g.71gb", 3, 4, HALVES, 2, 141),
    row("4g.71gb", 4, 4, FIRST, 1, 141),
    row("7g.141gb", 7, 8, FIRST, 1, 141),
    // A30 24GB (4 compute and 4 memory slices)
    row("1g.6gb", 1, 1, &[0, 1, 2, 3], 4, 24),
    row("1g.6gb+me", 1, 1, &[0, 1, 2, 3], 1, 24),
    row("2g.12gb", 2, 2, &[0, 2], 2, 24),
    row("2g.12gb+me", 2, 2, &[0, 2], 1, 24),
    row("4g.24gb", 4, 4, FIRST, 1, 24),
];

/// A MIG GPU-instance profile name such as `1g.10gb` or `1g.10gb+me`, known to
/// [`MIG_PROFILES`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MigProfile {
    name: String,
}

impl MigProfile {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Compute slices (the `Ng` part).
    pub fn compute_slices(&self) -> u8 {
        self.specs()
            .next()
            .map(|s| s.compute_slices)
            .expect("a parsed profile is in the table")
    }

    /// GPU memory of one instance in GB, as the name says.
    pub fn memory_gb(&self) -> u32 {
        let core = self.name.split('+').next().unwrap_or(&self.name);
        core.split_once('.')
            .and_then(|(_, mem)| mem.strip_suffix("gb"))
            .and_then(|n| n.parse().ok())
            .expect("a parsed profile has a memory size")
    }

    /// The table rows for this profile (one per GPU memory class that offers it).
    pub fn specs(&self) -> impl Iterator<Item = &'static MigProfileSpec> + '_ {
        MIG_PROFILES.iter().filter(move |s| s.name == self.name)
    }

    /// The row for this profile on a GPU of `gpu_memory_gb`, if that class offers it.
    pub fn spec_for(&self, gpu_memory_gb: u16) -> Option<&'static MigProfileSpec> {
        self.specs().find(|s| s.gpu_memory_gb == gpu_memory_gb)
    }

    pub fn known_names() -> Vec<&'static str> {
        let mut names: Vec<&'static str> = MIG_PROFILES.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        names
    }
}

/// NVIDIA's memory class for a GPU's total memory: what the `7g.<N>gb` profile calls it.
pub fn mig_memory_class(total_memory_mib: u64) -> Option<u16> {
    let gb = total_memory_mib.div_ceil(1024);
    [24u16, 40, 80, 94, 141]
        .into_iter()
        .find(|class| gb <= u64::from(*class) && gb + 2 >= u64::from(*class))
}

impl FromStr for MigProfile {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim().to_ascii_lowercase();
        if name.is_empty() {
            return Err(Problem::Empty);
        }
        if MIG_PROFILES.iter().any(|p| p.name == name) {
            Ok(MigProfile { name })
        } else {
            Err(Problem::Unknown {
                what: "MIG profile",
                value: s.to_string(),
                known: MigProfile::known_names().join(", "),
            })
        }
    }
}

impl fmt::Display for MigProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Serialize for MigProfile {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for MigProfile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse()
            .map_err(|p: Problem| serde::de::Error::custom(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_names_map_to_short_models() {
        let cases = [
            ("NVIDIA H100 80GB HBM3", "H100"),
            ("NVIDIA A100-SXM4-80GB", "A100-SXM4-80GB"),
            ("NVIDIA A100 80GB PCIe", "A100-80GB"),
            ("Tesla V100-SXM2-32GB", "V100-SXM2-32GB"),
            ("NVIDIA H200", "H200"),
            ("", "UNKNOWN"),
        ];
        for (product, model) in cases {
            assert_eq!(
                GpuModel::from_product_name(product).as_str(),
                model,
                "{product}"
            );
        }
    }

    #[test]
    fn model_parsing_upper_cases_and_rejects_junk() {
        assert_eq!("h100".parse::<GpuModel>().expect("valid").as_str(), "H100");
        assert_eq!(
            "A100 80GB".parse::<GpuModel>().unwrap_err().to_string(),
            "\"A100 80GB\" has ' '; allowed are letters, digits, '-', '_' and '.'"
        );
        assert_eq!(
            "".parse::<GpuModel>().unwrap_err().to_string(),
            "must not be empty"
        );
    }

    #[test]
    fn h100_profiles_match_the_real_host() {
        // The rows `nvidia-smi mig -lgip` printed on a real H100 80GB HBM3.
        for (name, slices, max) in [
            ("1g.10gb", 1, 7),
            ("1g.10gb+me", 1, 1),
            ("1g.20gb", 1, 4),
            ("2g.20gb", 2, 3),
            ("3g.40gb", 3, 2),
            ("4g.40gb", 4, 1),
            ("7g.80gb", 7, 1),
        ] {
            let p: MigProfile = name.parse().expect("known profile");
            let spec = p.spec_for(80).expect("80 GB class offers it");
            assert_eq!(spec.compute_slices, slices, "{name}");
            assert_eq!(spec.max_instances, max, "{name}");
        }
        assert_eq!(mig_memory_class(81_559), Some(80));
        assert_eq!(mig_memory_class(40_960), Some(40));
        assert_eq!(mig_memory_class(16_384), None);
    }

    #[test]
    fn memory_and_slices_come_from_the_name() {
        let p: MigProfile = "3g.40gb".parse().expect("known");
        assert_eq!(p.compute_slices(), 3);
        assert_eq!(p.memory_gb(), 40);
        let me: MigProfile = "1g.10gb+me".parse().expect("known");
        assert_eq!(me.memory_gb(), 10);
    }

    #[test]
    fn unknown_profile_lists_the_known_ones() {
        let err = "2g.7gb".parse::<MigProfile>().unwrap_err().to_string();
        assert!(
            err.starts_with("unknown MIG profile \"2g.7gb\"; known: 1g.10gb, 1g.10gb+me"),
            "{err}"
        );
    }
}
