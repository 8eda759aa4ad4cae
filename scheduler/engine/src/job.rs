//! Jobs as ML engineers submit them (DESIGN.md §5), and their lifecycle.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cid::{Cid, Level};
use crate::gpu::{GpuModel, MigProfile};
use crate::validation::{Problem, ValidationError, check_name, check_range, check_text, ensure};

pub const MAX_REPLICAS: u32 = 100_000;
pub const MAX_GPUS_PER_REPLICA: u32 = 64;
pub const MILLI_PER_GPU: u32 = 1000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// A gang: all replicas start together or none do.
    #[default]
    Training,
    /// Independent replicas, spread across failure domains.
    Inference,
}

/// How a replica uses GPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuPolicy {
    /// Whole GPUs, bound by UUID, never shared with anything else.
    Exclusive { count: u32 },
    /// A share of one GPU: `milli` of its compute (1–1000) and/or `memory_mib` of its memory.
    Shared {
        milli: Option<u32>,
        memory_mib: Option<u64>,
    },
    /// `count` MIG instances of one profile.
    Mig { profile: MigProfile, count: u32 },
}

impl GpuPolicy {
    pub fn name(&self) -> &'static str {
        match self {
            GpuPolicy::Exclusive { .. } => "exclusive",
            GpuPolicy::Shared { .. } => "shared",
            GpuPolicy::Mig { .. } => "mig",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "GpuRequestDoc", into = "GpuRequestDoc")]
pub struct GpuRequest {
    pub policy: GpuPolicy,
    /// Allowed models; empty means any.
    pub models: Vec<GpuModel>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PolicyName {
    Exclusive,
    Shared,
    Mig,
}

/// The flat form a job file uses: `{policy: shared, milli: 500, memory_mib: 8192}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuRequestDoc {
    policy: PolicyName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    milli: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    profile: Option<MigProfile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    models: Vec<GpuModel>,
}

impl TryFrom<GpuRequestDoc> for GpuRequest {
    type Error = String;

    fn try_from(doc: GpuRequestDoc) -> Result<Self, Self::Error> {
        let stray =
            |field: &str, policy: &str| format!("`{field}` does not apply to policy {policy}");
        let policy = match doc.policy {
            PolicyName::Exclusive => {
                if doc.milli.is_some() || doc.memory_mib.is_some() {
                    return Err(stray("milli/memory_mib", "exclusive (whole GPUs)"));
                }
                if doc.profile.is_some() {
                    return Err(stray("profile", "exclusive"));
                }
                GpuPolicy::Exclusive {
                    count: doc.count.unwrap_or(1),
                }
            }
            PolicyName::Shared => {
                if doc.count.is_some() {
                    return Err(stray("count", "shared (one share of one GPU per replica)"));
                }
                if doc.profile.is_some() {
                    return Err(stray("profile", "shared"));
                }
                GpuPolicy::Shared {
                    milli: doc.milli,
                    memory_mib: doc.memory_mib,
                }
            }
            PolicyName::Mig => {
                if doc.milli.is_some() || doc.memory_mib.is_some() {
                    return Err(stray("milli/memory_mib", "mig (the profile sets them)"));
                }
                let profile = doc
                    .profile
                    .ok_or("policy mig needs a `profile` such as 1g.10gb")?;
                GpuPolicy::Mig {
                    profile,
                    count: doc.count.unwrap_or(1),
                }
            }
        };
        Ok(GpuRequest {
            policy,
            models: doc.models,
        })
    }
}

impl From<GpuRequest> for GpuRequestDoc {
    fn from(request: GpuRequest) -> Self {
        let mut doc = GpuRequestDoc {
            policy: PolicyName::Exclusive,
            count: None,
            milli: None,
            memory_mib: None,
            profile: None,
            models: request.models,
        };
        match request.policy {
            GpuPolicy::Exclusive { count } => doc.count = Some(count),
            GpuPolicy::Shared { milli, memory_mib } => {
                doc.policy = PolicyName::Shared;
                doc.milli = milli;
                doc.memory_mib = memory_mib;
            }
            GpuPolicy::Mig { profile, count } => {
                doc.policy = PolicyName::Mig;
                doc.profile = Some(profile);
                doc.count = Some(count);
            }
        }
        doc
    }
}

impl GpuRequest {
    /// Whole-GPU equivalents one replica uses (a share counts as its milli / 1000).
    pub fn gpu_milli(&self) -> u64 {
        match &self.policy {
            GpuPolicy::Exclusive { count } => u64::from(*count) * u64::from(MILLI_PER_GPU),
            GpuPolicy::Shared { milli, .. } => u64::from(milli.unwrap_or(0)),
            GpuPolicy::Mig { profile, count } => {
                u64::from(*count) * u64::from(profile.compute_slices()) * u64::from(MILLI_PER_GPU)
                    / 7
            }
        }
    }

    pub fn allows_model(&self, model: &GpuModel) -> bool {
        self.models.is_empty() || self.models.contains(model)
    }
}

/// CPU and memory per replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub cpu_milli: u64,
    #[serde(default)]
    pub memory_mib: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    Required,
    #[default]
    Preferred,
}

/// How close the replicas of a gang must sit on the fabric, coarse-to-fine order reversed:
/// `SameNode` is the tightest.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkScope {
    SameNode,
    SameLeaf,
    SameSpine,
    #[default]
    Any,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConstraint {
    #[serde(default)]
    pub scope: NetworkScope,
    #[serde(default)]
    pub mode: Requirement,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Whether a replica's GPUs must (or should) be joined by NVLink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvlink: Option<Requirement>,
    #[serde(default)]
    pub network: NetworkConstraint,
    /// GPU↔NIC paths must allow GPUDirect RDMA (PIX or PXB).
    #[serde(default)]
    pub rdma_required: bool,
}

/// A data volume and the domain it lives in (data gravity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataVolume {
    pub name: String,
    pub domain: Cid,
    /// Size in GiB; larger data pulls harder.
    #[serde(default)]
    pub size_gib: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementConstraints {
    /// CID prefixes (providers, regions, domains, nodes) the job may use; empty means anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<Cid>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<DataVolume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_price_per_gpu_hour: Option<f64>,
    /// May a gang span domains at all.
    #[serde(default)]
    pub allow_cross_domain: bool,
    /// The inter-domain bandwidth (Gb/s) a cross-domain split may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inter_domain_bandwidth_gbps: Option<f64>,
}

impl PlacementConstraints {
    /// True when `cid` lies under one of the allowed prefixes (or nothing is restricted).
    pub fn allows(&self, cid: &Cid) -> bool {
        self.allowed.is_empty()
            || self
                .allowed
                .iter()
                .any(|p| p.is_prefix_of(cid) || cid.is_prefix_of(p))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    pub name: String,
    pub path: String,
    #[serde(default)]
    pub read_only: bool,
}

/// Most bytes of text a whole job spec may hold: every name, argument, variable and path. A
/// spec travels in every listing page and every assignment to an agent; far above a real
/// launcher command, far below any message limit on the way.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;
/// Most bytes the command's arguments may hold together.
pub const MAX_COMMAND_BYTES: usize = 128 * 1024;
/// Most bytes the environment's names and values may hold together.
pub const MAX_ENV_BYTES: usize = 128 * 1024;

/// The longest time limit a job may ask for: ten years, in seconds.
pub const MAX_TIME_LIMIT_S: i64 = 10 * 365 * 24 * 3600;

/// What a user submits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    #[serde(default)]
    pub kind: JobKind,
    #[serde(default = "one")]
    pub replicas: u32,
    /// Elastic training: start once this many replicas fit. `None` means all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<u32>,
    /// `None` for CPU-only work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuRequest>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub topology: Topology,
    #[serde(default)]
    pub placement: PlacementConstraints,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    #[serde(default = "default_queue")]
    pub queue: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(default = "yes")]
    pub preemptible: bool,
    /// Longest the job may run; it is stopped after that. Known end times let shorter jobs
    /// run ahead of a blocked gang without delaying it. `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
}

fn one() -> u32 {
    1
}

fn default_tenant() -> String {
    "default".to_string()
}

fn default_queue() -> String {
    "default".to_string()
}

fn yes() -> bool {
    true
}

impl JobSpec {
    /// A minimal valid spec, for builders and tests.
    pub fn new(name: impl Into<String>, kind: JobKind) -> Self {
        JobSpec {
            name: name.into(),
            kind,
            replicas: 1,
            min_replicas: None,
            gpu: None,
            resources: Resources::default(),
            topology: Topology::default(),
            placement: PlacementConstraints::default(),
            tenant: default_tenant(),
            queue: default_queue(),
            priority: 0,
            preemptible: true,
            time_limit_s: None,
            command: Vec::new(),
            env: BTreeMap::new(),
            volumes: Vec::new(),
        }
    }

    /// The replicas that must fit before the job starts.
    pub fn required_replicas(&self) -> u32 {
        self.min_replicas.unwrap_or(self.replicas)
    }

    /// GPU-milli the whole job uses at full size.
    pub fn total_gpu_milli(&self) -> u64 {
        self.gpu.as_ref().map_or(0, GpuRequest::gpu_milli) * u64::from(self.replicas)
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        // Sizes first: refusing a flood must not cost checking it piece by piece.
        fn too_big(what: &'static str, bytes: usize, max: usize) -> impl FnOnce() -> Problem {
            move || Problem::Invalid(format!("{what}is {bytes} bytes; at most {max}"))
        }
        let command_bytes: usize = self.command.iter().map(String::len).sum();
        ensure(
            command_bytes <= MAX_COMMAND_BYTES,
            "command",
            too_big("", command_bytes, MAX_COMMAND_BYTES),
        )?;
        let env_bytes: usize = self.env.iter().map(|(k, v)| k.len() + v.len()).sum();
        ensure(
            env_bytes <= MAX_ENV_BYTES,
            "env",
            too_big("", env_bytes, MAX_ENV_BYTES),
        )?;
        let spec_bytes = self.text_bytes();
        ensure(
            spec_bytes <= MAX_SPEC_BYTES,
            "",
            too_big("the job's text ", spec_bytes, MAX_SPEC_BYTES),
        )?;
        check_name("name", &self.name, 253)?;
        check_range(
            "replicas",
            i64::from(self.replicas),
            1,
            i64::from(MAX_REPLICAS),
        )?;
        if let Some(limit) = self.time_limit_s {
            check_range(
                "time_limit_s",
                i64::try_from(limit).unwrap_or(i64::MAX),
                1,
                MAX_TIME_LIMIT_S,
            )?;
        }
        if let Some(min) = self.min_replicas {
            check_range("min_replicas", i64::from(min), 1, i64::from(self.replicas))?;
        }
        if let Some(gpu) = &self.gpu {
            validate_gpu(gpu).map_err(|e| e.within("gpu"))?;
        }
        ensure(
            self.resources.cpu_milli <= 10_000_000,
            "resources.cpu_milli",
            || Problem::OutOfRange {
                min: 0,
                max: 10_000_000,
                got: clamp_i64(self.resources.cpu_milli),
            },
        )?;
        ensure(
            self.resources.memory_mib <= 1 << 30,
            "resources.memory_mib",
            || Problem::OutOfRange {
                min: 0,
                max: 1 << 30,
                got: clamp_i64(self.resources.memory_mib),
            },
        )?;
        if self.topology.network.scope == NetworkScope::SameNode && self.kind == JobKind::Inference
        {
            return Err(ValidationError::new(
                "topology.network.scope",
                Problem::Invalid(
                    "same-node applies to training gangs, not inference replicas".into(),
                ),
            ));
        }
        for (i, volume) in self.placement.data.iter().enumerate() {
            check_name("name", &volume.name, 253)
                .map_err(|e| e.within(&format!("placement.data[{i}]")))?;
            ensure(
                volume.domain.depth() > Level::Domain as usize,
                &format!("placement.data[{i}].domain"),
                || {
                    Problem::Invalid(format!(
                        "{} is not a domain identifier (provider/region/domain)",
                        volume.domain
                    ))
                },
            )?;
        }
        if let Some(price) = self.placement.max_price_per_gpu_hour {
            ensure(
                price.is_finite() && price >= 0.0,
                "placement.max_price_per_gpu_hour",
                || Problem::Invalid(format!("{price} is not a price")),
            )?;
        }
        if let Some(bw) = self.placement.inter_domain_bandwidth_gbps {
            ensure(
                bw.is_finite() && bw >= 0.0,
                "placement.inter_domain_bandwidth_gbps",
                || Problem::Invalid(format!("{bw} is not a bandwidth in Gb/s")),
            )?;
        }
        check_name("tenant", &self.tenant, 63)?;
        check_name("queue", &self.queue, 63)?;
        for (i, arg) in self.command.iter().enumerate() {
            ensure(!arg.contains('\0'), &format!("command[{i}]"), || {
                Problem::Invalid("an argument cannot contain NUL".into())
            })?;
        }
        for (key, value) in &self.env {
            ensure(
                !key.is_empty() && !key.contains('=') && !key.chars().any(char::is_control),
                &format!("env.{}", key.escape_debug()),
                || {
                    Problem::Invalid(
                        "environment variable names must be non-empty, without '=' or control \
                         characters"
                            .into(),
                    )
                },
            )?;
            ensure(!value.contains('\0'), &format!("env.{key}"), || {
                Problem::Invalid("a value cannot contain NUL".into())
            })?;
        }
        let mut seen = HashSet::new();
        for (i, volume) in self.volumes.iter().enumerate() {
            let at = format!("volumes[{i}]");
            check_name("name", &volume.name, 253).map_err(|e| e.within(&at))?;
            check_text("path", &volume.path, 4096).map_err(|e| e.within(&at))?;
            ensure(volume.path.starts_with('/'), &format!("{at}.path"), || {
                Problem::Invalid(format!("{:?} is not an absolute path", volume.path))
            })?;
            ensure(
                seen.insert(volume.path.as_str()),
                &format!("{at}.path"),
                || Problem::Duplicate {
                    what: "mount path",
                    value: volume.path.clone(),
                    first: "an earlier volume".into(),
                },
            )?;
        }
        Ok(())
    }
}

impl JobSpec {
    /// Bytes of variable-length text in the spec, what [`MAX_SPEC_BYTES`] bounds.
    pub fn text_bytes(&self) -> usize {
        let models: usize = self
            .gpu
            .as_ref()
            .map_or(0, |g| g.models.iter().map(|m| m.as_str().len()).sum());
        let command: usize = self.command.iter().map(String::len).sum();
        let env: usize = self.env.iter().map(|(k, v)| k.len() + v.len()).sum();
        let volumes: usize = self
            .volumes
            .iter()
            .map(|v| v.name.len() + v.path.len())
            .sum();
        let allowed: usize = self
            .placement
            .allowed
            .iter()
            .map(|c| c.to_string().len())
            .sum();
        let data: usize = self
            .placement
            .data
            .iter()
            .map(|d| d.name.len() + d.domain.to_string().len())
            .sum();
        self.name.len()
            + self.tenant.len()
            + self.queue.len()
            + models
            + command
            + env
            + volumes
            + allowed
            + data
    }
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn validate_gpu(gpu: &GpuRequest) -> Result<(), ValidationError> {
    match &gpu.policy {
        GpuPolicy::Exclusive { count } => {
            check_range(
                "count",
                i64::from(*count),
                1,
                i64::from(MAX_GPUS_PER_REPLICA),
            )?;
        }
        GpuPolicy::Shared { milli, memory_mib } => {
            ensure(milli.is_some() || memory_mib.is_some(), "milli", || {
                Problem::Invalid("a shared GPU request needs milli, memory_mib or both".into())
            })?;
            if let Some(milli) = milli {
                check_range("milli", i64::from(*milli), 1, i64::from(MILLI_PER_GPU))?;
            }
            if let Some(mem) = memory_mib {
                check_range("memory_mib", clamp_i64(*mem), 1, 1 << 22)?;
            }
        }
        GpuPolicy::Mig { count, .. } => {
            check_range("count", i64::from(*count), 1, 56)?;
        }
    }
    Ok(())
}

/// A job's identifier, issued by the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub String);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `Pending → Placed → Running → Succeeded | Failed | Cancelled`; preemption and node loss
/// return a job to `Pending`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Pending,
    Placed,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Preempted,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Pending,
        JobState::Placed,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Preempted,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    /// Whether the lifecycle allows `self → next`.
    pub fn can_become(self, next: JobState) -> bool {
        use JobState::*;
        match (self, next) {
            (s, _) if s.is_terminal() => false,
            (_, Cancelled) => true,
            (Pending, Placed) => true,
            (Placed, Running) | (Placed, Pending) | (Placed, Failed) | (Placed, Preempted) => true,
            (Running, Succeeded)
            | (Running, Failed)
            | (Running, Pending)
            | (Running, Preempted) => true,
            (Preempted, Pending) => true,
            _ => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Placed => "placed",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Preempted => "preempted",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| Problem::Unknown {
                what: "job state",
                value: s.to_string(),
                known: JobState::ALL.map(JobState::as_str).join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exclusive(count: u32) -> Option<GpuRequest> {
        Some(GpuRequest {
            policy: GpuPolicy::Exclusive { count },
            models: vec![],
        })
    }

    fn shared(milli: Option<u32>, memory_mib: Option<u64>) -> Option<GpuRequest> {
        Some(GpuRequest {
            policy: GpuPolicy::Shared { milli, memory_mib },
            models: vec![],
        })
    }

    fn err(spec: &JobSpec) -> String {
        spec.validate().unwrap_err().to_string()
    }

    #[test]
    fn a_plain_training_job_is_valid() {
        let mut spec = JobSpec::new("train", JobKind::Training);
        spec.replicas = 8;
        spec.gpu = exclusive(8);
        spec.validate().expect("valid");
        assert_eq!(spec.total_gpu_milli(), 64_000);
    }

    #[test]
    fn empty_name_is_rejected() {
        let spec = JobSpec::new("  ", JobKind::Training);
        assert_eq!(err(&spec), "name: must not be empty");
    }

    #[test]
    fn zero_replicas_is_rejected() {
        let mut spec = JobSpec::new("j", JobKind::Training);
        spec.replicas = 0;
        assert_eq!(err(&spec), "replicas: must be between 1 and 100000, got 0");
    }

    #[test]
    fn time_limits_are_positive_and_bounded() {
        let mut spec = JobSpec::new("t", JobKind::Training);
        spec.time_limit_s = Some(0);
        assert_eq!(
            err(&spec),
            "time_limit_s: must be between 1 and 315360000, got 0"
        );
        spec.time_limit_s = Some(400_000_000);
        assert_eq!(
            err(&spec),
            "time_limit_s: must be between 1 and 315360000, got 400000000"
        );
        spec.time_limit_s = Some(3600);
        assert!(spec.validate().is_ok());
    }

    #[test]
    fn min_replicas_cannot_exceed_replicas() {
        let mut spec = JobSpec::new("j", JobKind::Training);
        spec.replicas = 4;
        spec.min_replicas = Some(5);
        assert_eq!(err(&spec), "min_replicas: must be between 1 and 4, got 5");
    }

    #[test]
    fn milli_outside_range_is_rejected() {
        let mut spec = JobSpec::new("j", JobKind::Inference);
        spec.gpu = shared(Some(1500), None);
        assert_eq!(
            err(&spec),
            "gpu.milli: must be between 1 and 1000, got 1500"
        );
        spec.gpu = shared(Some(0), None);
        assert_eq!(err(&spec), "gpu.milli: must be between 1 and 1000, got 0");
        spec.gpu = shared(None, None);
        assert_eq!(
            err(&spec),
            "gpu.milli: a shared GPU request needs milli, memory_mib or both"
        );
    }

    #[test]
    fn exclusive_count_is_bounded() {
        let mut spec = JobSpec::new("j", JobKind::Training);
        spec.gpu = exclusive(0);
        assert_eq!(err(&spec), "gpu.count: must be between 1 and 64, got 0");
        spec.gpu = exclusive(1000);
        assert_eq!(err(&spec), "gpu.count: must be between 1 and 64, got 1000");
    }

    #[test]
    fn job_document_parses_with_defaults() {
        // The same document the CLI reads as YAML; the engine itself only sees serde.
        let doc = serde_json::json!({
            "name": "llama",
            "kind": "training",
            "replicas": 4,
            "gpu": {"policy": "exclusive", "count": 8, "models": ["h100"]},
            "topology": {"nvlink": "required", "network": {"scope": "same-leaf", "mode": "required"}, "rdma_required": true},
            "placement": {"allowed": ["cid:acme/cn-east-1"]},
            "command": ["python", "train.py"]
        });
        let spec: JobSpec = serde_json::from_value(doc).expect("parses");
        spec.validate().expect("valid");
        assert_eq!(
            spec.gpu.as_ref().map(|g| g.models[0].as_str()),
            Some("H100")
        );
        assert_eq!(spec.topology.network.scope, NetworkScope::SameLeaf);
        assert_eq!(spec.tenant, "default");
        assert!(spec.preemptible);
        let back: JobSpec =
            serde_json::from_value(serde_json::to_value(&spec).expect("serializes"))
                .expect("parses");
        assert_eq!(back, spec);
    }

    #[test]
    fn unknown_mig_profile_in_a_job_is_rejected() {
        let json = serde_json::json!({"name": "m", "gpu": {"policy": "mig", "profile": "2g.7gb"}});
        let e = serde_json::from_value::<JobSpec>(json)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown MIG profile \"2g.7gb\""), "{e}");
    }

    #[test]
    fn lifecycle_transitions() {
        use JobState::*;
        assert!(Pending.can_become(Placed));
        assert!(Running.can_become(Succeeded));
        assert!(Running.can_become(Pending));
        assert!(Preempted.can_become(Pending));
        assert!(!Succeeded.can_become(Running));
        assert!(!Cancelled.can_become(Cancelled));
        assert!(!Pending.can_become(Running));
        assert_eq!("Running".parse::<JobState>().expect("known"), Running);
    }

    #[test]
    fn allowed_prefixes_match_both_ways() {
        let mut p = PlacementConstraints::default();
        p.allowed.push("cid:acme/cn-east-1".parse().expect("valid"));
        assert!(p.allows(&"cid:acme/cn-east-1/dc-a/n1".parse().expect("valid")));
        assert!(!p.allows(&"cid:acme/us-west-2/dc-a/n1".parse().expect("valid")));
    }
}
