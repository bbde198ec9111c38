//! Fan-out: one `ChannelMessage` per (channel, recipient), with a
//! deterministic notification id and content rendered for the channel.
//!
//! Lanes are separate topics per channel and priority
//! (`<prefix>.<channel>.<urgent|normal|bulk>`): a delivery worker consumes
//! the urgent topic with its own fetch queue and pauses the lower lanes while
//! urgent has a backlog, so bulk traffic never sits in front of urgent
//! traffic in any partition.

use herald_model::wire::{
    ChannelMessage, NotificationRequested, Recipient, RenderedContent, SourceRef,
};
use herald_model::{Channel, DedupKey, NotificationId};

use crate::templates::{RenderError, TemplateStore};

/// Why a channel could not be fanned out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FanoutError {
    /// Literal content has no part for this channel.
    #[error("the event has no {channel} content")]
    NoContent {
        /// Channel.
        channel: Channel,
    },
    /// The template could not be rendered.
    #[error(transparent)]
    Render(#[from] RenderError),
}

impl FanoutError {
    /// Fixed reason label.
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::NoContent { .. } => "no_content_for_channel",
            Self::Render(e) => e.reason(),
        }
    }
}

/// The recipients of `event` on `channel`.
pub fn recipients(event: &NotificationRequested, channel: Channel) -> Vec<Recipient> {
    let r = &event.recipients;
    let one = |a: &Option<String>| {
        a.iter()
            .filter(|s| !s.is_empty())
            .map(|s| Recipient {
                address: s.clone(),
                platform: None,
            })
            .collect()
    };
    match channel {
        // Each device once; an empty token is no device.
        Channel::Push => {
            let mut seen = std::collections::HashSet::new();
            r.devices
                .iter()
                .filter(|d| !d.token.is_empty() && seen.insert(d.token.as_str()))
                .map(|d| Recipient {
                    address: d.token.clone(),
                    platform: Some(d.platform),
                })
                .collect()
        }
        Channel::Sms => one(&r.phone),
        Channel::Email => one(&r.email),
        Channel::Webhook => one(&r.webhook_url),
    }
}

/// The event's content for `channel`: literal, or rendered from its template.
pub fn content(
    event: &NotificationRequested,
    channel: Channel,
    templates: &TemplateStore,
    user_locale: Option<&str>,
) -> Result<RenderedContent, FanoutError> {
    if let Some(t) = &event.template {
        return Ok(templates.render(
            &t.template_id,
            channel,
            t.locale.as_deref(),
            user_locale,
            &t.variables,
        )?);
    }
    let c = event.content.as_ref();
    let missing = || FanoutError::NoContent { channel };
    Ok(match channel {
        Channel::Push => {
            let p = c.and_then(|c| c.push.as_ref()).ok_or_else(missing)?;
            RenderedContent {
                title: Some(p.title.clone()),
                body: p.body.clone(),
                data: p.data.clone(),
                ..Default::default()
            }
        }
        Channel::Sms => {
            let s = c.and_then(|c| c.sms.as_ref()).ok_or_else(missing)?;
            RenderedContent {
                body: s.body.clone(),
                ..Default::default()
            }
        }
        Channel::Email => {
            let e = c.and_then(|c| c.email.as_ref()).ok_or_else(missing)?;
            RenderedContent {
                subject: Some(e.subject.clone()),
                body: e.text.clone(),
                html: e.html.clone(),
                ..Default::default()
            }
        }
        Channel::Webhook => {
            let w = c.and_then(|c| c.webhook.as_ref()).ok_or_else(missing)?;
            RenderedContent {
                body: w.payload_json.clone(),
                data: [("event_type".to_string(), w.event_type.clone())]
                    .into_iter()
                    .collect(),
                ..Default::default()
            }
        }
    })
}

/// The channel messages for one channel of one event (whose dedup key
/// is `key`).
pub fn channel_messages(
    event: &NotificationRequested,
    key: DedupKey,
    channel: Channel,
    content: RenderedContent,
    source: &SourceRef,
    not_before: Option<i64>,
) -> Vec<ChannelMessage> {
    let recipients = recipients(event, channel);
    let last = recipients.len().saturating_sub(1);
    let mut content = Some(content);
    recipients
        .into_iter()
        .enumerate()
        .map(|(i, recipient)| ChannelMessage {
            notification_id: NotificationId::new(key, channel, &recipient.address).to_string(),
            idempotency_key: event.idempotency_key.clone(),
            tenant: event.tenant.clone(),
            user_id: event.user_id.clone(),
            category: event.category.clone(),
            priority: event.priority,
            channel,
            recipient,
            // The last recipient takes the content, the others a copy.
            content: if i == last {
                content.take()
            } else {
                content.clone()
            }
            .unwrap_or_default(),
            source: source.clone(),
            attempt: 0,
            not_before,
            created_at: event.created_at,
            expires_at: event.expires_at,
            trace: event.trace.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_model::sample;
    use herald_model::wire::{Device, TemplateRef};
    use herald_model::DevicePlatform;

    fn key(e: &NotificationRequested) -> DedupKey {
        DedupKey::new(&e.tenant, &e.category, &e.idempotency_key)
    }

    fn source() -> SourceRef {
        SourceRef {
            topic: "herald.notifications".into(),
            partition: 1,
            offset: 5,
        }
    }

    #[test]
    fn one_message_per_recipient_with_deterministic_ids() {
        let mut e = sample::notification(7, 1_000);
        e.recipients.devices.push(Device {
            token: "second-device".into(),
            platform: DevicePlatform::Fcm,
        });
        let c = content(&e, Channel::Push, &TemplateStore::default(), None).expect("content");
        let msgs = channel_messages(&e, key(&e), Channel::Push, c.clone(), &source(), None);
        assert_eq!(msgs.len(), 2);
        assert_ne!(msgs[0].notification_id, msgs[1].notification_id);
        assert_eq!(msgs[1].recipient.platform, Some(DevicePlatform::Fcm));
        let again = channel_messages(
            &e,
            key(&e),
            Channel::Push,
            c,
            &SourceRef {
                offset: 99,
                ..source()
            },
            None,
        );
        assert_eq!(
            msgs[0].notification_id, again[0].notification_id,
            "same event, same id, wherever it was read"
        );
        assert_eq!(msgs[0].content.title.as_deref(), Some("Your receipt"));
        assert_eq!(
            msgs[0].content, msgs[1].content,
            "every recipient gets the content"
        );
    }

    #[test]
    fn literal_content_must_cover_the_channel_and_templates_render() {
        let e = sample::notification(7, 1_000);
        let err = content(&e, Channel::Sms, &TemplateStore::default(), None).unwrap_err();
        assert_eq!(err.reason(), "no_content_for_channel");
        let mut t = e.clone();
        t.content = None;
        t.template = Some(TemplateRef {
            template_id: "missing".into(),
            locale: None,
            variables: Default::default(),
        });
        assert_eq!(
            content(&t, Channel::Sms, &TemplateStore::default(), None)
                .unwrap_err()
                .reason(),
            "unknown_template"
        );
        let email = content(&e, Channel::Email, &TemplateStore::default(), None).expect("email");
        assert_eq!(email.subject.as_deref(), Some("Receipt for order 7"));
        assert!(email.html.is_some());
    }
}
