//! The daemon: runs cycles on a cron schedule (never two at once), serves `/metrics`, reloads
//! its config on SIGHUP, talks to systemd (READY, watchdog, STOPPING) and shuts down gracefully
//! on SIGTERM/SIGINT, letting an in-flight mutation finish and be audited.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Mutex;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use uuid::Uuid;

use crate::apply::StopSignal;
use crate::audit::{AuditStore, RunOutcome};
use crate::cloudflare::Quota;
use crate::config::{Config, ConfigError};
use crate::cycle::{self, CycleError};
use crate::http::{self, Health};
use crate::metrics::Metrics;
use crate::notify::Outbox;
use crate::rules::GlobError;
use crate::startup::{self, Janitor, Loaded, StartupError};
use crate::stop::ShutdownSignals;

/// How long a stop request waits for the cycle in flight before giving up on it. An API call
/// that is cut off here still has its intent in the audit log and is reconciled on next start.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Startup(#[from] StartupError),
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

/// Parses a cron expression exactly as the scheduler does (`Job::new_async` in
/// tokio-cron-scheduler 0.13: croner, seconds required, day-of-month and day-of-week both
/// applied), so that what `check-config` accepts is what `run` runs.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, croner::errors::CronError> {
    croner::Cron::new(expr)
        .with_seconds_required()
        .with_dom_and_dow()
        .parse()
}

/// The next `n` fire times of `expr` after `after`, fewer if the schedule stops firing
/// (the scheduler searches until the year 5000). Empty for an invalid expression.
pub fn next_fires(expr: &str, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    match parse_cron(expr) {
        Ok(cron) => cron.iter_after(after).take(n).collect(),
        Err(_) => Vec::new(),
    }
}

/// A warning for a schedule that never fires, or not within a year of `now`.
pub fn schedule_warning(expr: &str, now: DateTime<Utc>) -> Option<String> {
    match next_fires(expr, now, 1).first() {
        None => Some(format!(
            "[schedule] cron = {expr:?} never fires (no date matches it), so the daemon will \
             never run a cycle"
        )),
        Some(next) if *next - now > TimeDelta::days(366) => Some(format!(
            "[schedule] cron = {expr:?} next fires at {}, more than a year from now",
            next.to_rfc3339()
        )),
        Some(_) => None,
    }
}

struct Daemon {
    config_path: PathBuf,
    /// The config and compiled rules in force; swapped whole on reload.
    loaded: RwLock<Arc<Loaded>>,
    audit: AuditStore,
    metrics: Metrics,
    health: Health,
    stop: StopSignal,
    /// What the daemon knows of Cloudflare's rate-limit window, across its cycles.
    quota: Quota,
    /// Held for the whole of a cycle; a tick that cannot take it is skipped.
    cycle_lock: Mutex<()>,
    /// Notifications in flight: they outlive their cycle and never hold `cycle_lock`.
    outbox: Outbox,
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
    let Janitor {
        loaded,
        audit,
        metrics,
        stop,
        quota,
    } = startup::open(config).await?.with_stop(stop);
    metrics.preinitialise_rules(&loaded.rules);
    metrics.preinitialise_notify(&loaded.config.notify);
    // A restart must not read as "never succeeded": the log remembers the last runs.
    match audit.last_runs().await {
        Ok(last) => metrics.restore(&last),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the last runs from the audit log; the last-run metrics start at 0")
        }
    }
    metrics
        .audit_db_bytes
        .set(i64::try_from(audit.disk_bytes()).unwrap_or(i64::MAX));
    let listen = loaded.config.metrics.listen;
    let cron = loaded.config.schedule.cron.clone();
    let run_on_start = loaded.config.schedule.run_on_start;
    let daemon = Arc::new(Daemon {
        config_path,
        loaded: RwLock::new(loaded),
        audit: audit.clone(),
        metrics: metrics.clone(),
        health: Health::default(),
        stop: stop.clone(),
        quota,
        cycle_lock: Mutex::new(()),
        outbox: Outbox::default(),
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

    if let Some(warning) = schedule_warning(&cron, Utc::now()) {
        tracing::warn!("{warning}");
    }
    daemon.metrics.audit_writable.set(1);
    let mut scheduler = JobScheduler::new().await.map_err(DaemonError::Scheduler)?;
    let mut job = scheduler
        .add(cycle_job(&daemon, &cron)?)
        .await
        .map_err(DaemonError::Scheduler)?;
    // The schedule in force, which a reload replaces together with the config.
    let mut cron = cron;
    scheduler.start().await.map_err(DaemonError::Scheduler)?;
    daemon.metrics.set_schedule(&cron, Utc::now());
    started_line(&daemon, metrics_addr, &cron);
    on_started(Started { metrics_addr });
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    spawn_watchdog(stop.clone());
    if run_on_start {
        tokio::spawn(tick(daemon.clone()));
    }

    let mut shutdown = ShutdownSignals::new().map_err(DaemonError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    loop {
        tokio::select! {
            () = shutdown.recv() => break,
            () = stop.stopped() => break,
            _ = sighup.recv() => {
                if let Err(e) = daemon.reload(&scheduler, &mut job, &mut cron).await {
                    daemon.metrics.config_reloads.with_label_values(&["error"]).inc();
                    tracing::error!(error = %e, "config reload rejected; the previous config and schedule stay in force");
                }
            }
        }
    }

    tracing::info!("stop requested: no new cycles; waiting for the cycle in flight");
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    stop.stop();
    let _ = scheduler.shutdown().await;
    let grace_ends = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    let drained = tokio::time::timeout_at(grace_ends, daemon.cycle_lock.lock()).await;
    // Deliveries in flight get what is left of the grace, so that their attempts are audited.
    let left = grace_ends.saturating_duration_since(tokio::time::Instant::now());
    if !daemon.outbox.wait(left).await {
        tracing::warn!("stopping with notifications still being delivered; they are abandoned");
    }
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

/// The job that runs a cycle on `cron`; building it is the scheduler's own validation.
fn cycle_job(daemon: &Arc<Daemon>, cron: &str) -> Result<Job, DaemonError> {
    let d = daemon.clone();
    Job::new_async(cron, move |_, _| Box::pin(tick(d.clone()))).map_err(|source| {
        DaemonError::Cron {
            cron: cron.to_owned(),
            source,
        }
    })
}

/// The start-up line: what runs, where, under which config, and when it first acts.
fn started_line(daemon: &Daemon, metrics_addr: SocketAddr, cron: &str) {
    let loaded = daemon.loaded.read().expect("config lock").clone();
    let rules: Vec<&str> = loaded
        .rules
        .rules()
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    let next_run = next_fires(cron, Utc::now(), 1).first().map_or_else(
        || "never".to_owned(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    tracing::info!(
        %metrics_addr,
        version = env!("CARGO_PKG_VERSION"),
        commit = env!("ZT_JANITOR_COMMIT"),
        mode = %loaded.config.safety.mode,
        account = %loaded.config.cloudflare.account_id,
        rules = %crate::report::escape(&rules.join(",")),
        cron = %cron,
        next_run = %next_run,
        audit = %daemon.audit.path().display(),
        "zt-janitor daemon started"
    );
}

/// One schedule tick: runs a cycle unless one is already running or a stop was requested.
async fn tick(daemon: Arc<Daemon>) {
    let cron = daemon
        .loaded
        .read()
        .expect("config lock")
        .config
        .schedule
        .cron
        .clone();
    daemon.metrics.set_schedule(&cron, Utc::now());
    if daemon.stop.is_stopped() {
        return;
    }
    let Ok(_guard) = daemon.cycle_lock.try_lock() else {
        daemon.metrics.skipped_ticks.inc();
        tracing::warn!("schedule tick skipped: the previous cycle is still running");
        return;
    };
    let loaded = daemon.loaded.read().expect("config lock").clone();
    let config = loaded.clone();
    let d = daemon.clone();
    // On a task of its own, so that a panic in the cycle is caught and recorded.
    let result = cycle::run_isolated(&daemon.audit, &daemon.metrics, async move {
        loaded
            .cycle(&d.audit, &d.metrics, &d.stop, &d.quota)
            .run(Utc::now())
            .await
    })
    .await;
    match result {
        Ok(report) => {
            // The run row is closed: its notifications go out on their own task.
            daemon
                .outbox
                .after_run(&config.config, &daemon.audit, &daemon.metrics, &report);
            daemon.metrics.set_last_outcome(report.outcome);
            daemon.health.record(report.outcome, report.reason);
        }
        Err(e) => {
            if let Some(reason) = e.not_started_reason() {
                daemon
                    .metrics
                    .cycles_not_started
                    .with_label_values(&[reason])
                    .inc();
                tracing::error!(error = %e, "no cycle runs while the audit log cannot be trusted");
            } else {
                // A panicked cycle's run is closed as failed; an unaudited one ends the same.
                daemon.metrics.set_last_outcome(RunOutcome::Failed);
                if !matches!(e, CycleError::Panicked(_)) {
                    tracing::error!(error = %e, "cycle could not be audited; nothing further was done");
                }
            }
            daemon
                .health
                .record(RunOutcome::Failed, Some(e.to_string()));
        }
    }
}

impl Daemon {
    /// Reloads the config file, all or nothing: the whole file (settings, rules, and the
    /// schedule, through the scheduler's own parser) is validated before anything changes;
    /// then the schedule and the config are swapped together, and only then is the reload
    /// counted as ok. `job` and `cron` are the schedule in force, updated on success.
    async fn reload(
        self: &Arc<Self>,
        scheduler: &JobScheduler,
        job: &mut Uuid,
        cron: &mut String,
    ) -> Result<(), ReloadError> {
        let config = Config::load(&self.config_path).map_err(ReloadError::Config)?;
        let loaded = Loaded::new(config).map_err(ReloadError::Rules)?;
        let new_cron = loaded.config.schedule.cron.clone();
        let new_job = if new_cron == *cron {
            None
        } else {
            Some(cycle_job(self, &new_cron).map_err(ReloadError::Schedule)?)
        };
        let old = self.loaded.read().expect("config lock").clone();
        if loaded.config.audit.path != old.config.audit.path
            || loaded.config.metrics.listen != old.config.metrics.listen
        {
            tracing::warn!("[audit] path and [metrics] listen take effect only after a restart");
        }
        if loaded.config.cloudflare.auth != old.config.cloudflare.auth {
            if let Some(warning) = startup::credentials_warning(&loaded.config.cloudflare) {
                tracing::warn!("{warning}");
            }
        }
        self.metrics.preinitialise_rules(&loaded.rules);
        self.metrics.preinitialise_notify(&loaded.config.notify);
        *self.loaded.write().expect("config lock") = Arc::new(loaded);
        if let Some(new_job) = new_job {
            match scheduler.add(new_job).await {
                Ok(id) => {
                    if let Err(e) = scheduler.remove(job).await {
                        // Two schedules would run: keep the old one, and the old config.
                        let _ = scheduler.remove(&id).await;
                        *self.loaded.write().expect("config lock") = old;
                        return Err(ReloadError::Schedule(DaemonError::Scheduler(e)));
                    }
                    *job = id;
                    *cron = new_cron;
                    tracing::info!(cron = %cron, "schedule changed");
                    if let Some(warning) = schedule_warning(cron, Utc::now()) {
                        tracing::warn!("{warning}");
                    }
                }
                Err(e) => {
                    // Nothing may change if the schedule cannot: the old config goes back.
                    *self.loaded.write().expect("config lock") = old;
                    return Err(ReloadError::Schedule(DaemonError::Scheduler(e)));
                }
            }
        }
        self.metrics.set_schedule(cron, Utc::now());
        self.metrics.config_reloads.with_label_values(&["ok"]).inc();
        let after = self.loaded.read().expect("config lock").config.safety.mode;
        let before = old.config.safety.mode;
        if before != after {
            // From plan to apply, the next cycle deletes: whoever reads the log must see it.
            tracing::warn!(path = %self.config_path.display(), %before, %after, "config reloaded: the mode changed from {before} to {after}");
        }
        tracing::info!(path = %self.config_path.display(), "config reloaded");
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error(transparent)]
    Config(ConfigError),
    #[error(transparent)]
    Rules(GlobError),
    #[error(transparent)]
    Schedule(DaemonError),
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
