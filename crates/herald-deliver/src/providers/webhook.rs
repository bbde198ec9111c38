//! Webhooks signed per the Standard Webhooks spec: `webhook-id` (the
//! notification id, so a receiver can deduplicate redeliveries),
//! `webhook-timestamp` (seconds) and `webhook-signature` =
//! `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>` where the key
//! is the base64 after `whsec_`. The body is the message's rendered body
//! (a JSON document).
//!
//! The recipient address is the endpoint URL: only `http` and `https`, and
//! hosts on `allowed_hosts` when that list is set, so a notification cannot
//! turn Herald into a proxy into the network it runs in.

use std::time::Duration;

use base64::Engine as _;
use futures::future::BoxFuture;
use herald_model::secret::Secret;
use herald_model::wire::ChannelMessage;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::{
    classify_status, now_s, retry_after, transport_error, Accepted, Failure, Provider, SendError,
};

const NAME: &str = "webhook";

/// `[deliver.webhook]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Signing secret, `whsec_<base64>`.
    pub secret: Secret,
    /// Hosts endpoints may be on (exact names or `*.example.com`); empty
    /// allows any host.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Request timeout.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The webhook adapter.
pub struct Webhook {
    key: Vec<u8>,
    allowed_hosts: Vec<String>,
    client: reqwest::Client,
}

impl Webhook {
    /// Decodes the secret and builds the client (redirects are not followed).
    pub fn new(settings: WebhookSettings) -> Result<Self, String> {
        let key = settings
            .secret
            .expose()
            .strip_prefix("whsec_")
            .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
            .filter(|k| !k.is_empty())
            .ok_or("deliver.webhook.secret must be whsec_ followed by base64")?;
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("deliver.webhook client: {e}"))?;
        Ok(Self {
            key,
            allowed_hosts: settings.allowed_hosts,
            client,
        })
    }

    /// `v1,<signature>` of a body.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC takes a key of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        )
    }

    fn endpoint(&self, address: &str) -> Result<reqwest::Url, SendError> {
        let invalid = |reason: &str| SendError {
            failure: Failure::TokenInvalid,
            ..SendError::permanent(NAME, reason)
        };
        let url = reqwest::Url::parse(address).map_err(|_| invalid("bad_url"))?;
        if !["http", "https"].contains(&url.scheme()) || !url.username().is_empty() {
            return Err(invalid("bad_url"));
        }
        let host = url.host_str().unwrap_or("");
        let allowed = self.allowed_hosts.is_empty()
            || self
                .allowed_hosts
                .iter()
                .any(|h| match h.strip_prefix("*.") {
                    Some(domain) => host.ends_with(&format!(".{domain}")),
                    None => host == h,
                });
        if !allowed {
            return Err(invalid("host_not_allowed"));
        }
        Ok(url)
    }

    async fn send_one(&self, m: &ChannelMessage) -> Result<Accepted, SendError> {
        let url = self.endpoint(&m.recipient.address)?;
        let body = m.content.body.clone().into_bytes();
        let ts = now_s();
        let id = &m.notification_id;
        let resp = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", self.sign(id, ts, &body))
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error(NAME, &e))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(Accepted {
                provider: NAME,
                provider_message_id: id.clone(),
            });
        }
        let failure = match status {
            410 => Failure::TokenInvalid,
            // A redirect is not followed: the endpoint must be fixed.
            300..=399 => Failure::Permanent,
            s => classify_status(s),
        };
        Err(SendError {
            provider: NAME,
            failure,
            reason: status.to_string(),
            status: Some(status),
            retry_after: retry_after(resp.headers()),
        })
    }
}

impl Provider for Webhook {
    fn name(&self) -> &'static str {
        NAME
    }

    fn send<'a>(
        &'a self,
        message: &'a ChannelMessage,
    ) -> BoxFuture<'a, Result<Accepted, SendError>> {
        Box::pin(self.send_one(message))
    }
}
