//! A Pod as a Suanli job: its GPU demand from its containers' resources and its
//! `suanli.io/*` annotations, and its CPU and memory as Kubernetes computes them.

use std::collections::BTreeMap;
use std::num::ParseIntError;

use k8s_openapi::api::core::v1::{Container, Pod};
use suanli_engine::job::{GpuPolicy, GpuRequest, JobKind};
use suanli_engine::{GpuModel, JobSpec, MigProfile, ValidationError};

use super::ExtenderSettings;
use crate::kubernetes::POD_ANNOTATION_PREFIX;
use crate::placement::PodRef;

/// Why a pod cannot be read as a job, naming the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("Pod.metadata.name: missing")]
    NoName,
    #[error("Pod.spec: missing")]
    NoSpec,
    /// A resource quantity at `field` (`Pod.spec.containers[0].resources.requests[cpu]`).
    #[error("{field}: {problem}")]
    Quantity {
        field: String,
        problem: QuantityError,
    },
    #[error("{field}: {text:?} is not a whole number of GPUs")]
    FractionalGpus { field: String, text: String },
    /// The annotation `suanli.io/{key}`.
    #[error("{}: {problem}", annotation_field(.key))]
    Annotation {
        key: &'static str,
        problem: AnnotationProblem,
    },
    #[error(
        "{}: a MIG slice cannot also ask for a share (gpu-milli, gpu-memory-mib)",
        annotation_field("mig-profile")
    )]
    MigWithShare,
    #[error(
        "{}: a share is of one GPU, but the pod asks for {gpus} {resource}",
        annotation_field("gpu-milli")
    )]
    ShareOfSeveral { gpus: u32, resource: String },
    #[error("Pod {pod}: as a Suanli job, {problem}")]
    InvalidJob {
        pod: PodRef,
        problem: Box<ValidationError>,
    },
}

/// What is wrong with one `suanli.io/*` annotation's value.
#[derive(Debug, thiserror::Error)]
pub enum AnnotationProblem {
    #[error("{text:?} is not a valid number: {problem}")]
    NotANumber {
        text: String,
        problem: ParseIntError,
    },
    /// A GPU model or MIG profile the engine does not know.
    #[error(transparent)]
    Invalid(#[from] suanli_engine::Problem),
}

/// Why text is not a resource quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0:?} is not a Kubernetes quantity (e.g. 500m, 2, 1.5Gi)")]
    Malformed(String),
    #[error("{0:?} is out of range")]
    OutOfRange(String),
}

fn annotation_field(key: &str) -> String {
    format!("Pod.metadata.annotations[{POD_ANNOTATION_PREFIX}{key}]")
}

/// A pod that asks for GPUs, as the job that holds them.
#[derive(Debug, Clone)]
pub struct PodJob {
    pub pod: PodRef,
    pub spec: JobSpec,
}

/// A pod's GPU demand, or `None` for a pod that asks for no GPU (Suanli has no say on it).
pub fn pod_job(pod: &Pod, settings: &ExtenderSettings) -> Result<Option<PodJob>, PodError> {
    let meta = &pod.metadata;
    let name = meta.name.clone().unwrap_or_default();
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    if name.is_empty() {
        return Err(PodError::NoName);
    }
    let pod_ref = PodRef {
        namespace: namespace.clone(),
        name: name.clone(),
        uid: meta.uid.clone().unwrap_or_default(),
    };
    let empty = BTreeMap::new();
    let notes = meta.annotations.as_ref().unwrap_or(&empty);
    let note = |key: &str| {
        notes
            .get(&format!("{POD_ANNOTATION_PREFIX}{key}"))
            .map(|v| v.trim())
    };
    let invalid =
        |key: &'static str| move |problem: AnnotationProblem| PodError::Annotation { key, problem };
    let spec = pod.spec.as_ref().ok_or(PodError::NoSpec)?;
    let resources = pod_resources(
        &spec.containers,
        spec.init_containers.as_deref().unwrap_or(&[]),
        &settings.gpu_resource,
    )?;
    let gpus = resources.gpus;
    let milli = note("gpu-milli")
        .map(|v| parse_number::<u32>(v).map_err(invalid("gpu-milli")))
        .transpose()?;
    let memory = note("gpu-memory-mib")
        .map(|v| parse_number::<u64>(v).map_err(invalid("gpu-memory-mib")))
        .transpose()?;
    let profile = note("mig-profile")
        .map(|v| {
            v.parse::<MigProfile>()
                .map_err(AnnotationProblem::from)
                .map_err(invalid("mig-profile"))
        })
        .transpose()?;
    let models = match note("gpu-model") {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(|m| {
                m.parse::<GpuModel>()
                    .map_err(AnnotationProblem::from)
                    .map_err(invalid("gpu-model"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let policy = match (profile, milli.is_some() || memory.is_some()) {
        (Some(_), true) => return Err(PodError::MigWithShare),
        (Some(profile), false) => Some(GpuPolicy::Mig {
            profile,
            count: gpus.max(1),
        }),
        (None, true) => {
            if gpus > 1 {
                return Err(PodError::ShareOfSeveral {
                    gpus,
                    resource: settings.gpu_resource.clone(),
                });
            }
            Some(GpuPolicy::Shared {
                milli,
                memory_mib: memory,
            })
        }
        (None, false) if gpus > 0 => Some(GpuPolicy::Exclusive { count: gpus }),
        (None, false) => None,
    };
    let Some(policy) = policy else {
        return Ok(None);
    };
    let mut job = JobSpec::new(name, JobKind::Inference);
    job.gpu = Some(GpuRequest { policy, models });
    job.resources.cpu_milli = resources.cpu_milli;
    job.resources.memory_mib = resources.memory_mib;
    job.tenant = note("tenant").map_or(namespace, str::to_string);
    // Suanli cannot stop a pod (Kubernetes evicts it), so a pod is never a victim and, like
    // any non-preemptible job, stays within its tenant's guarantee.
    job.preemptible = false;
    if let Some(queue) = note("queue") {
        job.queue = queue.to_string();
    }
    job.priority = match note("priority") {
        Some(p) => parse_number::<i32>(p).map_err(invalid("priority"))?,
        None => spec.priority.unwrap_or(0),
    };
    if let Err(problem) = job.validate() {
        return Err(PodError::InvalidJob {
            pod: pod_ref,
            problem: Box::new(problem),
        });
    }
    Ok(Some(PodJob {
        pod: pod_ref,
        spec: job,
    }))
}

fn parse_number<T>(text: &str) -> Result<T, AnnotationProblem>
where
    T: std::str::FromStr<Err = ParseIntError>,
{
    text.parse::<T>()
        .map_err(|problem| AnnotationProblem::NotANumber {
            text: text.to_string(),
            problem,
        })
}

/// What a pod, or one of its containers, asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PodResources {
    cpu_milli: u64,
    memory_mib: u64,
    /// Whole GPUs, of the configured extended resource.
    gpus: u32,
}

impl PodResources {
    /// Containers that run side by side.
    fn plus(self, other: PodResources) -> PodResources {
        PodResources {
            cpu_milli: self.cpu_milli.saturating_add(other.cpu_milli),
            memory_mib: self.memory_mib.saturating_add(other.memory_mib),
            gpus: self.gpus.saturating_add(other.gpus),
        }
    }

    /// An init container, which runs alone before the others.
    fn at_least(self, other: PodResources) -> PodResources {
        PodResources {
            cpu_milli: self.cpu_milli.max(other.cpu_milli),
            memory_mib: self.memory_mib.max(other.memory_mib),
            gpus: self.gpus.max(other.gpus),
        }
    }
}

/// The pod's effective requests as Kubernetes computes them: the larger of the containers'
/// sum and any one init container.
fn pod_resources(
    containers: &[Container],
    init: &[Container],
    gpu_resource: &str,
) -> Result<PodResources, PodError> {
    let mut sum = PodResources::default();
    for (i, c) in containers.iter().enumerate() {
        let at = format!("Pod.spec.containers[{i}]");
        sum = sum.plus(container_resources(c, gpu_resource, &at)?);
    }
    for (i, c) in init.iter().enumerate() {
        let at = format!("Pod.spec.initContainers[{i}]");
        sum = sum.at_least(container_resources(c, gpu_resource, &at)?);
    }
    Ok(sum)
}

/// One container's requests (CPU in milli, memory in MiB, rounded up), `at` naming it.
fn container_resources(
    c: &Container,
    gpu_resource: &str,
    at: &str,
) -> Result<PodResources, PodError> {
    let Some(res) = &c.resources else {
        return Ok(PodResources::default());
    };
    // A request defaults to the limit when only the limit is given.
    let pick = |key: &str| {
        res.requests
            .as_ref()
            .and_then(|r| r.get(key))
            .map(|q| ("requests", q))
            .or_else(|| {
                res.limits
                    .as_ref()
                    .and_then(|l| l.get(key))
                    .map(|q| ("limits", q))
            })
    };
    let field = |kind: &str, key: &str| format!("{at}.resources.{kind}[{key}]");
    let quantity = |kind: &str, key: &str, text: &str| {
        parse_quantity(text).map_err(|problem| PodError::Quantity {
            field: field(kind, key),
            problem,
        })
    };
    let cpu_milli = match pick("cpu") {
        Some((kind, q)) => (quantity(kind, "cpu", &q.0)? * 1000.0).ceil() as u64,
        None => 0,
    };
    let memory_mib = match pick("memory") {
        Some((kind, q)) => (quantity(kind, "memory", &q.0)? / 1_048_576.0).ceil() as u64,
        None => 0,
    };
    let gpus = match pick(gpu_resource) {
        Some((kind, q)) => {
            let count = quantity(kind, gpu_resource, &q.0)?;
            if count.fract() != 0.0 || count > f64::from(u32::MAX) {
                return Err(PodError::FractionalGpus {
                    field: field(kind, gpu_resource),
                    text: q.0.clone(),
                });
            }
            count as u32
        }
        None => 0,
    };
    Ok(PodResources {
        cpu_milli,
        memory_mib,
        gpus,
    })
}

/// A Kubernetes resource quantity (`500m`, `2`, `1.5Gi`, `1e3`) as a number.
pub fn parse_quantity(text: &str) -> Result<f64, QuantityError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let bad = || QuantityError::Malformed(text.to_string());
    if number.is_empty() || number.starts_with('-') {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..].parse().map_err(|_| bad())?;
            if !(-18..=18).contains(&exp) {
                return Err(bad());
            }
            10f64.powi(exp)
        }
        _ => return Err(bad()),
    };
    let v = value * scale;
    if v.is_finite() && v < 9.0e18 {
        Ok(v)
    } else {
        Err(QuantityError::OutOfRange(text.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse_quantity("500m").expect("milli"), 0.5);
        assert_eq!(parse_quantity("2").expect("plain"), 2.0);
        assert_eq!(
            parse_quantity("1.5Gi").expect("binary"),
            1.5 * 1024.0 * 1024.0 * 1024.0
        );
        assert_eq!(parse_quantity("1e3").expect("exponent"), 1000.0);
        assert_eq!(parse_quantity("4k").expect("decimal"), 4000.0);
        for bad in ["", "-1", "1Zi", "abc", "1e99", "Gi"] {
            assert!(parse_quantity(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn quantity_errors_read_as_before() {
        assert_eq!(
            parse_quantity("abc").expect_err("malformed").to_string(),
            "\"abc\" is not a Kubernetes quantity (e.g. 500m, 2, 1.5Gi)"
        );
        assert_eq!(
            parse_quantity("9E").expect_err("too large").to_string(),
            "\"9E\" is out of range"
        );
    }
}
