//! Golden tests: recorded machines (fixture probe + sysfs tree) produce the expected inventory.

use std::fs;
use std::path::Path;
use std::process::Command;

use suanli_agent::discovery::{
    DiscoveryReport, FixtureProbe, NullProbe, SysfsRoot, Warning, discover,
};
use suanli_engine::Cid;
use suanli_engine::inventory::{FabricPosition, LinkPath};

use crate::support::{build_empty, build_h100_host, build_hgx, check_committed_tree, fixtures_dir};

fn cid(node: &str) -> Cid {
    Cid::node("acme", "cn-east-1", "dc-a", node).expect("valid test CID")
}

/// Discovery with warning paths made relative to the root, so snapshots do not depend on
/// where the repository is checked out.
fn run(probe: &dyn suanli_agent::discovery::GpuProbe, root: &Path, node: &str) -> DiscoveryReport {
    let mut report = discover(
        probe,
        &SysfsRoot(root.to_path_buf()),
        cid(node),
        FabricPosition::default(),
    );
    let prefix = format!("{}/", root.display());
    for w in &mut report.warnings {
        w.path = w.path.replace(&prefix, "<root>/");
    }
    report
}

#[test]
fn committed_sysfs_trees_match_their_builders() {
    check_committed_tree("h100-host", build_h100_host);
    check_committed_tree("hgx-h100", build_hgx);
    check_committed_tree("empty", build_empty);
}

#[test]
fn h100_host_golden() {
    let probe = FixtureProbe::load(&fixtures_dir().join("h100-host.json")).expect("fixture loads");
    let report = run(&probe, &fixtures_dir().join("h100-host"), "h100-host");
    report.inventory.validate().expect("a valid inventory");
    let gpu = &report.inventory.gpus[0];
    assert_eq!(gpu.pci_bus_id, "0000:00:06.0");
    assert_eq!(gpu.numa_node, None);
    assert!(gpu.mig.capable && !gpu.mig.enabled);
    assert!(report.inventory.nics.is_empty() && report.warnings.is_empty());
    insta::assert_json_snapshot!("h100_host", report);
}

#[test]
fn hgx_golden() {
    let probe = FixtureProbe::load(&fixtures_dir().join("hgx-h100.json")).expect("fixture loads");
    let report = run(&probe, &fixtures_dir().join("hgx-h100"), "hgx-01");
    let inv = &report.inventory;
    inv.validate().expect("a valid inventory");
    assert_eq!(report.warnings, vec![]);
    assert_eq!((inv.gpus.len(), inv.nics.len(), inv.numa_nodes), (8, 8, 2));
    assert_eq!(inv.gpu_pairs.len(), 28);
    assert!(inv.gpu_pairs.iter().all(|p| p.path == LinkPath::NvLink(18)));
    for pair in &inv.gpu_nic_pairs {
        let expected = match (
            pair.gpu,
            pair.nic.trim_start_matches("mlx5_").parse::<u32>(),
        ) {
            (g, Ok(n)) if g == n => LinkPath::Pix,
            (g, Ok(n)) if g / 2 == n / 2 => LinkPath::Phb,
            (g, Ok(n)) if g / 4 == n / 4 => LinkPath::Node,
            _ => LinkPath::Sys,
        };
        assert_eq!(pair.path, expected, "GPU {} <-> {}", pair.gpu, pair.nic);
        assert_eq!(pair.gdr_local, expected == LinkPath::Pix);
    }
    let mig: Vec<&str> = inv.gpus[7]
        .mig
        .instances
        .iter()
        .map(|m| m.profile.name())
        .collect();
    assert_eq!(mig, ["3g.40gb", "1g.10gb", "1g.10gb", "1g.10gb+me"]);
    insta::assert_json_snapshot!("hgx_h100", report);
}

#[test]
fn empty_machine_golden() {
    let probe = NullProbe::new("NVML unavailable: libnvidia-ml.so.1 not found");
    let report = run(&probe, &fixtures_dir().join("empty"), "bare");
    report
        .inventory
        .validate()
        .expect("no GPUs is a valid inventory");
    insta::assert_json_snapshot!("empty_machine", report);
}

#[test]
fn malformed_sysfs_files_are_reported_with_their_path_and_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_hgx(dir.path());
    let nic3 = dir.path().join("sys/class/infiniband/mlx5_3");
    fs::write(nic3.join("ports/1/rate"), "fast\n").expect("corrupt rate");
    fs::write(nic3.join("device/numa_node"), "zero\n").expect("corrupt numa");
    fs::write(
        dir.path().join("sys/class/infiniband/mlx5_5/node_guid"),
        "??\n",
    )
    .expect("guid");
    let probe = FixtureProbe::load(&fixtures_dir().join("hgx-h100.json")).expect("fixture loads");
    let report = run(&probe, dir.path(), "hgx-01");

    let nic = |name: &str| {
        report
            .inventory
            .nics
            .iter()
            .find(|n| n.name == name)
            .expect("NIC still reported")
    };
    assert!(
        nic("mlx5_3").ports.is_empty(),
        "the malformed port is skipped"
    );
    assert_eq!(nic("mlx5_3").numa_node, None);
    assert_eq!(nic("mlx5_5").node_guid, "");
    assert_eq!(nic("mlx5_4").ports.len(), 1, "other NICs are untouched");
    let paths: Vec<&str> = report.warnings.iter().map(|w| w.path.as_str()).collect();
    assert!(
        paths.contains(&"<root>/sys/class/infiniband/mlx5_3/ports/1/rate"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"<root>/sys/class/infiniband/mlx5_3/device/numa_node"),
        "{paths:?}"
    );
    let rate: &Warning = report
        .warnings
        .iter()
        .find(|w| w.path.ends_with("ports/1/rate"))
        .expect("rate warning");
    assert_eq!(
        rate.problem,
        "\"fast\" is not a rate (expected e.g. \"400 Gb/sec (4X NDR)\")"
    );
    assert!(
        paths.contains(&"<root>/sys/class/infiniband/mlx5_5/node_guid"),
        "{paths:?}"
    );
}

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_suanli-agent"))
}

#[test]
fn cli_inventory_prints_json_for_the_hgx_fixture() {
    let out = agent()
        .args(["inventory", "-o", "json", "--node", "hgx-01"])
        .arg("--fixture")
        .arg(fixtures_dir().join("hgx-h100.json"))
        .arg("--sysfs-root")
        .arg(fixtures_dir().join("hgx-h100"))
        .args(["--cid-prefix", "cid:acme/cn-east-1/dc-a"])
        .output()
        .expect("agent runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: DiscoveryReport =
        serde_json::from_slice(&out.stdout).expect("stdout is the report");
    assert_eq!(
        report.inventory.cid.to_string(),
        "cid:acme/cn-east-1/dc-a/hgx-01"
    );
    assert_eq!(report.inventory.gpus.len(), 8);
}

#[test]
fn cli_inventory_on_this_machine_exits_zero() {
    // Whatever this machine has (normally no GPU): exit 0, and NVML's state is reported.
    let out = agent()
        .args(["inventory", "-o", "yaml", "--node", "ci"])
        .output()
        .expect("agent runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("nvml:"), "{text}");
    if !Path::new("/dev/nvidiactl").exists() {
        assert!(text.contains("state: unavailable"), "{text}");
        assert!(text.contains("reason:"), "{text}");
    }
}

#[test]
fn cli_rejects_a_bad_fixture_with_its_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.json");
    fs::write(&bad, "{\n  \"nvml\": 3\n}\n").expect("write");
    let out = agent()
        .args(["inventory", "--fixture"])
        .arg(&bad)
        .output()
        .expect("agent runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.json line 2"), "{err}");
}
