//! The daemon's own HTTP endpoint: `/` (a landing page linking the others), `/metrics`
//! (Prometheus text format), `/healthz` (process up) and `/readyz` (process up and its audit
//! store answers and can be written). A failed or aborted cycle never makes the process
//! unready: in a sidecar that would take the application's whole pod out of its Services.
//! `/readyz` names the last cycle's outcome in its body; metrics and alerts report failures.
//! Served with timeouts and a connection cap, so that clients can neither hold the process's
//! file descriptors nor delay its shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::audit::{AuditStore, RunOutcome};
use crate::metrics::Metrics;

/// The outcome of the last cycle and why.
type LastCycle = Option<(RunOutcome, Option<String>)>;

/// How the last cycle ended, for the text of /readyz (never its status); updated by the
/// scheduler after every cycle.
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

/// How long a client may take to send a request's headers, and how long a kept-alive
/// connection may sit idle before its next request.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// No connection lives longer than this, whatever the client does (a response it never reads).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Connections served at once; more are closed as soon as they are accepted, so that clients
/// cannot take the file descriptors cycles need (token file, API sockets, the database).
const MAX_CONNECTIONS: usize = 64;

/// Binds `listen` and serves until `shutdown` resolves. Returns the bound address (useful
/// with port 0) and the server task. Each connection gets `HEADER_READ_TIMEOUT` to send its
/// headers (also the keep-alive idle limit) and lives at most `CONNECTION_LIFETIME`; at most
/// `MAX_CONNECTIONS` are served at once. Shutdown waits on no client: connections still open
/// are dropped.
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
        .route("/", get(landing_handler))
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(AppState {
            metrics,
            audit,
            health,
        });
    let task = tokio::spawn(accept_loop(listener, app, shutdown));
    Ok((addr, task))
}

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Dropping the set at shutdown aborts every connection still open.
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like: wait rather than spin; the connections we hold time out.
                tracing::warn!(error = %e, "metrics endpoint cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!("metrics endpoint at its connection limit; closing a new one");
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        connections.spawn(async move {
            let _slot = slot;
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
        });
    }
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

/// The exporter convention: a page a person opening the port in a browser can follow.
const LANDING_PAGE: &str = concat!(
    "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>zt-janitor</title></head>\n",
    "<body><h1>zt-janitor ",
    env!("CARGO_PKG_VERSION"),
    "</h1>\n<ul>\n",
    "<li><a href=\"metrics\">/metrics</a>: Prometheus metrics</li>\n",
    "<li><a href=\"healthz\">/healthz</a>: the process is up</li>\n",
    "<li><a href=\"readyz\">/readyz</a>: the process is up and its audit log can be written; \
     says how the last cycle ended</li>\n",
    "</ul></body></html>\n"
);

async fn landing_handler() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        LANDING_PAGE,
    )
}

/// 503 only for what is wrong with the process itself: an audit store that cannot be used
/// (no cycle runs until it can). How the last cycle ended is text in a 200: a failed cycle is
/// a metric and an alert, never a reason to take the pod out of its Services.
async fn ready_handler(State(s): State<AppState>) -> impl IntoResponse {
    if let Some(reason) = s.audit.unusable_reason() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("degraded: {reason}\n"),
        );
    }
    if !s.audit.ping().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "degraded: the audit database does not answer\n".to_owned(),
        );
    }
    let last = match s.health.last() {
        Some((outcome, Some(reason))) => format!(
            "the last cycle {outcome}: {}",
            crate::report::escape(&reason)
        ),
        Some((outcome, None)) => format!("the last cycle {outcome}"),
        None => "no cycle has run yet".to_owned(),
    };
    (StatusCode::OK, format!("ready: {last}\n"))
}
