//! The delivery worker's configuration (`herald-deliver --channel push
//! --config deliver.toml`, then `HERALD__SECTION__KEY`).

use std::collections::BTreeMap;
use std::time::Duration;

use herald_codec::CodecSettings;
use herald_kafka::{KafkaSettings, TopologySettings};
use herald_model::Channel;
use herald_telemetry::{AdminSettings, LogSettings};
use serde::Deserialize;

use crate::breaker::BreakerSettings;
use crate::providers::apns::ApnsSettings;
use crate::providers::email::EmailSettings;
use crate::providers::fcm::FcmSettings;
use crate::providers::twilio::TwilioSettings;
use crate::providers::webhook::WebhookSettings;
use crate::retry::RetrySettings;

/// Everything the worker reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverConfig {
    /// Kafka connection.
    pub kafka: KafkaSettings,
    /// Topic names and sizes.
    pub topics: TopologySettings,
    /// Avro framing and registry.
    pub codec: CodecSettings,
    /// Logging.
    pub log: LogSettings,
    /// Admin HTTP server.
    pub admin: AdminSettings,
    /// Delivery.
    pub deliver: DeliverSettings,
}

/// A provider's rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per second, on average.
    pub rate: f64,
    /// Largest burst.
    pub burst: u32,
}

/// The `[deliver]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverSettings {
    /// The channel this worker delivers (`--channel` sets it).
    pub channel: Option<Channel>,
    /// Consumer group; `herald-deliver-<channel>` by default.
    pub group: Option<String>,
    /// Messages in flight per partition; offsets are stored in order.
    pub max_in_flight: usize,
    /// How long a delivered notification id is remembered.
    #[serde(with = "humantime_serde")]
    pub ledger_retention: Duration,
    /// How often expired ledger entries are tombstoned.
    #[serde(with = "humantime_serde")]
    pub ledger_evict_interval: Duration,
    /// Give up restoring a ledger partition after this long without progress.
    #[serde(with = "humantime_serde")]
    pub restore_stall_timeout: Duration,
    /// Retries.
    pub retry: RetrySettings,
    /// Circuit breakers.
    pub breaker: BreakerSettings,
    /// Rate limit per provider route (`apns`, `fcm`, `twilio`,
    /// `twilio-secondary`, `smtp`, `smtp-secondary`, `webhook`).
    pub rate_limits: BTreeMap<String, RateLimit>,
    /// APNs (push to `apns` tokens).
    pub apns: Option<ApnsSettings>,
    /// FCM (push to `fcm` tokens).
    pub fcm: Option<FcmSettings>,
    /// Twilio (SMS).
    pub twilio: Option<TwilioSettings>,
    /// A second Twilio account or compatible API, used when the first fails.
    pub twilio_secondary: Option<TwilioSettings>,
    /// SMTP (email).
    pub email: Option<EmailSettings>,
    /// A second SMTP relay, used when the first fails.
    pub email_secondary: Option<EmailSettings>,
    /// Webhooks.
    pub webhook: Option<WebhookSettings>,
}

impl Default for DeliverSettings {
    fn default() -> Self {
        Self {
            channel: None,
            group: None,
            max_in_flight: 16,
            ledger_retention: Duration::from_secs(7 * 86_400),
            ledger_evict_interval: Duration::from_secs(3600),
            restore_stall_timeout: Duration::from_secs(30),
            retry: RetrySettings::default(),
            breaker: BreakerSettings::default(),
            rate_limits: BTreeMap::new(),
            apns: None,
            fcm: None,
            twilio: None,
            twilio_secondary: None,
            email: None,
            email_secondary: None,
            webhook: None,
        }
    }
}

impl DeliverSettings {
    /// The channel, or a message naming the missing setting.
    pub fn channel(&self) -> Result<Channel, String> {
        self.channel.ok_or_else(|| {
            "deliver.channel is not set (use --channel push|sms|email|webhook)".into()
        })
    }

    /// The consumer group.
    pub fn group(&self) -> String {
        self.group.clone().unwrap_or_else(|| {
            format!(
                "herald-deliver-{}",
                self.channel.map_or("unset", |c| c.as_str())
            )
        })
    }

    /// Checks what serde cannot, naming every bad value.
    pub fn validate(&self) -> Result<(), String> {
        let mut bad = Vec::new();
        match self.channel {
            None => bad.push(
                "deliver.channel is not set (use --channel push|sms|email|webhook)".to_string(),
            ),
            Some(Channel::Push) if self.apns.is_none() && self.fcm.is_none() => {
                bad.push("the push channel needs [deliver.apns] or [deliver.fcm]".into());
            }
            Some(Channel::Sms) if self.twilio.is_none() => {
                bad.push("the sms channel needs [deliver.twilio]".into())
            }
            Some(Channel::Email) if self.email.is_none() => {
                bad.push("the email channel needs [deliver.email]".into())
            }
            Some(Channel::Webhook) if self.webhook.is_none() => {
                bad.push("the webhook channel needs [deliver.webhook]".into());
            }
            _ => {}
        }
        if self.max_in_flight == 0 {
            bad.push("deliver.max_in_flight must be above zero".into());
        }
        if self.retry.max_attempts < 1 {
            bad.push("deliver.retry.max_attempts must be at least 1".into());
        }
        if self.breaker.failure_threshold == 0 {
            bad.push("deliver.breaker.failure_threshold must be above zero".into());
        }
        for (name, limit) in &self.rate_limits {
            if limit.rate.is_nan() || limit.rate <= 0.0 || limit.burst == 0 {
                bad.push(format!(
                    "deliver.rate_limits.{name}: rate and burst must be above zero"
                ));
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("; "))
        }
    }
}
