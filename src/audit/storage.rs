//! How the audit log stores decisions compactly (issue 14, bounded growth): snapshot bodies in
//! a table of their own (`snapshot_bodies`, compressed for plan runs), and the decisions of
//! runs that did not act folded into run-length spans (`decision_spans`) when the run closes,
//! which drops the bodies a span already holds. The readers of decisions (`audit actions`,
//! `explain`, notifications) read both action rows and spans.

use sha2::{Digest, Sha256};
use sqlx::{QueryBuilder, Row};

use super::{
    next_ids, push_action_filter, ts, ActionFilter, ActionRow, AuditError, AuditStore, RunId,
};
use super::{BodyForm, INSERT_BATCH};

/// SHA-256 of a body's bytes (its text, not its stored form), as the hash chain takes it.
pub(super) fn body_sha256(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// An action's snapshot body, ready to store: its hash (for the chain's digest) and its stored
/// form (body.rs), both taken off the database's thread.
pub(super) struct NewBody {
    pub(super) action: i64,
    pub(super) id: i64,
    pub(super) sha256: [u8; 32],
    pub(super) stored: Stored,
}

/// Owned, so that the statement takes it without a copy.
pub(super) enum Stored {
    Text(String),
    Compressed(Vec<u8>),
}

impl NewBody {
    pub(super) fn new(action: i64, id: i64, body: String, form: BodyForm) -> NewBody {
        NewBody {
            action,
            id,
            sha256: body_sha256(body.as_bytes()),
            stored: match form {
                BodyForm::Compressed => match super::body::compress(&body) {
                    Some(compressed) => Stored::Compressed(compressed),
                    None => Stored::Text(body),
                },
                BodyForm::AsListed => Stored::Text(body),
            },
        }
    }
}

/// The text of a stored snapshot body read from column `column` (see body.rs): a body that
/// cannot be decoded is a read error naming it, never a panic or a wrong object.
pub(super) fn stored_body(
    row: &sqlx::sqlite::SqliteRow,
    column: impl sqlx::ColumnIndex<sqlx::sqlite::SqliteRow>,
) -> Result<Option<String>, sqlx::Error> {
    let stored: Option<Vec<u8>> = row.try_get(column)?;
    stored
        .map(|b| super::body::decode(&b))
        .transpose()
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// What the store holds, for the benchmark: file sizes and row counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageFigures {
    /// The database file, after a checkpoint that empties the WAL into it.
    pub main_bytes: u64,
    /// The WAL file after that checkpoint.
    pub wal_bytes: u64,
    /// The WAL file before it: its high-water mark since the last checkpoint that truncated it.
    pub wal_bytes_before: u64,
    pub actions: i64,
    pub bodies: i64,
    pub spans: i64,
}

impl AuditStore {
    /// Stores the snapshots of actions `(action id, body)`: a body row each, as listed, and a
    /// `snapshots` row naming it.
    pub(super) async fn insert_snapshots(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        rows: &[(i64, &str)],
    ) -> Result<(), AuditError> {
        let ids = next_ids(tx, "snapshot_bodies", rows.len()).await?;
        let bodies: Vec<NewBody> = rows
            .iter()
            .zip(ids)
            .map(|((action, body), id)| {
                NewBody::new(*action, id, (*body).to_owned(), BodyForm::AsListed)
            })
            .collect();
        Self::insert_bodies(tx, bodies).await
    }

    /// Stores prepared bodies ([`NewBody`]) and their `snapshots` rows: two statements per
    /// batch of rows. Every body is stored: one equal to the body of the span its decision
    /// extends is dropped when the run is folded ([`AuditStore::fold_run`]), which keeps the
    /// apply path free of a lookup by content.
    pub(super) async fn insert_bodies(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        mut bodies: Vec<NewBody>,
    ) -> Result<(), AuditError> {
        while !bodies.is_empty() {
            let rest = bodies.split_off(bodies.len().min(INSERT_BATCH));
            let batch = std::mem::replace(&mut bodies, rest);
            let links: Vec<(i64, i64)> = batch.iter().map(|b| (b.action, b.id)).collect();
            let mut q = QueryBuilder::new("INSERT INTO snapshot_bodies (id, body) ");
            q.push_values(batch, |mut row, b| {
                row.push_bind(b.id);
                // A body left as it is stays TEXT, readable with `sqlite3`.
                match b.stored {
                    Stored::Text(text) => row.push_bind(text),
                    Stored::Compressed(bytes) => row.push_bind(bytes),
                };
            });
            q.build()
                .execute(&mut **tx)
                .await
                .map_err(AuditError::Write)?;
            let mut q = QueryBuilder::new("INSERT INTO snapshots (action_id, body_id) ");
            q.push_values(links, |mut row, (action, body)| {
                row.push_bind(action).push_bind(body);
            });
            q.build()
                .execute(&mut **tx)
                .await
                .map_err(AuditError::Write)?;
        }
        Ok(())
    }

    /// Folds the decisions of `run` into spans if the run did not act (it has no mutation row)
    /// and is a cycle (an undo's actions name what they undo, which a span does not keep).
    /// A decision equal in its key to a span the previous run ended extends it; any other
    /// starts a span. The folded action and snapshot rows are then deleted. Set-based: a few
    /// statements whatever the number of decisions. Returns how many decisions were folded.
    pub(super) async fn fold_run(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        run: RunId,
    ) -> Result<u64, AuditError> {
        let write = AuditError::Write;
        let foldable: bool = sqlx::query_scalar(
            "SELECT mode <> 'undo' AND NOT EXISTS (SELECT 1 FROM mutations WHERE run_id = ?1)
             FROM runs WHERE id = ?1",
        )
        .bind(run.0)
        .fetch_optional(&mut **tx)
        .await
        .map_err(write)?
        .unwrap_or(false);
        if !foldable {
            return Ok(0);
        }
        let started = std::time::Instant::now();
        let previous: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM runs WHERE id < ?1")
            .bind(run.0)
            .fetch_one(&mut **tx)
            .await
            .map_err(write)?;
        for statement in [
            "DROP TABLE IF EXISTS temp.fold",
            "CREATE TEMP TABLE fold (action_id INTEGER PRIMARY KEY, body_id INTEGER NOT NULL,
                 span_id INTEGER)",
        ] {
            sqlx::query(statement)
                .execute(&mut **tx)
                .await
                .map_err(write)?;
        }
        // Each decision with the span it extends, if any. An action that names a call stays a
        // row: a `stuck` one points at the failed call of an earlier run, which the failure
        // streaks of later runs read. So does one without a snapshot row (a damaged database).
        let folded = sqlx::query(
            "INSERT INTO temp.fold (action_id, body_id, span_id)
             SELECT a.id, s.body_id,
                 (SELECT d.id FROM decision_spans d
                  WHERE d.last_run_id = ?2 AND d.resource_id = a.resource_id
                    AND d.resource_kind = a.resource_kind AND d.zone_id IS a.zone_id
                    AND d.rule = a.rule AND d.action = a.action
                    AND d.excluded_by IS a.excluded_by AND d.status = a.status
                    AND (d.body_id = s.body_id OR (SELECT body FROM snapshot_bodies
                                                   WHERE id = d.body_id)
                                                  = (SELECT body FROM snapshot_bodies
                                                     WHERE id = s.body_id))
                  LIMIT 1)
             FROM actions a JOIN snapshots s ON s.action_id = a.id
             WHERE a.run_id = ?1 AND a.mutation_id IS NULL",
        )
        .bind(run.0)
        .bind(previous)
        .execute(&mut **tx)
        .await
        .map_err(write)?
        .rows_affected();
        if folded == 0 {
            sqlx::query("DROP TABLE temp.fold")
                .execute(&mut **tx)
                .await
                .map_err(write)?;
            return Ok(0);
        }
        // Two equal decisions in one run (a listing that named an object twice) are two
        // rows when read back: only the first extends the span, the other starts its own.
        for statement in [
            "CREATE INDEX temp.fold_span ON fold (span_id) WHERE span_id IS NOT NULL",
            "UPDATE temp.fold SET span_id = NULL
             WHERE span_id IS NOT NULL AND action_id > (SELECT min(f.action_id) FROM temp.fold f
                                                       WHERE f.span_id = fold.span_id)",
        ] {
            sqlx::query(statement)
                .execute(&mut **tx)
                .await
                .map_err(write)?;
        }
        sqlx::query(
            "UPDATE decision_spans SET last_run_id = ?1, last_decided_at = a.decided_at,
                 last_reason = a.reason, last_status_detail = a.status_detail
             FROM temp.fold f JOIN actions a ON a.id = f.action_id
             WHERE decision_spans.id = f.span_id",
        )
        .bind(run.0)
        .execute(&mut **tx)
        .await
        .map_err(write)?;
        let started_spans = sqlx::query(
            "INSERT INTO decision_spans (resource_kind, zone_id, resource_id, rule, action,
                 excluded_by, status, body_id, user_email, user_email_folded, device_name,
                 last_seen_at, first_run_id, last_run_id, first_decided_at, last_decided_at,
                 reason, status_detail, last_reason, last_status_detail)
             SELECT a.resource_kind, a.zone_id, a.resource_id, a.rule, a.action, a.excluded_by,
                 a.status, f.body_id, a.user_email, a.user_email_folded, a.device_name,
                 a.last_seen_at, ?1, ?1, a.decided_at, a.decided_at, a.reason, a.status_detail,
                 a.reason, a.status_detail
             FROM temp.fold f JOIN actions a ON a.id = f.action_id
             WHERE f.span_id IS NULL ORDER BY f.action_id",
        )
        .bind(run.0)
        .execute(&mut **tx)
        .await
        .map_err(write)?
        .rows_affected();
        // A decision that extends a span stored its body again: the span's is the same bytes
        // (the same text, compressed the same). A mark first made in this run moves to the
        // span's body, and the copy goes.
        for statement in [
            "DELETE FROM snapshots WHERE action_id IN (SELECT action_id FROM temp.fold)",
            "DELETE FROM actions WHERE id IN (SELECT action_id FROM temp.fold)",
            "CREATE TEMP TABLE copies AS
                 SELECT f.body_id AS copy, d.body_id AS original
                 FROM temp.fold f JOIN decision_spans d ON d.id = f.span_id
                 WHERE f.body_id <> d.body_id",
            "UPDATE marks SET first_body_id = c.original
                 FROM temp.copies c WHERE marks.first_body_id = c.copy",
            "DELETE FROM snapshot_bodies
                 WHERE id IN (SELECT copy FROM temp.copies)
                   AND NOT EXISTS (SELECT 1 FROM snapshots s WHERE s.body_id = snapshot_bodies.id)
                   AND NOT EXISTS (SELECT 1 FROM decision_spans d
                                   WHERE d.body_id = snapshot_bodies.id)
                   AND NOT EXISTS (SELECT 1 FROM marks m
                                   WHERE m.first_body_id = snapshot_bodies.id)",
            "DROP TABLE temp.copies",
            "DROP TABLE temp.fold",
        ] {
            sqlx::query(statement)
                .execute(&mut **tx)
                .await
                .map_err(write)?;
        }
        tracing::debug!(
            run = run.0,
            decisions = folded,
            spans_started = started_spans,
            ms = started.elapsed().as_millis() as u64,
            "folded the decisions of a run that did not act into spans"
        );
        Ok(folded)
    }

    /// Decisions matching `f`, newest run first: action rows, and spans of folded decisions
    /// (a span is one row, whatever the number of runs it covers). With `f.run_id`, a span's
    /// row reads as that run's decision: its time, and its texts if it is the span's last run
    /// (the first run's otherwise).
    pub async fn actions(&self, f: &ActionFilter) -> Result<Vec<ActionRow>, AuditError> {
        let mut q = QueryBuilder::new(
            "SELECT a.id AS id, a.run_id AS run_id, a.decided_at, a.rule, a.action,
                    a.resource_id, a.user_email, a.device_name, a.last_seen_at, a.reason,
                    a.excluded_by, a.status, a.status_detail, a.mutation_id, m.completed_at,
                    m.http_status, CAST(b.body AS BLOB), a.resource_kind, a.undoes_action_id,
                    NULL AS span_id, NULL AS first_run, NULL AS last_run, a.id AS sort_id
             FROM actions a LEFT JOIN mutations m ON m.id = a.mutation_id
                  LEFT JOIN snapshots s ON s.action_id = a.id
                  LEFT JOIN snapshot_bodies b ON b.id = s.body_id
             WHERE 1 = 1",
        );
        push_action_filter(&mut q, f);
        q.push(" UNION ALL SELECT NULL, ");
        match f.run_id {
            Some(run) => {
                q.push_bind(run)
                    .push(", CASE WHEN d.first_run_id = ")
                    .push_bind(run)
                    .push(" THEN d.first_decided_at WHEN d.last_run_id = ")
                    .push_bind(run)
                    .push(" THEN d.last_decided_at ELSE coalesce((SELECT started_at FROM runs WHERE id = ")
                    .push_bind(run)
                    .push("), d.first_decided_at) END, ");
            }
            None => {
                q.push("d.last_run_id, d.last_decided_at, ");
            }
        }
        q.push("d.rule, d.action, d.resource_id, d.user_email, d.device_name, d.last_seen_at, ");
        // The latest texts when the row stands for the span's last run.
        let last = |q: &mut QueryBuilder<'_, sqlx::Sqlite>, column: &str| {
            match f.run_id {
                Some(run) => q
                    .push("CASE WHEN d.last_run_id = ")
                    .push_bind(run)
                    .push(format!(" THEN d.last_{column} ELSE d.{column} END")),
                None => q.push(format!("d.last_{column}")),
            };
        };
        last(&mut q, "reason");
        q.push(", d.excluded_by, d.status, ");
        last(&mut q, "status_detail");
        q.push(
            ", NULL, NULL, NULL, CAST(b.body AS BLOB), d.resource_kind, NULL, d.id, d.first_run_id,
                 d.last_run_id, d.id
             FROM decision_spans d JOIN snapshot_bodies b ON b.id = d.body_id
             WHERE 1 = 1",
        );
        push_span_filter(&mut q, f);
        q.push(" ORDER BY run_id DESC, sort_id DESC LIMIT ")
            .push_bind(f.limit);
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(AuditError::Read)?;
        // try_get: SQLite keeps any type in any column, which `get` would panic on.
        let read = |r: &sqlx::sqlite::SqliteRow| -> Result<ActionRow, sqlx::Error> {
            Ok(ActionRow {
                id: r.try_get(0)?,
                run_id: r.try_get(1)?,
                decided_at: r.try_get(2)?,
                rule: r.try_get(3)?,
                action: r.try_get(4)?,
                resource_kind: r.try_get(17)?,
                resource_id: r.try_get(5)?,
                user_email: r.try_get(6)?,
                device_name: r.try_get(7)?,
                last_seen_at: r.try_get(8)?,
                reason: r.try_get(9)?,
                excluded_by: r.try_get(10)?,
                status: r.try_get(11)?,
                status_detail: r.try_get(12)?,
                mutation_id: r.try_get(13)?,
                mutation_completed_at: r.try_get(14)?,
                http_status: r.try_get(15)?,
                undoes_action_id: r.try_get(18)?,
                span_id: r.try_get(19)?,
                span_first_run_id: r.try_get(20)?,
                span_last_run_id: r.try_get(21)?,
                // An action without a snapshot row (none should be) reads as no object.
                snapshot: stored_body(r, 16)?.unwrap_or_else(|| "null".to_owned()),
            })
        };
        rows.iter()
            .map(|r| read(r).map_err(AuditError::Read))
            .collect()
    }

    /// How many rows [`AuditStore::actions`] gives for `f`, whatever its limit: what a
    /// limited listing left out.
    pub async fn count_actions(&self, f: &ActionFilter) -> Result<i64, AuditError> {
        let mut q = QueryBuilder::new("SELECT (SELECT COUNT(*) FROM actions a WHERE 1 = 1");
        push_action_filter(&mut q, f);
        q.push(") + (SELECT COUNT(*) FROM decision_spans d WHERE 1 = 1");
        push_span_filter(&mut q, f);
        q.push(")");
        q.build_query_scalar()
            .fetch_one(&self.pool)
            .await
            .map_err(AuditError::Read)
    }

    /// The body of the object as first marked, for the mark of `(kind, zone, id)`.
    pub async fn mark_first_snapshot(
        &self,
        kind: &str,
        zone: Option<&str>,
        id: &str,
    ) -> Result<Option<String>, AuditError> {
        let row = sqlx::query(
            "SELECT CAST(b.body AS BLOB) FROM marks m JOIN snapshot_bodies b ON b.id = m.first_body_id
             WHERE m.resource_kind = ?1 AND m.zone_key = ?2 AND m.id_key = lower(?3)",
        )
        .bind(kind)
        .bind(zone.unwrap_or(""))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(AuditError::Read)?;
        match row {
            Some(row) => stored_body(&row, 0).map_err(AuditError::Read),
            None => Ok(None),
        }
    }

    /// The database's size on disk and what it holds, after a checkpoint that moves the WAL
    /// into the main file and truncates it.
    pub async fn storage_figures(&self) -> Result<StorageFigures, AuditError> {
        let size = |suffix: &str| {
            let mut name = self.path.as_os_str().to_owned();
            name.push(suffix);
            std::fs::metadata(std::path::PathBuf::from(name)).map_or(0, |m| m.len())
        };
        let wal_bytes_before = size("-wal");
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
            .map_err(AuditError::Write)?;
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM actions), (SELECT count(*) FROM snapshot_bodies),
                    (SELECT count(*) FROM decision_spans)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(AuditError::Read)?;
        Ok(StorageFigures {
            main_bytes: size(""),
            wal_bytes: size("-wal"),
            wal_bytes_before,
            actions: row.try_get(0).map_err(AuditError::Read)?,
            bodies: row.try_get(1).map_err(AuditError::Read)?,
            spans: row.try_get(2).map_err(AuditError::Read)?,
        })
    }
}

/// The `WHERE` conditions of `f` on `decision_spans d`, after a `WHERE 1 = 1`: a span matches
/// when one of its runs would.
fn push_span_filter(q: &mut QueryBuilder<'_, sqlx::Sqlite>, f: &ActionFilter) {
    if let Some(run) = f.run_id {
        q.push(" AND d.last_run_id >= ")
            .push_bind(run)
            .push(" AND d.first_run_id <= ")
            .push_bind(run);
    }
    if let Some(rule) = &f.rule {
        q.push(" AND d.rule = ").push_bind(rule.clone());
    }
    if let Some(email) = &f.user_email {
        q.push(" AND d.user_email_folded = ")
            .push_bind(crate::rules::fold_case(email).into_owned());
    }
    if let Some(kind) = f.resource_kind {
        q.push(" AND d.resource_kind = ").push_bind(kind.as_str());
    }
    if let Some(id) = &f.resource_id {
        q.push(" AND d.resource_id = ").push_bind(id.clone());
    }
    if let Some(since) = f.since {
        q.push(" AND d.last_decided_at >= ").push_bind(ts(since));
    }
    if let Some(until) = f.until {
        q.push(" AND d.first_decided_at < ").push_bind(ts(until));
    }
}

/// The decisions of run `?1` as one table (`decisions`): its action rows and the spans that
/// cover it, each span with the texts of its last run when that is `?1`. Columns: id (of the
/// action or the span), resource_kind, zone_id, resource_id, device_name, user_email, rule,
/// action, status, status_detail.
pub(super) const RUN_DECISIONS: &str = "(SELECT id, resource_kind, zone_id, resource_id,
        device_name, user_email, rule, action, status, status_detail
     FROM actions WHERE run_id = ?1
     UNION ALL
     SELECT id, resource_kind, zone_id, resource_id, device_name, user_email, rule, action,
        status, CASE WHEN last_run_id = ?1 THEN last_status_detail ELSE status_detail END
     FROM decision_spans WHERE last_run_id >= ?1 AND first_run_id <= ?1) AS decisions";

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use serde_json::value::RawValue;

    use super::*;
    use crate::audit::{RunOutcome, RunSummary};
    use crate::cloudflare::Stamp;
    use crate::config::{Action, Mode};
    use crate::plan::Candidate;
    use crate::resource::{Kind, ResourceId};
    use crate::rules::Why;

    fn candidate(id: &str, days: i64, excluded: bool) -> Candidate {
        let body = format!(r#"{{"id":"{id}","revoked_at":"2026-01-01T00:00:00Z","n":1}}"#);
        Candidate {
            kind: Kind::DeviceRegistration,
            rule: "revoked".to_owned(),
            action: Action::Delete,
            id: ResourceId::parse(id).unwrap(),
            zone: None,
            user_email: Some("Élise@example.com".to_owned()),
            name: format!("laptop-{id}"),
            last_seen_at: Stamp::parse("2026-01-01T00:00:00Z"),
            why: Why::Revoked { days },
            excluded_by: excluded.then(|| "board".to_owned()),
            snapshot: Some(RawValue::from_string(body).unwrap()),
            grace: None,
        }
    }

    /// What a reader sees of a decision, whatever row holds it.
    type Seen = (
        String,
        String,
        String,
        String,
        Option<String>,
        String,
        String,
        String,
    );

    async fn seen(audit: &AuditStore, run: RunId) -> Vec<Seen> {
        let mut rows: Vec<Seen> = audit
            .actions(&ActionFilter {
                run_id: Some(run.0),
                limit: 100,
                ..ActionFilter::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|r| {
                assert_eq!(r.run_id, run.0);
                (
                    r.resource_id,
                    r.rule,
                    r.status,
                    r.reason,
                    r.excluded_by,
                    r.decided_at,
                    r.user_email.unwrap_or_default() + &r.device_name.unwrap_or_default(),
                    r.snapshot,
                )
            })
            .collect();
        rows.sort();
        rows
    }

    async fn plan_run(audit: &AuditStore, at: &str, days: i64) -> (RunId, Vec<Seen>) {
        let at: DateTime<Utc> = at.parse().unwrap();
        let run = audit.begin_run(Mode::Plan, at).await.unwrap();
        let mut candidates = vec![
            candidate("aaaaaaaa-0000-4000-8000-000000000001", days, false),
            candidate("aaaaaaaa-0000-4000-8000-000000000002", days, true),
            candidate("aaaaaaaa-0000-4000-8000-000000000003", days, false),
        ];
        audit
            .record_decisions(run, at, &mut candidates, BodyForm::Compressed)
            .await
            .unwrap();
        let before = seen(audit, run).await;
        close_planned(audit, run, at).await;
        (run, before)
    }

    async fn close_planned(audit: &AuditStore, run: RunId, at: DateTime<Utc>) {
        audit
            .finish_run(
                run,
                RunOutcome::Planned,
                None,
                &RunSummary::default(),
                &[],
                at,
            )
            .await
            .unwrap();
    }

    async fn count(audit: &AuditStore, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&audit.pool)
            .await
            .unwrap()
    }

    /// A decision that extends a span gives up its copy of the body; a mark first made in its
    /// run moves to the span's body, and reads the same.
    #[tokio::test]
    async fn an_extended_spans_copy_of_its_body_goes_and_a_new_mark_moves_to_the_spans() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditStore::open(&dir.path().join("a.db")).await.unwrap();
        plan_run(&audit, "2026-11-01T00:00:00Z", 300).await;
        let at: DateTime<Utc> = "2026-11-02T00:00:00Z".parse().unwrap();
        let run = audit.begin_run(Mode::Plan, at).await.unwrap();
        let id = "aaaaaaaa-0000-4000-8000-000000000001";
        let mut candidates = vec![candidate(id, 301, false)];
        let actions = audit
            .record_decisions(run, at, &mut candidates, BodyForm::Compressed)
            .await
            .unwrap();
        assert_eq!(
            count(&audit, "snapshot_bodies").await,
            4,
            "stored as decided"
        );
        sqlx::query(
            "INSERT INTO marks (resource_kind, zone_key, id_key, resource_id, rule, action,
                 first_marked_at, first_run_id, first_body_id, last_run_id)
             SELECT 'device_registration', '', ?1, ?1, 'revoked', 'delete', 't', ?2, s.body_id, ?2
             FROM snapshots s WHERE s.action_id = ?3",
        )
        .bind(id)
        .bind(run.0)
        .bind(actions[0])
        .execute(&audit.pool)
        .await
        .unwrap();
        close_planned(&audit, run, at).await;
        assert_eq!(count(&audit, "decision_spans").await, 3, "extended");
        assert_eq!(count(&audit, "snapshot_bodies").await, 3, "the copy went");
        let shared: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM marks m JOIN decision_spans d ON d.body_id = m.first_body_id
             WHERE d.resource_id = ?1",
        )
        .bind(id)
        .fetch_one(&audit.pool)
        .await
        .unwrap();
        assert_eq!(shared, 1);
        let body = audit
            .mark_first_snapshot("device_registration", None, id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(body, candidate(id, 301, false).snapshot.unwrap().get());
        audit.close().await;
    }

    /// A run that did not act reads back, once folded, as it read before: the same objects,
    /// rules, statuses, reasons, times and snapshots. The next run's equal decisions extend
    /// its spans, and each run still reads as itself (its own reason text).
    #[tokio::test]
    async fn a_folded_run_reads_back_as_it_did_before_folding() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditStore::open(&dir.path().join("a.db")).await.unwrap();
        let (first, first_before) = plan_run(&audit, "2026-11-01T00:00:00Z", 300).await;
        assert_eq!(first_before.len(), 3);
        assert_eq!(seen(&audit, first).await, first_before);
        assert_eq!(count(&audit, "actions").await, 0, "folded");
        assert_eq!(count(&audit, "snapshots").await, 0);
        assert_eq!(count(&audit, "decision_spans").await, 3);
        assert_eq!(count(&audit, "snapshot_bodies").await, 3);

        let (second, second_before) = plan_run(&audit, "2026-11-02T00:00:00Z", 301).await;
        assert_eq!(seen(&audit, second).await, second_before);
        assert_eq!(
            seen(&audit, first).await,
            first_before,
            "run 1 still reads as run 1"
        );
        assert_ne!(first_before[0].3, second_before[0].3, "the reasons differ");
        assert_eq!(
            count(&audit, "decision_spans").await,
            3,
            "extended, not added"
        );
        assert_eq!(
            count(&audit, "snapshot_bodies").await,
            3,
            "no body stored twice"
        );

        let (third, third_before) = plan_run(&audit, "2026-11-03T00:00:00Z", 302).await;
        // A run inside a span reads its own time, and the texts of the span's first run: only
        // the first and the latest reason are kept.
        let inside: Vec<Seen> = second_before
            .iter()
            .zip(&first_before)
            .map(|(second, first)| {
                (
                    second.0.clone(),
                    second.1.clone(),
                    second.2.clone(),
                    first.3.clone(),
                    second.4.clone(),
                    second.5.clone(),
                    second.6.clone(),
                    second.7.clone(),
                )
            })
            .collect();
        assert_eq!(seen(&audit, second).await, inside, "a run inside a span");
        assert_eq!(seen(&audit, third).await, third_before);
        let all = audit
            .actions(&ActionFilter {
                limit: 100,
                ..ActionFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 3, "one row per span without --run");
        assert!(all.iter().all(|r| r.id.is_none()
            && r.span_first_run_id == Some(first.0)
            && r.span_last_run_id == Some(third.0)));
        let filter = ActionFilter {
            user_email: Some("élise@EXAMPLE.com".to_owned()),
            limit: 1,
            ..ActionFilter::default()
        };
        assert_eq!(audit.count_actions(&filter).await.unwrap(), 3);
        audit.close().await;
    }

    /// Each action's snapshot reads back byte for byte, whether it was stored compressed (a
    /// body it makes shorter) or as its text.
    #[tokio::test]
    async fn snapshots_read_back_exactly_compressed_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditStore::open(&dir.path().join("a.db")).await.unwrap();
        let run = audit.begin_run(Mode::Apply, Utc::now()).await.unwrap();
        let same = r#"{"id": "x",  "name":"ünïcode \u0000 ☃", "created_at":"2026-01-01T00:00:00.000000Z","updated_at":"2026-01-01T00:00:00.000000Z"}"#;
        let mut tx = audit.pool.begin().await.unwrap();
        for id in 1..=3 {
            sqlx::query(
                "INSERT INTO actions (id, run_id, decided_at, rule, action, resource_kind,
                     resource_id, reason, status)
                 VALUES (?1, ?2, 't', 'r', 'delete', 'device_registration', 'x', 'r', 'done')",
            )
            .bind(id)
            .bind(run.0)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        let bodies: Vec<NewBody> = [(1, same), (2, same), (3, "{}")]
            .into_iter()
            .map(|(id, body)| NewBody::new(id, id, body.to_owned(), BodyForm::Compressed))
            .collect();
        AuditStore::insert_bodies(&mut tx, bodies).await.unwrap();
        tx.commit().await.unwrap();
        let stored: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT typeof(b.body), CAST(b.body AS BLOB) FROM snapshots s
             JOIN snapshot_bodies b ON b.id = s.body_id ORDER BY s.action_id",
        )
        .fetch_all(&audit.pool)
        .await
        .unwrap();
        assert_eq!(stored[0].0, "blob", "compressed");
        assert!(stored[0].1.len() < same.len());
        assert_eq!(stored[1], stored[0], "the same text, stored the same");
        assert_eq!(
            stored[2],
            ("text".to_owned(), b"{}".to_vec()),
            "too short to gain"
        );
        let rows = audit
            .actions(&ActionFilter {
                limit: 10,
                ..ActionFilter::default()
            })
            .await
            .unwrap();
        let bodies: Vec<&str> = rows.iter().map(|r| r.snapshot.as_str()).collect();
        assert_eq!(bodies, ["{}", same, same]);
        audit.close().await;
    }
}
