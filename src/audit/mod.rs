//! The audit store: an SQLite log of every run, every decision and every API mutation. The only
//! code in zt-janitor that speaks SQL.
//!
//! Mutations follow an intent/outcome protocol: the intent is committed before the request is
//! sent, the outcome after. A crash in between leaves an intent without outcome, which
//! [`AuditStore::pending_mutations`] hands to the next run for reconciliation.

use std::fs::{File, OpenOptions, TryLockError};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::TryStreamExt;
use serde::Serialize;
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, SqlitePool};

use crate::cloudflare::ZoneId;
use crate::config::{Action, Mode};
use crate::plan::Candidate;
use crate::resource::{Kind, ResourceId};
use crate::saved_plan::{SavedPlan, Skipped};

mod export;
pub use export::{ExportAction, ExportMutation, ExportReader, ExportRun};
mod prune;
pub use prune::{
    plan as prune_plan, pruned_tables, Held, HeldRun, PruneLimits, PrunePlan, PruneReport,
    PruneTrigger, Retention, RunFacts, VacuumError,
};
mod body;
pub use body::{decode as decode_body, BodyError, BodyForm};
mod storage;
use storage::body_sha256;
pub use storage::StorageFigures;
mod chain;
pub use chain::{Broken, ChainHead, Verification};

/// Rows per multi-row statement; 13 bound values each stays far below SQLite's variable limit.
/// Statements whose row count changes from call to call are built with `persistent(false)`: a
/// prepared statement of hundreds of rows holds a lot of memory, and the cache would keep one
/// per length.
const INSERT_BATCH: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit database directory {dir} cannot be created: {source}; create it or point [audit] path at a writable place")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another zt-janitor process{} is using the audit database {path}; stop it first (a daemon: `systemctl stop zt-janitor`), or point [audit] path elsewhere", pid.map(|p| format!(" (PID {p})")).unwrap_or_default())]
    Locked { path: PathBuf, pid: Option<u32> },
    #[error("cannot lock the audit database {path} through {lock}: {source}; check that the directory is writable and the disk is not full")]
    Lock {
        path: PathBuf,
        lock: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an SQLite database; point --db or [audit] path at the audit database zt-janitor writes, or move this file away so that a new one is created")]
    NotADatabase { path: PathBuf },
    #[error("cannot open the audit database {path}: {source}; check that the directory is writable, the disk is not full, and the file is a zt-janitor SQLite database")]
    Open {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot prepare the audit database {path} (schema migration failed): {source}")]
    Migrate {
        path: PathBuf,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("the audit database {path} is no longer the file this process opened ({what}); nothing more is done until zt-janitor is restarted, which opens (or creates) the database now at that path")]
    Replaced { path: PathBuf, what: String },
    #[error("the audit database {path} cannot be written ({reason}); no cycle starts until a probe write reaches the disk again: free space on its file system or fix the disk")]
    Unwritable { path: PathBuf, reason: String },
    #[error("audit database {path} is a symbolic link to {target}, which does not exist; create the database where the link points, or point [audit] path at the real file")]
    DanglingLink { path: PathBuf, target: PathBuf },
    #[error("audit database write failed: {0}; no further action is taken without an audit trail")]
    Write(#[source] sqlx::Error),
    #[error("audit database query failed: {0}")]
    Read(#[source] sqlx::Error),
    /// An intent without outcome that cannot be read back would never be reconciled, and its
    /// actions never settled; a crash-safety record is not dropped silently, so the cycle stops
    /// and names it.
    #[error("the audit log holds an interrupted call that cannot be read back, so it cannot be reconciled: mutation {mutation} of run {run}: {what}. No cycle acts until it is settled: check in Cloudflare whether the call took effect, then close it by hand with UPDATE mutations SET outcome = 'reconciled_done' (or 'reconciled_not_done'), completed_at = '<now, RFC 3339>' WHERE id = {mutation}")]
    UnreadableIntent {
        mutation: i64,
        run: i64,
        what: String,
    },
    /// A decision recorded this run that cannot be read back is not acted on, nor is anything
    /// after it: the executor acts only on what the audit log holds.
    #[error("the audit log's action {action} cannot be read back ({what}); it and the actions after it in this part are not acted on")]
    UnreadableAction { action: i64, what: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunId(pub i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MutationId(pub i64);

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    Applied,
    Planned,
    Refused,
    Aborted,
    Failed,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Applied => "applied",
            RunOutcome::Planned => "planned",
            RunOutcome::Refused => "refused",
            RunOutcome::Aborted => "aborted",
            RunOutcome::Failed => "failed",
        }
    }

    pub const ALL: [RunOutcome; 5] = [
        RunOutcome::Applied,
        RunOutcome::Planned,
        RunOutcome::Refused,
        RunOutcome::Aborted,
        RunOutcome::Failed,
    ];

    /// The outcome a `runs.outcome` value names.
    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// What the log remembers of the last finished runs, for the metrics of a fresh process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastRuns {
    /// When the last finished run finished, whatever its outcome, and that outcome.
    pub finished: Option<DateTime<Utc>>,
    pub outcome: Option<RunOutcome>,
    /// When the last run that finished as applied or planned finished.
    pub succeeded: Option<DateTime<Utc>>,
}

impl std::fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MutationKind {
    BulkDelete,
    Delete,
    Revoke,
    /// `zt-janitor undo`: registrations unrevoked.
    Unrevoke,
    /// `zt-janitor undo`: a client certificate reactivated while `pending_revocation`.
    Reactivate,
}

impl MutationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MutationKind::BulkDelete => "bulk_delete",
            MutationKind::Delete => "delete",
            MutationKind::Revoke => "revoke",
            MutationKind::Unrevoke => "unrevoke",
            MutationKind::Reactivate => "reactivate",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "bulk_delete" => Some(MutationKind::BulkDelete),
            "delete" => Some(MutationKind::Delete),
            "revoke" => Some(MutationKind::Revoke),
            "unrevoke" => Some(MutationKind::Unrevoke),
            "reactivate" => Some(MutationKind::Reactivate),
            _ => None,
        }
    }
}

/// Status of one planned action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionStatus {
    Planned,
    Excluded,
    NotAttempted,
    InFlight,
    Done,
    AlreadyGone,
    Failed,
    /// Cloudflare claimed success, but the confirmation listing still shows the registration
    /// (not revoked), or could not be read.
    Unconfirmed,
    /// Failed the same way for the ids alone in several runs in a row: not attempted again.
    Stuck,
    /// Cloudflare refused to act on it for a reason the user must fix first (a service token
    /// still in use): not retried, not a failure of the run.
    RefusedByApi,
}

impl ActionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionStatus::Planned => "planned",
            ActionStatus::Excluded => "excluded",
            ActionStatus::NotAttempted => "not_attempted",
            ActionStatus::InFlight => "in_flight",
            ActionStatus::Done => "done",
            ActionStatus::AlreadyGone => "already_gone",
            ActionStatus::Failed => "failed",
            ActionStatus::Unconfirmed => "unconfirmed",
            ActionStatus::Stuck => "stuck",
            ActionStatus::RefusedByApi => "refused_by_api",
        }
    }

    pub const ALL: [ActionStatus; 10] = [
        ActionStatus::Planned,
        ActionStatus::Excluded,
        ActionStatus::NotAttempted,
        ActionStatus::InFlight,
        ActionStatus::Done,
        ActionStatus::AlreadyGone,
        ActionStatus::Failed,
        ActionStatus::Unconfirmed,
        ActionStatus::Stuck,
        ActionStatus::RefusedByApi,
    ];

    /// The status an `actions.status` value names; `None` for a value no version wrote.
    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

/// What Cloudflare answered one API mutation, as the `mutations.outcome` column records it.
/// (`already_gone` appears only in databases written before answers were confirmed by
/// listing; nothing writes it any more.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// A 2xx answer.
    Ok,
    /// An answer that means the one object named does not exist.
    NotFound,
    /// An error about the ids named only.
    Rejected,
    /// A failure of the whole run.
    Error,
    /// A call a crash left without an answer, found done by the listing after the restart.
    ReconciledDone,
    /// A call a crash left without an answer, found not (or not fully) done.
    ReconciledNotDone,
}

impl CallOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::NotFound => "not_found",
            CallOutcome::Rejected => "rejected",
            CallOutcome::Error => "error",
            CallOutcome::ReconciledDone => "reconciled_done",
            CallOutcome::ReconciledNotDone => "reconciled_not_done",
        }
    }
}

/// What happened to one API mutation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutationResult {
    pub outcome: CallOutcome,
    pub http_status: Option<u16>,
    pub cf_error_code: Option<i64>,
    pub cf_error_message: Option<String>,
}

/// Final figures of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    pub pages: Option<u64>,
    pub seen_total: Option<u64>,
    pub seen_active: Option<u64>,
    pub seen_revoked: Option<u64>,
    pub candidates: Option<u64>,
    pub excluded: Option<u64>,
    pub actions_done: u64,
    /// Failed or unconfirmed.
    pub actions_failed: u64,
    /// Claimed done by Cloudflare but not confirmed by the listing (also in `actions_failed`).
    pub actions_unconfirmed: u64,
    /// Not attempted: the same failure in the last runs (not in `actions_failed`).
    pub actions_stuck: u64,
    /// Refused by Cloudflare until the user changes something (not in `actions_failed`).
    pub actions_refused: u64,
    pub api_requests: u64,
}

/// How one kind's part of a run went: a row of `run_kinds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindRun {
    pub kind: Kind,
    pub outcome: RunOutcome,
    pub reason: Option<String>,
    /// `None` when the kind's listing did not complete.
    pub seen: Option<u64>,
    pub candidates: Option<u64>,
    pub excluded: Option<u64>,
    pub done: u64,
    pub failed: u64,
    /// Refused by Cloudflare because the object is still in use (not in `failed`).
    pub refused: u64,
}

/// An API call about to be sent. The registrations it names identify, within its run, the
/// actions it carries.
#[derive(Debug, Clone)]
pub struct Intent {
    pub resource_kind: Kind,
    /// The zone the call acts in, for a zoned kind.
    pub zone: Option<ZoneId>,
    pub kind: MutationKind,
    pub method: String,
    pub path: String,
    pub ids: Vec<ResourceId>,
    pub at: DateTime<Utc>,
}

/// What a sent call came to. `settles` empty leaves the call's actions for follow-up calls
/// (a bulk call split after a refusal); otherwise its actions, grouped by the status the
/// confirmation listing gave them.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub mutation: MutationId,
    pub result: MutationResult,
    pub settles: Vec<Settled>,
    pub at: DateTime<Utc>,
}

/// The actions a call settled, and how.
#[derive(Debug, Clone)]
pub struct Settled {
    pub actions: Vec<i64>,
    pub status: ActionStatus,
    pub detail: Option<String>,
}

/// Calls that will never be sent (the run stopped first): the intents committed for some of
/// them, the actions of all of them (not attempted), and why.
#[derive(Debug, Clone)]
pub struct Withdrawal {
    pub mutations: Vec<MutationId>,
    pub actions: Vec<i64>,
    pub reason: String,
}

/// One transaction of the executor's journal, applied in this order: outcomes of calls made,
/// intents withdrawn, intents of the calls about to be sent.
#[derive(Debug, Clone, Default)]
pub struct JournalEntry {
    pub outcomes: Vec<Outcome>,
    pub withdrawal: Option<Withdrawal>,
    pub intents: Vec<Intent>,
}

/// A candidate of a run whose registration failed the same way, for its id alone, in the runs
/// before it.
#[derive(Debug, Clone)]
pub struct FailureStreak {
    pub action_id: i64,
    /// Runs in a row (counted up to the number asked for) in which it failed this way or was
    /// already stuck.
    pub runs: u32,
    /// The failed call of the latest of them.
    pub mutation: MutationId,
    /// The failure as recorded then; if `already_stuck`, the previous run's stuck detail.
    pub detail: String,
    /// The latest of those runs already recorded it stuck.
    pub already_stuck: bool,
}

/// A mutation whose outcome was never recorded.
#[derive(Debug, Clone)]
pub struct PendingMutation {
    pub id: MutationId,
    pub run_id: RunId,
    pub resource_kind: Kind,
    pub zone: Option<ZoneId>,
    pub kind: MutationKind,
    pub resource_ids: Vec<ResourceId>,
}

/// One action of a run as `zt-janitor undo` reads it: what was done, to what, and how it ended.
#[derive(Debug, Clone)]
pub struct RunAction {
    pub action_id: i64,
    pub rule: String,
    /// `delete`, `revoke`, or an undo's own `unrevoke` / `reactivate`.
    pub action: String,
    /// `None` for a kind this version does not know.
    pub kind: Option<Kind>,
    pub resource_kind: String,
    pub resource_id: String,
    pub zone: Option<String>,
    pub status: String,
    pub user_email: Option<String>,
    pub name: Option<String>,
}

/// An undo action about to be recorded: the reversal of `undoes` (an action of the run undone).
#[derive(Debug, Clone)]
pub struct UndoDecision {
    pub undoes: i64,
    pub mutation: MutationKind,
    pub kind: Kind,
    pub id: ResourceId,
    pub zone: Option<ZoneId>,
    pub rule: String,
    pub user_email: Option<String>,
    pub name: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub id: i64,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub mode: String,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    pub seen_total: Option<i64>,
    pub candidates: Option<i64>,
    pub excluded: Option<i64>,
    pub actions_done: Option<i64>,
    pub actions_failed: Option<i64>,
    /// `None` for runs written before refusals were counted (migration 20261128000001).
    pub actions_refused: Option<i64>,
    pub api_requests: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActionRow {
    /// `None` for a span: decisions of runs that did not act, folded (see `span_*`).
    pub id: Option<i64>,
    pub run_id: i64,
    pub decided_at: String,
    pub rule: String,
    pub action: String,
    pub resource_kind: String,
    pub resource_id: String,
    pub user_email: Option<String>,
    pub device_name: Option<String>,
    pub last_seen_at: Option<String>,
    pub reason: String,
    pub excluded_by: Option<String>,
    pub status: String,
    pub status_detail: Option<String>,
    pub mutation_id: Option<i64>,
    pub mutation_completed_at: Option<String>,
    pub http_status: Option<i64>,
    /// In an undo run: the action (of the run undone) this one reverses.
    pub undoes_action_id: Option<i64>,
    /// For a span: its id, and the runs it covers, each of which decided the same about the
    /// object as listed the same.
    pub span_id: Option<i64>,
    pub span_first_run_id: Option<i64>,
    pub span_last_run_id: Option<i64>,
    /// Last, so that the CSV's widest column ends each row.
    pub snapshot: String,
}

/// Filters of `zt-janitor audit actions`; all optional, combined with AND.
#[derive(Debug, Clone, Default)]
pub struct ActionFilter {
    pub run_id: Option<i64>,
    pub rule: Option<String>,
    pub user_email: Option<String>,
    pub resource_kind: Option<Kind>,
    pub resource_id: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: i64,
}

/// What updating one part's marks did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MarkTally {
    /// Candidates marked for the first time this run.
    pub marked: u64,
    /// Marks cleared: their objects are no longer candidates.
    pub cleared: u64,
    /// Candidates whose grace period is over (or that have none): acted on this run.
    pub due: u64,
    /// Candidates still in their grace period: not acted on this run.
    pub waiting: u64,
}

/// One current mark, as `audit marks` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct MarkRow {
    pub resource_kind: String,
    pub zone_id: Option<String>,
    pub resource_id: String,
    pub name: Option<String>,
    pub user_email: Option<String>,
    pub rule: String,
    pub action: String,
    pub first_marked_at: String,
    pub first_run_id: i64,
    pub last_run_id: i64,
}

/// A mark set or cleared by a run, for its notification. `name`, `user_email` and `action`
/// come from the mark, so a cleared one has none.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MarkEvent {
    pub event: String,
    pub resource_kind: String,
    pub zone_id: Option<String>,
    pub resource_id: String,
    pub rule: String,
    pub first_marked_at: String,
    pub reason: Option<String>,
    pub name: Option<String>,
    pub user_email: Option<String>,
    pub action: Option<String>,
}

/// Filters of `zt-janitor audit marks`; all optional, combined with AND.
#[derive(Debug, Clone, Default)]
pub struct MarkFilter {
    pub resource_kind: Option<Kind>,
    pub rule: Option<String>,
    pub resource_id: Option<String>,
    pub limit: i64,
}

/// The most planned actions a batch reserves room for up front.
const APPLY_PREALLOCATE: usize = 10_000;

/// One kind's part of a run (for a zoned kind, one zone's): the actions the executor reads
/// back and settles.
#[derive(Debug, Clone, Copy)]
pub struct RunPart<'a> {
    pub run: RunId,
    pub kind: Kind,
    pub zone: Option<&'a ZoneId>,
}

/// A recorded decision the executor may act on: what the call and the apply-time checks
/// need, and no more.
#[derive(Debug, Clone)]
pub struct PlannedAction {
    pub action_id: i64,
    pub kind: Kind,
    pub action: Action,
    pub rule: String,
    pub id: ResourceId,
    pub user_email: Option<String>,
    /// The device's name, the token's name, the certificate's common name.
    pub name: String,
}

#[derive(Clone)]
pub struct AuditStore {
    pool: SqlitePool,
    path: PathBuf,
    /// The exclusive lock on `<path>.lock` that keeps a second writer out, held until
    /// [`AuditStore::close`] or the last clone is dropped; `None` for a read-only store.
    lock: Arc<Mutex<Option<File>>>,
    clock: Arc<WriteClock>,
    health: Arc<StoreHealth>,
    /// Device and inode of the database file this store opened for writing.
    identity: Option<(u64, u64)>,
    /// The hash chain's row encodings, read from the schema once.
    exprs: Arc<chain::Exprs>,
}

/// Whether the store's writes can be trusted; shared by every clone and by the pool's
/// connection hooks.
#[derive(Default)]
struct StoreHealth {
    /// Why writes are not trusted, set by a write error and cleared only by a probe write
    /// that reaches the disk ([`AuditStore::ensure_writable`]).
    broken: Mutex<Option<String>>,
    /// The pool closes its connection instead of handing it out once more.
    discard: AtomicBool,
    write_errors: AtomicU64,
}

impl StoreHealth {
    fn mark_broken(&self, reason: String) {
        self.write_errors.fetch_add(1, Ordering::Relaxed);
        self.discard.store(true, Ordering::Release);
        *self.broken.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }

    fn broken(&self) -> Option<String> {
        self.broken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Where the audit's wall time went, for the benchmark's overhead figures.
#[derive(Default)]
struct WriteClock {
    /// Spent in write methods.
    writing: AtomicU64,
    /// The part of `writing` that ran while the caller's other work went on
    /// ([`AuditStore::alongside`]), so did not lengthen the cycle.
    overlapped: AtomicU64,
}

/// Adds the time until drop to the store's write counter.
struct WriteTimer<'a>(&'a AtomicU64, Instant);

impl Drop for WriteTimer<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(nanos(self.1.elapsed()), Ordering::Relaxed);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// An audit write running on a task of its own while the caller goes on.
pub struct BackgroundWrite<T> {
    handle: tokio::task::JoinHandle<(Result<T, AuditError>, Duration)>,
    clock: Arc<WriteClock>,
}

impl<T> BackgroundWrite<T> {
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the write. The part of it that ran while the caller did other work is
    /// counted as overlapped.
    pub async fn finish(self) -> Result<T, AuditError> {
        let waiting = Instant::now();
        let (result, took) = match self.handle.await {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("audit write task cancelled: {e}"),
        };
        self.clock.overlapped.fetch_add(
            nanos(took.saturating_sub(waiting.elapsed())),
            Ordering::Relaxed,
        );
        result
    }
}

/// The path `path` names once every symbolic link (of the file and of its directories) is
/// resolved, so that one database has one lock file however it is named. The directory must
/// exist; the file need not, unless `path` is a link.
fn canonical(path: &Path) -> Result<PathBuf, AuditError> {
    let open_err = |source: std::io::Error| AuditError::Open {
        path: path.to_owned(),
        source: sqlx::Error::Io(source),
    };
    match std::fs::canonicalize(path) {
        Ok(real) => Ok(real),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Ok(target) = std::fs::read_link(path) {
                // SQLite would create the target; a lock named after the link would not
                // meet the lock of a writer that names the target.
                return Err(AuditError::DanglingLink {
                    path: path.to_owned(),
                    target,
                });
            }
            let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
                Some(dir) => dir.to_owned(),
                None => PathBuf::from("."),
            };
            let name = path.file_name().ok_or_else(|| {
                open_err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the path names no file",
                ))
            })?;
            Ok(std::fs::canonicalize(dir).map_err(open_err)?.join(name))
        }
        Err(e) => Err(open_err(e)),
    }
}

fn file_identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// Takes the exclusive advisory lock on `<path>.lock`. A sibling file rather than the database
/// itself, so that SQLite's own locking is left alone; the kernel drops the lock when the
/// process dies, so a crash never leaves a stale lock behind. The lock is named after `real`,
/// the canonical path; errors name `path`, as configured.
async fn lock_exclusively(path: &Path, real: &Path) -> Result<File, AuditError> {
    let mut name = real.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let lock_err = |source| AuditError::Lock {
        path: path.to_owned(),
        lock: lock_path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .map_err(lock_err)?;
    // A process that forks (to spawn a child) copies every descriptor, ours included, and the
    // copy holds the lock until the child execs, milliseconds later. A lock released by its
    // owner can so stay held for a moment: ask again for a short while before calling it taken.
    let give_up = Instant::now() + LOCK_PATIENCE;
    loop {
        match file.try_lock() {
            Ok(()) => {
                // The holder's PID, for the message a second process gets; advisory only.
                let _ = write_pid(&mut file);
                return Ok(file);
            }
            Err(TryLockError::WouldBlock) if Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(TryLockError::WouldBlock) => {
                return Err(AuditError::Locked {
                    path: path.to_owned(),
                    pid: read_pid(&mut file),
                })
            }
            Err(TryLockError::Error(source)) => return Err(lock_err(source)),
        }
    }
}

fn write_pid(file: &mut File) -> std::io::Result<()> {
    use std::io::Write;
    file.set_len(0)?;
    writeln!(file, "{}", std::process::id())?;
    file.flush()
}

/// The PID the lock's holder wrote; `None` when it wrote none (an older version) or garbage.
fn read_pid(file: &mut File) -> Option<u32> {
    use std::io::{Read, Seek};
    let mut text = String::new();
    file.rewind().ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// How long opening the store waits for a lock that another process holds.
const LOCK_PATIENCE: Duration = Duration::from_secs(2);

/// One connection to the database at `path` with the options `mode` adds, checked to be a
/// readable SQLite database: SQLite opens any file lazily, and reading the schema is what tells
/// a database from garbage. One connection: writes are serial anyway, and it keeps
/// transactions simple.
///
/// The pool never hands out a connection that a failed write left inside a transaction. When
/// a write inside a transaction fails on a full disk through one of sqlx's cached statements,
/// the rollback sqlx queues does not take effect (seen only once the cached statement is
/// reused, so apparently because the failed statement is still in progress), so SQLite
/// stays inside the transaction and sqlx's own depth count stays at one: every later
/// statement ran inside that transaction and every later `begin()` became a SAVEPOINT in it,
/// all reporting success and none ever reaching the disk (issue 10, item 1). Such a
/// connection is closed on release, the store is marked broken, and the next acquire opens a
/// fresh connection.
async fn connect(
    path: &Path,
    health: &Arc<StoreHealth>,
    mode: impl FnOnce(SqliteConnectOptions) -> SqliteConnectOptions,
) -> Result<SqlitePool, AuditError> {
    use sqlx::Connection;
    let open_err = |source: sqlx::Error| match &source {
        // SQLITE_NOTADB: said once, with the hint that fits, instead of the disk checklist.
        sqlx::Error::Database(e) if e.code().as_deref() == Some("26") => AuditError::NotADatabase {
            path: path.to_owned(),
        },
        _ => AuditError::Open {
            path: path.to_owned(),
            source,
        },
    };
    let options = SqliteConnectOptions::from_str("sqlite:")
        .map_err(open_err)?
        .filename(path)
        .busy_timeout(Duration::from_secs(5));
    let on_acquire = Arc::clone(health);
    let on_release = Arc::clone(health);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .before_acquire(move |_, _| {
            let discard = on_acquire.discard.swap(false, Ordering::AcqRel);
            Box::pin(async move { Ok(!discard) })
        })
        .after_release(move |conn, _| {
            let health = Arc::clone(&on_release);
            Box::pin(async move {
                // The ping lets a rollback queued by a dropped transaction run first.
                conn.ping().await?;
                if conn.is_in_transaction() {
                    health.mark_broken(
                        "a failed write left the connection inside a transaction".to_owned(),
                    );
                    return Ok(false);
                }
                Ok(true)
            })
        })
        .connect_with(mode(options))
        .await
        .map_err(open_err)?;
    sqlx::query("SELECT count(*) FROM sqlite_master")
        .fetch_one(&pool)
        .await
        .map_err(open_err)?;
    Ok(pool)
}

/// The next `n` row ids of `table`. This connection is the only writer (the lock file), so
/// within the transaction the ids after the current maximum are ours to assign; a multi-row
/// INSERT then needs no id handed back per row.
async fn next_ids(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    table: &'static str,
    n: usize,
) -> Result<std::ops::Range<i64>, AuditError> {
    // Never an id handed out before, even if its row has since been folded or pruned. One
    // statement: it runs per batch of decisions, and each is a round trip to SQLite's thread.
    let end: i64 = sqlx::query_scalar(&format!(
        "INSERT INTO id_high_water (name, last)
         VALUES (?1, max((SELECT coalesce(max(id), 0) FROM {table}),
                         coalesce((SELECT last FROM id_high_water WHERE name = ?1), 0)) + ?2)
         ON CONFLICT (name) DO UPDATE SET last = excluded.last
         RETURNING last"
    ))
    .bind(table)
    .bind(n as i64)
    .fetch_one(&mut **tx)
    .await
    .map_err(AuditError::Write)?;
    Ok(end - n as i64 + 1..end + 1)
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl AuditStore {
    /// Opens (creating if missing) the database at `path` for writing and applies pending
    /// migrations. Only one process may write: the others get [`AuditError::Locked`].
    pub async fn open(path: &Path) -> Result<Self, AuditError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| AuditError::CreateDir {
                dir: dir.to_owned(),
                source,
            })?;
        }
        // Locked and opened by its real name: a symlink is the same database.
        let real = canonical(path)?;
        let lock = lock_exclusively(path, &real).await?;
        let health = Arc::<StoreHealth>::default();
        let pool = connect(&real, &health, |o| {
            o.create_if_missing(true)
                // Takes effect only in a database without tables yet: a new one gives pages
                // freed by pruning back (older ones: `audit prune --vacuum`).
                .auto_vacuum(SqliteAutoVacuum::Incremental)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a committed intent must survive power loss, not only a process crash.
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
        })
        .await?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|source| AuditError::Migrate {
                path: path.to_owned(),
                source,
            })?;
        let identity = file_identity(&real).map_err(|source| AuditError::Open {
            path: path.to_owned(),
            source: sqlx::Error::Io(source),
        })?;
        let store = AuditStore {
            pool,
            path: path.to_owned(),
            lock: Arc::new(Mutex::new(Some(lock))),
            clock: Arc::default(),
            health,
            identity: Some(identity),
            exprs: Arc::default(),
        };
        store.chain_genesis().await?;
        Ok(store)
    }

    /// Opens an existing database for reading only: no lock, no migration, no write. For
    /// readers (the `audit` command, the demo) that may run while a daemon writes.
    pub async fn open_read_only(path: &Path) -> Result<Self, AuditError> {
        let health = Arc::<StoreHealth>::default();
        let pool = connect(path, &health, |o| o.read_only(true)).await?;
        Ok(AuditStore {
            pool,
            path: path.to_owned(),
            lock: Arc::default(),
            clock: Arc::default(),
            health,
            identity: None,
            exprs: Arc::default(),
        })
    }

    fn timer(&self) -> WriteTimer<'_> {
        WriteTimer(&self.clock.writing, Instant::now())
    }

    /// Total wall time spent writing, since open.
    pub fn write_time(&self) -> Duration {
        Duration::from_nanos(self.clock.writing.load(Ordering::Relaxed))
    }

    /// The part of [`AuditStore::write_time`] that overlapped other work.
    pub fn overlapped_time(&self) -> Duration {
        Duration::from_nanos(self.clock.overlapped.load(Ordering::Relaxed))
    }

    /// Runs an audit write and other work (API calls) concurrently and returns both results,
    /// each with how long it took. SQLite runs on its own thread, so the write's commit and
    /// fsync proceed while the other work waits on the network; the time they share is
    /// counted as overlapped.
    pub async fn alongside<W: Future, O: Future>(
        &self,
        write: W,
        other: O,
    ) -> ((W::Output, Duration), (O::Output, Duration)) {
        async fn timed<F: Future>(f: F, start: Instant) -> (F::Output, Duration) {
            let out = f.await;
            (out, start.elapsed())
        }
        let start = Instant::now();
        let (written, done) = tokio::join!(timed(write, start), timed(other, start));
        self.clock
            .overlapped
            .fetch_add(nanos(written.1.min(done.1)), Ordering::Relaxed);
        (written, done)
    }

    /// Rows in (runs, actions, mutations).
    pub async fn row_counts(&self) -> Result<(i64, i64, i64), AuditError> {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM actions),
                    (SELECT count(*) FROM mutations)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(AuditError::Read)?;
        Ok((row.get(0), row.get(1), row.get(2)))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the database answers; used by the readiness probe.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Checks that the configured path still names the file this store opened. A database
    /// deleted, moved or replaced under a running process would take its writes into an
    /// unlinked file that nobody can read.
    pub fn check_file(&self) -> Result<(), AuditError> {
        let Some(opened) = self.identity else {
            return Ok(());
        };
        let what = match file_identity(&self.path) {
            Ok(now) if now == opened => return Ok(()),
            Ok(_) => "another file now has its name".to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "it was deleted".to_owned(),
            Err(e) => format!("it cannot be examined: {e}"),
        };
        Err(AuditError::Replaced {
            path: self.path.clone(),
            what,
        })
    }

    /// Records that a write failed: from now on the store is not trusted until
    /// [`AuditStore::ensure_writable`] proves a write reaches the disk, and the pool's
    /// connection is replaced before its next use.
    pub fn mark_failed(&self, error: &AuditError) {
        self.health.mark_broken(error.to_string());
    }

    /// Why the store cannot be written now, if it cannot: the file was replaced, or the last
    /// write failed and no probe has succeeded since.
    pub fn unusable_reason(&self) -> Option<String> {
        if let Err(e) = self.check_file() {
            return Some(e.to_string());
        }
        self.health.broken().map(|reason| {
            format!(
                "the last audit write failed ({reason}); no cycle starts until a probe write \
                 reaches the disk again"
            )
        })
    }

    /// Audit writes that failed since open.
    pub fn write_errors(&self) -> u64 {
        self.health.write_errors.load(Ordering::Relaxed)
    }

    /// Called before a cycle writes anything. Fails when the database file is no longer the
    /// one opened (nothing short of a restart helps), and, after a failed write, until a
    /// probe proves that writes reach the disk again: a fresh connection commits a change in
    /// a transaction of its own, and another fresh connection reads it back.
    pub async fn ensure_writable(&self) -> Result<(), AuditError> {
        self.check_file()?;
        if self.health.broken().is_none() {
            return Ok(());
        }
        self.health.discard.store(true, Ordering::Release);
        match self.probe().await {
            Ok(()) => {
                *self.health.broken.lock().unwrap_or_else(|e| e.into_inner()) = None;
                tracing::info!(path = %self.path.display(), "audit database writable again");
                Ok(())
            }
            Err(reason) => {
                self.health.mark_broken(reason.clone());
                Err(AuditError::Unwritable {
                    path: self.path.clone(),
                    reason,
                })
            }
        }
    }

    /// Writes a fresh value into the database header (`PRAGMA user_version`, which nothing
    /// else uses) and reads it back through a connection of its own.
    async fn probe(&self) -> Result<(), String> {
        let value: i32 = rand::random();
        let mut tx = self.pool.begin().await.map_err(|e| e.to_string())?;
        sqlx::query(&format!("PRAGMA user_version = {value}"))
            .execute(&mut *tx)
            .await
            .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        let real = canonical(&self.path).map_err(|e| e.to_string())?;
        let reader = connect(&real, &Arc::default(), |o| o.read_only(true))
            .await
            .map_err(|e| e.to_string())?;
        let read: Result<i32, _> = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&reader)
            .await;
        reader.close().await;
        match read {
            Ok(v) if v == value => Ok(()),
            Ok(v) => Err(format!(
                "a probe write did not reach the file: wrote {value}, read back {v}"
            )),
            Err(e) => Err(format!("a probe write cannot be read back: {e}")),
        }
    }

    /// Closes the database and releases the writer's lock, for every clone.
    pub async fn close(&self) {
        self.pool.close().await;
        self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Runs left unfinished by a crash are closed as failed, so `audit runs` never shows a run
    /// as still going when no process is running it; their actions that never reached an API
    /// call are marked not attempted, so none is left looking planned. Actions in flight stay
    /// for [`AuditStore::pending_mutations`] to reconcile.
    pub async fn close_interrupted_runs(&self, now: DateTime<Utc>) -> Result<u64, AuditError> {
        self.close_unfinished_runs(
            now,
            "interrupted: the process stopped before the run finished",
            "interrupted: the process stopped before acting on it",
        )
        .await
    }

    /// Closes every run without an outcome as failed with `reason`, and marks its actions that
    /// no call carried as not attempted with `action_detail`. For a process that knows no
    /// cycle of its own is running (start-up, or after a cycle's task panicked).
    pub async fn close_unfinished_runs(
        &self,
        now: DateTime<Utc>,
        reason: &str,
        action_detail: &str,
    ) -> Result<u64, AuditError> {
        let _timer = self.timer();
        let mut tx = self.pool.begin().await.map_err(AuditError::Write)?;
        let closing: Vec<i64> = sqlx::query_scalar("SELECT id FROM runs WHERE outcome IS NULL")
            .fetch_all(&mut *tx)
            .await
            .map_err(AuditError::Write)?;
        sqlx::query(
            "UPDATE actions SET status = 'not_attempted', status_detail = ?1
             WHERE status = 'planned'
               AND run_id IN (SELECT id FROM runs WHERE outcome IS NULL)
               -- A call may have carried it: reconciliation settles those.
               AND resource_id NOT IN (
                   SELECT j.value FROM mutations m,
                       json_each(CASE WHEN json_valid(m.resource_ids)
                                      THEN m.resource_ids ELSE '[]' END) j
                   WHERE m.outcome IS NULL AND m.run_id = actions.run_id)
               -- Which ids an unreadable intent carried is unknown: its run's actions wait
               -- for it to be settled (reconciliation names the row).
               AND NOT EXISTS (
                   SELECT 1 FROM mutations m
                   WHERE m.outcome IS NULL AND m.run_id = actions.run_id
                     AND NOT json_valid(m.resource_ids))",
        )
        .bind(action_detail)
        .execute(&mut *tx)
        .await
        .map_err(AuditError::Write)?;
        let done = sqlx::query(
            "UPDATE runs SET outcome = 'failed', finished_at = ?1, reason = ?2
             WHERE outcome IS NULL",
        )
        .bind(ts(now))
        .bind(reason)
        .execute(&mut *tx)
        .await
        .map_err(AuditError::Write)?;
        for run in closing {
            self.rechain_closed_run(&mut tx, "closed_unfinished", run, chain::Statuses::Found)
                .await?;
        }
        tx.commit().await.map_err(AuditError::Write)?;
        Ok(done.rows_affected())
    }

    pub async fn begin_run(&self, mode: Mode, started: DateTime<Utc>) -> Result<RunId, AuditError> {
        let _timer = self.timer();
        let mut tx = self.pool.begin().await.map_err(AuditError::Write)?;
        let id = sqlx::query("INSERT INTO runs (started_at, mode) VALUES (?1, ?2)")
            .bind(ts(started))
            .bind(mode.to_string())
            .execute(&mut *tx)
            .await
            .map_err(AuditError::Write)?
            .last_insert_rowid();
        self.rechain(&mut tx, "begun", &[chain::Scope::Run(id)])
            .await?;
        tx.commit().await.map_err(AuditError::Write)?;
        Ok(RunId(id))
    }

    /// Updates the grace-period marks of one part after its complete listing, whose decisions
    /// run `part.run` recorded: an actionable decision without a mark gets one (now); a mark
    /// whose object is no longer an actionable decision is cleared, when `clear` (a listing
    /// filtered to a saved plan's targets sees too little to clear); and every decision whose
    /// mark is younger than its rule's grace days (`grace`: rule name and days) is recorded
    /// not attempted, saying when it will be acted on. One transaction; set-based, so that the
    /// cost does not depend on holding the candidates in memory.
    pub async fn update_marks(
        &self,
        part: &RunPart<'_>,
        now: DateTime<Utc>,
        grace: &[(String, u32)],
        clear: bool,
    ) -> Result<MarkTally, AuditError> {
        let _timer = self.timer();
        let at = ts(now);
        let kind = part.kind.as_str();
        let zone = part.zone.map(ZoneId::as_str);
        let zone_key = zone.unwrap_or("");
        let write = AuditError::Write;
        let mut tx = self.pool.begin().await.map_err(write)?;
        let events_before: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM mark_events")
            .fetch_one(&mut *tx)
            .await
            .map_err(write)?;
        sqlx::query("DROP TABLE IF EXISTS temp.candidates")
            .execute(&mut *tx)
            .await
            .map_err(write)?;
        sqlx::query(
            "CREATE TEMP TABLE candidates (id_key TEXT PRIMARY KEY, action_id INTEGER NOT NULL)",
        )
        .execute(&mut *tx)
        .await
        .map_err(write)?;
        sqlx::query(
            "INSERT OR IGNORE INTO temp.candidates (id_key, action_id)
             SELECT lower(resource_id), id FROM actions
             WHERE run_id = ?1 AND resource_kind = ?2 AND zone_id IS ?3 AND status = 'planned'",
        )
        .bind(part.run.0)
        .bind(kind)
        .bind(zone)
        .execute(&mut *tx)
        .await
        .map_err(write)?;
        let mut tally = MarkTally::default();
        if clear {
            let gone = "no longer a candidate: seen or used again, changed, or gone";
            let excluded = "an exclusion now covers it";
            tally.cleared = sqlx::query(
                "INSERT INTO mark_events (run_id, at, event, resource_kind, zone_id, resource_id,
                     rule, first_marked_at, reason)
                 SELECT ?1, ?2, 'cleared', m.resource_kind, ?4, m.resource_id, m.rule,
                     m.first_marked_at,
                     CASE WHEN EXISTS (SELECT 1 FROM actions a WHERE a.run_id = ?1
                                         AND a.resource_id = m.resource_id
                                         AND a.status = 'excluded')
                          THEN ?6 ELSE ?7 END
                 FROM marks m
                 WHERE m.resource_kind = ?3 AND m.zone_key = ?5
                   AND m.id_key NOT IN (SELECT id_key FROM temp.candidates)",
            )
            .bind(part.run.0)
            .bind(&at)
            .bind(kind)
            .bind(zone)
            .bind(zone_key)
            .bind(excluded)
            .bind(gone)
            .execute(&mut *tx)
            .await
            .map_err(write)?
            .rows_affected();
            sqlx::query(
                "DELETE FROM marks WHERE resource_kind = ?1 AND zone_key = ?2
                   AND id_key NOT IN (SELECT id_key FROM temp.candidates)",
            )
            .bind(kind)
            .bind(zone_key)
            .execute(&mut *tx)
            .await
            .map_err(write)?;
        }
        sqlx::query(
            "UPDATE marks SET last_run_id = ?1
             WHERE resource_kind = ?2 AND zone_key = ?3
               AND id_key IN (SELECT id_key FROM temp.candidates)",
        )
        .bind(part.run.0)
        .bind(kind)
        .bind(zone_key)
        .execute(&mut *tx)
        .await
        .map_err(write)?;
        let new_marks = "FROM temp.candidates c JOIN actions a ON a.id = c.action_id
                 JOIN snapshots s ON s.action_id = a.id
             WHERE NOT EXISTS (SELECT 1 FROM marks m WHERE m.resource_kind = ?3
                                 AND m.zone_key = ?5 AND m.id_key = c.id_key)";
        tally.marked = sqlx::query(&format!(
            "INSERT INTO mark_events (run_id, at, event, resource_kind, zone_id, resource_id,
                 rule, first_marked_at)
             SELECT ?1, ?2, 'marked', ?3, ?4, a.resource_id, a.rule, ?2 {new_marks}"
        ))
        .bind(part.run.0)
        .bind(&at)
        .bind(kind)
        .bind(zone)
        .bind(zone_key)
        .execute(&mut *tx)
        .await
        .map_err(write)?
        .rows_affected();
        sqlx::query(&format!(
            "INSERT INTO marks (resource_kind, zone_key, id_key, resource_id, name, user_email,
                 rule, action, first_marked_at, first_run_id, first_body_id, last_run_id)
             SELECT ?3, ?5, c.id_key, a.resource_id, a.device_name, a.user_email, a.rule,
                 a.action, ?2, ?1, s.body_id, ?1 {new_marks}"
        ))
        .bind(part.run.0)
        .bind(&at)
        .bind(kind)
        .bind(zone)
        .bind(zone_key)
        .execute(&mut *tx)
        .await
        .map_err(write)?;
        for (rule, days) in grace.iter().filter(|(_, days)| *days > 0) {
            let cutoff = ts(now - chrono::TimeDelta::days(i64::from(*days)));
            tally.waiting += sqlx::query(
                "UPDATE actions SET status = 'not_attempted', status_detail =
                     'in the grace period: marked ' || substr(m.first_marked_at, 1, 10) ||
                     ' by rule ' || m.rule || ', acts on ' ||
                     date(m.first_marked_at, '+' || ?5 || ' days') ||
                     ' if it is still a candidate then'
                 FROM temp.candidates c JOIN marks m
                     ON m.resource_kind = ?2 AND m.zone_key = ?3 AND m.id_key = c.id_key
                 WHERE actions.id = c.action_id AND actions.rule = ?4
                   AND m.first_marked_at > ?6",
            )
            .bind(part.run.0)
            .bind(kind)
            .bind(zone_key)
            .bind(rule)
            .bind(i64::from(*days))
            .bind(&cutoff)
            .execute(&mut *tx)
            .await
            .map_err(write)?
            .rows_affected();
        }
        let candidates: i64 = sqlx::query_scalar("SELECT count(*) FROM temp.candidates")
            .fetch_one(&mut *tx)
            .await
            .map_err(write)?;
        tally.due = u64::try_from(candidates).unwrap_or(0) - tally.waiting;
        sqlx::query("DROP TABLE temp.candidates")
            .execute(&mut *tx)
            .await
            .map_err(write)?;
        self.rechain_marks(&mut tx, part.run, events_before, kind, zone_key)
            .await?;
        tx.commit().await.map_err(write)?;
        Ok(tally)
    }

    /// Clears every mark outside `parts` (kind and zone): a kind without rules or without a
    /// grace period any more, a zone no longer configured. A mark that is not kept up to date
    /// must not be trusted later as "a candidate all along". Returns how many were cleared.
    pub async fn clear_marks_outside(
        &self,
        run: RunId,
        now: DateTime<Utc>,
        parts: &[(Kind, Option<ZoneId>)],
    ) -> Result<u64, AuditError> {
        let _timer = self.timer();
        let present: Vec<(String, String)> =
            sqlx::query_as("SELECT DISTINCT resource_kind, zone_key FROM marks")
                .fetch_all(&self.pool)
                .await
                .map_err(AuditError::Read)?;
        let kept = |kind: &str, zone: &str| {
            parts
                .iter()
                .any(|(k, z)| k.as_str() == kind && z.as_ref().map_or("", ZoneId::as_str) == zone)
        };
        let mut cleared = 0;
        for (kind, zone) in present.iter().filter(|(k, z)| !kept(k, z)) {
            let mut tx = self.pool.begin().await.map_err(AuditError::Write)?;
            let events_before: i64 =
                sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM mark_events")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(AuditError::Write)?;
            cleared += sqlx::query(
                "INSERT INTO mark_events (run_id, at, event, resource_kind, zone_id, resource_id,
                     rule, first_marked_at, reason)
                 SELECT ?1, ?2, 'cleared', resource_kind, NULLIF(zone_key, ''), resource_id, rule,
                     first_marked_at, 'no grace period applies to it any more (rules, grace_days or zones changed)'
                 FROM marks WHERE resource_kind = ?3 AND zone_key = ?4",
            )
            .bind(run.0)
            .bind(ts(now))
            .bind(kind)
            .bind(zone)
            .execute(&mut *tx)
            .await
            .map_err(AuditError::Write)?
            .rows_affected();
            sqlx::query("DELETE FROM marks WHERE resource_kind = ?1 AND zone_key = ?2")
                .bind(kind)
                .bind(zone)
                .execute(&mut *tx)
                .await
                .map_err(AuditError::Write)?;
            self.rechain_marks(&mut tx, run, events_before, kind, zone)
                .await?;
            tx.commit().await.map_err(AuditError::Write)?;
        }
        Ok(cleared)
    }

    /// The current marks, oldest first, filtered.
    pub async fn marks(&self, filter: &MarkFilter) -> Result<Vec<MarkRow>, AuditError> {
        let mut q = QueryBuilder::new(
            "SELECT resource_kind, NULLIF(zone_key, '') AS zone_id, resource_id, name, user_email,
                 rule, action, first_marked_at, first_run_id, last_run_id
             FROM marks WHERE 1 = 1",
        );
        if let Some(kind) = filter.resource_kind {
            q.push(" AND resource_kind = ").push_bind(kind.as_str());
        }
        if let Some(rule) = &filter.rule {
            q.push(" AND rule = ").push_bind(rule.clone());
        }
        if let Some(id) = &filter.resource_id {
            q.push(" AND id_key = lower(")
                .push_bind(id.clone())
                .push(")");
        }
        q.push(" ORDER BY first_marked_at, resource_id LIMIT ")
            .push_bind(filter.limit);
        q.build_query_as::<MarkRow>()
            .fetch_all(&self.pool)
            .await
            .map_err(AuditError::Read)
    }

    /// The marks run `run` set and cleared, at most `limit` of each (oldest first), with how
    /// many of each there were in all.
    pub async fn run_mark_events(
        &self,
        run: RunId,
        limit: usize,
    ) -> Result<(Vec<MarkEvent>, u64, u64), AuditError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut events = Vec::new();
        for event in ["marked", "cleared"] {
            let mut rows: Vec<MarkEvent> = sqlx::query_as(
                "SELECT e.event, e.resource_kind, e.zone_id, e.resource_id, e.rule,
                     e.first_marked_at, e.reason, m.name, m.user_email, m.action
                 FROM mark_events e
                 LEFT JOIN marks m ON m.resource_kind = e.resource_kind
                     AND m.zone_key = coalesce(e.zone_id, '') AND m.id_key = lower(e.resource_id)
                 WHERE e.run_id = ?1 AND e.event = ?2 ORDER BY e.id LIMIT ?3",
            )
            .bind(run.0)
            .bind(event)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(AuditError::Read)?;
            events.append(&mut rows);
        }
        let count = |event: &'static str| {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM mark_events WHERE run_id = ?1 AND event = ?2",
            )
            .bind(run.0)
            .bind(event)
            .fetch_one(&self.pool)
        };
        let marked = count("marked").await.map_err(AuditError::Read)?;
        let cleared = count("cleared").await.map_err(AuditError::Read)?;
        Ok((
            events,
            u64::try_from(marked).unwrap_or(0),
            u64::try_from(cleared).unwrap_or(0),
        ))
    }

    /// How many marks each kind and rule holds, for the gauge.
    pub async fn mark_counts(&self) -> Result<Vec<(String, String, i64)>, AuditError> {
        sqlx::query_as("SELECT resource_kind, rule, count(*) FROM marks GROUP BY 1, 2")
            .fetch_all(&self.pool)
            .await
            .map_err(AuditError::Read)
    }

    /// Begins an undo run (mode `undo`) of run `undoes`.
    pub async fn begin_undo_run(
        &self,
        undoes: RunId,
        started: DateTime<Utc>,
    ) -> Result<RunId, AuditError> {
        let _timer = self.timer();
        let mut tx = self.pool.begin().await.map_err(AuditError::Write)?;
        let id =
            sqlx::query("INSERT INTO runs (started_at, mode, undoes_run) VALUES (?1, 'undo', ?2)")
                .bind(ts(started))
                .bind(undoes.0)
                .execute(&mut *tx)
                .await
                .map_err(AuditError::Write)?
                .last_insert_rowid();
        self.rechain(&mut tx, "begun", &[chain::Scope::Run(id)])
            .await?;
        tx.commit().await.map_err(AuditError::Write)?;
        Ok(RunId(id))
    }

    /// The mode of run `run` (`plan`, `apply` or `undo`); `None` if there is no such run.
    pub async fn run_mode(&self, run: RunId) -> Result<Option<String>, AuditError> {
        sqlx::query_scalar("SELECT mode FROM runs WHERE id = ?1")
            .bind(run.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(AuditError::Read)
    }

    /// Every action of run `run`, in the order decided (what `zt-janitor undo` sorts).
    pub async fn run_actions(&self, run: RunId) -> Result<Vec<RunAction>, AuditError> {
        let rows = sqlx::query(
            "SELECT id, rule, action, resource_kind, resource_id, zone_id, status, user_email,
                    device_name
             FROM actions WHERE run_id = ?1 ORDER BY id",
        )
        .bind(run.0)
        .fetch_all(&self.pool)
        .await
        .map_err(AuditError::Read)?;
        rows.iter()
            .map(|r| {
                let action_id: i64 = r.try_get(0).map_err(AuditError::Read)?;
                let text = |i: usize| {
                    r.try_get::<Option<String>, _>(i)
                        .map_err(|e| AuditError::UnreadableAction {
                            action: action_id,
                            what: e.to_string(),
                        })
                };
                let resource_kind = text(3)?.unwrap_or_default();
                Ok(RunAction {
                    action_id,
                    rule: text(1)?.unwrap_or_default(),
                    action: text(2)?.unwrap_or_default(),
                    kind: Kind::parse(&resource_kind),
                    resource_kind,
                    resource_id: text(4)?.unwrap_or_default(),
                    zone: text(5)?,
                    status: text(6)?.unwrap_or_default(),
                    user_email: text(7)?,
                    name: text(8)?,
                })
            })
            .collect()
    }

    /// Records the actions of undo run `run`, `planned`, each naming the action it reverses
    /// (`undoes_action_id`). Returns their ids in the order of `decisions`.
    pub async fn record_undo_actions(
        &self,
        run: RunId,
        decided_at: DateTime<Utc>,
        decisions: &[UndoDecision],
    ) -> Result<Vec<i64>, AuditError> {
        let _timer = self.timer();
        let decided_at = ts(decided_at);
        let mut tx = self.pool.begin().await.map_err(AuditError::Write)?;
        let ids: Vec<i64> = next_ids(&mut tx, "actions", decisions.len())
            .await?
            .collect();
        for (d, id) in decisions.iter().zip(&ids) {
            sqlx::query(
                "INSERT INTO actions (id, run_id, decided_at, rule, action, resource_kind,
                     resource_id, user_email, user_email_folded, device_name, reason, status,
                     zone_id, undoes_action_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'planned', ?12, ?13)",
            )
            .bind(id)
            .bind(run.0)
            .bind(&decided_at)
            .bind(&d.rule)
            .bind(d.mutation.as_str())
            .bind(d.kind.as_str())
            .bind(d.id.as_str())
            .bind(d.user_email.as_deref())
            .bind(
                d.user_email
                    .as_deref()
                    .map(|e| crate::rules::fold_case(e).into_owned()),
            )
            .bind(d.name.as_deref())
            .bind(&d.reason)
            .bind(d.zone.as_ref().map(ZoneId::as_str))
            .bind(d.undoes)
            .execute(&mut *tx)
            .await
            .map_err(AuditError::Write)?;
        }
        // No snapshot: the object is as the run undone recorded it, under `undoes_action_id`.
        let none: Vec<(i64, &str)> = ids.iter().map(|id| (*id, "null")).collect();
        Self::insert_snapshots(&mut tx, &none).await?;
        self.rechain(&mut tx, "decided", &chain::decision_scopes(run, &ids))
            .await?;
        tx.commit().await.map_err(AuditError::Write)?;
        Ok(ids)
    }

    /// Records that run `run` applies the saved plan `plan`, with the cap the operator raised
    /// for it (`--max-actions`), if any.
    pub async fn note_saved_plan(
        &self,
        run: RunId,
        plan: &SavedPlan,
        max_actions_override: Option<u64>,
    ) -> Result<(), AuditError> {
        let _timer = self.timer();
        let mut tx = self.pool.begin().await.map_err(AuditError::Write)?;
        sqlx::query(
            "UPDATE runs SET saved_plan_path = ?2, saved_plan_sha256 = ?3,
                 max_actions_override = ?4 WHERE id = ?1",
        )
        .bind(run.0)
        .bind(plan.path.display().to_string())
        .bind(&plan.sha256)
        .bind(max_actions_override.map(|n| i64::try_from(n).unwrap_or(i64::MAX)))
        .execute(&mut *tx)
        .await
        .map_err(AuditError::Write)?;
        self.rechain(&mut tx, "saved_plan", &[chain::Scope::Run(run.0)])
            .await?;
        tx.commit().await.map_err(AuditError::Write)
    }

    /// Records the targets of a saved plan that a run did not act on, each as a decision
    /// `not_attempted` with why (no snapshot: the object was not acted on, and may be gone).
    pub async fn record_skipped_targets(
        &self,
        part: &RunPart<'_>,
        decided_at: DateTime<Utc>,
        skipped: &[Skipped<'_>],
    ) -> Result<(), AuditError> {
        let _timer = self.timer();
        let decided_at = ts(decided_at);
        let mut tx = self.pool.begin().await.map_err(AuditError::Write)?;
        let ids: Vec<i64> = next_ids(&mut tx, "actions", skipped.len()).await?.collect();
        for (batch, batch_ids) in skipped.chunks(INSERT_BATCH).zip(ids.chunks(INSERT_BATCH)) {
            let mut q = QueryBuilder::new(
                "INSERT INTO actions (id, run_id, decided_at, rule, action, resource_kind,
                     resource_id, user_email, user_email_folded, device_name, reason, status,
                     status_detail, zone_id) ",
            );
            q.push_values(batch.iter().zip(batch_ids), |mut row, (s, id)| {
                let t = s.target;
                row.push_bind(*id)
                    .push_bind(part.run.0)
                    .push_bind(&decided_at)
                    .push_bind(&t.rule)
                    .push_bind(t.action.as_str())
                    .push_bind(part.kind.as_str())
                    .push_bind(t.id.as_str())
                    .push_bind(t.user_email.as_deref())
                    .push_bind(
                        t.user_email
                            .as_deref()
                            .map(|e| crate::rules::fold_case(e).into_owned()),
                    )
                    .push_bind(&t.name)
                    .push_bind(&t.reason)
                    .push_bind(ActionStatus::NotAttempted.as_str())
                    .push_bind(&s.why)
                    .push_bind(part.zone.map(ZoneId::as_str));
            });
            q.build()
                .execute(&mut *tx)
                .await
                .map_err(AuditError::Write)?;
            let none: Vec<(i64, &str)> = batch_ids.iter().map(|id| (*id, "null")).collect();
            Self::insert_snapshots(&mut tx, &none).await?;
        }
        self.rechain(&mut tx, "decided", &chain::decision_scopes(part.run, &ids))
            .await?;
        tx.commit().await.map_err(AuditError::Write)
    }

    /// Closes a run, with how each of its kinds went (`kinds`), in one transaction.
    pub async fn finish_run(
        &self,
        run: RunId,
        outcome: RunOutcome,
        reason: Option<&str>,
        summary: &RunSummary,
        kinds: &[KindRun],
        finished: DateTime<Utc>,
    ) -> Result<(), AuditError> {
        let _timer = self.timer();
        let n = |v: Option<u64>| v.map(|v| v as i64);
        let mut tx = self.pool.begin().await.map_err(AuditError::Write)?;
        for k in kinds {
            sqlx::query(
                "INSERT INTO run_kinds (run_id, kind, outcome, reason, seen, candidates, excluded,
                     done, failed, refused)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .bind(run.0)
            .bind(k.kind.as_str())
            .bind(k.outcome.as_str())
            .bind(k.reason.as_deref())
            .bind(n(k.seen))
            .bind(n(k.candidates))
            .bind(n(k.excluded))
            .bind(k.done as i64)
            .bind(k.failed as i64)
            .bind(k.refused as i64)
            .execute(&mut *tx)
            .await
            .map_err(AuditError::Write)?;
        }
        sqlx::query(
            "UPDATE runs SET finished_at = ?2, outcome = ?3, reason = ?4, pages = ?5,
                 seen_total = ?6, seen_active = ?7, seen_revoked = ?8, candidates = ?9,
                 excluded = ?10, actions_done = ?11, actions_failed = ?12, api_requests = ?13,
                 actions_unconfirmed = ?14, actions_stuck = ?15, refused = ?16
             WHERE id = ?1",
        )
        .bind(run.0)
        .bind(ts(finished))
        .bind(outcome.as_str())
        .bind(reason)
        .bind(n(summary.pages))
        .bind(n(summary.seen_total))
        .bind(n(summary.seen_active))
        .bind(n(summary.seen_revoked))
        .bind(n(summary.candidates))
        .bind(n(summary.excluded))
        .bind(summary.actions_done as i64)
        .bind(summary.actions_failed as i64)
        .bind(summary.api_requests as i64)
        .bind(summary.actions_unconfirmed as i64)
        .bind(summary.actions_stuck as i64)
        .bind(summary.actions_refused as i64)
        .execute(&mut *tx)
        .await
        .map_err(AuditError::Write)?;
        // A run that did not act keeps its decisions as spans (storage.rs); its decisions'
        // chain entries then say they are gone.
        let folded = Self::fold_run(&mut tx, run).await?;
        self.rechain_closed_run(&mut tx, "finished", run.0, chain::Statuses::Written)
            .await?;
        if folded > 0 {
            self.rechain_run_scopes(&mut tx, "folded", run, &["actions"])
                .await?;
        }
        tx.commit().await.map_err(AuditError::Write)?;
        if folded > 0 {
            // The folded rows' pages, and the write-ahead log the fold filled, go back to the
            // file system: a plan cycle leaves the file at what it keeps.
            if let Err(e) = self.reclaim_space().await {
                tracing::warn!(error = %e, "could not give the folded decisions' space back; the pages stay in the file for reuse");
            }
        }
        Ok(())
    }

    /// Records decisions in one transaction and takes their snapshots out of memory. Returns
    /// the action row ids in the order of `candidates`.
    pub async fn record_decisions(
        &self,
        run: RunId,
        decided_at: DateTime<Utc>,
        candidates: &mut [Candidate],
        form: BodyForm,
    ) -> Result<Vec<i64>, AuditError> {
        let _timer = self.timer();
        let decided_at = ts(decided_at);
        let mut tx = self.pool.begin().await.map_err(AuditError::Write)?;
        let ids: Vec<i64> = next_ids(&mut tx, "actions", candidates.len())
            .await?
            .collect();
        let mut body_ids = next_ids(&mut tx, "snapshot_bodies", candidates.len()).await?;
        let mut digests = chain::DecisionDigests::new(run);
        for (batch, batch_ids) in candidates
            .chunks_mut(INSERT_BATCH)
            .zip(ids.chunks(INSERT_BATCH))
        {
            let mut bodies = Vec::with_capacity(batch.len());
            let mut q = QueryBuilder::new(
                "INSERT INTO actions (id, run_id, decided_at, rule, action, resource_kind,
                     resource_id, user_email, user_email_folded, device_name, last_seen_at,
                     reason, excluded_by, status, zone_id) ",
            );
            // Values made here are moved into the statement: sqlx copies what is borrowed.
            q.push_values(
                batch.iter_mut().zip(batch_ids).zip(body_ids.by_ref()),
                |mut row, ((c, id), body_id)| {
                    let status = if c.excluded_by.is_some() {
                        ActionStatus::Excluded
                    } else {
                        ActionStatus::Planned
                    };
                    let folded = c
                        .user_email
                        .as_deref()
                        .map(|e| crate::rules::fold_case(e).into_owned());
                    let last_seen = c.last_seen_at.to_string();
                    let why = c.why.to_string();
                    let zone = c.zone.as_ref().map(ZoneId::as_str);
                    // The snapshot leaves memory here, its text moved to the body's row.
                    let body = c
                        .snapshot
                        .take()
                        .map_or_else(|| "null".to_owned(), |b| String::from(Box::<str>::from(b)));
                    let body = storage::NewBody::new(*id, body_id, body, form);
                    // Columns in byte order of their names; `status` is chained when the run
                    // closes.
                    digests.add(*id, &body.sha256, |r| {
                        r.text("action", Some(c.action.as_str()))
                            .text("decided_at", Some(&decided_at))
                            .text("device_name", Some(&c.name))
                            .text("excluded_by", c.excluded_by.as_deref())
                            .int("id", Some(*id))
                            .text("last_seen_at", Some(&last_seen))
                            .text("reason", Some(&why))
                            .text("resource_id", Some(c.id.as_str()))
                            .text("resource_kind", Some(c.kind.as_str()))
                            .text("rule", Some(&c.rule))
                            .int("run_id", Some(run.0))
                            .text("user_email", c.user_email.as_deref())
                            .text("user_email_folded", folded.as_deref())
                            .text("zone_id", zone);
                    });
                    bodies.push(body);
                    row.push_bind(*id)
                        .push_bind(run.0)
                        .push_bind(decided_at.clone())
                        .push_bind(c.rule.clone())
                        .push_bind(c.action.as_str())
                        .push_bind(c.kind.as_str())
                        .push_bind(c.id.as_str().to_owned())
                        .push_bind(c.user_email.clone())
                        .push_bind(folded)
                        .push_bind(c.name.clone())
                        .push_bind(last_seen)
                        .push_bind(why)
                        .push_bind(c.excluded_by.clone())
                        .push_bind(status.as_str())
                        .push_bind(zone.map(str::to_owned));
                },
            );
            q.build()
                .execute(&mut *tx)
                .await
                .map_err(AuditError::Write)?;
            Self::insert_bodies(&mut tx, bodies).await?;
        }
        chain::append(&mut tx, &digests.finish())
            .await
            .map_err(AuditError::Write)?;
        tx.commit().await.map_err(AuditError::Write)?;
        Ok(ids)
    }

    /// Records a batch of decisions on a task of its own, so that listing goes on meanwhile.
    /// The batch comes back with its snapshots dropped, and its action row ids in order.
    pub fn record_decisions_in_background(
        &self,
        run: RunId,
        decided_at: DateTime<Utc>,
        mut batch: Vec<Candidate>,
        form: BodyForm,
    ) -> BackgroundWrite<(Vec<Candidate>, Vec<i64>)> {
        let store = self.clone();
        let handle = tokio::spawn(async move {
            let started = Instant::now();
            let recorded = store
                .record_decisions(run, decided_at, &mut batch, form)
                .await;
            (recorded.map(|ids| (batch, ids)), started.elapsed())
        });
        BackgroundWrite {
            handle,
            clock: Arc::clone(&self.clock),
        }
    }

    /// Up to `limit` of the actions of one part of a run (its kind, in its zone) still
    /// `planned`, after action `after`, in the order they were decided: what the executor acts
    /// on, read back a batch at a time so that no run holds all its candidates in memory.
    pub async fn planned_actions(
        &self,
        part: &RunPart<'_>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<PlannedAction>, AuditError> {
        // `actions_run` holds each run's rows in id order, so this reads only the batch.
        let mut rows = sqlx::query(
            "SELECT id, rule, action, resource_id, user_email, device_name FROM actions
             WHERE run_id = ?1 AND id > ?2 AND resource_kind = ?3 AND zone_id IS ?4
               AND status = 'planned'
             ORDER BY id LIMIT ?5",
        )
        .bind(part.run.0)
        .bind(after)
        .bind(part.kind.as_str())
        .bind(part.zone.map(ZoneId::as_str))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch(&self.pool);
        // Row by row, so that a batch is in memory once, as planned actions, not twice.
        let mut planned = Vec::with_capacity(limit.min(APPLY_PREALLOCATE));
        while let Some(row) = rows.try_next().await.map_err(AuditError::Read)? {
            planned.push(Self::planned_action(part, &row)?);
        }
        Ok(planned)
    }

    /// One row of [`AuditStore::planned_actions`].
    fn planned_action(
        part: &RunPart<'_>,
        row: &sqlx::sqlite::SqliteRow,
    ) -> Result<PlannedAction, AuditError> {
        // try_get: SQLite keeps any type in any column, which `get` would panic on.
        let action_id: i64 = row.try_get("id").map_err(AuditError::Read)?;
        let unreadable = |what: String| AuditError::UnreadableAction {
            action: action_id,
            what,
        };
        let text = |column: &str| {
            row.try_get::<Option<String>, _>(column)
                .map_err(|e| unreadable(format!("{column}: {e}")))
        };
        let action = text("action")?.unwrap_or_default();
        let id = text("resource_id")?.unwrap_or_default();
        Ok(PlannedAction {
            action_id,
            kind: part.kind,
            rule: text("rule")?.unwrap_or_default(),
            action: Action::parse(&action)
                .ok_or_else(|| unreadable(format!("unknown action {action:?}")))?,
            id: ResourceId::parse(&id).map_err(unreadable)?,
            user_email: text("user_email")?,
            name: text("device_name")?.unwrap_or_default(),
        })
    }

    /// Records every action of one part of a run still `planned` after action `after` as
    /// not attempted, for `reason`; returns how many there were.
    pub async fn withdraw_planned(
        &self,
        part: &RunPart<'_>,
        after: i64,
        reason: &str,
    ) -> Result<u64, AuditError> {
        let _timer = self.timer();
        let done = sqlx::query(
            "UPDATE actions SET status = 'not_attempted', status_detail = ?5
             WHERE run_id = ?1 AND id > ?2 AND resource_kind = ?3 AND zone_id IS ?4
               AND status = 'planned'",
        )
        .bind(part.run.0)
        .bind(after)
        .bind(part.kind.as_str())
        .bind(part.zone.map(ZoneId::as_str))
        .bind(reason)
        .execute(&self.pool)
        .await
        .map_err(AuditError::Write)?;
        Ok(done.rows_affected())
    }

    /// Sets the status of the given actions in one transaction.
    pub async fn set_action_status(
        &self,
        action_ids: &[i64],
        status: ActionStatus,
        detail: Option<&str>,
    ) -> Result<(), AuditError> {
        let _timer = self.timer();
        let mut tx = self.pool.begin().await.map_err(AuditError::Write)?;
        self.set_action_status_in(&mut tx, action_ids, status, detail)
            .await?;
        tx.commit().await.map_err(AuditError::Write)
    }

    async fn set_action_status_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        action_ids: &[i64],
        status: ActionStatus,
        detail: Option<&str>,
    ) -> Result<(), AuditError> {
        for batch in action_ids.chunks(INSERT_BATCH) {
            let mut q = QueryBuilder::new("UPDATE actions SET status = ");
            q.push_bind(status.as_str())
                .push(", status_detail = ")
                .push_bind(detail)
                .push(" WHERE id IN (");
            let mut sep = q.separated(", ");
            for id in batch {
                sep.push_bind(*id);
            }
            q.push(")");
            q.build()
                .persistent(false)
                .execute(&mut **tx)
                .await
                .map_err(AuditError::Write)?;
        }
        Ok(())
    }

    /// Commits one journal entry in one transaction and returns the mutation ids of its
    /// intents, in order. Once this returns, the intents are durable and their calls may be
    /// sent: a crash from here on leaves them for [`AuditStore::pending_mutations`].
    pub async fn write_journal(
        &self,
        run: RunId,
        entry: &JournalEntry,
    ) -> Result<Vec<MutationId>, AuditError> {
        let _timer = self.timer();
        // Each statement is a round trip to SQLite's thread, so every part of the entry is
        // one set-based statement (per batch of rows), however many calls it covers.
        let mut tx = self.pool.begin().await.map_err(AuditError::Write)?;
        for batch in entry.outcomes.chunks(INSERT_BATCH) {
            let mut q = QueryBuilder::new(
                "UPDATE mutations SET completed_at = v.column2, outcome = v.column3,
                     http_status = v.column4, cf_error_code = v.column5,
                     cf_error_message = v.column6
                 FROM (",
            );
            q.push_values(batch, |mut row, o| {
                row.push_bind(o.mutation.0)
                    .push_bind(ts(o.at))
                    .push_bind(o.result.outcome.as_str())
                    .push_bind(o.result.http_status.map(i64::from))
                    .push_bind(o.result.cf_error_code)
                    .push_bind(o.result.cf_error_message.as_deref());
            });
            q.push(") AS v WHERE mutations.id = v.column1");
            q.build()
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(AuditError::Write)?;
        }
        // An action row is written when decided and once more when its call is settled; the
        // intent lives in the mutation row alone, which keeps a call's audit cost to one row
        // update per action.
        let settled: Vec<(MutationId, &Settled, i64)> = entry
            .outcomes
            .iter()
            .flat_map(|o| o.settles.iter().map(|s| (o.mutation, s)))
            .flat_map(|(m, s)| s.actions.iter().map(move |a| (m, s, *a)))
            .collect();
        for batch in settled.chunks(INSERT_BATCH) {
            let mut q = QueryBuilder::new(
                "UPDATE actions SET mutation_id = v.column2, status = v.column3,
                     status_detail = v.column4
                 FROM (",
            );
            q.push_values(batch, |mut row, (mutation, settled, action)| {
                row.push_bind(*action)
                    .push_bind(mutation.0)
                    .push_bind(settled.status.as_str())
                    .push_bind(settled.detail.as_deref());
            });
            q.push(") AS v WHERE actions.id = v.column1");
            q.build()
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(AuditError::Write)?;
        }
        if let Some(w) = &entry.withdrawal {
            // A call never sent is no mutation: its row goes, its actions were not attempted.
            self.set_action_status_in(
                &mut tx,
                &w.actions,
                ActionStatus::NotAttempted,
                Some(&w.reason),
            )
            .await?;
            for m in &w.mutations {
                sqlx::query("DELETE FROM mutations WHERE id = ?1 AND outcome IS NULL")
                    .bind(m.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(AuditError::Write)?;
            }
        }
        // The chain: each call answered or withdrawn; the actions settled, when reconciliation
        // settles those of a run already closed (an open run's are chained when it closes).
        let mut calls: Vec<(i64, &'static str)> = entry
            .outcomes
            .iter()
            .map(|o| (o.mutation.0, "outcome"))
            .collect();
        calls.extend(
            entry
                .withdrawal
                .iter()
                .flat_map(|w| w.mutations.iter().map(|m| (m.0, "withdrawn"))),
        );
        let touched: Vec<i64> = settled
            .iter()
            .map(|(_, _, a)| *a)
            .chain(
                entry
                    .withdrawal
                    .iter()
                    .flat_map(|w| w.actions.iter().copied()),
            )
            .collect();
        if entry.intents.is_empty() {
            self.chain_journal(&mut tx, run, &calls, &touched).await?;
            tx.commit().await.map_err(AuditError::Write)?;
            return Ok(Vec::new());
        }
        let ids: Vec<MutationId> = next_ids(&mut tx, "mutations", entry.intents.len())
            .await?
            .map(MutationId)
            .collect();
        let with_ids: Vec<(MutationId, &Intent)> =
            ids.iter().copied().zip(&entry.intents).collect();
        for batch in with_ids.chunks(INSERT_BATCH) {
            let mut q = QueryBuilder::new(
                "INSERT INTO mutations (id, run_id, resource_kind, kind, method, path, resource_ids,
                     intent_at, zone_id) ",
            );
            q.push_values(batch, |mut row, (id, intent)| {
                row.push_bind(id.0)
                    .push_bind(run.0)
                    .push_bind(intent.resource_kind.as_str())
                    .push_bind(intent.kind.as_str())
                    .push_bind(&intent.method)
                    .push_bind(&intent.path)
                    .push_bind(serde_json::to_string(&intent.ids).expect("ids serialize"))
                    .push_bind(ts(intent.at))
                    .push_bind(intent.zone.as_ref().map(ZoneId::as_str));
            });
            q.build()
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(AuditError::Write)?;
        }
        calls.extend(ids.iter().map(|m| (m.0, "intent")));
        self.chain_journal(&mut tx, run, &calls, &touched).await?;
        tx.commit().await.map_err(AuditError::Write)?;
        Ok(ids)
    }

    /// Sets the status of one resource's action within a mutation (reconciliation decides per id).
    pub async fn set_mutation_action_status(
        &self,
        mutation: &PendingMutation,
        resource_id: &ResourceId,
        status: ActionStatus,
        detail: &str,
    ) -> Result<(), AuditError> {
        let _timer = self.timer();
        let mut tx = self.pool.begin().await.map_err(AuditError::Write)?;
        // A registration is decided at most once per run, so run and id name the action.
        let settled: Vec<i64> = sqlx::query_scalar(
            "UPDATE actions SET status = ?4, status_detail = ?5, mutation_id = ?1
             WHERE run_id = ?2 AND resource_id = ?3 RETURNING id",
        )
        .bind(mutation.id.0)
        .bind(mutation.run_id.0)
        .bind(resource_id.as_str())
        .bind(status.as_str())
        .bind(detail)
        .fetch_all(&mut *tx)
        .await
        .map_err(AuditError::Write)?;
        self.rechain_settled(&mut tx, mutation.run_id, &settled)
            .await?;
        tx.commit().await.map_err(AuditError::Write)
    }

    /// The candidates of `run` (still planned) whose registration failed in each of the runs
    /// just before, with the same error, for reasons concerning its id alone (the call's
    /// outcome `rejected`, or `not_found` while it still existed) or was already stuck for it.
    /// Runs that did not act on it (plan mode, refused by the caps, aborted, stopped) neither
    /// count nor break the streak, and neither does a run whose call Cloudflare refused
    /// because the object is in use (`refused_by_api`): that is the object's state, not a
    /// failing call, and it is reported every run anyway. A run that listed everything and did
    /// not select it (it left the plan), or any other result, ends it. Counts up to `needed`.
    pub async fn failure_streaks(
        &self,
        run: RunId,
        needed: u32,
    ) -> Result<Vec<FailureStreak>, AuditError> {
        // Most candidates never failed: the small partial index answers for them.
        let flagged = sqlx::query(
            "SELECT cur.id, cur.resource_id, cur.action FROM actions cur
             WHERE cur.run_id = ?1 AND cur.status = 'planned'
               AND EXISTS (SELECT 1 FROM actions p
                           WHERE p.resource_id = cur.resource_id
                             AND p.status IN ('failed', 'stuck') AND p.run_id < ?1)",
        )
        .bind(run.0)
        .fetch_all(&self.pool)
        .await
        .map_err(AuditError::Read)?;
        let mut streaks = Vec::new();
        for row in &flagged {
            let action_id: i64 = row.get(0);
            let resource: String = row.get(1);
            let action: String = row.get(2);
            // A span (decisions of runs that did not act, folded) reads as its last run's row.
            let history = sqlx::query(
                "SELECT p.run_id AS run_id, p.status, p.action, p.mutation_id, p.status_detail,
                        m.outcome, m.http_status, m.cf_error_code, p.id AS sort_id
                 FROM actions p LEFT JOIN mutations m ON m.id = p.mutation_id
                 WHERE p.resource_id = ?1 AND p.run_id < ?2
                 UNION ALL
                 SELECT d.last_run_id, d.status, d.action, NULL, d.last_status_detail, NULL,
                        NULL, NULL, d.id
                 FROM decision_spans d WHERE d.resource_id = ?1 AND d.last_run_id < ?2
                 ORDER BY run_id DESC, sort_id DESC LIMIT 64",
            )
            .bind(&resource)
            .bind(run.0)
            .fetch_all(&self.pool)
            .await
            .map_err(AuditError::Read)?;
            let Some(oldest) = history.last().map(|h| h.get::<i64, _>(0)) else {
                continue;
            };
            // Runs that listed everything: one without a row for this id did not select it. A
            // run whose decisions were folded into spans (it did not act) has its row there.
            let listed: Vec<i64> = sqlx::query_scalar(
                "SELECT r.id FROM runs r WHERE r.id > ?1 AND r.id < ?2
                   AND r.seen_total IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM decision_spans d WHERE d.resource_id = ?3
                                     AND r.id BETWEEN d.first_run_id AND d.last_run_id)",
            )
            .bind(oldest)
            .bind(run.0)
            .bind(&resource)
            .fetch_all(&self.pool)
            .await
            .map_err(AuditError::Read)?;
            let with_row: std::collections::HashSet<i64> =
                history.iter().map(|h| h.get::<i64, _>(0)).collect();
            type Signature = (String, Option<String>, Option<i64>, Option<i64>);
            let mut signature: Option<Signature> = None;
            let mut latest: Option<(MutationId, Option<String>, bool)> = None;
            let mut failure_detail: Option<String> = None;
            let mut runs = 0;
            let mut after = run.0;
            for h in &history {
                let at: i64 = h.get(0);
                if listed
                    .iter()
                    .any(|r| *r > at && *r < after && !with_row.contains(r))
                {
                    break;
                }
                after = at;
                use ActionStatus as S;
                let status = ActionStatus::parse(h.get(1));
                if matches!(
                    status,
                    Some(S::Planned | S::NotAttempted | S::InFlight | S::RefusedByApi)
                ) {
                    continue;
                }
                let outcome: Option<String> = h.get(5);
                let mutation: Option<i64> = h.get(3);
                let per_id = matches!(outcome.as_deref(), Some("rejected" | "not_found"));
                let (Some(mutation), true, true) = (
                    mutation,
                    per_id,
                    matches!(status, Some(S::Failed | S::Stuck)),
                ) else {
                    break;
                };
                let this: Signature = (h.get(2), outcome, h.get(6), h.get(7));
                if this.0 != action || signature.as_ref().is_some_and(|s| *s != this) {
                    break;
                }
                signature = Some(this);
                let detail: Option<String> = h.get(4);
                if latest.is_none() {
                    latest = Some((
                        MutationId(mutation),
                        detail.clone(),
                        status == Some(S::Stuck),
                    ));
                }
                if status == Some(S::Failed) && failure_detail.is_none() {
                    failure_detail = detail;
                }
                runs += 1;
                if runs >= needed {
                    break;
                }
            }
            if let Some((mutation, latest_detail, was_stuck)) = latest {
                let (detail, already_stuck) = match (was_stuck, latest_detail, failure_detail) {
                    (true, Some(d), _) => (d, true),
                    (_, _, Some(d)) => (d, false),
                    (_, d, None) => (d.unwrap_or_default(), false),
                };
                streaks.push(FailureStreak {
                    action_id,
                    runs,
                    mutation,
                    detail,
                    already_stuck,
                });
            }
        }
        Ok(streaks)
    }

    /// Marks actions stuck: not attempted, pointing at the failed call that made them so.
    pub async fn mark_stuck(&self, stuck: &[(i64, MutationId, String)]) -> Result<(), AuditError> {
        let _timer = self.timer();
        let mut tx = self.pool.begin().await.map_err(AuditError::Write)?;
        for (action, mutation, detail) in stuck {
            sqlx::query(
                "UPDATE actions SET status = 'stuck', status_detail = ?2, mutation_id = ?3
                 WHERE id = ?1",
            )
            .bind(action)
            .bind(detail)
            .bind(mutation.0)
            .execute(&mut *tx)
            .await
            .map_err(AuditError::Write)?;
        }
        tx.commit().await.map_err(AuditError::Write)
    }

    /// Intents whose outcome was never recorded: a crash happened between send and record.
    /// One that cannot be read back (its kind, its JSON or an id) is an error naming it,
    /// never skipped: skipped, it would never be reconciled.
    pub async fn pending_mutations(&self) -> Result<Vec<PendingMutation>, AuditError> {
        let rows = sqlx::query(
            "SELECT id, run_id, kind, resource_ids, resource_kind, zone_id FROM mutations
             WHERE outcome IS NULL ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(AuditError::Read)?;
        rows.iter()
            .map(|r| {
                let (id, run_id) = (r.get(0), r.get(1));
                let unreadable = |what: String| AuditError::UnreadableIntent {
                    mutation: id,
                    run: run_id,
                    what,
                };
                // try_get: SQLite keeps a BLOB in a TEXT column, which `get` would panic on.
                let kind: String = r
                    .try_get(2)
                    .map_err(|e| unreadable(format!("its kind cannot be read: {e}")))?;
                let kind = MutationKind::parse(&kind)
                    .ok_or_else(|| unreadable(format!("unknown kind {kind:?}")))?;
                let resource_kind: String = r
                    .try_get(4)
                    .map_err(|e| unreadable(format!("its resource_kind cannot be read: {e}")))?;
                let resource_kind = Kind::parse(&resource_kind).ok_or_else(|| {
                    unreadable(format!("unknown resource kind {resource_kind:?}"))
                })?;
                let ids: String = r
                    .try_get(3)
                    .map_err(|e| unreadable(format!("its resource_ids cannot be read: {e}")))?;
                let ids: Vec<String> = serde_json::from_str(&ids).map_err(|e| {
                    unreadable(format!("resource_ids is not a JSON array of ids ({e})"))
                })?;
                let resource_ids = ids
                    .iter()
                    .map(|s| ResourceId::parse(s))
                    .collect::<Result<_, _>>()
                    .map_err(|e| unreadable(format!("resource_ids names {e}")))?;
                let zone: Option<String> = r
                    .try_get(5)
                    .map_err(|e| unreadable(format!("its zone_id cannot be read: {e}")))?;
                let zone = zone
                    .map(|z| ZoneId::parse(&z))
                    .transpose()
                    .map_err(|e| unreadable(format!("zone_id: {e}")))?;
                if resource_kind.zoned() && zone.is_none() {
                    return Err(unreadable(format!(
                        "a {resource_kind} call without its zone_id"
                    )));
                }
                Ok(PendingMutation {
                    id: MutationId(id),
                    run_id: RunId(run_id),
                    resource_kind,
                    zone,
                    kind,
                    resource_ids,
                })
            })
            .collect()
    }

    /// The last finished run and the last successful one (applied or planned), by run id:
    /// runs are numbered in the order they start. A timestamp this version cannot parse
    /// reads as unknown. Undo runs are not cycles: they count for neither.
    pub async fn last_runs(&self) -> Result<LastRuns, AuditError> {
        let row = sqlx::query(
            "SELECT
                 (SELECT finished_at FROM runs WHERE outcome IS NOT NULL AND mode <> 'undo'
                  ORDER BY id DESC LIMIT 1),
                 (SELECT outcome FROM runs WHERE outcome IS NOT NULL AND mode <> 'undo'
                  ORDER BY id DESC LIMIT 1),
                 (SELECT finished_at FROM runs WHERE outcome IN ('applied', 'planned')
                    AND mode <> 'undo'
                  ORDER BY id DESC LIMIT 1)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(AuditError::Read)?;
        let time = |i: usize| {
            row.get::<Option<String>, _>(i)
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        Ok(LastRuns {
            finished: time(0),
            outcome: row
                .get::<Option<String>, _>(1)
                .as_deref()
                .and_then(RunOutcome::parse),
            succeeded: time(2),
        })
    }

    pub async fn recent_runs(&self, limit: i64) -> Result<Vec<RunRow>, AuditError> {
        let rows = sqlx::query(
            "SELECT id, started_at, finished_at, mode, outcome, reason, seen_total, candidates,
                    excluded, actions_done, actions_failed, api_requests, refused
             FROM runs ORDER BY id DESC LIMIT ?1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(AuditError::Read)?;
        Ok(rows
            .iter()
            .map(|r| RunRow {
                id: r.get(0),
                started_at: r.get(1),
                finished_at: r.get(2),
                mode: r.get(3),
                outcome: r.get(4),
                reason: r.get(5),
                seen_total: r.get(6),
                candidates: r.get(7),
                excluded: r.get(8),
                actions_done: r.get(9),
                actions_failed: r.get(10),
                actions_refused: r.get(12),
                api_requests: r.get(11),
            })
            .collect())
    }

    /// How many runs the log holds.
    pub async fn count_runs(&self) -> Result<i64, AuditError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM runs")
            .fetch_one(&self.pool)
            .await
            .map_err(AuditError::Read)
    }
}

/// The `WHERE` conditions of `f` (on `actions a`), after a `WHERE 1 = 1`.
fn push_action_filter(q: &mut QueryBuilder<'_, sqlx::Sqlite>, f: &ActionFilter) {
    if let Some(run) = f.run_id {
        q.push(" AND a.run_id = ").push_bind(run);
    }
    if let Some(rule) = &f.rule {
        q.push(" AND a.rule = ").push_bind(rule.clone());
    }
    if let Some(email) = &f.user_email {
        // SQLite's lower() is ASCII-only: compare Unicode case-folded forms instead.
        q.push(" AND a.user_email_folded = ")
            .push_bind(crate::rules::fold_case(email).into_owned());
    }
    if let Some(kind) = f.resource_kind {
        q.push(" AND a.resource_kind = ").push_bind(kind.as_str());
    }
    if let Some(id) = &f.resource_id {
        q.push(" AND a.resource_id = ").push_bind(id.clone());
    }
    if let Some(since) = f.since {
        q.push(" AND a.decided_at >= ").push_bind(ts(since));
    }
    if let Some(until) = f.until {
        q.push(" AND a.decided_at < ").push_bind(ts(until));
    }
}

/// One attempt to deliver a run's notification to a `[[notify]]` target: a row of
/// `notification_attempts`. Never the URL: it is a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationAttempt {
    pub run: RunId,
    pub target: String,
    /// From 1.
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcome: String,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    /// The last attempt of its delivery.
    pub last: bool,
}

/// An object a run acted on, failed on, or would act on, for a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunItem {
    pub kind: String,
    pub zone: Option<String>,
    pub id: String,
    /// The device's name, the token's name, the certificate's common name.
    pub name: Option<String>,
    pub user_email: Option<String>,
    pub rule: String,
    pub action: String,
    pub status: String,
    pub detail: Option<String>,
}

/// The statuses a notification lists, worst first: failures, then what was done, then what
/// was not attempted or only planned.
const ITEM_STATUSES: [&str; 8] = [
    "failed",
    "unconfirmed",
    "stuck",
    "refused_by_api",
    "done",
    "already_gone",
    "not_attempted",
    "planned",
];

impl AuditStore {
    /// Records one notification attempt.
    pub async fn record_notification_attempt(
        &self,
        a: &NotificationAttempt,
    ) -> Result<(), AuditError> {
        let _timer = self.timer();
        sqlx::query(
            "INSERT INTO notification_attempts (run_id, target, attempt, started_at,
                 finished_at, outcome, http_status, error, last)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .bind(a.run.0)
        .bind(&a.target)
        .bind(i64::from(a.attempt))
        .bind(ts(a.started_at))
        .bind(ts(a.finished_at))
        .bind(&a.outcome)
        .bind(a.http_status.map(i64::from))
        .bind(&a.error)
        .bind(a.last)
        .execute(&self.pool)
        .await
        .map_err(AuditError::Write)?;
        Ok(())
    }

    /// The candidates of the last finished run of `mode` before `run`; `None` when there is
    /// none or its listing did not complete.
    pub async fn previous_candidates(
        &self,
        run: RunId,
        mode: Mode,
    ) -> Result<Option<u64>, AuditError> {
        let row = sqlx::query(
            "SELECT candidates FROM runs
             WHERE id < ?1 AND mode = ?2 AND outcome IS NOT NULL
             ORDER BY id DESC LIMIT 1",
        )
        .bind(run.0)
        .bind(mode.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(AuditError::Read)?;
        Ok(row
            .and_then(|r| r.try_get::<Option<i64>, _>(0).ok().flatten())
            .and_then(|n| u64::try_from(n).ok()))
    }

    /// The first `limit` objects of `run` a notification lists (failures first, then done,
    /// then not attempted or planned), and how many of each status there are in all.
    pub async fn run_items(
        &self,
        run: RunId,
        limit: usize,
    ) -> Result<(Vec<RunItem>, Vec<(String, u64)>), AuditError> {
        let statuses = ITEM_STATUSES
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let order: String = ITEM_STATUSES
            .iter()
            .enumerate()
            .map(|(i, s)| format!(" WHEN '{s}' THEN {i}"))
            .collect();
        let rows = sqlx::query(&format!(
            "SELECT resource_kind, zone_id, resource_id, device_name, user_email, rule, action,
                    status, status_detail
             FROM {} WHERE status IN ({statuses})
             ORDER BY CASE status{order} END, id LIMIT ?2",
            storage::RUN_DECISIONS
        ))
        .bind(run.0)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(AuditError::Read)?;
        // try_get: SQLite keeps any type in any column, which `get` would panic on.
        let text = |row: &sqlx::sqlite::SqliteRow, i: usize| {
            row.try_get::<Option<String>, _>(i)
                .map_err(AuditError::Read)
        };
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            items.push(RunItem {
                kind: text(row, 0)?.unwrap_or_default(),
                zone: text(row, 1)?,
                id: text(row, 2)?.unwrap_or_default(),
                name: text(row, 3)?,
                user_email: text(row, 4)?,
                rule: text(row, 5)?.unwrap_or_default(),
                action: text(row, 6)?.unwrap_or_default(),
                status: text(row, 7)?.unwrap_or_default(),
                detail: text(row, 8)?,
            });
        }
        let counts = sqlx::query(&format!(
            "SELECT status, count(*) FROM {} WHERE status IN ({statuses})
             GROUP BY status ORDER BY CASE status{order} END",
            storage::RUN_DECISIONS
        ))
        .bind(run.0)
        .fetch_all(&self.pool)
        .await
        .map_err(AuditError::Read)?;
        let mut totals = Vec::with_capacity(counts.len());
        for row in &counts {
            let status: String = row.try_get(0).map_err(AuditError::Read)?;
            let n: i64 = row.try_get(1).map_err(AuditError::Read)?;
            totals.push((status, u64::try_from(n).unwrap_or(0)));
        }
        Ok((items, totals))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10, item 19: a symlink to the database, or to its directory, names the same
    /// database and must meet the same lock.
    #[tokio::test]
    async fn a_symlinked_path_cannot_make_a_second_writer() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("a.db");
        let first = AuditStore::open(&real).await.unwrap();
        let alias = dir.path().join("alias.db");
        std::os::unix::fs::symlink(&real, &alias).unwrap();
        let second = AuditStore::open(&alias).await;
        assert!(
            matches!(second, Err(AuditError::Locked { .. })),
            "a symlinked file is the same database"
        );
        let dir_alias = dir.path().join("dir-alias");
        std::os::unix::fs::symlink(dir.path(), &dir_alias).unwrap();
        let third = AuditStore::open(&dir_alias.join("a.db")).await;
        assert!(
            matches!(third, Err(AuditError::Locked { .. })),
            "a symlinked directory holds the same database"
        );
        first.close().await;
    }

    #[test]
    fn every_status_reads_back_as_written() {
        for status in ActionStatus::ALL {
            assert_eq!(ActionStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(
            ActionStatus::parse("refused_by_api"),
            Some(ActionStatus::RefusedByApi)
        );
        assert_eq!(
            ActionStatus::parse("in_flight"),
            Some(ActionStatus::InFlight)
        );
        assert_eq!(ActionStatus::parse("bogus"), None);
    }

    /// The metrics of a fresh process start from these: the last finished run whatever its
    /// outcome, the last success, and nothing from a run still going.
    #[tokio::test]
    async fn last_runs_are_the_last_finished_and_the_last_successful() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditStore::open(&dir.path().join("a.db")).await.unwrap();
        assert_eq!(audit.last_runs().await.unwrap(), LastRuns::default());
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let runs = [
            (RunOutcome::Applied, "2026-11-01T06:00:00.5Z"),
            (RunOutcome::Planned, "2026-11-01T12:00:00Z"),
            (RunOutcome::Aborted, "2026-11-01T18:00:00Z"),
        ];
        for (outcome, finished) in runs {
            let run = audit.begin_run(Mode::Apply, at(finished)).await.unwrap();
            audit
                .finish_run(
                    run,
                    outcome,
                    None,
                    &RunSummary::default(),
                    &[],
                    at(finished),
                )
                .await
                .unwrap();
        }
        audit.begin_run(Mode::Apply, Utc::now()).await.unwrap();
        assert_eq!(
            audit.last_runs().await.unwrap(),
            LastRuns {
                finished: Some(at("2026-11-01T18:00:00Z")),
                outcome: Some(RunOutcome::Aborted),
                succeeded: Some(at("2026-11-01T12:00:00Z")),
            }
        );
        audit.close().await;
    }

    /// An undo is a run of its own, whose actions name what they undo; it is not a cycle, so
    /// the metrics' last run stays the last cycle.
    #[tokio::test]
    async fn an_undo_run_links_its_actions_and_is_not_the_last_cycle() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditStore::open(&dir.path().join("a.db")).await.unwrap();
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let cycle = audit
            .begin_run(Mode::Apply, at("2026-11-01T06:00:00Z"))
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO actions (id, run_id, decided_at, rule, action, resource_kind,
                 resource_id, reason, status)
             VALUES (1, ?1, 't', 'idle-60d', 'revoke', 'device_registration', 'r-1', 'idle',
                 'done')",
        )
        .bind(cycle.0)
        .execute(&audit.pool)
        .await
        .unwrap();
        let finished = at("2026-11-01T06:01:00Z");
        audit
            .finish_run(
                cycle,
                RunOutcome::Applied,
                None,
                &RunSummary::default(),
                &[],
                finished,
            )
            .await
            .unwrap();
        assert_eq!(
            audit.run_mode(cycle).await.unwrap().as_deref(),
            Some("apply")
        );
        assert_eq!(audit.run_mode(RunId(99)).await.unwrap(), None);
        let read = audit.run_actions(cycle).await.unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(
            (
                read[0].action.as_str(),
                read[0].kind,
                read[0].status.as_str()
            ),
            ("revoke", Some(Kind::DeviceRegistration), "done")
        );

        let undo = audit
            .begin_undo_run(cycle, at("2026-11-02T06:00:00Z"))
            .await
            .unwrap();
        let decision = UndoDecision {
            undoes: 1,
            mutation: MutationKind::Unrevoke,
            kind: Kind::DeviceRegistration,
            id: ResourceId::parse("r-1").unwrap(),
            zone: None,
            rule: "idle-60d".to_owned(),
            user_email: None,
            name: None,
            reason: "undo of action 1".to_owned(),
        };
        let ids = audit
            .record_undo_actions(undo, at("2026-11-02T06:00:00Z"), &[decision])
            .await
            .unwrap();
        let rows = audit
            .actions(&ActionFilter {
                run_id: Some(undo.0),
                limit: 10,
                ..ActionFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].id, Some(ids[0]));
        assert_eq!(
            (
                rows[0].action.as_str(),
                rows[0].status.as_str(),
                rows[0].undoes_action_id
            ),
            ("unrevoke", "planned", Some(1))
        );
        audit
            .finish_run(
                undo,
                RunOutcome::Failed,
                None,
                &RunSummary::default(),
                &[],
                at("2026-11-02T06:01:00Z"),
            )
            .await
            .unwrap();
        assert_eq!(audit.run_mode(undo).await.unwrap().as_deref(), Some("undo"));
        let last = audit.last_runs().await.unwrap();
        assert_eq!(
            (last.finished, last.outcome),
            (Some(finished), Some(RunOutcome::Applied)),
            "the undo is not the last cycle"
        );
        audit.close().await;
    }

    #[tokio::test]
    async fn a_run_and_each_of_its_kinds_record_their_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditStore::open(&dir.path().join("a.db")).await.unwrap();
        let run = audit.begin_run(Mode::Apply, Utc::now()).await.unwrap();
        let summary = RunSummary {
            actions_done: 3,
            actions_refused: 2,
            ..RunSummary::default()
        };
        let kind = KindRun {
            kind: Kind::DeviceRegistration,
            outcome: RunOutcome::Applied,
            reason: None,
            seen: Some(10),
            candidates: Some(5),
            excluded: Some(0),
            done: 3,
            failed: 0,
            refused: 2,
        };
        audit
            .finish_run(
                run,
                RunOutcome::Applied,
                None,
                &summary,
                &[kind],
                Utc::now(),
            )
            .await
            .unwrap();
        let runs = audit.recent_runs(1).await.unwrap();
        assert_eq!(runs[0].actions_refused, Some(2));
        assert_eq!(
            runs[0].actions_failed,
            Some(0),
            "a refusal is not a failure"
        );
        let refused: i64 = sqlx::query_scalar("SELECT refused FROM run_kinds WHERE run_id = ?1")
            .bind(run.0)
            .fetch_one(&audit.pool)
            .await
            .unwrap();
        assert_eq!(refused, 2);
        audit.close().await;
    }

    /// A token still in use is refused by Cloudflare run after run: that is its state, not a
    /// failing call. A refusal neither starts a failure streak, nor extends one, nor breaks
    /// one.
    #[tokio::test]
    async fn a_refusal_by_the_api_is_not_a_failure_streak() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditStore::open(&dir.path().join("a.db")).await.unwrap();
        let only_refused = "aaaaaaaa-0000-4000-8000-000000000001";
        let failed_around_a_refusal = "bbbbbbbb-0000-4000-8000-000000000002";
        // Runs 1 to 3 listed everything and acted; run 4 is the one asking.
        for run in 1..=4 {
            sqlx::query(
                "INSERT INTO runs (id, started_at, mode, outcome, seen_total)
                 VALUES (?1, 't', 'apply', 'applied', 10)",
            )
            .bind(run)
            .execute(&audit.pool)
            .await
            .unwrap();
        }
        let mut next = 0;
        let mut row = |run: i64, id: &str, status: &str, code: Option<i64>| {
            next += 1;
            let mutation = format!(
                "INSERT INTO mutations (id, run_id, resource_kind, kind, method, path,
                     resource_ids, intent_at, completed_at, outcome, http_status, cf_error_code)
                 VALUES ({next}, {run}, 'device_registration', 'delete', 'DELETE', '/x',
                     '[\"{id}\"]', 't', 't', 'rejected', 400, {code})",
                code = code.map_or("NULL".to_owned(), |c| c.to_string()),
            );
            let action = format!(
                "INSERT INTO actions (id, run_id, decided_at, rule, action, resource_kind,
                     resource_id, reason, status, mutation_id)
                 VALUES ({next}, {run}, 't', 'unused', 'delete', 'device_registration', '{id}',
                     'unused', '{status}', {mutation})",
                mutation = if status == "planned" {
                    "NULL".to_owned()
                } else {
                    next.to_string()
                },
            );
            [mutation, action]
        };
        let mut statements = Vec::new();
        for run in 1..=3 {
            statements.extend(row(run, only_refused, "refused_by_api", Some(12139)));
        }
        statements.extend(row(1, failed_around_a_refusal, "failed", Some(1001)));
        statements.extend(row(
            2,
            failed_around_a_refusal,
            "refused_by_api",
            Some(12139),
        ));
        statements.extend(row(3, failed_around_a_refusal, "failed", Some(1001)));
        statements.extend(row(4, only_refused, "planned", None));
        statements.extend(row(4, failed_around_a_refusal, "planned", None));
        for statement in statements {
            sqlx::query(&statement).execute(&audit.pool).await.unwrap();
        }

        let streaks = audit.failure_streaks(RunId(4), 3).await.unwrap();
        let planned: i64 =
            sqlx::query_scalar("SELECT id FROM actions WHERE run_id = 4 AND resource_id = ?1")
                .bind(failed_around_a_refusal)
                .fetch_one(&audit.pool)
                .await
                .unwrap();
        assert_eq!(streaks.len(), 1, "{streaks:?}");
        assert_eq!(streaks[0].action_id, planned, "only refused: no streak");
        assert_eq!(
            streaks[0].runs, 2,
            "the failures of runs 1 and 3 count; the refusal between them neither counts nor ends them"
        );
        assert!(!streaks[0].already_stuck);
        audit.close().await;
    }
}
