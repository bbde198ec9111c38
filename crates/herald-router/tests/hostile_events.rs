//! Events written by an adversary, straight into `Router::process`: any
//! text in every field (control characters, markup, quotes, lone
//! surrogates' replacement, right-to-left marks), any timestamps, any
//! channel list, template variables aimed at the HTML and JSON contexts,
//! and raw bytes that are only nearly a record. Whatever comes in, the
//! router answers with records, never an error or a panic; every input
//! leaves a trace (routed, or a status, or a dead letter carrying its
//! bytes); no output is larger than a record may be; and every lane
//! message it writes decodes, has an address, is the only one of its
//! notification id, and a webhook's body is still JSON.

// Tests fail loudly on unexpected errors: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use herald_codec::{encode_single_object, Codec};
use herald_kafka::produce::MAX_RECORD_BYTES;
use herald_kafka::Topology;
use herald_model::wire::{
    ChannelMessage, Content, Device, EmailContent, NotificationRequested, PushContent, Recipients,
    SmsContent, TemplateRef, WebhookContent,
};
use herald_model::{sample, Channel, DevicePlatform, Priority};
use herald_router::process::{Input, PartitionState, Router};
use herald_router::templates::TemplateStore;
use proptest::prelude::*;

const NOW: i64 = 1_790_000_000_000;

/// A template whose fields put variables into plain text, HTML and a
/// webhook's JSON.
const TEMPLATES: &str = r#"
[hostile]
default_locale = "en"
[hostile.locales.en]
title = "Hi {{ name }}"
subject = "About {{ name }}"
body = "{{ name }} said {{ text }}"
html = "<p title=\"{{ name }}\">{{ text }}</p>"
"#;

fn router() -> Router {
    Router::new(
        Default::default(),
        Topology::new(Default::default()),
        toml::from_str::<TemplateStore>(TEMPLATES).unwrap(),
        Codec::single_object(),
    )
}

/// Any text: mostly printable, with control characters, markup and JSON
/// metacharacters mixed in.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "[\\x00-\\x1f\"'<>&\\\\{}\u{202e}\u{feff}a-z]{0,40}",
        Just(String::new()),
    ]
}

fn channels() -> impl Strategy<Value = Vec<Channel>> {
    proptest::collection::vec(
        prop_oneof![
            Just(Channel::Push),
            Just(Channel::Sms),
            Just(Channel::Email),
            Just(Channel::Webhook)
        ],
        0..6,
    )
}

fn event() -> impl Strategy<Value = NotificationRequested> {
    (
        (text(), text(), text(), text()),
        channels(),
        (any::<i64>(), proptest::option::of(any::<i64>())),
        (text(), text(), text(), text()),
        (text(), text(), proptest::option::of(text())),
        any::<bool>(),
        prop_oneof![
            Just(Priority::Urgent),
            Just(Priority::Normal),
            Just(Priority::Bulk)
        ],
    )
        .prop_map(
            |(
                (key, tenant, user, category),
                channels,
                (created_at, expires_at),
                (a, b, c, d),
                (phone, email, url),
                templated,
                priority,
            )| {
                let mut e = sample::notification(1, NOW);
                e.idempotency_key = key;
                e.tenant = tenant;
                e.user_id = user;
                e.category = category;
                e.channels = channels;
                e.priority = priority;
                e.created_at = created_at;
                e.expires_at = expires_at;
                e.recipients = Recipients {
                    devices: vec![
                        Device {
                            token: a.clone(),
                            platform: DevicePlatform::Apns,
                        },
                        Device {
                            token: b.clone(),
                            platform: DevicePlatform::Fcm,
                        },
                    ],
                    phone: Some(phone),
                    email: Some(email),
                    webhook_url: url.or_else(|| Some("https://example.com/hook".into())),
                };
                if templated {
                    e.content = None;
                    e.template = Some(TemplateRef {
                        template_id: "hostile".into(),
                        locale: Some(c.clone()),
                        variables: BTreeMap::from([
                            ("name".to_string(), a),
                            ("text".to_string(), d),
                        ]),
                    });
                } else {
                    e.template = None;
                    e.content = Some(Content {
                        push: Some(PushContent {
                            title: a.clone(),
                            body: b.clone(),
                            data: BTreeMap::from([(c.clone(), d.clone())]),
                        }),
                        sms: Some(SmsContent { body: c.clone() }),
                        email: Some(EmailContent {
                            subject: a,
                            text: b,
                            html: Some(c),
                        }),
                        webhook: Some(WebhookContent {
                            event_type: d.clone(),
                            payload_json: d,
                        }),
                    });
                }
                e
            },
        )
}

/// Every lane topic.
fn lanes(topology: &Topology) -> Vec<String> {
    Channel::ALL
        .iter()
        .flat_map(|c| {
            [Priority::Urgent, Priority::Normal, Priority::Bulk].map(|p| topology.lane(*c, p))
        })
        .collect()
}

/// Processes one record; asserts what holds for every input.
fn check(router: &Router, st: &mut PartitionState, offset: i64, payload: &[u8]) -> Vec<String> {
    let outs = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(router.process(
            st,
            Input {
                topic: "herald.notifications",
                partition: 0,
                offset,
                key: Some(b"k"),
                payload: Some(payload),
            },
            NOW,
        ))
        .expect("the router answers every input with records");
    let topology = router.topology();
    let status = topology.named("status");
    let dead = topology.named("dead-letter");
    let lanes = lanes(topology);
    assert!(
        outs.iter()
            .any(|o| o.topic == status || o.topic == dead || lanes.contains(&o.topic)),
        "an input left no trace: {:?}",
        outs.iter().map(|o| &o.topic).collect::<Vec<_>>()
    );
    let mut ids = std::collections::HashSet::new();
    for o in &outs {
        assert!(
            o.size() <= MAX_RECORD_BYTES,
            "{} is {} bytes",
            o.topic,
            o.size()
        );
        if o.topic == dead {
            assert_eq!(
                o.payload.as_deref(),
                Some(payload),
                "the dead letter keeps the bytes"
            );
        }
        if lanes.contains(&o.topic) {
            let m: ChannelMessage = router
                .codec()
                .decode_local(o.payload.as_deref().unwrap())
                .expect("a lane message decodes");
            assert!(
                !m.recipient.address.is_empty(),
                "a message to nobody: {m:?}"
            );
            assert!(
                ids.insert(m.notification_id.clone()),
                "one notification twice: {m:?}"
            );
            if m.channel == Channel::Webhook {
                serde_json::from_str::<serde_json::Value>(&m.content.body)
                    .expect("a webhook body is JSON");
            }
        }
    }
    outs.into_iter().map(|o| o.topic).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn any_event_is_routed_or_refused_with_a_trace(e in event()) {
        let router = router();
        let mut st = PartitionState::default();
        let bytes = encode_single_object(&e).unwrap();
        check(&router, &mut st, 7, &bytes);
        // The same event again, a later record, is never routed a second time.
        let again = check(&router, &mut st, 8, &bytes);
        let lanes = lanes(router.topology());
        let routed_again = again.iter().any(|t| lanes.contains(t));
        prop_assert!(!routed_again, "a replayed event was routed again: {again:?}");
    }

    #[test]
    fn bytes_that_are_nearly_a_record_are_dead_lettered(
        n in 0u64..1000,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let router = router();
        let mut bytes = encode_single_object(&sample::notification(n, NOW)).unwrap();
        for (i, b) in flips {
            let i = i % bytes.len();
            bytes[i] ^= b;
        }
        bytes.truncate(1 + cut % bytes.len());
        check(&router, &mut PartitionState::default(), 7, &bytes);
    }
}
