//! Facts about scheduling domains that no agent reports: each domain's price per GPU hour and
//! the links between domains (bandwidth, latency). The operator configures them; the gang
//! planner uses them to choose a domain and to judge whether a split across domains fits.

use std::fmt;

use crate::cid::{Cid, Level};
use crate::job::PlacementConstraints;

/// One domain's price.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainInfo {
    /// `cid:provider/region/domain`.
    pub cid: Cid,
    pub price_per_gpu_hour: f64,
}

/// A link between two domains (symmetric).
#[derive(Debug, Clone, PartialEq)]
pub struct DomainLink {
    pub a: Cid,
    pub b: Cid,
    pub bandwidth_gbps: f64,
    pub latency_ms: f64,
}

/// Why a catalog cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CatalogError {
    #[error("domains[{index}]: {cid} is not a domain identifier (provider/region/domain)")]
    NotADomain { index: usize, cid: String },
    #[error("domains[{index}]: {cid} appears twice")]
    Duplicate { index: usize, cid: String },
    #[error("{field}: must be a finite number ≥ 0, got {got}")]
    BadNumber { field: String, got: f64 },
    #[error("links[{index}]: {cid} is not a domain identifier")]
    LinkNotADomain { index: usize, cid: String },
}

/// Prices and inter-domain links, the input the gang planner reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DomainCatalog {
    domains: Vec<DomainInfo>,
    links: Vec<DomainLink>,
}

fn check_number(field: String, got: f64) -> Result<(), CatalogError> {
    if got.is_finite() && got >= 0.0 {
        Ok(())
    } else {
        Err(CatalogError::BadNumber { field, got })
    }
}

impl DomainCatalog {
    /// A catalog after checking every identifier and number.
    pub fn new(
        domains: Vec<DomainInfo>,
        links: Vec<DomainLink>,
    ) -> Result<DomainCatalog, CatalogError> {
        for (index, d) in domains.iter().enumerate() {
            if d.cid.level() != Level::Domain {
                return Err(CatalogError::NotADomain {
                    index,
                    cid: d.cid.to_string(),
                });
            }
            if domains[..index].iter().any(|o| o.cid == d.cid) {
                return Err(CatalogError::Duplicate {
                    index,
                    cid: d.cid.to_string(),
                });
            }
            check_number(
                format!("domains[{index}].price_per_gpu_hour"),
                d.price_per_gpu_hour,
            )?;
        }
        for (index, l) in links.iter().enumerate() {
            for cid in [&l.a, &l.b] {
                if cid.level() != Level::Domain {
                    return Err(CatalogError::LinkNotADomain {
                        index,
                        cid: cid.to_string(),
                    });
                }
            }
            check_number(format!("links[{index}].bandwidth_gbps"), l.bandwidth_gbps)?;
            check_number(format!("links[{index}].latency_ms"), l.latency_ms)?;
        }
        Ok(DomainCatalog { domains, links })
    }

    pub fn domains(&self) -> &[DomainInfo] {
        &self.domains
    }

    pub fn price(&self, domain: &Cid) -> Option<f64> {
        self.domains
            .iter()
            .find(|d| &d.cid == domain)
            .map(|d| d.price_per_gpu_hour)
    }

    /// The link between two different domains, if one is configured.
    pub fn link(&self, a: &Cid, b: &Cid) -> Option<&DomainLink> {
        self.links
            .iter()
            .find(|l| (&l.a == a && &l.b == b) || (&l.a == b && &l.b == a))
    }

    /// Seconds to pull the job's data volumes that live outside `domain` into it: the data
    /// gravity term. A volume with no configured link to `domain` counts as unreachable
    /// (`f64::INFINITY`).
    pub fn data_pull_seconds(&self, domain: &Cid, placement: &PlacementConstraints) -> f64 {
        placement
            .data
            .iter()
            .filter(|v| !(v.domain.is_prefix_of(domain) || domain.is_prefix_of(&v.domain)))
            .map(|v| match self.link(domain, &v.domain) {
                Some(l) if l.bandwidth_gbps > 0.0 => v.size_gib as f64 * 8.0 / l.bandwidth_gbps,
                _ if v.size_gib == 0 => 0.0,
                _ => f64::INFINITY,
            })
            .sum()
    }
}

impl fmt::Display for DomainLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ↔ {}: {} Gb/s, {} ms",
            self.a, self.b, self.bandwidth_gbps, self.latency_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::DataVolume;

    fn cid(s: &str) -> Cid {
        s.parse().expect("valid cid")
    }

    #[test]
    fn data_gravity_counts_transfer_time() {
        let catalog = DomainCatalog::new(
            vec![
                DomainInfo {
                    cid: cid("cid:acme/r1/a"),
                    price_per_gpu_hour: 2.0,
                },
                DomainInfo {
                    cid: cid("cid:acme/r1/b"),
                    price_per_gpu_hour: 1.0,
                },
            ],
            vec![DomainLink {
                a: cid("cid:acme/r1/a"),
                b: cid("cid:acme/r1/b"),
                bandwidth_gbps: 100.0,
                latency_ms: 2.0,
            }],
        )
        .expect("valid catalog");
        let placement = PlacementConstraints {
            data: vec![DataVolume {
                name: "corpus".into(),
                domain: cid("cid:acme/r1/a"),
                size_gib: 1000,
            }],
            ..PlacementConstraints::default()
        };
        assert_eq!(
            catalog.data_pull_seconds(&cid("cid:acme/r1/a"), &placement),
            0.0
        );
        assert_eq!(
            catalog.data_pull_seconds(&cid("cid:acme/r1/b"), &placement),
            80.0
        );
        assert_eq!(
            catalog.data_pull_seconds(&cid("cid:acme/r1/c"), &placement),
            f64::INFINITY
        );
        let bad = DomainCatalog::new(
            vec![DomainInfo {
                cid: cid("cid:acme/r1/a/n1"),
                price_per_gpu_hour: 1.0,
            }],
            vec![],
        );
        assert!(matches!(
            bad,
            Err(CatalogError::NotADomain { index: 0, .. })
        ));
    }
}
