//! `suanli-sim replay --quotas`: the queue scheduler with per-tenant quotas on a Philly list.

use std::process::Command;

use serde_json::Value;

fn sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_suanli-sim"))
}

/// Two tenants on 16 GPUs: `flood` submits twenty 8-GPU hour-long jobs in its first 20
/// seconds; `small` submits ten 2-GPU jobs later, while the cluster is full.
fn flood_csv() -> String {
    let mut s = String::from("timestamp,duration,num_gpus,gpu_time,cluster\n");
    for i in 0..20 {
        s.push_str(&format!("2017-10-09 07:00:{i:02},3600.0,8,28800.0,flood\n"));
    }
    for i in 0..10 {
        s.push_str(&format!(
            "2017-10-09 07:{:02}:00,3600.0,2,7200.0,small\n",
            10 + i
        ));
    }
    s
}

fn replay(csv: &std::path::Path, quotas: Option<&str>) -> Value {
    let mut cmd = sim();
    cmd.args(["replay", "--philly"]).arg(csv).args([
        "--cluster-shape",
        "2x8xV100",
        "--policy",
        "best-fit",
        "--json",
    ]);
    if let Some(mode) = quotas {
        cmd.args(["--quotas", mode]);
    }
    let output = cmd.output().expect("run suanli-sim");
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON object")
}

fn mean_delay(summary: &Value, run: &str, tenant: &str) -> f64 {
    summary["policies"][run]["tenants"][tenant]["queueing_delay_s"]["mean"]
        .as_f64()
        .unwrap_or_else(|| panic!("no delay for {run}/{tenant} in {summary}"))
}

#[test]
fn fair_quotas_cut_the_flooded_tenants_wait() {
    let dir = tempfile::tempdir().expect("temp dir");
    let csv = dir.path().join("philly.csv");
    std::fs::write(&csv, flood_csv()).expect("write input");
    let summary = replay(&csv, Some("fair"));
    let plain = mean_delay(&summary, "best-fit", "small");
    let queue = mean_delay(&summary, "queue-quotas-none", "small");
    let fair = mean_delay(&summary, "queue-quotas-fair", "small");
    assert!(fair < plain, "fair {fair} vs FIFO {plain}");
    assert!(fair < queue, "fair {fair} vs queue without quotas {queue}");
    let runs = &summary["policies"];
    assert!(runs["queue-quotas-fair"]["preemptions"].as_u64() > Some(0));
    for run in ["best-fit", "queue-quotas-none", "queue-quotas-fair"] {
        assert_eq!(runs[run]["completed"], 30, "{run}: every job completes");
    }
    // Same input, same seed: the same figures.
    let again = replay(&csv, Some("fair"));
    for run in ["queue-quotas-none", "queue-quotas-fair"] {
        assert_eq!(
            runs[run]["tenants"], again["policies"][run]["tenants"],
            "{run} is deterministic"
        );
    }
}

#[test]
fn quotas_none_keeps_the_plain_replay() {
    let dir = tempfile::tempdir().expect("temp dir");
    let csv = dir.path().join("philly.csv");
    std::fs::write(&csv, flood_csv()).expect("write input");
    let default = replay(&csv, None);
    let none = replay(&csv, Some("none"));
    let fair = replay(&csv, Some("fair"));
    let runs = default["policies"].as_object().expect("policies");
    assert_eq!(runs.keys().collect::<Vec<_>>(), ["best-fit"]);
    let strip = |v: &Value| {
        let mut v = v.clone();
        v.as_object_mut().expect("run").remove("wall_ms");
        v
    };
    assert_eq!(
        strip(&default["policies"]["best-fit"]),
        strip(&none["policies"]["best-fit"])
    );
    assert_eq!(
        strip(&default["policies"]["best-fit"]),
        strip(&fair["policies"]["best-fit"])
    );
    // Strict FIFO by hand: the two 8-GPU slots take flood jobs in arrival order, an hour
    // each, so the 19th flood job ends at 10 h and no small job (arriving at 10..19
    // minutes) starts before then.
    let small = &default["policies"]["best-fit"]["tenants"]["small"];
    assert_eq!(small["jobs"], 10);
    let earliest_delay = (10 * 3600 - 19 * 60) as f64;
    let delay = &small["queueing_delay_s"];
    assert!(delay["p50"].as_f64() >= Some(earliest_delay), "{delay}");
    assert!(delay["mean"].as_f64() >= Some(earliest_delay), "{delay}");
}
