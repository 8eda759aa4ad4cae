//! A real `suanli-scheduler` process against hostile extender bodies: 50 MB filter bodies
//! naming millions of nodes (once, then three at once; with a declared length and chunked)
//! are refused with 413, and the scheduler's resident memory, read from `/proc`, stays within
//! a stated bound. The bodies are generated as they are sent: the test never holds one.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use suanli_tests::{start_scheduler, wait_for, write_scheduler_config};

/// What the probe sent: 47 MB bodies of 3 million node names.
const BODY_BYTES: usize = 50_000_000;
const MIB: u64 = 1024 * 1024;
/// The scheduler's limit on a filter body (`MAX_SCORING_BODY_BYTES`).
const LIMIT_BYTES: u64 = 32 * MIB;
const REFUSAL: &str = "filter: request body is larger than the limit of 32 MiB";

/// A line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kib * 1024
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    /// `Content-Length` declared, as kube-scheduler sends.
    Declared,
    /// `Transfer-Encoding: chunked`: no length until the end.
    Chunked,
}

/// One HTTP/1.1 request with `body`, sent whole; returns the status and the answer's body.
fn request(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: suanli\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("sends");
    stream.write_all(body.as_bytes()).expect("sends");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_answer(&raw)
}

fn parse_answer(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer: {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    (status, body.to_string())
}

/// Sends a filter body of [`BODY_BYTES`] naming 3.3 million nodes, made as it is sent, while
/// another thread reads the answer (the server may answer and hang up mid-body).
fn send_huge_filter(addr: &str, framing: Framing) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connects");
    let mut reader = stream.try_clone().expect("clones");
    reader
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let reading = std::thread::spawn(move || {
        let mut raw = Vec::new();
        // Ends at the server's hang-up; a reset after the answer is fine.
        let _ = reader.read_to_end(&mut raw);
        raw
    });

    let start = r#"{"Pod": {"metadata": {"name": "p", "namespace": "ml", "uid": "u"}, "spec": {"containers": [{"name": "main", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}, "Nodes": null, "NodeNames": ["#;
    let end = r#""node-last"]}"#;
    // 4,369 names of 15 bytes: a 65,535-byte piece.
    let names = "\"node-0000000\",".repeat(4_369);
    let head = match framing {
        Framing::Declared => format!(
            "POST /extender/filter HTTP/1.1\r\nHost: suanli\r\nContent-Type: application/json\r\nContent-Length: {BODY_BYTES}\r\nConnection: close\r\n\r\n"
        ),
        Framing::Chunked => "POST /extender/filter HTTP/1.1\r\nHost: suanli\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_string(),
    };
    let send = |stream: &mut TcpStream, piece: &str| -> std::io::Result<()> {
        match framing {
            Framing::Declared => stream.write_all(piece.as_bytes()),
            Framing::Chunked => {
                stream.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
                stream.write_all(piece.as_bytes())?;
                stream.write_all(b"\r\n")
            }
        }
    };
    let sent = (|| -> std::io::Result<()> {
        stream.write_all(head.as_bytes())?;
        send(&mut stream, start)?;
        let mut left = BODY_BYTES - start.len() - end.len();
        while left > 0 {
            let n = left.min(names.len());
            if n == names.len() {
                send(&mut stream, &names)?;
            } else {
                // JSON allows blanks between a list's items.
                send(&mut stream, &" ".repeat(n))?;
            }
            left -= n;
        }
        send(&mut stream, end)?;
        if let Framing::Chunked = framing {
            stream.write_all(b"0\r\n\r\n")?;
        }
        Ok(())
    })();
    if sent.is_ok() {
        let _ = stream.shutdown(Shutdown::Write);
    }
    let raw = reading.join().expect("reader");
    parse_answer(&raw)
}

/// `n` huge filter bodies at once; every answer.
fn send_huge_filters(addr: &str, framing: Framing, n: usize) -> Vec<(u16, String)> {
    let senders: Vec<_> = (0..n)
        .map(|_| {
            let addr = addr.to_string();
            std::thread::spawn(move || send_huge_filter(&addr, framing))
        })
        .collect();
    senders
        .into_iter()
        .map(|s| s.join().expect("sender"))
        .collect()
}

fn assert_refused(answers: &[(u16, String)]) {
    for (status, body) in answers {
        assert_eq!(*status, 413, "{body}");
        let error: serde_json::Value = serde_json::from_str(body).expect("a JSON answer");
        assert_eq!(error["Error"], REFUSAL);
    }
}

#[test]
fn fifty_megabyte_filter_bodies_are_refused_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_scheduler_config(dir.path(), 60_000);
    let mut scheduler = start_scheduler(&config, &dir.path().join("data"), None);
    let addr = scheduler.http.clone();
    let pid = scheduler.proc.pid();
    wait_for("the scheduler's /healthz", Duration::from_secs(60), || {
        (request(&addr, "GET", "/healthz", "").0 == 200).then_some(())
    });

    // Warm up: a filter call of each framing that fits, so the baseline has the buffers a
    // normal call allocates.
    let small = r#"{"Pod": {"metadata": {"name": "p"}, "spec": {"containers": []}}, "NodeNames": ["a", "b"]}"#;
    for _ in 0..3 {
        let (status, body) = request(&addr, "POST", "/extender/filter", small);
        assert_eq!(status, 200, "{body}");
    }
    let baseline = proc_status(pid, "VmRSS");
    eprintln!("scheduler RSS before: {} MiB", baseline / MIB);

    // Declared too large: refused before the body is read, so nothing of it is held.
    assert_refused(&[send_huge_filter(&addr, Framing::Declared)]);
    assert_refused(&send_huge_filters(&addr, Framing::Declared, 3));
    let peak = proc_status(pid, "VmHWM");
    let now = proc_status(pid, "VmRSS");
    eprintln!(
        "declared 50 MB bodies, one then three at once: peak RSS {} MiB, after {} MiB",
        peak / MIB,
        now / MIB
    );
    let bound = 16 * MIB;
    assert!(
        peak < baseline + bound,
        "peak RSS grew by {} MiB, more than {} MiB",
        (peak - baseline) / MIB,
        bound / MIB
    );

    // Chunked, with no length: each is read up to the limit and cut off there, so at most
    // three limits' worth are held at once (plus allocator slack).
    assert_refused(&[send_huge_filter(&addr, Framing::Chunked)]);
    assert_refused(&send_huge_filters(&addr, Framing::Chunked, 3));
    let peak = proc_status(pid, "VmHWM");
    let now = proc_status(pid, "VmRSS");
    eprintln!(
        "chunked 50 MB bodies, one then three at once: peak RSS {} MiB, after {} MiB",
        peak / MIB,
        now / MIB
    );
    let bound = 3 * LIMIT_BYTES + 32 * MIB;
    assert!(
        peak < baseline + bound,
        "peak RSS grew by {} MiB, more than {} MiB",
        (peak - baseline) / MIB,
        bound / MIB
    );
    assert!(
        now < baseline + bound,
        "RSS stayed {} MiB above where it was",
        (now - baseline) / MIB
    );

    // Still serving, and the refusals were counted.
    let (status, body) = request(&addr, "POST", "/extender/filter", small);
    assert_eq!(status, 200, "{body}");
    let (status, metrics) = request(&addr, "GET", "/metrics", "");
    assert_eq!(status, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"suanli_extender_requests_total{verb="filter",outcome="too_large"} 8"#),
        "{metrics}"
    );
    assert!(scheduler.proc.is_running());
}
