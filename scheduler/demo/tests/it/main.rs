//! The built `suanli-demo` binary, run the way an installed one is: from a directory with
//! nothing in it, with a temporary directory of its own that must be empty again afterwards.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the demo in `cwd` with `tmp` as its temporary directory and no `SUANLI_*` variables.
async fn run_demo(cwd: &Path, tmp: &Path, args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_suanli-demo"));
    cmd.args(args)
        .current_dir(cwd)
        .env("TMPDIR", tmp)
        .env_remove("SUANLI_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("the demo finishes within 90 s")
        .expect("the demo runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("readable")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn the_demo_runs_to_completion_from_anywhere_and_leaves_nothing() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = run_demo(cwd.path(), tmp.path(), &["--job-seconds", "1"]).await;
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(
        run.stdout.contains("Where the jobs landed"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("MISMATCH"), "{}", run.stdout);
    assert!(
        run.stdout.contains("removed the temporary directory"),
        "{}",
        run.stdout
    );
    assert_eq!(entries(cwd.path()), Vec::<String>::new());
    assert_eq!(entries(tmp.path()), Vec::<String>::new());
}

#[tokio::test]
async fn json_output_reports_every_replica_on_the_recorded_fabric() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = run_demo(
        cwd.path(),
        tmp.path(),
        &["--job-seconds", "1", "-o", "json"],
    )
    .await;
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", run.stdout));
    let jobs = report["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 7, "{report:#}");
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{report:#}");
    let replicas = report["replicas"].as_array().expect("replicas");
    // Two gangs of two, three inference replicas, four notebooks.
    assert_eq!(replicas.len(), 11, "{report:#}");
    assert_eq!(entries(tmp.path()), Vec::<String>::new());
}
