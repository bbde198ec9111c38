//! FCM HTTP v1: `messages:send` with an OAuth2 access token obtained by
//! exchanging a service-account JWT (RS256, `scope` firebase.messaging,
//! `aud` the token URI, an hour of life) at the token endpoint. The access
//! token is cached until a minute before it expires, and dropped when FCM
//! answers 401.
//!
//! `UNREGISTERED` (404) means the token is gone; `INVALID_ARGUMENT` is
//! permanent; 429 and 503 honour `Retry-After`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use herald_model::secret::Secret;
use herald_model::wire::ChannelMessage;
use herald_model::Priority;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::Mutex;

use super::{classify_status, now_s, retry_after, transport_error, Accepted, Failure, SendError};

const NAME: &str = "fcm";
/// The OAuth2 scope FCM sends need.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// `[deliver.fcm]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmSettings {
    /// FCM base URL.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// A service-account JSON file as Google issues it (`project_id`,
    /// `client_email`, `private_key`, `token_uri`); or the fields below.
    #[serde(default)]
    pub service_account_file: Option<PathBuf>,
    /// Firebase project id.
    #[serde(default)]
    pub project_id: Option<String>,
    /// Service account e-mail.
    #[serde(default)]
    pub client_email: Option<String>,
    /// The service account's RSA private key (PEM).
    #[serde(default)]
    pub private_key: Option<Secret>,
    /// OAuth2 token endpoint.
    #[serde(default)]
    pub token_uri: Option<String>,
    /// Request timeout.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_base_url() -> String {
    "https://fcm.googleapis.com".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    client_email: String,
    private_key: Secret,
    #[serde(default)]
    token_uri: Option<String>,
}

/// The FCM adapter.
pub struct Fcm {
    base_url: String,
    project_id: String,
    client_email: String,
    token_uri: String,
    key: EncodingKey,
    client: reqwest::Client,
    access: Mutex<Option<(String, Instant)>>,
    /// Two requests' worth: a send may first exchange its access token.
    deadline: Duration,
}

impl Fcm {
    /// Reads the service account and builds the client.
    pub fn new(s: FcmSettings) -> Result<Self, String> {
        let file: Option<ServiceAccount> = match &s.service_account_file {
            Some(path) => {
                let text = std::fs::read(path).map_err(|e| {
                    format!("deliver.fcm.service_account_file {}: {e}", path.display())
                })?;
                Some(serde_json::from_slice(&text).map_err(|e| {
                    format!("deliver.fcm.service_account_file {}: {e}", path.display())
                })?)
            }
            None => None,
        };
        let pick = |a: Option<String>, b: Option<String>, name: &str| {
            a.or(b)
                .ok_or_else(|| format!("deliver.fcm needs {name} (or service_account_file)"))
        };
        let project_id = pick(
            s.project_id,
            file.as_ref().map(|f| f.project_id.clone()),
            "project_id",
        )?;
        let client_email = pick(
            s.client_email,
            file.as_ref().map(|f| f.client_email.clone()),
            "client_email",
        )?;
        let private_key = s
            .private_key
            .or(file.as_ref().map(|f| f.private_key.clone()))
            .ok_or("deliver.fcm needs private_key (or service_account_file)")?;
        let token_uri = s
            .token_uri
            .or(file.and_then(|f| f.token_uri))
            .unwrap_or_else(|| "https://oauth2.googleapis.com/token".into());
        let key = EncodingKey::from_rsa_pem(private_key.expose().as_bytes())
            .map_err(|e| format!("deliver.fcm private key is not an RSA PEM key: {e}"))?;
        let client = reqwest::Client::builder()
            .timeout(s.timeout)
            .build()
            .map_err(|e| format!("deliver.fcm client: {e}"))?;
        Ok(Self {
            base_url: s.base_url.trim_end_matches('/').to_string(),
            project_id,
            client_email,
            token_uri,
            key,
            client,
            access: Mutex::new(None),
            deadline: s.timeout * 2,
        })
    }

    /// The signed assertion the token endpoint exchanges.
    pub fn assertion(&self) -> Result<String, SendError> {
        let now = now_s();
        let claims = json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|_| SendError::permanent(NAME, "assertion_signing"))
    }

    /// A valid access token, fetched when there is none or it is about to expire.
    async fn access_token(&self) -> Result<String, SendError> {
        let mut cached = self.access.lock().await;
        if let Some((token, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let assertion = self.assertion()?;
        let resp = self
            .client
            .post(&self.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| transport_error(NAME, &e))?;
        let status = resp.status().as_u16();
        let after = retry_after(resp.headers());
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status != 200 {
            let reason = body
                .get("error")
                .and_then(Value::as_str)
                .map_or_else(|| format!("token_{status}"), |e| format!("token_{e}"));
            // A refused grant is our configuration: retryable so nothing is
            // lost while an operator fixes it; the breaker opens.
            return Err(SendError {
                provider: NAME,
                failure: if status == 429 {
                    Failure::RateLimited
                } else {
                    Failure::Retryable
                },
                reason,
                status: Some(status),
                retry_after: after,
            });
        }
        let token = body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| SendError::transport(NAME, "token_response"))?
            .to_string();
        let lifetime = body
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(3599);
        let until = Instant::now() + Duration::from_secs(lifetime.saturating_sub(60));
        *cached = Some((token.clone(), until));
        Ok(token)
    }

    async fn send_one(&self, m: &ChannelMessage) -> Result<Accepted, SendError> {
        if m.recipient.address.is_empty() {
            return Err(SendError {
                failure: Failure::TokenInvalid,
                ..SendError::permanent(NAME, "empty_token")
            });
        }
        let access = self.access_token().await?;
        let url = format!(
            "{}/v1/projects/{}/messages:send",
            self.base_url, self.project_id
        );
        let resp = self
            .client
            .post(url)
            .bearer_auth(access)
            .json(&message_body(m))
            .send()
            .await
            .map_err(|e| transport_error(NAME, &e))?;
        let status = resp.status().as_u16();
        let after = retry_after(resp.headers());
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status == 200 {
            let name = body
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| SendError::transport(NAME, "response_body"))?;
            return Ok(Accepted {
                provider: NAME,
                provider_message_id: name.to_string(),
            });
        }
        let error = body.get("error");
        let fcm_code = error
            .and_then(|e| e.get("details"))
            .and_then(Value::as_array)
            .and_then(|d| {
                d.iter()
                    .find_map(|x| x.get("errorCode").and_then(Value::as_str))
            });
        let google_status = error.and_then(|e| e.get("status")).and_then(Value::as_str);
        let reason = fcm_code
            .or(google_status)
            .map_or_else(|| status.to_string(), str::to_string);
        let failure = match (status, reason.as_str()) {
            (_, "UNREGISTERED") | (403, "SENDER_ID_MISMATCH") => Failure::TokenInvalid,
            (401, _) => {
                *self.access.lock().await = None;
                Failure::Retryable
            }
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

provider!(Fcm, NAME, deadline);

/// The `messages:send` body for `m`.
pub fn message_body(m: &ChannelMessage) -> Value {
    let c = &m.content;
    let mut data: Map<String, Value> = c
        .data
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    data.insert(
        "herald_notification_id".into(),
        m.notification_id.clone().into(),
    );
    let mut message = json!({
        "token": m.recipient.address,
        "data": data,
        "android": {
            "priority": if m.priority == Priority::Bulk { "normal" } else { "high" },
        },
    });
    let title = c.title.as_deref().filter(|t| !t.is_empty());
    if title.is_some() || !c.body.is_empty() {
        message["notification"] = json!({ "title": title, "body": c.body });
    }
    if let Some(exp) = m.expires_at {
        let ttl = ((exp / 1000) - now_s()).max(0);
        message["android"]["ttl"] = format!("{ttl}s").into();
    }
    if let Some(c) = c.data.get("collapse_id") {
        message["android"]["collapse_key"] = c.clone().into();
    }
    json!({ "message": message })
}
