//! The audit log read for `zt-janitor audit export`: runs in a time range, each with its
//! actions (and the object's snapshot) and its mutations, streamed row by row inside one read
//! transaction, so that the export is one consistent view however long it takes and however
//! large the log is. Formatting is [`crate::export`]'s.

use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};

use super::{ts, AuditError, AuditStore};

/// Runs read per query: a page of runs is small, and their actions are streamed one run at a
/// time.
const RUN_PAGE: i64 = 256;

/// One row of `runs`, every column as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportRun {
    pub id: i64,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub mode: String,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    pub pages: Option<i64>,
    pub seen_total: Option<i64>,
    pub seen_active: Option<i64>,
    pub seen_revoked: Option<i64>,
    pub candidates: Option<i64>,
    pub excluded: Option<i64>,
    pub actions_done: Option<i64>,
    pub actions_failed: Option<i64>,
    pub actions_unconfirmed: Option<i64>,
    pub actions_stuck: Option<i64>,
    pub actions_refused: Option<i64>,
    pub api_requests: Option<i64>,
    pub saved_plan_path: Option<String>,
    pub saved_plan_sha256: Option<String>,
    pub max_actions_override: Option<i64>,
    pub undoes_run: Option<i64>,
}

/// One row of `actions` with its snapshot's stored text (`None` when it has none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportAction {
    pub id: i64,
    pub run_id: i64,
    pub decided_at: String,
    pub rule: String,
    pub action: String,
    pub resource_kind: String,
    pub resource_id: String,
    pub zone_id: Option<String>,
    pub user_email: Option<String>,
    pub device_name: Option<String>,
    pub last_seen_at: Option<String>,
    pub reason: String,
    pub excluded_by: Option<String>,
    pub status: String,
    pub status_detail: Option<String>,
    pub mutation_id: Option<i64>,
    pub undoes_action_id: Option<i64>,
    pub snapshot: Option<String>,
}

/// One row of `mutations`; `resource_ids` is the stored JSON array's text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportMutation {
    pub id: i64,
    pub run_id: i64,
    pub resource_kind: String,
    pub zone_id: Option<String>,
    pub kind: String,
    pub method: String,
    pub path: String,
    pub resource_ids: String,
    pub intent_at: String,
    pub completed_at: Option<String>,
    pub outcome: Option<String>,
    pub http_status: Option<i64>,
    pub cf_error_code: Option<i64>,
    pub cf_error_message: Option<String>,
}

/// A read transaction over the audit log for one export: every query sees the log as it was
/// at the first one, while a daemon goes on writing.
pub struct ExportReader {
    tx: Transaction<'static, Sqlite>,
    since: String,
    until: Option<String>,
}

impl AuditStore {
    /// Starts an export of the runs started at or after `since` and, if given, before `until`.
    pub async fn export_reader(
        &self,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
    ) -> Result<ExportReader, AuditError> {
        let tx = self.pool.begin().await.map_err(AuditError::Read)?;
        Ok(ExportReader {
            tx,
            since: ts(since),
            until: until.map(ts),
        })
    }
}

impl ExportReader {
    /// Up to [`RUN_PAGE`] runs of the range after run `after`, in id (start) order.
    pub async fn runs_after(&mut self, after: i64) -> Result<Vec<ExportRun>, AuditError> {
        let rows = sqlx::query(
            "SELECT id, started_at, finished_at, mode, outcome, reason, pages, seen_total,
                    seen_active, seen_revoked, candidates, excluded, actions_done, actions_failed,
                    actions_unconfirmed, actions_stuck, refused, api_requests, saved_plan_path,
                    saved_plan_sha256, max_actions_override, undoes_run
             FROM runs
             WHERE id > ?1 AND started_at >= ?2 AND (?3 IS NULL OR started_at < ?3)
             ORDER BY id LIMIT ?4",
        )
        .bind(after)
        .bind(&self.since)
        .bind(self.until.as_deref())
        .bind(RUN_PAGE)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(AuditError::Read)?;
        rows.iter().map(run).collect()
    }

    /// The actions of `run` in id order, each with its snapshot, one row at a time. The
    /// decisions of a run that did not act are folded into spans at its close: not exported.
    pub fn actions(
        &mut self,
        run: i64,
    ) -> impl Stream<Item = Result<ExportAction, AuditError>> + '_ {
        // The one place the export finds an action's snapshot.
        sqlx::query(
            "SELECT a.id, a.run_id, a.decided_at, a.rule, a.action, a.resource_kind,
                    a.resource_id, a.zone_id, a.user_email, a.device_name, a.last_seen_at,
                    a.reason, a.excluded_by, a.status, a.status_detail, a.mutation_id,
                    a.undoes_action_id, CAST(b.body AS BLOB) AS snapshot
             FROM actions a LEFT JOIN snapshots s ON s.action_id = a.id
                  LEFT JOIN snapshot_bodies b ON b.id = s.body_id
             WHERE a.run_id = ?1 ORDER BY a.id",
        )
        .bind(run)
        .fetch(&mut *self.tx)
        .map(|row| action(&row.map_err(AuditError::Read)?))
    }

    /// The mutations of `run` in id (intent) order, one row at a time.
    pub fn mutations(
        &mut self,
        run: i64,
    ) -> impl Stream<Item = Result<ExportMutation, AuditError>> + '_ {
        sqlx::query(
            "SELECT id, run_id, resource_kind, zone_id, kind, method, path, resource_ids,
                    intent_at, completed_at, outcome, http_status, cf_error_code,
                    cf_error_message
             FROM mutations WHERE run_id = ?1 ORDER BY id",
        )
        .bind(run)
        .fetch(&mut *self.tx)
        .map(|row| mutation(&row.map_err(AuditError::Read)?))
    }

    /// Ends the read transaction.
    pub async fn finish(self) -> Result<(), AuditError> {
        self.tx.rollback().await.map_err(AuditError::Read)
    }
}

// try_get throughout: SQLite keeps any type in any column, which `get` would panic on.
fn text(row: &SqliteRow, column: &str) -> Result<Option<String>, AuditError> {
    row.try_get(column).map_err(AuditError::Read)
}

fn int(row: &SqliteRow, column: &str) -> Result<Option<i64>, AuditError> {
    row.try_get(column).map_err(AuditError::Read)
}

fn run(row: &SqliteRow) -> Result<ExportRun, AuditError> {
    Ok(ExportRun {
        id: row.try_get("id").map_err(AuditError::Read)?,
        started_at: text(row, "started_at")?.unwrap_or_default(),
        finished_at: text(row, "finished_at")?,
        mode: text(row, "mode")?.unwrap_or_default(),
        outcome: text(row, "outcome")?,
        reason: text(row, "reason")?,
        pages: int(row, "pages")?,
        seen_total: int(row, "seen_total")?,
        seen_active: int(row, "seen_active")?,
        seen_revoked: int(row, "seen_revoked")?,
        candidates: int(row, "candidates")?,
        excluded: int(row, "excluded")?,
        actions_done: int(row, "actions_done")?,
        actions_failed: int(row, "actions_failed")?,
        actions_unconfirmed: int(row, "actions_unconfirmed")?,
        actions_stuck: int(row, "actions_stuck")?,
        actions_refused: int(row, "refused")?,
        api_requests: int(row, "api_requests")?,
        saved_plan_path: text(row, "saved_plan_path")?,
        saved_plan_sha256: text(row, "saved_plan_sha256")?,
        max_actions_override: int(row, "max_actions_override")?,
        undoes_run: int(row, "undoes_run")?,
    })
}

fn action(row: &SqliteRow) -> Result<ExportAction, AuditError> {
    Ok(ExportAction {
        id: row.try_get("id").map_err(AuditError::Read)?,
        run_id: row.try_get("run_id").map_err(AuditError::Read)?,
        decided_at: text(row, "decided_at")?.unwrap_or_default(),
        rule: text(row, "rule")?.unwrap_or_default(),
        action: text(row, "action")?.unwrap_or_default(),
        resource_kind: text(row, "resource_kind")?.unwrap_or_default(),
        resource_id: text(row, "resource_id")?.unwrap_or_default(),
        zone_id: text(row, "zone_id")?,
        user_email: text(row, "user_email")?,
        device_name: text(row, "device_name")?,
        last_seen_at: text(row, "last_seen_at")?,
        reason: text(row, "reason")?.unwrap_or_default(),
        excluded_by: text(row, "excluded_by")?,
        status: text(row, "status")?.unwrap_or_default(),
        status_detail: text(row, "status_detail")?,
        mutation_id: int(row, "mutation_id")?,
        undoes_action_id: int(row, "undoes_action_id")?,
        snapshot: super::storage::stored_body(row, "snapshot").map_err(AuditError::Read)?,
    })
}

fn mutation(row: &SqliteRow) -> Result<ExportMutation, AuditError> {
    Ok(ExportMutation {
        id: row.try_get("id").map_err(AuditError::Read)?,
        run_id: row.try_get("run_id").map_err(AuditError::Read)?,
        resource_kind: text(row, "resource_kind")?.unwrap_or_default(),
        zone_id: text(row, "zone_id")?,
        kind: text(row, "kind")?.unwrap_or_default(),
        method: text(row, "method")?.unwrap_or_default(),
        path: text(row, "path")?.unwrap_or_default(),
        resource_ids: text(row, "resource_ids")?.unwrap_or_default(),
        intent_at: text(row, "intent_at")?.unwrap_or_default(),
        completed_at: text(row, "completed_at")?,
        outcome: text(row, "outcome")?,
        http_status: int(row, "http_status")?,
        cf_error_code: int(row, "cf_error_code")?,
        cf_error_message: text(row, "cf_error_message")?,
    })
}
