//! `job.proto` ↔ `suanli_engine::job`.

use suanli_engine::job::{
    DataVolume, GpuPolicy, GpuRequest, JobKind, JobSpec, JobState, NetworkConstraint, NetworkScope,
    PlacementConstraints, Resources, Topology, VolumeMount,
};

use super::ids::{optional_requirement, requirement_or_default};
use super::{
    ConvertError, check_len, convert_each, decode_enum, parse_cid, parse_gpu_model,
    parse_mig_profile,
};
use crate::pb;

/// Bounds on repeated fields of a job, far above real jobs.
pub const MAX_MODELS: usize = 64;
pub const MAX_ALLOWED_PREFIXES: usize = 1024;
pub const MAX_DATA_VOLUMES: usize = 1024;
pub const MAX_COMMAND_ARGS: usize = 4096;
pub const MAX_ENV_VARS: usize = 4096;
pub const MAX_VOLUMES: usize = 1024;

/// What an empty tenant or queue means, as in a job file.
const DEFAULT_NAME: &str = "default";

impl From<JobKind> for pb::JobKind {
    fn from(kind: JobKind) -> Self {
        match kind {
            JobKind::Training => pb::JobKind::Training,
            JobKind::Inference => pb::JobKind::Inference,
        }
    }
}

impl From<pb::JobKind> for JobKind {
    /// Unset reads as training, the default of a job file.
    fn from(kind: pb::JobKind) -> Self {
        match kind {
            pb::JobKind::Unspecified | pb::JobKind::Training => JobKind::Training,
            pb::JobKind::Inference => JobKind::Inference,
        }
    }
}

impl From<JobState> for pb::JobState {
    fn from(state: JobState) -> Self {
        match state {
            JobState::Pending => pb::JobState::Pending,
            JobState::Placed => pb::JobState::Placed,
            JobState::Running => pb::JobState::Running,
            JobState::Succeeded => pb::JobState::Succeeded,
            JobState::Failed => pb::JobState::Failed,
            JobState::Cancelled => pb::JobState::Cancelled,
            JobState::Preempted => pb::JobState::Preempted,
        }
    }
}

impl TryFrom<pb::JobState> for JobState {
    type Error = ConvertError;

    /// UNSPECIFIED is not a state; callers where it means "any" (list filters) check first.
    fn try_from(state: pb::JobState) -> Result<Self, ConvertError> {
        Ok(match state {
            pb::JobState::Unspecified => {
                return Err(ConvertError::missing("", "a job state"));
            }
            pb::JobState::Pending => JobState::Pending,
            pb::JobState::Placed => JobState::Placed,
            pb::JobState::Running => JobState::Running,
            pb::JobState::Succeeded => JobState::Succeeded,
            pb::JobState::Failed => JobState::Failed,
            pb::JobState::Cancelled => JobState::Cancelled,
            pb::JobState::Preempted => JobState::Preempted,
        })
    }
}

/// Reads a job-state field as sent on the wire (any `i32`) at `field`.
pub fn job_state_from_wire(field: &str, raw: i32) -> Result<JobState, ConvertError> {
    JobState::try_from(decode_enum::<pb::JobState>(field, raw)?).map_err(|e| e.within(field))
}

impl From<NetworkScope> for pb::NetworkScope {
    fn from(scope: NetworkScope) -> Self {
        match scope {
            NetworkScope::SameNode => pb::NetworkScope::SameNode,
            NetworkScope::SameLeaf => pb::NetworkScope::SameLeaf,
            NetworkScope::SameSpine => pb::NetworkScope::SameSpine,
            NetworkScope::Any => pb::NetworkScope::Any,
        }
    }
}

impl From<pb::NetworkScope> for NetworkScope {
    /// Unset reads as any.
    fn from(scope: pb::NetworkScope) -> Self {
        match scope {
            pb::NetworkScope::SameNode => NetworkScope::SameNode,
            pb::NetworkScope::SameLeaf => NetworkScope::SameLeaf,
            pb::NetworkScope::SameSpine => NetworkScope::SameSpine,
            pb::NetworkScope::Unspecified | pb::NetworkScope::Any => NetworkScope::Any,
        }
    }
}

impl From<GpuRequest> for pb::GpuRequest {
    fn from(request: GpuRequest) -> Self {
        use pb::gpu_request::Policy;
        let policy = match request.policy {
            GpuPolicy::Exclusive { count } => Policy::Exclusive(pb::ExclusiveGpus { count }),
            GpuPolicy::Shared { milli, memory_mib } => {
                Policy::Shared(pb::SharedGpu { milli, memory_mib })
            }
            GpuPolicy::Mig { profile, count } => Policy::Mig(pb::MigGpus {
                profile: profile.to_string(),
                count,
            }),
        };
        pb::GpuRequest {
            policy: Some(policy),
            models: request.models.iter().map(ToString::to_string).collect(),
        }
    }
}

impl TryFrom<pb::GpuRequest> for GpuRequest {
    type Error = ConvertError;

    /// Maps the request; ranges (count, milli) are the engine's to check in `JobSpec::validate`.
    fn try_from(msg: pb::GpuRequest) -> Result<Self, ConvertError> {
        use pb::gpu_request::Policy;
        let policy = match msg.policy {
            None => {
                return Err(ConvertError::missing(
                    "",
                    "a GPU policy (exclusive, shared or mig)",
                ));
            }
            Some(Policy::Exclusive(e)) => GpuPolicy::Exclusive { count: e.count },
            Some(Policy::Shared(s)) => GpuPolicy::Shared {
                milli: s.milli,
                memory_mib: s.memory_mib,
            },
            Some(Policy::Mig(m)) => GpuPolicy::Mig {
                profile: parse_mig_profile("mig.profile", &m.profile)?,
                count: m.count,
            },
        };
        let models = convert_each("models", msg.models, MAX_MODELS, |m| {
            parse_gpu_model("", &m)
        })?;
        Ok(GpuRequest { policy, models })
    }
}

impl From<Resources> for pb::Resources {
    fn from(r: Resources) -> Self {
        pb::Resources {
            cpu_milli: r.cpu_milli,
            memory_mib: r.memory_mib,
        }
    }
}

impl From<pb::Resources> for Resources {
    fn from(msg: pb::Resources) -> Self {
        Resources {
            cpu_milli: msg.cpu_milli,
            memory_mib: msg.memory_mib,
        }
    }
}

impl From<Topology> for pb::Topology {
    fn from(t: Topology) -> Self {
        pb::Topology {
            nvlink: t
                .nvlink
                .map_or(pb::Requirement::Unspecified, pb::Requirement::from)
                .into(),
            network: Some(pb::NetworkConstraint {
                scope: pb::NetworkScope::from(t.network.scope).into(),
                mode: pb::Requirement::from(t.network.mode).into(),
            }),
            rdma_required: t.rdma_required,
        }
    }
}

impl TryFrom<pb::Topology> for Topology {
    type Error = ConvertError;

    fn try_from(msg: pb::Topology) -> Result<Self, ConvertError> {
        let network = match msg.network {
            Some(n) => NetworkConstraint {
                scope: decode_enum::<pb::NetworkScope>("network.scope", n.scope)?.into(),
                mode: requirement_or_default("network.mode", n.mode)?,
            },
            None => NetworkConstraint::default(),
        };
        Ok(Topology {
            nvlink: optional_requirement("nvlink", msg.nvlink)?,
            network,
            rdma_required: msg.rdma_required,
        })
    }
}

impl From<DataVolume> for pb::DataVolume {
    fn from(v: DataVolume) -> Self {
        pb::DataVolume {
            name: v.name,
            domain: v.domain.to_string(),
            size_gib: v.size_gib,
        }
    }
}

impl TryFrom<pb::DataVolume> for DataVolume {
    type Error = ConvertError;

    fn try_from(msg: pb::DataVolume) -> Result<Self, ConvertError> {
        Ok(DataVolume {
            domain: parse_cid("domain", &msg.domain)?,
            name: msg.name,
            size_gib: msg.size_gib,
        })
    }
}

impl From<PlacementConstraints> for pb::PlacementConstraints {
    fn from(p: PlacementConstraints) -> Self {
        pb::PlacementConstraints {
            allowed: p.allowed.iter().map(ToString::to_string).collect(),
            data: p.data.into_iter().map(Into::into).collect(),
            max_price_per_gpu_hour: p.max_price_per_gpu_hour,
            allow_cross_domain: p.allow_cross_domain,
            inter_domain_bandwidth_gbps: p.inter_domain_bandwidth_gbps,
        }
    }
}

impl TryFrom<pb::PlacementConstraints> for PlacementConstraints {
    type Error = ConvertError;

    fn try_from(msg: pb::PlacementConstraints) -> Result<Self, ConvertError> {
        Ok(PlacementConstraints {
            allowed: convert_each("allowed", msg.allowed, MAX_ALLOWED_PREFIXES, |cid| {
                parse_cid("", &cid)
            })?,
            data: convert_each("data", msg.data, MAX_DATA_VOLUMES, DataVolume::try_from)?,
            max_price_per_gpu_hour: msg.max_price_per_gpu_hour,
            allow_cross_domain: msg.allow_cross_domain,
            inter_domain_bandwidth_gbps: msg.inter_domain_bandwidth_gbps,
        })
    }
}

impl From<VolumeMount> for pb::VolumeMount {
    fn from(v: VolumeMount) -> Self {
        pb::VolumeMount {
            name: v.name,
            path: v.path,
            read_only: v.read_only,
        }
    }
}

impl From<pb::VolumeMount> for VolumeMount {
    fn from(msg: pb::VolumeMount) -> Self {
        VolumeMount {
            name: msg.name,
            path: msg.path,
            read_only: msg.read_only,
        }
    }
}

impl From<JobSpec> for pb::JobSpec {
    fn from(spec: JobSpec) -> Self {
        pb::JobSpec {
            name: spec.name,
            kind: pb::JobKind::from(spec.kind).into(),
            replicas: spec.replicas,
            min_replicas: spec.min_replicas,
            gpu: spec.gpu.map(Into::into),
            resources: Some(spec.resources.into()),
            topology: Some(spec.topology.into()),
            placement: Some(spec.placement.into()),
            tenant: spec.tenant,
            queue: spec.queue,
            priority: spec.priority,
            preemptible: Some(spec.preemptible),
            time_limit_s: spec.time_limit_s,
            command: spec.command,
            env: spec.env,
            volumes: spec.volumes.into_iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::JobSpec> for JobSpec {
    type Error = ConvertError;

    /// Maps every field, then runs [`JobSpec::validate`]; errors start with `spec.`.
    fn try_from(msg: pb::JobSpec) -> Result<Self, ConvertError> {
        spec_from_wire(msg).map_err(|e| e.within("spec"))
    }
}

fn or_default_name(name: String) -> String {
    if name.is_empty() {
        DEFAULT_NAME.to_string()
    } else {
        name
    }
}

fn spec_from_wire(msg: pb::JobSpec) -> Result<JobSpec, ConvertError> {
    check_len("command", msg.command.len(), MAX_COMMAND_ARGS)?;
    check_len("env", msg.env.len(), MAX_ENV_VARS)?;
    check_len("volumes", msg.volumes.len(), MAX_VOLUMES)?;
    let spec = JobSpec {
        kind: decode_enum::<pb::JobKind>("kind", msg.kind)?.into(),
        gpu: msg
            .gpu
            .map(|gpu| GpuRequest::try_from(gpu).map_err(|e| e.within("gpu")))
            .transpose()?,
        resources: msg.resources.map(Resources::from).unwrap_or_default(),
        topology: match msg.topology {
            Some(t) => Topology::try_from(t).map_err(|e| e.within("topology"))?,
            None => Topology::default(),
        },
        placement: match msg.placement {
            Some(p) => PlacementConstraints::try_from(p).map_err(|e| e.within("placement"))?,
            None => PlacementConstraints::default(),
        },
        name: msg.name,
        replicas: msg.replicas,
        min_replicas: msg.min_replicas,
        tenant: or_default_name(msg.tenant),
        queue: or_default_name(msg.queue),
        priority: msg.priority,
        preemptible: msg.preemptible.unwrap_or(true),
        time_limit_s: msg.time_limit_s,
        command: msg.command,
        env: msg.env,
        volumes: msg.volumes.into_iter().map(VolumeMount::from).collect(),
    };
    spec.validate().map_err(ConvertError::from)?;
    Ok(spec)
}
