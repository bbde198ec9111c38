//! Rust mirrors of the Avro records in `schemas/`: the wire contract.
//!
//! Field names and types follow the `.avsc` files exactly (the codec checks
//! this with round-trip tests). Timestamps are milliseconds since the Unix
//! epoch (`timestamp-millis`). Maps are `BTreeMap` so encoding is
//! deterministic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::kinds::{Channel, DevicePlatform, Priority, Stage, StatusKind};

/// What a product team produces: notify one user about one thing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationRequested {
    /// Producer-chosen key, deduplicated per (tenant, category).
    pub idempotency_key: String,
    /// Tenant or product that owns the notification.
    pub tenant: String,
    /// The user to notify; also the Kafka record key.
    pub user_id: String,
    /// Kind of notification (drives preferences, caps, dedup window).
    pub category: String,
    /// Priority lane.
    pub priority: Priority,
    /// Channels to try; empty means every channel the recipients allow.
    pub channels: Vec<Channel>,
    /// Literal content per channel.
    pub content: Option<Content>,
    /// Template to render instead of literal content.
    pub template: Option<TemplateRef>,
    /// Where to reach the user.
    pub recipients: Recipients,
    /// Event time at the producer (ms).
    pub created_at: i64,
    /// Drop instead of sending after this instant (ms).
    pub expires_at: Option<i64>,
    /// W3C trace context.
    pub trace: Option<TraceContext>,
}

/// Literal content, one optional part per channel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Content {
    /// Push title, body and data.
    pub push: Option<PushContent>,
    /// SMS body.
    pub sms: Option<SmsContent>,
    /// Email subject, text and HTML.
    pub email: Option<EmailContent>,
    /// Webhook event type and JSON payload.
    pub webhook: Option<WebhookContent>,
}

/// Push content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushContent {
    /// Alert title.
    pub title: String,
    /// Alert body.
    pub body: String,
    /// Custom data delivered with the push.
    pub data: BTreeMap<String, String>,
}

/// SMS content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmsContent {
    /// Message text.
    pub body: String,
}

/// Email content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailContent {
    /// Subject line.
    pub subject: String,
    /// Plain-text part.
    pub text: String,
    /// Optional HTML part.
    pub html: Option<String>,
}

/// Webhook content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookContent {
    /// Event type announced to the receiver.
    pub event_type: String,
    /// JSON document sent as the payload.
    pub payload_json: String,
}

/// A template reference with variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateRef {
    /// Template identifier.
    pub template_id: String,
    /// BCP 47 locale; falls back to the user's.
    pub locale: Option<String>,
    /// Values substituted into the template.
    pub variables: BTreeMap<String, String>,
}

/// Where to reach the user on each channel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Recipients {
    /// Push device tokens.
    pub devices: Vec<Device>,
    /// E.164 phone number.
    pub phone: Option<String>,
    /// Email address.
    pub email: Option<String>,
    /// Webhook endpoint.
    pub webhook_url: Option<String>,
}

/// A push device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// Provider device token (a secret: never logged).
    pub token: String,
    /// Which push service the token belongs to.
    pub platform: DevicePlatform,
}

/// W3C trace context carried across Kafka hops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceContext {
    /// `traceparent` header value.
    pub traceparent: String,
    /// `tracestate` header value.
    pub tracestate: Option<String>,
}

/// One notification for one channel and recipient (router to channel topics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelMessage {
    /// Deterministic id per (event, channel, recipient).
    pub notification_id: String,
    /// The producer's idempotency key.
    pub idempotency_key: String,
    /// Owning tenant.
    pub tenant: String,
    /// Recipient user.
    pub user_id: String,
    /// Notification category.
    pub category: String,
    /// Priority lane.
    pub priority: Priority,
    /// Delivery channel.
    pub channel: Channel,
    /// Recipient address on that channel.
    pub recipient: Recipient,
    /// Content rendered for the channel.
    pub content: RenderedContent,
    /// Where the event came from.
    pub source: SourceRef,
    /// Attempts already made.
    pub attempt: i32,
    /// Not to be delivered before this instant (ms).
    pub not_before: Option<i64>,
    /// Event time at the producer (ms).
    pub created_at: i64,
    /// Drop after this instant (ms).
    pub expires_at: Option<i64>,
    /// Trace context.
    pub trace: Option<TraceContext>,
}

/// A recipient address on one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipient {
    /// Token, phone number, email address or URL.
    pub address: String,
    /// Push platform, for device tokens.
    pub platform: Option<DevicePlatform>,
}

/// Content rendered for one channel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RenderedContent {
    /// Push title.
    pub title: Option<String>,
    /// Email subject.
    pub subject: Option<String>,
    /// Text body, or the webhook JSON payload.
    pub body: String,
    /// Email HTML part.
    pub html: Option<String>,
    /// Push data or webhook attributes.
    pub data: BTreeMap<String, String>,
}

/// Position of a record in the notifications topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    /// Topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// A status or audit event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryStatus {
    /// Notification id, when one was assigned.
    pub notification_id: Option<String>,
    /// The producer's idempotency key, when decodable.
    pub idempotency_key: Option<String>,
    /// Tenant, when known.
    pub tenant: Option<String>,
    /// User, when known.
    pub user_id: Option<String>,
    /// Category, when known.
    pub category: Option<String>,
    /// Channel, when the event concerns one.
    pub channel: Option<Channel>,
    /// Emitting stage.
    pub stage: Stage,
    /// What happened.
    pub status: StatusKind,
    /// Machine-readable reason.
    pub reason: Option<String>,
    /// Human-readable detail (no addresses, no tokens).
    pub detail: Option<String>,
    /// Provider name.
    pub provider: Option<String>,
    /// Provider's message id.
    pub provider_message_id: Option<String>,
    /// Attempt number.
    pub attempt: i32,
    /// When it happened (ms).
    pub occurred_at: i64,
    /// Trace context.
    pub trace: Option<TraceContext>,
}

/// Value of a channel's delivery ledger (the key is the notification id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// When the provider accepted the message (ms).
    pub delivered_at: i64,
    /// Provider that accepted it.
    pub provider: String,
    /// The provider's id for the message.
    pub provider_message_id: String,
    /// When the entry may be forgotten (ms).
    pub expires_at: i64,
}

/// Value of the dedup state topic (the key is the 16-byte dedup hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupEntry {
    /// End of the dedup window (ms).
    pub expires_at: i64,
    /// Input partition of the first record with this key.
    pub source_partition: i32,
    /// Input offset of that record.
    pub source_offset: i64,
}

/// A user's notification preferences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preferences {
    /// Owning tenant.
    pub tenant: String,
    /// The user.
    pub user_id: String,
    /// IANA time zone for quiet hours.
    pub timezone: String,
    /// Preferred locale.
    pub locale: Option<String>,
    /// Daily quiet window.
    pub quiet_hours: Option<QuietHours>,
    /// Opt-outs by channel and/or category.
    pub opt_outs: Vec<OptOut>,
    /// Frequency caps.
    pub caps: Vec<FrequencyCap>,
    /// Last update (ms).
    pub updated_at: i64,
}

/// A daily quiet window in the user's local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuietHours {
    /// Minutes after local midnight when quiet hours start.
    pub start_minute: i32,
    /// Minutes after local midnight when they end.
    pub end_minute: i32,
}

/// An opt-out; `None` fields match everything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptOut {
    /// Channel, or every channel.
    pub channel: Option<Channel>,
    /// Category, or every category.
    pub category: Option<String>,
}

/// At most `max_count` notifications per `window_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrequencyCap {
    /// Category, or every category.
    pub category: Option<String>,
    /// Maximum notifications in the window.
    pub max_count: i32,
    /// Window length in seconds.
    pub window_seconds: i64,
}
