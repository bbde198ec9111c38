//! A webhook worker on the local broker delivering to an in-process
//! sandbox: the set-up the worker tests share.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_codec::Codec;
use herald_deliver::providers::webhook::WebhookSettings;
use herald_deliver::retry::RetrySettings;
use herald_deliver::{DeliverConfig, DeliverSettings};
use herald_kafka::Topology;
use herald_model::secret::Secret;
use herald_model::wire::{ChannelMessage, DeliveryStatus};
use herald_model::{sample, Channel, Priority};
use herald_sandbox::{Bound, Running, Sandbox, SandboxSettings};
use herald_telemetry::shutdown::Shutdown;
use herald_telemetry::AdminState;
use herald_testkit::{BrokerKind, TestBroker};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

pub const WAIT: Duration = Duration::from_secs(60);

pub struct Setup {
    pub broker: TestBroker,
    pub topology: Topology,
    pub sandbox: Arc<Sandbox>,
    pub bound: Bound,
    pub secret: String,
    _sandbox: Running,
}

pub async fn setup(base: &str) -> Setup {
    let broker = TestBroker::start(BrokerKind::Fast);
    let topology = broker.herald_topology(base, 2, 2).await;
    let mut key = [0u8; 32];
    openssl::rand::rand_bytes(&mut key).unwrap();
    let secret = herald_sandbox::webhook_secret(&key);
    let running = herald_sandbox::serve(SandboxSettings {
        webhook_secret: secret.clone(),
        ..SandboxSettings::loopback()
    })
    .await
    .unwrap();
    Setup {
        broker,
        topology,
        sandbox: Arc::clone(&running.sandbox),
        bound: running.bound,
        secret,
        _sandbox: running,
    }
}

impl Setup {
    pub fn config(&self) -> DeliverConfig {
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
                    allow_private_networks: true,
                    timeout: Duration::from_secs(5),
                }),
                ..DeliverSettings::default()
            },
            ..DeliverConfig::default()
        }
    }

    /// The provider answers every request with `503` until the fault is
    /// cleared.
    pub fn fail_every_request(&self) {
        self.sandbox.set_fault(
            "webhook",
            herald_sandbox::Fault {
                error_rate: 1.0,
                error_status: Some(503),
                ..herald_sandbox::Fault::default()
            },
        );
    }

    /// An idempotent producer to this setup's broker.
    pub fn producer(&self) -> FutureProducer {
        self.broker
            .settings()
            .producer("test", &herald_kafka::settings::ProducerKind::Idempotent)
            .unwrap()
    }

    pub fn message(&self, n: u64) -> ChannelMessage {
        let mut m = sample::channel_message(n, now_ms());
        m.channel = Channel::Webhook;
        m.recipient.address = format!("http://{}/hooks/orders", self.bound.http);
        m.recipient.platform = None;
        m.priority = [Priority::Urgent, Priority::Normal, Priority::Bulk][(n % 3) as usize];
        m.not_before = None;
        m.content.body = format!(r#"{{"order":{n}}}"#);
        m
    }

    pub async fn produce(&self, producer: &FutureProducer, m: &ChannelMessage) {
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
    pub fn delivered(&self) -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        for r in self.sandbox.records(Some("webhook"), None) {
            *seen.entry(r.notification_id.unwrap()).or_default() += 1;
        }
        seen
    }

    pub async fn wait_delivered(&self, n: usize) -> HashMap<String, usize> {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = self.delivered();
            if seen.len() >= n {
                return seen;
            }
            if Instant::now() >= deadline {
                // What the worker said about the ones that did not arrive.
                let missing: Vec<String> = self
                    .statuses()
                    .await
                    .into_iter()
                    .filter(|s| {
                        s.notification_id
                            .as_ref()
                            .is_some_and(|id| !seen.contains_key(id))
                    })
                    .map(|s| {
                        let id = s.notification_id.unwrap_or_default();
                        format!("{id} {:?} {:?}", s.status, s.reason)
                    })
                    .collect();
                panic!(
                    "{} of {n} delivered; sandbox {:?}; statuses of the others: {missing:?}",
                    seen.len(),
                    self.sandbox.counts()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn statuses(&self) -> Vec<DeliveryStatus> {
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

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn start(config: DeliverConfig) -> (Shutdown, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let stop = Shutdown::new();
    let task = tokio::spawn(herald_deliver::run(
        config,
        stop.clone(),
        AdminState::new("deliver"),
    ));
    (stop, task)
}

pub async fn stop(s: Shutdown, task: tokio::task::JoinHandle<anyhow::Result<()>>) {
    s.trigger();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("worker stops")
        .unwrap()
        .unwrap();
}
