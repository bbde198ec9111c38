//! FCM HTTP v1: the OAuth2 token endpoint (`POST /token`, a service-account
//! JWT exchanged for an access token) and
//! `POST /v1/projects/{project}/messages:send` with that token.
//!
//! Checked as Google documents it: the JWT-bearer grant; an RS256
//! assertion issued by the service account, for this token endpoint
//! (`aud`), with the `firebase.messaging` scope and at most an hour of
//! life; a valid, unexpired access token on every send; the project; a
//! `message` with exactly one target (`token`, `topic`, `condition`) and
//! string-only `data`. Errors are Google's `{"error": {code, status,
//! message, details}}`; tokens starting `dead` are UNREGISTERED (404).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::json;

use crate::{http_fault, now_ms, reject, Sandbox};

/// The scope FCM sends need.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The token request's form.
#[derive(Debug, Deserialize)]
pub struct TokenForm {
    grant_type: Option<String>,
    assertion: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Assertion {
    scope: String,
    iat: i64,
    exp: i64,
}

fn oauth_error(sandbox: &Sandbox, error: &str, description: &str) -> Response {
    reject(
        sandbox,
        "fcm",
        StatusCode::BAD_REQUEST,
        error,
        json!({ "error": error, "error_description": description }),
    )
}

/// `POST /token`: a signed service-account assertion for an access token.
pub async fn token(
    State(sandbox): State<Arc<Sandbox>>,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return oauth_error(&sandbox, "invalid_request", "form body expected");
    };
    if form.grant_type.as_deref() != Some(GRANT) {
        return oauth_error(&sandbox, "unsupported_grant_type", "Invalid grant_type");
    }
    let Some(assertion) = form.assertion else {
        return oauth_error(&sandbox, "invalid_request", "Missing assertion");
    };
    let creds = &sandbox.settings().fcm;
    let Ok(key) = DecodingKey::from_rsa_pem(creds.public_key_pem.as_bytes()) else {
        return oauth_error(&sandbox, "invalid_client", "no service account configured");
    };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[creds.client_email.as_str()]);
    validation.set_required_spec_claims(&["iss", "aud", "exp"]);
    validation.validate_aud = false;
    let claims = match jsonwebtoken::decode::<serde_json::Value>(&assertion, &key, &validation) {
        Ok(data) => data.claims,
        Err(e) => {
            return oauth_error(&sandbox, "invalid_grant", &format!("Invalid JWT: {e}"));
        }
    };
    if !claims
        .get("aud")
        .and_then(|a| a.as_str())
        .is_some_and(|a| a.ends_with("/token"))
    {
        return oauth_error(&sandbox, "invalid_grant", "Invalid JWT audience");
    }
    let Ok(a) = serde_json::from_value::<Assertion>(claims) else {
        return oauth_error(&sandbox, "invalid_grant", "Invalid JWT claims");
    };
    if a.exp - a.iat > 3600 {
        return oauth_error(
            &sandbox,
            "invalid_grant",
            "Invalid JWT: expiry more than an hour after issue",
        );
    }
    if !a.scope.split(' ').any(|s| s == SCOPE) {
        return oauth_error(
            &sandbox,
            "invalid_scope",
            "firebase.messaging scope required",
        );
    }
    let access = format!("ya29.sandbox-{}", uuid::Uuid::new_v4().simple());
    sandbox.fcm_token_issue(access.clone(), now_ms() + 3_600_000);
    sandbox.count("fcm", "token issued");
    Json(json!({ "access_token": access, "expires_in": 3599, "token_type": "Bearer" }))
        .into_response()
}

fn fcm_error(
    sandbox: &Sandbox,
    status: StatusCode,
    code: &str,
    fcm_code: Option<&str>,
    message: &str,
) -> Response {
    let mut error = json!({ "code": status.as_u16(), "message": message, "status": code });
    if let Some(c) = fcm_code {
        error["details"] = json!([{
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": c,
        }]);
    }
    reject(
        sandbox,
        "fcm",
        status,
        fcm_code.unwrap_or(code),
        json!({ "error": error }),
    )
}

/// `POST /v1/projects/{project}/messages:send`.
pub async fn send(
    State(sandbox): State<Arc<Sandbox>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fault = http_fault(&sandbox, "fcm", |status| {
        let (s, c) = match status {
            429 => ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
            500 => ("INTERNAL", "INTERNAL"),
            _ => ("UNAVAILABLE", "UNAVAILABLE"),
        };
        json!({ "error": { "code": status, "message": "injected", "status": s,
            "details": [{ "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": c }] } })
    });
    if let Some(resp) = fault.await {
        return resp;
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.strip_prefix("Bearer "));
    if !bearer.is_some_and(|t| sandbox.fcm_token_valid(t)) {
        return fcm_error(
            &sandbox,
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            None,
            "Request had invalid authentication credentials.",
        );
    }
    if project != sandbox.settings().fcm.project_id {
        return fcm_error(
            &sandbox,
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            Some("SENDER_ID_MISMATCH"),
            "Permission denied on the project.",
        );
    }
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return fcm_error(
            &sandbox,
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            Some("INVALID_ARGUMENT"),
            "Invalid JSON payload received.",
        );
    };
    let Some(message) = request.get("message").and_then(|m| m.as_object()) else {
        return fcm_error(
            &sandbox,
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            Some("INVALID_ARGUMENT"),
            "Missing message.",
        );
    };
    let targets = ["token", "topic", "condition"]
        .iter()
        .filter(|t| message.contains_key(**t))
        .count();
    if targets != 1 {
        return fcm_error(
            &sandbox,
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            Some("INVALID_ARGUMENT"),
            "Exactly one of token, topic or condition is required.",
        );
    }
    if let Some(data) = message.get("data") {
        let strings = data
            .as_object()
            .is_some_and(|d| d.values().all(serde_json::Value::is_string));
        if !strings {
            return fcm_error(
                &sandbox,
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                Some("INVALID_ARGUMENT"),
                "data must map strings to strings.",
            );
        }
    }
    let token = message.get("token").and_then(|t| t.as_str()).unwrap_or("");
    if message.contains_key("token") && token.is_empty() {
        return fcm_error(
            &sandbox,
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            Some("INVALID_ARGUMENT"),
            "The registration token is not a valid FCM registration token",
        );
    }
    if token.starts_with("dead") {
        return fcm_error(
            &sandbox,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            Some("UNREGISTERED"),
            "Requested entity was not found.",
        );
    }
    let id = format!("0:{}%sandbox", uuid::Uuid::new_v4().simple());
    let name = format!("projects/{project}/messages/{id}");
    let notification_id = message
        .get("data")
        .and_then(|d| d.get("herald_notification_id"))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    sandbox.accept(
        "fcm",
        notification_id,
        name.clone(),
        json!({ "message": message }),
    );
    Json(json!({ "name": name })).into_response()
}
