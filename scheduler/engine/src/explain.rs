//! Why a request was not placed: per-node reasons and their counts. Why a placement went
//! where it did ([`ScoreBreakdown`]) is part of the placement, in [`crate::policy`].

use std::fmt;

use crate::gpu::GpuModel;
use crate::request::{GpuDemand, Request};

/// Why one node cannot take a request; each rejected node counts under its first reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    Cordoned,
    OutsideAllowed,
    NoGpus,
    ModelNotAllowed,
    NotEnoughCpu,
    NotEnoughMemory,
    FewerFreeGpus,
    NoShareRoom,
    NoMigProfile,
    MigSlotsTaken,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::Cordoned,
        Reason::OutsideAllowed,
        Reason::NoGpus,
        Reason::ModelNotAllowed,
        Reason::NotEnoughCpu,
        Reason::NotEnoughMemory,
        Reason::FewerFreeGpus,
        Reason::NoShareRoom,
        Reason::NoMigProfile,
        Reason::MigSlotsTaken,
    ];
}

/// A request no node can take now, with how many nodes failed for which reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaceable {
    /// Nodes looked at.
    pub nodes: u32,
    /// Reasons with their node counts, most frequent first; zero counts left out.
    pub counts: Vec<(Reason, u32)>,
    request: Box<RequestSummary>,
}

/// What the reason texts need to know about the request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RequestSummary {
    cpu_milli: u64,
    memory_mib: u64,
    gpus: u32,
    share: Option<(u32, u64)>,
    profile: Option<String>,
    models: Vec<GpuModel>,
}

impl Unplaceable {
    pub(crate) fn new(nodes: u32, raw: &[u32; 10], request: &Request) -> Unplaceable {
        let mut counts: Vec<(Reason, u32)> = Reason::ALL
            .iter()
            .zip(raw.iter())
            .filter(|(_, c)| **c > 0)
            .map(|(r, c)| (*r, *c))
            .collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let (share, profile) = match request.gpu() {
            GpuDemand::Shared { milli, memory_mib } => (Some((*milli, *memory_mib)), None),
            GpuDemand::Mig { profile, .. } => (None, Some(profile.to_string())),
            _ => (None, None),
        };
        Unplaceable {
            nodes,
            counts,
            request: Box::new(RequestSummary {
                cpu_milli: request.cpu_milli(),
                memory_mib: request.memory_mib(),
                gpus: request.gpu_count(),
                share,
                profile,
                models: request.models().to_vec(),
            }),
        }
    }

    /// One node that cannot take `request`, for `reason`: for callers that judge nodes
    /// one at a time (see [`crate::policy::evaluate`]).
    pub fn one_node(reason: Reason, request: &Request) -> Unplaceable {
        let mut raw = [0u32; 10];
        raw[reason as usize] = 1;
        Unplaceable::new(1, &raw, request)
    }

    /// Nodes that failed for `reason`.
    pub fn count(&self, reason: Reason) -> u32 {
        self.counts
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, c)| *c)
    }

    /// The sentence for one reason, e.g. `fewer than 2 free GPUs`.
    pub fn describe(&self, reason: Reason) -> String {
        let r = &self.request;
        match reason {
            Reason::Cordoned => "cordoned or agent not connected".into(),
            Reason::OutsideAllowed => "outside the allowed places".into(),
            Reason::NoGpus => "no GPUs".into(),
            Reason::ModelNotAllowed => {
                let names: Vec<&str> = r.models.iter().map(GpuModel::as_str).collect();
                format!("model not in [{}]", names.join(", "))
            }
            Reason::NotEnoughCpu => format!("less than {}m CPU free", r.cpu_milli),
            Reason::NotEnoughMemory => format!("less than {} MiB memory free", r.memory_mib),
            Reason::FewerFreeGpus => {
                let s = if r.gpus == 1 { "" } else { "s" };
                format!("fewer than {} free GPU{s}", r.gpus)
            }
            Reason::NoShareRoom => {
                let (milli, mem) = r.share.unwrap_or((0, 0));
                if mem > 0 {
                    format!("no GPU with {milli}m and {mem} MiB free")
                } else {
                    format!("no GPU with {milli}m free")
                }
            }
            Reason::NoMigProfile => format!(
                "no MIG-enabled GPU offering {}",
                r.profile.as_deref().unwrap_or("the profile")
            ),
            Reason::MigSlotsTaken => format!(
                "not enough free {} slots",
                r.profile.as_deref().unwrap_or("MIG")
            ),
        }
    }
}

/// Writes `n` with thousands separators: `1,130`.
fn grouped(n: u32) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl fmt::Display for Unplaceable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nodes == 0 {
            return f.write_str("no nodes in the cluster");
        }
        for (i, (reason, count)) in self.counts.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            let noun = if *count == 1 { "node" } else { "nodes" };
            write!(f, "{} {noun}: {}", grouped(*count), self.describe(*reason))?;
        }
        Ok(())
    }
}

impl std::error::Error for Unplaceable {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_like_sentences() {
        let request = Request::from_openb(1000, 1, 2, 1000, "V100M32").expect("valid");
        let mut raw = [0u32; 10];
        raw[Reason::FewerFreeGpus as usize] = 1130;
        raw[Reason::ModelNotAllowed as usize] = 83;
        let u = Unplaceable::new(1213, &raw, &request);
        assert_eq!(
            u.to_string(),
            "1,130 nodes: fewer than 2 free GPUs; 83 nodes: model not in [V100M32]"
        );
        assert_eq!(u.count(Reason::ModelNotAllowed), 83);
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(grouped(12), "12");
    }
}
