//! Why a request was not placed: per-node reasons and their counts. Why a placement went
//! where it did ([`ScoreBreakdown`]) is part of the placement, in [`crate::policy`].

use std::cmp::Reverse;
use std::fmt;

use crate::gpu::GpuModel;
use crate::request::{GpuDemand, Request};

/// Why one node cannot take a request (or, for the gang planner, even one replica); each
/// rejected node counts under its first refusal. One enum for the policies and the gang
/// planner, so a refusal has one name on the wire ([`Refusal::key`]) wherever it is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    Cordoned,
    /// Held for a blocked gang's reservation.
    Reserved,
    OutsideAllowed,
    /// The domain's price is unknown or above the job's maximum.
    Price,
    /// `rdma: required` and no NIC of the node is usable.
    RdmaDown,
    NoGpus,
    ModelNotAllowed,
    FewerFreeGpus,
    NoNvlinkSet,
    NoShareRoom,
    /// No MIG-enabled GPU offers the profile (policies).
    NoMigProfile,
    /// The profile is offered but its slots are taken (policies).
    MigSlotsTaken,
    /// No MIG slot for the profile, either case (gang planner). Kept apart from the two
    /// above because clients already see it under its own key.
    NoMigSlots,
    NotEnoughCpu,
    NotEnoughMemory,
}

impl Refusal {
    /// Every refusal, in declaration order (`ALL[r as usize] == r`).
    pub const ALL: [Refusal; 15] = [
        Refusal::Cordoned,
        Refusal::Reserved,
        Refusal::OutsideAllowed,
        Refusal::Price,
        Refusal::RdmaDown,
        Refusal::NoGpus,
        Refusal::ModelNotAllowed,
        Refusal::FewerFreeGpus,
        Refusal::NoNvlinkSet,
        Refusal::NoShareRoom,
        Refusal::NoMigProfile,
        Refusal::MigSlotsTaken,
        Refusal::NoMigSlots,
        Refusal::NotEnoughCpu,
        Refusal::NotEnoughMemory,
    ];

    /// The name clients see (gRPC Explain reasons); stable, whatever the variant is called.
    pub fn key(self) -> &'static str {
        match self {
            Refusal::Cordoned => "cordoned",
            Refusal::Reserved => "reserved",
            Refusal::OutsideAllowed => "outside_allowed",
            Refusal::Price => "price",
            Refusal::RdmaDown => "rdma_down",
            Refusal::NoGpus => "no_gpus",
            Refusal::ModelNotAllowed => "model_not_allowed",
            Refusal::FewerFreeGpus => "fewer_free_gpus",
            Refusal::NoNvlinkSet => "no_nvlink_set",
            Refusal::NoShareRoom => "no_share_room",
            Refusal::NoMigProfile => "no_mig_profile",
            Refusal::MigSlotsTaken => "mig_slots_taken",
            Refusal::NoMigSlots => "no_mig_slots",
            Refusal::NotEnoughCpu => "not_enough_cpu",
            Refusal::NotEnoughMemory => "not_enough_memory",
        }
    }

    /// The sentence without the request's figures, e.g. `too few free GPUs`; an
    /// [`Unplaceable`] names them ([`Unplaceable::describe`]).
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::Cordoned => "cordoned or agent not connected",
            Refusal::Reserved => "reserved for a blocked gang",
            Refusal::OutsideAllowed => "outside the allowed places",
            Refusal::Price => "domain price unknown or above the job's maximum",
            Refusal::RdmaDown => "no usable RDMA NIC",
            Refusal::NoGpus => "no GPUs",
            Refusal::ModelNotAllowed => "GPU model not allowed",
            Refusal::FewerFreeGpus => "too few free GPUs",
            Refusal::NoNvlinkSet => "no free NVLink-joined GPU set",
            Refusal::NoShareRoom => "no GPU with room for the share",
            Refusal::NoMigProfile => "no MIG-enabled GPU offering the profile",
            Refusal::MigSlotsTaken => "not enough free MIG slots",
            Refusal::NoMigSlots => "no free MIG slots for the profile",
            Refusal::NotEnoughCpu => "not enough CPU",
            Refusal::NotEnoughMemory => "not enough memory",
        }
    }
}

/// Per-refusal node counts, indexed by `Refusal as usize`.
pub(crate) type RefusalCounts = [u32; Refusal::ALL.len()];

/// `raw`'s non-zero counts, most frequent first; equal counts keep `order`, the order the
/// caller has always listed its refusals in (the policies and the gang planner differ).
pub(crate) fn sorted_counts(raw: &RefusalCounts, order: &[Refusal]) -> Vec<(Refusal, u32)> {
    let mut counts: Vec<(Refusal, u32)> = order
        .iter()
        .map(|r| (*r, raw[*r as usize]))
        .filter(|(_, c)| *c > 0)
        .collect();
    // Stable, so ties stay in `order`.
    counts.sort_by_key(|(_, c)| Reverse(*c));
    counts
}

/// The refusals the policies give, in the order they are checked.
const POLICY_REFUSALS: [Refusal; 10] = [
    Refusal::Cordoned,
    Refusal::OutsideAllowed,
    Refusal::NoGpus,
    Refusal::ModelNotAllowed,
    Refusal::NotEnoughCpu,
    Refusal::NotEnoughMemory,
    Refusal::FewerFreeGpus,
    Refusal::NoShareRoom,
    Refusal::NoMigProfile,
    Refusal::MigSlotsTaken,
];

/// A request no node can take now, with how many nodes failed for which reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaceable {
    /// Nodes looked at.
    pub nodes: u32,
    /// Reasons with their node counts, most frequent first; zero counts left out.
    pub counts: Vec<(Refusal, u32)>,
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
    pub(crate) fn new(nodes: u32, raw: &RefusalCounts, request: &Request) -> Unplaceable {
        let counts = sorted_counts(raw, &POLICY_REFUSALS);
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
    pub fn one_node(reason: Refusal, request: &Request) -> Unplaceable {
        let mut raw: RefusalCounts = [0; Refusal::ALL.len()];
        raw[reason as usize] = 1;
        Unplaceable::new(1, &raw, request)
    }

    /// Nodes that failed for `reason`.
    pub fn count(&self, reason: Refusal) -> u32 {
        self.counts
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, c)| *c)
    }

    /// The sentence for one refusal with the request's figures, e.g. `fewer than 2 free GPUs`.
    pub fn describe(&self, reason: Refusal) -> String {
        let r = &self.request;
        match reason {
            Refusal::ModelNotAllowed => {
                let names: Vec<&str> = r.models.iter().map(GpuModel::as_str).collect();
                format!("model not in [{}]", names.join(", "))
            }
            Refusal::NotEnoughCpu => format!("less than {}m CPU free", r.cpu_milli),
            Refusal::NotEnoughMemory => format!("less than {} MiB memory free", r.memory_mib),
            Refusal::FewerFreeGpus => {
                let s = if r.gpus == 1 { "" } else { "s" };
                format!("fewer than {} free GPU{s}", r.gpus)
            }
            Refusal::NoShareRoom => {
                let (milli, mem) = r.share.unwrap_or((0, 0));
                if mem > 0 {
                    format!("no GPU with {milli}m and {mem} MiB free")
                } else {
                    format!("no GPU with {milli}m free")
                }
            }
            Refusal::NoMigProfile => match &r.profile {
                Some(p) => format!("no MIG-enabled GPU offering {p}"),
                None => reason.describe().into(),
            },
            Refusal::MigSlotsTaken => match &r.profile {
                Some(p) => format!("not enough free {p} slots"),
                None => reason.describe().into(),
            },
            Refusal::Cordoned
            | Refusal::Reserved
            | Refusal::OutsideAllowed
            | Refusal::Price
            | Refusal::RdmaDown
            | Refusal::NoGpus
            | Refusal::NoNvlinkSet
            | Refusal::NoMigSlots => reason.describe().into(),
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
        let mut raw: RefusalCounts = [0; Refusal::ALL.len()];
        raw[Refusal::FewerFreeGpus as usize] = 1130;
        raw[Refusal::ModelNotAllowed as usize] = 83;
        let u = Unplaceable::new(1213, &raw, &request);
        assert_eq!(
            u.to_string(),
            "1,130 nodes: fewer than 2 free GPUs; 83 nodes: model not in [V100M32]"
        );
        assert_eq!(u.count(Refusal::ModelNotAllowed), 83);
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(grouped(12), "12");
    }

    /// The keys are on the wire (gRPC Explain reasons): renaming a variant must not move them.
    #[test]
    fn every_refusal_keeps_its_key() {
        let keys: Vec<(Refusal, &str)> = Refusal::ALL.iter().map(|r| (*r, r.key())).collect();
        assert_eq!(
            keys,
            [
                (Refusal::Cordoned, "cordoned"),
                (Refusal::Reserved, "reserved"),
                (Refusal::OutsideAllowed, "outside_allowed"),
                (Refusal::Price, "price"),
                (Refusal::RdmaDown, "rdma_down"),
                (Refusal::NoGpus, "no_gpus"),
                (Refusal::ModelNotAllowed, "model_not_allowed"),
                (Refusal::FewerFreeGpus, "fewer_free_gpus"),
                (Refusal::NoNvlinkSet, "no_nvlink_set"),
                (Refusal::NoShareRoom, "no_share_room"),
                (Refusal::NoMigProfile, "no_mig_profile"),
                (Refusal::MigSlotsTaken, "mig_slots_taken"),
                (Refusal::NoMigSlots, "no_mig_slots"),
                (Refusal::NotEnoughCpu, "not_enough_cpu"),
                (Refusal::NotEnoughMemory, "not_enough_memory"),
            ]
        );
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "ALL is in declaration order");
        }
    }

    #[test]
    fn equal_counts_keep_the_callers_order() {
        let mut raw: RefusalCounts = [0; Refusal::ALL.len()];
        raw[Refusal::NotEnoughCpu as usize] = 2;
        raw[Refusal::FewerFreeGpus as usize] = 2;
        raw[Refusal::Cordoned as usize] = 5;
        let order = [
            Refusal::Cordoned,
            Refusal::NotEnoughCpu,
            Refusal::FewerFreeGpus,
        ];
        assert_eq!(
            sorted_counts(&raw, &order),
            [
                (Refusal::Cordoned, 5),
                (Refusal::NotEnoughCpu, 2),
                (Refusal::FewerFreeGpus, 2)
            ]
        );
    }
}
