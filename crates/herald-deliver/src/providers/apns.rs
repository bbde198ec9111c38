//! APNs over HTTP/2 with token authentication.
//!
//! The provider token is an ES256 JWT signed with the team's .p8 key
//! (header `kid`, claims `iss` = team id, `iat`), reused until
//! `token_refresh` (50 minutes by default: Apple refuses tokens older than
//! an hour and throttles refreshes more often than every 20 minutes), and
//! re-signed at once when APNs answers `ExpiredProviderToken`.
//!
//! Headers: `apns-topic`, `apns-push-type` (`alert`, or `background` for a
//! content-less message), `apns-priority` (10, or 5 for bulk and
//! background), `apns-expiration` (from `expires_at`), `apns-collapse-id`
//! (from `data.collapse_id`), `apns-id` (the notification id as a UUID, so
//! Apple's records join Herald's).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use herald_model::secret::Secret;
use herald_model::wire::ChannelMessage;
use herald_model::Priority;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{
    classify_status, now_s, retry_after, transport_error, uuid_of, Accepted, Failure, SendError,
};

const NAME: &str = "apns";

/// `[deliver.apns]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsSettings {
    /// APNs base URL (`https://api.sandbox.push.apple.com` for development).
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Apple team id.
    pub team_id: String,
    /// Key id of the .p8 key.
    pub key_id: String,
    /// The .p8 key file (PKCS#8 PEM); or `key_pem`.
    #[serde(default)]
    pub key_path: Option<PathBuf>,
    /// The .p8 key itself (from a Secret, through `HERALD__...`).
    #[serde(default)]
    pub key_pem: Option<Secret>,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// How long a provider token is reused.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub token_refresh: Duration,
    /// Request timeout.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_base_url() -> String {
    "https://api.push.apple.com".into()
}

fn default_refresh() -> Duration {
    Duration::from_secs(50 * 60)
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The APNs adapter.
pub struct Apns {
    settings: ApnsSettings,
    key: EncodingKey,
    client: reqwest::Client,
    token: Mutex<Option<(String, Instant)>>,
}

impl Apns {
    /// Reads the key and builds an HTTP/2 client.
    pub fn new(settings: ApnsSettings) -> Result<Self, String> {
        let pem = match (&settings.key_pem, &settings.key_path) {
            (Some(pem), _) => pem.expose().as_bytes().to_vec(),
            (None, Some(path)) => std::fs::read(path)
                .map_err(|e| format!("deliver.apns.key_path {}: {e}", path.display()))?,
            (None, None) => return Err("deliver.apns needs key_path or key_pem".into()),
        };
        let key = EncodingKey::from_ec_pem(&pem)
            .map_err(|e| format!("deliver.apns key is not a P-256 PKCS#8 PEM key: {e}"))?;
        // APNs speaks only HTTP/2.
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .timeout(settings.timeout)
            .build()
            .map_err(|e| format!("deliver.apns client: {e}"))?;
        Ok(Self {
            settings,
            key,
            client,
            token: Mutex::new(None),
        })
    }

    /// The current provider token, signed anew when older than `token_refresh`.
    pub fn provider_token(&self) -> Result<String, SendError> {
        let mut cached = self
            .token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((token, at)) = cached.as_ref() {
            if at.elapsed() < self.settings.token_refresh {
                return Ok(token.clone());
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.settings.key_id.clone());
        let claims = json!({ "iss": self.settings.team_id, "iat": now_s() });
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|_| SendError::permanent(NAME, "provider_token_signing"))?;
        *cached = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    fn forget_token(&self) {
        *self
            .token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    async fn send_one(&self, m: &ChannelMessage) -> Result<Accepted, SendError> {
        // Device tokens are hex; anything else never goes into the URL.
        let device = &m.recipient.address;
        if device.is_empty() || !device.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(SendError {
                failure: Failure::TokenInvalid,
                ..SendError::permanent(NAME, "BadDeviceToken")
            });
        }
        let request = Request::of(m);
        // A header value with control characters cannot be sent: the
        // message's own fault, never the provider's (no retry, no breaker).
        if request
            .collapse_id
            .as_deref()
            .is_some_and(|c| c.chars().any(char::is_control))
        {
            return Err(SendError::permanent(NAME, "invalid_collapse_id"));
        }
        let token = self.provider_token()?;
        let url = format!(
            "{}/3/device/{}",
            self.settings.base_url.trim_end_matches('/'),
            device
        );
        let mut req = self
            .client
            .post(url)
            .header("authorization", format!("bearer {token}"))
            .header("apns-topic", &self.settings.topic)
            .header("apns-push-type", request.push_type)
            .header("apns-priority", request.priority.to_string())
            .header("apns-id", request.apns_id.clone())
            .json(&request.payload);
        if let Some(exp) = m.expires_at {
            req = req.header("apns-expiration", (exp / 1000).max(0).to_string());
        }
        if let Some(c) = request.collapse_id {
            req = req.header("apns-collapse-id", c);
        }
        let resp = req.send().await.map_err(|e| transport_error(NAME, &e))?;
        let status = resp.status().as_u16();
        if status == 200 {
            let id = resp
                .headers()
                .get("apns-id")
                .and_then(|v| v.to_str().ok())
                .map_or(request.apns_id, str::to_string);
            return Ok(Accepted {
                provider: NAME,
                provider_message_id: id,
            });
        }
        let after = retry_after(resp.headers());
        let reason = resp
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| status.to_string());
        let failure = match (status, reason.as_str()) {
            (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => Failure::TokenInvalid,
            (403, "ExpiredProviderToken" | "InvalidProviderToken") => {
                self.forget_token();
                Failure::Retryable
            }
            (403, _) => Failure::Retryable,
            _ => classify_status(status),
        };
        Err(SendError {
            provider: NAME,
            failure,
            reason,
            status: Some(status),
            retry_after: after,
        })
    }
}

provider!(Apns, NAME, settings.timeout);

/// What Herald sends APNs for one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `apns-push-type`.
    pub push_type: &'static str,
    /// `apns-priority`.
    pub priority: u8,
    /// `apns-id`.
    pub apns_id: String,
    /// `apns-collapse-id`.
    pub collapse_id: Option<String>,
    /// The JSON payload.
    pub payload: Value,
}

impl Request {
    /// Builds the request for `m`.
    pub fn of(m: &ChannelMessage) -> Self {
        let c = &m.content;
        let title = c.title.as_deref().filter(|t| !t.is_empty());
        let body = Some(c.body.as_str()).filter(|b| !b.is_empty());
        let alert = title.is_some() || body.is_some();
        let aps = if alert {
            let mut a = Map::new();
            if let Some(t) = title {
                a.insert("title".into(), t.into());
            }
            if let Some(b) = body {
                a.insert("body".into(), b.into());
            }
            json!({ "alert": a, "sound": "default" })
        } else {
            json!({ "content-available": 1 })
        };
        let mut payload = Map::new();
        for (k, v) in &c.data {
            if !["aps", "herald", "collapse_id"].contains(&k.as_str()) {
                payload.insert(k.clone(), Value::String(v.clone()));
            }
        }
        payload.insert("aps".into(), aps);
        payload.insert(
            "herald".into(),
            json!({ "notification_id": m.notification_id }),
        );
        Self {
            push_type: if alert { "alert" } else { "background" },
            priority: if !alert || m.priority == Priority::Bulk {
                5
            } else {
                10
            },
            apns_id: uuid_of(&m.notification_id)
                .hyphenated()
                .to_string()
                .to_uppercase(),
            collapse_id: c
                .data
                .get("collapse_id")
                .filter(|v| !v.is_empty() && v.len() <= 64)
                .cloned(),
            payload: Value::Object(payload),
        }
    }
}
