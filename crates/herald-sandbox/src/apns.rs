//! APNs: `POST /3/device/{token}` over HTTP/2 with token authentication.
//!
//! Checked as Apple documents it: HTTP/2 only; `authorization: bearer`
//! with an ES256 JWT whose header names the key (`kid`) and whose claims
//! carry the team (`iss`) and an issue time under an hour old;
//! `apns-topic`; `apns-push-type`; `apns-priority` 10, 5 or 1;
//! `apns-expiration` a number; `apns-collapse-id` at most 64 bytes;
//! `apns-id` a UUID; a 64-hex device token; a JSON payload with an `aps`
//! dictionary, at most 4096 bytes. Errors are `{"reason": ...}` with
//! Apple's status codes; tokens starting `dead` are unregistered (410).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::json;

use crate::{http_fault, now_ms, reject, Sandbox};

const PUSH_TYPES: [&str; 10] = [
    "alert",
    "background",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "location",
    "liveactivity",
    "pushtotalk",
    "widgets",
];

#[derive(Debug, Deserialize)]
struct Claims {
    iat: i64,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn error(sandbox: &Sandbox, status: StatusCode, reason: &str) -> Response {
    reject(sandbox, "apns", status, reason, json!({ "reason": reason }))
}

/// Checks the provider token; the APNs reason when it is refused.
fn check_token(sandbox: &Sandbox, headers: &HeaderMap) -> Result<(), &'static str> {
    let creds = &sandbox.settings().apns;
    let Some(token) = header(headers, "authorization").and_then(|a| {
        a.strip_prefix("bearer ")
            .or_else(|| a.strip_prefix("Bearer "))
    }) else {
        return Err("MissingProviderToken");
    };
    let head = jsonwebtoken::decode_header(token).map_err(|_| "InvalidProviderToken")?;
    if head.alg != Algorithm::ES256 || head.kid.as_deref() != Some(creds.key_id.as_str()) {
        return Err("InvalidProviderToken");
    }
    let key = DecodingKey::from_ec_pem(creds.public_key_pem.as_bytes())
        .map_err(|_| "InvalidProviderToken")?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    validation.set_required_spec_claims(&["iss"]);
    validation.set_issuer(&[creds.team_id.as_str()]);
    let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
        .map_err(|_| "InvalidProviderToken")?
        .claims;
    let age = now_ms() / 1000 - claims.iat;
    if age > 3600 {
        return Err("ExpiredProviderToken");
    }
    if age < -60 {
        return Err("InvalidProviderToken");
    }
    Ok(())
}

/// `POST /3/device/{token}`.
pub async fn send(
    State(sandbox): State<Arc<Sandbox>>,
    Path(device): Path<String>,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if version != Version::HTTP_2 {
        return error(
            &sandbox,
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "HTTP2Required",
        );
    }
    let fault = http_fault(&sandbox, "apns", |status| {
        json!({ "reason": match status {
            429 => "TooManyRequests",
            500 => "InternalServerError",
            _ => "ServiceUnavailable",
        }})
    });
    if let Some(resp) = fault.await {
        return resp;
    }
    if let Err(reason) = check_token(&sandbox, &headers) {
        return error(&sandbox, StatusCode::FORBIDDEN, reason);
    }
    let Some(topic) = header(&headers, "apns-topic") else {
        return error(&sandbox, StatusCode::BAD_REQUEST, "MissingTopic");
    };
    let push_type = header(&headers, "apns-push-type");
    if !push_type.is_some_and(|t| PUSH_TYPES.contains(&t)) {
        return error(&sandbox, StatusCode::BAD_REQUEST, "InvalidPushType");
    }
    let priority = header(&headers, "apns-priority");
    if priority.is_some_and(|p| !["10", "5", "1"].contains(&p)) {
        return error(&sandbox, StatusCode::BAD_REQUEST, "BadPriority");
    }
    let expiration = header(&headers, "apns-expiration");
    if expiration.is_some_and(|e| e.parse::<u64>().is_err()) {
        return error(&sandbox, StatusCode::BAD_REQUEST, "BadExpirationDate");
    }
    let collapse = header(&headers, "apns-collapse-id");
    if collapse.is_some_and(|c| c.len() > 64) {
        return error(&sandbox, StatusCode::BAD_REQUEST, "BadCollapseId");
    }
    let apns_id = match header(&headers, "apns-id") {
        Some(id) => match uuid::Uuid::parse_str(id) {
            Ok(u) => u.hyphenated().to_string().to_uppercase(),
            Err(_) => return error(&sandbox, StatusCode::BAD_REQUEST, "BadMessageId"),
        },
        None => uuid::Uuid::new_v4().hyphenated().to_string().to_uppercase(),
    };
    if device.len() != 64 || !device.chars().all(|c| c.is_ascii_hexdigit()) {
        return error(&sandbox, StatusCode::BAD_REQUEST, "BadDeviceToken");
    }
    if body.is_empty() {
        return error(&sandbox, StatusCode::BAD_REQUEST, "PayloadEmpty");
    }
    if body.len() > 4096 {
        return error(&sandbox, StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge");
    }
    let payload: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return error(&sandbox, StatusCode::BAD_REQUEST, "BadPayload"),
    };
    if !payload.get("aps").is_some_and(serde_json::Value::is_object) {
        return error(&sandbox, StatusCode::BAD_REQUEST, "PayloadEmpty");
    }
    if device.starts_with("dead") {
        sandbox.count("apns", "410 Unregistered");
        return (
            StatusCode::GONE,
            [("apns-id", apns_id)],
            axum::Json(json!({ "reason": "Unregistered", "timestamp": now_ms() })),
        )
            .into_response();
    }
    let notification_id = payload
        .pointer("/herald/notification_id")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    sandbox.accept(
        "apns",
        notification_id,
        apns_id.clone(),
        json!({
            "device_token": device,
            "headers": {
                "apns-topic": topic,
                "apns-push-type": push_type,
                "apns-priority": priority,
                "apns-expiration": expiration,
                "apns-collapse-id": collapse,
                "apns-id": apns_id,
            },
            "payload": payload,
        }),
    );
    (
        StatusCode::OK,
        [
            ("apns-id", apns_id.clone()),
            ("apns-unique-id", uuid::Uuid::new_v4().to_string()),
        ],
    )
        .into_response()
}
