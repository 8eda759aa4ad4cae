//! `suanli logs` against the in-process scheduler and a real agent: following a running
//! replica, whole and tailed logs of a finished one, tenant isolation and bad flags.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{Cluster, RESEARCH, command};

async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .expect("a line within 15 s")
        .expect("readable")
        .expect("stream open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_a_running_replica_then_read_it_whole_and_tailed() {
    let c = Cluster::start().await;
    // The replica writes its second line only once the test has seen the first.
    let go = c.dir.path().join("go");
    let script = format!(
        "echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second; echo oops >&2; \
         echo third",
        go = go.display()
    );
    let file = c.write(
        "talk.yaml",
        &format!("name: talk\ncommand: [sh, -c, {script:?}]\n"),
    );
    let submitted = c
        .run(&["--token", RESEARCH, "submit", "-f", &file, "-o", "json"])
        .await
        .json();
    let id = submitted["id"].as_str().expect("id").to_string();
    c.wait_until(|c| {
        let id = id.clone();
        async move { c.job_state(&id).await == "running" }
    })
    .await;

    let mut cmd = command(&c.home());
    cmd.args(["--addr", &c.addr, "--token", RESEARCH, "logs", &id, "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut follow = cmd.spawn().expect("runs");
    let mut lines = BufReader::new(follow.stdout.take().expect("stdout")).lines();
    assert_eq!(next_line(&mut lines).await, "first");
    assert!(!go.exists(), "the second line is not written yet");
    std::fs::write(&go, "").expect("go");
    assert_eq!(next_line(&mut lines).await, "second");
    assert_eq!(next_line(&mut lines).await, "oops");
    assert_eq!(next_line(&mut lines).await, "third");
    let status = tokio::time::timeout(Duration::from_secs(15), follow.wait())
        .await
        .expect("-f ends when the replica ends")
        .expect("status");
    assert_eq!(status.code(), Some(0));

    c.wait_until(|c| {
        let id = id.clone();
        async move { c.job_state(&id).await == "succeeded" }
    })
    .await;
    let whole = c.run(&["--token", RESEARCH, "logs", &id]).await;
    assert_eq!(whole.code, 0, "{whole:?}");
    assert_eq!(whole.stdout, "first\nsecond\noops\nthird\n");
    let tail = c
        .run(&[
            "--token",
            RESEARCH,
            "logs",
            &id,
            "--tail",
            "2",
            "--attempt",
            "1",
        ])
        .await;
    assert_eq!(tail.stdout, "oops\nthird\n", "{tail:?}");
    let admin = c.admin(&["logs", &id, "--tail", "1", "-f"]).await;
    assert_eq!(admin.stdout, "third\n", "{admin:?}");

    let replica = c
        .run(&["--token", RESEARCH, "logs", &id, "--replica", "5"])
        .await;
    assert_eq!(replica.code, 2, "{replica:?}");
    assert_eq!(
        replica.stderr.trim(),
        format!("error: invalid argument: replica: job {id} has 1 replica (0..0), got 5")
    );
    let attempt = c
        .run(&["--token", RESEARCH, "logs", &id, "--attempt", "3"])
        .await;
    assert_eq!(attempt.code, 2, "{attempt:?}");
    assert!(
        attempt
            .stderr
            .contains(&format!("attempt: job {id} has 1 attempt (1..1), got 3")),
        "{attempt:?}"
    );
    let zero = c.run(&["logs", &id, "--attempt", "0"]).await;
    assert_eq!(zero.code, 2, "{zero:?}");
    assert!(
        zero.stderr.contains("attempt: attempts count from 1"),
        "{zero:?}"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_log_is_not_found_and_a_missing_log_says_so() {
    let c = Cluster::start().await;
    let file = c.write(
        "quick.yaml",
        "name: quick\ncommand: [sh, -c, 'echo secret']\n",
    );
    let id = c.admin(&["submit", "-f", &file, "-o", "json"]).await.json()["id"]
        .as_str()
        .expect("id")
        .to_string();
    c.wait_until(|c| {
        let id = id.clone();
        async move { c.job_state(&id).await == "succeeded" }
    })
    .await;
    let theirs = c.run(&["--token", RESEARCH, "logs", &id]).await;
    assert_eq!(theirs.code, 1, "{theirs:?}");
    assert!(
        theirs
            .stderr
            .contains(&format!("not found: job {id} not found")),
        "{theirs:?}"
    );
    assert!(!theirs.stdout.contains("secret"));
    assert_eq!(c.admin(&["logs", &id]).await.stdout, "secret\n");

    // The agent's copy is gone: the scheduler says which log and where.
    let logs = c.dir.path().join("agent").join("logs");
    std::fs::remove_dir_all(&logs).expect("remove logs");
    let gone = c.admin(&["logs", &id]).await;
    assert_eq!(gone.code, 1, "{gone:?}");
    assert!(
        gone.stderr.contains(&format!(
            "log of job {id} replica 0 attempt 1 not found on node"
        )),
        "{gone:?}"
    );
    c.stop().await;
}
