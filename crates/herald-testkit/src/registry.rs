//! A Confluent-compatible schema registry served over real HTTP on loopback,
//! for tests. No registry can be installed on the build machines, so this
//! serves exactly the endpoints Herald's registry client calls:
//! `POST /subjects/{subject}/versions`, `GET /schemas/ids/{id}` and
//! `GET /subjects/{subject}/versions/latest`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Default)]
struct Inner {
    schemas: Vec<String>,
    subjects: HashMap<String, Vec<u32>>,
}

#[derive(Default)]
struct Shared {
    inner: Mutex<Inner>,
    unavailable: AtomicBool,
    fetches: AtomicUsize,
    registrations: AtomicUsize,
}

/// A running test registry; stops when dropped.
pub struct TestRegistry {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl TestRegistry {
    /// Starts the registry on an ephemeral loopback port (inside a tokio runtime).
    pub async fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/subjects/{subject}/versions", post(register))
            .route("/subjects/{subject}/versions/latest", get(latest))
            .route("/schemas/ids/{id}", get(by_id))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// Base URL for the registry client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Registers a schema directly (as another language's tooling would) and
    /// returns its id.
    pub fn register(&self, subject: &str, schema: &str) -> u32 {
        register_schema(&self.shared, subject, schema)
    }

    /// While set, every request answers 503 (a registry outage).
    pub fn set_unavailable(&self, down: bool) {
        self.shared.unavailable.store(down, Ordering::SeqCst);
    }

    /// How many `GET /schemas/ids/{id}` requests were served.
    pub fn fetches(&self) -> usize {
        self.shared.fetches.load(Ordering::SeqCst)
    }

    /// How many registrations were served.
    pub fn registrations(&self) -> usize {
        self.shared.registrations.load(Ordering::SeqCst)
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn register_schema(shared: &Shared, subject: &str, schema: &str) -> u32 {
    let mut inner = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
    let id = match inner.schemas.iter().position(|s| s == schema) {
        Some(i) => i as u32 + 1,
        None => {
            inner.schemas.push(schema.to_string());
            inner.schemas.len() as u32
        }
    };
    let versions = inner.subjects.entry(subject.to_string()).or_default();
    if !versions.contains(&id) {
        versions.push(id);
    }
    id
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error_code": 50301, "message": "down"})),
    )
        .into_response()
}

fn not_found(code: u32, message: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error_code": code, "message": message})),
    )
        .into_response()
}

async fn register(
    State(shared): State<Arc<Shared>>,
    Path(subject): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    if shared.unavailable.load(Ordering::SeqCst) {
        return unavailable();
    }
    let Some(schema) = body.get("schema").and_then(Value::as_str) else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error_code": 42201, "message": "Invalid schema"})),
        )
            .into_response();
    };
    shared.registrations.fetch_add(1, Ordering::SeqCst);
    let id = register_schema(&shared, &subject, schema);
    Json(json!({"id": id})).into_response()
}

async fn by_id(State(shared): State<Arc<Shared>>, Path(id): Path<u32>) -> Response {
    if shared.unavailable.load(Ordering::SeqCst) {
        return unavailable();
    }
    shared.fetches.fetch_add(1, Ordering::SeqCst);
    let inner = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
    match id
        .checked_sub(1)
        .and_then(|i| inner.schemas.get(i as usize))
    {
        Some(schema) => Json(json!({"schema": schema})).into_response(),
        None => not_found(40403, "Schema not found"),
    }
}

async fn latest(State(shared): State<Arc<Shared>>, Path(subject): Path<String>) -> Response {
    if shared.unavailable.load(Ordering::SeqCst) {
        return unavailable();
    }
    let inner = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
    let latest = inner.subjects.get(&subject).and_then(|v| v.last().copied());
    match latest.and_then(|id| inner.schemas.get(id as usize - 1).map(|s| (id, s))) {
        Some((id, schema)) => {
            let version = inner.subjects.get(&subject).map_or(1, Vec::len);
            Json(json!({"subject": subject, "version": version, "id": id, "schema": schema}))
                .into_response()
        }
        None => not_found(40401, "Subject not found"),
    }
}
