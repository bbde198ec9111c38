//! Sample records: what `herald send` produces and what tests start from.
//! Addresses use reserved example ranges (555 numbers, example.com).

use std::collections::BTreeMap;

use crate::kinds::{Channel, DevicePlatform, Priority, Stage, StatusKind};
use crate::wire::*;

/// A valid notification with every optional part filled, numbered `n`.
pub fn notification(n: u64, now_ms: i64) -> NotificationRequested {
    let mut vars = BTreeMap::new();
    vars.insert("order".to_string(), format!("{n}"));
    NotificationRequested {
        idempotency_key: format!("order-{n}"),
        tenant: "acme".into(),
        user_id: format!("user-{}", n % 1000),
        category: "receipt".into(),
        priority: Priority::Normal,
        channels: vec![Channel::Push, Channel::Email],
        content: Some(Content {
            push: Some(PushContent {
                title: "Your receipt".into(),
                body: format!("Order {n} is confirmed"),
                data: vars.clone(),
            }),
            sms: None,
            email: Some(EmailContent {
                subject: format!("Receipt for order {n}"),
                text: "Thanks for your order.".into(),
                html: Some("<p>Thanks for your order.</p>".into()),
            }),
            webhook: None,
        }),
        template: None,
        recipients: Recipients {
            devices: vec![Device {
                token: format!("{n:064x}"),
                platform: DevicePlatform::Apns,
            }],
            phone: Some("+15555550100".into()),
            email: Some(format!("user{}@example.com", n % 1000)),
            webhook_url: None,
        },
        created_at: now_ms,
        expires_at: Some(now_ms + 86_400_000),
        trace: Some(TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: None,
        }),
    }
}

/// A channel message for `notification(n)`'s push recipient.
pub fn channel_message(n: u64, now_ms: i64) -> ChannelMessage {
    ChannelMessage {
        notification_id: format!("{n:032x}"),
        idempotency_key: format!("order-{n}"),
        tenant: "acme".into(),
        user_id: format!("user-{}", n % 1000),
        category: "receipt".into(),
        priority: Priority::Urgent,
        channel: Channel::Push,
        recipient: Recipient {
            address: format!("{n:064x}"),
            platform: Some(DevicePlatform::Fcm),
        },
        content: RenderedContent {
            title: Some("Your receipt".into()),
            subject: None,
            body: format!("Order {n} is confirmed"),
            html: None,
            data: BTreeMap::from([("order".to_string(), n.to_string())]),
        },
        source: SourceRef {
            topic: "herald.notifications".into(),
            partition: 3,
            offset: n as i64,
        },
        attempt: 1,
        not_before: Some(now_ms + 1000),
        created_at: now_ms,
        expires_at: None,
        trace: None,
    }
}

/// A status event.
pub fn delivery_status(n: u64, now_ms: i64) -> DeliveryStatus {
    DeliveryStatus {
        notification_id: Some(format!("{n:032x}")),
        idempotency_key: Some(format!("order-{n}")),
        tenant: Some("acme".into()),
        user_id: None,
        category: Some("receipt".into()),
        channel: Some(Channel::Sms),
        stage: Stage::Deliver,
        status: StatusKind::RetryScheduled,
        reason: Some("provider_5xx".into()),
        detail: Some("HTTP 503 from provider".into()),
        provider: Some("twilio".into()),
        provider_message_id: None,
        attempt: 2,
        occurred_at: now_ms,
        trace: None,
    }
}

/// A dedup state entry.
pub fn dedup_entry(n: u64, now_ms: i64) -> DedupEntry {
    DedupEntry {
        expires_at: now_ms + 86_400_000,
        source_partition: (n % 12) as i32,
        source_offset: n as i64,
    }
}

/// A delivery-ledger entry.
pub fn ledger_entry(n: u64, now_ms: i64) -> LedgerEntry {
    LedgerEntry {
        delivered_at: now_ms,
        provider: "webhook".into(),
        provider_message_id: format!("msg-{n}"),
        expires_at: now_ms + 7 * 86_400_000,
    }
}

/// Preferences with quiet hours, an opt-out and a cap.
pub fn preferences(n: u64, now_ms: i64) -> Preferences {
    Preferences {
        tenant: "acme".into(),
        user_id: format!("user-{n}"),
        timezone: "Europe/Berlin".into(),
        locale: Some("de-DE".into()),
        quiet_hours: Some(QuietHours {
            start_minute: 22 * 60,
            end_minute: 7 * 60,
        }),
        opt_outs: vec![OptOut {
            channel: Some(Channel::Sms),
            category: Some("marketing".into()),
        }],
        caps: vec![FrequencyCap {
            category: None,
            max_count: 10,
            window_seconds: 3600,
        }],
        updated_at: now_ms,
    }
}
