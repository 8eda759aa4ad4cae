//! End to end: a real scheduler, three real agents with fixture inventories and the `suanli`
//! CLI, all on 127.0.0.1, with faults: `kill -9` of the scheduler mid-stream and of an agent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use suanli_tests::{
    ADMIN_TOKEN, PROD_TOKEN, RESEARCH_TOKEN, Scheduler, start_agent, start_scheduler, suanli,
    suanli_json, wait_for, write_scheduler_config, write_scheduler_config_with,
};

mod identity;
mod logs;
mod rendezvous;

const MINUTE: Duration = Duration::from_secs(60);

fn write_job(dir: &Path, name: &str, gpus: u32, command: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    let text = format!(
        "name: {name}\nkind: training\nreplicas: 1\ntenant: research\n\
         gpu: {{policy: exclusive, count: {gpus}}}\n\
         resources: {{cpu_milli: 100, memory_mib: 256}}\n\
         command: [sh, -c, {command:?}]\n"
    );
    std::fs::write(&path, text).expect("job file written");
    path.display().to_string()
}

// ---- reading the CLI's JSON -------------------------------------------------------------

/// The elements of a list the CLI printed (`{"items": [...]}`).
fn items(list: Value) -> Vec<Value> {
    match list {
        Value::Object(mut map) => match map.remove("items") {
            Some(Value::Array(items)) => items,
            other => panic!("a list has items: {other:?}"),
        },
        Value::Array(items) => items,
        other => panic!("not a list: {other}"),
    }
}

fn job_id(v: &Value) -> String {
    v["id"].as_str().expect("job has an id").to_string()
}

fn state(v: &Value) -> String {
    v["state"].as_str().expect("job has a state").to_lowercase()
}

fn attempts(v: &Value) -> u64 {
    v["attempts"].as_u64().expect("job has attempts")
}

/// (node CID, GPU UUIDs) per replica of a placed job.
fn placement(v: &Value) -> Vec<(String, Vec<String>)> {
    v["placement"]["replicas"]
        .as_array()
        .map(|replicas| {
            replicas
                .iter()
                .map(|r| {
                    let node = r["node_cid"].as_str().expect("replica node").to_string();
                    let gpus = r["gpus"]
                        .as_array()
                        .expect("replica gpus")
                        .iter()
                        .map(|g| g["uuid"].as_str().expect("gpu uuid").to_string())
                        .collect();
                    (node, gpus)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `count` nodes report ready.
fn wait_for_ready(s: &Scheduler, count: usize, what: &str) {
    wait_for(what, MINUTE, || {
        let nodes = items(suanli_json(&s.grpc, ADMIN_TOKEN, &["get", "nodes"]));
        (nodes.iter().filter(|n| n["condition"] == "ready").count() == count).then_some(())
    });
}

fn submit(s: &Scheduler, file: &str) -> String {
    let v = suanli_json(&s.grpc, RESEARCH_TOKEN, &["submit", "-f", file]);
    let job = if v.get("items").is_some() || v.is_array() {
        items(v).remove(0)
    } else {
        v
    };
    job_id(&job)
}

fn get_job(s: &Scheduler, token: &str, id: &str) -> Value {
    suanli_json(&s.grpc, token, &["get", "job", id])
}

fn wait_state(s: &Scheduler, id: &str, want: &str) -> Value {
    let deadline = std::time::Instant::now() + MINUTE;
    loop {
        let v = get_job(s, ADMIN_TOKEN, id);
        if state(&v) == want {
            return v;
        }
        if std::time::Instant::now() > deadline {
            let described = suanli(&s.grpc, ADMIN_TOKEN, &["describe", "job", id]);
            let nodes = suanli(&s.grpc, ADMIN_TOKEN, &["get", "nodes"]);
            panic!(
                "job {id} never became {want}:\n{}\n{}",
                String::from_utf8_lossy(&described.stdout),
                String::from_utf8_lossy(&nodes.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every GPU UUID held by a live job, per node: none may appear twice.
fn assert_no_gpu_double_allocated(s: &Scheduler) {
    let jobs = items(suanli_json(
        &s.grpc,
        ADMIN_TOKEN,
        &["get", "jobs", "--all-pages"],
    ));
    let mut held: BTreeMap<(String, String), String> = BTreeMap::new();
    for j in &jobs {
        if !matches!(state(j).as_str(), "placed" | "running") {
            continue;
        }
        for (node, gpus) in placement(j) {
            for gpu in gpus {
                if let Some(other) = held.insert((node.clone(), gpu.clone()), job_id(j)) {
                    panic!("GPU {gpu} on {node} held by both {other} and {}", job_id(j));
                }
            }
        }
    }
}

#[test]
fn jobs_run_on_real_agents_and_survive_faults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_scheduler_config(dir.path(), 3_000);
    let data = dir.path().join("scheduler-data");
    let mut scheduler = start_scheduler(&config, &data, None);
    let mut agents: Vec<_> = [
        ("n1", "hgx-h100.json"),
        ("n2", "hgx-h100.json"),
        ("n3", "h100-host.json"),
    ]
    .iter()
    .map(|(node, fixture)| {
        let agent_dir = dir.path().join(format!("agent-{node}"));
        (
            node.to_string(),
            start_agent(&scheduler.grpc, node, fixture, &agent_dir),
        )
    })
    .collect();
    wait_for_ready(&scheduler, 3, "three connected nodes");

    // 1. A job runs on a real agent, sees exactly its GPU, and succeeds.
    let out_file = dir.path().join("visible.txt");
    let quick = write_job(
        dir.path(),
        "quick",
        1,
        &format!("echo $CUDA_VISIBLE_DEVICES > {}", out_file.display()),
    );
    let id = submit(&scheduler, &quick);
    let done = wait_state(&scheduler, &id, "succeeded");
    let (_, gpus) = placement(&done).into_iter().next().expect("was placed");
    let seen = std::fs::read_to_string(&out_file).expect("the job wrote its devices");
    assert_eq!(seen.trim(), gpus.join(","), "the job saw exactly its GPUs");

    // A failing command fails the job with its exit code.
    let failing = write_job(dir.path(), "failing", 1, "exit 3");
    let id = submit(&scheduler, &failing);
    let failed = wait_state(&scheduler, &id, "failed");
    assert!(
        failed.to_string().contains("code 3"),
        "the reason names the exit code: {failed}"
    );

    // 2. Another tenant can neither see nor cancel it.
    let out = suanli(&scheduler.grpc, PROD_TOKEN, &["get", "job", &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = suanli(&scheduler.grpc, PROD_TOKEN, &["cancel", &id]);
    assert!(!out.status.success());

    // 3. kill -9 of the scheduler while jobs stream in: every acknowledged job survives,
    //    and no GPU is held twice after the restart.
    let sleeper = write_job(dir.path(), "sleeper", 1, "sleep 120");
    let mut acknowledged = Vec::new();
    for _ in 0..6 {
        acknowledged.push(submit(&scheduler, &sleeper));
    }
    let grpc = scheduler.grpc.clone();
    scheduler.proc.kill9();
    drop(scheduler);
    let scheduler = start_scheduler(&config, &data, Some(&grpc));
    for id in &acknowledged {
        let v = get_job(&scheduler, ADMIN_TOKEN, id);
        assert!(
            matches!(state(&v).as_str(), "pending" | "placed" | "running"),
            "job {id} survived the crash: {v}"
        );
    }
    wait_for_ready(&scheduler, 3, "agents to reconnect");
    for id in &acknowledged {
        wait_state(&scheduler, id, "running");
    }
    assert_no_gpu_double_allocated(&scheduler);

    // 4. kill -9 of an agent: its jobs go back to pending and run elsewhere.
    let victim_job = acknowledged[0].clone();
    let placed = get_job(&scheduler, ADMIN_TOKEN, &victim_job);
    let (victim_node_cid, _) = placement(&placed).into_iter().next().expect("placed");
    let victim = agents
        .iter_mut()
        .find(|(node, _)| victim_node_cid.ends_with(&format!("/{node}")))
        .expect("the node runs one of our agents");
    victim.1.kill9();
    let moved = wait_for("the job to move to another node", MINUTE, || {
        let v = get_job(&scheduler, ADMIN_TOKEN, &victim_job);
        let here = placement(&v);
        (matches!(state(&v).as_str(), "placed" | "running")
            && here.iter().all(|(node, _)| *node != victim_node_cid))
        .then_some(v)
    });
    assert!(attempts(&moved) >= 2, "a second attempt: {moved}");
    assert_no_gpu_double_allocated(&scheduler);

    // Cancelling stops the work on the agent and frees the GPUs.
    for id in &acknowledged {
        let out = suanli(&scheduler.grpc, RESEARCH_TOKEN, &["cancel", id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let states: BTreeSet<String> = acknowledged
        .iter()
        .map(|id| state(&get_job(&scheduler, ADMIN_TOKEN, id)))
        .collect();
    assert_eq!(states, BTreeSet::from(["cancelled".to_string()]));
}

fn write_yaml(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, body).expect("job file written");
    path.display().to_string()
}

/// Pids a command appended to `file`, one per line.
fn pids(file: &Path) -> Vec<u32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie awaiting its reaper is not running.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

/// A training gang spans two real agents; a higher-priority job preempts it, its processes
/// stop, it goes back to pending, and it runs again (attempt 2) once room returns.
#[test]
fn a_gang_is_preempted_on_real_agents_and_runs_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config =
        write_scheduler_config_with(dir.path(), 10_000, "\n[preemption]\nmin_runtime_s = 0\n");
    let data = dir.path().join("scheduler-data");
    let scheduler = start_scheduler(&config, &data, None);
    let _agents: Vec<_> = ["n1", "n2"]
        .iter()
        .map(|node| {
            let agent_dir = dir.path().join(format!("agent-{node}"));
            start_agent(&scheduler.grpc, node, "hgx-h100.json", &agent_dir)
        })
        .collect();
    wait_for_ready(&scheduler, 2, "two connected nodes");

    // Each node has 7 whole GPUs (the fixture's GPU 7 is in MIG mode).
    let gang_pids = dir.path().join("gang-pids.txt");
    let gang = write_yaml(
        dir.path(),
        "gang",
        &format!(
            "name: gang\nkind: training\nreplicas: 2\ntenant: research\npriority: 0\n\
             gpu: {{policy: exclusive, count: 4}}\n\
             resources: {{cpu_milli: 100, memory_mib: 256}}\n\
             command: [sh, -c, \"echo $$ >> {}; sleep 120\"]\n",
            gang_pids.display()
        ),
    );
    let gang_id = submit(&scheduler, &gang);
    let running = wait_state(&scheduler, &gang_id, "running");
    let nodes: BTreeSet<String> = placement(&running).into_iter().map(|(n, _)| n).collect();
    assert_eq!(nodes.len(), 2, "4 + 4 GPUs do not fit one 7-GPU node");
    let first = wait_for("both replicas to report their pids", MINUTE, || {
        let p = pids(&gang_pids);
        (p.len() == 2).then_some(p)
    });

    // 3 GPUs free per node: a 7-GPU job with a higher priority needs the gang's GPUs.
    let urgent = write_yaml(
        dir.path(),
        "urgent",
        "name: urgent\nkind: training\nreplicas: 1\ntenant: research\npriority: 10\n\
         gpu: {policy: exclusive, count: 7}\n\
         resources: {cpu_milli: 100, memory_mib: 256}\n\
         command: [sh, -c, \"sleep 120\"]\n",
    );
    let urgent_id = submit(&scheduler, &urgent);
    wait_state(&scheduler, &urgent_id, "running");
    let preempted = wait_state(&scheduler, &gang_id, "pending");
    assert!(
        placement(&preempted).is_empty(),
        "a pending job holds no GPUs"
    );
    wait_for("the gang's processes to stop", MINUTE, || {
        first.iter().all(|pid| !alive(*pid)).then_some(())
    });
    let events = suanli(&scheduler.grpc, ADMIN_TOKEN, &["describe", "job", &gang_id]);
    let described = String::from_utf8_lossy(&events.stdout);
    assert!(
        described.contains(&format!("preempted for {urgent_id}: it has lower priority")),
        "{described}"
    );
    assert_no_gpu_double_allocated(&scheduler);

    // When the urgent job ends, the gang runs again.
    let out = suanli(&scheduler.grpc, RESEARCH_TOKEN, &["cancel", &urgent_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = wait_state(&scheduler, &gang_id, "running");
    assert_eq!(attempts(&again), 2);
    wait_for("the second attempt's processes", MINUTE, || {
        (pids(&gang_pids).len() == 4).then_some(())
    });
    assert_no_gpu_double_allocated(&scheduler);
    let out = suanli(&scheduler.grpc, RESEARCH_TOKEN, &["cancel", &gang_id]);
    assert!(out.status.success());
}
