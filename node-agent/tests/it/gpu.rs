//! Checks that need a real NVIDIA GPU and driver; run them with `cargo test -p suanli-agent
//! -- --ignored` on a GPU machine.

use std::collections::BTreeMap;
use std::process::Command;

use suanli_agent::discovery::DiscoveryReport;
use suanli_agent::work::{Assignment, WorkEvent, WorkRunner};
use suanli_engine::inventory::NvmlStatus;

/// `nvidia-smi --query-gpu=uuid,memory.total,mig.mode.current`: `(uuid, MiB, MIG on)`.
fn nvidia_smi_gpus() -> Vec<(String, u64, bool)> {
    let out = Command::new("nvidia-smi")
        .args([
            "--query-gpu=uuid,memory.total,mig.mode.current",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .expect("nvidia-smi runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            assert_eq!(cols.len(), 3, "unexpected nvidia-smi line {line:?}");
            let mib = cols[1].parse().expect("memory.total in MiB");
            (cols[0].to_string(), mib, cols[2] == "Enabled")
        })
        .collect()
}

#[test]
#[ignore = "needs a real NVIDIA GPU"]
fn nvml_discovery_matches_nvidia_smi() {
    let out = Command::new(env!("CARGO_BIN_EXE_suanli-agent"))
        .args(["inventory", "-o", "json", "--node", "gpu-check"])
        .output()
        .expect("agent runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: DiscoveryReport = serde_json::from_slice(&out.stdout).expect("json report");
    let inv = report.inventory;
    assert!(
        matches!(inv.nvml, NvmlStatus::Available { .. }),
        "NVML should be available: {:?}",
        inv.nvml
    );
    inv.validate().expect("a valid inventory");
    let smi = nvidia_smi_gpus();
    assert_eq!(inv.gpus.len(), smi.len());
    for (gpu, (uuid, mib, mig_on)) in inv.gpus.iter().zip(&smi) {
        assert_eq!(&gpu.uuid, uuid);
        assert_eq!(gpu.memory_mib, *mib, "GPU {}", gpu.index);
        assert_eq!(gpu.mig.enabled, *mig_on, "GPU {}", gpu.index);
        assert_eq!(gpu.pci_bus_id.len(), 12, "sysfs form: {}", gpu.pci_bus_id);
    }
    println!("{}", serde_json::to_string_pretty(&inv.gpus).expect("json"));
}

#[tokio::test]
#[ignore = "needs a real NVIDIA GPU"]
async fn a_job_sees_exactly_its_assigned_gpu() {
    let smi = nvidia_smi_gpus();
    let uuid = smi.first().expect("at least one GPU").0.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let (runner, mut events) = WorkRunner::open(dir.path()).expect("runner");
    let script = "printf '%s' \"$CUDA_VISIBLE_DEVICES\"; nvidia-smi -L >&2";
    runner.start(Assignment {
        job_id: "gpu-check".into(),
        replica: 0,
        attempt: 1,
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        gpu_uuids: vec![uuid.clone()],
        rendezvous: None,
    });
    loop {
        match events.recv().await.expect("runner alive") {
            WorkEvent::Exited {
                exit_code, message, ..
            } => {
                assert_eq!(exit_code, 0, "{message}");
                break;
            }
            WorkEvent::Started(_) => {}
        }
    }
    let out = runner.log_path("gpu-check", 0, 1);
    assert_eq!(std::fs::read_to_string(out).expect("job output"), uuid);
}
