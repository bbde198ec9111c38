//! The provider sandbox: one process standing in for APNs (HTTP/2), FCM
//! (with its OAuth2 token endpoint), Twilio's Messages API, a Standard
//! Webhooks receiver and an SMTP server.
//!
//! It checks requests the way the real provider does (authentication,
//! required headers, body shape) and answers with the provider's own error
//! bodies; it records every accepted message, queryable over HTTP; and it
//! injects faults on command (latency, error rates by status, 429 with
//! Retry-After, timeouts, outage windows). `herald dev` and the delivery
//! tests deliver to it.
//!
//! HTTP API of the sandbox itself, next to the providers' paths:
//!
//! - `GET /sandbox/messages?provider=&notification_id=&last=N`
//! - `GET /sandbox/counts`
//! - `PUT /sandbox/faults/{provider}` with a [`Fault`], `DELETE` to clear
//! - `POST /sandbox/reset`
//! - `GET /healthz`, `GET /readyz` (for probes)

pub mod apns;
pub mod credentials;
pub mod faults;
pub mod fcm;
pub mod smtp;
pub mod twilio;
pub mod webhook;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use herald_telemetry::shutdown::Shutdown;
use herald_telemetry::LogSettings;
use serde::{Deserialize, Serialize};

pub use faults::{Decision, Fault};

/// The providers the sandbox stands in for (also the fault targets).
pub const PROVIDERS: [&str; 5] = ["apns", "fcm", "twilio", "webhook", "smtp"];

/// Everything the sandbox binary reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Logging.
    pub log: LogSettings,
    /// The sandbox.
    pub sandbox: SandboxSettings,
}

/// The `[sandbox]` section: where it listens and the credentials it
/// accepts (public keys and test secrets, never production ones).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSettings {
    /// HTTP listener for every HTTP provider and the sandbox API (HTTP/1.1
    /// and HTTP/2 cleartext).
    pub http_listen: SocketAddr,
    /// SMTP listener.
    pub smtp_listen: SocketAddr,
    /// APNs token authentication.
    pub apns: ApnsCredentials,
    /// FCM service account.
    pub fcm: FcmCredentials,
    /// Twilio account.
    pub twilio: TwilioCredentials,
    /// Standard Webhooks secret (`whsec_` + base64).
    pub webhook_secret: String,
    /// SMTP AUTH credentials; without them any client may send.
    pub smtp: SmtpCredentials,
    /// Accepted messages kept for queries; past it the oldest are dropped
    /// and counted (`/sandbox/counts`: `sandbox.records_dropped`).
    pub max_records: usize,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        Self {
            http_listen: SocketAddr::from(([127, 0, 0, 1], 9700)),
            smtp_listen: SocketAddr::from(([127, 0, 0, 1], 2525)),
            apns: ApnsCredentials::default(),
            fcm: FcmCredentials::default(),
            twilio: TwilioCredentials::default(),
            webhook_secret: String::new(),
            smtp: SmtpCredentials::default(),
            max_records: 100_000,
        }
    }
}

/// What APNs checks a provider token against.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApnsCredentials {
    /// Team id (the token's `iss`).
    pub team_id: String,
    /// Key id (the token header's `kid`).
    pub key_id: String,
    /// The key's public half (PEM, P-256).
    pub public_key_pem: String,
}

/// What FCM checks a service-account assertion against.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FcmCredentials {
    /// Firebase project id.
    pub project_id: String,
    /// Service account e-mail (the assertion's `iss`).
    pub client_email: String,
    /// The service account key's public half (PEM, RSA).
    pub public_key_pem: String,
}

/// A Twilio account.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwilioCredentials {
    /// Account SID (`AC...`).
    pub account_sid: String,
    /// Auth token.
    pub auth_token: String,
}

/// SMTP AUTH PLAIN credentials.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpCredentials {
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
}

/// The `/sandbox/counts` entry (under `sandbox`) for accepted messages no
/// longer kept because `max_records` was reached.
pub const RECORDS_DROPPED: &str = "records_dropped";

/// One message a provider accepted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// Order of acceptance across providers.
    pub seq: u64,
    /// Provider.
    pub provider: &'static str,
    /// Herald's notification id, when the request carried one.
    pub notification_id: Option<String>,
    /// The id the provider answered with.
    pub provider_message_id: String,
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// What was sent: the checked headers and the body.
    pub request: serde_json::Value,
}

/// The sandbox's shared state.
pub struct Sandbox {
    settings: SandboxSettings,
    seq: AtomicU64,
    records: Mutex<VecDeque<Record>>,
    counts: Mutex<BTreeMap<&'static str, BTreeMap<String, u64>>>,
    faults: Mutex<HashMap<String, faults::Active>>,
    fcm_tokens: Mutex<HashMap<String, i64>>,
}

impl Sandbox {
    /// A sandbox with no records and no faults.
    pub fn new(settings: SandboxSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            seq: AtomicU64::new(0),
            records: Mutex::new(VecDeque::new()),
            counts: Mutex::new(BTreeMap::new()),
            faults: Mutex::new(HashMap::new()),
            fcm_tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &SandboxSettings {
        &self.settings
    }

    /// Records an accepted message and returns it.
    pub fn accept(
        &self,
        provider: &'static str,
        notification_id: Option<String>,
        provider_message_id: String,
        request: serde_json::Value,
    ) -> Record {
        let record = Record {
            seq: self.seq.fetch_add(1, Ordering::SeqCst),
            provider,
            notification_id,
            provider_message_id,
            at_ms: now_ms(),
            request,
        };
        self.count(provider, "accepted");
        let mut records = lock(&self.records);
        records.push_back(record.clone());
        let mut dropped = 0;
        while records.len() > self.settings.max_records.max(1) {
            records.pop_front();
            dropped += 1;
        }
        drop(records);
        if dropped > 0 {
            // Counted, so a run that reads the records back knows they are
            // not all there; said once in the log.
            let first = lock(&self.counts)
                .get("sandbox")
                .and_then(|c| c.get(RECORDS_DROPPED))
                .is_none();
            for _ in 0..dropped {
                self.count("sandbox", RECORDS_DROPPED);
            }
            if first {
                tracing::warn!(
                    max_records = self.settings.max_records,
                    "More messages accepted than sandbox.max_records keeps: the oldest are \
                     dropped from /sandbox/messages and counted as sandbox.records_dropped \
                     in /sandbox/counts."
                );
            }
        }
        record
    }

    /// Counts an outcome (`accepted`, or the status the request got).
    pub fn count(&self, provider: &'static str, outcome: &str) {
        *lock(&self.counts)
            .entry(provider)
            .or_default()
            .entry(outcome.to_string())
            .or_default() += 1;
    }

    /// Accepted messages, oldest first, filtered.
    pub fn records(&self, provider: Option<&str>, notification_id: Option<&str>) -> Vec<Record> {
        lock(&self.records)
            .iter()
            .filter(|r| provider.is_none_or(|p| r.provider == p))
            .filter(|r| notification_id.is_none_or(|n| r.notification_id.as_deref() == Some(n)))
            .cloned()
            .collect()
    }

    /// Outcomes per provider.
    pub fn counts(&self) -> BTreeMap<&'static str, BTreeMap<String, u64>> {
        lock(&self.counts).clone()
    }

    /// Installs a fault for `provider` (replacing any).
    pub fn set_fault(&self, provider: &str, fault: Fault) {
        lock(&self.faults).insert(provider.to_string(), faults::Active::new(fault));
    }

    /// Removes `provider`'s fault.
    pub fn clear_fault(&self, provider: &str) {
        lock(&self.faults).remove(provider);
    }

    /// Forgets records, counts and faults.
    pub fn reset(&self) {
        lock(&self.records).clear();
        lock(&self.counts).clear();
        lock(&self.faults).clear();
    }

    /// Whether `provider`'s fault drops the next connection.
    pub fn drops_connection(&self, provider: &str) -> bool {
        let reset = lock(&self.faults)
            .get_mut(provider)
            .is_some_and(faults::Active::reset);
        if reset {
            if let Some(p) = PROVIDERS.iter().find(|p| **p == provider) {
                self.count(p, "reset");
            }
        }
        reset
    }

    /// What the fault of `provider` does to the next request (latency
    /// first, then an error or a hang), counted.
    pub async fn fault(&self, provider: &'static str) -> Decision {
        let decision = lock(&self.faults)
            .get_mut(provider)
            .map_or(Decision::pass(), faults::Active::decide);
        if !decision.latency.is_zero() {
            tokio::time::sleep(decision.latency).await;
        }
        decision
    }

    pub(crate) fn fcm_token_issue(&self, token: String, expires_at_ms: i64) {
        lock(&self.fcm_tokens).insert(token, expires_at_ms);
    }

    pub(crate) fn fcm_token_valid(&self, token: &str) -> bool {
        lock(&self.fcm_tokens)
            .get(token)
            .is_some_and(|exp| *exp > now_ms())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Every HTTP route: the providers' and the sandbox API.
pub fn routes(sandbox: Arc<Sandbox>) -> Router {
    Router::new()
        .route("/3/device/{token}", post(apns::send))
        .route("/token", post(fcm::token))
        .route("/v1/projects/{project}/messages:send", post(fcm::send))
        .route(
            "/2010-04-01/Accounts/{sid}/Messages.json",
            post(twilio::send),
        )
        .route("/hooks/{endpoint}", post(webhook::receive))
        .route("/sandbox/messages", get(messages))
        .route("/sandbox/counts", get(counts))
        .route(
            "/sandbox/faults/{provider}",
            put(set_fault).delete(clear_fault),
        )
        .route("/sandbox/reset", post(reset))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .with_state(sandbox)
}

#[derive(Debug, Deserialize)]
struct MessagesQuery {
    provider: Option<String>,
    notification_id: Option<String>,
    last: Option<usize>,
}

async fn messages(
    State(sandbox): State<Arc<Sandbox>>,
    Query(q): Query<MessagesQuery>,
) -> Json<Vec<Record>> {
    let mut records = sandbox.records(q.provider.as_deref(), q.notification_id.as_deref());
    if let Some(n) = q.last {
        let skip = records.len().saturating_sub(n);
        records.drain(..skip);
    }
    Json(records)
}

async fn counts(
    State(sandbox): State<Arc<Sandbox>>,
) -> Json<BTreeMap<&'static str, BTreeMap<String, u64>>> {
    Json(sandbox.counts())
}

async fn set_fault(
    State(sandbox): State<Arc<Sandbox>>,
    Path(provider): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if !PROVIDERS.contains(&provider.as_str()) {
        return bad_request(&format!(
            "unknown provider {provider:?}; one of {PROVIDERS:?}"
        ));
    }
    match serde_json::from_slice::<Fault>(&body) {
        Ok(fault) => match fault.validate() {
            Ok(()) => {
                tracing::info!(%provider, ?fault, "Fault injected.");
                sandbox.set_fault(&provider, fault);
                StatusCode::NO_CONTENT.into_response()
            }
            Err(e) => bad_request(&e),
        },
        Err(e) => bad_request(&format!("fault: {e}")),
    }
}

async fn clear_fault(
    State(sandbox): State<Arc<Sandbox>>,
    Path(provider): Path<String>,
) -> StatusCode {
    sandbox.clear_fault(&provider);
    StatusCode::NO_CONTENT
}

async fn reset(State(sandbox): State<Arc<Sandbox>>) -> StatusCode {
    sandbox.reset();
    StatusCode::NO_CONTENT
}

fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// Where a started sandbox listens.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// HTTP providers and the sandbox API.
    pub http: SocketAddr,
    /// SMTP.
    pub smtp: SocketAddr,
}

impl SandboxSettings {
    /// The defaults on loopback ports of the system's choosing (tests,
    /// benchmarks).
    pub fn loopback() -> Self {
        Self {
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            smtp_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Self::default()
        }
    }
}

/// A Standard Webhooks signing secret (`whsec_` and base64) for `key`.
pub fn webhook_secret(key: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// A sandbox serving in this process; it stops when dropped.
pub struct Running {
    /// The sandbox (faults, records, counts).
    pub sandbox: Arc<Sandbox>,
    /// Where it listens.
    pub bound: Bound,
    stop: Shutdown,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.trigger();
    }
}

/// Starts a sandbox with `settings` in this process (see [`start`]).
pub async fn serve(settings: SandboxSettings) -> std::io::Result<Running> {
    let sandbox = Sandbox::new(settings);
    let stop = Shutdown::new();
    let (bound, _) = start(Arc::clone(&sandbox), stop.clone()).await?;
    Ok(Running {
        sandbox,
        bound,
        stop,
    })
}

/// Binds both listeners and serves until `shutdown`; returns where they
/// listen and the tasks.
pub async fn start(
    sandbox: Arc<Sandbox>,
    shutdown: Shutdown,
) -> std::io::Result<(Bound, Vec<tokio::task::JoinHandle<std::io::Result<()>>>)> {
    let settings = sandbox.settings().clone();
    let http = tokio::net::TcpListener::bind(settings.http_listen).await?;
    let smtp = tokio::net::TcpListener::bind(settings.smtp_listen).await?;
    let bound = Bound {
        http: http.local_addr()?,
        smtp: smtp.local_addr()?,
    };
    let app = routes(sandbox.clone());
    let http_task = tokio::spawn(serve_http(http, app, sandbox.clone(), shutdown.clone()));
    let smtp_task = tokio::spawn(smtp::serve(smtp, sandbox, shutdown));
    Ok((bound, vec![http_task, smtp_task]))
}

/// Applies `provider`'s fault to an HTTP request: `Some(response)` when the
/// fault answers instead of the provider (`body` builds the provider's own
/// error body for a status); a hang never returns.
pub(crate) async fn http_fault(
    sandbox: &Sandbox,
    provider: &'static str,
    body: impl Fn(u16) -> serde_json::Value,
) -> Option<Response> {
    match sandbox.fault(provider).await.outcome {
        faults::Outcome::Pass => None,
        faults::Outcome::Hang => {
            sandbox.count(provider, "hang");
            std::future::pending::<()>().await;
            None
        }
        faults::Outcome::Error {
            status,
            retry_after_s,
        } => {
            sandbox.count(provider, &format!("{status} injected"));
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let mut resp = (code, Json(body(status))).into_response();
            if let Some(s) = retry_after_s {
                resp.headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, s.into());
            }
            Some(resp)
        }
    }
}

/// A provider's refusal, counted under `"{status} {reason}"`.
pub(crate) fn reject(
    sandbox: &Sandbox,
    provider: &'static str,
    status: StatusCode,
    reason: &str,
    body: serde_json::Value,
) -> Response {
    sandbox.count(provider, &format!("{} {reason}", status.as_u16()));
    (status, Json(body)).into_response()
}

/// The provider a request path belongs to (for connection faults).
fn provider_of(path: &str) -> Option<&'static str> {
    if path.starts_with("/3/device/") {
        Some("apns")
    } else if path == "/token" || path.starts_with("/v1/projects/") {
        Some("fcm")
    } else if path.starts_with("/2010-04-01/") {
        Some("twilio")
    } else if path.starts_with("/hooks/") {
        Some("webhook")
    } else {
        None
    }
}

/// Serves HTTP/1.1 and HTTP/2 (prior knowledge) on `listener`; a request
/// whose provider's fault says reset ends its connection without an answer.
/// Concurrent HTTP/2 streams per connection, as APNs allows a new
/// connection (observed in its SETTINGS frames; it lowers this to 1 after a
/// rejected notification, which the sandbox does not do).
pub const APNS_MAX_STREAMS: u32 = 500;

async fn serve_http(
    listener: tokio::net::TcpListener,
    app: Router,
    sandbox: Arc<Sandbox>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tower::ServiceExt as _;
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let (app, sandbox, stop) = (app.clone(), sandbox.clone(), shutdown.clone());
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    let reset =
                        provider_of(req.uri().path()).is_some_and(|p| sandbox.drops_connection(p));
                    async move {
                        if reset {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::ConnectionReset,
                                "injected reset",
                            ));
                        }
                        Ok(app
                            .oneshot(req.map(axum::body::Body::new))
                            .await
                            .unwrap_or_else(|e| match e {}))
                    }
                });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // What APNs advertises in its SETTINGS frame (hyper's default
            // is 200).
            builder.http2().max_concurrent_streams(APNS_MAX_STREAMS);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_past_max_records_are_dropped_oldest_first_and_counted() {
        let sandbox = Sandbox::new(SandboxSettings {
            max_records: 2,
            ..SandboxSettings::default()
        });
        for n in 0..5 {
            sandbox.accept(
                "webhook",
                Some(format!("n-{n}")),
                format!("p-{n}"),
                serde_json::json!({}),
            );
        }
        let kept: Vec<_> = sandbox
            .records(None, None)
            .into_iter()
            .filter_map(|r| r.notification_id)
            .collect();
        assert_eq!(kept, vec!["n-3".to_string(), "n-4".to_string()]);
        let counts = sandbox.counts();
        assert_eq!(counts["sandbox"][RECORDS_DROPPED], 3);
        assert_eq!(counts["webhook"]["accepted"], 5);
    }
}
