//! Webhook endpoints that misbehave on purpose, beside well-behaved ones in
//! the same partitions. Anyone can register a webhook URL, so each of these
//! is an attacker's or a broken receiver's move:
//!
//! - `silent`: accepts the connection, reads the request, never answers;
//! - `slowloris`: answers its status line one byte every 300 ms, forever;
//! - `garbage`: answers bytes that are not HTTP, then closes;
//! - `huge-headers`: answers `200` followed by 2 MB of headers;
//! - `redirect`: answers `307` to another listener of the test's own,
//!   which must never be reached (a redirect is how a receiver would turn
//!   Herald into a proxy);
//! - `tls-to-plain`: an `https` URL on a port that speaks plain HTTP;
//! - `endless-body`: answers `200` and then a body that never ends.
//!
//! What a tenant sees: every well-behaved webhook is delivered within
//! seconds while the hostile ones are being tried; each hostile message
//! ends with a final status (dead-lettered after its attempts, failed for
//! the redirect, sent for the endless body, whose `200` is an answer) and
//! the worker keeps running.

// Tests fail loudly on unexpected errors: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{setup, start, stop, WAIT};
use herald_model::wire::ChannelMessage;
use herald_model::StatusKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A listener on loopback that runs `behave` for every connection it
/// accepts, after reading the start of the request.
async fn endpoint<F, Fut>(behave: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let behave = Arc::new(behave);
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let behave = Arc::clone(&behave);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                if matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {
                    behave(conn).await;
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_endpoints_end_with_a_status_and_stop_no_one_else() {
    let s = setup("deliver-hostile-endpoints").await;
    let mut config = s.config();
    let webhook = config.deliver.webhook.as_mut().unwrap();
    webhook.timeout = Duration::from_secs(1);
    config.deliver.retry.max_attempts = 3;
    config.deliver.retry.base_delay = Duration::from_millis(100);
    config.deliver.retry.max_delay = Duration::from_millis(400);

    let reached = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&reached);
    let (target, _t) = endpoint(move |mut conn| {
        let counted = Arc::clone(&counted);
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    })
    .await;
    let mut servers = Vec::new();
    let mut hostile: Vec<(&str, String, StatusKind)> = Vec::new();
    let (addr, t) = endpoint(|conn| async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(conn);
    })
    .await;
    servers.push(t);
    hostile.push((
        "silent",
        format!("http://{addr}/h"),
        StatusKind::DeadLettered,
    ));
    let (addr, t) = endpoint(|mut conn| async move {
        for b in b"HTTP/1.1 200 OK\r\n".iter().cycle() {
            if conn.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;
    servers.push(t);
    hostile.push((
        "slowloris",
        format!("http://{addr}/h"),
        StatusKind::DeadLettered,
    ));
    let (addr, t) = endpoint(|mut conn| async move {
        let _ = conn.write_all(b"\x00\xffSSH-2.0-not-http\r\n\r\n").await;
    })
    .await;
    servers.push(t);
    hostile.push((
        "garbage",
        format!("http://{addr}/h"),
        StatusKind::DeadLettered,
    ));
    let (addr, t) = endpoint(|mut conn| async move {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\n").await;
        let line = format!("x-filler: {}\r\n", "a".repeat(1000));
        for _ in 0..2000 {
            if conn.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
        let _ = conn.write_all(b"content-length: 0\r\n\r\n").await;
    })
    .await;
    servers.push(t);
    hostile.push((
        "huge-headers",
        format!("http://{addr}/h"),
        StatusKind::DeadLettered,
    ));
    let (addr, t) = endpoint(move |mut conn| async move {
        let answer = format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{target}/stolen\r\ncontent-length: 0\r\n\r\n"
        );
        let _ = conn.write_all(answer.as_bytes()).await;
    })
    .await;
    servers.push(t);
    hostile.push(("redirect", format!("http://{addr}/h"), StatusKind::Failed));
    let (addr, t) = endpoint(|mut conn| async move {
        let _ = conn
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await;
    })
    .await;
    servers.push(t);
    hostile.push((
        "tls-to-plain",
        format!("https://{addr}/h"),
        StatusKind::DeadLettered,
    ));
    let (addr, t) = endpoint(|mut conn| async move {
        let _ = conn
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        let chunk = format!("400\r\n{}\r\n", "z".repeat(1024));
        while conn.write_all(chunk.as_bytes()).await.is_ok() {}
    })
    .await;
    servers.push(t);
    hostile.push(("endless-body", format!("http://{addr}/h"), StatusKind::Sent));

    let producer = s.producer();
    let (stopper, task) = start(config);
    let mut expected: BTreeMap<String, (&str, StatusKind)> = BTreeMap::new();
    for (n, (name, url, status)) in hostile.iter().enumerate() {
        let mut m = s.message(n as u64);
        m.recipient.address = url.clone();
        s.produce(&producer, &m).await;
        expected.insert(m.notification_id.clone(), (*name, *status));
    }
    // Well-behaved endpoints, in the same lanes and partitions, produced
    // while the hostile ones are being tried.
    let started = Instant::now();
    let good: Vec<ChannelMessage> = (100..112).map(|n| s.message(n)).collect();
    for m in &good {
        s.produce(&producer, m).await;
    }
    let seen = s.wait_delivered(good.len()).await;
    assert!(good.iter().all(|m| seen.contains_key(&m.notification_id)));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "well-behaved endpoints waited {:?}",
        started.elapsed()
    );

    // Every hostile message ends, with the status its endpoint earned.
    let deadline = Instant::now() + WAIT;
    let finals = loop {
        let mut finals: BTreeMap<String, StatusKind> = BTreeMap::new();
        for st in s.statuses().await {
            let Some(id) = st.notification_id else {
                continue;
            };
            if matches!(
                st.status,
                StatusKind::Sent | StatusKind::Failed | StatusKind::DeadLettered
            ) && expected.contains_key(&id)
            {
                finals.insert(id, st.status);
            }
        }
        if finals.len() == expected.len() || Instant::now() > deadline {
            break finals;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(id, (_, want))| finals.get(*id) != Some(want))
        .map(|(id, (name, want))| format!("{name}: {:?}, expected {want:?}", finals.get(id)))
        .collect();
    assert!(wrong.is_empty(), "hostile endpoints: {wrong:?}");
    assert_eq!(reached.load(Ordering::SeqCst), 0, "a redirect was followed");
    assert!(!task.is_finished(), "the worker stopped");
    stop(stopper, task).await;
    for t in servers {
        t.abort();
    }
}
