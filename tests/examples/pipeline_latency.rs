//! `make bench`: produce-to-provider latency through the whole pipeline,
//! per lane, with the hop where it went. `herald-router` and a webhook
//! `herald-deliver` as processes on nisshi (sqlite), the sandbox with 20 ms
//! of provider latency, events produced at a steady rate in all three
//! lanes (one webhook notification each).
//!
//! Per lane: p50, p95, p99 and max of the whole trip (the event's
//! `created_at`, set when it is produced, to the sandbox accepting it), of
//! the router hop (to the lane record's timestamp, which the router's
//! producer sets when it sends it) and of the delivery hop (lane record to
//! acceptance). `HERALD_BENCH_RATE` events/s (default 250) for
//! `HERALD_BENCH_SECONDS` (default 20); `HERALD_BENCH_CONSUMER` adds
//! consumer overrides to both stages (`key=value,...`);
//! `HERALD_BENCH_BROKER` picks the broker: `nisshi` (default), `kafka`
//! (Apache Kafka, one node: `scripts/kafka.sh start single`) or `kafka3`
//! (the three-node cluster). Release binaries from `target/release`
//! (`cargo build --release --bins`).
//!
//! `HERALD_BENCH_BULK=N`: urgent under a bulk backlog. First a campaign of
//! N bulk events, produced at once and routed before the measurement
//! starts, so the worker's bulk windows are full; then urgent events only,
//! at the steady rate. The bulk row shows how long the backlog waited, and
//! the last line whether it still filled the worker when the last urgent
//! notification arrived (it must, or the worker was not saturated).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_codec::{encode_single_object, Codec};
use herald_kafka::settings::ProducerKind;
use herald_model::wire::{ChannelMessage, NotificationRequested, WebhookContent};
use herald_model::{sample, Channel, Priority};
use herald_sandbox::{Fault, SandboxSettings};
use herald_testkit::measure::{env_or, now_ms, percentile};
use herald_testkit::{BrokerKind, TestBroker};
use rdkafka::message::{Message, Timestamp};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

const PARTITIONS: i32 = 4;

fn release(name: &str) -> String {
    let bin = format!("{}/../target/release/{name}", env!("CARGO_MANIFEST_DIR"));
    assert!(
        std::path::Path::new(&bin).exists(),
        "{bin}: cargo build --release --bins"
    );
    bin
}

fn spawn(bin: &str, args: &[&str]) -> Child {
    Command::new(release(bin))
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::main]
async fn main() {
    let rate: u64 = env_or("HERALD_BENCH_RATE", 250);
    let seconds: u64 = env_or("HERALD_BENCH_SECONDS", 20);
    let consumer = std::env::var("HERALD_BENCH_CONSUMER").unwrap_or_default();
    let n = rate * seconds;
    let bulk: u64 = env_or("HERALD_BENCH_BULK", 0);

    let kind = match std::env::var("HERALD_BENCH_BROKER").as_deref() {
        Ok("kafka") => BrokerKind::ApacheKafka,
        Ok("kafka3") => BrokerKind::ApacheKafka3,
        Ok("nisshi") | Err(_) => BrokerKind::Durable,
        Ok(other) => panic!("HERALD_BENCH_BROKER={other}: nisshi, kafka or kafka3"),
    };
    let broker = TestBroker::start(kind);
    let topology = broker
        .herald_topology("bench-pipeline", PARTITIONS, PARTITIONS)
        .await;
    let secret = herald_sandbox::webhook_secret(&[9u8; 32]);
    let running = herald_sandbox::serve(SandboxSettings {
        webhook_secret: secret.clone(),
        max_records: (n + bulk) as usize * 2,
        ..SandboxSettings::loopback()
    })
    .await
    .unwrap();
    let sandbox = std::sync::Arc::clone(&running.sandbox);
    sandbox.set_fault(
        "webhook",
        Fault {
            latency_ms: 20,
            ..Fault::default()
        },
    );
    let url = format!("http://{}/hooks/latency", running.bound.http);

    let dir = tempfile::tempdir().unwrap();
    let overrides: String = consumer
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| format!("\"{k}\" = \"{v}\"\n"))
        .collect();
    let common = format!(
        "[kafka]\nbootstrap = \"{}\"\n[kafka.consumer_overrides]\n{overrides}\
         [topics]\nprefix = \"{}\"\npartitions = {PARTITIONS}\nchannel_partitions = {PARTITIONS}\nreplication_factor = 1\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[log]\nfilter = \"warn\"\n",
        broker.bootstrap(),
        topology.settings().prefix,
    );
    let router_toml = dir.path().join("router.toml");
    std::fs::write(
        &router_toml,
        format!(
            "{common}[router]\ngroup = \"{}\"\n",
            broker.group("bench-router")
        ),
    )
    .unwrap();
    let deliver_toml = dir.path().join("deliver.toml");
    std::fs::write(
        &deliver_toml,
        format!(
            "{common}[deliver]\ngroup = \"{}\"\n\
             [deliver.webhook]\nsecret = \"{secret}\"\nallow_private_networks = true\n",
            broker.group("bench-webhook")
        ),
    )
    .unwrap();
    let mut router = spawn(
        "herald-router",
        &["--config", router_toml.to_str().unwrap()],
    );
    let mut worker = spawn(
        "herald-deliver",
        &[
            "--channel",
            "webhook",
            "--config",
            deliver_toml.to_str().unwrap(),
        ],
    );

    let producer = broker
        .settings()
        .producer("bench", &ProducerKind::Idempotent)
        .unwrap();
    let topic = topology.notifications();
    let event = |i: u64, priority: Priority| {
        let mut e = sample::notification(i, now_ms());
        e.priority = priority;
        e.channels = vec![Channel::Webhook];
        e.recipients.webhook_url = Some(url.clone());
        if let Some(c) = e.content.as_mut() {
            c.webhook = Some(WebhookContent {
                event_type: "order.confirmed".into(),
                payload_json: format!("{{\"order\":{i}}}"),
            });
        }
        e
    };
    // Warm-up: both stages joined, restored and delivering.
    for i in 0..16 {
        let e = event(1_000_000 + i, Priority::Normal);
        let bytes = encode_single_object(&e).unwrap();
        producer
            .send(
                FutureRecord::to(&topic).key(&e.user_id).payload(&bytes),
                Timeout::After(Duration::from_secs(30)),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    while sandbox.records(Some("webhook"), None).len() < 16 {
        assert!(Instant::now() < deadline, "the pipeline did not warm up");
        assert!(router.try_wait().unwrap().is_none(), "the router exited");
        assert!(worker.try_wait().unwrap().is_none(), "the worker exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let warm = sandbox.records(Some("webhook"), None).len();

    // Produces one event; its acknowledgement is awaited later.
    let send = |e: &NotificationRequested| {
        let bytes = encode_single_object(e).unwrap();
        let (p, t, key) = (producer.clone(), topic.clone(), e.user_id.clone());
        tokio::spawn(async move {
            p.send(
                FutureRecord::to(&t).key(&key).payload(&bytes),
                Timeout::After(Duration::from_secs(60)),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
        })
    };
    let mut created: BTreeMap<String, (Priority, i64)> = BTreeMap::new();
    if bulk > 0 {
        let mut acks = Vec::with_capacity(bulk as usize);
        for i in 0..bulk {
            let e = event(2_000_000 + i, Priority::Bulk);
            created.insert(e.idempotency_key.clone(), (Priority::Bulk, e.created_at));
            acks.push(send(&e));
        }
        for a in acks {
            a.await.unwrap().unwrap();
        }
        // Routed: every bulk event has its lane record.
        let lane = topology.lane(Channel::Webhook, Priority::Bulk);
        let deadline = Instant::now() + Duration::from_secs(120);
        while broker.record_count(&lane, PARTITIONS).await < bulk as i64 {
            assert!(
                Instant::now() < deadline,
                "the bulk campaign was not routed"
            );
            assert!(router.try_wait().unwrap().is_none(), "the router exited");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut acks = Vec::with_capacity(n as usize);
    for i in 0..n {
        tick.tick().await;
        let priority = if bulk > 0 {
            Priority::Urgent
        } else {
            Priority::ALL[(i % 3) as usize]
        };
        let e = event(i, priority);
        created.insert(e.idempotency_key.clone(), (priority, e.created_at));
        acks.push(send(&e));
    }
    for a in acks {
        a.await.unwrap().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60 + bulk / 1000);
    while sandbox.records(Some("webhook"), None).len() < warm + (n + bulk) as usize
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for child in [&mut router, &mut worker] {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }

    // The lane records: when the router sent each notification.
    let codec = Codec::single_object();
    let mut routed: BTreeMap<String, (String, i64)> = BTreeMap::new();
    for lane in Priority::ALL {
        for m in broker
            .read_all(
                &topology.lane(Channel::Webhook, *lane),
                PARTITIONS,
                Duration::from_secs(2),
            )
            .await
        {
            let msg: ChannelMessage = codec.decode_local(m.payload().unwrap()).unwrap();
            if let Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) = m.timestamp() {
                routed.insert(msg.notification_id, (msg.idempotency_key, t));
            }
        }
    }
    let mut hops: BTreeMap<&str, [Vec<i64>; 3]> = BTreeMap::new();
    // Bulk deliveries after the last urgent one: the backlog outlasted it.
    let mut last_urgent = i64::MIN;
    let mut bulk_at = Vec::new();
    for r in sandbox.records(Some("webhook"), None) {
        let Some((key, at_lane)) = r.notification_id.as_ref().and_then(|id| routed.get(id)) else {
            continue;
        };
        let Some((priority, at_created)) = created.get(key) else {
            continue;
        };
        match priority {
            Priority::Urgent => last_urgent = last_urgent.max(r.at_ms),
            Priority::Bulk => bulk_at.push(r.at_ms),
            Priority::Normal => {}
        }
        for lane in [priority.as_str(), "all"] {
            let h = hops.entry(lane).or_default();
            h[0].push(r.at_ms - at_created);
            h[1].push(at_lane - at_created);
            h[2].push(r.at_ms - at_lane);
        }
    }
    println!(
        "Pipeline: router and webhook worker on {}, {rate} events/s for {seconds} s \
         ({PARTITIONS} partitions, {}, 20 ms provider latency){}",
        match kind {
            BrokerKind::ApacheKafka => "Apache Kafka (one node)",
            BrokerKind::ApacheKafka3 => "Apache Kafka (three nodes)",
            _ => "nisshi",
        },
        if bulk > 0 {
            format!("urgent only, behind a campaign of {bulk} bulk events")
        } else {
            "3 lanes in turn".into()
        },
        if consumer.is_empty() {
            String::new()
        } else {
            format!(", consumer {consumer}")
        }
    );
    println!("| lane | delivered | produce to provider p50 / p95 / p99 / max | router hop p50 / p99 | delivery hop p50 / p99 |");
    println!("|---|---:|---:|---:|---:|");
    for (lane, mut h) in hops {
        for v in &mut h {
            v.sort_unstable();
        }
        println!(
            "| {lane} | {} | {} / {} / {} / {} ms | {} / {} ms | {} / {} ms |",
            h[0].len(),
            percentile(&h[0], 0.5),
            percentile(&h[0], 0.95),
            percentile(&h[0], 0.99),
            h[0].last().copied().unwrap_or(0),
            percentile(&h[1], 0.5),
            percentile(&h[1], 0.99),
            percentile(&h[2], 0.5),
            percentile(&h[2], 0.99),
        );
    }
    if bulk > 0 {
        let after = bulk_at.iter().filter(|t| **t > last_urgent).count();
        println!(
            "Bulk: {} of {bulk} delivered, {after} of them after the last urgent notification{}",
            bulk_at.len(),
            if after == 0 {
                " (NOT SATURATED: the backlog ran out first; raise HERALD_BENCH_BULK)"
            } else {
                ""
            }
        );
    }
    drop(running);
}
