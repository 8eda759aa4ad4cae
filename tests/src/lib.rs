//! Harness for end-to-end tests: builds and starts the real `suanli-scheduler`,
//! `suanli-agent` and `suanli` binaries on 127.0.0.1 with free ports, and cleans up after.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const JOIN_TOKEN: &str = "e2e-join-token";
pub const ADMIN_TOKEN: &str = "e2e-admin-token";
pub const RESEARCH_TOKEN: &str = "e2e-research-token";
pub const PROD_TOKEN: &str = "e2e-prod-token";

/// The workspace root (this crate sits in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits inside the workspace")
        .to_path_buf()
}

/// Directory holding the built binaries, building them once per test process.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let status = Command::new(cargo)
            .current_dir(workspace_root())
            .args([
                "build",
                "-p",
                "suanli-scheduler",
                "-p",
                "suanli-agent",
                "-p",
                "suanli-cli",
                "--bins",
            ])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the binaries failed");
        // Tests run from <target>/debug/deps/<test-binary>.
        let exe = std::env::current_exe().expect("test binary path");
        exe.parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps/<exe>")
            .to_path_buf()
    })
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// A child process that is killed when dropped.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running scheduler and how to reach it.
#[derive(Debug)]
pub struct Scheduler {
    pub proc: Proc,
    pub grpc: String,
    pub http: String,
}

pub fn write_scheduler_config(dir: &Path, heartbeat_timeout_ms: u64) -> PathBuf {
    write_scheduler_config_with(dir, heartbeat_timeout_ms, "")
}

/// The test scheduler config with `extra` TOML appended (quotas, preemption, ...).
pub fn write_scheduler_config_with(dir: &Path, heartbeat_timeout_ms: u64, extra: &str) -> PathBuf {
    let path = dir.join("scheduler.toml");
    let mut text = format!(
        r#"policy = "fgd"
heartbeat_timeout_ms = {heartbeat_timeout_ms}
heartbeat_interval_ms = 200
telemetry_interval_ms = 500
max_attempts = 5

[auth]
join_tokens = ["{JOIN_TOKEN}"]
admin_tokens = ["{ADMIN_TOKEN}"]
[auth.tenants]
research = ["{RESEARCH_TOKEN}"]
prod = ["{PROD_TOKEN}"]
"#
    );
    text.push_str(extra);
    std::fs::write(&path, text).expect("config written");
    path
}

/// Starts `suanli-scheduler` on free ports (or on `grpc_addr` when restarting).
pub fn start_scheduler(config: &Path, data_dir: &Path, grpc_addr: Option<&str>) -> Scheduler {
    let mut child = Command::new(bin("suanli-scheduler"))
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--grpc-addr", grpc_addr.unwrap_or("127.0.0.1:0")])
        .args(["--http-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("scheduler starts");
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("listening line");
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
            .to_string()
    };
    Scheduler {
        grpc: field("grpc="),
        http: field("http="),
        proc: Proc {
            child,
            name: "suanli-scheduler".into(),
        },
    }
}

/// Starts `suanli-agent run` with a fixture inventory.
pub fn start_agent(scheduler_grpc: &str, node: &str, fixture: &str, data_dir: &Path) -> Proc {
    start_agent_logging_to(scheduler_grpc, node, fixture, data_dir, Stdio::inherit())
}

/// [`start_agent`], its log (stderr) going to `log`.
pub fn start_agent_logging_to(
    scheduler_grpc: &str,
    node: &str,
    fixture: &str,
    data_dir: &Path,
    log: impl Into<Stdio>,
) -> Proc {
    start_agent_with(scheduler_grpc, node, fixture, data_dir, &[], log)
}

/// [`start_agent_logging_to`] with `extra` arguments after the usual ones.
pub fn start_agent_with(
    scheduler_grpc: &str,
    node: &str,
    fixture: &str,
    data_dir: &Path,
    extra: &[&std::ffi::OsStr],
    log: impl Into<Stdio>,
) -> Proc {
    let fixture = workspace_root().join("node-agent/fixtures").join(fixture);
    let child = Command::new(bin("suanli-agent"))
        .arg("run")
        .args(["--scheduler", &format!("http://{scheduler_grpc}")])
        .args(["--token", JOIN_TOKEN])
        .args([
            "--provider",
            "acme",
            "--region",
            "cn-east-1",
            "--domain",
            "dc-a",
        ])
        .args(["--node", node])
        .arg("--fixture")
        .arg(&fixture)
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env("SUANLI_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("agent starts");
    Proc {
        child,
        name: format!("suanli-agent {node}"),
    }
}

/// Runs the `suanli` CLI against a scheduler with a token; returns its output.
pub fn suanli(addr: &str, token: &str, args: &[&str]) -> Output {
    Command::new(bin("suanli"))
        .args(["--addr", &format!("http://{addr}"), "--token", token])
        .args(args)
        .env_remove("SUANLI_ADDR")
        .env_remove("SUANLI_TOKEN")
        .env("XDG_CONFIG_HOME", "/nonexistent-suanli-e2e")
        .output()
        .expect("suanli runs")
}

/// Runs `suanli ... -o json` and parses stdout, panicking with stderr on failure.
pub fn suanli_json(addr: &str, token: &str, args: &[&str]) -> serde_json::Value {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-o", "json"]);
    let out = suanli(addr, token, &all);
    assert!(
        out.status.success(),
        "suanli {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "suanli {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
