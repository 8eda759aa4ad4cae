//! The HTTP listener's bounds over real sockets: bodies past their limit (413, while read),
//! requests naming too many nodes (400), stalled heads, bodies and readers (cut off), idle
//! connections (closed), and more extender calls at once than it takes (503, and the rest
//! answered).

use std::time::Duration;

use serde_json::{Value, json};
use suanli_scheduler::config::HttpSettings;
use suanli_scheduler::extender::{
    MAX_BIND_BODY_BYTES, MAX_NODES, MAX_SCORING_BODY_BYTES, MAX_SCORING_CALLS,
};
use suanli_scheduler::server::RunningServer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::TestServer;

/// Generous: only a server that never lets go takes this long.
const PATIENCE: Duration = Duration::from_secs(20);

async fn serve(http: HttpSettings) -> TestServer {
    TestServer::start_with(|c| c.http = http).await
}

/// A pod that asks for no GPU: every node passes it, so a filter echoes every node back.
fn cpu_pod() -> Value {
    json!({
        "metadata": {"name": "p", "namespace": "ml", "uid": "u"},
        "spec": {"containers": [{"name": "main", "image": "app:1"}]},
    })
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i}")).collect()
}

/// One response as read off a socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| Value::String(self.body.clone()))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one response: its head, then `Content-Length` bytes of body.
async fn read_answer(stream: &mut (impl AsyncRead + Unpin)) -> Answer {
    let read = async {
        let mut raw = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        let head_end = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = stream.read(&mut buf).await.expect("reads a response");
            assert!(n > 0, "closed before a response head: {raw:?}");
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
        let mut answer = Answer {
            status: head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .expect("a status line"),
            head,
            body: String::new(),
        };
        let length: usize = answer
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .expect("a Content-Length");
        let mut body = raw.split_off(head_end + 4);
        while body.len() < length {
            let n = stream.read(&mut buf).await.expect("reads the body");
            assert!(n > 0, "closed inside the body");
            body.extend_from_slice(&buf[..n]);
        }
        answer.body = String::from_utf8(body).expect("utf-8");
        answer
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("an answer in time")
}

/// Whether the server hangs up (end of stream or reset) within [`PATIENCE`]; the bytes it
/// sent before are dropped.
async fn hung_up(stream: &mut (impl AsyncRead + Unpin)) -> bool {
    let drain = async {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(PATIENCE, drain).await.is_ok()
}

async fn connect(server: &RunningServer) -> TcpStream {
    TcpStream::connect(server.http_addr)
        .await
        .expect("connects")
}

/// One request on its own connection.
async fn send(server: &RunningServer, method: &str, path: &str, body: &str) -> Answer {
    let mut stream = connect(server).await;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: suanli\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("sends");
    read_answer(&mut stream).await
}

async fn post(server: &RunningServer, path: &str, body: &Value) -> Answer {
    send(server, "POST", path, &body.to_string()).await
}

async fn metrics(server: &RunningServer) -> String {
    let answer = send(server, "GET", "/metrics", "").await;
    assert_eq!(answer.status, 200);
    answer.body
}

fn counted(metrics: &str, verb: &str, outcome: &str) -> u64 {
    let prefix =
        format!("suanli_extender_requests_total{{verb=\"{verb}\",outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in:\n{metrics}"))
}

#[tokio::test]
async fn bodies_past_their_limit_are_refused_while_read() {
    let server = serve(HttpSettings::default()).await;

    // Declared too large: refused before a byte of the body is read.
    let mut stream = connect(&server).await;
    let head = format!(
        "POST /extender/filter HTTP/1.1\r\nHost: suanli\r\nContent-Length: {}\r\n\r\n",
        MAX_SCORING_BODY_BYTES + 1
    );
    stream.write_all(head.as_bytes()).await.expect("sends");
    let answer = read_answer(&mut stream).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(
        answer.json()["Error"],
        "filter: request body is larger than the limit of 32 MiB"
    );

    // Sent in chunks with no length: cut off once it passes the limit.
    let (mut read, mut write) = connect(&server).await.into_split();
    let writer = tokio::spawn(async move {
        let head = "POST /extender/prioritize HTTP/1.1\r\nHost: suanli\r\nTransfer-Encoding: chunked\r\n\r\n";
        write.write_all(head.as_bytes()).await?;
        let start = r#"{"NodeNames": ["#;
        write
            .write_all(format!("{:x}\r\n{start}\r\n", start.len()).as_bytes())
            .await?;
        // 1 MiB chunks of names, until the server hangs up (well before 256 MiB).
        let names = "\"node-1234\",".repeat(0x100000 / 12) + &" ".repeat(0x100000 % 12);
        let chunk = format!("{:x}\r\n{names}\r\n", names.len());
        for _ in 0..256 {
            write.write_all(chunk.as_bytes()).await?;
        }
        std::io::Result::Ok(())
    });
    let answer = read_answer(&mut read).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(
        answer.body,
        "prioritize: request body is larger than the limit of 32 MiB"
    );
    assert!(
        writer.await.expect("writer").is_err(),
        "the server hung up before the whole body was sent"
    );

    // A bind names one pod and one node.
    let bind = json!({"PodName": "x".repeat(MAX_BIND_BODY_BYTES), "PodNamespace": "ml", "PodUID": "u", "Node": "n1"});
    let answer = post(&server, "/extender/bind", &bind).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(
        answer.json()["Error"],
        "bind: request body is larger than the limit of 64 KiB"
    );

    // Every route has a limit; /metrics and /healthz take no body.
    let answer = send(&server, "GET", "/healthz", &" ".repeat(100 * 1024)).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(answer.body.contains("limit of 64 KiB"), "{answer:?}");
    let answer = send(&server, "GET", "/healthz", "").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok\n"));

    let metrics = metrics(&server).await;
    assert_eq!(counted(&metrics, "filter", "too_large"), 1);
    assert_eq!(counted(&metrics, "prioritize", "too_large"), 1);
    assert_eq!(counted(&metrics, "bind", "too_large"), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn requests_naming_more_nodes_than_the_limit_are_refused() {
    let server = serve(HttpSettings::default()).await;
    let too_many = MAX_NODES + 1;
    let limit =
        format!("{too_many} nodes, more than the limit of {MAX_NODES} one request may name");

    let args = json!({"Pod": cpu_pod(), "Nodes": null, "NodeNames": names(too_many)});
    let answer = post(&server, "/extender/filter", &args).await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.json()["Error"],
        format!("filter: request body field NodeNames: {limit}")
    );

    // As many as the limit are fine.
    let args = json!({"Pod": cpu_pod(), "Nodes": null, "NodeNames": names(MAX_NODES)});
    let answer = post(&server, "/extender/filter", &args).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.json()["NodeNames"].as_array().map(Vec::len),
        Some(MAX_NODES)
    );

    // Full Node objects, and lower-case field names as older kube-schedulers send them.
    let items: Vec<Value> = names(too_many)
        .into_iter()
        .map(|n| json!({"metadata": {"name": n}}))
        .collect();
    let args = json!({"pod": cpu_pod(), "nodes": {"items": items}});
    let answer = post(&server, "/extender/filter", &args).await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.json()["Error"],
        format!("filter: request body field Nodes.items: {limit}")
    );

    let args = json!({"Pod": cpu_pod(), "NodeNames": names(too_many)});
    let answer = post(&server, "/extender/prioritize", &args).await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.body,
        format!("prioritize: request body field NodeNames: {limit}")
    );

    let victims: serde_json::Map<String, Value> = names(too_many)
        .into_iter()
        .map(|n| (n, json!({"Pods": [], "NumPDBViolations": 0})))
        .collect();
    let args = json!({"Pod": cpu_pod(), "NodeNameToMetaVictims": victims});
    let answer = post(&server, "/extender/preempt", &args).await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.body,
        format!("preempt: request body field NodeNameToMetaVictims: {limit}")
    );

    let metrics = metrics(&server).await;
    assert_eq!(counted(&metrics, "filter", "bad_request"), 2);
    assert_eq!(counted(&metrics, "filter", "ok"), 1);
    server.shutdown().await;
}

fn short_timeouts() -> HttpSettings {
    HttpSettings {
        header_read_timeout_ms: 300,
        body_read_timeout_ms: 300,
        write_timeout_ms: 300,
    }
}

#[tokio::test]
async fn a_stalled_head_or_body_is_cut_off_and_an_idle_connection_closed() {
    let server = serve(short_timeouts()).await;

    // Half a head, then nothing: the server hangs up.
    let mut stalled_head = connect(&server).await;
    stalled_head
        .write_all(b"POST /extender/filter HTTP/1.1\r\nHost: suanli\r\nContent-Le")
        .await
        .expect("sends");
    assert!(
        hung_up(&mut stalled_head).await,
        "a stalled head is cut off"
    );

    // A whole head, then part of the body: 408, and the connection ends.
    let mut stalled_body = connect(&server).await;
    stalled_body
        .write_all(b"POST /extender/filter HTTP/1.1\r\nHost: suanli\r\nContent-Length: 100\r\n\r\n{\"Pod\":")
        .await
        .expect("sends");
    let answer = read_answer(&mut stalled_body).await;
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(
        answer.json()["Error"],
        "filter: request body did not arrive within 300ms"
    );
    assert!(
        hung_up(&mut stalled_body).await,
        "a stalled body is cut off"
    );

    // A kept-alive connection that sends nothing more is closed.
    let mut idle = connect(&server).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: suanli\r\n\r\n")
        .await
        .expect("sends");
    let answer = read_answer(&mut idle).await;
    assert_eq!(answer.status, 200);
    assert!(hung_up(&mut idle).await, "an idle connection is closed");

    assert_eq!(counted(&metrics(&server).await, "filter", "timed_out"), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_its_answer_is_cut_off() {
    let server = serve(short_timeouts()).await;
    // 2,000 nodes of 10 KiB each, all passing: a 20 MiB answer, more than loopback buffers
    // take in.
    let pad = "x".repeat(10 * 1024);
    let items: Vec<Value> = names(2_000)
        .into_iter()
        .map(|n| json!({"metadata": {"name": n, "labels": {"pad": pad}}}))
        .collect();
    let body = json!({"Pod": cpu_pod(), "Nodes": {"items": items}}).to_string();
    let mut stream = connect(&server).await;
    let head = format!(
        "POST /extender/filter HTTP/1.1\r\nHost: suanli\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("sends");
    stream.write_all(body.as_bytes()).await.expect("sends");
    drop(body);

    // Read nothing for a while (well past the 300 ms write timeout), then everything left.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(PATIENCE, async {
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server hung up");
    let text = String::from_utf8_lossy(&received);
    let (head, answer) = text.split_once("\r\n\r\n").expect("the answer began");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok())
        .expect("a Content-Length");
    assert!(
        answer.len() < length,
        "the answer was cut off: {} of {length} bytes",
        answer.len()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn extender_calls_past_the_limit_are_shed_and_the_rest_answered() {
    let server = serve(HttpSettings {
        body_read_timeout_ms: 60_000,
        ..HttpSettings::default()
    })
    .await;

    // As many filter calls as it takes at once, each holding its place by sending only the
    // first half of its body.
    let mut held = Vec::new();
    for i in 0..MAX_SCORING_CALLS {
        let body = json!({"Pod": cpu_pod(), "NodeNames": [format!("held-{i}")]}).to_string();
        let (first, rest) = body.split_at(body.len() / 2);
        let mut stream = connect(&server).await;
        let head = format!(
            "POST /extender/filter HTTP/1.1\r\nHost: suanli\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{first}",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.expect("sends");
        held.push((stream, rest.to_string(), i));
    }

    // One more is refused at once, with when to try again; until the held calls are in,
    // it may still be let through.
    let probe = json!({"Pod": cpu_pod(), "NodeNames": ["probe"]});
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let shed = loop {
        let answer = post(&server, "/extender/filter", &probe).await;
        if answer.status != 200 {
            break answer;
        }
        assert!(tokio::time::Instant::now() < deadline, "never shed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(shed.status, 503, "{shed:?}");
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert_eq!(
        shed.json()["Error"],
        format!(
            "filter: the scheduler is already answering {MAX_SCORING_CALLS} filter, prioritize and preempt calls, the most it takes at once; try again"
        )
    );
    let answer = post(&server, "/extender/prioritize", &probe).await;
    assert_eq!(answer.status, 503, "{answer:?}");

    // Binds have room of their own (this one fails only for want of a Kubernetes API).
    let bind = json!({"PodName": "p", "PodNamespace": "ml", "PodUID": "u", "Node": "n1"});
    let answer = post(&server, "/extender/bind", &bind).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(
        answer.json()["Error"]
            .as_str()
            .is_some_and(|e| e.contains("[kubernetes] api")),
        "{answer:?}"
    );

    // The held calls are all answered.
    for (mut stream, rest, i) in held {
        stream.write_all(rest.as_bytes()).await.expect("sends");
        let answer = read_answer(&mut stream).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.json()["NodeNames"], json!([format!("held-{i}")]));
    }
    let answer = post(&server, "/extender/filter", &probe).await;
    assert_eq!(answer.status, 200, "room again once they are answered");

    let metrics = metrics(&server).await;
    assert_eq!(counted(&metrics, "filter", "shed"), 1);
    assert_eq!(counted(&metrics, "prioritize", "shed"), 1);
    // The held calls, the probes let through before them, and the last probe.
    assert!(counted(&metrics, "filter", "ok") > MAX_SCORING_CALLS as u64);
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_the_http_listener() {
    let server = serve(HttpSettings::default()).await;
    let addr = server.http_addr;
    // A connection that is open and idle does not hold the shutdown up.
    let _idle = connect(&server).await;
    tokio::time::timeout(PATIENCE, server.shutdown())
        .await
        .expect("shuts down");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}
