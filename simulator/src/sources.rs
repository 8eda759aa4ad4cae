//! Turning imported traces into protocol inputs: cluster shapes, timed jobs, seed lists.

use std::str::FromStr;

use suanli_engine::GpuModel;

use crate::import::philly::PhillyJob;
use crate::model::{NodeShape, PodRecord, Request, TimedJob};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("bad cluster shape {0:?}: expected NODESxGPUSxMODEL such as 550x8xV100")]
    ClusterShape(String),
    #[error(
        "bad seed list {0:?}: expected a range such as 42..51 (inclusive) or a list such as 42,43,50"
    )]
    Seeds(String),
}

/// CPU and memory each GPU of a `--cluster-shape` node brings: enough that Philly jobs, which
/// carry no CPU or memory figures, are limited by GPUs only.
pub const SHAPE_CPU_MILLI_PER_GPU: u64 = 8000;
pub const SHAPE_MEMORY_MIB_PER_GPU: u64 = 65_536;

/// `550x8xV100`: 550 nodes of 8 V100 each.
pub fn parse_cluster_shape(text: &str) -> Result<Vec<NodeShape>, ArgError> {
    let bad = || ArgError::ClusterShape(text.to_string());
    let mut parts = text.splitn(3, ['x', 'X']);
    let nodes: u32 = parts
        .next()
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(bad)?;
    let gpus: u32 = parts
        .next()
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(bad)?;
    let model = parts
        .next()
        .and_then(|p| GpuModel::from_str(p.trim()).ok())
        .ok_or_else(bad)?;
    if nodes == 0 || nodes > 1_000_000 || gpus == 0 || gpus > 64 {
        return Err(bad());
    }
    Ok((0..nodes)
        .map(|i| NodeShape {
            name: format!("node-{i:05}"),
            cpu_milli: SHAPE_CPU_MILLI_PER_GPU * u64::from(gpus),
            memory_mib: SHAPE_MEMORY_MIB_PER_GPU * u64::from(gpus),
            gpus,
            model: Some(model.clone()),
        })
        .collect())
}

/// `42..51` (inclusive, as the FGD paper's 10 seeds), `42,43,50`, or a mix `1..3,7`.
pub fn parse_seeds(text: &str) -> Result<Vec<u64>, ArgError> {
    let bad = || ArgError::Seeds(text.to_string());
    let mut seeds = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((lo, hi)) = part.split_once("..") {
            let lo: u64 = lo.trim().parse().map_err(|_| bad())?;
            let hi: u64 = hi
                .trim()
                .trim_start_matches('=')
                .parse()
                .map_err(|_| bad())?;
            if hi < lo || hi - lo > 10_000 {
                return Err(bad());
            }
            seeds.extend(lo..=hi);
        } else {
            seeds.push(part.parse().map_err(|_| bad())?);
        }
    }
    if seeds.is_empty() {
        return Err(bad());
    }
    let mut seen = std::collections::HashSet::new();
    seeds.retain(|s| seen.insert(*s));
    Ok(seeds)
}

/// Philly jobs as gangs on nodes of `gpus_per_node`: a job that fits one node is one
/// replica; a bigger one is split into equal replicas of the largest size that divides it
/// and fits a node. Arrivals count from the first submission; ties keep file order.
pub fn philly_jobs(
    jobs: &[PhillyJob],
    gpus_per_node: u32,
    max_jobs: Option<usize>,
) -> Vec<TimedJob> {
    let mut sorted: Vec<&PhillyJob> = jobs.iter().collect();
    sorted.sort_by_key(|j| (j.submitted, j.line));
    sorted.truncate(max_jobs.unwrap_or(usize::MAX));
    let origin = sorted.first().map_or(0, |j| j.submitted);
    let per_node = gpus_per_node.max(1);
    sorted
        .into_iter()
        .enumerate()
        .map(|(id, job)| {
            let size = (1..=job.num_gpus.min(per_node))
                .rev()
                .find(|s| job.num_gpus % s == 0)
                .unwrap_or(1);
            TimedJob {
                id,
                arrival: (job.submitted - origin).max(0) as u64,
                duration: job.duration,
                replica: Request {
                    cpu_milli: 0,
                    memory_mib: 0,
                    num_gpu: size,
                    gpu_milli: 1000,
                    models: Vec::new(),
                },
                replicas: job.num_gpus / size,
                tenant: job.virtual_cluster.clone(),
            }
        })
        .collect()
}

/// `openb` pods as timed jobs: arrival at `creation_time`, running until `deletion_time`
/// (or the trace's last timestamp when it has none). Pods without a creation time are
/// skipped and counted. The tenant is the pod's QoS class.
pub fn openb_jobs(pods: &[PodRecord], max_jobs: Option<usize>) -> (Vec<TimedJob>, usize) {
    let end = pods
        .iter()
        .filter_map(|p| p.deletion_time.or(p.creation_time))
        .max()
        .unwrap_or(0);
    let mut timed: Vec<&PodRecord> = pods.iter().filter(|p| p.creation_time.is_some()).collect();
    let untimed = pods.len() - timed.len();
    timed.sort_by_key(|p| p.creation_time);
    timed.truncate(max_jobs.unwrap_or(usize::MAX));
    let origin = timed.first().and_then(|p| p.creation_time).unwrap_or(0);
    let jobs = timed
        .into_iter()
        .enumerate()
        .map(|(id, pod)| {
            let created = pod.creation_time.unwrap_or(origin);
            TimedJob {
                id,
                arrival: created - origin,
                duration: pod
                    .deletion_time
                    .unwrap_or(end)
                    .saturating_sub(created)
                    .max(1),
                replica: pod.request.clone(),
                replicas: 1,
                tenant: pod.qos.clone().unwrap_or_else(|| "default".into()),
            }
        })
        .collect();
    (jobs, untimed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_ranges_are_inclusive() {
        assert_eq!(parse_seeds("42..51").ok().map(|s| s.len()), Some(10));
        assert_eq!(parse_seeds("42,43,50").ok(), Some(vec![42, 43, 50]));
        assert_eq!(parse_seeds("1..3,7,2").ok(), Some(vec![1, 2, 3, 7]));
        assert!(parse_seeds("51..42").is_err());
        assert!(parse_seeds("forty").is_err());
        assert!(parse_seeds("").is_err());
    }

    #[test]
    fn cluster_shapes_parse() {
        let nodes = parse_cluster_shape("550x8xV100").expect("valid");
        assert_eq!(nodes.len(), 550);
        assert_eq!(nodes[0].gpus, 8);
        assert_eq!(nodes[0].model.as_ref().map(GpuModel::as_str), Some("V100"));
        for bad in ["550x8", "0x8xV100", "ax8xV100", "4x100xV100", "4x8xV 100"] {
            assert!(parse_cluster_shape(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn big_philly_jobs_become_gangs_of_node_sized_replicas() {
        let job = |line, gpus| PhillyJob {
            line,
            submitted: 1000 + line as i64,
            duration: 60,
            num_gpus: gpus,
            virtual_cluster: "vc".into(),
        };
        let timed = philly_jobs(&[job(2, 16), job(1, 12), job(3, 3)], 8, None);
        assert_eq!(timed[0].arrival, 0);
        assert_eq!((timed[0].replica.num_gpu, timed[0].replicas), (6, 2));
        assert_eq!((timed[1].replica.num_gpu, timed[1].replicas), (8, 2));
        assert_eq!((timed[2].replica.num_gpu, timed[2].replicas), (3, 1));
        assert_eq!(philly_jobs(&[job(1, 1), job(2, 1)], 8, Some(1)).len(), 1);
    }
}
