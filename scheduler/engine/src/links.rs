//! Live link state: which RDMA NICs of a node are up, degraded or down, and which GPUs reach
//! a healthy NIC over a GPUDirect-capable path.
//!
//! The server derives this from the agent's inventory (NICs, GPU↔NIC paths) and its
//! telemetry (port states and rates); the engine only reads it. A node with no entry is
//! treated as unknown: neither penalised nor credited with GPUDirect RDMA.

use std::collections::HashMap;

use crate::inventory::{Health, NodeInventory, PortState, RdmaNic};

/// What one NIC can carry right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NicCondition {
    /// Every port active at (at least) its rated speed.
    Up,
    /// Usable, but a port is down or runs below its rated speed.
    Degraded { rate_gbps: f64, rated_gbps: f64 },
    /// No active port, or the NIC itself is unhealthy.
    Down,
}

/// One RDMA NIC of a node as the scheduler sees it now.
#[derive(Debug, Clone, PartialEq)]
pub struct NicLink {
    pub name: String,
    pub condition: NicCondition,
    /// GPU positions (in [`crate::Node::gpus`] order) whose path to this NIC is PIX or PXB.
    pub gdr_gpus: Vec<u32>,
}

/// The network side of one node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeNetwork {
    pub nics: Vec<NicLink>,
}

impl NicCondition {
    /// The condition of `nic` given the speed its ports are rated for (`None`: the highest
    /// rate any of its ports reports, so only down ports degrade it).
    pub fn of(nic: &RdmaNic, rated_gbps: Option<f64>) -> NicCondition {
        let active: Vec<f64> = nic
            .ports
            .iter()
            .filter(|p| p.state == PortState::Active)
            .map(|p| p.rate_gbps)
            .collect();
        if nic.health == Health::Unhealthy || active.is_empty() {
            return NicCondition::Down;
        }
        let rated = rated_gbps.unwrap_or_else(|| active.iter().copied().fold(0.0, f64::max));
        let rate = active.iter().copied().fold(f64::INFINITY, f64::min);
        let all_ports_up = active.len() == nic.ports.len();
        if all_ports_up && rate >= rated && nic.health == Health::Healthy {
            NicCondition::Up
        } else {
            NicCondition::Degraded {
                rate_gbps: rate,
                rated_gbps: rated,
            }
        }
    }
}

impl NodeNetwork {
    /// The network state of an inventory's node: NIC conditions from its port states (against
    /// `rated_gbps` when the operator knows the fabric's speed) and GPUDirect paths from its
    /// GPU↔NIC pairs. GPU positions follow the cluster's order (sorted by GPU index).
    pub fn from_inventory(inventory: &NodeInventory, rated_gbps: Option<f64>) -> NodeNetwork {
        let mut indices: Vec<u32> = inventory.gpus.iter().map(|g| g.index).collect();
        indices.sort_unstable();
        let position = |index: u32| indices.iter().position(|i| *i == index);
        let nics = inventory
            .nics
            .iter()
            .map(|nic| NicLink {
                name: nic.name.clone(),
                condition: NicCondition::of(nic, rated_gbps),
                gdr_gpus: inventory
                    .gpu_nic_pairs
                    .iter()
                    .filter(|p| p.nic == nic.name && p.gdr_local)
                    .filter_map(|p| position(p.gpu).and_then(|x| u32::try_from(x).ok()))
                    .collect(),
            })
            .collect();
        NodeNetwork { nics }
    }

    /// NICs not fully up (degraded or down): the node's link penalty.
    pub fn impaired_nics(&self) -> u32 {
        self.nics
            .iter()
            .filter(|n| n.condition != NicCondition::Up)
            .count() as u32
    }

    /// Whether any NIC can carry RDMA traffic at all.
    pub fn any_nic_usable(&self) -> bool {
        self.nics.iter().any(|n| n.condition != NicCondition::Down)
    }

    /// Bit `i`: GPU position `i` reaches a fully-up NIC over PIX/PXB (positions ≥ 64 ignored).
    pub fn gdr_mask(&self) -> u64 {
        let mut mask = 0u64;
        for nic in self.nics.iter().filter(|n| n.condition == NicCondition::Up) {
            for g in nic.gdr_gpus.iter().filter(|g| **g < 64) {
                mask |= 1 << g;
            }
        }
        mask
    }
}

/// Per-node link state for the whole cluster, keyed by node name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkState {
    nodes: HashMap<String, NodeNetwork>,
}

impl LinkState {
    pub fn new() -> LinkState {
        LinkState::default()
    }

    /// Sets (or replaces) one node's network state.
    pub fn set(&mut self, node: impl Into<String>, network: NodeNetwork) {
        self.nodes.insert(node.into(), network);
    }

    /// Forgets a node's network state (it becomes unknown).
    pub fn remove(&mut self, node: &str) {
        self.nodes.remove(node);
    }

    pub fn get(&self, node: &str) -> Option<&NodeNetwork> {
        self.nodes.get(node)
    }

    /// Link state of every inventory, as [`NodeNetwork::from_inventory`] derives it.
    pub fn from_inventories(inventories: &[NodeInventory], rated_gbps: Option<f64>) -> LinkState {
        let mut state = LinkState::new();
        for inv in inventories {
            if let Some(name) = inv.cid.node_name() {
                state.set(name, NodeNetwork::from_inventory(inv, rated_gbps));
            }
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{LinkLayer, NicPort};

    fn nic(rates: &[(PortState, f64)]) -> RdmaNic {
        RdmaNic {
            name: "mlx5_0".into(),
            pci_bus_id: "0000:1a:00.0".into(),
            numa_node: None,
            node_guid: String::new(),
            firmware: String::new(),
            netdevs: vec![],
            ports: rates
                .iter()
                .enumerate()
                .map(|(i, (state, rate))| NicPort {
                    port: i as u32 + 1,
                    state: *state,
                    link_layer: LinkLayer::Infiniband,
                    rate_gbps: *rate,
                    gid_type: String::new(),
                })
                .collect(),
            health: Health::Healthy,
        }
    }

    #[test]
    fn ports_decide_the_condition() {
        let up = nic(&[(PortState::Active, 400.0)]);
        assert_eq!(NicCondition::of(&up, Some(400.0)), NicCondition::Up);
        assert_eq!(
            NicCondition::of(&up, Some(800.0)),
            NicCondition::Degraded {
                rate_gbps: 400.0,
                rated_gbps: 800.0
            },
            "below its rated speed"
        );
        let half = nic(&[(PortState::Active, 200.0), (PortState::Down, 0.0)]);
        assert!(matches!(
            NicCondition::of(&half, None),
            NicCondition::Degraded { .. }
        ));
        let down = nic(&[(PortState::Down, 0.0)]);
        assert_eq!(NicCondition::of(&down, None), NicCondition::Down);
    }
}
