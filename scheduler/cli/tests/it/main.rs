//! The built `suanli` binary against a real scheduler started in this process on 127.0.0.1
//! (port 0), with a real node agent holding a gRPC session and running replicas as processes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use suanli_agent::config::AgentConfig;
use suanli_agent::discovery::{FixtureProbe, RawGpus};
use suanli_agent::session::Agent;
use suanli_engine::Cid;
use suanli_engine::inventory::FabricPosition;
use suanli_scheduler::config::{AuthConfig, ServerConfig};
use suanli_scheduler::server::RunningServer;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;

mod fake_scheduler;
mod logs;

const JOIN: &str = "itest-join-token";
const ADMIN: &str = "itest-admin-token";
const RESEARCH: &str = "itest-research-token";
const NODE: &str = "cid:itest/local/dc-a/hgx-1";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../node-agent/fixtures");

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        assert_eq!(self.code, 0, "stderr: {}", self.stderr);
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// The binary with a clean environment: no SUANLI_* variables, an empty config home.
fn command(home: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_suanli"));
    cmd.env_remove("SUANLI_ADDR")
        .env_remove("SUANLI_TOKEN")
        .env_remove("SUANLI_CONFIG")
        .env_remove("SUANLI_LOG")
        .env("XDG_CONFIG_HOME", home)
        .env("HOME", home)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn finish(mut cmd: tokio::process::Command) -> Run {
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the binary finishes within 60 s")
        .expect("the binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A scheduler with tokens configured and one agent with a recorded 8-GPU HGX H100 node.
struct Cluster {
    dir: tempfile::TempDir,
    server: RunningServer,
    agent_stop: oneshot::Sender<()>,
    agent: tokio::task::JoinHandle<()>,
    addr: String,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = suanli_scheduler::server::start(ServerConfig {
            grpc_addr: "127.0.0.1:0".parse().expect("addr"),
            http_addr: "127.0.0.1:0".parse().expect("addr"),
            data_dir: dir.path().join("scheduler"),
            policy: "best-fit".into(),
            heartbeat_interval_ms: 200,
            telemetry_interval_ms: 200,
            heartbeat_timeout_ms: 10_000,
            durability: "normal".into(),
            auth: AuthConfig {
                join_tokens: vec![JOIN.into()],
                admin_tokens: vec![ADMIN.into()],
                tenants: BTreeMap::from([("research".to_string(), vec![RESEARCH.to_string()])]),
            },
            ..ServerConfig::default()
        })
        .await
        .expect("scheduler starts");
        let addr = format!("http://{}", server.grpc_addr);
        let text = std::fs::read_to_string(format!("{FIXTURES}/hgx-h100.json")).expect("fixture");
        let recorded: RawGpus = serde_json::from_str(&text).expect("fixture parses");
        let cfg = AgentConfig {
            scheduler: addr.clone(),
            token: JOIN.into(),
            node_cid: NODE.parse::<Cid>().expect("cid"),
            fabric: FabricPosition {
                leaf: "leaf-1".into(),
                spine: "spine-1".into(),
            },
            data_dir: dir.path().join("agent"),
            fixture: None,
            sysfs_root: PathBuf::from(format!("{FIXTURES}/hgx-h100")),
            seed: 7,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            rediscover_every: Duration::from_secs(60),
            default_grace: Duration::from_secs(1),
            kube_api: None,
            kubelet_socket: None,
            gpu_resource: "nvidia.com/gpu".into(),
            pod_devices_every: Duration::from_secs(10),
        };
        let agent = Agent::new(cfg, Arc::new(FixtureProbe::new(recorded, 7))).expect("agent");
        let (agent_stop, stopped) = oneshot::channel::<()>();
        let agent = tokio::spawn(agent.run(async move {
            let _ = stopped.await;
        }));
        let cluster = Cluster {
            dir,
            server,
            agent_stop,
            agent,
            addr,
        };
        cluster
            .wait_until(|c| async move {
                let nodes = c.admin(&["get", "nodes", "-o", "json"]).await.json();
                nodes["items"][0]["condition"] == "ready"
            })
            .await;
        cluster
    }

    fn home(&self) -> PathBuf {
        let home = self.dir.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        home
    }

    /// Runs `suanli --addr <scheduler> <args>` with no token.
    async fn run(&self, args: &[&str]) -> Run {
        let mut cmd = command(&self.home());
        cmd.arg("--addr").arg(&self.addr).args(args);
        finish(cmd).await
    }

    async fn admin(&self, args: &[&str]) -> Run {
        let mut all = vec!["--token", ADMIN];
        all.extend_from_slice(args);
        self.run(&all).await
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    }

    /// Polls `check` every 100 ms, for at most 15 s.
    async fn wait_until<'a, F, Fut>(&'a self, check: F)
    where
        F: Fn(&'a Cluster) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        for _ in 0..150 {
            if check(self).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("condition not reached within 15 s");
    }

    async fn job_state(&self, id: &str) -> String {
        let job = self.admin(&["get", "job", id, "-o", "json"]).await.json();
        job["state"].as_str().unwrap_or_default().to_string()
    }

    /// Waits (at most 10 s) for the agent to have no replica running, so no process outlives
    /// the test: a cancel reaches the agent asynchronously.
    async fn stop(self) {
        let state = self.dir.path().join("agent").join("running.json");
        for _ in 0..100 {
            let idle = std::fs::read_to_string(&state)
                .ok()
                .and_then(|t| serde_json::from_str::<Vec<Value>>(&t).ok())
                .is_some_and(|running| running.is_empty());
            if idle {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.agent_stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.agent).await;
        self.server.shutdown().await;
    }
}

const LONG_JOB: &str = "\
name: itest-train
replicas: 1
gpu:
  policy: exclusive
  count: 2
  models: [H100]
resources: {cpu_milli: 4000, memory_mib: 8192}
command: [sh, -c, 'sleep 30']
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_get_describe_resolve_cancel_with_json() {
    let c = Cluster::start().await;
    let file = c.write("job.yaml", LONG_JOB);

    let job = c.admin(&["submit", "-f", &file, "-o", "json"]).await.json();
    let id = job["id"].as_str().expect("an id").to_string();
    assert_eq!(job["name"], "itest-train");
    assert_eq!(job["spec"]["gpu"]["count"], 2);
    assert_eq!(job["spec"]["gpu"]["policy"], "exclusive");

    c.wait_until(|c| {
        let id = id.clone();
        async move { c.job_state(&id).await == "running" }
    })
    .await;

    let list = c.admin(&["get", "jobs", "-o", "json"]).await.json();
    assert!(
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|j| j["id"] == id.as_str())
    );
    let running = c
        .admin(&["get", "jobs", "--state", "running", "-o", "json"])
        .await
        .json();
    assert_eq!(running["items"].as_array().expect("items").len(), 1);
    let done = c
        .admin(&["get", "jobs", "--state", "succeeded,failed", "-o", "json"])
        .await
        .json();
    assert_eq!(done["items"].as_array().expect("items").len(), 0);
    let bad_state = c.admin(&["get", "jobs", "--state", "sleeping"]).await;
    assert_eq!(bad_state.code, 2, "{bad_state:?}");
    assert!(
        bad_state.stderr.contains("unknown job state \"sleeping\""),
        "{}",
        bad_state.stderr
    );

    let described = c
        .admin(&["describe", "job", &id, "-o", "json"])
        .await
        .json();
    let replica = &described["job"]["placement"]["replicas"][0];
    assert_eq!(replica["node_cid"], NODE);
    let granted: Vec<&str> = replica["gpus"]
        .as_array()
        .expect("gpus")
        .iter()
        .map(|g| g["uuid"].as_str().expect("uuid"))
        .collect();
    assert_eq!(granted.len(), 2);
    assert!(
        described["explanation"]["placed"]["replicas"][0]["score"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
    );
    let transitions: Vec<&str> = described["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["to_state"].as_str().expect("state"))
        .collect();
    assert_eq!(transitions, ["pending", "placed", "running"]);

    let text = c.admin(&["describe", "job", &id]).await;
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout.contains(&format!("replica 0 → {NODE}")),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains(granted[0]), "{}", text.stdout);
    assert!(text.stdout.contains("Why here:"), "{}", text.stdout);

    let node = c.admin(&["get", "node", NODE, "-o", "json"]).await.json();
    let held: Vec<&Value> = node["gpus"]
        .as_array()
        .expect("gpus")
        .iter()
        .filter(|g| g["allocated_milli"] == 1000)
        .collect();
    assert_eq!(held.len(), 2);
    assert!(held.iter().all(|g| g["job_ids"][0] == id.as_str()));
    assert_eq!(node["free_gpus"], 6);

    let six = c
        .admin(&[
            "resolve",
            "cid:itest",
            "--model",
            "H100",
            "--free-gpus",
            "6",
            "-o",
            "json",
        ])
        .await
        .json();
    assert_eq!(six["nodes"].as_array().expect("nodes").len(), 1);
    assert_eq!(six["nodes"][0]["cid"], NODE);
    assert_eq!(six["nodes"][0]["free_gpus"], 6);
    let seven = c
        .admin(&["resolve", "cid:itest", "--free-gpus", "7", "-o", "json"])
        .await
        .json();
    assert_eq!(seven["nodes"].as_array().expect("nodes").len(), 0);
    let other_region = c.admin(&["resolve", "cid:itest/elsewhere"]).await;
    assert_eq!(other_region.stdout, "No node matches.\n");

    let cancelled = c
        .admin(&["cancel", &id, "--reason", "itest done", "-o", "json"])
        .await
        .json();
    assert_eq!(cancelled["state"], "cancelled");
    let again = c.admin(&["cancel", &id]).await;
    assert_eq!(again.code, 1, "{again:?}");
    assert!(
        again.stderr.starts_with("error: failed precondition: "),
        "{}",
        again.stderr
    );

    let missing = c.admin(&["get", "job", "j-99999999"]).await;
    assert_eq!(missing.code, 1, "{missing:?}");
    assert_eq!(
        missing.stderr,
        "error: not found: job j-99999999 not found\n"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_sends_work_back_to_pending_and_describe_says_why() {
    let c = Cluster::start().await;
    let file = c.write("job.yaml", LONG_JOB);
    let id = c.admin(&["submit", "-f", &file, "-o", "json"]).await.json()["id"]
        .as_str()
        .expect("id")
        .to_string();
    c.wait_until(|c| {
        let id = id.clone();
        async move { c.job_state(&id).await == "running" }
    })
    .await;

    let drained = c
        .admin(&[
            "drain",
            NODE,
            "--reason",
            "maintenance",
            "--grace-period-ms",
            "500",
        ])
        .await;
    assert_eq!(drained.code, 0, "{drained:?}");
    assert_eq!(
        drained.stdout,
        format!("node/{NODE} drained; jobs moved back to pending: {id}\n")
    );
    c.wait_until(|c| {
        let id = id.clone();
        async move { c.job_state(&id).await == "pending" }
    })
    .await;
    let why = c
        .admin(&["describe", "job", &id, "-o", "json"])
        .await
        .json();
    let pending = &why["explanation"]["pending"];
    assert_eq!(pending["nodes_considered"], 1);
    assert_eq!(pending["reasons"][0]["node_count"], 1);
    let text = c.admin(&["describe", "job", &id]).await.stdout;
    assert!(text.contains("Why pending:"), "{text}");

    // Back in service, the job is placed again.
    c.admin(&["uncordon", NODE]).await;
    c.wait_until(|c| {
        let id = id.clone();
        async move { c.job_state(&id).await == "running" }
    })
    .await;
    assert_eq!(c.admin(&["cancel", &id]).await.code, 0);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_jobs_from_stdin_and_paging() {
    let c = Cluster::start().await;
    let mut cmd = command(&c.home());
    cmd.args([
        "--addr", &c.addr, "--token", ADMIN, "submit", "-f", "-", "-o", "json",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("runs");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"name: cpu-a\ncommand: [\"true\"]\n---\nname: cpu-b\ncommand: [\"true\"]\n")
            .await
            .expect("write");
    }
    let out = child.wait_with_output().await.expect("finishes");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let submitted: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let names: Vec<&str> = submitted["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|j| j["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["cpu-a", "cpu-b"]);

    let first = c
        .admin(&["get", "jobs", "--limit", "1", "-o", "json"])
        .await
        .json();
    assert_eq!(first["items"].as_array().expect("items").len(), 1);
    assert_eq!(first["total"], 2);
    assert_ne!(first["next_page_token"], "");
    let all = c
        .admin(&["get", "jobs", "--limit", "1", "--all-pages", "-o", "json"])
        .await
        .json();
    assert_eq!(all["items"].as_array().expect("items").len(), 2);
    let table = c.admin(&["get", "jobs", "--limit", "1"]).await;
    assert!(
        table
            .stdout
            .contains("(1 of 2 jobs shown; pass --all-pages for the rest)"),
        "{}",
        table.stdout
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_and_errors_keep_the_servers_words() {
    let c = Cluster::start().await;
    let none = c.run(&["get", "jobs"]).await;
    assert_eq!(none.code, 1, "{none:?}");
    assert!(
        none.stderr
            .starts_with("error: unauthenticated: missing token"),
        "{}",
        none.stderr
    );

    let wrong = c.run(&["--token", "not-a-real-token", "get", "jobs"]).await;
    assert_eq!(wrong.code, 1, "{wrong:?}");
    assert!(
        wrong
            .stderr
            .starts_with("error: unauthenticated: unknown token (pass --token"),
        "{}",
        wrong.stderr
    );

    let tenant = c.run(&["--token", RESEARCH, "cordon", NODE]).await;
    assert_eq!(tenant.code, 1, "{tenant:?}");
    assert!(
        tenant
            .stderr
            .contains("permission denied: tenant research may not do this"),
        "{}",
        tenant.stderr
    );

    let cordoned = c.admin(&["cordon", NODE]).await;
    assert_eq!(cordoned.stdout, format!("node/{NODE} cordoned\n"));
    let nodes = c.admin(&["get", "nodes"]).await;
    assert!(nodes.stdout.contains("Ready,Cordoned"), "{}", nodes.stdout);
    let uncordoned = c.admin(&["uncordon", NODE, "-o", "json"]).await.json();
    assert_eq!(uncordoned["cordoned"], false);

    // The scheduler's own validation names the field; invalid input exits 2.
    let bad_prefix = c.admin(&["resolve", "not a cid"]).await;
    assert_eq!(bad_prefix.code, 2, "{bad_prefix:?}");
    assert!(
        bad_prefix
            .stderr
            .starts_with("error: invalid argument: prefix: "),
        "{}",
        bad_prefix.stderr
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_env_and_flags_in_order() {
    let c = Cluster::start().await;
    let home = c.home();
    let config_dir = home.join("suanli");
    std::fs::create_dir_all(&config_dir).expect("mkdir");
    std::fs::write(
        config_dir.join("config.toml"),
        format!("addr = \"{}\"\ntoken = \"{ADMIN}\"\n", c.addr),
    )
    .expect("write");

    let from_file = finish({
        let mut cmd = command(&home);
        cmd.args(["get", "nodes", "-o", "json"]);
        cmd
    })
    .await;
    assert_eq!(from_file.json()["items"][0]["cid"], NODE);

    let env_wins = finish({
        let mut cmd = command(&home);
        cmd.env("SUANLI_TOKEN", "wrong-token-from-env")
            .args(["get", "nodes"]);
        cmd
    })
    .await;
    assert_eq!(env_wins.code, 1, "{env_wins:?}");
    assert!(
        env_wins.stderr.contains("unknown token"),
        "{}",
        env_wins.stderr
    );

    let flag_wins = finish({
        let mut cmd = command(&home);
        cmd.env("SUANLI_TOKEN", "wrong-token-from-env")
            .args(["--token", ADMIN, "get", "nodes", "-o", "json"]);
        cmd
    })
    .await;
    assert_eq!(flag_wins.json()["items"][0]["cid"], NODE);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_events_until_interrupted() {
    let c = Cluster::start().await;
    let file = c.write("quick.yaml", "name: quick\ncommand: [sh, -c, 'exit 0']\n");
    let id = c.admin(&["submit", "-f", &file, "-o", "json"]).await.json()["id"]
        .as_str()
        .expect("id")
        .to_string();
    let mut cmd = command(&c.home());
    cmd.args([
        "--addr",
        &c.addr,
        "--token",
        ADMIN,
        "watch",
        &id,
        "--from-seq",
        "1",
        "-o",
        "json",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("runs");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut states = Vec::new();
    while states.last().map(String::as_str) != Some("succeeded") {
        let line = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
            .await
            .expect("an event within 15 s")
            .expect("readable")
            .expect("stream open");
        let event: Value = serde_json::from_str(&line).expect("one JSON object per line");
        assert_eq!(event["job_id"], id.as_str());
        states.push(event["to_state"].as_str().expect("state").to_string());
    }
    assert_eq!(states, ["pending", "placed", "running", "succeeded"]);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().expect("running")).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("signal");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after Ctrl-C")
        .expect("status");
    assert_eq!(status.code(), Some(0));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_the_agents_telemetry() {
    let c = Cluster::start().await;
    c.wait_until(|c| async move {
        let t = c.admin(&["top", "-o", "json"]).await.json();
        t["nodes"].as_array().is_some_and(|n| !n.is_empty())
    })
    .await;
    let t = c.admin(&["top", "-o", "json"]).await.json();
    assert_eq!(t["nodes"][0]["node_cid"], NODE);
    assert_eq!(t["nodes"][0]["gpus"].as_array().expect("gpus").len(), 8);
    let table = c.admin(&["top"]).await;
    assert!(table.stdout.starts_with("NODE "), "{}", table.stdout);
    assert!(table.stdout.contains("NVLINK-TX"), "{}", table.stdout);
    c.stop().await;
}

#[tokio::test]
async fn an_unreachable_scheduler_exits_3() {
    // A port that was free a moment ago: nothing listens there now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = command(home.path());
    cmd.args(["--addr", &format!("127.0.0.1:{port}"), "get", "jobs"]);
    let run = finish(cmd).await;
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.starts_with(&format!(
            "error: cannot reach the scheduler at http://127.0.0.1:{port} (from the command line): "
        )),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn a_bad_job_file_exits_2_naming_line_and_field() {
    let home = tempfile::tempdir().expect("tempdir");
    let path = home.path().join("job.yaml");
    std::fs::write(
        &path,
        "name: notebook\nkind: inference\ngpu:\n  policy: shared\n  milli: 1500\n",
    )
    .expect("write");
    let mut cmd = command(home.path());
    // Checked before connecting: the address is never dialed.
    cmd.args(["--addr", "http://127.0.0.1:9", "submit", "-f"])
        .arg(&path);
    let run = finish(cmd).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(
        run.stderr,
        format!(
            "error: {}:5:10: gpu.milli: must be between 1 and 1000, got 1500\n",
            path.display()
        )
    );
    let mut cmd = command(home.path());
    cmd.args(["submit", "-f", "/nonexistent/job.yaml"]);
    let run = finish(cmd).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .starts_with("error: cannot read /nonexistent/job.yaml: "),
        "{}",
        run.stderr
    );
}

/// `node remove` needs a CID (a usage error, exit 2, before anything is dialed) and reaches
/// the scheduler with one (here none listens: exit 3).
#[tokio::test]
async fn node_remove_needs_a_cid() {
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = command(home.path());
    cmd.args(["--addr", "http://127.0.0.1:9", "node", "remove"]);
    let run = finish(cmd).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("<CID>"), "{}", run.stderr);

    let mut cmd = command(home.path());
    cmd.args([
        "--addr",
        "http://127.0.0.1:9",
        "node",
        "remove",
        NODE,
        "--force",
    ]);
    let run = finish(cmd).await;
    assert_eq!(run.code, 3, "{run:?}");
}

const ELASTIC_JOB: &str = "\
name: itest-elastic
replicas: 3
min_replicas: 1
gpu:
  policy: exclusive
  count: 1
  models: [H100]
resources: {cpu_milli: 1000, memory_mib: 1024}
command: [sh, -c, 'sleep 30']
";

/// `suanli update` changes a running job, shrinks an elastic one on the real agent (which
/// stops the highest replica while the job keeps running), and refuses bad flags and bad
/// requests in one line each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_changes_a_running_job_and_refuses_bad_input_in_one_line() {
    let c = Cluster::start().await;
    let file = c.write("elastic.yaml", ELASTIC_JOB);
    let job = c.admin(&["submit", "-f", &file, "-o", "json"]).await.json();
    let id = job["id"].as_str().expect("an id").to_string();
    c.wait_until(|c| {
        let id = id.clone();
        async move { c.job_state(&id).await == "running" }
    })
    .await;

    let text = c
        .admin(&["update", &id, "--priority", "-3", "--time-limit", "2h"])
        .await;
    assert_eq!(text.code, 0, "{text:?}");
    assert_eq!(
        text.stdout,
        format!("job/{id} updated (itest-elastic): priority -3, time limit 7200 s\n")
    );

    let shrunk = c
        .admin(&["update", &id, "--replicas", "2", "-o", "json"])
        .await
        .json();
    assert_eq!(shrunk["spec"]["replicas"], 2);
    assert_eq!(shrunk["spec"]["priority"], -3);
    assert_eq!(shrunk["spec"]["time_limit_s"], 7200);
    let kept: Vec<u64> = shrunk["placement"]["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|r| r["replica"].as_u64().expect("replica"))
        .collect();
    assert_eq!(kept, [0, 1]);
    // The agent stops replica 2; its exit by SIGTERM is not the job's failure.
    let state = c.dir.path().join("agent").join("running.json");
    c.wait_until(|_| {
        let state = state.clone();
        async move {
            std::fs::read_to_string(&state)
                .ok()
                .and_then(|t| serde_json::from_str::<Vec<Value>>(&t).ok())
                .is_some_and(|running| running.len() == 2)
        }
    })
    .await;
    assert_eq!(c.job_state(&id).await, "running");

    let out_of_range =
        "error: invalid argument: replicas: must be between 1 and 2 (the job's min_replicas \
         and replicas), got 3\n"
            .to_string();
    for (args, code, stderr) in [
        (
            vec!["--time-limit", "-5m"],
            2,
            "error: --time-limit: must be positive, got \"-5m\"\n".to_string(),
        ),
        (
            vec!["--time-limit", "0"],
            2,
            "error: --time-limit: must be positive, got \"0\"\n".to_string(),
        ),
        (
            vec!["--time-limit", "soon"],
            2,
            "error: --time-limit: \"soon\" is not a duration; use e.g. 90s, 30m, 2h, 1d or a \
             number of seconds\n"
                .to_string(),
        ),
        (vec!["--replicas", "3"], 2, out_of_range),
        (
            vec!["--replicas", "none"],
            2,
            "error: --replicas: \"none\" is not a number of replicas\n".to_string(),
        ),
        (
            vec![],
            2,
            "error: nothing to change: give --priority, --queue, --preemptible, --time-limit \
             or --replicas\n"
                .to_string(),
        ),
    ] {
        let mut all = vec!["update", id.as_str()];
        all.extend(args.iter().copied());
        let run = c.admin(&all).await;
        assert_eq!(
            (run.code, run.stderr.as_str()),
            (code, stderr.as_str()),
            "{args:?}"
        );
    }
    let missing = c.admin(&["update", "j-99999999", "--priority", "1"]).await;
    assert_eq!(missing.code, 1, "{missing:?}");
    assert_eq!(
        missing.stderr,
        "error: not found: job j-99999999 not found\n"
    );

    assert_eq!(c.admin(&["cancel", &id]).await.code, 0);
    c.stop().await;
}
