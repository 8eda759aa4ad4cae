//! MIG GPU-instance profile names, computed the way NVIDIA names them.
//!
//! NVML describes a GPU-instance profile by an id, a slice count and a memory size in MB; the
//! name `nvidia-smi mig -lgip` prints is `{slices}g.{ceil(memory_MB / 1024)}gb`, plus a suffix
//! for the media-engine variants of some ids.

use serde::{Deserialize, Serialize};

/// NVML's `NVML_GPU_INSTANCE_PROFILE_*` ids whose names carry a suffix.
const PROFILE_1_SLICE_REV1: u32 = 0x7;
const PROFILE_2_SLICE_REV1: u32 = 0x8;
const PROFILE_1_SLICE_GFX: u32 = 0xA;
const PROFILE_2_SLICE_GFX: u32 = 0xB;
const PROFILE_4_SLICE_GFX: u32 = 0xC;
const PROFILE_1_SLICE_NO_ME: u32 = 0xD;
const PROFILE_2_SLICE_NO_ME: u32 = 0xE;
const PROFILE_1_SLICE_ALL_ME: u32 = 0xF;
const PROFILE_2_SLICE_ALL_ME: u32 = 0x10;

/// One GPU-instance profile as NVML's `nvmlDeviceGetGpuInstanceProfileInfo` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvmlMigProfile {
    /// `NVML_GPU_INSTANCE_PROFILE_*` id.
    pub id: u32,
    pub slices: u32,
    pub memory_mb: u64,
    #[serde(default)]
    pub sm_count: u32,
    /// Optical-flow accelerators the profile owns; the media-extension variants have one.
    #[serde(default)]
    pub ofa_count: u32,
}

impl NvmlMigProfile {
    pub fn name(&self) -> String {
        profile_name(self.id, self.slices, self.memory_mb)
    }
}

/// The profile name NVIDIA uses for an NVML GPU-instance profile: `1g.10gb`, `3g.40gb`,
/// `1g.10gb+me` (media extensions), `1g.10gb-me` (no media engines), `+me.all`, `+gfx`.
pub fn profile_name(profile_id: u32, slices: u32, memory_mb: u64) -> String {
    let base = format!("{slices}g.{}gb", memory_mb.div_ceil(1024));
    let suffix = match profile_id {
        PROFILE_1_SLICE_REV1 | PROFILE_2_SLICE_REV1 => "+me",
        PROFILE_1_SLICE_ALL_ME | PROFILE_2_SLICE_ALL_ME => "+me.all",
        PROFILE_1_SLICE_NO_ME | PROFILE_2_SLICE_NO_ME => "-me",
        PROFILE_1_SLICE_GFX | PROFILE_2_SLICE_GFX | PROFILE_4_SLICE_GFX => "+gfx",
        _ => "",
    };
    format!("{base}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use suanli_engine::MigProfile;

    /// NVML's profile rows on the real H100 80GB HBM3 (`id: slices, max, memory MB, SMs`).
    const H100_NVML_ROWS: &[(u32, u32, u64)] = &[
        (0, 1, 9984),
        (1, 2, 20096),
        (2, 3, 40448),
        (3, 4, 40448),
        (4, 7, 81152),
        (7, 1, 9984),
        (9, 1, 20096),
    ];

    #[test]
    fn h100_nvml_rows_get_nvidia_names() {
        let names: Vec<String> = H100_NVML_ROWS
            .iter()
            .map(|(id, slices, mb)| profile_name(*id, *slices, *mb))
            .collect();
        assert_eq!(
            names,
            [
                "1g.10gb",
                "2g.20gb",
                "3g.40gb",
                "4g.40gb",
                "7g.80gb",
                "1g.10gb+me",
                "1g.20gb"
            ]
        );
        for name in &names {
            name.parse::<MigProfile>()
                .unwrap_or_else(|e| panic!("{name} is in the engine's table: {e}"));
        }
    }

    #[test]
    fn other_suffixes() {
        assert_eq!(profile_name(0xD, 1, 9984), "1g.10gb-me");
        assert_eq!(profile_name(0xF, 1, 9984), "1g.10gb+me.all");
        assert_eq!(profile_name(0xB, 2, 20096), "2g.20gb+gfx");
        assert_eq!(profile_name(0x8, 2, 12032), "2g.12gb+me");
    }

    fn shared_fixture(name: &str) -> Option<String> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/h100/");
        match std::fs::read_to_string(format!("{path}{name}")) {
            Ok(text) => Some(text),
            Err(e) => {
                eprintln!("skipping: shared fixture {path}{name} is not readable ({e})");
                None
            }
        }
    }

    /// Parses NOTES.md's `id: slices,max,memory MB,SMs` list.
    fn notes_rows(notes: &str) -> Vec<(u32, u32, u64)> {
        let line = notes
            .lines()
            .skip_while(|l| !l.contains("GPU-instance profiles from"))
            .take(4)
            .collect::<Vec<_>>()
            .join(" ");
        let list = line
            .split_once("SMs`):")
            .map(|(_, rest)| rest)
            .unwrap_or("");
        list.split('·')
            .filter_map(|item| {
                let (id, rest) = item.trim().split_once(':')?;
                let nums: Vec<&str> = rest.split(',').map(|s| s.trim()).collect();
                let memory: String = nums.get(2)?.chars().filter(char::is_ascii_digit).collect();
                Some((
                    id.trim().parse().ok()?,
                    nums[0].parse().ok()?,
                    memory.parse().ok()?,
                ))
            })
            .collect()
    }

    /// `name -> memory GiB` from `nvidia-smi mig -lgip`.
    fn lgip_rows(text: &str) -> Vec<(String, f64)> {
        text.lines()
            .filter_map(|l| {
                let words: Vec<&str> = l.trim_matches('|').split_whitespace().collect();
                let at = words.iter().position(|w| *w == "MIG")?;
                Some((
                    words.get(at + 1)?.to_string(),
                    words.get(at + 4)?.parse().ok()?,
                ))
            })
            .collect()
    }

    #[test]
    fn names_match_the_real_h100_lgip_table() {
        let (Some(notes), Some(lgip)) = (
            shared_fixture("NOTES.md"),
            shared_fixture("mig-profiles.txt"),
        ) else {
            return;
        };
        let rows = notes_rows(&notes);
        assert_eq!(
            rows.len(),
            7,
            "NOTES.md lists 7 NVML profile rows: {rows:?}"
        );
        let lgip = lgip_rows(&lgip);
        assert_eq!(lgip.len(), 7, "mig-profiles.txt lists 7 profiles: {lgip:?}");
        let mut ours: Vec<String> = rows
            .iter()
            .map(|(id, slices, mb)| profile_name(*id, *slices, *mb))
            .collect();
        let mut theirs: Vec<String> = lgip.iter().map(|(n, _)| n.clone()).collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs);
        for (id, slices, mb) in rows {
            let name = profile_name(id, slices, mb);
            let gib = lgip
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, g)| *g)
                .expect("name is in the lgip table");
            // nvidia-smi prints MiB / 1024 to two decimals.
            assert!(
                ((mb as f64) / 1024.0 - gib).abs() < 0.01,
                "{name}: {mb} MB vs {gib} GiB"
            );
        }
    }
}
