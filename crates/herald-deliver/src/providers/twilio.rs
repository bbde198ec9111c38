//! SMS through Twilio's Messages API: a form POST with HTTP basic auth,
//! `StatusCallback` pointing at the tracker with the notification id in its
//! query, so delivery reports join the notification.
//!
//! Twilio's codes for an unusable number (21211 invalid, 21614 not mobile,
//! 21610 unsubscribed, 21612 unreachable) mean the address is invalid.

use std::time::Duration;

use herald_model::secret::Secret;
use herald_model::wire::ChannelMessage;
use serde::Deserialize;
use serde_json::Value;

use super::{classify_status, retry_after, transport_error, Accepted, Failure, SendError};

const NAME: &str = "twilio";
const ADDRESS_INVALID: [u64; 4] = [21211, 21610, 21612, 21614];

/// `[deliver.twilio]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioSettings {
    /// API base URL.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Account SID.
    pub account_sid: String,
    /// Auth token.
    pub auth_token: Secret,
    /// Sender number; or `messaging_service_sid`.
    #[serde(default)]
    pub from: Option<String>,
    /// Messaging service.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// The tracker's Twilio callback URL.
    #[serde(default)]
    pub status_callback: Option<String>,
    /// Request timeout.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_base_url() -> String {
    "https://api.twilio.com".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The Twilio adapter.
pub struct Twilio {
    settings: TwilioSettings,
    client: reqwest::Client,
}

impl Twilio {
    /// Checks the sender and builds the client.
    pub fn new(settings: TwilioSettings) -> Result<Self, String> {
        if settings.from.is_none() && settings.messaging_service_sid.is_none() {
            return Err("deliver.twilio needs from or messaging_service_sid".into());
        }
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .map_err(|e| format!("deliver.twilio client: {e}"))?;
        Ok(Self { settings, client })
    }

    /// The form fields for `m`.
    pub fn form(&self, m: &ChannelMessage) -> Vec<(&'static str, String)> {
        let s = &self.settings;
        let mut form = vec![
            ("To", m.recipient.address.clone()),
            ("Body", m.content.body.clone()),
        ];
        if let Some(f) = &s.from {
            form.push(("From", f.clone()));
        }
        if let Some(sid) = &s.messaging_service_sid {
            form.push(("MessagingServiceSid", sid.clone()));
        }
        if let Some(cb) = &s.status_callback {
            let sep = if cb.contains('?') { '&' } else { '?' };
            form.push((
                "StatusCallback",
                format!("{cb}{sep}notification_id={}", m.notification_id),
            ));
        }
        form
    }

    async fn send_one(&self, m: &ChannelMessage) -> Result<Accepted, SendError> {
        let s = &self.settings;
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            s.base_url.trim_end_matches('/'),
            s.account_sid
        );
        let resp = self
            .client
            .post(url)
            .basic_auth(&s.account_sid, Some(s.auth_token.expose()))
            .form(&self.form(m))
            .send()
            .await
            .map_err(|e| transport_error(NAME, &e))?;
        let status = resp.status().as_u16();
        let after = retry_after(resp.headers());
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            let sid = body
                .get("sid")
                .and_then(Value::as_str)
                .ok_or_else(|| SendError::transport(NAME, "response_body"))?;
            return Ok(Accepted {
                provider: NAME,
                provider_message_id: sid.to_string(),
            });
        }
        let code = body.get("code").and_then(Value::as_u64);
        let failure = match code {
            Some(c) if ADDRESS_INVALID.contains(&c) => Failure::TokenInvalid,
            // Our credentials: retryable until an operator fixes them.
            _ if status == 401 => Failure::Retryable,
            _ => classify_status(status),
        };
        Err(SendError {
            provider: NAME,
            failure,
            reason: code.map_or_else(|| status.to_string(), |c| c.to_string()),
            status: Some(status),
            retry_after: after,
        })
    }
}

provider!(Twilio, NAME, settings.timeout);
