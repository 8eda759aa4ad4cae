//! Gang placement on hand-built fabrics where the best answer is obvious.

use suanli_engine::Cluster;
use suanli_engine::domain::DomainCatalog;
use suanli_engine::gang::{
    FabricIndex, GangOptions, GangWait, Hop, allocate_gang, place_gang, place_gang_once,
};
use suanli_engine::inventory::PortState;
use suanli_engine::job::{
    JobKind, NetworkConstraint, NetworkScope, PlacementConstraints, Requirement, Topology,
};
use suanli_engine::links::LinkState;
use suanli_engine::{GpuDemand, Refusal, Request};

use crate::fabric::{Spec, catalog, domain, gang, inventories, leaf, spec};

fn build(specs: &[Spec]) -> (Cluster, LinkState) {
    let inv = inventories(specs);
    let cluster = Cluster::from_inventories(&inv).expect("valid inventories");
    let links = LinkState::from_inventories(&inv, Some(400.0));
    (cluster, links)
}

fn names(p: &suanli_engine::gang::GangPlacement) -> Vec<String> {
    let mut n: Vec<String> = p.replicas.iter().map(|r| r.node_name.clone()).collect();
    n.sort();
    n
}

fn same_leaf(scope: NetworkScope) -> Topology {
    Topology {
        network: NetworkConstraint {
            scope,
            mode: Requirement::Required,
        },
        ..Topology::default()
    }
}

#[test]
fn one_leaf_beats_a_cheaper_split_across_spines() {
    // The cheap domain has 4 free nodes, but on two spines; the dearer one has them on one leaf.
    let mut specs = leaf("cheap", "s1", "l1", "c1", 2);
    specs.extend(leaf("cheap", "s2", "l2", "c2", 2));
    specs.extend(leaf("dear", "s1", "l1", "d", 4));
    let (cluster, links) = build(&specs);
    let prices = catalog(&[("cheap", 1.0), ("dear", 3.0)], &[]);
    let p = place_gang_once(&cluster, &links, &prices, &gang(4, 8)).expect("fits");
    assert_eq!(p.hop, Hop::SameLeaf);
    assert_eq!(names(&p), ["d-0", "d-1", "d-2", "d-3"]);
    assert_eq!(p.domains, [domain("dear")]);
    // Two replicas fit on one leaf of either domain: the cheaper domain wins at equal hop.
    let p = place_gang_once(&cluster, &links, &prices, &gang(2, 8)).expect("fits");
    assert_eq!(p.hop, Hop::SameLeaf);
    assert_eq!(p.domains, [domain("cheap")]);
}

#[test]
fn tightest_level_first_then_fewest_leaves() {
    // Spine s1: leaves of 2 and 3 free nodes; spine s2: leaf of 1. A gang of 5 stays on s1.
    let mut specs = leaf("a", "s1", "l1", "x", 2);
    specs.extend(leaf("a", "s1", "l2", "y", 3));
    specs.extend(leaf("a", "s2", "l3", "z", 1));
    let (cluster, links) = build(&specs);
    let none = DomainCatalog::default();
    let p = place_gang_once(&cluster, &links, &none, &gang(5, 8)).expect("fits");
    assert_eq!(p.hop, Hop::SameSpine);
    assert_eq!(names(&p), ["x-0", "x-1", "y-0", "y-1", "y-2"]);
    // Eight 2-GPU replicas fit on one 8-GPU node twice over: same node beats same leaf.
    let p = place_gang_once(&cluster, &links, &none, &gang(4, 2)).expect("fits");
    assert_eq!(p.hop, Hop::SameNode);
    let p = place_gang_once(&cluster, &links, &none, &gang(6, 8)).expect("fits");
    assert_eq!(p.hop, Hop::CrossSpine);
    assert_eq!(p.replicas.len(), 6);
}

#[test]
fn same_leaf_required_waits_with_the_largest_leaf() {
    let mut specs = leaf("a", "s1", "l1", "x", 3);
    specs.extend(leaf("a", "s1", "l2", "y", 2));
    let (cluster, links) = build(&specs);
    let mut g = gang(4, 8);
    g.topology = same_leaf(NetworkScope::SameLeaf);
    let wait = place_gang_once(&cluster, &links, &DomainCatalog::default(), &g)
        .expect_err("no leaf has 4 free nodes");
    assert!(matches!(
        wait,
        GangWait::Network {
            best: 3,
            needed: 4,
            ..
        }
    ));
    assert_eq!(
        wait.to_string(),
        "same-leaf required: largest leaf (cid:acme/r1/a s1/l1) has 3 of 4 needed nodes free"
    );
    // Preferred, the same gang spreads over the spine.
    g.topology.network.mode = Requirement::Preferred;
    let p = place_gang_once(&cluster, &links, &DomainCatalog::default(), &g).expect("fits");
    assert_eq!(p.hop, Hop::SameSpine);
}

fn cross(allow: bool, budget: Option<f64>) -> PlacementConstraints {
    PlacementConstraints {
        allow_cross_domain: allow,
        inter_domain_bandwidth_gbps: budget,
        ..PlacementConstraints::default()
    }
}

#[test]
fn a_split_across_domains_happens_only_within_budget() {
    let mut specs = leaf("a", "s1", "l1", "a", 3);
    specs.extend(leaf("b", "s1", "l1", "b", 2));
    let (cluster, links) = build(&specs);
    let wide = catalog(&[("a", 2.0), ("b", 2.0)], &[("a", "b", 400.0)]);
    let g = gang(5, 8).with_replica_traffic(100.0);

    let not_allowed = place_gang_once(&cluster, &links, &wide, &g).expect_err("one domain only");
    assert!(
        matches!(
            not_allowed,
            GangWait::CrossDomainNotAllowed {
                best: 3,
                needed: 5,
                ..
            }
        ),
        "{not_allowed}"
    );

    // Two replicas outside the main domain: 200 Gb/s between domains.
    let p = place_gang_once(
        &cluster,
        &links,
        &wide,
        &g.clone().with_placement(cross(true, Some(200.0))),
    )
    .expect("within budget");
    assert_eq!(p.hop, Hop::CrossDomain);
    assert_eq!(p.inter_domain_gbps, 200.0);
    assert_eq!(p.domains, [domain("a"), domain("b")]);
    assert_eq!(p.replicas.len(), 5);

    let over = place_gang_once(
        &cluster,
        &links,
        &wide,
        &g.clone().with_placement(cross(true, Some(150.0))),
    )
    .expect_err("over budget");
    assert_eq!(
        over.to_string(),
        "a split across domains needs 200 Gb/s between domains, over the job's budget of 150 Gb/s"
    );
    let no_budget = place_gang_once(
        &cluster,
        &links,
        &wide,
        &g.clone().with_placement(cross(true, None)),
    );
    assert!(matches!(
        no_budget,
        Err(GangWait::OverBudget {
            budget_gbps: None,
            ..
        })
    ));

    // The budget allows it, but the link between the domains does not.
    let thin = catalog(&[("a", 2.0), ("b", 2.0)], &[("a", "b", 100.0)]);
    let link = place_gang_once(
        &cluster,
        &links,
        &thin,
        &g.clone().with_placement(cross(true, Some(1000.0))),
    )
    .expect_err("link too thin");
    assert!(
        matches!(
            link,
            GangWait::DomainLink {
                link_gbps: Some(100.0),
                ..
            }
        ),
        "{link}"
    );

    // An elastic gang that cannot split starts inside the best single domain.
    let elastic = g
        .with_placement(cross(true, Some(150.0)))
        .with_min_replicas(3);
    let p = place_gang_once(&cluster, &links, &wide, &elastic).expect("elastic start");
    assert_eq!(p.replicas.len(), 3);
    assert_eq!(p.hop, Hop::SameLeaf);
}

#[test]
fn data_gravity_and_price_choose_the_domain() {
    let mut specs = leaf("a", "s1", "l1", "a", 2);
    specs.extend(leaf("b", "s1", "l1", "b", 2));
    let (cluster, links) = build(&specs);
    let cat = catalog(&[("a", 1.0), ("b", 4.0)], &[("a", "b", 100.0)]);
    let plain = place_gang_once(&cluster, &links, &cat, &gang(2, 8)).expect("fits");
    assert_eq!(plain.domains, [domain("a")], "cheaper");
    let data = PlacementConstraints {
        data: vec![suanli_engine::job::DataVolume {
            name: "corpus".into(),
            domain: domain("b"),
            size_gib: 500,
        }],
        ..PlacementConstraints::default()
    };
    let g = gang(2, 8).with_placement(data);
    let near = place_gang_once(&cluster, &links, &cat, &g).expect("fits");
    assert_eq!(near.domains, [domain("b")], "where the data lives");
    let capped = gang(2, 8).with_placement(PlacementConstraints {
        max_price_per_gpu_hour: Some(2.0),
        ..PlacementConstraints::default()
    });
    let mut big = capped.clone();
    big.replicas = 3;
    big.min_replicas = 3;
    let wait = place_gang_once(&cluster, &links, &cat, &big).expect_err("only domain a is cheap");
    let GangWait::TooFew { counts, .. } = &wait else {
        panic!("expected too few: {wait}");
    };
    assert!(counts.contains(&(Refusal::Price, 2)), "{wait}");
}

#[test]
fn replicas_keep_their_gpus_on_nvlink() {
    // n0 has two GPUs free in each NVLink island; n1 is empty. Replicas of 4 GPUs need
    // one island each.
    let mut a = spec("a", "s1", "l1", "n0");
    a.nvlink_islands = true;
    let mut b = spec("a", "s1", "l1", "n1");
    b.nvlink_islands = true;
    let (mut cluster, links) = build(&[a, b]);
    let busy = Request::new(0, 0, GpuDemand::Exclusive { count: 1 }).expect("valid");
    for gpu in [2u32, 3, 6, 7] {
        let claim = suanli_engine::Claim {
            node: suanli_engine::NodeId(0),
            cpu_milli: busy.cpu_milli(),
            memory_mib: 0,
            gpus: vec![suanli_engine::GpuGrant {
                gpu,
                milli: 1000,
                memory_mib: 81_559,
                exclusive: true,
                mig: None,
            }],
            affinity: busy.affinity(),
        };
        cluster.allocate(&claim).expect("free GPU");
    }
    let mut g = gang(1, 4);
    g.topology.nvlink = Some(Requirement::Required);
    let p = place_gang_once(&cluster, &links, &DomainCatalog::default(), &g).expect("fits");
    assert_eq!(names(&p), ["n1"]);
    assert!(
        p.worst_link_rank < 200,
        "NVLink only: {}",
        p.worst_link_rank
    );
    let gpus: Vec<u32> = p.replicas[0].claim.gpus.iter().map(|g| g.gpu).collect();
    assert!(gpus == [0, 1, 2, 3] || gpus == [4, 5, 6, 7], "{gpus:?}");
    // Two replicas of 4: both islands of n1.
    let mut two = g.clone();
    two.replicas = 2;
    two.min_replicas = 2;
    let p = place_gang_once(&cluster, &links, &DomainCatalog::default(), &two).expect("fits");
    assert_eq!(p.hop, Hop::SameNode);
    assert!(p.worst_link_rank < 200);
    // Three replicas cannot all be on NVLink.
    two.replicas = 3;
    two.min_replicas = 3;
    let wait = place_gang_once(&cluster, &links, &DomainCatalog::default(), &two).expect_err("no");
    assert!(
        wait.to_string().contains("no free NVLink-joined GPU set"),
        "{wait}"
    );
}

#[test]
fn rdma_prefers_gpudirect_nics_and_avoids_impaired_links() {
    let mut phb = spec("a", "s1", "l1", "n0-phb");
    phb.nic = Some((PortState::Active, 400.0, false));
    let mut gdr = spec("a", "s1", "l1", "n1-gdr");
    gdr.nic = Some((PortState::Active, 400.0, true));
    let mut slow = spec("a", "s1", "l1", "n2-slow");
    slow.nic = Some((PortState::Active, 200.0, true));
    let mut down = spec("a", "s1", "l1", "n3-down");
    down.nic = Some((PortState::Down, 0.0, true));
    let (cluster, links) = build(&[phb, gdr, slow, down]);
    let none = DomainCatalog::default();
    let mut g = gang(1, 8);
    g.topology.rdma_required = true;
    let p = place_gang_once(&cluster, &links, &none, &g).expect("fits");
    assert_eq!(names(&p), ["n1-gdr"]);
    assert_eq!(p.gdr_gpus, 8);
    // Four replicas: the node whose NIC is down cannot carry RDMA at all.
    g.replicas = 4;
    g.min_replicas = 4;
    let wait = place_gang_once(&cluster, &links, &none, &g).expect_err("one NIC down");
    let GangWait::TooFew { fit: 3, counts, .. } = &wait else {
        panic!("{wait}");
    };
    assert_eq!(counts, &[(Refusal::RdmaDown, 1)]);
    // Without RDMA required, the healthy-link nodes still come first.
    let plain = place_gang_once(&cluster, &links, &none, &gang(2, 8)).expect("fits");
    assert_eq!(names(&plain), ["n0-phb", "n1-gdr"]);
}

#[test]
fn inference_replicas_spread_over_nodes_and_leaves() {
    let mut specs = leaf("a", "s1", "l1", "x", 2);
    specs.extend(leaf("a", "s1", "l2", "y", 2));
    let (cluster, links) = build(&specs);
    let share = Request::new(
        2_000,
        4_096,
        GpuDemand::Shared {
            milli: 300,
            memory_mib: 8_192,
        },
    )
    .expect("valid");
    let mut g = suanli_engine::gang::GangRequest::new(share, 4).with_kind(JobKind::Inference);
    let p = place_gang_once(&cluster, &links, &DomainCatalog::default(), &g).expect("fits");
    assert_eq!(names(&p), ["x-0", "x-1", "y-0", "y-1"], "one per node");
    g.replicas = 6;
    g.min_replicas = 6;
    let p = place_gang_once(&cluster, &links, &DomainCatalog::default(), &g).expect("fits");
    let on_x = p
        .replicas
        .iter()
        .filter(|r| r.node_name.starts_with('x'))
        .count();
    assert_eq!(on_x, 3, "three per leaf");
}

#[test]
fn elastic_gangs_start_with_what_fits() {
    let specs = leaf("a", "s1", "l1", "x", 5);
    let (cluster, links) = build(&specs);
    let g = gang(8, 8).with_min_replicas(4);
    let p = place_gang_once(&cluster, &links, &DomainCatalog::default(), &g).expect("fits");
    assert_eq!(p.replicas.len(), 5);
    let wait = place_gang_once(
        &cluster,
        &links,
        &DomainCatalog::default(),
        &gang(8, 8).with_min_replicas(6),
    )
    .expect_err("needs 6");
    assert_eq!(wait.to_string(), "room for 5 of 6 replicas");
}

#[test]
fn allocation_is_all_or_nothing() {
    let specs = leaf("a", "s1", "l1", "x", 3);
    let (mut cluster, links) = build(&specs);
    let none = DomainCatalog::default();
    let index = FabricIndex::new(&cluster, &links, &none);
    let p = place_gang(
        &cluster,
        &index,
        &none,
        &gang(3, 8),
        &GangOptions::default(),
    )
    .expect("fits");
    // Someone takes one GPU of the last node before the gang is applied.
    let mut stolen = p.replicas[2].claim.clone();
    stolen.gpus.truncate(1);
    cluster.allocate(&stolen).expect("free GPU");
    let before = cluster.clone();
    assert!(allocate_gang(&mut cluster, &p).is_err());
    assert_eq!(cluster, before, "nothing of the gang stayed allocated");
}

#[test]
fn reserved_nodes_are_avoided() {
    let specs = leaf("a", "s1", "l1", "x", 2);
    let (cluster, links) = build(&specs);
    let none = DomainCatalog::default();
    let index = FabricIndex::new(&cluster, &links, &none);
    let avoid = [true, false];
    let p = place_gang(
        &cluster,
        &index,
        &none,
        &gang(1, 8),
        &GangOptions {
            avoid: Some(&avoid),
        },
    )
    .expect("fits");
    assert_eq!(names(&p), ["x-1"]);
}
