//! The whole pipeline under faults, run the way an operator runs it: a
//! durable broker of the test's own (nisshi on sqlite), `herald-router`, a
//! `herald-deliver` per channel (push to APNs and FCM, SMS, email, webhook)
//! and `herald-scaler`, each as its own process, the provider sandbox, and
//! traffic from a Python `confluent-kafka` producer (every event for two
//! channels, every tenth sent twice, one record in a hundred garbage).
//!
//! While the traffic flows: the router is SIGKILLed and restarted, then the
//! email worker; APNs turns slow (1.5 s a request); the webhook provider
//! has a 5 s outage while FCM answers 30% of requests with 500; the SMS
//! worker is SIGKILLed; the broker is killed and restarted on the same
//! storage; the scaler and the push worker are SIGKILLed; Twilio answers
//! 30% of requests with 503; the webhook worker is SIGKILLed; the SMTP
//! relay throttles (429, answered as 451). The verdict, from the sandbox's records and the status and
//! dead-letter topics:
//!
//! - nothing lost: every notification of every unique event reached its
//!   provider, or has a `failed` or `dead_lettered` status;
//! - no extra send unexplained: a notification sent twice was in flight in
//!   a delivery worker when that worker was killed (its first send in the
//!   seconds before the kill), at most the worker's in-flight window per
//!   kill; nothing else reaches a provider twice;
//! - every duplicate input got a `duplicate` status, every garbage record
//!   is in the router's dead-letter topic with its bytes, and nothing but
//!   the events' notifications reached a provider;
//! - the scaler, restarted, serves the router group's signal again.
//!
//! Size: `HERALD_CHAOS_EVENTS` (default 2000) at `HERALD_CHAOS_RATE`
//! events/s (default 80); `make chaos` runs a longer version. Bounded: the
//! test gives up waiting 150 s after the traffic ends.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herald_model::ids::{DedupKey, NotificationId};
use herald_model::{Channel, StatusKind};
use herald_sandbox::credentials::Credentials;
use herald_sandbox::{Fault, SandboxSettings};
use herald_testkit::measure::env_or;
use herald_testkit::RestartableBroker;

use crate::stages::{common_config, statuses, write, Stage};
use rdkafka::message::Message;

const PARTITIONS: i32 = 4;
const MAX_IN_FLIGHT: usize = 8;
const SCHEMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../schemas/NotificationRequested.avsc"
);
const PRODUCER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/chaos_producer.py");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_or_sent_twice_unexplained_under_crashes_outages_and_a_broker_restart() {
    let count: u64 = env_or("HERALD_CHAOS_EVENTS", 2000);
    let rate: f64 = env_or("HERALD_CHAOS_RATE", 80.0);
    let traffic = Duration::from_secs_f64(count as f64 / rate);
    let dir = tempfile::tempdir().unwrap();

    let mut nisshi = RestartableBroker::start();
    let broker = nisshi.test_broker();
    let topology = broker
        .herald_topology("chaos", PARTITIONS, PARTITIONS)
        .await;
    let keys = Credentials::generate().unwrap();
    let sandbox = herald_sandbox::serve(keys.sandbox(SandboxSettings {
        max_records: 1_000_000,
        ..SandboxSettings::loopback()
    }))
    .await
    .unwrap();
    let webhook_url = format!("http://{}/hooks/chaos", sandbox.bound.http);

    let common = common_config(&broker, &topology);
    let router_toml = write(
        dir.path(),
        "router.toml",
        &format!(
            "{common}[router]\ngroup = \"{}\"\n",
            broker.group("chaos-router")
        ),
    );
    let deliver = format!(
        "{common}[deliver]\ngroup = \"{{group}}\"\nmax_in_flight = {MAX_IN_FLIGHT}\n\
         [deliver.retry]\nbase_delay = \"200ms\"\nmax_delay = \"2s\"\nmax_attempts = 30\njitter = 0.2\n"
    );
    let stage = |name, bin: &str, args: &[&str]| Stage::of(name, dir.path(), bin, args);
    let mut router = stage("router", "herald-router", &["--config", &router_toml]);
    let mut workers: BTreeMap<Channel, Stage> = Channel::ALL
        .iter()
        .map(|&channel| {
            let name = channel.as_str();
            let config = write(
                dir.path(),
                &format!("{name}.toml"),
                &format!(
                    "{}{}",
                    deliver.replace("{group}", &broker.group(&format!("chaos-{name}"))),
                    keys.worker_toml(name, &sandbox.bound)
                ),
            );
            let worker = stage(
                name,
                "herald-deliver",
                &["--channel", name, "--config", &config],
            );
            (channel, worker)
        })
        .collect();
    // The scaler watches the router's group, its signal served on a port
    // of the test's choosing.
    let scaler_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let router_group = broker.group("chaos-router");
    let scaler_toml = write(
        dir.path(),
        "scaler.toml",
        &format!(
            "[kafka]\nbootstrap = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{scaler_port}\"\n\
             [scaler]\npoll_interval = \"1s\"\n\
             [[scaler.groups]]\ngroup = \"{router_group}\"\ntopics = [\"{}\"]\n",
            broker.bootstrap(),
            topology.notifications()
        ),
    );
    let mut scaler = stage("scaler", "herald-scaler", &["--config", &scaler_toml]);

    let python = std::env::var("HERALD_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut producer = Command::new(python)
        .args([
            PRODUCER,
            broker.bootstrap(),
            &topology.notifications(),
            SCHEMA,
            &count.to_string(),
            &rate.to_string(),
            &webhook_url,
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/python"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3 (install: pip install confluent-kafka fastavro)");

    // The faults, spread over the traffic.
    let started = Instant::now();
    let at = |share: f64| started + traffic.mul_f64(share);
    let until = |t: Instant| tokio::time::sleep_until(t.into());
    let mut kills: Vec<(Channel, i64)> = Vec::new();

    let mut kill = |channel: Channel, workers: &mut BTreeMap<Channel, Stage>| {
        let w = workers.get_mut(&channel).unwrap();
        kills.push((channel, w.kill()));
        w.start();
    };
    // Provider faults run beside the kills, each for its share of the
    // traffic and then until the provider has answered with it (a worker
    // may be rejoining its group during the window).
    // A fault outlasts the traffic by up to 30 s, for a backlog to meet it.
    let end = at(1.0) + Duration::from_secs(30);
    let window = |provider, fault, answer, from, to| {
        tokio::spawn(fault_window(
            sandbox.sandbox.clone(),
            provider,
            fault,
            answer,
            at(from),
            at(to),
            end,
        ))
    };
    let errors = |rate, status| Fault {
        error_rate: rate,
        error_status: Some(status),
        ..Fault::default()
    };
    let windows = [
        window(
            "apns",
            Fault {
                latency_ms: 1500,
                ..Fault::default()
            },
            None,
            0.25,
            0.4,
        ),
        window(
            "webhook",
            Fault {
                outage_s: Some(5),
                ..Fault::default()
            },
            Some("503 injected"),
            0.3,
            0.5,
        ),
        window("fcm", errors(0.3, 500), Some("500 injected"), 0.3, 0.4),
        window("twilio", errors(0.3, 503), Some("503 injected"), 0.65, 0.8),
        window("smtp", errors(0.3, 429), Some("451 injected"), 0.8, 0.9),
    ];
    until(at(0.1)).await;
    router.kill();
    router.start();
    until(at(0.2)).await;
    kill(Channel::Email, &mut workers);
    until(at(0.4)).await;
    kill(Channel::Sms, &mut workers);
    until(at(0.5)).await;
    nisshi.stop("KILL");
    tokio::time::sleep(Duration::from_secs(3)).await;
    nisshi.restart();
    until(at(0.6)).await;
    scaler.kill();
    scaler.start();
    kill(Channel::Push, &mut workers);
    until(at(0.7)).await;
    kill(Channel::Webhook, &mut workers);
    let mut faults = Vec::new();
    for w in windows {
        faults.push(w.await.unwrap());
    }

    // The traffic ends; then every notification is waited for.
    let deadline = Instant::now() + traffic + Duration::from_secs(120);
    let out = loop {
        if let Some(status) = producer.try_wait().unwrap() {
            let out = producer.wait_with_output().unwrap();
            assert!(
                status.success(),
                "the Python producer failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            break out;
        }
        assert!(Instant::now() < deadline, "the Python producer did not end");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let manifest: serde_json::Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .unwrap(),
    )
    .unwrap();
    let duplicates = manifest["duplicates"].as_u64().unwrap();
    let garbage = manifest["garbage"].as_u64().unwrap();

    // What should arrive: two notifications per unique event, by the
    // producer's rules (even events: email and push; odd: SMS and webhook).
    let mut expected: BTreeMap<String, (Channel, u64)> = BTreeMap::new();
    for n in 0..count {
        let key = DedupKey::new("chaos-team", "order_update", &format!("chaos-{n}"));
        let u = n % 50;
        let to = if n % 2 == 0 {
            [
                (Channel::Email, format!("user{u}@example.test")),
                (Channel::Push, format!("{u:064x}")),
            ]
        } else {
            [
                (Channel::Sms, format!("+1415555{u:04}")),
                (Channel::Webhook, webhook_url.clone()),
            ]
        };
        for (channel, address) in to {
            expected.insert(
                NotificationId::new(key, channel, &address).to_string(),
                (channel, n),
            );
        }
    }
    let final_deadline = Instant::now() + Duration::from_secs(150);
    let (sends, statuses) = loop {
        let now = sends(&sandbox.sandbox);
        let arrived = expected.keys().filter(|id| now.contains_key(*id)).count();
        if arrived == expected.len() || Instant::now() > final_deadline {
            // Quiet: what the retries still hold is given a moment.
            tokio::time::sleep(Duration::from_secs(3)).await;
            break (
                sends(&sandbox.sandbox),
                statuses(&broker, &topology, PARTITIONS).await,
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let stages_alive: Vec<(&str, bool)> = std::iter::once(&mut router)
        .chain(workers.values_mut())
        .chain(std::iter::once(&mut scaler))
        .map(|s| (s.name, s.running()))
        .collect();
    let logs = || {
        std::iter::once(&router)
            .chain(workers.values())
            .chain(std::iter::once(&scaler))
            .map(|s| format!("\n--- {} ---\n{}", s.name, s.tail()))
            .collect::<String>()
    };

    // Nothing lost.
    let failed: BTreeSet<&str> = statuses
        .iter()
        .filter(|s| matches!(s.status, StatusKind::Failed | StatusKind::DeadLettered))
        .filter_map(|s| s.notification_id.as_deref())
        .collect();
    let lost: Vec<(&String, &(Channel, u64))> = expected
        .iter()
        .filter(|(id, _)| !sends.contains_key(*id) && !failed.contains(id.as_str()))
        .collect();
    println!(
        "chaos: {count} events, {} notifications, {} sends, {} failed, {duplicates} duplicate inputs, \
         {garbage} garbage; stages alive {stages_alive:?}",
        expected.len(),
        sends.values().map(Vec::len).sum::<usize>(),
        failed.len()
    );
    if !lost.is_empty() {
        // What the pipeline says about each: its statuses and its event's,
        // and whether its worker's ledger holds it (a delivery recorded).
        let mut story = String::new();
        for &(id, (channel, n)) in &lost {
            let key = format!("chaos-{n}");
            let said: Vec<String> = statuses
                .iter()
                .filter(|s| {
                    s.notification_id.as_deref() == Some(id.as_str())
                        || (s.idempotency_key.as_deref() == Some(key.as_str())
                            && s.notification_id.is_none())
                })
                .map(|s| {
                    format!(
                        "{:?} {:?} {:?} {:?} at {}",
                        s.stage, s.channel, s.status, s.reason, s.occurred_at
                    )
                })
                .collect();
            let ledger = broker
                .read_all(
                    &topology.named(&format!("{}.ledger", channel.as_str())),
                    PARTITIONS,
                    Duration::from_secs(2),
                )
                .await
                .iter()
                .filter(|m| m.key() == Some(id.as_bytes()))
                .count();
            story.push_str(&format!(
                "\n{channel:?} of {key} ({id}): statuses {said:?}; ledger records {ledger}"
            ));
        }
        // Requests the sandbox accepted without a notification id.
        let mut unattributed: BTreeMap<&str, usize> = BTreeMap::new();
        for r in sandbox.sandbox.records(None, None) {
            if r.notification_id.is_none() {
                *unattributed.entry(r.provider).or_default() += 1;
            }
        }
        panic!(
            "lost: {}{story}\nsandbox answers {:?}; accepted without an id {unattributed:?}{}",
            lost.len(),
            sandbox.sandbox.counts(),
            logs()
        );
    }

    // The injected faults happened (a run without them would prove nothing).
    let counts = sandbox.sandbox.counts();
    println!("chaos: sandbox answers {counts:?}");
    for (provider, answer, requests) in faults {
        let Some(answer) = answer else { continue };
        let n = counts
            .get(provider)
            .and_then(|c| c.get(answer))
            .copied()
            .unwrap_or(0);
        if requests == 0 {
            // Its worker sent nothing while the fault was on (rejoining its
            // group, or its traffic already through): nothing to answer.
            println!("chaos: the {provider} fault met no request");
            continue;
        }
        assert!(
            n > 0,
            "{provider} saw {requests} requests during its fault and never answered {answer:?}: {counts:?}"
        );
    }

    // Only the events' notifications reached a provider.
    let strangers: Vec<_> = sends
        .keys()
        .filter(|id| !expected.contains_key(*id))
        .collect();
    assert!(strangers.is_empty(), "unexpected sends: {strangers:?}");

    // Every extra send was in flight in a worker that was killed.
    // A worker reads 3 lanes and 4 retry tiers of PARTITIONS partitions.
    let window = PARTITIONS as usize * 7 * MAX_IN_FLIGHT;
    let mut extra: BTreeMap<Channel, usize> = BTreeMap::new();
    let mut unexplained = Vec::new();
    for (id, at) in &sends {
        if at.len() < 2 {
            continue;
        }
        let channel = expected[id].0;
        *extra.entry(channel).or_default() += at.len() - 1;
        let first = at.iter().min().unwrap();
        let explained = kills
            .iter()
            .any(|(ch, killed)| *ch == channel && (killed - 10_000..=*killed).contains(first));
        if !explained {
            unexplained.push(format!("{channel:?} {id} at {at:?}"));
        }
    }
    println!("chaos: extra sends {extra:?} (kills at {kills:?}, bound {window} per kill)");
    assert!(
        unexplained.is_empty(),
        "sent twice outside any worker crash window: {unexplained:?}"
    );
    for (channel, n) in &extra {
        let killed = kills.iter().filter(|(c, _)| c == channel).count();
        assert!(
            *n <= killed * window,
            "{n} extra {channel:?} sends for {killed} kill(s), bound {window} each"
        );
    }

    // Every duplicate input was recognised.
    let recognised: BTreeSet<&str> = statuses
        .iter()
        .filter(|s| s.status == StatusKind::Duplicate)
        .filter_map(|s| s.idempotency_key.as_deref())
        .collect();
    let missed: Vec<u64> = (0..count)
        .filter(|n| n % 10 == 9 && !recognised.contains(format!("chaos-{n}").as_str()))
        .collect();
    assert!(
        missed.is_empty(),
        "duplicates without a duplicate status: {missed:?}"
    );

    // Every garbage record is dead-lettered with its bytes.
    let dead: BTreeSet<Vec<u8>> = broker
        .read_all(
            &topology.named("dead-letter"),
            PARTITIONS,
            Duration::from_secs(3),
        )
        .await
        .iter()
        .filter_map(|m| m.payload().map(<[u8]>::to_vec))
        .filter(|p| p.starts_with(b"\x00garbage "))
        .collect();
    assert_eq!(
        dead.len() as u64,
        garbage,
        "garbage records in the dead-letter topic"
    );
    // The scaler, killed and restarted mid-run, serves the router group's
    // signal again.
    let signal: serde_json::Value = reqwest::get(format!(
        "http://127.0.0.1:{scaler_port}/scale/{router_group}"
    ))
    .await
    .unwrap_or_else(|e| panic!("the scaler does not answer: {e}{}", logs()))
    .json()
    .await
    .unwrap();
    assert_eq!(signal["partitions"], PARTITIONS, "{signal}");
    let desired = signal["desiredReplicas"].as_u64().unwrap();
    assert!((1..=PARTITIONS as u64).contains(&desired), "{signal}");
    drop(nisshi);
}

/// `fault` on `provider` from `from` to `to`, and past `to` until the
/// provider has answered `answer` at least 3 times, or `end`. Returns the
/// requests the provider saw meanwhile (a fault can only be answered to
/// traffic).
async fn fault_window(
    sandbox: std::sync::Arc<herald_sandbox::Sandbox>,
    provider: &'static str,
    fault: Fault,
    answer: Option<&'static str>,
    from: Instant,
    to: Instant,
    end: Instant,
) -> (&'static str, Option<&'static str>, u64) {
    let requests = |s: &herald_sandbox::Sandbox| -> u64 {
        s.counts().get(provider).map_or(0, |c| c.values().sum())
    };
    let answered = |s: &herald_sandbox::Sandbox| {
        answer.is_none_or(|a| {
            s.counts()
                .get(provider)
                .and_then(|c| c.get(a))
                .is_some_and(|n| *n >= 3)
        })
    };
    tokio::time::sleep_until(from.into()).await;
    let before = requests(&sandbox);
    sandbox.set_fault(provider, fault);
    tokio::time::sleep_until(to.into()).await;
    while !answered(&sandbox) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sandbox.clear_fault(provider);
    (provider, answer, requests(&sandbox) - before)
}

fn sends(sandbox: &herald_sandbox::Sandbox) -> BTreeMap<String, Vec<i64>> {
    let mut sends: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in sandbox.records(None, None) {
        if let Some(id) = r.notification_id {
            sends.entry(id).or_default().push(r.at_ms);
        }
    }
    sends
}
