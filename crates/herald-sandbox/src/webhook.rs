//! A webhook receiver checking the Standard Webhooks signature
//! (<https://www.standardwebhooks.com>): `webhook-id`, `webhook-timestamp`
//! (within five minutes) and `webhook-signature`, a space-separated list of
//! `v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`, with the
//! secret given as `whsec_<base64>`. `POST /hooks/{endpoint}`; the
//! endpoint `gone` answers 410, as a deleted subscription does.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::{http_fault, now_ms, reject, Sandbox};

/// Largest clock difference accepted, seconds.
pub const TOLERANCE_S: i64 = 300;

fn error(sandbox: &Sandbox, status: StatusCode, reason: &str) -> Response {
    reject(
        sandbox,
        "webhook",
        status,
        reason,
        json!({ "error": reason }),
    )
}

/// Checks a signature header against the secret; `Err` names what is wrong.
pub fn verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    body: &[u8],
    signatures: &str,
    now_s: i64,
) -> Result<(), &'static str> {
    let ts: i64 = timestamp.parse().map_err(|_| "bad timestamp")?;
    if (now_s - ts).abs() > TOLERANCE_S {
        return Err("timestamp outside the tolerance");
    }
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
        .ok_or("receiver secret is not whsec_<base64>")?;
    for candidate in signatures.split(' ') {
        let Some(sig) = candidate
            .strip_prefix("v1,")
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        else {
            continue;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
            return Err("bad key");
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        if mac.verify_slice(&sig).is_ok() {
            return Ok(());
        }
    }
    Err("no valid signature")
}

/// `POST /hooks/{endpoint}`.
pub async fn receive(
    State(sandbox): State<Arc<Sandbox>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(resp) = http_fault(&sandbox, "webhook", |_| json!({ "error": "injected" })).await {
        return resp;
    }
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(ts), Some(sig)) = (
        get("webhook-id"),
        get("webhook-timestamp"),
        get("webhook-signature"),
    ) else {
        return error(&sandbox, StatusCode::BAD_REQUEST, "missing webhook headers");
    };
    if let Err(reason) = verify(
        &sandbox.settings().webhook_secret,
        id,
        ts,
        &body,
        sig,
        now_ms() / 1000,
    ) {
        return error(&sandbox, StatusCode::UNAUTHORIZED, reason);
    }
    if endpoint == "gone" {
        return error(&sandbox, StatusCode::GONE, "endpoint deleted");
    }
    let payload: serde_json::Value =
        serde_json::from_slice(&body).unwrap_or_else(|_| json!(String::from_utf8_lossy(&body)));
    sandbox.accept(
        "webhook",
        Some(id.to_string()),
        id.to_string(),
        json!({ "endpoint": endpoint, "webhook-timestamp": ts, "body": payload }),
    );
    StatusCode::NO_CONTENT.into_response()
}
