//! `suanli logs` with the real binaries: the agent keeps a replica's output, the scheduler
//! relays it, `-f` prints lines as they are written and ends with the replica.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use suanli_tests::bin;

use super::*;

#[test]
fn logs_follow_a_running_job_and_read_a_finished_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_scheduler_config(dir.path(), 3_000);
    let scheduler = start_scheduler(&config, &dir.path().join("scheduler-data"), None);
    let _agent = start_agent(
        &scheduler.grpc,
        "n1",
        "h100-host.json",
        &dir.path().join("a"),
    );
    wait_for_ready(&scheduler, 1, "the agent to connect");

    // The second line is written only once the test has seen the first.
    let go = dir.path().join("go");
    let script = format!(
        "echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second",
        go = go.display()
    );
    let file = write_job(dir.path(), "talk", 1, &script);
    let id = submit(&scheduler, &file);
    wait_state(&scheduler, &id, "running");

    let mut follow = Command::new(bin("suanli"))
        .args(["--addr", &format!("http://{}", scheduler.grpc)])
        .args(["--token", RESEARCH_TOKEN, "logs", &id, "-f"])
        .env("XDG_CONFIG_HOME", "/nonexistent-suanli-e2e")
        .stdout(Stdio::piped())
        .spawn()
        .expect("suanli runs");
    let mut lines = BufReader::new(follow.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().expect("a line").expect("readable"), "first");
    assert!(!go.exists());
    std::fs::write(&go, "").expect("go");
    assert_eq!(lines.next().expect("a line").expect("readable"), "second");
    assert!(lines.next().is_none(), "-f ends when the replica ends");
    assert!(follow.wait().expect("exits").success());

    wait_state(&scheduler, &id, "succeeded");
    let whole = suanli(&scheduler.grpc, RESEARCH_TOKEN, &["logs", &id]);
    assert_eq!(String::from_utf8_lossy(&whole.stdout), "first\nsecond\n");
    let tail = suanli(
        &scheduler.grpc,
        RESEARCH_TOKEN,
        &["logs", &id, "--tail", "1"],
    );
    assert_eq!(String::from_utf8_lossy(&tail.stdout), "second\n");
    let theirs = suanli(&scheduler.grpc, PROD_TOKEN, &["logs", &id]);
    assert_eq!(theirs.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&theirs.stderr).contains(&format!("job {id} not found")),
        "{theirs:?}"
    );
}
