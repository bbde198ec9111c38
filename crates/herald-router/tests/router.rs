//! The router against a real broker (nisshi), at_least_once: fan-out,
//! duplicates, dead letters, audit statuses, and restore after a restart.

// Tests fail loudly on unexpected errors: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use herald_codec::{encode_single_object, Codec};
use herald_kafka::settings::ProducerKind;
use herald_kafka::Topology;
use herald_model::wire::{ChannelMessage, DeliveryStatus};
use herald_model::{sample, Channel, Priority, StatusKind};
use herald_router::RouterConfig;
use herald_telemetry::{AdminState, Shutdown};
use herald_testkit::{BrokerKind, TestBroker};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

const PARTITIONS: i32 = 2;
const IDLE: Duration = Duration::from_secs(2);

struct Stack {
    broker: TestBroker,
    config: RouterConfig,
    topology: Topology,
}

async fn stack() -> Stack {
    let broker = TestBroker::start(BrokerKind::Fast);
    let topology = broker.herald_topology("router", PARTITIONS, 1).await;
    let settings = topology.settings().clone();
    let mut config = RouterConfig {
        kafka: broker.settings(),
        topics: settings,
        ..Default::default()
    };
    config.router.group = broker.group("router");
    Stack {
        broker,
        config,
        topology,
    }
}

type Running = (Shutdown, tokio::task::JoinHandle<anyhow::Result<()>>);

fn start(config: &RouterConfig) -> Running {
    start_with_clock(config, herald_router::Clock::system())
}

fn start_with_clock(config: &RouterConfig, clock: herald_router::Clock) -> Running {
    let shutdown = Shutdown::new();
    let task = tokio::spawn(herald_router::run_with_clock(
        config.clone(),
        shutdown.clone(),
        AdminState::new("router-test"),
        clock,
    ));
    (shutdown, task)
}

async fn stop(shutdown: Shutdown, task: tokio::task::JoinHandle<anyhow::Result<()>>) {
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("drains in time")
        .unwrap()
        .unwrap();
}

async fn produce(s: &Stack, records: &[(String, Vec<u8>)]) {
    let producer = s
        .broker
        .settings()
        .producer("test", &ProducerKind::Idempotent)
        .unwrap();
    let topic = s.topology.notifications();
    for (key, value) in records {
        producer
            .send(
                FutureRecord::to(&topic).key(key).payload(value),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// Writes a user's preferences to the preferences topic (keyed by user).
async fn put_preferences(s: &Stack, prefs: &herald_model::wire::Preferences) {
    let producer = s
        .broker
        .settings()
        .producer("test", &ProducerKind::Idempotent)
        .unwrap();
    producer
        .send(
            FutureRecord::to(&s.topology.named("preferences"))
                .key(&prefs.user_id)
                .payload(&encode_single_object(prefs).unwrap()),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

async fn lane_messages(s: &Stack, channel: Channel) -> Vec<ChannelMessage> {
    let codec = Codec::single_object();
    let mut out = Vec::new();
    for lane in Priority::ALL {
        for m in s
            .broker
            .read_all(&s.topology.lane(channel, *lane), 1, IDLE)
            .await
        {
            out.push(
                codec
                    .decode_local::<ChannelMessage>(m.payload().unwrap())
                    .unwrap(),
            );
        }
    }
    out
}

async fn statuses(s: &Stack) -> Vec<DeliveryStatus> {
    let codec = Codec::single_object();
    s.broker
        .read_all(&s.topology.named("status"), PARTITIONS, IDLE)
        .await
        .iter()
        .map(|m| {
            codec
                .decode_local::<DeliveryStatus>(m.payload().unwrap())
                .unwrap()
        })
        .collect()
}

fn event(n: u64) -> (String, Vec<u8>) {
    let mut e = sample::notification(n, now());
    if n.is_multiple_of(3) {
        e.priority = Priority::Urgent;
    }
    (e.user_id.clone(), encode_single_object(&e).unwrap())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn fans_out_once_dead_letters_bad_input_and_remembers_across_restarts() {
    let s = stack().await;
    let (shutdown, task) = start(&s.config);

    // 30 unique events, 6 re-sent duplicates, garbage and an invalid event.
    let mut records: Vec<(String, Vec<u8>)> = (0..30).map(event).collect();
    records.extend((0..6).map(|n| event(n * 5)));
    records.push(("user-x".into(), b"{\"not\":\"avro\"}".to_vec()));
    let mut invalid = sample::notification(99, now());
    invalid.tenant.clear();
    records.push((
        invalid.user_id.clone(),
        encode_single_object(&invalid).unwrap(),
    ));
    produce(&s, &records).await;

    let push = lane_messages(&s, Channel::Push).await;
    let email = lane_messages(&s, Channel::Email).await;
    let keys = |msgs: &[ChannelMessage]| {
        msgs.iter()
            .map(|m| m.idempotency_key.clone())
            .collect::<Vec<_>>()
    };
    let unique: BTreeSet<String> = (0..30).map(|n| format!("order-{n}")).collect();
    let mut push_keys = keys(&push);
    push_keys.sort();
    assert_eq!(push_keys.len(), 30, "each unique event once on push");
    assert_eq!(push_keys.iter().cloned().collect::<BTreeSet<_>>(), unique);
    assert_eq!(email.len(), 30, "and once on email");
    // Urgent events went to the urgent lane only.
    let urgent = s
        .broker
        .read_all(&s.topology.lane(Channel::Push, Priority::Urgent), 1, IDLE)
        .await;
    assert_eq!(urgent.len(), 10);
    // Deterministic ids, one per (event, channel, recipient).
    let ids: BTreeSet<&str> = push
        .iter()
        .chain(&email)
        .map(|m| m.notification_id.as_str())
        .collect();
    assert_eq!(ids.len(), 60);

    // The audit trail says why the rest was not sent.
    let st = statuses(&s).await;
    let by: BTreeMap<StatusKind, usize> = st.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.status).or_default() += 1;
        m
    });
    assert_eq!(by.get(&StatusKind::Duplicate), Some(&6), "{by:?}");
    assert_eq!(by.get(&StatusKind::Invalid), Some(&2), "{by:?}");
    let dlq = s
        .broker
        .read_all(&s.topology.named("dead-letter"), PARTITIONS, IDLE)
        .await;
    assert_eq!(dlq.len(), 2);
    let reasons: BTreeSet<String> = dlq
        .iter()
        .map(|m| {
            let h = m.headers().unwrap();
            let r = h.iter().find(|h| h.key == "herald.dlq.reason").unwrap();
            String::from_utf8_lossy(r.value.unwrap()).into_owned()
        })
        .collect();
    assert_eq!(
        reasons,
        BTreeSet::from(["unknown_magic".to_string(), "empty_field".to_string()])
    );
    assert!(
        dlq.iter()
            .any(|m| m.payload() == Some(b"{\"not\":\"avro\"}".as_slice())),
        "original bytes kept"
    );

    stop(shutdown, task).await;

    // A new instance restores the state topic: a late duplicate is still
    // recognised, and nothing committed is processed again.
    let (shutdown, task) = start(&s.config);
    produce(&s, &[event(7), event(31)]).await;
    let push = lane_messages(&s, Channel::Push).await;
    let mut seen = BTreeMap::new();
    for m in &push {
        *seen
            .entry((
                m.idempotency_key.clone(),
                m.source.offset,
                m.source.partition,
            ))
            .or_insert(0) += 1;
    }
    assert_eq!(push.len(), 31, "only order-31 is new: {seen:?}");
    let st = statuses(&s).await;
    assert_eq!(
        st.iter()
            .filter(|s| s.status == StatusKind::Duplicate)
            .count(),
        7
    );
    stop(shutdown, task).await;
}

#[tokio::test]
async fn preference_changes_apply_while_the_router_runs() {
    let s = stack().await;
    let (shutdown, task) = start(&s.config);
    let user_event = |n: u64| {
        let mut e = sample::notification(n, now());
        e.user_id = "user-pref".into();
        (e.user_id.clone(), encode_single_object(&e).unwrap())
    };
    produce(&s, &[user_event(1)]).await;
    assert_eq!(
        lane_messages(&s, Channel::Push).await.len(),
        1,
        "sent before the opt-out"
    );

    // The user opts out of receipts on every channel.
    let mut prefs = sample::preferences(0, now());
    prefs.user_id = "user-pref".into();
    prefs.quiet_hours = None;
    prefs.caps.clear();
    prefs.opt_outs = vec![herald_model::wire::OptOut {
        channel: None,
        category: Some("receipt".into()),
    }];
    put_preferences(&s, &prefs).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    produce(&s, &[user_event(2)]).await;

    let push = lane_messages(&s, Channel::Push).await;
    assert_eq!(push.len(), 1, "nothing more sent after the opt-out");
    let opted: Vec<DeliveryStatus> = statuses(&s)
        .await
        .into_iter()
        .filter(|st| st.status == StatusKind::OptedOut)
        .collect();
    assert_eq!(opted.len(), 2, "one OPTED_OUT per channel: {opted:?}");
    assert!(opted
        .iter()
        .all(|st| st.idempotency_key.as_deref() == Some("order-2")));
    stop(shutdown, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_on_a_broker_without_transactions_fails_at_start_naming_the_setting() {
    let s = stack().await;
    let mut config = s.config.clone();
    config.router.guarantee = herald_router::config::Guarantee::ExactlyOnce;
    config.router.instance_id = Some("router-0".into());
    let (_shutdown, task) = start(&config);
    let err = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("start-up gives up by itself")
        .unwrap()
        .expect_err("nisshi has no transactions");
    let text = format!("{err:#}");
    assert!(
        text.contains("router.guarantee") && text.contains("at_least_once"),
        "the error names the setting and the way out: {text}"
    );
}

/// 22:30 in Berlin, and the end of the quiet hours (22:00-07:00 there) of
/// `user-night`, whose preferences this writes.
async fn a_night_in_berlin(s: &Stack) -> (i64, i64) {
    use chrono::TimeZone;
    let berlin = chrono_tz::Europe::Berlin;
    let t0 = berlin
        .with_ymd_and_hms(2026, 1, 15, 22, 30, 0)
        .unwrap()
        .timestamp_millis();
    let window_end = berlin
        .with_ymd_and_hms(2026, 1, 16, 7, 0, 0)
        .unwrap()
        .timestamp_millis();
    let mut prefs = sample::preferences(0, t0);
    prefs.user_id = "user-night".into();
    prefs.caps.clear();
    prefs.opt_outs.clear();
    put_preferences(s, &prefs).await;
    (t0, window_end)
}

/// An event for `user-night` in `category`, created at `t0`.
fn night_event(n: u64, category: &str, t0: i64) -> (String, Vec<u8>) {
    let mut e = sample::notification(n, t0);
    e.user_id = "user-night".into();
    e.category = category.into();
    e.expires_at = None;
    (e.user_id.clone(), encode_single_object(&e).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_defer_until_the_window_ends_even_across_a_restart() {
    let s = stack().await;
    let mut config = s.config.clone();
    config.router.deferred_tick = Duration::from_millis(100);
    let (t0, window_end) = a_night_in_berlin(&s).await;
    let clock = herald_router::Clock::manual(t0);
    let night_event = |n: u64, category: &str| night_event(n, category, t0);

    let (shutdown, task) = start_with_clock(&config, clock.clone());
    // A receipt waits; a security notice (critical) goes out at once.
    produce(&s, &[night_event(1, "receipt"), night_event(2, "security")]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent: Vec<String> = lane_messages(&s, Channel::Push)
        .await
        .into_iter()
        .map(|m| m.idempotency_key)
        .collect();
    assert_eq!(
        sent,
        vec!["order-2"],
        "only the critical notice during quiet hours"
    );
    let deferred = statuses(&s)
        .await
        .into_iter()
        .filter(|st| st.status == StatusKind::Deferred)
        .count();
    assert_eq!(
        deferred, 2,
        "one DEFERRED status per channel of the receipt"
    );

    // A minute before the window ends: still held.
    clock.set(window_end - 60_000);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        lane_messages(&s, Channel::Push).await.len(),
        1,
        "released early"
    );

    // The router restarts; the window ends while it is down.
    stop(shutdown, task).await;
    let later = herald_router::Clock::manual(window_end + 1_000);
    let (shutdown, task) = start_with_clock(&config, later);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (push, email) = loop {
        let push = lane_messages(&s, Channel::Push).await;
        let email = lane_messages(&s, Channel::Email).await;
        if push.len() >= 2 && email.len() >= 2 || std::time::Instant::now() > deadline {
            break (push, email);
        }
    };
    stop(shutdown, task).await;
    for (name, msgs) in [("push", &push), ("email", &email)] {
        let receipts: Vec<&ChannelMessage> = msgs
            .iter()
            .filter(|m| m.idempotency_key == "order-1")
            .collect();
        assert_eq!(
            receipts.len(),
            1,
            "{name}: the receipt is delivered once after the window"
        );
        assert_eq!(
            receipts[0].not_before,
            Some(window_end),
            "{name}: held until the window's end"
        );
    }
}

/// Held messages across rebalances of the deferred loop's group. With the
/// classic (eager) protocol every rebalance revokes the loop's partitions
/// and assigns them again; the new assignment reads the held messages
/// again from the committed offset. A second member joins the group for an
/// unrelated topic and leaves, twice, while six receipts are held; then
/// the router restarts after the quiet hours and must release every one.
/// Before, the first record of each new assignment, which came in the same
/// wait as the revoke, was held and then forgotten with the revoked
/// partition's messages, and the commit moved past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_survive_rebalances_of_the_deferred_loop() {
    let s = stack().await;
    let mut config = s.config.clone();
    // No tick while the messages are held: the loop waits for records.
    config.router.deferred_tick = Duration::from_secs(600);
    let (t0, window_end) = a_night_in_berlin(&s).await;
    let receipts: Vec<(String, Vec<u8>)> = (1..=6).map(|n| night_event(n, "receipt", t0)).collect();
    let (shutdown, task) = start_with_clock(&config, herald_router::Clock::manual(t0));
    produce(&s, &receipts).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let held = statuses(&s)
            .await
            .into_iter()
            .filter(|st| st.status == StatusKind::Deferred)
            .count();
        if held == 2 * receipts.len() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{held} held");
    }
    // Another member of the deferred loop's group, for an unrelated topic.
    let group = format!("{}-deferred", config.router.group);
    for _ in 0..2 {
        s.broker
            .join_and_leave(&group, &s.topology.named("status"))
            .await;
    }
    // Give the loop its partitions back, then restart after the window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop(shutdown, task).await;
    let (shutdown, task) =
        start_with_clock(&config, herald_router::Clock::manual(window_end + 1_000));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let released = loop {
        let push = lane_messages(&s, Channel::Push).await;
        let email = lane_messages(&s, Channel::Email).await;
        let released = push.len() + email.len();
        if released >= 2 * receipts.len() || std::time::Instant::now() > deadline {
            break released;
        }
    };
    stop(shutdown, task).await;
    assert_eq!(
        released,
        2 * receipts.len(),
        "every held message released after the window"
    );
}
