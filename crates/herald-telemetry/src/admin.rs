//! The admin HTTP server every binary runs: `/metrics`, `/healthz`, `/readyz`.
//!
//! `/healthz` answers 503 when a unit of work has been running longer than
//! `admin.stall_after` ([`crate::liveness`]); `/readyz` follows the stage's
//! own readiness (restoring, draining).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::events::{Emit, ReadinessChanged};
use crate::liveness::{Busy, WorkClock, DEFAULT_STALL_AFTER};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Readiness shared between a stage and its admin server.
#[derive(Debug, Clone)]
pub struct AdminState {
    stage: &'static str,
    ready: Arc<AtomicBool>,
    work: WorkClock,
}

impl AdminState {
    /// Not ready until [`AdminState::set_ready`].
    pub fn new(stage: &'static str) -> Self {
        Self {
            stage,
            ready: Arc::new(AtomicBool::new(false)),
            work: WorkClock::default(),
        }
    }

    /// With `admin.stall_after` as the limit on a unit of work.
    #[must_use]
    pub fn with_stall_after(mut self, stall_after: std::time::Duration) -> Self {
        self.work = WorkClock::new(stall_after);
        self
    }

    /// Starts a unit of work that `/healthz` watches (see
    /// [`crate::liveness`]); it ends when the guard is dropped.
    pub fn busy(&self) -> Busy {
        self.work.busy()
    }

    /// Marks the stage ready (serving) or not (starting, restoring, draining).
    pub fn set_ready(&self, ready: bool) {
        if self.ready.swap(ready, Ordering::SeqCst) != ready {
            ReadinessChanged {
                stage: self.stage,
                ready,
            }
            .emit();
        }
    }

    /// Current readiness.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(self.clone())
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    Metrics::global()
        .oldest_work_seconds
        .with_label_values(&[state.stage])
        .set(state.work.oldest().unwrap_or_default().as_secs_f64());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        Metrics::global().render(),
    )
}

async fn healthz(State(state): State<AdminState>) -> impl IntoResponse {
    match state.work.stalled() {
        None => (StatusCode::OK, "ok\n".to_string()),
        Some(age) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "stalled: a unit of work started {} s ago has not finished \
                 (admin.stall_after is {} s)\n",
                age.as_secs(),
                state.work.stall_after().as_secs()
            ),
        ),
    }
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Binds `addr` (port 0 for an ephemeral one) and serves until `shutdown`.
/// Returns the bound address and the server task.
pub async fn serve_admin(
    addr: SocketAddr,
    state: AdminState,
    shutdown: Shutdown,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    serve_routes(addr, state.router(), shutdown).await
}

/// Like [`serve_admin`], with routes of the stage's own merged in (for
/// example `state.router().merge(stage_routes)`).
pub async fn serve_routes(
    addr: SocketAddr,
    app: Router,
    shutdown: Shutdown,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use std::time::Duration;
    use tower::ServiceExt;

    async fn get(app: &Router, path: &str) -> (StatusCode, String) {
        let resp = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readiness_health_and_metrics() {
        let state = AdminState::new("test");
        let app = state.router();
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get(&app, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.set_ready(true);
        assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);
        let (status, body) = get(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("herald_ready{stage=\"test\"} 1"), "{body}");
        assert_eq!(get(&app, "/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn work_that_outlives_stall_after_makes_the_stage_unhealthy() {
        let state = AdminState::new("stall-test").with_stall_after(Duration::from_millis(50));
        let app = state.router();
        let busy = state.busy();
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(80)).await;
        let (status, body) = get(&app, "/healthz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("stalled:"), "{body}");
        let (_, metrics) = get(&app, "/metrics").await;
        let age = metrics
            .lines()
            .find(|l| l.starts_with("herald_oldest_work_seconds{stage=\"stall-test\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap();
        assert!(age >= 0.08, "{age}");
        drop(busy);
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
    }

    #[test]
    fn every_stage_has_its_own_admin_port_unless_one_is_set() {
        let unset = AdminSettings::default();
        let ports: Vec<u16> = [
            "router",
            "deliver-email",
            "deliver-webhook",
            "scaler",
            "dev",
        ]
        .iter()
        .map(|r| unset.listen_for(r).port())
        .collect();
        assert_eq!(ports, vec![9601, 9613, 9614, 9620, 9600]);
        assert!(unset.listen_for("router").ip().is_loopback());
        let mut distinct = ADMIN_PORTS.iter().map(|(_, p)| *p).collect::<Vec<_>>();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ADMIN_PORTS.len());
        let set = AdminSettings {
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 9600))),
            ..AdminSettings::default()
        };
        assert_eq!(set.listen_for("router").port(), 9600);
    }
}

/// The `[admin]` section: where `/metrics`, `/healthz` and `/readyz` listen.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Listen address; port 0 picks a free port. Unset: loopback on the
    /// stage's own port ([`ADMIN_PORTS`]).
    pub listen: Option<SocketAddr>,
    /// A unit of work running longer than this makes `/healthz` answer
    /// 503 ([`crate::liveness`]; default 6 min, above the 5 min a produce
    /// may wait for the broker).
    #[serde(with = "humantime_serde")]
    pub stall_after: std::time::Duration,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: None,
            stall_after: DEFAULT_STALL_AFTER,
        }
    }
}

/// Each stage's default admin port, so a router, the four delivery workers
/// and the scaler can run on one host without setting `admin.listen`.
pub const ADMIN_PORTS: &[(&str, u16)] = &[
    ("dev", 9600),
    ("router", 9601),
    ("deliver-push", 9611),
    ("deliver-sms", 9612),
    ("deliver-email", 9613),
    ("deliver-webhook", 9614),
    ("scaler", 9620),
];

impl AdminSettings {
    /// Where `role` (a name in [`ADMIN_PORTS`]) listens: `listen` when set,
    /// else loopback on the role's port (9600 for a role not listed).
    pub fn listen_for(&self, role: &str) -> SocketAddr {
        self.listen.unwrap_or_else(|| {
            let port = ADMIN_PORTS
                .iter()
                .find(|(r, _)| *r == role)
                .map_or(9600, |(_, p)| *p);
            SocketAddr::from(([127, 0, 0, 1], port))
        })
    }
}
