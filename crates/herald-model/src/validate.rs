//! Validation of `NotificationRequested` events, the untrusted input of the
//! pipeline. Every rule yields a typed reason used for the dead letter, the
//! `INVALID` status event and the `reason` metric label.

use crate::kinds::Channel;
use crate::wire::NotificationRequested;

/// Longest accepted identifier field (idempotency key, tenant, user, category).
pub const MAX_FIELD_BYTES: usize = 256;

/// Why an event was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    /// A required identifier is empty.
    #[error("field `{field}` is empty")]
    EmptyField {
        /// Field name.
        field: &'static str,
    },
    /// An identifier is longer than [`MAX_FIELD_BYTES`].
    #[error("field `{field}` is {len} bytes, over the {MAX_FIELD_BYTES}-byte limit")]
    FieldTooLong {
        /// Field name.
        field: &'static str,
        /// Actual length.
        len: usize,
    },
    /// Neither literal content nor a template, or both.
    #[error("exactly one of `content` and `template` must be set")]
    ContentOrTemplate,
    /// A requested channel has no recipient address.
    #[error("channel {channel} was requested but the event has no recipient for it")]
    NoRecipient {
        /// The channel.
        channel: Channel,
    },
    /// No channel can be reached.
    #[error("no requested channel has a recipient")]
    NoChannel,
    /// `expires_at` is before `created_at`.
    #[error("`expires_at` is before `created_at`")]
    ExpiresBeforeCreated,
    /// The webhook content's `payload_json` is not a JSON document (a
    /// webhook is always sent as `application/json`).
    #[error("content.webhook.payload_json is not JSON: {detail}")]
    PayloadNotJson {
        /// Where the parser stopped (line and column, not the payload).
        detail: String,
    },
}

impl InvalidEvent {
    /// Fixed label for metrics and status reasons.
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::EmptyField { .. } => "empty_field",
            Self::FieldTooLong { .. } => "field_too_long",
            Self::ContentOrTemplate => "content_or_template",
            Self::NoRecipient { .. } => "no_recipient",
            Self::NoChannel => "no_channel",
            Self::ExpiresBeforeCreated => "expires_before_created",
            Self::PayloadNotJson { .. } => "payload_not_json",
        }
    }
}

impl NotificationRequested {
    /// Whether the event has an address for `channel`.
    pub fn has_recipient(&self, channel: Channel) -> bool {
        let r = &self.recipients;
        match channel {
            Channel::Push => r.devices.iter().any(|d| !d.token.is_empty()),
            Channel::Sms => r.phone.as_deref().is_some_and(|s| !s.is_empty()),
            Channel::Email => r.email.as_deref().is_some_and(|s| !s.is_empty()),
            Channel::Webhook => r.webhook_url.as_deref().is_some_and(|s| !s.is_empty()),
        }
    }

    /// The channels to fan out to: the requested ones, or (when none are
    /// requested) every channel that has a recipient.
    pub fn target_channels(&self) -> Vec<Channel> {
        if self.channels.is_empty() {
            Channel::ALL
                .iter()
                .copied()
                .filter(|c| self.has_recipient(*c))
                .collect()
        } else {
            let mut out = self.channels.clone();
            out.sort();
            out.dedup();
            out
        }
    }

    /// Checks every rule; the first violation is returned.
    pub fn validate(&self) -> Result<(), InvalidEvent> {
        for (field, value) in [
            ("idempotency_key", &self.idempotency_key),
            ("tenant", &self.tenant),
            ("user_id", &self.user_id),
            ("category", &self.category),
        ] {
            if value.is_empty() {
                return Err(InvalidEvent::EmptyField { field });
            }
            if value.len() > MAX_FIELD_BYTES {
                return Err(InvalidEvent::FieldTooLong {
                    field,
                    len: value.len(),
                });
            }
        }
        if self.content.is_some() == self.template.is_some() {
            return Err(InvalidEvent::ContentOrTemplate);
        }
        if let Some(expires) = self.expires_at {
            if expires < self.created_at {
                return Err(InvalidEvent::ExpiresBeforeCreated);
            }
        }
        for channel in &self.channels {
            if !self.has_recipient(*channel) {
                return Err(InvalidEvent::NoRecipient { channel: *channel });
            }
        }
        if self.target_channels().is_empty() {
            return Err(InvalidEvent::NoChannel);
        }
        let webhook = self.content.as_ref().and_then(|c| c.webhook.as_ref());
        if let Some(w) = webhook.filter(|_| self.target_channels().contains(&Channel::Webhook)) {
            if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&w.payload_json) {
                return Err(InvalidEvent::PayloadNotJson {
                    detail: format!("line {} column {}", e.line(), e.column()),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::Priority;
    use crate::wire::{Content, Recipients, SmsContent};

    fn event() -> NotificationRequested {
        NotificationRequested {
            idempotency_key: "k".into(),
            tenant: "t".into(),
            user_id: "u".into(),
            category: "receipt".into(),
            priority: Priority::Normal,
            channels: vec![],
            content: Some(Content {
                sms: Some(SmsContent { body: "hi".into() }),
                ..Content::default()
            }),
            template: None,
            recipients: Recipients {
                phone: Some("+15550000000".into()),
                ..Recipients::default()
            },
            created_at: 1_000,
            expires_at: None,
            trace: None,
        }
    }

    #[test]
    fn a_webhook_payload_must_be_json() {
        use crate::wire::WebhookContent;
        let with_payload = |payload: &str, channels: Vec<Channel>| {
            let mut e = event();
            e.channels = channels;
            e.recipients.webhook_url = Some("https://hooks.example/x".into());
            if let Some(c) = e.content.as_mut() {
                c.webhook = Some(WebhookContent {
                    event_type: "order.shipped".into(),
                    payload_json: payload.into(),
                });
            }
            e
        };
        let err = with_payload(r#"{"order": 1"#, vec![])
            .validate()
            .unwrap_err();
        assert_eq!(err.reason(), "payload_not_json");
        assert!(
            !err.to_string().contains("order"),
            "no payload in the detail: {err}"
        );
        assert_eq!(with_payload(r#"{"order": 1}"#, vec![]).validate(), Ok(()));
        // Not sent to a webhook: not checked.
        assert_eq!(
            with_payload("not json", vec![Channel::Sms]).validate(),
            Ok(())
        );
    }

    #[test]
    fn a_device_with_an_empty_token_is_no_recipient() {
        use crate::kinds::DevicePlatform;
        use crate::wire::Device;
        let mut e = event();
        e.channels = vec![Channel::Push];
        e.recipients.devices = vec![Device {
            token: String::new(),
            platform: DevicePlatform::Apns,
        }];
        assert_eq!(
            e.validate(),
            Err(InvalidEvent::NoRecipient {
                channel: Channel::Push
            })
        );
    }

    #[test]
    fn valid_event_targets_reachable_channels() {
        let e = event();
        assert_eq!(e.validate(), Ok(()));
        assert_eq!(e.target_channels(), vec![Channel::Sms]);
    }

    #[test]
    fn each_rule_names_its_reason() {
        let mut e = event();
        e.tenant.clear();
        assert_eq!(e.validate().map_err(|r| r.reason()), Err("empty_field"));

        let mut e = event();
        e.user_id = "x".repeat(MAX_FIELD_BYTES + 1);
        assert_eq!(e.validate().map_err(|r| r.reason()), Err("field_too_long"));

        let mut e = event();
        e.content = None;
        assert_eq!(e.validate(), Err(InvalidEvent::ContentOrTemplate));

        let mut e = event();
        e.channels = vec![Channel::Email];
        assert_eq!(
            e.validate(),
            Err(InvalidEvent::NoRecipient {
                channel: Channel::Email
            })
        );

        let mut e = event();
        e.recipients.phone = None;
        assert_eq!(e.validate(), Err(InvalidEvent::NoChannel));

        let mut e = event();
        e.expires_at = Some(999);
        assert_eq!(e.validate(), Err(InvalidEvent::ExpiresBeforeCreated));
    }
}
