//! Start-up: what every process that runs cycles does once before the first one (`once`, the
//! daemon, the benchmark, the tests): open and lock the audit store, close the runs a previous
//! process left unfinished, compile the rules. The result is a [`Janitor`], which hands out
//! the [`CycleContext`] of each cycle. Nothing here talks to the API.

use std::sync::Arc;

use chrono::Utc;

use crate::apply::StopSignal;
use crate::audit::{AuditError, AuditStore};
use crate::cloudflare::Quota;
use crate::config::{Auth, CloudflareSettings, Config};
use crate::cycle::CycleContext;
use crate::metrics::Metrics;
use crate::rules::{GlobError, RuleSet};

/// Logged at start-up when `[cloudflare] auth = "global_api_key"`.
pub const GLOBAL_KEY_WARNING: &str = "authenticating with the global API key (X-Auth-Email + \
     X-Auth-Key): it can do anything its user can, in every account, and cannot be scoped or \
     expire; a scoped API token (auth = \"api_token\") is safer. Account API token rules are \
     refused, because tokens/verify does not apply to a global key";

/// The warning the way `settings` authenticate deserves, if any.
pub fn credentials_warning(settings: &CloudflareSettings) -> Option<&'static str> {
    (settings.auth == Auth::GlobalApiKey).then_some(GLOBAL_KEY_WARNING)
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Rules(#[from] GlobError),
}

/// A config and the rules compiled from it: what a cycle reads. The daemon swaps it whole on
/// reload; the audit store and the metrics stay.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub rules: RuleSet,
}

impl Loaded {
    /// Compiles the rules and exclusions of `config`.
    pub fn new(config: Config) -> Result<Self, GlobError> {
        let rules = RuleSet::new(&config.rules, &config.exclusions)?;
        Ok(Loaded { config, rules })
    }

    /// The context of one cycle under this config, writing to `audit` and `metrics`, pacing
    /// its API calls under `quota`.
    pub fn cycle<'a>(
        &'a self,
        audit: &'a AuditStore,
        metrics: &'a Metrics,
        stop: &'a StopSignal,
        quota: &'a Quota,
    ) -> CycleContext<'a> {
        CycleContext {
            config: &self.config,
            rules: &self.rules,
            audit,
            metrics,
            stop,
            quota,
            keep_rows: false,
            saved: None,
            max_actions_override: None,
            apply_batch: crate::apply::APPLY_BATCH,
        }
    }
}

/// Everything a cycle needs, ready to run. Cheap to clone (all handles), so that a cycle can
/// own one on a task of its own.
#[derive(Clone)]
pub struct Janitor {
    pub loaded: Arc<Loaded>,
    pub audit: AuditStore,
    pub metrics: Metrics,
    pub stop: StopSignal,
    /// What the process knows of Cloudflare's rate-limit window, across its cycles.
    pub quota: Quota,
}

/// Opens what `config` names: the audit store (created and migrated if need be, and locked
/// against a second writer), with the runs a previous process left `running` closed, and the
/// compiled rules. The metrics are fresh and nothing asks the cycles to stop; see
/// [`Janitor::with_metrics`] and [`Janitor::with_stop`].
pub async fn open(config: Config) -> Result<Janitor, StartupError> {
    // Rules first: a config whose rules cannot compile leaves the database untouched.
    let loaded = Loaded::new(config)?;
    if let Some(warning) = credentials_warning(&loaded.config.cloudflare) {
        tracing::warn!("{warning}");
    }
    for warning in &loaded.config.warnings {
        tracing::warn!("{warning}");
    }
    let audit = AuditStore::open(&loaded.config.audit.path).await?;
    let closed = audit.close_interrupted_runs(Utc::now()).await?;
    if closed > 0 {
        tracing::warn!(
            runs = closed,
            "closed runs a previous process left unfinished"
        );
    }
    Ok(Janitor {
        loaded: Arc::new(loaded),
        audit,
        metrics: Metrics::new(),
        stop: StopSignal::default(),
        quota: Quota::default(),
    })
}

impl Janitor {
    /// Records into `metrics` instead (the daemon's endpoint, a test's assertions).
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        Janitor { metrics, ..self }
    }

    /// Cycles stop when `stop` is triggered (the daemon's signal handler, a test).
    pub fn with_stop(self, stop: StopSignal) -> Self {
        Janitor { stop, ..self }
    }

    /// The context of the next cycle.
    pub fn cycle(&self) -> CycleContext<'_> {
        self.loaded
            .cycle(&self.audit, &self.metrics, &self.stop, &self.quota)
    }

    /// Closes the audit store, waiting for its writes to finish.
    pub async fn close(&self) {
        self.audit.close().await;
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Mode;

    fn config(db: &Path) -> Config {
        let text = format!(
            r#"
[cloudflare]
account_id = "0123456789abcdef0123456789abcdef"

[audit]
path = "{}"

[[rule]]
name = "idle-90d"
resource = "device_registration"
action = "delete"
idle_days = 90

[[exclude]]
name = "board"
user_email = ["*@board.example.com"]
"#,
            db.display()
        );
        Config::from_toml_str(&text, Path::new("test.toml")).unwrap()
    }

    #[tokio::test]
    async fn open_closes_the_runs_a_previous_process_left_running() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let crashed = open(config(&db)).await.unwrap();
        crashed
            .audit
            .begin_run(Mode::Apply, Utc::now())
            .await
            .unwrap();
        crashed.close().await;

        let janitor = open(config(&db)).await.unwrap();
        let runs = janitor.audit.recent_runs(10).await.unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].outcome.as_deref(), Some("failed"));
        janitor.close().await;
    }

    /// What `tracing` wrote while `body` ran, on this thread.
    async fn logs_of<F: std::future::Future>(body: F) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        body.await;
        drop(guard);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[tokio::test]
    async fn open_warns_that_the_global_key_is_less_safe_than_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let mut global = config(&dir.path().join("global.db"));
        global.cloudflare.auth = Auth::GlobalApiKey;
        let logs = logs_of(async { open(global).await.unwrap().close().await }).await;
        assert!(logs.contains("WARN"), "{logs}");
        assert!(logs.contains(GLOBAL_KEY_WARNING), "{logs}");

        let token = config(&dir.path().join("token.db"));
        let logs = logs_of(async { open(token).await.unwrap().close().await }).await;
        assert!(!logs.contains("global API key"), "{logs}");
    }

    #[tokio::test]
    async fn open_logs_the_configs_warnings_at_warn() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[cloudflare]\naccount_id = \"0123456789abcdef0123456789abcdef\"\n\
             api_token_file = \"{}\"\n[safety]\nmode = \"apply\"\n\
             max_fraction_per_run = 1.0\n[audit]\npath = \"{}\"\n[[rule]]\nname = \"r\"\n\
             resource = \"device_registration\"\naction = \"delete\"\nidle_days = 1\n",
            dir.path().join("no-token").display(),
            dir.path().join("audit.db").display()
        );
        let config = Config::from_toml_str(&text, Path::new("test.toml")).unwrap();
        assert_eq!(config.warnings.len(), 2, "{:#?}", config.warnings);
        let logs = logs_of(async { open(config).await.unwrap().close().await }).await;
        let warns: Vec<&str> = logs.lines().filter(|l| l.contains(" WARN ")).collect();
        assert!(
            warns
                .iter()
                .any(|l| l.contains("test.toml:3:18: [cloudflare] api_token_file: the token file")),
            "{logs}"
        );
        assert!(
            warns
                .iter()
                .any(|l| l.contains("test.toml:5:8: [safety] mode: dangerous")),
            "{logs}"
        );
    }

    #[tokio::test]
    async fn rules_that_cannot_compile_leave_the_database_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let mut config = config(&db);
        // Validation refuses this glob; a Config built in code can still carry it.
        config.exclusions[0].user_emails = vec!["[unclosed".to_owned()];
        let result = open(config).await;
        assert!(
            matches!(result, Err(StartupError::Rules(_))),
            "expected a rules error"
        );
        assert!(!db.exists(), "no database is created");
    }
}
