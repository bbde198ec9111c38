//! Twilio Messages API: `POST /2010-04-01/Accounts/{sid}/Messages.json`,
//! a form with HTTP basic auth.
//!
//! Checked as Twilio documents it: basic auth with the account SID and auth
//! token, the SID in the path; `To` in E.164; `From` or
//! `MessagingServiceSid`; a `Body` of at most 1600 characters; an optional
//! `StatusCallback` URL. Errors are `{code, message, more_info, status}`
//! with Twilio's codes. Twilio's magic test numbers: +15005550001 is
//! invalid (21211), +15005550009 cannot receive SMS (21614). Herald's
//! notification id travels in the `StatusCallback` query.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use base64::Engine as _;
use serde_json::json;

use crate::{http_fault, reject, Sandbox};

fn error(sandbox: &Sandbox, status: StatusCode, code: u32, message: &str) -> Response {
    reject(
        sandbox,
        "twilio",
        status,
        &code.to_string(),
        json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status.as_u16(),
        }),
    )
}

fn authorised(sandbox: &Sandbox, sid: &str, headers: &HeaderMap) -> bool {
    let creds = &sandbox.settings().twilio;
    let Some(encoded) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return false;
    };
    let expected = format!("{}:{}", creds.account_sid, creds.auth_token);
    !creds.account_sid.is_empty() && sid == creds.account_sid && decoded == expected.as_bytes()
}

fn e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|d| {
        (7..=15).contains(&d.len()) && d.chars().all(|c| c.is_ascii_digit()) && !d.starts_with('0')
    })
}

/// `POST /2010-04-01/Accounts/{sid}/Messages.json`.
pub async fn send(
    State(sandbox): State<Arc<Sandbox>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let fault = http_fault(&sandbox, "twilio", |status| {
        let code = if status == 429 { 20429 } else { 20500 };
        json!({ "code": code, "message": "injected", "status": status })
    });
    if let Some(resp) = fault.await {
        return resp;
    }
    if !authorised(&sandbox, &sid, &headers) {
        return error(&sandbox, StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    let Ok(Form(form)) = form else {
        return error(
            &sandbox,
            StatusCode::BAD_REQUEST,
            21601,
            "Request body must be a form",
        );
    };
    let to = form.get("To").map(String::as_str).unwrap_or("");
    if !e164(to) || to == "+15005550001" {
        return error(
            &sandbox,
            StatusCode::BAD_REQUEST,
            21211,
            "The 'To' number is not a valid phone number.",
        );
    }
    if to == "+15005550009" {
        return error(
            &sandbox,
            StatusCode::BAD_REQUEST,
            21614,
            "'To' number is not a valid mobile number",
        );
    }
    if !form.contains_key("From") && !form.contains_key("MessagingServiceSid") {
        return error(
            &sandbox,
            StatusCode::BAD_REQUEST,
            21603,
            "A 'From' phone number is required.",
        );
    }
    let body = form.get("Body").map(String::as_str).unwrap_or("");
    if body.is_empty() {
        return error(
            &sandbox,
            StatusCode::BAD_REQUEST,
            21602,
            "Message body is required.",
        );
    }
    if body.chars().count() > 1600 {
        return error(
            &sandbox,
            StatusCode::BAD_REQUEST,
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        );
    }
    let callback = form.get("StatusCallback");
    let notification_id = callback
        .and_then(|url| url.split_once('?'))
        .and_then(|(_, q)| serde_urlencoded::from_str::<HashMap<String, String>>(q).ok())
        .and_then(|q| q.get("notification_id").cloned());
    let message_sid = format!("SM{}", uuid::Uuid::new_v4().simple());
    sandbox.accept(
        "twilio",
        notification_id,
        message_sid.clone(),
        json!({ "form": form }),
    );
    (
        StatusCode::CREATED,
        Json(json!({
            "sid": message_sid,
            "account_sid": sid,
            "to": to,
            "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "body": body,
            "status": "queued",
            "num_segments": body.chars().count().div_ceil(160).to_string(),
            "direction": "outbound-api",
            "error_code": null,
            "uri": format!("/2010-04-01/Accounts/{sid}/Messages/{message_sid}.json"),
        })),
    )
        .into_response()
}
