//! The webhook worker on the local broker, delivering to the sandbox:
//! every message once, a poison record dead-lettered, a replay not sent
//! again, and under 30% provider errors everything delivered with bounded
//! attempts through the retry tiers.

// Tests fail loudly on unexpected errors: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use herald_codec::Codec;
use herald_deliver::providers::webhook::WebhookSettings;
use herald_deliver::retry::RetrySettings;
use herald_deliver::{DeliverConfig, DeliverSettings};
use herald_kafka::settings::ProducerKind;
use herald_kafka::Topology;
use herald_model::secret::Secret;
use herald_model::wire::{ChannelMessage, DeliveryStatus};
use herald_model::{sample, Channel, Priority, StatusKind};
use herald_sandbox::{Bound, Fault, Sandbox, SandboxSettings};
use herald_telemetry::shutdown::Shutdown;
use herald_telemetry::AdminState;
use herald_testkit::{BrokerKind, TestBroker};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

const WAIT: Duration = Duration::from_secs(60);

struct Setup {
    broker: TestBroker,
    topology: Topology,
    sandbox: Arc<Sandbox>,
    bound: Bound,
    secret: String,
    _sandbox_stop: Shutdown,
}

async fn setup(base: &str) -> Setup {
    let broker = TestBroker::start(BrokerKind::Fast);
    let topology = broker.herald_topology(base, 2, 2).await;
    let mut key = [0u8; 32];
    openssl::rand::rand_bytes(&mut key).unwrap();
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let sandbox = Sandbox::new(SandboxSettings {
        http_listen: "127.0.0.1:0".parse().unwrap(),
        smtp_listen: "127.0.0.1:0".parse().unwrap(),
        webhook_secret: secret.clone(),
        ..SandboxSettings::default()
    });
    let stop = Shutdown::new();
    let (bound, _) = herald_sandbox::start(sandbox.clone(), stop.clone())
        .await
        .unwrap();
    Setup {
        broker,
        topology,
        sandbox,
        bound,
        secret,
        _sandbox_stop: stop,
    }
}

impl Setup {
    fn config(&self) -> DeliverConfig {
        DeliverConfig {
            kafka: self.broker.settings(),
            topics: self.topology.settings().clone(),
            deliver: DeliverSettings {
                channel: Some(Channel::Webhook),
                group: Some(self.broker.group("deliver")),
                max_in_flight: 8,
                retry: RetrySettings {
                    max_attempts: 6,
                    base_delay: Duration::from_millis(100),
                    max_delay: Duration::from_millis(800),
                    jitter: 0.2,
                },
                webhook: Some(WebhookSettings {
                    secret: Secret::new(self.secret.clone()),
                    allowed_hosts: vec!["127.0.0.1".into()],
                    timeout: Duration::from_secs(5),
                }),
                ..DeliverSettings::default()
            },
            ..DeliverConfig::default()
        }
    }

    fn message(&self, n: u64) -> ChannelMessage {
        let mut m = sample::channel_message(n, now_ms());
        m.channel = Channel::Webhook;
        m.recipient.address = format!("http://{}/hooks/orders", self.bound.http);
        m.recipient.platform = None;
        m.priority = [Priority::Urgent, Priority::Normal, Priority::Bulk][(n % 3) as usize];
        m.not_before = None;
        m.content.body = format!(r#"{{"order":{n}}}"#);
        m
    }

    async fn produce(&self, producer: &FutureProducer, m: &ChannelMessage) {
        let topic = self.topology.lane(Channel::Webhook, m.priority);
        let bytes = Codec::single_object().encode(&topic, m).await.unwrap();
        producer
            .send(
                FutureRecord::to(&topic).key(&m.user_id).payload(&bytes),
                Timeout::After(WAIT),
            )
            .await
            .unwrap();
    }

    /// Accepted webhook deliveries per notification id.
    fn delivered(&self) -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        for r in self.sandbox.records(Some("webhook"), None) {
            *seen.entry(r.notification_id.unwrap()).or_default() += 1;
        }
        seen
    }

    async fn wait_delivered(&self, n: usize) -> HashMap<String, usize> {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = self.delivered();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} delivered; sandbox {:?}",
                seen.len(),
                self.sandbox.counts()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn statuses(&self) -> Vec<DeliveryStatus> {
        let codec = Codec::single_object();
        let mut out = Vec::new();
        for m in self
            .broker
            .read_all(&self.topology.named("status"), 2, Duration::from_secs(3))
            .await
        {
            out.push(
                codec
                    .decode::<DeliveryStatus>(m.payload().unwrap())
                    .await
                    .unwrap(),
            );
        }
        out
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn start(config: DeliverConfig) -> (Shutdown, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let stop = Shutdown::new();
    let task = tokio::spawn(herald_deliver::run(
        config,
        stop.clone(),
        AdminState::new("deliver"),
    ));
    (stop, task)
}

async fn stop(s: Shutdown, task: tokio::task::JoinHandle<anyhow::Result<()>>) {
    s.trigger();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("worker stops")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivers_each_message_once_dead_letters_poison_and_skips_a_replay() {
    let s = setup("deliver-once").await;
    let producer = s
        .broker
        .settings()
        .producer("test", &ProducerKind::Idempotent)
        .unwrap();
    let messages: Vec<ChannelMessage> = (0..120).map(|n| s.message(n)).collect();
    for m in &messages {
        s.produce(&producer, m).await;
    }
    let poison_topic = s.topology.lane(Channel::Webhook, Priority::Normal);
    producer
        .send(
            FutureRecord::to(&poison_topic)
                .key("user-x")
                .payload(&b"\x00not avro"[..]),
            Timeout::After(WAIT),
        )
        .await
        .unwrap();

    let (stopper, task) = start(s.config());
    let seen = s.wait_delivered(120).await;
    assert!(seen.values().all(|n| *n == 1), "each once: {seen:?}");

    // A replay of a delivered message (same notification id) is not sent again.
    s.produce(&producer, &messages[0]).await;
    s.produce(&producer, &messages[1]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(s.delivered().len(), 120);
    assert!(s.delivered().values().all(|n| *n == 1));
    stop(stopper, task).await;

    // The poison record is in the channel's dead-letter topic with its reason.
    let dlq = s
        .broker
        .read_all(
            &s.topology.named("webhook.dead-letter"),
            2,
            Duration::from_secs(3),
        )
        .await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].payload().unwrap(), b"\x00not avro");
    let headers: BTreeMap<&str, String> = dlq[0]
        .headers()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h.key,
                String::from_utf8_lossy(h.value.unwrap()).into_owned(),
            )
        })
        .collect();
    assert!(
        headers["herald.dlq.source"].starts_with(&poison_topic),
        "{headers:?}"
    );

    // One Sent status per message, with the provider's id.
    let statuses = s.statuses().await;
    let sent: Vec<_> = statuses
        .iter()
        .filter(|x| x.status == StatusKind::Sent)
        .collect();
    assert_eq!(sent.len(), 120);
    assert!(sent
        .iter()
        .all(|x| x.provider.as_deref() == Some("webhook") && x.provider_message_id.is_some()));

    // A restarted worker resumes after the committed offsets: nothing again.
    let (stopper, task) = start(s.config());
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop(stopper, task).await;
    assert_eq!(s.sandbox.records(Some("webhook"), None).len(), 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_30_percent_errors_everything_arrives_with_bounded_attempts() {
    let s = setup("deliver-faults").await;
    s.sandbox.set_fault(
        "webhook",
        Fault {
            error_rate: 0.3,
            error_status: Some(503),
            ..Fault::default()
        },
    );
    let producer = s
        .broker
        .settings()
        .producer("test", &ProducerKind::Idempotent)
        .unwrap();
    for n in 0..100 {
        s.produce(&producer, &s.message(n)).await;
    }
    let config = s.config();
    let max_attempts = config.deliver.retry.max_attempts;
    let (stopper, task) = start(config);
    let seen = s.wait_delivered(100).await;
    assert!(seen.values().all(|n| *n == 1), "each once: {seen:?}");
    stop(stopper, task).await;
    let counts = s.sandbox.counts();
    let injected = counts["webhook"]["503 injected"];
    let accepted = counts["webhook"]["accepted"];
    println!("100 messages: {accepted} accepted, {injected} injected 503s");
    assert_eq!(accepted, 100);
    // 30% of all requests failed: about 43 failures for 100 successes.
    assert!((35..=50).contains(&injected), "{injected}");
    let statuses = s.statuses().await;
    let retries = statuses
        .iter()
        .filter(|x| x.status == StatusKind::RetryScheduled)
        .count();
    assert_eq!(retries as u64, injected, "each failure scheduled one retry");
    let most = statuses
        .iter()
        .filter(|x| x.status == StatusKind::Sent)
        .map(|x| x.attempt)
        .max()
        .unwrap();
    assert!(most <= max_attempts, "attempts bounded: {most}");
    assert!(statuses
        .iter()
        .all(|x| x.status != StatusKind::DeadLettered));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_after_is_honoured_and_permanent_or_stale_messages_are_not_retried() {
    let s = setup("deliver-classes").await;
    let producer = s
        .broker
        .settings()
        .producer("test", &ProducerKind::Idempotent)
        .unwrap();
    let (stopper, task) = start(s.config());

    // 429 with Retry-After: 2 s, once.
    s.sandbox.set_fault(
        "webhook",
        Fault {
            error_rate: 1.0,
            error_status: Some(429),
            retry_after_s: Some(2),
            ..Fault::default()
        },
    );
    let limited = s.message(1);
    s.produce(&producer, &limited).await;
    let deadline = Instant::now() + WAIT;
    while s
        .sandbox
        .counts()
        .get("webhook")
        .and_then(|c| c.get("429 injected"))
        .is_none()
    {
        assert!(Instant::now() < deadline, "no 429 seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.sandbox.clear_fault("webhook");

    // A deleted endpoint (410) and an expired message.
    let mut gone = s.message(2);
    gone.recipient.address = format!("http://{}/hooks/gone", s.bound.http);
    s.produce(&producer, &gone).await;
    let mut stale = s.message(3);
    stale.expires_at = Some(now_ms() - 1_000);
    s.produce(&producer, &stale).await;

    s.wait_delivered(1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop(stopper, task).await;

    let statuses = s.statuses().await;
    let of = |id: &str, kind: StatusKind| {
        statuses
            .iter()
            .filter(|x| x.notification_id.as_deref() == Some(id) && x.status == kind)
            .collect::<Vec<_>>()
    };
    let retry = of(&limited.notification_id, StatusKind::RetryScheduled);
    let sent = of(&limited.notification_id, StatusKind::Sent);
    assert_eq!((retry.len(), sent.len()), (1, 1));
    let waited = sent[0].occurred_at - retry[0].occurred_at;
    assert!(
        waited >= 1_900,
        "Retry-After 2 s, retried after {waited} ms"
    );
    assert_eq!(sent[0].attempt, 2);

    let invalid = of(&gone.notification_id, StatusKind::TokenInvalid);
    assert_eq!(invalid.len(), 1, "{statuses:#?}");
    assert_eq!(invalid[0].reason.as_deref(), Some("410"));
    assert_eq!(
        s.sandbox.counts()["webhook"]["410 endpoint deleted"],
        1,
        "not retried"
    );

    assert_eq!(of(&stale.notification_id, StatusKind::Stale).len(), 1);
    assert!(s
        .sandbox
        .records(None, Some(&stale.notification_id))
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_60_second_outage_opens_the_breaker_and_loses_nothing() {
    let s = setup("deliver-outage").await;
    let producer = s
        .broker
        .settings()
        .producer("test", &ProducerKind::Idempotent)
        .unwrap();
    let mut config = s.config();
    config.deliver.breaker.open_for = Duration::from_secs(2);
    config.deliver.breaker.max_open_for = Duration::from_secs(8);
    s.sandbox.set_fault(
        "webhook",
        Fault {
            outage_s: Some(60),
            ..Fault::default()
        },
    );
    let started = Instant::now();
    let (stopper, task) = start(config);
    for n in 0..40 {
        s.produce(&producer, &s.message(n)).await;
    }
    // During the outage the breaker opens: requests are probes, not a flood.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let open = herald_telemetry::Metrics::global()
        .breaker_state
        .with_label_values(&["webhook", "webhook", "open"])
        .get()
        + herald_telemetry::Metrics::global()
            .breaker_state
            .with_label_values(&["webhook", "webhook", "half_open"])
            .get();
    assert_eq!(open, 1, "the breaker is not closed during the outage");
    let during = s.sandbox.counts()["webhook"]["503 injected"];
    assert!(during <= 20, "{during} requests in 30 s of outage");
    assert!(s.delivered().is_empty());

    let seen = s.wait_delivered(40).await;
    let took = started.elapsed();
    assert!(seen.values().all(|n| *n == 1), "each once: {seen:?}");
    assert!(took >= Duration::from_secs(60), "{took:?}");
    stop(stopper, task).await;
    let injected = s.sandbox.counts()["webhook"]["503 injected"];
    println!("60 s outage: {injected} requests refused, 40 delivered after {took:?}");
    let statuses = s.statuses().await;
    assert!(statuses
        .iter()
        .all(|x| x.status != StatusKind::DeadLettered));
    assert_eq!(
        statuses
            .iter()
            .filter(|x| x.status == StatusKind::Sent)
            .count(),
        40
    );
}
