//! The cluster as placement sees it, kept in one place: the resource model, the links between
//! GPUs and NICs, the domain catalog, and the gang planner's capacity index over them.
//!
//! The index must change whenever a node's free resources do. [`ClusterModel`] is the only way
//! to allocate or release, and it refreshes the index as it does, so no caller has to
//! remember to.

use crate::cluster::{Allocation, AllocationId, Claim, Cluster, ClusterError, NodeId};
use crate::domain::DomainCatalog;
use crate::gang::{
    FabricIndex, GangOptions, GangPlacement, GangRequest, GangWait, allocate_gang, place_gang,
    place_gang_if_fits,
};
use crate::links::LinkState;

/// A cluster with its links, catalog and capacity index, always in step.
#[derive(Debug, Clone)]
pub struct ClusterModel {
    cluster: Cluster,
    links: LinkState,
    catalog: DomainCatalog,
    index: FabricIndex,
}

impl ClusterModel {
    pub fn new(cluster: Cluster, links: LinkState, catalog: DomainCatalog) -> ClusterModel {
        let index = FabricIndex::new(&cluster, &links, &catalog);
        ClusterModel {
            cluster,
            links,
            catalog,
            index,
        }
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn links(&self) -> &LinkState {
        &self.links
    }

    pub fn catalog(&self) -> &DomainCatalog {
        &self.catalog
    }

    pub fn index(&self) -> &FabricIndex {
        &self.index
    }

    /// Takes one claim's resources.
    pub fn allocate(&mut self, claim: &Claim) -> Result<AllocationId, ClusterError> {
        let id = self.cluster.allocate(claim)?;
        self.index.refresh(&self.cluster, &self.links, claim.node);
        Ok(id)
    }

    /// Takes every replica of a placement, or none.
    pub fn allocate_gang(
        &mut self,
        placement: &GangPlacement,
    ) -> Result<Vec<AllocationId>, ClusterError> {
        let ids = allocate_gang(&mut self.cluster, placement)?;
        for node in placement.nodes() {
            self.index.refresh(&self.cluster, &self.links, node);
        }
        Ok(ids)
    }

    /// Gives an allocation's resources back.
    pub fn release(&mut self, id: AllocationId) -> Result<Allocation, ClusterError> {
        let released = self.cluster.release(id)?;
        self.index
            .refresh(&self.cluster, &self.links, released.node);
        Ok(released)
    }

    /// Marks a node as taking no new work, or taking it again.
    pub fn set_cordoned(&mut self, node: NodeId, cordoned: bool) -> Result<(), ClusterError> {
        self.cluster.set_cordoned(node, cordoned)?;
        self.index.refresh(&self.cluster, &self.links, node);
        Ok(())
    }

    /// Changes the cluster some other way (health, MIG mode) and re-indexes what changed.
    pub fn update(&mut self, change: impl FnOnce(&mut Cluster)) {
        change(&mut self.cluster);
        self.index.sync(&self.cluster, &self.links);
    }

    /// Replaces the live link state (from telemetry) and re-indexes.
    pub fn set_links(&mut self, links: LinkState) {
        let plain = self.index.plain_scan();
        self.links = links;
        self.index = FabricIndex::new(&self.cluster, &self.links, &self.catalog);
        self.index.set_plain_scan(plain);
    }

    /// Places with the plain scan over every node instead of the capacity index: slower,
    /// same decisions. The reference the index is checked against.
    pub fn set_plain_scan(&mut self, on: bool) {
        self.index.set_plain_scan(on);
    }

    /// Where `gang` would go now (nothing is allocated).
    pub fn place_gang(
        &self,
        gang: &GangRequest,
        options: &GangOptions,
    ) -> Result<GangPlacement, GangWait> {
        place_gang(&self.cluster, &self.index, &self.catalog, gang, options)
    }

    /// As [`Self::place_gang`], without working out why when it does not fit.
    pub fn place_gang_if_fits(
        &self,
        gang: &GangRequest,
        options: &GangOptions,
    ) -> Option<GangPlacement> {
        place_gang_if_fits(&self.cluster, &self.index, &self.catalog, gang, options)
    }
}
