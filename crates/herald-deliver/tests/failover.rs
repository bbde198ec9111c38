//! Failover within a channel: SMS through a primary Twilio account that is
//! down and a secondary that works. Every message goes out once, through
//! the secondary, and the status names the route that delivered it.

// Tests fail loudly on unexpected errors: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{now_ms, start, stop, WAIT};
use herald_codec::Codec;
use herald_deliver::providers::twilio::TwilioSettings;
use herald_deliver::{DeliverConfig, DeliverSettings};
use herald_kafka::settings::ProducerKind;
use herald_model::secret::Secret;
use herald_model::wire::DeliveryStatus;
use herald_model::{sample, Channel, Priority, StatusKind};
use herald_sandbox::{Bound, Fault, Running, Sandbox, SandboxSettings};
use herald_testkit::{BrokerKind, TestBroker};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

const SID: &str = "AC00000000000000000000000000000002";

async fn twilio_sandbox(token: &str) -> (Arc<Sandbox>, Bound, Running) {
    let mut settings = SandboxSettings::loopback();
    settings.twilio.account_sid = SID.into();
    settings.twilio.auth_token = token.into();
    let running = herald_sandbox::serve(settings).await.unwrap();
    (Arc::clone(&running.sandbox), running.bound, running)
}

fn twilio(bound: &Bound, token: &str) -> TwilioSettings {
    TwilioSettings {
        base_url: format!("http://{}", bound.http),
        account_sid: SID.into(),
        auth_token: Secret::new(token),
        from: Some("+15005550006".into()),
        messaging_service_sid: None,
        status_callback: None,
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sms_fails_over_to_the_secondary_provider() {
    let broker = TestBroker::start(BrokerKind::Fast);
    let topology = broker.herald_topology("deliver-failover", 2, 2).await;
    let (primary, primary_at, _p) = twilio_sandbox("token-one").await;
    let (secondary, secondary_at, _s) = twilio_sandbox("token-two").await;
    primary.set_fault(
        "twilio",
        Fault {
            outage_s: Some(600),
            ..Fault::default()
        },
    );
    let config = DeliverConfig {
        kafka: broker.settings(),
        topics: topology.settings().clone(),
        deliver: DeliverSettings {
            channel: Some(Channel::Sms),
            group: Some(broker.group("failover")),
            twilio: Some(twilio(&primary_at, "token-one")),
            twilio_secondary: Some(twilio(&secondary_at, "token-two")),
            ..DeliverSettings::default()
        },
        ..DeliverConfig::default()
    };
    let producer = broker
        .settings()
        .producer("test", &ProducerKind::Idempotent)
        .unwrap();
    let topic = topology.lane(Channel::Sms, Priority::Normal);
    let produce = |range: std::ops::Range<u64>| {
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            for n in range {
                let mut m = sample::channel_message(n, now_ms());
                m.channel = Channel::Sms;
                m.priority = Priority::Normal;
                m.not_before = None;
                m.recipient.address = "+14155550100".into();
                m.recipient.platform = None;
                let bytes = Codec::single_object().encode(&topic, &m).await.unwrap();
                producer
                    .send(
                        FutureRecord::to(&topic).key(&m.user_id).payload(&bytes),
                        Timeout::After(WAIT),
                    )
                    .await
                    .unwrap();
            }
        }
    };
    let wait_for = |n: usize| {
        let (primary, secondary) = (Arc::clone(&primary), Arc::clone(&secondary));
        async move {
            let deadline = Instant::now() + WAIT;
            while secondary.records(Some("twilio"), None).len() < n {
                assert!(
                    Instant::now() < deadline,
                    "{:?} / {:?}",
                    primary.counts(),
                    secondary.counts()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    produce(0..30).await;
    let (stopper, task) = start(config);
    wait_for(30).await;
    // The first wave was in flight together (2 partitions x 16) when the
    // primary's breaker opened; from then on the primary is skipped.
    let first_wave = primary.counts()["twilio"]["503 injected"];
    produce(30..60).await;
    wait_for(60).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop(stopper, task).await;
    let second_wave = primary.counts()["twilio"]["503 injected"] - first_wave;
    println!("primary tried {first_wave} times in the first wave, {second_wave} in the second");
    assert!(
        second_wave <= 1,
        "{second_wave} requests to an open primary"
    );
    assert_eq!(secondary.records(Some("twilio"), None).len(), 60);
    assert!(primary.records(Some("twilio"), None).is_empty());

    let codec = Codec::single_object();
    let mut sent = 0;
    for m in broker
        .read_all(&topology.named("status"), 2, Duration::from_secs(3))
        .await
    {
        let s: DeliveryStatus = codec.decode(m.payload().unwrap()).await.unwrap();
        if s.status == StatusKind::Sent {
            assert_eq!(s.provider.as_deref(), Some("twilio-secondary"));
            sent += 1;
        }
    }
    assert_eq!(sent, 60);
}
