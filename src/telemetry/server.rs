//! `/metrics`, `/healthz` and `/readyz` on one small HTTP listener.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use super::Metrics;

/// Readiness facts, set by the controller as they become true.
#[derive(Debug, Default)]
pub struct Health {
    /// Whether this instance knows if it leads (true for a standby too).
    pub leadership_known: AtomicBool,
    /// Whether the reconciling caches are synced (a standby does not need them).
    pub caches_synced: AtomicBool,
    pub leader: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.leadership_known.load(Ordering::Relaxed)
            && (!self.leader.load(Ordering::Relaxed) || self.caches_synced.load(Ordering::Relaxed))
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(Shared { metrics, health });
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn metrics_text(State(s): State<Shared>) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        s.metrics.encode(),
    )
}

async fn readyz(State(s): State<Shared>) -> (StatusCode, &'static str) {
    if s.health.ready() { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") }
}
