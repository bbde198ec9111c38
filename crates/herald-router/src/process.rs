//! One input record in, the records it causes out. No Kafka client here:
//! the run loop produces what this returns and stores the input offset only
//! once all of it is acknowledged.

use std::collections::HashMap;
use std::time::Duration;

use herald_codec::{Codec, DecodeError, EncodeError, Record};
use herald_kafka::produce::MAX_RECORD_BYTES;
pub use herald_kafka::Out;
use herald_kafka::Topology;
use herald_model::wire::{
    DedupEntry, DeliveryStatus, NotificationRequested, Preferences, SourceRef,
};
use herald_model::{Channel, DedupKey, ErrorClass, Priority, Stage, StatusKind};
use herald_telemetry::events::{DeadLettered, EventReceived, MessageQueued, Suppressed};
use herald_telemetry::Emit;

use crate::config::RouterSettings;
use crate::dedup::{DedupStore, Verdict};
use crate::fanout;
use crate::policy::{self, CapCounter, Decision};
use crate::templates::TemplateStore;

pub use herald_kafka::produce::{DLQ_DETAIL, DLQ_REASON, DLQ_SOURCE};

/// The state one input partition needs.
#[derive(Default)]
pub struct PartitionState {
    /// Dedup index.
    pub dedup: DedupStore,
    /// Preferences of the partition's users.
    pub prefs: HashMap<String, Preferences>,
    /// Frequency-cap counters.
    pub caps: CapCounter,
}

impl PartitionState {
    /// Applies one preferences-topic record: a value replaces the user's
    /// preferences, a tombstone deletes them. Used by restore and by the
    /// live follower alike.
    pub async fn apply_preferences(
        &mut self,
        codec: &Codec,
        user: &str,
        value: Option<&[u8]>,
    ) -> Result<(), DecodeError> {
        match value {
            None => {
                self.prefs.remove(user);
            }
            Some(bytes) => {
                let p: Preferences = codec.decode(bytes).await?;
                self.prefs.insert(user.to_string(), p);
            }
        }
        Ok(())
    }
}

/// An input record as read.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key bytes.
    pub key: Option<&'a [u8]>,
    /// Value bytes.
    pub payload: Option<&'a [u8]>,
}

/// Why a record cannot be processed now; the run loop stops and the record
/// is re-read after a restart (nothing was stored for it).
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The registry is unreachable: retry later.
    #[error("decoding needs the schema registry, which is unavailable: {0}")]
    Registry(DecodeError),
    /// An output could not be encoded (a contract bug).
    #[error("encoding an output failed: {0}")]
    Encode(#[from] EncodeError),
}

/// The dead-letter record for `input`: its original key and bytes, with
/// the reason, the error and where it came from as headers.
pub fn dead_letter_out(topology: &Topology, input: &Input<'_>, reason: &str, detail: &str) -> Out {
    Out::dead_letter(
        topology.named("dead-letter"),
        (input.topic, input.partition, input.offset),
        input.key,
        input.payload,
        reason,
        detail,
    )
}

/// The largest event the router accepts, in bytes (the record's value as
/// produced): larger ones are dead-lettered with reason `too_large`. An
/// event can fan out to several channel messages, each carrying its
/// channel's content, so this stays well under what one record may hold.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// The router's decision logic with its fixed inputs.
pub struct Router {
    settings: RouterSettings,
    topology: Topology,
    topics: Topics,
    templates: TemplateStore,
    codec: Codec,
}

/// The names of every topic the router writes, formatted once.
struct Topics {
    state: String,
    status: String,
    deferred: String,
    lanes: HashMap<(Channel, Priority), String>,
}

impl Topics {
    fn new(t: &Topology) -> Self {
        let lanes = Channel::ALL
            .iter()
            .flat_map(|c| Priority::ALL.iter().map(move |p| (*c, *p)))
            .map(|(c, p)| ((c, p), t.lane(c, p)))
            .collect();
        Self {
            state: t.named("dedup-state"),
            status: t.named("status"),
            deferred: t.named("deferred"),
            lanes,
        }
    }

    fn lane(&self, channel: Channel, priority: Priority) -> &str {
        self.lanes
            .get(&(channel, priority))
            .map_or("", String::as_str)
    }
}

fn status(
    stage_status: StatusKind,
    event: Option<&NotificationRequested>,
    reason: &str,
    now_ms: i64,
) -> DeliveryStatus {
    DeliveryStatus {
        notification_id: None,
        idempotency_key: event.map(|e| e.idempotency_key.clone()),
        tenant: event.map(|e| e.tenant.clone()),
        user_id: event.map(|e| e.user_id.clone()),
        category: event.map(|e| e.category.clone()),
        channel: None,
        stage: Stage::Router,
        status: stage_status,
        reason: Some(reason.to_string()),
        detail: None,
        provider: None,
        provider_message_id: None,
        attempt: 0,
        occurred_at: now_ms,
        trace: event.and_then(|e| e.trace.clone()),
    }
}

impl Router {
    /// A router with its settings, topics, templates and codec.
    pub fn new(
        settings: RouterSettings,
        topology: Topology,
        templates: TemplateStore,
        codec: Codec,
    ) -> Self {
        Self {
            settings,
            topics: Topics::new(&topology),
            topology,
            templates,
            codec,
        }
    }

    /// The topic topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The settings.
    pub fn settings(&self) -> &RouterSettings {
        &self.settings
    }

    /// The codec.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    async fn encode<T: Record>(
        &self,
        topic: String,
        key: Option<Vec<u8>>,
        value: &T,
    ) -> Result<Out, EncodeError> {
        let payload = self.codec.encode(&topic, value).await?;
        Ok(Out {
            topic,
            partition: None,
            key,
            payload: Some(payload),
            headers: Vec::new(),
        })
    }

    async fn status_out(&self, s: DeliveryStatus) -> Result<Out, EncodeError> {
        let key = s.user_id.clone().map(String::into_bytes);
        self.encode(self.topics.status.clone(), key, &s).await
    }

    async fn dead_letter(
        &self,
        input: &Input<'_>,
        reason: &'static str,
        detail: String,
        event: Option<&NotificationRequested>,
        now_ms: i64,
    ) -> Result<Vec<Out>, EncodeError> {
        DeadLettered {
            stage: "router",
            reason,
            topic: input.topic,
            partition: input.partition,
            offset: input.offset,
        }
        .emit();
        Suppressed { reason }.emit();
        let dlq = dead_letter_out(&self.topology, input, reason, &detail);
        let mut s = status(StatusKind::Invalid, event, reason, now_ms);
        s.detail = Some(detail);
        Ok(vec![dlq, self.status_out(s).await?])
    }

    /// Processes one input record against its partition's state.
    pub async fn process(
        &self,
        st: &mut PartitionState,
        input: Input<'_>,
        now_ms: i64,
    ) -> Result<Vec<Out>, ProcessError> {
        // Refused before decoding: no value, or more than an event may be.
        let refused = match input.payload {
            None => Err(("empty", "the record has no value".to_string())),
            Some(p) if p.len() > MAX_EVENT_BYTES => Err((
                "too_large",
                format!(
                    "the event is {} bytes; at most {MAX_EVENT_BYTES} are accepted",
                    p.len()
                ),
            )),
            Some(p) => Ok(p),
        };
        let payload = match refused {
            Ok(p) => p,
            Err((reason, detail)) => {
                EventReceived {
                    priority: "unknown",
                }
                .emit();
                return Ok(self
                    .dead_letter(&input, reason, detail, None, now_ms)
                    .await?);
            }
        };
        let event: NotificationRequested = match self.codec.decode(payload).await {
            Ok(e) => e,
            Err(e) if e.class() == ErrorClass::Retryable => return Err(ProcessError::Registry(e)),
            Err(e) => {
                EventReceived {
                    priority: "unknown",
                }
                .emit();
                herald_telemetry::events::DecodeFailed {
                    stage: "router",
                    reason: e.reason(),
                    topic: input.topic,
                    partition: input.partition,
                    offset: input.offset,
                }
                .emit();
                return Ok(self
                    .dead_letter(&input, e.reason(), e.to_string(), None, now_ms)
                    .await?);
            }
        };
        EventReceived {
            priority: event.priority.as_str(),
        }
        .emit();
        if let Err(invalid) = event.validate() {
            return Ok(self
                .dead_letter(
                    &input,
                    invalid.reason(),
                    invalid.to_string(),
                    Some(&event),
                    now_ms,
                )
                .await?);
        }

        let key = DedupKey::new(&event.tenant, &event.category, &event.idempotency_key);
        let mut out = Vec::new();
        match st.dedup.check(
            key,
            input.offset,
            now_ms,
            self.settings.window_ms(&event.category),
        ) {
            Verdict::Duplicate { .. } => {
                Suppressed {
                    reason: "duplicate",
                }
                .emit();
                out.push(
                    self.status_out(status(
                        StatusKind::Duplicate,
                        Some(&event),
                        "duplicate",
                        now_ms,
                    ))
                    .await?,
                );
                return Ok(out);
            }
            // New, or a replay of itself after a crash: its effects, the
            // state record included, are (re-)emitted. Re-emitting the state
            // record matters where aborted records stay visible: the first
            // attempt's entry may belong to an aborted transaction.
            Verdict::New | Verdict::Replay => {
                let entry = st.dedup.entry(key, input.partition).unwrap_or(DedupEntry {
                    expires_at: now_ms,
                    source_partition: input.partition,
                    source_offset: input.offset,
                });
                let mut state = self
                    .encode(
                        self.topics.state.clone(),
                        Some(key.to_bytes().to_vec()),
                        &entry,
                    )
                    .await?;
                state.partition = Some(input.partition);
                out.push(state);
            }
        }

        let source = SourceRef {
            topic: input.topic.to_string(),
            partition: input.partition,
            offset: input.offset,
        };
        let prefs = st.prefs.get(&event.user_id);
        let critical = self.settings.is_critical(&event.category);
        let user_locale = prefs.and_then(|p| p.locale.as_deref());
        for channel in event.target_channels() {
            let decision = policy::decide(&event, channel, prefs, critical, &mut st.caps, now_ms);
            let (topic, not_before) = match decision {
                Decision::Send => (self.topics.lane(channel, event.priority), None),
                Decision::DeferUntil(until) => (self.topics.deferred.as_str(), Some(until)),
                other => {
                    let reason = other.reason();
                    Suppressed { reason }.emit();
                    let kind = match other {
                        Decision::OptedOut => StatusKind::OptedOut,
                        Decision::Capped => StatusKind::Capped,
                        _ => StatusKind::Stale,
                    };
                    let mut s = status(kind, Some(&event), reason, now_ms);
                    s.channel = Some(channel);
                    out.push(self.status_out(s).await?);
                    continue;
                }
            };
            let content = match fanout::content(&event, channel, &self.templates, user_locale) {
                Ok(c) => c,
                Err(e) => {
                    Suppressed { reason: e.reason() }.emit();
                    let mut s = status(StatusKind::Invalid, Some(&event), e.reason(), now_ms);
                    s.channel = Some(channel);
                    s.detail = Some(e.to_string());
                    out.push(self.status_out(s).await?);
                    continue;
                }
            };
            let latency =
                Duration::from_millis(u64::try_from(now_ms - event.created_at).unwrap_or(0));
            for msg in fanout::channel_messages(&event, key, channel, content, &source, not_before)
            {
                if not_before.is_some() {
                    Suppressed {
                        reason: "quiet_hours",
                    }
                    .emit();
                    let mut s = status(StatusKind::Deferred, Some(&event), "quiet_hours", now_ms);
                    s.channel = Some(channel);
                    s.notification_id = Some(msg.notification_id.clone());
                    out.push(self.status_out(s).await?);
                } else {
                    MessageQueued {
                        channel: channel.as_str(),
                        priority: event.priority.as_str(),
                        latency,
                    }
                    .emit();
                }
                out.push(
                    self.encode(
                        topic.to_string(),
                        Some(event.user_id.clone().into_bytes()),
                        &msg,
                    )
                    .await?,
                );
            }
        }
        // No output may be larger than a record can be (a template can
        // multiply a variable): the event is dead-lettered instead, and
        // kept as seen, so the partition moves on.
        if let Some(big) = out.iter().find(|o| o.size() > MAX_RECORD_BYTES) {
            let detail = format!(
                "an output to {} would be {} bytes; a record holds at most {MAX_RECORD_BYTES}",
                big.topic,
                big.size()
            );
            out.retain(|o| o.topic == self.topics.state);
            out.extend(
                self.dead_letter(&input, "output_too_large", detail, Some(&event), now_ms)
                    .await?,
            );
        }
        Ok(out)
    }
}
