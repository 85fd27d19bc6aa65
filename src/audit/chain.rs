//! Tamper evidence: the hash chain over the audit records (issue 14), and its verification.
//!
//! Rows change after they are written, so the chain links *events*: whenever a covered record
//! is written or changed, an entry is appended to `audit_chain` with the SHA-256 of its scope
//! as it is after the change, the previous entry's hash, and its own hash over both. Verify
//! checks (a) every link, (b) that the current content of every scope matches its latest
//! entry, (c) that no covered row lacks an entry.
//!
//! Scopes (`record` / `scope`):
//! - `runs` / `<id>`: the run row and its `run_kinds` rows;
//! - `mutations` / `<id>`: the mutation row (intent, then outcome);
//! - `actions` / `<first>-<last>`: the immutable part of a run's decisions in that id range
//!   (every column but `status`, `status_detail`, `mutation_id`) and the SHA-256 of each
//!   snapshot, hashed in Rust while they are inserted;
//! - `action_status` / `<run>:<chunk>`: `id, mutation_id, status, status_detail` of a run's
//!   actions with `id / 1000 = chunk`, chained when the run closes and when a later run
//!   settles one (reconciliation);
//! - `mark_events` / `<first>-<last>`, `marks` / `<kind>/<zone_key>`: the grace marks;
//! - `chain` / `genesis`, `chain` / `anchor`: the chain's own records.
//!
//! Canonical encoding, version 1: a scope's content is SHA-256 over
//! `"zt-janitor audit chain v1\n" record "\n"` then each row (in id or key order) as
//! `name=<t><HEX>,` for each non-NULL column in byte order of the names, then `"\n"`. `<t>`
//! is SQLite's type letter (`i`, `t`, `r`, `b`) and `<HEX>` is SQLite's `hex()` of the value
//! (of its decimal text, for a number). NULL columns are left out, so a later migration that
//! adds a nullable column changes no digest, while an empty text (`name=t,`) stays distinct
//! from NULL. A decision row ends with `snapshot=t<HEX of the body's SHA-256 in hex>,`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use chrono::Utc;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{QueryBuilder, Row, SqliteConnection};

use super::{ts, AuditError, AuditStore, RunId};

const VERSION: &str = "zt-janitor audit chain v1";
const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Ids per `action_status` chunk and at most per `actions` or `mark_events` range: what a
/// verify failure narrows a changed value down to.
pub(crate) const CHUNK: i64 = 1000;
/// The columns of `actions` a decision's later life changes.
const MUTABLE: [&str; 3] = ["mutation_id", "status", "status_detail"];
/// Runs chained per transaction when an existing database gets its genesis.
const GENESIS_RUNS: i64 = 20;

/// A covered scope of the audit log; [`AuditStore::rechain`] appends an entry with its
/// current content.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Run(i64),
    Mutation { run: i64, id: i64 },
    Decisions { run: i64, first: i64, last: i64 },
    Status { run: i64, chunk: i64 },
    MarkEvents { run: i64, first: i64, last: i64 },
    Marks { kind: String, zone_key: String },
}

impl Scope {
    fn record(&self) -> &'static str {
        match self {
            Scope::Run(_) => "runs",
            Scope::Mutation { .. } => "mutations",
            Scope::Decisions { .. } => "actions",
            Scope::Status { .. } => "action_status",
            Scope::MarkEvents { .. } => "mark_events",
            Scope::Marks { .. } => "marks",
        }
    }

    fn key(&self) -> String {
        match self {
            Scope::Run(id) | Scope::Mutation { id, .. } => id.to_string(),
            Scope::Decisions { first, last, .. } | Scope::MarkEvents { first, last, .. } => {
                format!("{first}-{last}")
            }
            Scope::Status { run, chunk } => format!("{run}:{chunk}"),
            Scope::Marks { kind, zone_key } => format!("{kind}/{zone_key}"),
        }
    }

    fn run(&self) -> Option<i64> {
        match self {
            Scope::Run(run)
            | Scope::Mutation { run, .. }
            | Scope::Decisions { run, .. }
            | Scope::Status { run, .. }
            | Scope::MarkEvents { run, .. } => Some(*run),
            Scope::Marks { .. } => None,
        }
    }

    fn range(&self) -> (Option<i64>, Option<i64>) {
        match self {
            Scope::Decisions { first, last, .. } | Scope::MarkEvents { first, last, .. } => {
                (Some(*first), Some(*last))
            }
            Scope::Status { chunk, .. } => (Some(chunk * CHUNK), Some(chunk * CHUNK + CHUNK - 1)),
            _ => (None, None),
        }
    }

    /// The scope an entry names; `None` for the chain's own records.
    fn parse(record: &str, scope: &str, run: Option<i64>) -> Option<Scope> {
        let int = |s: &str| s.parse::<i64>().ok();
        let range = |s: &str| {
            let (a, b) = s.split_once('-')?;
            Some((int(a)?, int(b)?))
        };
        Some(match record {
            "runs" => Scope::Run(int(scope)?),
            "mutations" => Scope::Mutation {
                run: run?,
                id: int(scope)?,
            },
            "actions" => {
                let (first, last) = range(scope)?;
                Scope::Decisions {
                    run: run?,
                    first,
                    last,
                }
            }
            "mark_events" => {
                let (first, last) = range(scope)?;
                Scope::MarkEvents {
                    run: run?,
                    first,
                    last,
                }
            }
            "action_status" => {
                let (r, c) = scope.split_once(':')?;
                Scope::Status {
                    run: int(r)?,
                    chunk: int(c)?,
                }
            }
            "marks" => {
                let (kind, zone_key) = scope.split_once('/')?;
                Scope::Marks {
                    kind: kind.to_owned(),
                    zone_key: zone_key.to_owned(),
                }
            }
            _ => return None,
        })
    }

    /// The table and rows it covers, as a verify report names them.
    fn describe(&self) -> (&'static str, String) {
        match self {
            Scope::Run(id) => ("runs", format!("id {id}")),
            Scope::Mutation { id, .. } => ("mutations", format!("id {id}")),
            Scope::Decisions { run, first, last } => {
                ("actions", format!("ids {first}..{last} of run {run}"))
            }
            Scope::Status { run, chunk } => (
                "actions",
                format!(
                    "ids {}..{} of run {run} (status, status_detail, mutation_id)",
                    chunk * CHUNK,
                    chunk * CHUNK + CHUNK - 1
                ),
            ),
            Scope::MarkEvents { run, first, last } => {
                ("mark_events", format!("ids {first}..{last} of run {run}"))
            }
            Scope::Marks { kind, zone_key } => (
                "marks",
                format!("kind {kind}, zone {:?}", zone_key.as_str()),
            ),
        }
    }
}

/// An entry about to be appended.
#[derive(Debug, Clone)]
pub(crate) struct NewEntry {
    record: &'static str,
    scope: String,
    event: &'static str,
    run: Option<i64>,
    first: Option<i64>,
    last: Option<i64>,
    rows: i64,
    content: String,
}

impl NewEntry {
    fn of(scope: &Scope, event: &'static str, rows: i64, content: String) -> NewEntry {
        let (first, last) = scope.range();
        NewEntry {
            record: scope.record(),
            scope: scope.key(),
            event,
            run: scope.run(),
            first,
            last,
            rows,
            content,
        }
    }
}

/// One stored entry.
#[derive(Debug, Clone)]
struct Entry {
    seq: i64,
    at: String,
    record: String,
    scope: String,
    event: String,
    run: Option<i64>,
    first: Option<i64>,
    last: Option<i64>,
    rows: i64,
    content: String,
    prev: String,
    sha256: String,
}

/// Each entry's hash: SHA-256 over its fields, each as `<length>:<text>\n`.
#[allow(clippy::too_many_arguments)]
fn entry_hash(
    seq: i64,
    at: &str,
    record: &str,
    scope: &str,
    event: &str,
    run: Option<i64>,
    first: Option<i64>,
    last: Option<i64>,
    rows: i64,
    content: &str,
    prev: &str,
) -> String {
    let opt = |v: Option<i64>| v.map_or_else(|| "null".to_owned(), |v| v.to_string());
    let mut h = Sha256::new();
    for field in [
        VERSION,
        &seq.to_string(),
        at,
        record,
        scope,
        event,
        &opt(run),
        &opt(first),
        &opt(last),
        &rows.to_string(),
        content,
        prev,
    ] {
        h.update(format!("{}:", field.len()));
        h.update(field);
        h.update("\n");
    }
    hex_lower(&h.finalize())
}

/// Writes the hex of `bytes` into `out` (twice their length) with `digits`.
fn hex_to(out: &mut [u8], bytes: &[u8], digits: &[u8; 16]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = digits[usize::from(b >> 4)];
        pair[1] = digits[usize::from(b & 15)];
    }
}

const LOWER: &[u8; 16] = b"0123456789abcdef";

fn hex_lower(bytes: &[u8]) -> String {
    let mut out = vec![0; 2 * bytes.len()];
    hex_to(&mut out, bytes, LOWER);
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// Appends the upper-case hex of `bytes` (as SQLite's `hex()` writes it) to `out`.
fn hex_into(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    out.resize(start + 2 * bytes.len(), 0);
    hex_to(&mut out[start..], bytes, b"0123456789ABCDEF");
}

/// A scope's digest, started with the version and record name.
fn content_hasher(record: &str) -> Sha256 {
    let mut h = Sha256::new();
    h.update(VERSION);
    h.update("\n");
    h.update(record);
    h.update("\n");
    h
}

/// The row encoding of version 1, written from Rust values (the insert path), identical to
/// what [`row_expr`] makes SQLite write for the same row. It writes into a buffer, hashed once
/// per row: feeding the hash field by field cost more than hashing.
pub(crate) struct RowEncoder<'b>(&'b mut Vec<u8>);

impl RowEncoder<'_> {
    pub(crate) fn text(&mut self, name: &str, value: Option<&str>) -> &mut Self {
        if let Some(v) = value {
            self.field(name, b't', v.as_bytes());
        }
        self
    }

    pub(crate) fn int(&mut self, name: &str, value: Option<i64>) -> &mut Self {
        if let Some(v) = value {
            self.field(name, b'i', v.to_string().as_bytes());
        }
        self
    }

    fn field(&mut self, name: &str, kind: u8, value: &[u8]) {
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(&[b'=', kind]);
        hex_into(self.0, value);
        self.0.push(b',');
    }

    /// `snapshot`: the SHA-256 of the snapshot body, written as its lower-case hex text.
    fn snapshot(&mut self, sha256: Option<&[u8; 32]>) -> &mut Self {
        if let Some(sha) = sha256 {
            let mut text = [0u8; 64];
            hex_to(&mut text, sha, LOWER);
            self.field("snapshot", b't', &text);
        }
        self
    }

    fn end(&mut self) {
        self.0.push(b'\n');
    }
}

/// The digests of a run's decisions as they are inserted, one `actions` entry per range of
/// at most [`CHUNK`] consecutive ids.
pub(crate) struct DecisionDigests {
    run: i64,
    current: Option<(i64, i64, i64, Sha256)>,
    done: Vec<NewEntry>,
    row: Vec<u8>,
}

impl DecisionDigests {
    pub(crate) fn new(run: RunId) -> Self {
        DecisionDigests {
            run: run.0,
            current: None,
            done: Vec::new(),
            row: Vec::new(),
        }
    }

    /// Adds decision `id` (ids come in increasing order): `fields` writes its columns in
    /// byte order of their names, leaving out the mutable ones; `snapshot` is its body.
    /// `snapshot`: the SHA-256 of the decision's snapshot body.
    pub(crate) fn add(
        &mut self,
        id: i64,
        snapshot: &[u8; 32],
        fields: impl FnOnce(&mut RowEncoder),
    ) {
        if let Some((first, last, _, _)) = &self.current {
            if id != last + 1 || id - first >= CHUNK {
                self.close();
            }
        }
        let (_, last, rows, h) = self
            .current
            .get_or_insert_with(|| (id, id, 0, content_hasher("actions")));
        *last = id;
        *rows += 1;
        self.row.clear();
        let mut enc = RowEncoder(&mut self.row);
        fields(&mut enc);
        enc.snapshot(Some(snapshot)).end();
        h.update(&self.row);
    }

    fn close(&mut self) {
        if let Some((first, last, rows, h)) = self.current.take() {
            let scope = Scope::Decisions {
                run: self.run,
                first,
                last,
            };
            self.done.push(NewEntry::of(
                &scope,
                "decided",
                rows,
                hex_lower(&h.finalize()),
            ));
        }
    }

    pub(crate) fn finish(mut self) -> Vec<NewEntry> {
        self.close();
        self.done
    }
}

/// The SQL expression of one row's version-1 encoding (without the final newline), over
/// `columns` of table alias `t`.
fn row_expr(columns: &[String], t: &str) -> String {
    let mut sorted: Vec<&String> = columns.iter().collect();
    sorted.sort();
    if sorted.is_empty() {
        return "''".to_owned();
    }
    sorted
        .iter()
        .map(|c| column_expr(t, c, ColumnType::Asked))
        .collect::<Vec<_>>()
        .join(" || ")
}

/// Where a column's type letter comes from in [`column_expr`].
#[derive(Clone, Copy)]
enum ColumnType {
    /// SQLite's `typeof()` of each value.
    Asked,
    /// The type this process writes the column with, and whether it may be NULL.
    Written { letter: char, nullable: bool },
}

/// One column's part of version 1's row encoding: `name=<t><HEX>,`, or nothing for NULL.
fn column_expr(t: &str, c: &str, ty: ColumnType) -> String {
    let (field, nullable) = match ty {
        ColumnType::Asked => (
            format!("'{c}=' || substr(typeof({t}.\"{c}\"), 1, 1) || hex({t}.\"{c}\") || ','"),
            true,
        ),
        ColumnType::Written { letter, nullable } => (
            format!("'{c}={letter}' || hex({t}.\"{c}\") || ','"),
            nullable,
        ),
    };
    if nullable {
        format!("(CASE WHEN {t}.\"{c}\" IS NULL THEN '' ELSE {field} END)")
    } else {
        field
    }
}

/// The row expressions of the covered tables, read once per store from the schema (so that
/// every column is covered, and a column a later migration adds is covered too).
#[derive(Default)]
pub(crate) struct Exprs(Mutex<HashMap<&'static str, String>>);

impl Exprs {
    async fn get(
        &self,
        conn: &mut SqliteConnection,
        table: &'static str,
    ) -> Result<String, sqlx::Error> {
        if let Some(e) = self.0.lock().unwrap_or_else(|e| e.into_inner()).get(table) {
            return Ok(e.clone());
        }
        let (source, skip): (&str, &[&str]) = match table {
            "decisions" => ("actions", &MUTABLE),
            other => (other, &[]),
        };
        let columns: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info(?1) ORDER BY name")
                .bind(source)
                .fetch_all(&mut *conn)
                .await?;
        let columns: Vec<String> = match table {
            "status" => MUTABLE
                .iter()
                .map(|c| (*c).to_owned())
                .chain(["id".to_owned()])
                .collect(),
            _ => columns
                .into_iter()
                .filter(|c| !skip.contains(&c.as_str()))
                .collect(),
        };
        let expr = row_expr(&columns, "t");
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(table, expr.clone());
        Ok(expr)
    }
}

/// The current content of `scope`: its row count and digest.
async fn content(
    conn: &mut SqliteConnection,
    exprs: &Exprs,
    scope: &Scope,
) -> Result<(i64, String), sqlx::Error> {
    let mut h = content_hasher(scope.record());
    let rows = match scope {
        Scope::Run(id) => {
            let run = exprs.get(conn, "runs").await?;
            let kinds = exprs.get(conn, "run_kinds").await?;
            let row: Option<String> =
                sqlx::query_scalar(&format!("SELECT {run} FROM runs t WHERE t.id = ?1"))
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?;
            let kinds: Option<String> = sqlx::query_scalar(&format!(
                "SELECT group_concat({kinds} || char(10), '' ORDER BY t.kind)
                 FROM run_kinds t WHERE t.run_id = ?1"
            ))
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
            if let Some(row) = &row {
                h.update(row);
                h.update("\n");
            }
            h.update(kinds.unwrap_or_default());
            i64::from(row.is_some())
        }
        Scope::Mutation { id, .. } => {
            let expr = exprs.get(conn, "mutations").await?;
            let row: Option<String> =
                sqlx::query_scalar(&format!("SELECT {expr} FROM mutations t WHERE t.id = ?1"))
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?;
            if let Some(row) = &row {
                h.update(row);
                h.update("\n");
            }
            i64::from(row.is_some())
        }
        Scope::Decisions { run, first, last } => {
            use futures_util::TryStreamExt;
            let expr = exprs.get(conn, "decisions").await?;
            let sql = format!(
                "SELECT {expr}, CAST(b.body AS BLOB) FROM actions t
                 LEFT JOIN snapshots s ON s.action_id = t.id
                 LEFT JOIN snapshot_bodies b ON b.id = s.body_id
                 WHERE t.run_id = ?1 AND t.id BETWEEN ?2 AND ?3 ORDER BY t.id"
            );
            let mut stream = sqlx::query(&sql)
                .bind(run)
                .bind(first)
                .bind(last)
                .fetch(&mut *conn);
            let mut rows = 0;
            while let Some(row) = stream.try_next().await? {
                let enc: String = row.try_get(0)?;
                let body: Option<Vec<u8>> = row.try_get(1)?;
                h.update(enc);
                let digest = body
                    .as_deref()
                    .map(|b| super::body_sha256(&super::body::decoded_bytes(b)));
                let mut row = Vec::with_capacity(80);
                RowEncoder(&mut row).snapshot(digest.as_ref()).end();
                h.update(&row);
                rows += 1;
            }
            rows
        }
        Scope::Status { run, chunk } => {
            let expr = exprs.get(conn, "status").await?;
            let (rows, text): (i64, Option<String>) = sqlx::query_as(&format!(
                "SELECT count(*), group_concat({expr} || char(10), '' ORDER BY t.id)
                 FROM actions t WHERE t.run_id = ?1 AND t.id BETWEEN ?2 AND ?3"
            ))
            .bind(run)
            .bind(chunk * CHUNK)
            .bind(chunk * CHUNK + CHUNK - 1)
            .fetch_one(&mut *conn)
            .await?;
            h.update(text.unwrap_or_default());
            rows
        }
        Scope::MarkEvents { run, first, last } => {
            let expr = exprs.get(conn, "mark_events").await?;
            let (rows, text): (i64, Option<String>) = sqlx::query_as(&format!(
                "SELECT count(*), group_concat({expr} || char(10), '' ORDER BY t.id)
                 FROM mark_events t WHERE t.run_id = ?1 AND t.id BETWEEN ?2 AND ?3"
            ))
            .bind(run)
            .bind(first)
            .bind(last)
            .fetch_one(&mut *conn)
            .await?;
            h.update(text.unwrap_or_default());
            rows
        }
        Scope::Marks { kind, zone_key } => {
            let expr = exprs.get(conn, "marks").await?;
            let (rows, text): (i64, Option<String>) = sqlx::query_as(&format!(
                "SELECT count(*), group_concat({expr} || char(10), '' ORDER BY t.id_key)
                 FROM marks t WHERE t.resource_kind = ?1 AND t.zone_key = ?2"
            ))
            .bind(kind)
            .bind(zone_key)
            .fetch_one(&mut *conn)
            .await?;
            h.update(text.unwrap_or_default());
            rows
        }
    };
    Ok((rows, hex_lower(&h.finalize())))
}

/// The last entry's sequence number and hash.
async fn head(conn: &mut SqliteConnection) -> Result<Option<(i64, String)>, sqlx::Error> {
    sqlx::query_as("SELECT seq, sha256 FROM audit_chain ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await
}

/// Appends `entries`, in order, after the current head.
pub(crate) async fn append(
    conn: &mut SqliteConnection,
    entries: &[NewEntry],
) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let (mut seq, mut prev) = head(conn).await?.unwrap_or((0, ZERO.to_owned()));
    let at = ts(Utc::now());
    let mut rows = Vec::with_capacity(entries.len());
    for e in entries {
        seq += 1;
        let sha = entry_hash(
            seq, &at, e.record, &e.scope, e.event, e.run, e.first, e.last, e.rows, &e.content,
            &prev,
        );
        rows.push((seq, e, std::mem::replace(&mut prev, sha.clone()), sha));
    }
    for batch in rows.chunks(500) {
        let mut q = QueryBuilder::new(
            "INSERT INTO audit_chain (seq, at, record, scope, event, run_id, first_id, last_id,
                 row_count, content_sha256, prev_sha256, sha256) ",
        );
        q.push_values(batch, |mut row, (seq, e, prev, sha)| {
            row.push_bind(*seq)
                .push_bind(&at)
                .push_bind(e.record)
                .push_bind(&e.scope)
                .push_bind(e.event)
                .push_bind(e.run)
                .push_bind(e.first)
                .push_bind(e.last)
                .push_bind(e.rows)
                .push_bind(&e.content)
                .push_bind(prev)
                .push_bind(sha);
        });
        q.build().persistent(false).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Entries with the current content of each of `scopes`.
async fn entries_for(
    conn: &mut SqliteConnection,
    exprs: &Exprs,
    event: &'static str,
    scopes: &[Scope],
) -> Result<Vec<NewEntry>, sqlx::Error> {
    let mut entries = Vec::with_capacity(scopes.len());
    for scope in scopes {
        let (rows, digest) = content(conn, exprs, scope).await?;
        entries.push(NewEntry::of(scope, event, rows, digest));
    }
    Ok(entries)
}

/// Whose writes the statuses of a closing run are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Statuses {
    /// This process wrote every one of them, with the types it always writes.
    Written,
    /// Left by a process that ended before closing its run: anything may have happened since.
    Found,
}

/// Version 1's encoding of the `action_status` columns for rows this process wrote: `id` an
/// integer, `status` a text, `mutation_id` an integer or NULL, `status_detail` a text or NULL.
/// The same bytes as [`row_expr`] for those types, without asking SQLite each value's type,
/// which was a third of the closing run's time; `verify` uses [`row_expr`], so a value stored
/// with another type shows as a break there.
fn written_status_expr() -> String {
    let written = |letter, nullable| ColumnType::Written { letter, nullable };
    // In byte order of the names, as `row_expr` sorts them.
    [
        ("id", written('i', false)),
        ("mutation_id", written('i', true)),
        ("status", written('t', false)),
        ("status_detail", written('t', true)),
    ]
    .map(|(c, ty)| column_expr("t", c, ty))
    .join(" || ")
}

/// Entries for the status of every action of `run`, chunk by chunk, in one query.
async fn run_status_entries(
    conn: &mut SqliteConnection,
    exprs: &Exprs,
    event: &'static str,
    run: i64,
    statuses: Statuses,
) -> Result<Vec<NewEntry>, sqlx::Error> {
    let expr = match statuses {
        Statuses::Written => written_status_expr(),
        Statuses::Found => exprs.get(conn, "status").await?,
    };
    let chunks: Vec<(i64, i64, Option<String>)> = sqlx::query_as(&format!(
        "SELECT t.id / {CHUNK}, count(*), group_concat({expr} || char(10), '' ORDER BY t.id)
         FROM actions t WHERE t.run_id = ?1 GROUP BY 1 ORDER BY 1"
    ))
    .bind(run)
    .fetch_all(&mut *conn)
    .await?;
    // A chunk chained before whose rows are all gone (folded, or deleted) is chained empty.
    let known: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT scope FROM audit_chain WHERE run_id = ?1 AND record = 'action_status'",
    )
    .bind(run)
    .fetch_all(&mut *conn)
    .await?;
    let mut entries = Vec::with_capacity(chunks.len());
    for (chunk, rows, text) in &chunks {
        let mut h = content_hasher("action_status");
        h.update(text.as_deref().unwrap_or_default());
        let scope = Scope::Status { run, chunk: *chunk };
        entries.push(NewEntry::of(&scope, event, *rows, hex_lower(&h.finalize())));
    }
    for key in known {
        let Some(scope) = Scope::parse("action_status", &key, Some(run)) else {
            continue;
        };
        if !entries.iter().any(|e| e.scope == key) {
            let (rows, digest) = content(conn, exprs, &scope).await?;
            entries.push(NewEntry::of(&scope, event, rows, digest));
        }
    }
    Ok(entries)
}

/// The `actions` scopes of rows `ids` (increasing) of `run`: ranges of consecutive ids.
pub(crate) fn decision_scopes(run: RunId, ids: &[i64]) -> Vec<Scope> {
    ranges(ids)
        .into_iter()
        .map(|(first, last)| Scope::Decisions {
            run: run.0,
            first,
            last,
        })
        .collect()
}

/// Consecutive runs of `ids` (increasing), at most [`CHUNK`] long each.
fn ranges(ids: &[i64]) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for &id in ids {
        match out.last_mut() {
            Some((first, last)) if id == *last + 1 && id - *first < CHUNK => *last = id,
            _ => out.push((id, id)),
        }
    }
    out
}

fn write(e: sqlx::Error) -> AuditError {
    AuditError::Write(e)
}

impl AuditStore {
    /// Appends an entry with the current content of each of `scopes`, inside the caller's
    /// transaction: the one call any writer makes after changing covered rows (a fold of
    /// decisions into spans re-chains the run's `actions` and `action_status` scopes, which
    /// then hold no rows).
    pub(crate) async fn rechain(
        &self,
        conn: &mut SqliteConnection,
        event: &'static str,
        scopes: &[Scope],
    ) -> Result<(), AuditError> {
        let entries = entries_for(conn, &self.exprs, event, scopes)
            .await
            .map_err(write)?;
        append(conn, &entries).await.map_err(write)
    }

    /// Chains a run's row and the status of all its actions: when it closes.
    pub(crate) async fn rechain_closed_run(
        &self,
        conn: &mut SqliteConnection,
        event: &'static str,
        run: i64,
        statuses: Statuses,
    ) -> Result<(), AuditError> {
        let mut entries = entries_for(conn, &self.exprs, event, &[Scope::Run(run)])
            .await
            .map_err(write)?;
        entries.extend(
            run_status_entries(conn, &self.exprs, event, run, statuses)
                .await
                .map_err(write)?,
        );
        append(conn, &entries).await.map_err(write)
    }

    /// Chains what one journal entry changed, with one read of its calls and one append:
    /// each call (`mutations`: id and event; a withdrawn one, gone, as empty) and, when `run`
    /// is already closed (reconciliation), the status of the actions it settled.
    pub(crate) async fn chain_journal(
        &self,
        conn: &mut SqliteConnection,
        run: RunId,
        mutations: &[(i64, &'static str)],
        settled: &[i64],
    ) -> Result<(), AuditError> {
        let mut entries = Vec::with_capacity(mutations.len());
        if !mutations.is_empty() {
            let expr = self.exprs.get(conn, "mutations").await.map_err(write)?;
            let mut found: HashMap<i64, String> = HashMap::with_capacity(mutations.len());
            for batch in mutations.chunks(500) {
                let mut q = QueryBuilder::new(format!(
                    "SELECT t.id, {expr} FROM mutations t WHERE t.id IN ("
                ));
                let mut ids = q.separated(", ");
                for (id, _) in batch {
                    ids.push_bind(*id);
                }
                q.push(")");
                let rows: Vec<(i64, String)> = q
                    .build_query_as()
                    .persistent(false)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(write)?;
                found.extend(rows);
            }
            for (id, event) in mutations {
                let mut h = content_hasher("mutations");
                let row = found.get(id);
                if let Some(row) = row {
                    h.update(row);
                    h.update("\n");
                }
                let scope = Scope::Mutation {
                    run: run.0,
                    id: *id,
                };
                entries.push(NewEntry::of(
                    &scope,
                    event,
                    i64::from(row.is_some()),
                    hex_lower(&h.finalize()),
                ));
            }
        }
        entries.extend(self.settled_entries(conn, run, settled).await?);
        append(conn, &entries).await.map_err(write)
    }

    /// Entries for the status chunks of actions `ids` of `run` if the run is closed; an open
    /// run's statuses are chained when it closes.
    async fn settled_entries(
        &self,
        conn: &mut SqliteConnection,
        run: RunId,
        ids: &[i64],
    ) -> Result<Vec<NewEntry>, AuditError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let closed: Option<bool> =
            sqlx::query_scalar("SELECT outcome IS NOT NULL FROM runs WHERE id = ?1")
                .bind(run.0)
                .fetch_optional(&mut *conn)
                .await
                .map_err(write)?;
        if closed != Some(true) {
            return Ok(Vec::new());
        }
        let mut chunks: Vec<i64> = ids.iter().map(|id| id / CHUNK).collect();
        chunks.sort_unstable();
        chunks.dedup();
        let scopes: Vec<Scope> = chunks
            .into_iter()
            .map(|chunk| Scope::Status { run: run.0, chunk })
            .collect();
        entries_for(conn, &self.exprs, "settled", &scopes)
            .await
            .map_err(write)
    }

    /// Re-chains the status chunks of actions `ids` of `run` if the run is closed; an open
    /// run's statuses are chained when it closes.
    pub(crate) async fn rechain_settled(
        &self,
        conn: &mut SqliteConnection,
        run: RunId,
        ids: &[i64],
    ) -> Result<(), AuditError> {
        let entries = self.settled_entries(conn, run, ids).await?;
        append(conn, &entries).await.map_err(write)
    }

    /// Chains the mark events written since `after` (by run `run`) and the marks of one part.
    pub(crate) async fn rechain_marks(
        &self,
        conn: &mut SqliteConnection,
        run: RunId,
        after: i64,
        kind: &str,
        zone_key: &str,
    ) -> Result<(), AuditError> {
        let ids: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM mark_events WHERE id > ?1 ORDER BY id")
                .bind(after)
                .fetch_all(&mut *conn)
                .await
                .map_err(write)?;
        let mut scopes: Vec<Scope> = ranges(&ids)
            .into_iter()
            .map(|(first, last)| Scope::MarkEvents {
                run: run.0,
                first,
                last,
            })
            .collect();
        scopes.push(Scope::Marks {
            kind: kind.to_owned(),
            zone_key: zone_key.to_owned(),
        });
        self.rechain(conn, "marks", &scopes).await
    }

    /// Re-chains every scope of run `run` of the given records (all when empty), with their
    /// content now: e.g. `actions` and `action_status` once its decisions are folded into
    /// spans and their rows deleted. Returns the entries appended.
    pub(crate) async fn rechain_run_scopes(
        &self,
        conn: &mut SqliteConnection,
        event: &'static str,
        run: RunId,
        records: &[&str],
    ) -> Result<Vec<NewEntry>, AuditError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT DISTINCT record, scope FROM audit_chain WHERE run_id = ?1")
                .bind(run.0)
                .fetch_all(&mut *conn)
                .await
                .map_err(write)?;
        let scopes: Vec<Scope> = rows
            .iter()
            .filter(|(record, _)| records.is_empty() || records.contains(&record.as_str()))
            .filter_map(|(record, scope)| Scope::parse(record, scope, Some(run.0)))
            .collect();
        let entries = entries_for(conn, &self.exprs, event, &scopes)
            .await
            .map_err(write)?;
        append(conn, &entries).await.map_err(write)?;
        Ok(entries)
    }

    /// For pruning, inside its transaction, once every row of `runs` (the run rows, their
    /// actions and snapshots, mutations, run_kinds and mark events) is deleted: appends an
    /// entry per pruned scope (now empty), deletes those scopes' entries, and appends an
    /// anchor naming the last pruned hash and committing to the entries kept before it, from
    /// which verify then checks the links. A scope that still holds rows is chained as it is
    /// and kept. Returns the number of entries deleted.
    pub(crate) async fn chain_pruned_runs(
        &self,
        conn: &mut SqliteConnection,
        runs: &[RunId],
    ) -> Result<u64, AuditError> {
        let mut entries = Vec::new();
        for run in runs {
            entries.extend(self.rechain_run_scopes(conn, "pruned", *run, &[]).await?);
        }
        let mut deleted = 0;
        for e in entries.iter().filter(|e| e.rows == 0) {
            deleted += sqlx::query("DELETE FROM audit_chain WHERE record = ?1 AND scope = ?2")
                .bind(e.record)
                .bind(&e.scope)
                .execute(&mut *conn)
                .await
                .map_err(write)?
                .rows_affected();
        }
        let kept: Vec<(i64, String)> =
            sqlx::query_as("SELECT seq, sha256 FROM audit_chain ORDER BY seq")
                .fetch_all(&mut *conn)
                .await
                .map_err(write)?;
        let anchor = NewEntry {
            record: "chain",
            scope: "anchor".to_owned(),
            event: "pruned",
            run: None,
            first: None,
            last: None,
            rows: kept.len() as i64,
            content: kept_digest(kept.iter().map(|(s, h)| (*s, h.as_str()))),
        };
        append(conn, &[anchor]).await.map_err(write)?;
        Ok(deleted)
    }

    /// Public form of [`AuditStore::chain_pruned_runs`] in a transaction of its own, for an
    /// operator's manual prune and the tests.
    pub async fn record_pruned_runs(&self, runs: &[RunId]) -> Result<u64, AuditError> {
        let _timer = self.timer();
        let mut tx = self.pool.begin().await.map_err(write)?;
        let deleted = self.chain_pruned_runs(&mut tx, runs).await?;
        tx.commit().await.map_err(write)?;
        Ok(deleted)
    }

    /// Gives the records of a database written before the chain existed their entries, in
    /// transactions of [`GENESIS_RUNS`] runs (resumed after a crash), then the `genesis`
    /// record. Nothing to do once that exists; a new database gets it at once.
    pub(crate) async fn chain_genesis(&self) -> Result<(), AuditError> {
        let mut conn = self.pool.acquire().await.map_err(write)?;
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM audit_chain WHERE record = 'chain' AND scope = 'genesis'",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(write)?;
        if done > 0 {
            return Ok(());
        }
        drop(conn);
        let mut chained = 0;
        loop {
            let mut tx = self.pool.begin().await.map_err(write)?;
            let after: i64 = sqlx::query_scalar(
                "SELECT coalesce(max(run_id), 0) FROM audit_chain WHERE event = 'genesis'",
            )
            .fetch_one(&mut *tx)
            .await
            .map_err(write)?;
            let runs: Vec<i64> =
                sqlx::query_scalar("SELECT id FROM runs WHERE id > ?1 ORDER BY id LIMIT ?2")
                    .bind(after)
                    .bind(GENESIS_RUNS)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(write)?;
            if runs.is_empty() {
                let parts: Vec<(String, String)> =
                    sqlx::query_as("SELECT DISTINCT resource_kind, zone_key FROM marks")
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(write)?;
                let scopes: Vec<Scope> = parts
                    .into_iter()
                    .map(|(kind, zone_key)| Scope::Marks { kind, zone_key })
                    .collect();
                self.rechain(&mut tx, "genesis", &scopes).await?;
                let genesis = NewEntry {
                    record: "chain",
                    scope: "genesis".to_owned(),
                    event: "genesis",
                    run: None,
                    first: None,
                    last: None,
                    rows: chained,
                    content: hex_lower(&content_hasher("chain").finalize()),
                };
                append(&mut tx, &[genesis]).await.map_err(write)?;
                tx.commit().await.map_err(write)?;
                if chained > 0 {
                    tracing::info!(
                        runs = chained,
                        "audit hash chain: records written before it are chained (genesis)"
                    );
                }
                return Ok(());
            }
            for run in runs {
                let scopes = self.existing_scopes(&mut tx, run).await?;
                self.rechain(&mut tx, "genesis", &scopes).await?;
                chained += 1;
            }
            tx.commit().await.map_err(write)?;
        }
    }

    /// Every scope of run `run` that holds rows, for the genesis of an existing database.
    async fn existing_scopes(
        &self,
        conn: &mut SqliteConnection,
        run: i64,
    ) -> Result<Vec<Scope>, AuditError> {
        let mut scopes = vec![Scope::Run(run)];
        let mutations: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM mutations WHERE run_id = ?1 ORDER BY id")
                .bind(run)
                .fetch_all(&mut *conn)
                .await
                .map_err(write)?;
        scopes.extend(mutations.into_iter().map(|id| Scope::Mutation { run, id }));
        let actions: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM actions WHERE run_id = ?1 ORDER BY id")
                .bind(run)
                .fetch_all(&mut *conn)
                .await
                .map_err(write)?;
        scopes.extend(decision_scopes(RunId(run), &actions));
        let mut chunks: Vec<i64> = actions.iter().map(|id| id / CHUNK).collect();
        chunks.dedup();
        scopes.extend(chunks.into_iter().map(|chunk| Scope::Status { run, chunk }));
        let events: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM mark_events WHERE run_id = ?1 ORDER BY id")
                .bind(run)
                .fetch_all(&mut *conn)
                .await
                .map_err(write)?;
        scopes.extend(
            ranges(&events)
                .into_iter()
                .map(|(first, last)| Scope::MarkEvents { run, first, last }),
        );
        Ok(scopes)
    }

    /// The chain's head: its last entry's sequence number and hash, to be shipped elsewhere.
    pub async fn chain_head(&self) -> Result<Option<ChainHead>, AuditError> {
        let mut conn = self.pool.acquire().await.map_err(AuditError::Read)?;
        Ok(head(&mut conn)
            .await
            .map_err(AuditError::Read)?
            .map(|(seq, sha256)| ChainHead { seq, sha256 }))
    }

    /// `zt-janitor audit verify`: walks the chain in one read transaction and reports the
    /// first broken link, if any.
    pub async fn verify_chain(&self) -> Result<Verification, AuditError> {
        let mut tx = self.pool.begin().await.map_err(AuditError::Read)?;
        let v = self.verify_chain_in(&mut tx).await;
        tx.rollback().await.map_err(AuditError::Read)?;
        v
    }

    async fn verify_chain_in(&self, tx: &mut SqliteConnection) -> Result<Verification, AuditError> {
        let read = AuditError::Read;
        let has_chain: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'audit_chain'",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(read)?;
        let mut v = Verification::default();
        if has_chain == 0 {
            v.broken = Some(Broken {
                table: "audit_chain".to_owned(),
                row: "-".to_owned(),
                seq: None,
                what: "this database has no hash chain: it was written by a zt-janitor before \
                       the chain existed. Open it once for writing with this version (e.g. \
                       `zt-janitor plan`), which chains the records it holds"
                    .to_owned(),
            });
            return Ok(v);
        }
        let entries = load_entries(tx).await.map_err(read)?;
        v.entries = entries.len() as u64;
        v.head = entries.last().map(|e| ChainHead {
            seq: e.seq,
            sha256: e.sha256.clone(),
        });
        v.broken = check_links(&entries, &mut v);
        if v.broken.is_none()
            && !entries
                .iter()
                .any(|e| e.record == "chain" && e.scope == "genesis")
        {
            v.broken = Some(Broken {
                table: "audit_chain".to_owned(),
                row: "-".to_owned(),
                seq: None,
                what: "the chain has no genesis record: the records written before it were not \
                       all chained (an interrupted start); open the database for writing once \
                       to finish"
                    .to_owned(),
            });
        }
        // Coverage first: a row inserted into a chained range is named exactly.
        if v.broken.is_none() {
            v.broken = check_coverage(tx).await.map_err(read)?;
        }
        if v.broken.is_none() {
            v.broken = self.check_contents(tx, &entries, &mut v).await?;
        }
        Ok(v)
    }

    /// (b): the current content of every scope matches its latest entry.
    async fn check_contents(
        &self,
        conn: &mut SqliteConnection,
        entries: &[Entry],
        v: &mut Verification,
    ) -> Result<Option<Broken>, AuditError> {
        let mut latest: BTreeMap<(&str, &str), &Entry> = BTreeMap::new();
        for e in entries.iter().filter(|e| e.record != "chain") {
            latest.insert((&e.record, &e.scope), e);
        }
        let mut by_seq: Vec<&Entry> = latest.into_values().collect();
        by_seq.sort_by_key(|e| e.seq);
        let open: Vec<i64> = sqlx::query_scalar("SELECT id FROM runs WHERE outcome IS NULL")
            .fetch_all(&mut *conn)
            .await
            .map_err(AuditError::Read)?;
        v.scopes = by_seq.len() as u64;
        for e in by_seq {
            let Some(scope) = Scope::parse(&e.record, &e.scope, e.run) else {
                return Ok(Some(Broken {
                    table: "audit_chain".to_owned(),
                    row: format!("seq {}", e.seq),
                    seq: Some(e.seq),
                    what: format!(
                        "names a scope this version does not know: {} {:?}",
                        e.record, e.scope
                    ),
                }));
            };
            // A running run's statuses change with every call; they are chained when it closes.
            if matches!(scope, Scope::Status { run, .. } if open.contains(&run)) {
                continue;
            }
            let (rows, digest) = content(conn, &self.exprs, &scope)
                .await
                .map_err(AuditError::Read)?;
            if rows == e.rows && digest == e.content {
                continue;
            }
            let (table, what_rows) = scope.describe();
            let what = if rows < e.rows {
                let missing = match &scope {
                    Scope::Decisions { run, first, last } if e.rows == last - first + 1 => {
                        first_missing(conn, "actions", *run, *first, *last).await
                    }
                    Scope::MarkEvents { run, first, last } if e.rows == last - first + 1 => {
                        first_missing(conn, "mark_events", *run, *first, *last).await
                    }
                    _ => None,
                };
                match missing {
                    Some(id) => format!("row {id} was deleted ({rows} of {} rows left)", e.rows),
                    None => format!("rows were deleted: {rows} of {} left", e.rows),
                }
            } else if rows > e.rows {
                format!("rows were added: {rows}, the chain recorded {}", e.rows)
            } else {
                "a value differs from what the chain recorded (the row was edited)".to_owned()
            };
            return Ok(Some(Broken {
                table: table.to_owned(),
                row: what_rows,
                seq: Some(e.seq),
                what,
            }));
        }
        Ok(None)
    }
}

/// The first id in `first..=last` with no row of `run` in `table`.
async fn first_missing(
    conn: &mut SqliteConnection,
    table: &str,
    run: i64,
    first: i64,
    last: i64,
) -> Option<i64> {
    let ids: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT id FROM {table} WHERE run_id = ?1 AND id BETWEEN ?2 AND ?3 ORDER BY id"
    ))
    .bind(run)
    .bind(first)
    .bind(last)
    .fetch_all(&mut *conn)
    .await
    .ok()?;
    (first..=last)
        .zip(ids.iter().copied().chain(std::iter::repeat(i64::MIN)))
        .find_map(|(want, got)| (want != got).then_some(want))
}

/// A digest over the (seq, hash) of the entries an anchor keeps before it.
fn kept_digest<'a>(kept: impl Iterator<Item = (i64, &'a str)>) -> String {
    let mut h = content_hasher("chain");
    for (seq, sha) in kept {
        h.update(format!("{seq}:{sha}\n"));
    }
    hex_lower(&h.finalize())
}

async fn load_entries(conn: &mut SqliteConnection) -> Result<Vec<Entry>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, at, record, scope, event, run_id, first_id, last_id, row_count,
             content_sha256, prev_sha256, sha256
         FROM audit_chain ORDER BY seq",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Entry {
                seq: r.try_get(0)?,
                at: r.try_get(1)?,
                record: r.try_get(2)?,
                scope: r.try_get(3)?,
                event: r.try_get(4)?,
                run: r.try_get(5)?,
                first: r.try_get(6)?,
                last: r.try_get(7)?,
                rows: r.try_get(8)?,
                content: r.try_get(9)?,
                prev: r.try_get(10)?,
                sha256: r.try_get(11)?,
            })
        })
        .collect()
}

/// (a): each entry's hash matches its fields, and each links to the one before it (from the
/// latest anchor on; before it, the anchor's digest of the entries it kept).
fn check_links(entries: &[Entry], v: &mut Verification) -> Option<Broken> {
    let broken = |e: &Entry, what: String| {
        Some(Broken {
            table: "audit_chain".to_owned(),
            row: format!("seq {}", e.seq),
            seq: Some(e.seq),
            what,
        })
    };
    let anchor = entries
        .iter()
        .rposition(|e| e.record == "chain" && e.scope == "anchor");
    v.anchor = anchor.map(|i| entries[i].seq);
    for e in entries {
        let hash = entry_hash(
            e.seq, &e.at, &e.record, &e.scope, &e.event, e.run, e.first, e.last, e.rows,
            &e.content, &e.prev,
        );
        if hash != e.sha256 {
            return broken(
                e,
                "its hash does not match its fields: the entry was edited".to_owned(),
            );
        }
    }
    let start = match anchor {
        Some(i) => {
            let a = &entries[i];
            let kept = &entries[..i];
            let digest = kept_digest(kept.iter().map(|e| (e.seq, e.sha256.as_str())));
            if digest != a.content || kept.len() as i64 != a.rows {
                return broken(
                    a,
                    format!(
                        "the entries before this anchor are not the {} it kept: one was deleted, \
                         added or replaced",
                        a.rows
                    ),
                );
            }
            i
        }
        None => {
            let first = entries.first()?;
            if first.prev != ZERO || first.seq != 1 {
                return broken(
                    first,
                    "the chain does not start here: the entries before it were deleted".to_owned(),
                );
            }
            0
        }
    };
    for pair in entries[start..].windows(2) {
        let (before, e) = (&pair[0], &pair[1]);
        if e.prev != before.sha256 || e.seq != before.seq + 1 {
            return broken(
                e,
                format!(
                    "it does not link to entry {}: an entry between them was deleted, or one was \
                     inserted or replaced",
                    before.seq
                ),
            );
        }
    }
    None
}

/// (c): every covered row has an entry.
async fn check_coverage(conn: &mut SqliteConnection) -> Result<Option<Broken>, sqlx::Error> {
    let uncovered = |table: &str, row: String| {
        Some(Broken {
            table: table.to_owned(),
            row,
            seq: None,
            what: "no chain entry covers it: it was inserted outside zt-janitor".to_owned(),
        })
    };
    for table in ["runs", "mutations"] {
        let id: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT id FROM {table} WHERE CAST(id AS TEXT) NOT IN
                 (SELECT scope FROM audit_chain WHERE record = '{table}')
             ORDER BY id LIMIT 1"
        ))
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(id) = id {
            return Ok(uncovered(table, format!("id {id}")));
        }
    }
    for (table, record, closed_only) in [
        ("actions", "actions", false),
        ("actions", "action_status", true),
        ("mark_events", "mark_events", false),
    ] {
        let closed = if closed_only {
            " AND EXISTS (SELECT 1 FROM runs r WHERE r.id = t.run_id AND r.outcome IS NOT NULL)"
        } else {
            ""
        };
        let row: Option<(i64, i64)> = sqlx::query_as(&format!(
            "SELECT t.id, t.run_id FROM {table} t
             WHERE NOT EXISTS (SELECT 1 FROM audit_chain c
                               WHERE c.run_id = t.run_id AND c.record = '{record}'
                                 AND t.id BETWEEN c.first_id AND c.last_id){closed}
             ORDER BY t.id LIMIT 1"
        ))
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((id, run)) = row {
            return Ok(uncovered(table, format!("id {id} of run {run}")));
        }
    }
    let part: Option<(String, String)> = sqlx::query_as(
        "SELECT resource_kind, zone_key FROM marks
         WHERE resource_kind || '/' || zone_key NOT IN
             (SELECT scope FROM audit_chain WHERE record = 'marks')
         LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(part.and_then(|(kind, zone)| uncovered("marks", format!("kind {kind}, zone {zone:?}"))))
}

/// The chain's last entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainHead {
    pub seq: i64,
    pub sha256: String,
}

/// The first broken link `audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    /// The table that differs from the chain (`audit_chain` for the chain itself).
    pub table: String,
    /// The row or rows concerned.
    pub row: String,
    /// The chain entry concerned, if any.
    pub seq: Option<i64>,
    pub what: String,
}

/// What `audit verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verification {
    pub entries: u64,
    /// Scopes whose current content was compared with their latest entry.
    pub scopes: u64,
    /// The latest anchor written by pruning, from which the links are checked.
    pub anchor: Option<i64>,
    pub head: Option<ChainHead>,
    pub broken: Option<Broken>,
}

impl Verification {
    pub fn intact(&self) -> bool {
        self.broken.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closed run's decisions folded away (their rows deleted, as decision spans will) and
    /// re-chained verify; deleted without it, verify names them.
    #[tokio::test]
    async fn folding_a_runs_decisions_is_a_chained_event() {
        use crate::audit::{MutationKind, RunOutcome, RunSummary, UndoDecision};
        use crate::resource::{Kind, ResourceId};
        let dir = tempfile::tempdir().unwrap();
        let store = AuditStore::open(&dir.path().join("a.db")).await.unwrap();
        let now = Utc::now();
        let plan = store
            .begin_run(crate::config::Mode::Plan, now)
            .await
            .unwrap();
        let decisions: Vec<UndoDecision> = (0..3)
            .map(|n| UndoDecision {
                // Itself: the first ids of a fresh database (the reference must exist).
                undoes: n + 1,
                mutation: MutationKind::Unrevoke,
                kind: Kind::DeviceRegistration,
                id: ResourceId::parse(&format!("d0000000-0000-4000-8000-{n:012}")).unwrap(),
                zone: None,
                rule: "r".to_owned(),
                user_email: None,
                name: Some(String::new()),
                reason: "because".to_owned(),
            })
            .collect();
        let run = store.begin_undo_run(plan, now).await.unwrap();
        store
            .record_undo_actions(run, now, &decisions)
            .await
            .unwrap();
        let summary = RunSummary::default();
        for r in [plan, run] {
            store
                .finish_run(r, RunOutcome::Planned, None, &summary, &[], now)
                .await
                .unwrap();
        }
        assert!(store.verify_chain().await.unwrap().intact());
        let fold = |rechain: bool| {
            let store = store.clone();
            async move {
                let mut tx = store.pool.begin().await.unwrap();
                sqlx::raw_sql(
                    "PRAGMA defer_foreign_keys = ON;
                     DELETE FROM snapshots; DELETE FROM actions;",
                )
                .execute(&mut *tx)
                .await
                .unwrap();
                if rechain {
                    let entries = store
                        .rechain_run_scopes(&mut tx, "folded", run, &["actions", "action_status"])
                        .await
                        .unwrap();
                    assert_eq!(entries.len(), 2, "one range, one chunk");
                    assert!(entries.iter().all(|e| e.rows == 0));
                }
                let v = store.verify_chain_in(&mut tx).await.unwrap();
                tx.rollback().await.unwrap();
                v
            }
        };
        assert!(fold(true).await.intact());
        let broken = fold(false)
            .await
            .broken
            .expect("deleted without a chain entry");
        assert_eq!(broken.table, "actions");
        assert!(broken.what.contains("deleted"), "{broken:?}");
        store.close().await;
    }

    #[test]
    fn ranges_split_at_gaps_and_at_a_chunk() {
        assert_eq!(ranges(&[1, 2, 3, 5, 6]), vec![(1, 3), (5, 6)]);
        let long: Vec<i64> = (1..=2500).collect();
        assert_eq!(ranges(&long), vec![(1, 1000), (1001, 2000), (2001, 2500)]);
        assert!(ranges(&[]).is_empty());
    }

    #[test]
    fn an_entry_hash_covers_every_field() {
        let base = || {
            entry_hash(
                1,
                "t",
                "runs",
                "1",
                "begun",
                Some(1),
                None,
                None,
                1,
                "c",
                ZERO,
            )
        };
        let h = base();
        assert_eq!(h, base(), "deterministic");
        let changed = [
            entry_hash(
                2,
                "t",
                "runs",
                "1",
                "begun",
                Some(1),
                None,
                None,
                1,
                "c",
                ZERO,
            ),
            entry_hash(
                1,
                "u",
                "runs",
                "1",
                "begun",
                Some(1),
                None,
                None,
                1,
                "c",
                ZERO,
            ),
            entry_hash(
                1,
                "t",
                "mutations",
                "1",
                "begun",
                Some(1),
                None,
                None,
                1,
                "c",
                ZERO,
            ),
            entry_hash(
                1,
                "t",
                "runs",
                "2",
                "begun",
                Some(1),
                None,
                None,
                1,
                "c",
                ZERO,
            ),
            entry_hash(1, "t", "runs", "1", "x", Some(1), None, None, 1, "c", ZERO),
            entry_hash(1, "t", "runs", "1", "begun", None, None, None, 1, "c", ZERO),
            entry_hash(
                1,
                "t",
                "runs",
                "1",
                "begun",
                Some(1),
                Some(0),
                None,
                1,
                "c",
                ZERO,
            ),
            entry_hash(
                1,
                "t",
                "runs",
                "1",
                "begun",
                Some(1),
                None,
                Some(0),
                1,
                "c",
                ZERO,
            ),
            entry_hash(
                1,
                "t",
                "runs",
                "1",
                "begun",
                Some(1),
                None,
                None,
                0,
                "c",
                ZERO,
            ),
            entry_hash(
                1,
                "t",
                "runs",
                "1",
                "begun",
                Some(1),
                None,
                None,
                1,
                "d",
                ZERO,
            ),
            entry_hash(
                1,
                "t",
                "runs",
                "1",
                "begun",
                Some(1),
                None,
                None,
                1,
                "c",
                "1",
            ),
        ];
        for (i, other) in changed.iter().enumerate() {
            assert_ne!(&h, other, "field {i}");
        }
    }

    /// An in-memory database holding table `t` with `columns`.
    async fn table_t(columns: &str) -> sqlx::SqliteConnection {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::query(&format!("CREATE TABLE t ({columns})"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn
    }

    /// The closing run's status encoding writes version 1's bytes for every value this process
    /// writes, and differs (so verify breaks) for a value stored with another type.
    #[tokio::test]
    async fn the_written_status_encoding_is_version_1_for_the_types_written() {
        let mut conn =
            table_t("id INTEGER PRIMARY KEY, mutation_id INTEGER, status TEXT, status_detail TEXT")
                .await;
        let rows: [(i64, Option<i64>, &str, Option<&str>); 4] = [
            (1, None, "planned", None),
            (2, Some(7), "done", Some("é'\"\n\0,=;x")),
            (3, None, "failed", Some("")),
            (i64::MAX, Some(-1), "", None),
        ];
        for (id, mutation, status, detail) in rows {
            sqlx::query("INSERT INTO t VALUES (?1, ?2, ?3, ?4)")
                .bind(id)
                .bind(mutation)
                .bind(status)
                .bind(detail)
                .execute(&mut conn)
                .await
                .unwrap();
        }
        sqlx::query("INSERT INTO t VALUES (5, NULL, CAST('done' AS BLOB), NULL)")
            .execute(&mut conn)
            .await
            .unwrap();
        // The columns `Exprs` covers for `status`: the mutable ones and the id.
        let columns = ["id", "mutation_id", "status", "status_detail"].map(String::from);
        let general = row_expr(&columns, "t");
        let pairs: Vec<(i64, String, String)> = sqlx::query_as(&format!(
            "SELECT t.id, {general}, {} FROM t t ORDER BY t.id",
            written_status_expr()
        ))
        .fetch_all(&mut conn)
        .await
        .unwrap();
        for (id, general, written) in &pairs {
            if *id == 5 {
                assert_ne!(general, written, "a blob status must not pass as text");
            } else {
                assert_eq!(general, written, "row {id}");
            }
        }
        assert!(pairs[2].1.contains("status_detail=t,"), "{:?}", pairs[2]);
    }

    /// The Rust encoder of the insert path writes what SQLite's `hex()` encoding writes for
    /// the same values, NULL left out and an empty text kept, hostile text included.
    #[tokio::test]
    async fn the_rust_encoding_matches_the_sql_encoding() {
        let mut conn = table_t("b TEXT, a INTEGER, c TEXT, d TEXT").await;
        let text = "é'\"\n\0,=;x";
        sqlx::query("INSERT INTO t VALUES (?1, ?2, ?3, NULL)")
            .bind(text)
            .bind(-42_i64)
            .bind("")
            .execute(&mut conn)
            .await
            .unwrap();
        let cols: Vec<String> = ["b", "a", "c", "d"].map(String::from).to_vec();
        let sql: String = sqlx::query_scalar(&format!("SELECT {} FROM t t", row_expr(&cols, "t")))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let mut from_sql = Sha256::new();
        from_sql.update(&sql);
        let mut row = Vec::new();
        RowEncoder(&mut row)
            .int("a", Some(-42))
            .text("b", Some(text))
            .text("c", Some(""))
            .text("d", None);
        let mut from_rust = Sha256::new();
        from_rust.update(&row);
        assert_eq!(from_sql.finalize(), from_rust.finalize(), "{sql}");
        assert!(sql.contains("c=t,"), "an empty text is kept: {sql}");
        assert!(!sql.contains("d="), "NULL is left out: {sql}");
    }
}
