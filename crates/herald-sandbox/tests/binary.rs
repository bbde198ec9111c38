//! The `herald-sandbox` binary: listens where configured, answers its
//! probes and API, refuses a bad fault naming it, stops cleanly on SIGTERM.

// Tests fail loudly on unexpected errors: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn http(addr: &str, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn the_sandbox_binary_serves_and_stops() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald-sandbox"))
        .env("HERALD__SANDBOX__HTTP_LISTEN", "127.0.0.1:0")
        .env("HERALD__SANDBOX__SMTP_LISTEN", "127.0.0.1:0")
        .env("HERALD__LOG__FILTER", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let smtp = lines.next().unwrap().unwrap();
    assert!(smtp.starts_with("smtp       127.0.0.1:"), "{smtp}");
    let get = |path: &str| {
        http(
            &addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
    };
    assert!(get("/healthz").starts_with("HTTP/1.1 200"));
    assert!(get("/sandbox/counts").contains("{}"));
    let body = r#"{"error_rate": 2.0}"#;
    let refused = http(
        &addr,
        &format!(
            "PUT /sandbox/faults/apns HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    assert!(
        refused.contains("error_rate must be between 0 and 1"),
        "{refused}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("the sandbox did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
}
