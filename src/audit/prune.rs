//! Retention: which runs the audit log may forget ([`plan`], a pure function), and forgetting
//! them in short transactions ([`AuditStore::prune`]), each prune leaving a record in `prunes`.
//! Then the freed pages go back to the file system ([`AuditStore::reclaim_space`]).
//!
//! A run goes with everything that hangs off it, children first, a bounded number of rows per
//! table per transaction, so that pruning never holds the writer for long and every commit
//! leaves a database whose references all hold (foreign keys are enforced).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use sqlx::Row;

use super::{canonical, ts, AuditError, AuditStore, RunId};
use crate::config::AuditSettings;

/// Rows per table in one transaction: a few milliseconds of the writer's time.
pub const PRUNE_BATCH: usize = 2000;

/// Rows one cycle deletes at most before it lists: a backlog (the first prune of a large
/// database) is worked off over several cycles instead of delaying one.
pub const CYCLE_PRUNE_ROWS: u64 = 200_000;

/// Pages `PRAGMA incremental_vacuum` frees per statement (8 MiB of 4 KiB pages).
const VACUUM_STEP: i64 = 2048;

/// How much of the freelist one prune gives back at most, in steps of [`VACUUM_STEP`]: the
/// rest goes at the next prune.
const VACUUM_STEPS: usize = 64;

/// The rows of one run, child tables first: one table per step, each deleting at most `?2`
/// rows of run `?1`. The order is the order of references: snapshots name actions, actions
/// name mutations. A table added to the audit log that hangs off a run gets a step here.
const STEPS: &[Step] = &[
    Step {
        table: "snapshots",
        count: Some(
            "SELECT count(*) FROM snapshots
                WHERE action_id IN (SELECT id FROM actions WHERE run_id = ?1)",
        ),
        // The same actions as the next step deletes: a snapshot goes with its action.
        delete: "DELETE FROM snapshots WHERE action_id IN
                     (SELECT id FROM actions WHERE run_id = ?1 ORDER BY id LIMIT ?2)",
        trims: false,
    },
    Step {
        table: "actions",
        count: Some("SELECT count(*) FROM actions WHERE run_id = ?1"),
        delete: "DELETE FROM actions WHERE id IN
                     (SELECT id FROM actions WHERE run_id = ?1 ORDER BY id LIMIT ?2)",
        trims: false,
    },
    // A span of decisions names its first and last run: one of this run alone goes; one
    // that goes on past it starts (or ends) at the next (or previous) run still there.
    Step {
        table: "decision_spans",
        // Counted over all the due runs at once (see `prune_preview`): a span over several
        // of them goes once the others have trimmed it.
        count: None,
        delete: "DELETE FROM decision_spans WHERE id IN (SELECT id FROM decision_spans
                     WHERE first_run_id = ?1 AND last_run_id = ?1 LIMIT ?2)",
        trims: false,
    },
    Step {
        table: "decision_spans",
        count: None,
        delete: "UPDATE decision_spans SET first_run_id = (SELECT min(r.id) FROM runs r
                     WHERE r.id > ?1 AND r.id <= decision_spans.last_run_id)
                 WHERE id IN (SELECT id FROM decision_spans
                     WHERE first_run_id = ?1 AND last_run_id > ?1 LIMIT ?2)",
        trims: true,
    },
    Step {
        table: "decision_spans",
        count: None,
        delete: "UPDATE decision_spans SET last_run_id = (SELECT max(r.id) FROM runs r
                     WHERE r.id < ?1 AND r.id >= decision_spans.first_run_id)
                 WHERE id IN (SELECT id FROM decision_spans
                     WHERE last_run_id = ?1 AND first_run_id < ?1 LIMIT ?2)",
        trims: true,
    },
    Step {
        table: "mark_events",
        count: Some("SELECT count(*) FROM mark_events WHERE run_id = ?1"),
        delete: "DELETE FROM mark_events WHERE id IN
                     (SELECT id FROM mark_events WHERE run_id = ?1 LIMIT ?2)",
        trims: false,
    },
    Step {
        table: "notification_attempts",
        count: Some("SELECT count(*) FROM notification_attempts WHERE run_id = ?1"),
        delete: "DELETE FROM notification_attempts WHERE id IN
                     (SELECT id FROM notification_attempts WHERE run_id = ?1 LIMIT ?2)",
        trims: false,
    },
    Step {
        table: "run_kinds",
        count: Some("SELECT count(*) FROM run_kinds WHERE run_id = ?1"),
        delete: "DELETE FROM run_kinds WHERE rowid IN
                     (SELECT rowid FROM run_kinds WHERE run_id = ?1 LIMIT ?2)",
        trims: false,
    },
    Step {
        table: "mutations",
        count: Some("SELECT count(*) FROM mutations WHERE run_id = ?1"),
        // Once no action names them: the run's own actions go first, in earlier batches.
        delete: "DELETE FROM mutations WHERE id IN
                     (SELECT id FROM mutations m WHERE run_id = ?1
                        AND NOT EXISTS (SELECT 1 FROM actions a WHERE a.mutation_id = m.id)
                      LIMIT ?2)",
        trims: false,
    },
];

/// One table's part of pruning a run.
struct Step {
    table: &'static str,
    /// What `prune_preview` counts for this step and run; `None`: nothing (a trim), or
    /// counted over all the due runs at once (the spans).
    count: Option<&'static str>,
    delete: &'static str,
    /// Updates rows that name the run rather than deleting them: not counted as pruned.
    trims: bool,
}

/// Every table pruning deletes from, for the metrics' `table` label.
pub fn pruned_tables() -> impl Iterator<Item = &'static str> {
    let mut tables: Vec<&'static str> =
        STEPS.iter().filter(|s| !s.trims).map(|s| s.table).collect();
    tables.dedup();
    tables.into_iter().chain(["runs", "snapshot_bodies"])
}

/// How long runs are kept, from `[audit]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Runs that acted on nothing: days after they finished.
    pub days: u32,
    /// Runs that acted: days after they finished; `None` keeps them forever.
    pub mutations_days: Option<u32>,
}

impl Retention {
    pub fn of(settings: &AuditSettings) -> Self {
        Retention {
            days: settings.retain_days,
            mutations_days: settings.retain_mutations,
        }
    }

    /// Runs that acted on nothing and finished before this are due.
    pub fn cutoff(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - TimeDelta::days(i64::from(self.days))
    }

    /// Runs that acted and finished before this are due; `None`: never.
    pub fn mutations_cutoff(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.mutations_days
            .map(|days| now - TimeDelta::days(i64::from(days)))
    }
}

/// What started a prune.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PruneTrigger {
    /// The start of a cycle.
    Cycle,
    /// `zt-janitor audit prune`.
    Command,
}

impl PruneTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            PruneTrigger::Cycle => "cycle",
            PruneTrigger::Command => "command",
        }
    }
}

/// How much one prune does.
#[derive(Debug, Clone, Copy)]
pub struct PruneLimits {
    /// Rows per table per transaction.
    pub batch: usize,
    /// Rows in all, checked between transactions; `None`: until every due run is gone.
    pub max_rows: Option<u64>,
}

impl PruneLimits {
    /// At the start of a cycle: a bounded share of any backlog.
    pub const CYCLE: PruneLimits = PruneLimits {
        batch: PRUNE_BATCH,
        max_rows: Some(CYCLE_PRUNE_ROWS),
    };
    /// `audit prune`: everything due.
    pub const COMMAND: PruneLimits = PruneLimits {
        batch: PRUNE_BATCH,
        max_rows: None,
    };
}

/// What the retention policy knows of one run.
#[derive(Debug, Clone, Default)]
pub struct RunFacts {
    pub id: i64,
    /// When it finished; `None` while it runs, or when the time cannot be read (kept: its
    /// age is unknown).
    pub finished: Option<DateTime<Utc>>,
    /// It has an outcome.
    pub closed: bool,
    /// It made API mutations (deleted, revoked, or tried to).
    pub acted: bool,
    /// One of its mutations has no recorded outcome: the next start reconciles it.
    pub unknown_outcome: bool,
    /// A grace-period mark names it, or one of its actions.
    pub marked: bool,
    /// Runs whose rows name rows of this one (an undo names the run and the actions it
    /// reverses; a stuck action names the failed call of an earlier run).
    pub named_by: Vec<i64>,
}

/// Why a run old enough to go is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Held {
    /// Still running, or left without an outcome by a crash (the next start closes it); or
    /// its end time cannot be read, so its age is unknown.
    Open,
    /// A mutation of it has no recorded outcome: the next start reconciles it.
    UnknownOutcome,
    /// The latest run.
    Latest,
    /// A grace-period mark names it or one of its actions.
    Marked,
    /// A kept run names it (an undo of it, an action stuck on its call).
    Named,
}

impl Held {
    pub fn describe(self) -> &'static str {
        match self {
            Held::Open => "still open, or its end time cannot be read",
            Held::UnknownOutcome => "a call of it has no recorded outcome yet",
            Held::Latest => "the latest run",
            Held::Marked => "a grace-period mark names it",
            Held::Named => "a kept run names it",
        }
    }
}

/// Which runs go, and which are old enough but kept, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrunePlan {
    /// Newest first: a run that names another goes before it.
    pub due: Vec<i64>,
    pub held: Vec<(i64, Held)>,
}

/// Decides which of `runs` are due under `retention` at `now`. A run is due once it finished
/// longer ago than its retention (runs that acted: `mutations_days`; others: `days`), unless
/// it is open, has a call of unknown outcome, is the latest, is named by a mark, or is named
/// by a run that stays.
pub fn plan(runs: &[RunFacts], retention: Retention, now: DateTime<Utc>) -> PrunePlan {
    let latest = runs.iter().map(|r| r.id).max();
    let cutoff = retention.cutoff(now);
    let mutations_cutoff = retention.mutations_cutoff(now);
    let mut held = Vec::new();
    let mut due = BTreeSet::new();
    for run in runs {
        let old = |finished: DateTime<Utc>| {
            let cutoff = if run.acted {
                mutations_cutoff
            } else {
                Some(cutoff)
            };
            cutoff.is_some_and(|c| finished < c)
        };
        let verdict = match run.finished {
            _ if !run.closed => Some(Held::Open),
            None => Some(Held::Open),
            Some(_) if run.unknown_outcome => Some(Held::UnknownOutcome),
            Some(finished) if !old(finished) => continue,
            Some(_) if Some(run.id) == latest => Some(Held::Latest),
            Some(_) if run.marked => Some(Held::Marked),
            Some(_) => None,
        };
        match verdict {
            Some(why) => held.push((run.id, why)),
            None => {
                due.insert(run.id);
            }
        }
    }
    // A run named by one that stays stays too, and may hold others in turn.
    loop {
        let named: Vec<i64> = runs
            .iter()
            .filter(|r| due.contains(&r.id))
            .filter(|r| r.named_by.iter().any(|by| !due.contains(by)))
            .map(|r| r.id)
            .collect();
        if named.is_empty() {
            break;
        }
        for id in named {
            due.remove(&id);
            held.push((id, Held::Named));
        }
    }
    held.sort_unstable_by_key(|&(id, _)| id);
    PrunePlan {
        due: due.into_iter().rev().collect(),
        held,
    }
}

/// A run old enough to go but kept, and why.
#[derive(Debug, Clone, Serialize)]
pub struct HeldRun {
    pub run_id: i64,
    pub reason: Held,
}

/// What one prune did (or, dry, would do).
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub triggered_by: PruneTrigger,
    pub started_at: String,
    pub retain_days: u32,
    /// `None`: forever.
    pub retain_mutations: Option<u32>,
    pub cutoff: String,
    pub mutations_cutoff: Option<String>,
    /// The runs pruned (would be), newest first.
    pub runs: Vec<i64>,
    /// Runs old enough but kept.
    pub held: Vec<HeldRun>,
    /// Rows deleted (would be) per table.
    pub deleted: BTreeMap<&'static str, u64>,
    /// Every due run is gone (dry: would be).
    pub complete: bool,
    /// Why it stopped early, if it failed part-way.
    pub error: Option<String>,
    /// The database's size on disk (file and write-ahead log) before and after, in bytes.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Freed pages go back to the file system; otherwise they are only reused (a database
    /// created before incremental vacuum, until `audit prune --vacuum`).
    pub incremental_vacuum: bool,
}

impl PruneReport {
    pub fn rows(&self) -> u64 {
        self.deleted.values().sum()
    }
}

/// Turning an existing database to incremental vacuum could not be done.
#[derive(Debug, thiserror::Error)]
pub enum VacuumError {
    #[error("converting the audit database {path} to incremental vacuum rewrites it whole and needs about {needed} bytes free beside it, but its file system has {free}; free some space, or move the database to a larger file system, and run `zt-janitor audit prune --vacuum` again")]
    NoRoom {
        path: PathBuf,
        needed: u64,
        free: u64,
    },
    #[error("cannot tell how much space is free beside the audit database {path}: {source}; nothing was converted")]
    FreeSpace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl AuditStore {
    /// The facts [`plan`] needs about every run: a few queries over the runs and the few rows
    /// that name across runs, never a scan of all actions.
    async fn run_facts(&self) -> Result<Vec<RunFacts>, AuditError> {
        let read = AuditError::Read;
        let rows = sqlx::query("SELECT id, finished_at, outcome IS NOT NULL FROM runs ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(read)?;
        let mut runs = Vec::with_capacity(rows.len());
        for row in &rows {
            let finished: Option<String> = row.try_get(1).unwrap_or(None);
            runs.push(RunFacts {
                id: row.try_get(0).map_err(read)?,
                finished: finished
                    .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                    .map(|t| t.with_timezone(&Utc)),
                closed: row.try_get::<bool, _>(2).map_err(read)?,
                ..RunFacts::default()
            });
        }
        let index: HashMap<i64, usize> = runs.iter().enumerate().map(|(i, r)| (r.id, i)).collect();
        let calls: Vec<(i64, i64)> =
            sqlx::query_as("SELECT run_id, sum(outcome IS NULL) FROM mutations GROUP BY run_id")
                .fetch_all(&self.pool)
                .await
                .map_err(read)?;
        for (run, unknown) in calls {
            if let Some(&i) = index.get(&run) {
                runs[i].acted = true;
                runs[i].unknown_outcome = unknown > 0;
            }
        }
        let marked: Vec<i64> = sqlx::query_scalar(
            "SELECT first_run_id FROM marks UNION SELECT last_run_id FROM marks",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(read)?;
        for run in marked {
            if let Some(&i) = index.get(&run) {
                runs[i].marked = true;
            }
        }
        // (naming run, named run). Undo actions exist only in undo runs; an action names a
        // call of another run only when it is stuck on an earlier run's failure.
        let names: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT id, undoes_run FROM runs WHERE undoes_run IS NOT NULL
             UNION
             SELECT a.run_id, t.run_id FROM runs r
                 JOIN actions a ON a.run_id = r.id
                 JOIN actions t ON t.id = a.undoes_action_id
             WHERE r.mode = 'undo' AND t.run_id != a.run_id
             UNION
             SELECT a.run_id, m.run_id FROM actions a JOIN mutations m ON m.id = a.mutation_id
             WHERE a.mutation_id IS NOT NULL AND m.run_id != a.run_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(read)?;
        for (by, run) in names {
            if let Some(&i) = index.get(&run) {
                runs[i].named_by.push(by);
            }
        }
        Ok(runs)
    }

    /// Which runs are due under `retention` at `now`, and which are held.
    pub async fn prune_plan(
        &self,
        retention: Retention,
        now: DateTime<Utc>,
    ) -> Result<PrunePlan, AuditError> {
        Ok(plan(&self.run_facts().await?, retention, now))
    }

    fn empty_report(
        &self,
        plan: &PrunePlan,
        retention: Retention,
        now: DateTime<Utc>,
        trigger: PruneTrigger,
        dry_run: bool,
    ) -> PruneReport {
        let bytes = self.disk_bytes();
        PruneReport {
            dry_run,
            triggered_by: trigger,
            started_at: ts(now),
            retain_days: retention.days,
            retain_mutations: retention.mutations_days,
            cutoff: ts(retention.cutoff(now)),
            mutations_cutoff: retention.mutations_cutoff(now).map(ts),
            runs: Vec::new(),
            held: plan
                .held
                .iter()
                .map(|&(run_id, reason)| HeldRun { run_id, reason })
                .collect(),
            deleted: pruned_tables().map(|t| (t, 0)).collect(),
            complete: true,
            error: None,
            bytes_before: bytes,
            bytes_after: bytes,
            incremental_vacuum: false,
        }
    }

    /// What [`AuditStore::prune`] would delete now, without deleting anything.
    pub async fn prune_preview(
        &self,
        retention: Retention,
        now: DateTime<Utc>,
    ) -> Result<PruneReport, AuditError> {
        let plan = self.prune_plan(retention, now).await?;
        let mut report = self.empty_report(&plan, retention, now, PruneTrigger::Command, true);
        report.incremental_vacuum = self.incremental_vacuum().await?;
        for &run in &plan.due {
            for step in STEPS {
                let Some(count) = step.count else {
                    continue;
                };
                let n: i64 = sqlx::query_scalar(count)
                    .bind(run)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(AuditError::Read)?;
                *report.deleted.entry(step.table).or_default() += u64::try_from(n).unwrap_or(0);
            }
            *report.deleted.entry("runs").or_default() += 1;
        }
        let due = serde_json::to_string(&plan.due).unwrap_or_else(|_| "[]".to_owned());
        // Spans go when every run they cover goes; bodies when no row that stays names them.
        let (spans, bodies): (i64, i64) = sqlx::query_as(
            "WITH due(run) AS (SELECT value FROM json_each(?1)),
                  going(id) AS (
                      SELECT d.id FROM decision_spans d
                      WHERE d.last_run_id IN (SELECT run FROM due)
                        AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.id BETWEEN d.first_run_id
                            AND d.last_run_id AND r.id NOT IN (SELECT run FROM due)))
             SELECT (SELECT count(*) FROM going),
                    (SELECT count(*) FROM snapshot_bodies b
                     WHERE NOT EXISTS (SELECT 1 FROM snapshots s JOIN actions a
                                           ON a.id = s.action_id
                                       WHERE s.body_id = b.id
                                         AND a.run_id NOT IN (SELECT run FROM due))
                       AND NOT EXISTS (SELECT 1 FROM decision_spans d WHERE d.body_id = b.id
                                         AND d.id NOT IN (SELECT id FROM going))
                       AND NOT EXISTS (SELECT 1 FROM marks m WHERE m.first_body_id = b.id))",
        )
        .bind(due)
        .fetch_one(&self.pool)
        .await
        .map_err(AuditError::Read)?;
        for (table, n) in [("decision_spans", spans), ("snapshot_bodies", bodies)] {
            *report.deleted.entry(table).or_default() += u64::try_from(n).unwrap_or(0);
        }
        report.runs = plan.due;
        Ok(report)
    }

    /// Deletes the runs due under `retention` at `now` with everything that hangs off them,
    /// newest first, in transactions of at most `limits.batch` rows per table; stops early
    /// once `limits.max_rows` are gone (the next prune goes on). Records the prune in
    /// `prunes` when it deleted anything, then gives the freed pages back. A failure part-way
    /// is in the report's `error`, with what was deleted before it; `Err` only when nothing
    /// could be read or the record could not be written.
    pub async fn prune(
        &self,
        retention: Retention,
        now: DateTime<Utc>,
        trigger: PruneTrigger,
        limits: PruneLimits,
    ) -> Result<PruneReport, AuditError> {
        let started = std::time::Instant::now();
        let plan = self.prune_plan(retention, now).await?;
        let mut report = self.empty_report(&plan, retention, now, trigger, false);
        report.incremental_vacuum = self.incremental_vacuum().await?;
        let batch = limits.batch.max(1);
        'runs: for &run in &plan.due {
            loop {
                if limits.max_rows.is_some_and(|max| report.rows() >= max) {
                    report.complete = false;
                    break 'runs;
                }
                match self.prune_batch(run, batch).await {
                    Ok((deleted, gone)) => {
                        for (table, n) in deleted {
                            *report.deleted.entry(table).or_default() += n;
                        }
                        if gone {
                            report.runs.push(run);
                            break;
                        }
                    }
                    Err(e) => {
                        report.complete = false;
                        report.error = Some(e.to_string());
                        break 'runs;
                    }
                }
            }
        }
        if !report.runs.is_empty() {
            match self.sweep_bodies(batch).await {
                Ok(n) => *report.deleted.entry("snapshot_bodies").or_default() += n,
                Err(e) => {
                    report.complete = false;
                    report.error.get_or_insert(e.to_string());
                }
            }
        }
        if report.rows() > 0 {
            let took = TimeDelta::from_std(started.elapsed()).unwrap_or_default();
            self.record_prune(&report, now + took).await?;
            self.reclaim_space().await?;
        }
        report.bytes_after = self.disk_bytes();
        Ok(report)
    }

    /// Deletes the snapshot bodies nothing names any more (no snapshot, span or mark), `batch`
    /// per transaction; returns how many.
    async fn sweep_bodies(&self, batch: usize) -> Result<u64, AuditError> {
        let limit = i64::try_from(batch).unwrap_or(i64::MAX);
        let mut swept = 0;
        loop {
            let _timer = self.timer();
            let n = sqlx::query(
                "DELETE FROM snapshot_bodies WHERE id IN (SELECT b.id FROM snapshot_bodies b
                     WHERE NOT EXISTS (SELECT 1 FROM snapshots s WHERE s.body_id = b.id)
                       AND NOT EXISTS (SELECT 1 FROM decision_spans d WHERE d.body_id = b.id)
                       AND NOT EXISTS (SELECT 1 FROM marks m WHERE m.first_body_id = b.id)
                     LIMIT ?1)",
            )
            .bind(limit)
            .execute(&self.pool)
            .await
            .map_err(AuditError::Write)?
            .rows_affected();
            swept += n;
            if n < batch as u64 {
                return Ok(swept);
            }
        }
    }

    /// One transaction: up to `batch` rows of each of run `run`'s tables, and the run itself
    /// once nothing hangs off it. Returns the rows deleted per table, and whether the run is
    /// gone.
    async fn prune_batch(
        &self,
        run: i64,
        batch: usize,
    ) -> Result<(Vec<(&'static str, u64)>, bool), AuditError> {
        let _timer = self.timer();
        let write = AuditError::Write;
        let limit = i64::try_from(batch).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await.map_err(write)?;
        let mut deleted = Vec::with_capacity(STEPS.len() + 1);
        let mut emptied = true;
        for step in STEPS {
            let n = sqlx::query(step.delete)
                .bind(run)
                .bind(limit)
                .execute(&mut *tx)
                .await
                .map_err(write)?
                .rows_affected();
            // Fewer than asked: nothing of this table is left (the steps before it ran).
            emptied &= n < batch as u64;
            if !step.trims {
                deleted.push((step.table, n));
            }
        }
        if emptied {
            let n = sqlx::query("DELETE FROM runs WHERE id = ?1")
                .bind(run)
                .execute(&mut *tx)
                .await
                .map_err(write)?
                .rows_affected();
            deleted.push(("runs", n));
            // In the same transaction: the chain says the run's records are gone, and anchors
            // what it keeps, so that `audit verify` passes over the gap.
            self.chain_pruned_runs(&mut tx, &[RunId(run)]).await?;
        }
        tx.commit().await.map_err(write)?;
        Ok((deleted, emptied))
    }

    /// Writes the durable record of a prune: when, what started it, the cutoffs, the runs and
    /// the rows per table it deleted, and whether it finished.
    pub async fn record_prune(
        &self,
        report: &PruneReport,
        finished: DateTime<Utc>,
    ) -> Result<i64, AuditError> {
        let _timer = self.timer();
        let deleted = serde_json::to_string(&report.deleted).unwrap_or_else(|_| "{}".to_owned());
        let id = sqlx::query(
            "INSERT INTO prunes (started_at, finished_at, triggered_by, retain_days,
                 retain_mutations, cutoff, mutations_cutoff, runs, first_run_id, last_run_id,
                 deleted, complete, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )
        .bind(&report.started_at)
        .bind(ts(finished))
        .bind(report.triggered_by.as_str())
        .bind(i64::from(report.retain_days))
        .bind(report.retain_mutations.map(i64::from))
        .bind(&report.cutoff)
        .bind(&report.mutations_cutoff)
        .bind(report.runs.len() as i64)
        .bind(report.runs.iter().min())
        .bind(report.runs.iter().max())
        .bind(deleted)
        .bind(report.complete)
        .bind(&report.error)
        .execute(&self.pool)
        .await
        .map_err(AuditError::Write)?
        .last_insert_rowid();
        Ok(id)
    }

    /// Gives free pages back to the file system, [`VACUUM_STEP`] pages per statement, when
    /// the database is in incremental auto-vacuum mode (new databases are; older ones after
    /// `audit prune --vacuum`), then checkpoints so that the file shrinks now and the
    /// write-ahead log the deletions filled is emptied. Returns the pages given back.
    pub async fn reclaim_space(&self) -> Result<u64, AuditError> {
        let _timer = self.timer();
        let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
            .fetch_one(&self.pool)
            .await
            .map_err(AuditError::Read)?;
        let mut freed = 0;
        // Without incremental vacuum the freed pages stay in the file, for reuse.
        for _ in 0..VACUUM_STEPS * usize::from(mode == 2) {
            let free = self.freelist_pages().await?;
            if free == 0 {
                break;
            }
            sqlx::query(&format!("PRAGMA incremental_vacuum({VACUUM_STEP})"))
                .execute(&self.pool)
                .await
                .map_err(AuditError::Write)?;
            freed += free.saturating_sub(self.freelist_pages().await?);
        }
        self.checkpoint().await;
        Ok(freed)
    }

    async fn freelist_pages(&self) -> Result<u64, AuditError> {
        let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
            .fetch_one(&self.pool)
            .await
            .map_err(AuditError::Read)?;
        Ok(u64::try_from(free).unwrap_or(0))
    }

    /// Copies the write-ahead log into the file and truncates it. A reader in the way (an
    /// `audit` query) only makes it partial: the next automatic checkpoint finishes it.
    async fn checkpoint(&self) {
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
        {
            tracing::debug!(error = %e, "audit checkpoint after pruning did not complete");
        }
    }

    /// Whether free pages can be given back without a full VACUUM.
    pub async fn incremental_vacuum(&self) -> Result<bool, AuditError> {
        let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
            .fetch_one(&self.pool)
            .await
            .map_err(AuditError::Read)?;
        Ok(mode == 2)
    }

    /// Turns a database created before incremental vacuum into one that has it: a full
    /// VACUUM, which rewrites the file (through a temporary copy and the write-ahead log), so
    /// it is refused unless twice the database's size is free on its file system. Returns
    /// false when it already had it.
    pub async fn convert_to_incremental_vacuum(&self) -> Result<bool, VacuumError> {
        if self.incremental_vacuum().await? {
            return Ok(false);
        }
        let size: i64 = sqlx::query_scalar(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(AuditError::Read)?;
        let needed = u64::try_from(size).unwrap_or(0).saturating_mul(2);
        let real = canonical(&self.path)?;
        let dir = real.parent().unwrap_or(Path::new("."));
        let free = free_bytes(dir).map_err(|source| VacuumError::FreeSpace {
            path: self.path.clone(),
            source,
        })?;
        if free < needed {
            return Err(VacuumError::NoRoom {
                path: self.path.clone(),
                needed,
                free,
            });
        }
        let _timer = self.timer();
        // Outside any transaction, as VACUUM must be; the mode takes effect through it.
        for statement in ["PRAGMA auto_vacuum = INCREMENTAL", "VACUUM"] {
            sqlx::query(statement)
                .execute(&self.pool)
                .await
                .map_err(AuditError::Write)?;
        }
        self.checkpoint().await;
        Ok(true)
    }

    /// The database's size on disk: the file and its write-ahead log, in bytes.
    pub fn disk_bytes(&self) -> u64 {
        let Ok(real) = canonical(&self.path) else {
            return 0;
        };
        let mut wal = real.as_os_str().to_owned();
        wal.push("-wal");
        [real, PathBuf::from(wal)]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// Bytes an unprivileged process may still write on the file system holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid C string and `stat` is written by statvfs before it is read.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    const NOW: &str = "2026-12-01T00:00:00Z";

    /// A closed run that finished `days` (fractional) before NOW.
    fn run(id: i64, days: f64) -> RunFacts {
        RunFacts {
            id,
            finished: Some(at(NOW) - TimeDelta::seconds((days * 86_400.0) as i64)),
            closed: true,
            ..RunFacts::default()
        }
    }

    /// Runs 1..: the cases; run 99 is the latest, young, so that none of the cases is the
    /// latest unless it says so.
    #[test]
    fn the_policy_keeps_what_is_young_open_unsettled_latest_or_named() {
        let retention = Retention {
            days: 90,
            mutations_days: None,
        };
        let acting = |id, days| RunFacts {
            acted: true,
            ..run(id, days)
        };
        // (case, run, expected: Ok(None) = due, Ok(Some(why)) = held, Err("young") = not listed)
        type Expected = Result<Option<Held>, &'static str>;
        let cases: Vec<(&str, RunFacts, Expected)> = vec![
            ("just inside retain_days", run(1, 89.99), Err("young")),
            ("just outside retain_days", run(2, 90.01), Ok(None)),
            (
                "acted, very old, kept forever",
                acting(3, 3650.0),
                Err("young"),
            ),
            (
                "still running",
                RunFacts {
                    closed: false,
                    finished: None,
                    ..run(4, 0.0)
                },
                Ok(Some(Held::Open)),
            ),
            (
                "closed without a readable time",
                RunFacts {
                    finished: None,
                    ..run(5, 0.0)
                },
                Ok(Some(Held::Open)),
            ),
            (
                "a call of unknown outcome",
                RunFacts {
                    unknown_outcome: true,
                    ..acting(6, 400.0)
                },
                Ok(Some(Held::UnknownOutcome)),
            ),
            (
                "named by a mark",
                RunFacts {
                    marked: true,
                    ..run(7, 400.0)
                },
                Ok(Some(Held::Marked)),
            ),
            (
                "undone by a young run",
                RunFacts {
                    named_by: vec![98],
                    ..run(8, 400.0)
                },
                Ok(Some(Held::Named)),
            ),
            (
                "undone by a run that goes too",
                RunFacts {
                    named_by: vec![2],
                    ..run(9, 400.0)
                },
                Ok(None),
            ),
        ];
        let mut runs: Vec<RunFacts> = cases.iter().map(|c| c.1.clone()).collect();
        runs.push(run(98, 1.0));
        runs.push(run(99, 0.5));
        let plan = plan(&runs, retention, at(NOW));
        let mut failures = Vec::new();
        for (case, facts, expected) in &cases {
            let got = if plan.due.contains(&facts.id) {
                Ok(None)
            } else if let Some((_, why)) = plan.held.iter().find(|(id, _)| *id == facts.id) {
                Ok(Some(*why))
            } else {
                Err("young")
            };
            if &got != expected {
                failures.push(format!("{case}: got {got:?}, expected {expected:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert_eq!(plan.due, [9, 2], "newest first");
    }

    #[test]
    fn acting_runs_go_once_retain_mutations_passes_and_the_latest_never() {
        let retention = Retention {
            days: 0,
            mutations_days: Some(30),
        };
        let acting = |id, days| RunFacts {
            acted: true,
            ..run(id, days)
        };
        let runs = [
            acting(1, 30.01),
            acting(2, 29.99),
            run(3, 0.01),
            run(4, 400.0),
        ];
        let plan = plan(&runs, retention, at(NOW));
        assert_eq!(plan.due, [3, 1]);
        assert_eq!(plan.held, [(4, Held::Latest)]);
    }

    const OLD: &str = "2026-01-01T00:00:00.000000Z";

    async fn store(dir: &tempfile::TempDir) -> AuditStore {
        AuditStore::open(&dir.path().join("a.db")).await.unwrap()
    }

    async fn exec(audit: &AuditStore, sql: &str) {
        sqlx::query(sql)
            .execute(&audit.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// A closed run `id` that finished at `finished`, with `actions` decisions (each with its
    /// snapshot of `snapshot_bytes`), one mutation carrying the first of them when `acted`,
    /// a run_kinds row, a mark event and a notification attempt.
    async fn add_run(
        audit: &AuditStore,
        id: i64,
        finished: &str,
        actions: i64,
        acted: bool,
        snapshot_bytes: usize,
    ) {
        let mode = if acted { "apply" } else { "plan" };
        exec(
            audit,
            &format!(
                "INSERT INTO runs (id, started_at, finished_at, mode, outcome)
                 VALUES ({id}, '{finished}', '{finished}', '{mode}', 'planned')"
            ),
        )
        .await;
        if acted {
            exec(
                audit,
                &format!(
                    "INSERT INTO mutations (id, run_id, resource_kind, kind, method, path,
                         resource_ids, intent_at, completed_at, outcome)
                     VALUES ({id}, {id}, 'device_registration', 'delete', 'DELETE', '/x',
                         '[\"r-{id}-0\"]', 't', 't', 'ok')"
                ),
            )
            .await;
        }
        if actions > 0 {
            // One statement each (not one per row): every commit is an fsync.
            let ids = format!(
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {})",
                actions - 1
            );
            let mutation = if acted {
                id.to_string()
            } else {
                "NULL".to_owned()
            };
            exec(
                audit,
                &format!(
                    "INSERT INTO actions (id, run_id, decided_at, rule, action, resource_kind,
                         resource_id, reason, status, mutation_id)
                     {ids} SELECT {id} * 10000 + i, {id}, 't', 'idle', 'delete',
                         'device_registration', 'r-{id}-' || i, 'idle', 'planned',
                         CASE WHEN i = 0 THEN {mutation} END FROM n"
                ),
            )
            .await;
            exec(
                audit,
                &format!(
                    "INSERT INTO snapshot_bodies (id, body)
                     {ids} SELECT {id} * 10000 + i,
                         '{{\"b\":\"' || replace(hex(zeroblob({snapshot_bytes})), '00', 'x') || '\"}}'
                     FROM n"
                ),
            )
            .await;
            exec(
                audit,
                &format!(
                    "INSERT INTO snapshots (action_id, body_id)
                     {ids} SELECT {id} * 10000 + i, {id} * 10000 + i FROM n"
                ),
            )
            .await;
        }
        for sql in [
            format!(
                "INSERT INTO run_kinds (run_id, kind, outcome, done, failed)
                 VALUES ({id}, 'device_registration', 'planned', 0, 0)"
            ),
            format!(
                "INSERT INTO mark_events (run_id, at, event, resource_kind, resource_id, rule,
                     first_marked_at) VALUES ({id}, 't', 'marked', 'device_registration', 'r', 'idle', 't')"
            ),
            format!(
                "INSERT INTO notification_attempts (run_id, target, attempt, started_at,
                     finished_at, outcome) VALUES ({id}, 'ops', 1, 't', 't', 'delivered')"
            ),
        ] {
            exec(audit, &sql).await;
        }
    }

    async fn count(audit: &AuditStore, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&audit.pool)
            .await
            .unwrap()
    }

    async fn runs(audit: &AuditStore) -> Vec<i64> {
        sqlx::query_scalar("SELECT id FROM runs ORDER BY id")
            .fetch_all(&audit.pool)
            .await
            .unwrap()
    }

    /// What must hold after every committed batch: every reference resolves, every action
    /// has its snapshot, and every run that lost rows is either whole in what it still has
    /// or gone.
    async fn assert_consistent(audit: &AuditStore, when: &str) {
        let broken = count(audit, "SELECT count(*) FROM pragma_foreign_key_check").await;
        assert_eq!(broken, 0, "{when}: a reference dangles");
        let bare = count(
            audit,
            "SELECT count(*) FROM actions a
             WHERE NOT EXISTS (SELECT 1 FROM snapshots s WHERE s.action_id = a.id)",
        )
        .await;
        assert_eq!(bare, 0, "{when}: an action lost its snapshot");
    }

    const FOREVER: Retention = Retention {
        days: 0,
        mutations_days: None,
    };

    /// Issue 14: pruning commits in small transactions, and the database is consistent after
    /// each of them; a prune that stops at its budget is taken up by the next.
    #[tokio::test]
    async fn each_batch_leaves_a_consistent_database_and_the_next_prune_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let audit = store(&dir).await;
        add_run(&audit, 1, OLD, 7, false, 10).await;
        add_run(&audit, 2, OLD, 5, true, 10).await;
        add_run(&audit, 3, OLD, 8, false, 10).await;
        add_run(&audit, 4, OLD, 2, false, 10).await;
        let now = at(NOW);
        let retention = Retention {
            days: 30,
            mutations_days: Some(30),
        };
        let preview = audit.prune_preview(retention, now).await.unwrap();
        assert_eq!(preview.runs, [3, 2, 1], "the latest (4) stays");
        let one_batch = PruneLimits {
            batch: 3,
            max_rows: Some(1),
        };
        let mut deleted: BTreeMap<&str, u64> = BTreeMap::new();
        let mut calls = 0;
        loop {
            calls += 1;
            assert!(calls < 100, "pruning does not end");
            let report = audit
                .prune(retention, now, PruneTrigger::Cycle, one_batch)
                .await
                .unwrap();
            assert_eq!(report.error, None);
            assert_consistent(&audit, &format!("after prune {calls}")).await;
            for (table, n) in &report.deleted {
                *deleted.entry(table).or_default() += n;
            }
            if report.complete {
                break;
            }
        }
        assert!(calls > 5, "one batch per prune: {calls}");
        assert_eq!(runs(&audit).await, [4]);
        // Bodies are swept once nothing names them, and the preview counts them.
        assert_eq!(deleted["snapshot_bodies"], 20, "the bodies went too");
        assert_eq!(deleted, preview.deleted, "the preview counted what went");
        assert_eq!(deleted["actions"], 20);
        assert_eq!(deleted["snapshots"], 20);
        assert_eq!(deleted["mutations"], 1);
        let left = count(&audit, "SELECT count(*) FROM actions WHERE run_id != 4").await;
        assert_eq!(left, 0);
        let records = count(
            &audit,
            "SELECT count(*) FROM prunes WHERE triggered_by = 'cycle' AND retain_days = 30",
        )
        .await;
        assert_eq!(
            records,
            i64::from(calls),
            "one record per prune (each deleted rows)"
        );
        let last: (Option<i64>, Option<i64>, i64) = sqlx::query_as(
            "SELECT first_run_id, last_run_id, complete FROM prunes ORDER BY id DESC LIMIT 1",
        )
        .fetch_one(&audit.pool)
        .await
        .unwrap();
        assert_eq!(last, (Some(1), Some(1), 1));
        audit.close().await;
    }

    /// Open runs, calls without an outcome, marks, undos and stuck actions keep what they
    /// name; foreign keys are enforced, so a mistake here would fail the delete.
    #[tokio::test]
    async fn what_is_still_named_or_unsettled_stays() {
        let dir = tempfile::tempdir().unwrap();
        let audit = store(&dir).await;
        for id in 1..=7 {
            add_run(&audit, id, OLD, 2, id == 2, 10).await;
        }
        let young = ts(at(NOW));
        add_run(&audit, 8, &young, 2, false, 10).await;
        add_run(&audit, 9, &young, 1, false, 10).await;
        // 1: due. 2: a call of unknown outcome. 3: open. 4: named by a mark.
        // 5: undone by the young run 8. 6: its call is what 9's stuck action names.
        // 7: an undo of 1, and old: both go, the undo first.
        for sql in [
            "UPDATE mutations SET outcome = NULL, completed_at = NULL WHERE run_id = 2",
            "UPDATE runs SET outcome = NULL, finished_at = NULL WHERE id = 3",
            "INSERT INTO marks (resource_kind, zone_key, id_key, resource_id, rule, action,
                 first_marked_at, first_run_id, first_body_id, last_run_id)
             VALUES ('device_registration', '', 'r-8-0', 'r-8-0', 'idle', 'delete', 't', 4,
                 40000, 8)",
            "UPDATE runs SET mode = 'undo', undoes_run = 5 WHERE id = 8",
            "UPDATE actions SET undoes_action_id = 50000 WHERE id = 80000",
            "INSERT INTO mutations (id, run_id, resource_kind, kind, method, path, resource_ids,
                 intent_at, completed_at, outcome)
             VALUES (6, 6, 'device_registration', 'delete', 'DELETE', '/x', '[]', 't', 't',
                 'rejected')",
            "UPDATE actions SET status = 'stuck', mutation_id = 6 WHERE id = 90000",
            "UPDATE runs SET mode = 'undo', undoes_run = 1 WHERE id = 7",
        ] {
            exec(&audit, sql).await;
        }
        let report = audit
            .prune(
                Retention {
                    days: 1,
                    mutations_days: Some(1),
                },
                at(NOW),
                PruneTrigger::Command,
                PruneLimits::COMMAND,
            )
            .await
            .unwrap();
        assert_eq!(report.error, None);
        assert_eq!(report.runs, [7, 1]);
        let held: Vec<(i64, Held)> = report.held.iter().map(|h| (h.run_id, h.reason)).collect();
        assert_eq!(
            held,
            [
                (2, Held::UnknownOutcome),
                (3, Held::Open),
                (4, Held::Marked),
                (5, Held::Named),
                (6, Held::Named)
            ]
        );
        assert_eq!(runs(&audit).await, [2, 3, 4, 5, 6, 8, 9]);
        assert_consistent(&audit, "after pruning").await;
        audit.close().await;
    }

    /// New databases give freed pages back: the file shrinks once old runs are pruned. One
    /// created before that only reuses them, until it is converted once.
    #[tokio::test]
    async fn pruning_gives_the_space_back_and_an_old_database_can_be_converted() {
        let dir = tempfile::tempdir().unwrap();
        let audit = store(&dir).await;
        assert!(audit.incremental_vacuum().await.unwrap(), "new databases");
        add_run(&audit, 1, OLD, 1500, false, 2000).await;
        add_run(&audit, 2, &ts(at(NOW)), 1, false, 10).await;
        audit.checkpoint().await;
        let before = audit.disk_bytes();
        assert!(before > 3_000_000, "{before}");
        let report = audit
            .prune(
                FOREVER,
                at(NOW),
                PruneTrigger::Command,
                PruneLimits::COMMAND,
            )
            .await
            .unwrap();
        assert_eq!(report.runs, [1]);
        assert_eq!(report.bytes_before, before);
        assert!(
            report.bytes_after < before / 4,
            "{} bytes left of {before}",
            report.bytes_after
        );
        assert_eq!(report.bytes_after, audit.disk_bytes());
        audit.close().await;

        let old_dir = tempfile::tempdir().unwrap();
        let path = old_dir.path().join("old.db");
        // A database from before incremental vacuum: made without it.
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal),
            )
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (x)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let old = AuditStore::open(&path).await.unwrap();
        assert!(!old.incremental_vacuum().await.unwrap());
        add_run(&old, 1, OLD, 1500, false, 2000).await;
        add_run(&old, 2, &ts(at(NOW)), 1, false, 10).await;
        old.checkpoint().await;
        let before = old.disk_bytes();
        let report = old
            .prune(
                FOREVER,
                at(NOW),
                PruneTrigger::Command,
                PruneLimits::COMMAND,
            )
            .await
            .unwrap();
        assert_eq!(report.runs, [1]);
        assert!(!report.incremental_vacuum);
        assert!(report.bytes_after > before / 2, "not given back yet");
        assert!(old.convert_to_incremental_vacuum().await.unwrap());
        assert!(old.incremental_vacuum().await.unwrap());
        assert!(old.disk_bytes() < before / 4, "the VACUUM rewrote it small");
        assert!(!old.convert_to_incremental_vacuum().await.unwrap(), "once");
        assert_eq!(runs(&old).await, [2]);
        old.close().await;
    }

    /// Each action deleted makes SQLite look for actions naming it (`undoes_action_id`, a
    /// foreign key); without this index every look is a scan of all actions, and pruning a
    /// large run takes hours instead of seconds.
    #[tokio::test]
    async fn the_foreign_key_check_of_a_deleted_action_uses_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let audit = store(&dir).await;
        let plan: Vec<String> =
            sqlx::query("EXPLAIN QUERY PLAN SELECT 1 FROM actions WHERE undoes_action_id = 5")
                .fetch_all(&audit.pool)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<String, _>("detail"))
                .collect();
        assert!(
            plan.iter().any(|step| step.contains("actions_undoes")),
            "{plan:?}"
        );
        audit.close().await;
    }

    /// An undo names the run it reverses; a run named by a kept run is kept, and so is what
    /// that one names in turn.
    #[test]
    fn a_chain_of_names_holds_every_run_it_reaches() {
        let retention = Retention {
            days: 1,
            mutations_days: Some(1),
        };
        let runs = [
            RunFacts {
                named_by: vec![2],
                ..run(1, 10.0)
            },
            RunFacts {
                named_by: vec![3],
                ..run(2, 10.0)
            },
            RunFacts {
                marked: true,
                ..run(3, 10.0)
            },
            run(4, 0.0),
        ];
        let plan = plan(&runs, retention, at(NOW));
        assert!(plan.due.is_empty(), "{plan:?}");
        assert_eq!(
            plan.held,
            [(1, Held::Named), (2, Held::Named), (3, Held::Marked)]
        );
    }
}
