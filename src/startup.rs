//! Start-up: what every process that runs cycles does once before the first one (`once`, the
//! daemon, the benchmark, the tests): open and lock the audit store, close the runs a previous
//! process left unfinished, compile the rules. The result is a [`Janitor`], which hands out
//! the [`CycleContext`] of each cycle. Nothing here talks to the API.

use std::sync::Arc;

use chrono::Utc;

use crate::apply::StopSignal;
use crate::audit::{AuditError, AuditStore};
use crate::config::Config;
use crate::cycle::CycleContext;
use crate::metrics::Metrics;
use crate::rules::{GlobError, RuleSet};

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

    /// The context of one cycle under this config, writing to `audit` and `metrics`.
    pub fn cycle<'a>(
        &'a self,
        audit: &'a AuditStore,
        metrics: &'a Metrics,
        stop: &'a StopSignal,
    ) -> CycleContext<'a> {
        CycleContext {
            config: &self.config,
            rules: &self.rules,
            audit,
            metrics,
            stop,
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
}

/// Opens what `config` names: the audit store (created and migrated if need be, and locked
/// against a second writer), with the runs a previous process left `running` closed, and the
/// compiled rules. The metrics are fresh and nothing asks the cycles to stop; see
/// [`Janitor::with_metrics`] and [`Janitor::with_stop`].
pub async fn open(config: Config) -> Result<Janitor, StartupError> {
    // Rules first: a config whose rules cannot compile leaves the database untouched.
    let loaded = Loaded::new(config)?;
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
        self.loaded.cycle(&self.audit, &self.metrics, &self.stop)
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
