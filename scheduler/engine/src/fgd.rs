//! Fragmentation as FGD measures it (Weng et al., "Beware of Fragmentation", USENIX ATC 2023).
//!
//! A node's fragmentation is the free GPU compute that the expected workload cannot use there,
//! weighted by how often each request shape occurs. For each shape in the [`WorkloadMix`]:
//! if the node can host the shape (enough GPUs with enough compute left, enough CPU, an
//! allowed model), only the GPUs too small for it count as fragment; otherwise all of the
//! node's free GPU compute does (CPU-only shapes count it all, too: they can never use it).
//! FGD places work where fragmentation grows least.

use std::cmp::Ordering;
use std::collections::HashMap;

use crate::cluster::{Cluster, ModelId};
use crate::gpu::GpuModel;
use crate::request::Request;

/// One request shape of the expected workload and how often it occurs.
#[derive(Debug, Clone, PartialEq)]
pub struct MixShape {
    pub cpu_milli: u64,
    /// GPU compute per GPU in milli: below 1000 for a share, 1000 for whole GPUs, 0 for
    /// CPU-only work.
    pub gpu_milli: u32,
    pub gpu_count: u32,
    /// Allowed models; empty means any.
    pub models: Vec<GpuModel>,
    /// Relative frequency; [`WorkloadMix::new`] normalizes the weights to sum to 1.
    pub weight: f64,
}

impl MixShape {
    /// The shape of `request` with weight 1.
    pub fn of(request: &Request) -> MixShape {
        MixShape {
            cpu_milli: request.cpu_milli(),
            gpu_milli: request.gpu_milli_each(),
            gpu_count: request.gpu_count(),
            models: request.models().to_vec(),
            weight: 1.0,
        }
    }

    /// How two shapes are ordered when their counts tie: by CPU, GPU milli, GPU count, models.
    fn key_cmp(&self, other: &MixShape) -> Ordering {
        self.cpu_milli
            .cmp(&other.cpu_milli)
            .then(self.gpu_milli.cmp(&other.gpu_milli))
            .then(self.gpu_count.cmp(&other.gpu_count))
            .then_with(|| model_key(&self.models).cmp(&model_key(&other.models)))
    }
}

fn model_key(models: &[GpuModel]) -> String {
    models
        .iter()
        .map(GpuModel::as_str)
        .collect::<Vec<_>>()
        .join("|")
}

/// Why a workload mix is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MixError {
    #[error("shape {index}: weight {weight} is not a finite, non-negative number")]
    BadWeight { index: usize, weight: f64 },
    #[error("the workload mix is empty or all its weights are zero")]
    Empty,
    #[error("popularity threshold {0} is not a percentage in (0, 100]")]
    BadThreshold(f64),
}

/// The expected workload: request shapes with normalized weights.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadMix {
    shapes: Vec<MixShape>,
}

/// The FGD paper's default popularity threshold for typical shapes.
pub const DEFAULT_POPULARITY_PCT: f64 = 95.0;

impl WorkloadMix {
    /// A mix of the given shapes; weights are normalized to sum to 1.
    pub fn new(mut shapes: Vec<MixShape>) -> Result<WorkloadMix, MixError> {
        for (index, s) in shapes.iter().enumerate() {
            if !s.weight.is_finite() || s.weight < 0.0 {
                return Err(MixError::BadWeight {
                    index,
                    weight: s.weight,
                });
            }
        }
        let sum: f64 = shapes.iter().map(|s| s.weight).sum();
        if shapes.is_empty() || sum <= 0.0 {
            return Err(MixError::Empty);
        }
        for s in &mut shapes {
            s.weight /= sum;
        }
        Ok(WorkloadMix { shapes })
    }

    /// The "typical pods" of the FGD paper: count each distinct shape among `requests`
    /// (CPU-only work included), take the most frequent ones, one at a time, until they cover
    /// `popularity_pct` percent of all requests, and weight them by their share of that cover.
    pub fn typical<'a>(
        requests: impl IntoIterator<Item = &'a Request>,
        popularity_pct: f64,
    ) -> Result<WorkloadMix, MixError> {
        if !(popularity_pct > 0.0 && popularity_pct <= 100.0) {
            return Err(MixError::BadThreshold(popularity_pct));
        }
        let mut index: HashMap<(u64, u32, u32, Vec<GpuModel>), usize> = HashMap::new();
        let mut shapes: Vec<MixShape> = Vec::new();
        let mut total = 0.0;
        for request in requests {
            let mut shape = MixShape::of(request);
            // Kubernetes scores a zero CPU request as 100m; the paper's shapes inherit that.
            if shape.cpu_milli == 0 {
                shape.cpu_milli = 100;
            }
            total += 1.0;
            let key = (
                shape.cpu_milli,
                shape.gpu_milli,
                shape.gpu_count,
                shape.models.clone(),
            );
            match index.get(&key) {
                Some(&i) => shapes[i].weight += 1.0,
                None => {
                    index.insert(key, shapes.len());
                    shapes.push(shape);
                }
            }
        }
        if shapes.is_empty() {
            return Err(MixError::Empty);
        }
        // Most frequent first; equal counts put the larger shape first.
        shapes.sort_by(|a, b| {
            b.weight
                .partial_cmp(&a.weight)
                .unwrap_or(Ordering::Equal)
                .then_with(|| b.key_cmp(a))
        });
        let expected = popularity_pct * total / 100.0;
        let mut covered = 0.0;
        let mut take = 0;
        while covered < expected && take < shapes.len() {
            covered += shapes[take].weight;
            take += 1;
        }
        shapes.truncate(take);
        // Normalized the way the paper's `GetTypicalPods` does it: share of all requests,
        // then divided by the share covered. Fragmentation sums these weights, and FGD's
        // truncated points can flip on the last bit of that sum.
        for s in &mut shapes {
            s.weight = s.weight / total / (covered / total);
        }
        Ok(WorkloadMix { shapes })
    }

    pub fn shapes(&self) -> &[MixShape] {
        &self.shapes
    }

    /// The cluster's fragmentation against this mix, in GPU milli: the sum over nodes of
    /// the free GPU compute the expected workload cannot use there (what FGD minimizes one
    /// placement at a time; the paper's "fragmented GPU" measure).
    pub fn fragmentation(&self, cluster: &Cluster) -> f64 {
        let mix = self.resolve(cluster);
        let mut lefts = Vec::new();
        cluster
            .nodes()
            .iter()
            .map(|node| {
                lefts.clear();
                lefts.extend(node.gpus().iter().map(|g| g.milli_left()));
                let model = node.gpus().first().map(|g| g.model);
                mix.frag(node.cpu_left(), &lefts, model)
            })
            .sum()
    }

    /// The mix with models resolved against one cluster, ready for the hot loop.
    pub(crate) fn resolve(&self, cluster: &Cluster) -> ResolvedMix {
        ResolvedMix {
            items: self
                .shapes
                .iter()
                .map(|s| ResolvedShape {
                    cpu: s.cpu_milli,
                    milli: s.gpu_milli,
                    count: s.gpu_count,
                    any_model: s.models.is_empty(),
                    models: s
                        .models
                        .iter()
                        .filter_map(|m| cluster.model_id(m))
                        .collect(),
                    weight: s.weight,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ResolvedShape {
    cpu: u64,
    milli: u32,
    count: u32,
    any_model: bool,
    models: Vec<ModelId>,
    weight: f64,
}

#[derive(Debug, Clone)]
pub(crate) struct ResolvedMix {
    items: Vec<ResolvedShape>,
}

// Buckets as the paper's simulator keeps them; summing per bucket, in this order, keeps the
// floating-point results (and hence the truncated scores) identical to it.
const Q1_LACK_BOTH: usize = 0;
const Q2_LACK_GPU: usize = 1;
const Q3_SATISFIED: usize = 2;
const Q4_LACK_CPU: usize = 3;
const XL_SATISFIED: usize = 4;
const XR_LACK_CPU: usize = 5;
const NO_ACCESS: usize = 6;

impl ResolvedMix {
    /// The fragmentation of a node with `cpu_left` CPU, GPUs with `lefts` milli free each, and
    /// GPU model `model` (`None` for a node without GPUs).
    pub(crate) fn frag(&self, cpu_left: u64, lefts: &[u32], model: Option<ModelId>) -> f64 {
        let total: u32 = lefts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let total_f = f64::from(total);
        let mut buckets = [0.0f64; 7];
        for s in &self.items {
            let cpu_ok = cpu_left >= s.cpu;
            if s.milli == 0 {
                let b = if cpu_ok { XL_SATISFIED } else { XR_LACK_CPU };
                buckets[b] += s.weight * total_f;
                continue;
            }
            let accessible = s.any_model || model.is_some_and(|m| s.models.contains(&m));
            if !accessible {
                buckets[NO_ACCESS] += s.weight * total_f;
                continue;
            }
            let mut fitting = 0u32;
            let mut too_small = 0u32;
            for &left in lefts {
                if left >= s.milli {
                    fitting += 1;
                } else {
                    too_small += left;
                }
            }
            match (fitting >= s.count, cpu_ok) {
                (true, true) => {
                    buckets[Q2_LACK_GPU] += s.weight * f64::from(too_small);
                    buckets[Q3_SATISFIED] += s.weight * f64::from(total - too_small);
                }
                (true, false) => buckets[Q4_LACK_CPU] += s.weight * total_f,
                (false, true) => buckets[Q2_LACK_GPU] += s.weight * total_f,
                (false, false) => buckets[Q1_LACK_BOTH] += s.weight * total_f,
            }
        }
        let mut sum = 0.0;
        for (i, b) in buckets.iter().enumerate() {
            if i != Q3_SATISFIED {
                sum += b;
            }
        }
        sum
    }
}

/// FGD's 0–100 score for a move that changes a node's fragmentation from `before` to
/// `after`: 50 when unchanged, higher when fragmentation falls. Fractions are truncated.
pub fn fgd_points(before: f64, after: f64) -> i64 {
    let x = (before - after) / 1000.0;
    (1.0 / (1.0 + (-x).exp()) * 100.0) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(cpu: u64, milli: u32, count: u32, weight: f64) -> MixShape {
        MixShape {
            cpu_milli: cpu,
            gpu_milli: milli,
            gpu_count: count,
            models: vec![],
            weight,
        }
    }

    fn resolved(shapes: Vec<MixShape>) -> ResolvedMix {
        let mix = WorkloadMix::new(shapes).expect("valid");
        ResolvedMix {
            items: mix
                .shapes
                .iter()
                .map(|s| ResolvedShape {
                    cpu: s.cpu_milli,
                    milli: s.gpu_milli,
                    count: s.gpu_count,
                    any_model: true,
                    models: vec![],
                    weight: s.weight,
                })
                .collect(),
        }
    }

    #[test]
    fn fragmentation_counts_what_the_mix_cannot_use() {
        // Half the work wants 500m shares, half one whole GPU.
        let mix = resolved(vec![shape(1000, 500, 1, 1.0), shape(1000, 1000, 1, 1.0)]);
        // GPUs with 300m and 1000m left: the 300m is too small for both shapes.
        assert_eq!(mix.frag(8000, &[300, 1000], None), 300.0);
        // Only 300m left: nothing fits, everything is fragment.
        assert_eq!(mix.frag(8000, &[300, 0], None), 300.0);
        // 600m left: fits the share (0 frag), not the whole GPU (600 frag): 0.5 × 600.
        assert_eq!(mix.frag(8000, &[600], None), 300.0);
        // No CPU left: all of it is fragment.
        assert_eq!(mix.frag(0, &[600, 1000], None), 1600.0);
        assert_eq!(mix.frag(8000, &[0, 0], None), 0.0);
    }

    #[test]
    fn cpu_only_shapes_count_all_free_gpu() {
        let mix = resolved(vec![shape(1000, 0, 0, 1.0)]);
        assert_eq!(mix.frag(8000, &[1000, 1000], None), 2000.0);
    }

    #[test]
    fn cluster_fragmentation_sums_the_nodes() {
        use crate::cluster::{Claim, GpuGrant, NodeId, NodeShape};
        let node = |name: &str| NodeShape {
            name: name.into(),
            cpu_milli: 8000,
            memory_mib: 1024,
            gpus: 2,
            model: Some("T4".parse().expect("valid model")),
            gpu_memory_mib: 0,
        };
        let mut cluster = Cluster::from_shapes(&[node("a"), node("b")]).expect("valid");
        let mix = WorkloadMix::new(vec![shape(1000, 500, 1, 1.0), shape(1000, 1000, 1, 1.0)])
            .expect("valid");
        assert_eq!(
            mix.fragmentation(&cluster),
            0.0,
            "idle GPUs fit both shapes"
        );
        let share = |gpu, milli| GpuGrant {
            gpu,
            milli,
            memory_mib: 0,
            exclusive: false,
            mig: None,
        };
        cluster
            .allocate(&Claim {
                node: NodeId(0),
                cpu_milli: 0,
                memory_mib: 0,
                gpus: vec![share(0, 700)],
                affinity: None,
            })
            .expect("fits");
        // Node a: GPU 0 has 300m left, too small for both shapes; GPU 1 is whole.
        assert_eq!(mix.fragmentation(&cluster), 300.0);
    }

    #[test]
    fn points_are_truncated_sigmoid() {
        assert_eq!(fgd_points(100.0, 100.0), 50);
        assert_eq!(fgd_points(0.0, 1000.0), 26);
        assert!(fgd_points(1000.0, 0.0) > 50);
    }

    #[test]
    fn typical_shapes_cover_the_threshold() {
        let share = Request::from_openb(1000, 1, 1, 500, "").expect("valid");
        let whole = Request::from_openb(1000, 1, 1, 1000, "").expect("valid");
        let rare = Request::from_openb(2000, 1, 8, 1000, "").expect("valid");
        let mut all = vec![share.clone(); 6];
        all.extend(vec![whole.clone(); 3]);
        all.push(rare);
        let mix = WorkloadMix::typical(&all, 90.0).expect("valid");
        assert_eq!(mix.shapes().len(), 2, "6 + 3 of 10 covers 90%");
        assert!((mix.shapes()[0].weight - 6.0 / 9.0).abs() < 1e-12);
        assert_eq!(mix.shapes()[1].gpu_milli, 1000);
        assert!(WorkloadMix::typical(&all, 0.0).is_err());
        assert!(matches!(
            WorkloadMix::new(vec![shape(1, 1, 1, f64::NAN)]),
            Err(MixError::BadWeight { index: 0, .. })
        ));
    }
}
