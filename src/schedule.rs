//! The daemon: runs cycles on a cron schedule (never two at once), serves `/metrics`, reloads
//! its config on SIGHUP, talks to systemd (READY, watchdog, STOPPING) and shuts down gracefully
//! on SIGTERM/SIGINT, letting an in-flight mutation finish and be audited.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Mutex;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use uuid::Uuid;

use crate::apply::StopSignal;
use crate::audit::{AuditError, AuditStore, RunOutcome};
use crate::config::{Config, ConfigError};
use crate::cycle::CycleContext;
use crate::http::{self, Health};
use crate::metrics::Metrics;
use crate::rules::{GlobError, RuleSet};

/// How long a stop request waits for the cycle in flight before giving up on it. An API call
/// that is cut off here still has its intent in the audit log and is reconciled on next start.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Rules(#[from] GlobError),
    #[error(
        "cannot listen on {addr} for /metrics: {source}; pick another [metrics] listen address"
    )]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("schedule [schedule] cron = {cron:?} is not usable: {source}; expected six fields with seconds, e.g. \"0 0 */6 * * *\"")]
    Cron {
        cron: String,
        #[source]
        source: JobSchedulerError,
    },
    #[error("the scheduler failed: {0}")]
    Scheduler(#[source] JobSchedulerError),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("the cycle in flight did not finish within {0:?} of the stop request; its intents are reconciled on next start")]
    ShutdownTimeout(Duration),
}

/// The config and compiled rules currently in force; swapped whole on reload.
struct Loaded {
    config: Config,
    rules: RuleSet,
}

struct Daemon {
    config_path: PathBuf,
    loaded: RwLock<Arc<Loaded>>,
    audit: AuditStore,
    metrics: Metrics,
    health: Health,
    stop: StopSignal,
    /// Held for the whole of a cycle; a tick that cannot take it is skipped.
    cycle_lock: Mutex<()>,
}

/// Where a started daemon can be reached; handed to the caller for tests and the demo.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub metrics_addr: SocketAddr,
}

/// Runs until SIGTERM/SIGINT (or `stop` is triggered). `on_started` is told where the metrics
/// endpoint listens once everything is up.
pub async fn run_daemon(
    config_path: PathBuf,
    config: Config,
    stop: StopSignal,
    on_started: impl FnOnce(Started),
) -> Result<(), DaemonError> {
    let metrics = Metrics::new();
    let audit = AuditStore::open(&config.audit.path).await?;
    let closed = audit.close_interrupted_runs(Utc::now()).await?;
    if closed > 0 {
        tracing::warn!(
            runs = closed,
            "closed runs a previous process left unfinished"
        );
    }
    let rules = RuleSet::new(&config.rules, &config.exclusions)?;
    let listen = config.metrics.listen;
    let cron = config.schedule.cron.clone();
    let run_on_start = config.schedule.run_on_start;
    let daemon = Arc::new(Daemon {
        config_path,
        loaded: RwLock::new(Arc::new(Loaded { config, rules })),
        audit: audit.clone(),
        metrics: metrics.clone(),
        health: Health::default(),
        stop: stop.clone(),
        cycle_lock: Mutex::new(()),
    });

    let server_stop = stop.clone();
    let (metrics_addr, server) = http::serve(
        listen,
        metrics,
        audit.clone(),
        daemon.health.clone(),
        async move { server_stop.stopped().await },
    )
    .await
    .map_err(|source| DaemonError::Listen {
        addr: listen,
        source,
    })?;

    let mut scheduler = JobScheduler::new().await.map_err(DaemonError::Scheduler)?;
    let mut job = add_cycle_job(&scheduler, &daemon, &cron).await?;
    scheduler.start().await.map_err(DaemonError::Scheduler)?;
    tracing::info!(%metrics_addr, cron = %cron, audit = %audit.path().display(), "zt-janitor daemon started");
    on_started(Started { metrics_addr });
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    spawn_watchdog(stop.clone());
    if run_on_start {
        tokio::spawn(tick(daemon.clone()));
    }

    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            () = stop.stopped() => break,
            _ = sighup.recv() => {
                if let Some(new_cron) = daemon.reload() {
                    if new_cron != cron {
                        match add_cycle_job(&scheduler, &daemon, &new_cron).await {
                            Ok(new_job) => {
                                let _ = scheduler.remove(&job).await;
                                job = new_job;
                                tracing::info!(cron = %new_cron, "schedule changed");
                            }
                            Err(e) => tracing::error!(error = %e, "new schedule rejected; keeping the old one"),
                        }
                    }
                }
            }
        }
    }

    tracing::info!("stop requested: no new cycles; waiting for the cycle in flight");
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    stop.stop();
    let _ = scheduler.shutdown().await;
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, daemon.cycle_lock.lock()).await;
    let _ = server.await;
    audit.close().await;
    match drained {
        Ok(_) => {
            tracing::info!("stopped cleanly");
            Ok(())
        }
        Err(_) => Err(DaemonError::ShutdownTimeout(SHUTDOWN_GRACE)),
    }
}

async fn add_cycle_job(
    scheduler: &JobScheduler,
    daemon: &Arc<Daemon>,
    cron: &str,
) -> Result<Uuid, DaemonError> {
    let d = daemon.clone();
    let job = Job::new_async(cron, move |_, _| Box::pin(tick(d.clone()))).map_err(|source| {
        DaemonError::Cron {
            cron: cron.to_owned(),
            source,
        }
    })?;
    scheduler.add(job).await.map_err(DaemonError::Scheduler)
}

/// One schedule tick: runs a cycle unless one is already running or a stop was requested.
async fn tick(daemon: Arc<Daemon>) {
    if daemon.stop.is_stopped() {
        return;
    }
    let Ok(_guard) = daemon.cycle_lock.try_lock() else {
        daemon.metrics.skipped_ticks.inc();
        tracing::warn!("schedule tick skipped: the previous cycle is still running");
        return;
    };
    let loaded = daemon.loaded.read().expect("config lock").clone();
    let ctx = CycleContext {
        config: &loaded.config,
        rules: &loaded.rules,
        audit: &daemon.audit,
        metrics: &daemon.metrics,
        stop: &daemon.stop,
    };
    match ctx.run(Utc::now()).await {
        Ok(report) => daemon.health.record(report.outcome, report.reason),
        Err(e) => {
            tracing::error!(error = %e, "cycle could not be audited; nothing further was done");
            daemon
                .health
                .record(RunOutcome::Failed, Some(e.to_string()));
        }
    }
}

impl Daemon {
    /// Loads and validates the config file again; a bad one keeps the old config in force.
    /// Returns the new cron expression on success.
    fn reload(&self) -> Option<String> {
        let result: Result<Loaded, ReloadError> = Config::load(&self.config_path)
            .map_err(ReloadError::Config)
            .and_then(|config| {
                let rules =
                    RuleSet::new(&config.rules, &config.exclusions).map_err(ReloadError::Rules)?;
                Ok(Loaded { config, rules })
            });
        match result {
            Ok(new) => {
                let old = self.loaded.read().expect("config lock").clone();
                if new.config.audit.path != old.config.audit.path
                    || new.config.metrics.listen != old.config.metrics.listen
                {
                    tracing::warn!(
                        "[audit] path and [metrics] listen take effect only after a restart"
                    );
                }
                let cron = new.config.schedule.cron.clone();
                *self.loaded.write().expect("config lock") = Arc::new(new);
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(path = %self.config_path.display(), "config reloaded");
                Some(cron)
            }
            Err(e) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(error = %e, "config reload rejected; the previous config stays in force");
                None
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error(transparent)]
    Config(ConfigError),
    #[error(transparent)]
    Rules(GlobError),
}

fn notify_systemd(state: &[sd_notify::NotifyState]) {
    // Outside systemd NOTIFY_SOCKET is unset and this is a no-op.
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Pings the systemd watchdog at half its interval while the process is healthy enough to
/// run this task; a wedged runtime stops pinging and systemd restarts the service.
fn spawn_watchdog(stop: StopSignal) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = Duration::from_micros(usec) / 2;
    tokio::spawn(async move {
        let mut every = tokio::time::interval(period);
        while !stop.is_stopped() {
            every.tick().await;
            notify_systemd(&[sd_notify::NotifyState::Watchdog]);
        }
    });
}
