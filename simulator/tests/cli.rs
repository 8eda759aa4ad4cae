//! End-to-end: the built `suanli-sim` binary.

use std::process::Command;

fn sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_suanli-sim"))
}

fn write(dir: &std::path::Path, name: &str, contents: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write input");
    path
}

const NODES: &str = "sn,cpu_milli,memory_mib,gpu,model\n\
    n0,64000,262144,8,V100M32\n\
    n1,64000,262144,8,V100M32\n\
    n2,32000,131072,2,T4\n\
    n3,32000,131072,2,T4\n\
    c0,32000,131072,0,\n";

fn pods() -> String {
    let mut s = String::from("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n");
    let shapes = [
        "4000,8192,1,1000,",
        "2000,4096,1,500,",
        "2000,4096,1,250,",
        "8000,16384,2,1000,",
        "1000,2048,0,0,",
        "4000,8192,1,700,T4",
    ];
    for (i, shape) in shapes.iter().cycle().take(30).enumerate() {
        s.push_str(&format!("p{i},{shape}\n"));
    }
    s
}

#[test]
fn fill_json_is_one_object_with_means_over_seeds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nodes = write(dir.path(), "nodes.csv", NODES);
    let pods = write(dir.path(), "pods.csv", &pods());
    let out = dir.path().join("out");
    let output = sim()
        .args(["fill", "--nodes"])
        .arg(&nodes)
        .arg("--pods")
        .arg(&pods)
        .args([
            "--policy",
            "fgd,best-fit",
            "--seeds",
            "42..44",
            "--json",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("run suanli-sim");
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    // Exactly one JSON value on stdout, nothing else.
    let mut stream = serde_json::Deserializer::from_str(&stdout).into_iter::<serde_json::Value>();
    let value = stream.next().expect("one value").expect("valid JSON");
    assert!(
        stream.next().is_none(),
        "nothing after the object: {stdout}"
    );
    assert!(value.is_object());
    assert_eq!(value["nodes"], 4, "GPU nodes only");
    assert_eq!(value["gpus"], 20);
    for policy in ["fgd", "best-fit"] {
        let p = &value["policies"][policy];
        assert_eq!(p["seeds"], serde_json::json!([42, 43, 44]));
        let unalloc = p["unallocated_gpu_pct_at_100"].as_f64().expect("number");
        let alloc = p["alloc_pct_at_100"].as_f64().expect("number");
        assert!((unalloc + alloc - 100.0).abs() < 1e-3);
        assert!(p["wall_ms"].as_f64().is_some());
        assert_eq!(p["per_seed"].as_array().map(Vec::len), Some(3));
    }
    for file in [
        "summary.json",
        "alloc_vs_arrived.csv",
        "alloc_vs_arrived.svg",
    ] {
        assert!(out.join(file).is_file(), "{file} written");
    }
    let csv = std::fs::read_to_string(out.join("alloc_vs_arrived.csv")).expect("csv");
    assert!(csv.starts_with("policy,arrived_pct,alloc_pct\nfgd,0,"));
    let svg = std::fs::read_to_string(out.join("alloc_vs_arrived.svg")).expect("svg");
    assert_eq!(
        svg.matches("<polyline").count(),
        3,
        "two policies and the ideal diagonal"
    );
}

#[test]
fn bad_rows_fail_with_location_or_are_skipped_and_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nodes = write(dir.path(), "nodes.csv", NODES);
    let pods = write(dir.path(), "pods.csv", &(pods() + "bad,1000,1024,3,200,\n"));
    let output = sim()
        .args(["fill", "--nodes"])
        .arg(&nodes)
        .arg("--pods")
        .arg(&pods)
        .args(["--policy", "best-fit", "--seeds", "1", "--json"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("pods.csv:32:5 (gpu_milli): multi-GPU pod (num_gpu 3)"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());

    let output = sim()
        .args(["fill", "--nodes"])
        .arg(&nodes)
        .arg("--pods")
        .arg(&pods)
        .args([
            "--policy",
            "best-fit",
            "--seeds",
            "1",
            "--json",
            "--skip-bad-rows",
        ])
        .output()
        .expect("run");
    assert!(output.status.success());
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(value["skipped_rows"]["pods"], 1);
    assert_eq!(value["pods"], 30);
    assert!(String::from_utf8_lossy(&output.stderr).contains("skipped 1 malformed row(s)"));
}

#[test]
fn replay_json_on_a_philly_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut jobs = String::from("timestamp,duration,num_gpus,gpu_time,cluster\n");
    for i in 0..40 {
        let gpus = [1, 2, 4, 8, 16][i % 5];
        jobs.push_str(&format!(
            "2017-10-09 07:{:02}:00,{}.0,{gpus},0,vc{}\n",
            i,
            600 + 60 * i,
            i % 3
        ));
    }
    let file = write(dir.path(), "philly.csv", &jobs);
    let out = dir.path().join("replay");
    let output = sim()
        .args(["replay", "--philly"])
        .arg(&file)
        .args([
            "--cluster-shape",
            "4x8xV100",
            "--policy",
            "fgd,best-fit,random",
            "--json",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("run");
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(value["jobs"], 40);
    assert_eq!(value["gpus"], 32);
    let fgd = &value["policies"]["fgd"];
    assert_eq!(
        fgd["completed"].as_u64().unwrap_or(0) + fgd["rejected"].as_u64().unwrap_or(0),
        40
    );
    assert_eq!(fgd["tenants"].as_object().map(|t| t.len()), Some(3));
    for file in [
        "summary.json",
        "utilization.csv",
        "queueing_delay.csv",
        "utilization.svg",
        "queueing_delay_cdf.svg",
    ] {
        assert!(out.join(file).is_file(), "{file} written");
    }
}

#[test]
fn demo_runs_without_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = sim()
        .arg("demo")
        .current_dir(dir.path())
        .output()
        .expect("run demo");
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("demo fill (synthetic)"), "{stdout}");
    assert!(stdout.contains("demo replay (synthetic)"), "{stdout}");
    for policy in [
        "random",
        "dot-product",
        "gpu-clustering",
        "gpu-packing",
        "best-fit",
        "fgd",
    ] {
        assert!(
            stdout.matches(policy).count() >= 2,
            "{policy} in both tables"
        );
    }
}

#[test]
fn usage_errors_exit_nonzero() {
    let output = sim()
        .args(["fill", "--policy", "worst-fit"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown policy \"worst-fit\""));
    let output = sim()
        .args(["fill", "--seeds", "9..1"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
}
