//! The daemon's own HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` (process up)
//! and `/readyz` (audit store answers and the last cycle did not fail).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::audit::{AuditStore, RunOutcome};
use crate::metrics::Metrics;

/// The outcome of the last cycle and why.
type LastCycle = Option<(RunOutcome, Option<String>)>;

/// What readiness depends on, updated by the scheduler after every cycle.
#[derive(Clone, Default)]
pub struct Health(Arc<Mutex<LastCycle>>);

impl Health {
    pub fn record(&self, outcome: RunOutcome, reason: Option<String>) {
        *self.0.lock().expect("health lock") = Some((outcome, reason));
    }

    fn last(&self) -> LastCycle {
        self.0.lock().expect("health lock").clone()
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    audit: AuditStore,
    health: Health,
}

/// Binds `listen` and serves until `shutdown` resolves. Returns the bound address (useful
/// with port 0) and the server task.
pub async fn serve(
    listen: SocketAddr,
    metrics: Metrics,
    audit: AuditStore,
    health: Health,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(AppState {
            metrics,
            audit,
            health,
        });
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok((addr, task))
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn ready_handler(State(s): State<AppState>) -> impl IntoResponse {
    if !s.audit.ping().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "degraded: the audit database does not answer\n".to_owned(),
        );
    }
    match s.health.last() {
        Some((outcome @ (RunOutcome::Failed | RunOutcome::Aborted), reason)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "degraded: the last cycle {outcome}: {}\n",
                reason.unwrap_or_default()
            ),
        ),
        Some((outcome, _)) => (StatusCode::OK, format!("ready: the last cycle {outcome}\n")),
        None => (StatusCode::OK, "ready: no cycle has run yet\n".to_owned()),
    }
}
