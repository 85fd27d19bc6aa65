//! One cycle: reconcile interrupted mutations, list and plan, record every decision, then act
//! if the mode and the caps allow. Shared by `once`, the daemon, the demo and the benchmark.

use std::future::Future;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::apply::{reconcile_pending, ApplyReport, Executor, StopSignal};
use crate::audit::{
    AuditError, AuditStore, BackgroundWrite, BodyForm, KindRun, MarkTally, PlannedAction,
    PruneLimits, PruneTrigger, Retention, RunId, RunOutcome, RunPart, RunSummary,
};
use crate::cloudflare::{Client, Quota, ZoneId};
use crate::config::{Config, Mode};
use crate::metrics::Metrics;
use crate::plan::{Candidate, CapCheck, Plan, Planner};
use crate::report::plural;
use crate::resource::{Kind, Scope};
use crate::rules::RuleSet;
use crate::saved_plan::SavedPlan;
use crate::secret::Credentials;

/// Decisions are written to the audit log in batches of this many, so that no more than a
/// few batches' snapshots are in memory at once.
const RECORD_BATCH: usize = 1000;

/// Everything a cycle needs; rebuilt when the config is reloaded.
pub struct CycleContext<'a> {
    pub config: &'a Config,
    pub rules: &'a RuleSet,
    pub audit: &'a AuditStore,
    pub metrics: &'a Metrics,
    pub stop: &'a StopSignal,
    pub quota: &'a Quota,
    /// Whether the parts' plans keep their candidates, for a caller that shows them (`once`'s
    /// table). Otherwise they are read back from the audit log a batch at a time, so that a
    /// cycle's memory does not grow with its number of candidates.
    pub keep_rows: bool,
    /// When applying a saved plan (`zt-janitor apply FILE`): its targets, the only objects
    /// this cycle may act on, and the cap the operator raised for it, if any.
    pub saved: Option<&'a SavedPlan>,
    pub max_actions_override: Option<u64>,
    /// Planned actions the executor reads back at a time: [`crate::apply::APPLY_BATCH`],
    /// smaller in tests that cross batch boundaries.
    pub apply_batch: usize,
}

/// What a cycle did, for the summary line, the CLI and the tests.
#[derive(Debug, Serialize)]
pub struct CycleReport {
    pub run_id: i64,
    pub mode: Mode,
    pub outcome: RunOutcome,
    pub reason: Option<String>,
    pub seconds: f64,
    /// The run's figures, `api_requests` among them (the whole run's requests).
    #[serde(flatten)]
    pub summary: RunSummary,
    /// Each kind's part, in the order listed.
    pub resources: Vec<KindReport>,
}

/// How one kind's part of a cycle went (for a zoned kind, one zone's); the run's figures are
/// the sum of its parts'.
#[derive(Debug, Serialize)]
pub struct KindReport {
    #[serde(rename = "resource")]
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<ZoneId>,
    pub outcome: RunOutcome,
    pub reason: Option<String>,
    #[serde(flatten)]
    pub summary: RunSummary,
    /// Targets of the saved plan being applied that were no longer candidates, so skipped.
    #[serde(skip_serializing_if = "is_zero")]
    pub skipped_targets: u64,
    /// The grace period's marks of this part (a kind with a rule whose grace_days > 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace: Option<MarkTally>,
    /// The part's plan; its candidates only when the cycle keeps them.
    #[serde(skip)]
    pub plan: Option<Plan>,
    #[serde(skip)]
    pub apply: Option<ApplyReport>,
}

/// The run's outcome from its kinds': the worst of them (failed, aborted, refused, then the
/// mode's own), and their reasons, each named by its kind once there are several.
fn combined(mode: Mode, parts: &[KindReport]) -> (RunOutcome, Option<String>) {
    combined_parts(mode, &parts.iter().collect::<Vec<_>>())
}

fn combined_parts(mode: Mode, parts: &[&KindReport]) -> (RunOutcome, Option<String>) {
    let rank = |o: RunOutcome| match o {
        RunOutcome::Failed => 4,
        RunOutcome::Aborted => 3,
        RunOutcome::Refused => 2,
        RunOutcome::Applied | RunOutcome::Planned => 1,
    };
    let fine = match mode {
        Mode::Plan => RunOutcome::Planned,
        Mode::Apply => RunOutcome::Applied,
    };
    let outcome = parts
        .iter()
        .map(|p| p.outcome)
        .max_by_key(|o| rank(*o))
        .unwrap_or(fine);
    let reason = match parts {
        [one] => one.reason.clone(),
        _ => {
            let reasons: Vec<String> = parts
                .iter()
                .filter_map(|p| {
                    let reason = p.reason.as_deref()?;
                    Some(match &p.zone {
                        Some(zone) => format!("{} in zone {zone}: {reason}", p.kind),
                        None => format!("{}: {reason}", p.kind),
                    })
                })
                .collect();
            (!reasons.is_empty()).then(|| reasons.join("; "))
        }
    };
    (outcome, reason)
}

/// The run's figures: the sum of its kinds' (a count is absent only when no kind has it).
fn total<'a>(parts: impl IntoIterator<Item = &'a KindReport>) -> RunSummary {
    let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    };
    parts.into_iter().fold(RunSummary::default(), |t, p| {
        let s = &p.summary;
        RunSummary {
            pages: add(t.pages, s.pages),
            seen_total: add(t.seen_total, s.seen_total),
            seen_active: add(t.seen_active, s.seen_active),
            seen_revoked: add(t.seen_revoked, s.seen_revoked),
            candidates: add(t.candidates, s.candidates),
            excluded: add(t.excluded, s.excluded),
            actions_done: t.actions_done + s.actions_done,
            actions_failed: t.actions_failed + s.actions_failed,
            actions_unconfirmed: t.actions_unconfirmed + s.actions_unconfirmed,
            actions_stuck: t.actions_stuck + s.actions_stuck,
            actions_refused: t.actions_refused + s.actions_refused,
            api_requests: t.api_requests + s.api_requests,
        }
    })
}

#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    /// Without an audit trail nothing may be done; the caller should stop and say why.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The audit store cannot be trusted (its file was replaced, or writes do not reach the
    /// disk), so the cycle did not start: no run row, no API call.
    #[error("cycle not started: {0}")]
    NotStarted(#[source] AuditError),
    /// The cycle panicked; its run was closed as failed with this message.
    #[error("{0}")]
    Panicked(String),
}

impl CycleError {
    /// The `reason` label of `zt_janitor_cycles_not_started_total`, for a cycle that did
    /// not start.
    pub fn not_started_reason(&self) -> Option<&'static str> {
        match self {
            CycleError::NotStarted(AuditError::Replaced { .. }) => Some("audit_file_replaced"),
            CycleError::NotStarted(_) => Some("audit_unwritable"),
            _ => None,
        }
    }
}

/// Runs `future` on a task of its own and catches a panic inside it, returning the panic's
/// message instead.
pub async fn catch_panic<T: Send + 'static>(
    future: impl Future<Output = T> + Send + 'static,
) -> Result<T, String> {
    match tokio::spawn(future).await {
        Ok(value) => Ok(value),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            Err(payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned()))
        }
        Err(e) => Err(format!("the cycle's task was cancelled: {e}")),
    }
}

/// Runs a cycle (a future calling [`CycleContext::run`] on `audit` and `metrics`) so that a
/// panic anywhere in it is caught rather than leaving its run `running` forever and no
/// metric moving: the run is closed as failed with the panic message, counted in
/// `zt_janitor_runs_total{outcome="failed"}`, and returned as [`CycleError::Panicked`].
/// Intents already committed stay for the next run to reconcile.
pub async fn run_isolated(
    audit: &AuditStore,
    metrics: &Metrics,
    cycle: impl Future<Output = Result<CycleReport, CycleError>> + Send + 'static,
) -> Result<CycleReport, CycleError> {
    let message = match catch_panic(cycle).await {
        Ok(result) => return result,
        Err(message) => message,
    };
    let reason = format!(
        "the cycle panicked: {message}; nothing further was done in it. This is a bug in \
         zt-janitor: please report it with the log"
    );
    tracing::error!(%reason, "cycle panicked");
    metrics
        .runs
        .with_label_values(&[RunOutcome::Failed.as_str()])
        .inc();
    metrics.last_run_timestamp.set(Utc::now().timestamp());
    if let Err(e) = audit
        .close_unfinished_runs(
            Utc::now(),
            &reason,
            "not attempted: the cycle panicked before acting on it",
        )
        .await
    {
        audit.mark_failed(&e);
        tracing::error!(error = %e, "the run of the panicked cycle could not be closed");
    }
    Err(CycleError::Panicked(reason))
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl<'a> CycleContext<'a> {
    /// Keeps the parts' candidates in their plans (see [`CycleContext::keep_rows`]).
    pub fn keeping_rows(self, keep_rows: bool) -> Self {
        CycleContext { keep_rows, ..self }
    }

    /// Reads planned actions back `apply_batch` at a time (see [`CycleContext::apply_batch`]).
    pub fn with_apply_batch(self, apply_batch: usize) -> Self {
        CycleContext {
            apply_batch,
            ..self
        }
    }

    /// Acts on the targets of `saved` only (see [`CycleContext::saved`]).
    pub fn applying(self, saved: &'a SavedPlan, max_actions_override: Option<u64>) -> Self {
        CycleContext {
            saved: Some(saved),
            max_actions_override,
            ..self
        }
    }
}

impl CycleContext<'_> {
    /// Runs one cycle. Every outcome except a broken audit store is recorded as a run. A
    /// store that cannot be trusted (see [`AuditStore::ensure_writable`]) starts nothing.
    pub async fn run(&self, now: DateTime<Utc>) -> Result<CycleReport, CycleError> {
        if let Err(e) = self.audit.ensure_writable().await {
            self.observe_audit();
            return Err(CycleError::NotStarted(e));
        }
        self.prune_audit(now).await;
        let result = self.run_recorded(now).await;
        if let Err(CycleError::Audit(e)) = &result {
            self.audit.mark_failed(e);
        }
        self.observe_audit();
        result
    }

    /// The audit store's health, for `zt_janitor_audit_writable` and
    /// `zt_janitor_audit_write_errors_total`.
    fn observe_audit(&self) {
        let m = self.metrics;
        m.audit_writable
            .set(i64::from(self.audit.unusable_reason().is_none()));
        let errors = self.audit.write_errors();
        m.audit_write_errors
            .inc_by(errors.saturating_sub(m.audit_write_errors.get()));
        m.audit_db_bytes
            .set(i64::try_from(self.audit.disk_bytes()).unwrap_or(i64::MAX));
    }

    /// Prunes the audit log to the configured retention before anything is listed: a bounded
    /// share of rows, in short transactions. Failing to prune is logged and counted, never a
    /// reason not to run the cycle.
    async fn prune_audit(&self, now: DateTime<Utc>) {
        let m = self.metrics;
        let retention = Retention::of(&self.config.audit);
        match self
            .audit
            .prune(retention, now, PruneTrigger::Cycle, PruneLimits::CYCLE)
            .await
        {
            Ok(report) => {
                for (table, rows) in &report.deleted {
                    m.audit_pruned_rows
                        .with_label_values(&[table])
                        .inc_by(*rows);
                }
                if let Some(error) = &report.error {
                    m.audit_prune_failures.inc();
                    tracing::warn!(
                        error = %error,
                        runs = report.runs.len(),
                        rows = report.rows(),
                        "audit prune stopped on an error; the cycle goes on, the next one retries"
                    );
                } else if report.rows() > 0 {
                    tracing::info!(
                        runs = report.runs.len(),
                        rows = report.rows(),
                        complete = report.complete,
                        bytes_before = report.bytes_before,
                        bytes_after = report.bytes_after,
                        "audit log pruned to its retention"
                    );
                }
            }
            Err(e) => {
                m.audit_prune_failures.inc();
                tracing::warn!(error = %e, "audit prune failed; the cycle goes on, the next one retries");
            }
        }
        m.audit_db_bytes
            .set(i64::try_from(self.audit.disk_bytes()).unwrap_or(i64::MAX));
    }

    async fn run_recorded(&self, now: DateTime<Utc>) -> Result<CycleReport, CycleError> {
        let started = Instant::now();
        let mode = self.config.safety.mode;
        let run = self.audit.begin_run(mode, now).await?;
        if let Some(saved) = self.saved {
            self.audit
                .note_saved_plan(run, saved, self.max_actions_override)
                .await?;
        }
        let mut report = CycleReport {
            run_id: run.0,
            mode,
            outcome: RunOutcome::Failed,
            reason: None,
            seconds: 0.0,
            summary: RunSummary::default(),
            resources: Vec::new(),
        };
        let client = match self.client() {
            Ok(c) => c,
            Err(reason) => {
                report.reason = Some(reason);
                return self.finish(run, report, started).await;
            }
        };
        let result = self.plan_and_act(&client, run, now, &mut report).await;
        report.summary.api_requests = u64::from(client.requests_sent());
        if let Err(e) = result {
            // The audit store failed mid-cycle; try to close the run (on a fresh connection),
            // but report the cause.
            if let CycleError::Audit(audit_error) = &e {
                self.audit.mark_failed(audit_error);
            }
            report.outcome = RunOutcome::Failed;
            report.reason = Some(e.to_string());
            let _ = self.finish(run, report, started).await;
            return Err(e);
        }
        self.finish(run, report, started).await
    }

    fn client(&self) -> Result<Client, String> {
        let credentials = Credentials::load(&self.config.cloudflare).map_err(|e| e.to_string())?;
        Client::new(&self.config.cloudflare, credentials, self.metrics.clone())
            .map(|c| {
                c.with_stop(self.stop.clone())
                    .with_quota(self.quota.clone())
            })
            .map_err(|e| e.to_string())
    }

    async fn plan_and_act(
        &self,
        client: &Client,
        run: RunId,
        now: DateTime<Utc>,
        report: &mut CycleReport,
    ) -> Result<(), CycleError> {
        match reconcile_pending(client, self.audit).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(mutations = n, "reconciled interrupted mutations"),
            Err(e) => {
                report.outcome = RunOutcome::Aborted;
                report.reason = Some(e.to_string());
                return Ok(());
            }
        }
        self.clear_marks_without_grace(run, now).await?;
        // Each kind is listed, planned, capped and applied on its own: one kind's listing
        // failure leaves the others' parts intact.
        for kind in self.rules.kinds() {
            let first = report.resources.len();
            for (scope, blocked) in
                crate::plan::scopes(client, &self.config.cloudflare.zone_ids, kind).await
            {
                let before = client.requests_sent();
                let mut part = self
                    .run_kind(client, run, now, kind, scope, blocked)
                    .await?;
                part.summary.api_requests = u64::from(client.requests_sent() - before);
                report.resources.push(part);
            }
            self.observe_kind(kind, &report.resources[first..]);
        }
        (report.outcome, report.reason) = combined(self.config.safety.mode, &report.resources);
        report.summary = total(&report.resources);
        self.observe_marks().await?;
        Ok(())
    }

    /// One kind's part of the run: list and record, then act if the mode and the caps allow.
    async fn run_kind(
        &self,
        client: &Client,
        run: RunId,
        now: DateTime<Utc>,
        kind: Kind,
        scope: Scope,
        blocked: Option<String>,
    ) -> Result<KindReport, CycleError> {
        let mut part = KindReport {
            kind,
            zone: scope.zone.clone(),
            outcome: RunOutcome::Failed,
            reason: None,
            summary: RunSummary::default(),
            skipped_targets: 0,
            grace: None,
            plan: None,
            apply: None,
        };
        let (mut plan, mut planned) = match self
            .list_and_record(client, run, now, kind, scope)
            .await?
        {
            Ok(listed) => {
                part.skipped_targets = listed.skipped;
                (listed.plan, listed.planned)
            }
            Err(reason) => {
                tracing::warn!(resource = %kind, zone = ?part.zone, %reason, "listing failed; this part is left alone this run");
                part.outcome = RunOutcome::Aborted;
                part.reason = Some(reason);
                return Ok(part);
            }
        };
        plan.blocked = blocked;
        part.summary = RunSummary {
            pages: Some(plan.pages),
            seen_total: Some(plan.seen.total),
            seen_active: Some(plan.seen.active),
            seen_revoked: Some(plan.seen.revoked),
            candidates: Some(plan.caps.actions),
            excluded: Some(plan.decided.excluded),
            ..RunSummary::default()
        };
        let recorded = RunPart {
            run,
            kind,
            zone: plan.scope.zone.as_ref(),
        };
        let grace = self.grace_of(kind);
        if grace.iter().any(|(_, days)| *days > 0) {
            // Only a complete listing moves marks; the caps count what is due now.
            let tally = self
                .audit
                .update_marks(&recorded, now, &grace, self.saved.is_none())
                .await?;
            if tally.waiting > 0 {
                // Those still waiting are no longer planned: only the audit log knows which.
                planned = None;
            }
            plan.caps = CapCheck::new(kind, tally.due, plan.seen.total, &self.config.safety);
            self.metrics
                .marks_set
                .with_label_values(&[kind.as_str()])
                .inc_by(tally.marked);
            self.metrics
                .marks_cleared
                .with_label_values(&[kind.as_str()])
                .inc_by(tally.cleared);
            part.grace = Some(tally);
        }
        if self.config.safety.mode == Mode::Plan {
            part.outcome = RunOutcome::Planned;
            part.reason = plan.blocked.clone();
        } else if let Some(why) = &plan.blocked {
            self.audit.withdraw_planned(&recorded, 0, why).await?;
            part.outcome = RunOutcome::Refused;
            part.reason = Some(format!("{why}; nothing was done"));
        } else if !plan.caps.within() {
            let reason = format!(
                "refused by the blast-radius caps: {}; nothing was done. If this is intended, save the plan (`zt-janitor plan --out FILE`), review it, and apply it once with `zt-janitor apply FILE --max-actions N`, or raise the cap in [safety] for one run",
                plan.caps.violations.join("; ")
            );
            self.audit.withdraw_planned(&recorded, 0, &reason).await?;
            part.outcome = RunOutcome::Refused;
            part.reason = Some(reason);
        } else {
            let applied = self.execute(client, recorded, &plan, planned).await?;
            (part.outcome, part.reason) = self.judge(kind, &applied);
            let s = &mut part.summary;
            s.actions_done = applied.done + applied.already_gone;
            s.actions_failed = applied.failed + applied.unconfirmed;
            s.actions_unconfirmed = applied.unconfirmed;
            s.actions_stuck = applied.stuck;
            s.actions_refused = applied.refused;
            // Defence in depth: an exclusion that matched only at apply time counts too.
            s.excluded = s.excluded.map(|n| n + applied.excluded_at_apply);
            part.apply = Some(applied);
        }
        part.plan = Some(plan);
        Ok(part)
    }

    async fn execute(
        &self,
        client: &Client,
        recorded: RunPart<'_>,
        plan: &Plan,
        planned: Option<Vec<PlannedAction>>,
    ) -> Result<ApplyReport, CycleError> {
        let executor = Executor {
            client,
            audit: self.audit,
            metrics: self.metrics,
            rules: self.rules,
            run: recorded.run,
            chunk_size: self.config.cloudflare.bulk_chunk_size,
            stop: self.stop,
            request_budget: self.config.cloudflare.max_requests_per_cycle,
            batch: self.apply_batch,
            scope: &plan.scope,
        };
        let applied = executor
            .apply(recorded.kind, plan.pages, planned)
            .await
            .map_err(|crate::apply::ApplyError::Audit(e)| e)?;
        self.metrics
            .stuck_resources
            .with_label_values(&[plan.kind.as_str()])
            .set(applied.stuck as i64);
        Ok(applied)
    }

    /// Each rule of `kind` with its grace days.
    fn grace_of(&self, kind: Kind) -> Vec<(String, u32)> {
        self.config
            .rules
            .iter()
            .filter(|r| r.resource == kind)
            .map(|r| (r.name.clone(), r.grace_days))
            .collect()
    }

    /// Clears the marks no cycle keeps up to date any more (a kind without a grace period or
    /// without rules, a zone no longer configured), then sets the gauge of marks.
    async fn clear_marks_without_grace(
        &self,
        run: RunId,
        now: DateTime<Utc>,
    ) -> Result<(), CycleError> {
        let mut parts = Vec::new();
        for kind in self.rules.kinds() {
            if !self.grace_of(kind).iter().any(|(_, days)| *days > 0) {
                continue;
            }
            if kind.zoned() {
                parts.extend(
                    self.config
                        .cloudflare
                        .zone_ids
                        .iter()
                        .map(|z| (kind, Some(z.clone()))),
                );
            } else {
                parts.push((kind, None));
            }
        }
        let cleared = self.audit.clear_marks_outside(run, now, &parts).await?;
        if cleared > 0 {
            tracing::info!(
                marks = cleared,
                "cleared marks that no grace period applies to any more"
            );
        }
        Ok(())
    }

    /// The gauge of current marks, per kind and rule, from the audit log.
    async fn observe_marks(&self) -> Result<(), CycleError> {
        let counts = self.audit.mark_counts().await?;
        self.metrics.marked.reset();
        for (kind, rule, n) in counts {
            self.metrics
                .marked
                .with_label_values(&[&kind, &rule])
                .set(n);
        }
        Ok(())
    }

    /// The outcome and reason of one kind's apply.
    fn judge(&self, kind: Kind, applied: &ApplyReport) -> (RunOutcome, Option<String>) {
        let (one, things) = kind.noun();
        let mut notes = Vec::new();
        // Stuck and refused ids are reported, not failed again.
        if applied.stuck > 0 {
            notes.push(format!(
                "{} stuck (failed the same way in the last {} runs; not attempted, see their status_detail)",
                plural(applied.stuck, one, things),
                crate::apply::STUCK_AFTER_RUNS
            ));
        }
        if applied.refused > 0 {
            notes.push(format!(
                "{} refused by Cloudflare as still in use (recorded refused_by_api, not retried; see their status_detail for what to change)",
                plural(applied.refused, one, things)
            ));
        }
        let notes = (!notes.is_empty()).then(|| notes.join("; "));
        match &applied.stopped_by {
            // A failure that concerns some ids only fails the run (someone should look), but
            // every other id was still acted on.
            None if applied.failed + applied.unconfirmed > 0 => {
                let mut reason = format!(
                    "{} failed and {} unconfirmed (Cloudflare claimed success, the listing disagrees); every other action was carried out",
                    plural(applied.failed, "action", "actions"),
                    applied.unconfirmed
                );
                if let Some(first) = &applied.first_failure {
                    reason.push_str(&format!("; first failure: {first}"));
                }
                if let Some(notes) = &notes {
                    reason.push_str(&format!("; {notes}"));
                }
                (RunOutcome::Failed, Some(reason))
            }
            None => (RunOutcome::Applied, notes),
            Some(why) if self.stop.is_stopped() => (
                RunOutcome::Aborted,
                Some(format!(
                    "{why}; {} left for the next run",
                    plural(applied.not_attempted, "action", "actions")
                )),
            ),
            Some(why) => (RunOutcome::Failed, Some(why.clone())),
        }
    }

    /// Lists through the planner, recording decisions in batches as pages arrive, so that
    /// neither the objects' snapshots nor the candidates accumulate in memory. Returns the plan
    /// (its candidates only if the cycle keeps them), or why the listing cannot be trusted
    /// (then no recorded decision is ever acted on).
    async fn list_and_record(
        &self,
        client: &Client,
        run: RunId,
        now: DateTime<Utc>,
        kind: Kind,
        scope: Scope,
    ) -> Result<Result<Listed, String>, CycleError> {
        let zone = scope.zone.clone();
        let mut planner = Planner::new(client, kind, self.rules, now).in_scope(scope);
        if let Some(saved) = self.saved {
            planner = planner.only(saved.filter(kind, zone.as_ref()));
        }
        let form = match self.config.safety.mode {
            Mode::Plan => BodyForm::Compressed,
            Mode::Apply => BodyForm::AsListed,
        };
        let mut log =
            DecisionLog::new(self.audit, run, now, self.keep_rows, self.apply_batch, form);
        loop {
            log.pace().await?;
            // Listing is read-only, so a stop request may simply abandon it.
            let next = tokio::select! {
                page = planner.next_page() => page.map_err(|e| format!("{e}; nothing was done this run")),
                () = self.stop.stopped() => Err("shutdown requested while listing; nothing was done".to_owned()),
            };
            match next {
                Ok(Some(page)) => log.add(page),
                Ok(None) => {
                    let (recorded, planned) = log.finish().await?;
                    let skipped = planner.skipped();
                    if !skipped.is_empty() {
                        let part = RunPart {
                            run,
                            kind,
                            zone: zone.as_ref(),
                        };
                        tracing::warn!(resource = %kind, zone = ?zone, targets = skipped.len(), "targets of the saved plan are no longer candidates; skipped (see their status_detail)");
                        self.audit
                            .record_skipped_targets(&part, now, &skipped)
                            .await?;
                    }
                    let plan = if self.keep_rows {
                        planner.finish(recorded, &self.config.safety)
                    } else {
                        planner.finish_recorded(&self.config.safety)
                    };
                    return Ok(Ok(Listed {
                        plan,
                        skipped: skipped.len() as u64,
                        planned,
                    }));
                }
                Err(reason) => {
                    // Decisions already on their way are recorded too, then none is acted on.
                    log.settle().await?;
                    let part = RunPart {
                        run,
                        kind,
                        zone: zone.as_ref(),
                    };
                    self.audit.withdraw_planned(&part, 0, &reason).await?;
                    return Ok(Err(reason));
                }
            }
        }
    }

    /// The metrics of one kind from its parts (one per zone for a zoned kind); a part whose
    /// listing failed leaves the kind's last figures as they were.
    fn observe_kind(&self, kind: Kind, parts: &[KindReport]) {
        let plans: Vec<&Plan> = parts.iter().filter_map(|p| p.plan.as_ref()).collect();
        if plans.is_empty() || plans.len() < parts.len() {
            for plan in &plans {
                self.count_anomalies(plan);
            }
            return;
        }
        let m = self.metrics;
        let label = kind.as_str();
        let sum = |f: fn(&Plan) -> u64| plans.iter().map(|p| f(p)).sum::<u64>() as i64;
        m.resources_seen
            .with_label_values(&[label, "active"])
            .set(sum(|p| p.seen.active));
        // Only registrations and certificates can be revoked; a token series of revoked ones
        // would always be 0.
        if matches!(kind, Kind::DeviceRegistration | Kind::ClientCertificate) {
            m.resources_seen
                .with_label_values(&[label, "revoked"])
                .set(sum(|p| p.seen.revoked));
        }
        // A rule renamed or removed by a reload must not leave its last count behind; the
        // other kinds' counts stay.
        m.forget_candidates_of(kind);
        let mut by_rule: std::collections::BTreeMap<String, u64> = Default::default();
        for plan in &plans {
            for (rule, n) in plan.candidates_by_rule(self.rules) {
                *by_rule.entry(rule).or_default() += n;
            }
            self.count_anomalies(plan);
        }
        for (rule, n) in by_rule {
            m.candidates
                .with_label_values(&[label, &rule])
                .set(n as i64);
        }
        m.excluded
            .with_label_values(&[label])
            .set(sum(|p| p.decided.excluded));
    }

    fn count_anomalies(&self, plan: &Plan) {
        for (anomaly, n) in plan.anomalies.by_label() {
            self.metrics
                .anomalies
                .with_label_values(&[plan.kind.as_str(), anomaly])
                .inc_by(n);
        }
    }

    async fn finish(
        &self,
        run: RunId,
        mut report: CycleReport,
        started: Instant,
    ) -> Result<CycleReport, CycleError> {
        report.seconds = started.elapsed().as_secs_f64();
        let finished = Utc::now();
        // One row per kind: a zoned kind's zones are summed, and its reason names each zone.
        let kinds: Vec<KindRun> = self
            .rules
            .kinds()
            .into_iter()
            .filter_map(|kind| {
                let parts: Vec<&KindReport> =
                    report.resources.iter().filter(|p| p.kind == kind).collect();
                let (outcome, reason) = combined_parts(self.config.safety.mode, &parts);
                let s = total(parts.iter().copied());
                (!parts.is_empty()).then_some(KindRun {
                    kind,
                    outcome,
                    reason,
                    seen: s.seen_total,
                    candidates: s.candidates,
                    excluded: s.excluded,
                    done: s.actions_done,
                    failed: s.actions_failed,
                    refused: s.actions_refused,
                })
            })
            .collect();
        self.audit
            .finish_run(
                run,
                report.outcome,
                report.reason.as_deref(),
                &report.summary,
                &kinds,
                finished,
            )
            .await?;
        let m = self.metrics;
        if let Some(head) = self.audit.chain_head().await? {
            m.set_chain_head(head.seq, &head.sha256);
        }
        m.runs.with_label_values(&[report.outcome.as_str()]).inc();
        m.run_duration.observe(report.seconds);
        m.last_run_timestamp.set(finished.timestamp());
        if matches!(report.outcome, RunOutcome::Applied | RunOutcome::Planned) {
            m.last_success_timestamp.set(finished.timestamp());
        }
        let s = &report.summary;
        // `journalctl -p warning` must show every run that did not do its job.
        macro_rules! cycle_finished {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    run = report.run_id,
                    mode = %report.mode,
                    outcome = %report.outcome,
                    reason = report.reason.as_deref().unwrap_or(""),
                    seen = s.seen_total.unwrap_or(0),
                    candidates = s.candidates.unwrap_or(0),
                    excluded = s.excluded.unwrap_or(0),
                    done = s.actions_done,
                    failed = s.actions_failed,
                    unconfirmed = s.actions_unconfirmed,
                    stuck = s.actions_stuck,
                    api_requests = s.api_requests,
                    seconds = format!("{:.3}", report.seconds),
                    "cycle finished"
                )
            };
        }
        match report.outcome {
            RunOutcome::Applied | RunOutcome::Planned => cycle_finished!(tracing::Level::INFO),
            RunOutcome::Refused | RunOutcome::Aborted => cycle_finished!(tracing::Level::WARN),
            RunOutcome::Failed => cycle_finished!(tracing::Level::ERROR),
        }
        Ok(report)
    }
}

/// What listing one part produced: its plan, how many saved-plan targets it skipped, and its
/// planned actions if they fit in one of the executor's batches.
struct Listed {
    plan: Plan,
    skipped: u64,
    planned: Option<Vec<PlannedAction>>,
}

/// Decisions on their way to the audit log, in listing order: one batch being written in the
/// background, the rest waiting, and the recorded ones (snapshots dropped) if kept.
struct DecisionLog<'a> {
    audit: &'a AuditStore,
    run: RunId,
    decided_at: DateTime<Utc>,
    keep: bool,
    recorded: Vec<Candidate>,
    writing: Option<BackgroundWrite<(Vec<Candidate>, Vec<i64>)>>,
    pending: Vec<Candidate>,
    /// Every planned action recorded so far, while they fit in one of the executor's batches
    /// (`limit`); `None` once they do not. A plan that fits is then acted on from memory, not
    /// read back from the audit log: the read-back is for plans too big to hold.
    planned: Option<Vec<PlannedAction>>,
    limit: usize,
    form: BodyForm,
}

impl<'a> DecisionLog<'a> {
    fn new(
        audit: &'a AuditStore,
        run: RunId,
        decided_at: DateTime<Utc>,
        keep: bool,
        limit: usize,
        form: BodyForm,
    ) -> Self {
        DecisionLog {
            audit,
            run,
            decided_at,
            keep,
            form,
            recorded: Vec::new(),
            writing: None,
            pending: Vec::new(),
            planned: Some(Vec::new()),
            limit,
        }
    }

    /// Remembers the planned actions of a recorded batch (`ids`: their action rows).
    fn remember(&mut self, recorded: &[Candidate], ids: &[i64]) {
        let Some(planned) = &mut self.planned else {
            return;
        };
        let actionable = || {
            recorded
                .iter()
                .zip(ids)
                .filter(|(c, _)| c.excluded_by.is_none())
        };
        if planned.len() + actionable().count() > self.limit {
            self.planned = None;
            return;
        }
        planned.extend(actionable().map(|(c, id)| PlannedAction {
            action_id: *id,
            kind: c.kind,
            action: c.action,
            rule: c.rule.clone(),
            id: c.id.clone(),
            user_email: c.user_email.clone(),
            name: c.name.clone(),
        }));
    }

    fn add(&mut self, decisions: Vec<Candidate>) {
        self.pending.extend(decisions);
    }

    /// Collects a finished write and starts the next once a batch is full. One batch is
    /// written at a time while pages keep coming; a disk slower than the API makes the
    /// listing wait rather than the snapshots pile up.
    async fn pace(&mut self) -> Result<(), AuditError> {
        let write_done = self
            .writing
            .as_ref()
            .is_some_and(BackgroundWrite::is_finished);
        if write_done || self.pending.len() >= 2 * RECORD_BATCH {
            self.settle().await?;
        }
        if self.writing.is_none() && self.pending.len() >= RECORD_BATCH {
            let batch = std::mem::take(&mut self.pending);
            self.writing = Some(self.audit.record_decisions_in_background(
                self.run,
                self.decided_at,
                batch,
                self.form,
            ));
        }
        Ok(())
    }

    /// Waits for the write in flight, if any.
    async fn settle(&mut self) -> Result<(), AuditError> {
        if let Some(write) = self.writing.take() {
            let (recorded, ids) = write.finish().await?;
            self.remember(&recorded, &ids);
            if self.keep {
                self.recorded.extend(recorded);
            }
        }
        Ok(())
    }

    /// Records the rest; returns the decisions kept (every one, in order, if kept; else none),
    /// and every planned action if they fit in one batch.
    async fn finish(mut self) -> Result<(Vec<Candidate>, Option<Vec<PlannedAction>>), AuditError> {
        self.settle().await?;
        let mut rest = std::mem::take(&mut self.pending);
        let ids = self
            .audit
            .record_decisions(self.run, self.decided_at, &mut rest, self.form)
            .await?;
        self.remember(&rest, &ids);
        if self.keep {
            self.recorded.extend(rest);
        }
        Ok((self.recorded, self.planned))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10, item 4: a panic inside a cycle is caught, its run closed as failed with the
    /// panic message, and counted.
    #[tokio::test]
    async fn a_panicking_cycle_is_closed_as_failed_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditStore::open(&dir.path().join("audit.db"))
            .await
            .unwrap();
        let metrics = Metrics::new();
        let store = audit.clone();
        let result = run_isolated(&audit, &metrics, async move {
            store.begin_run(Mode::Apply, Utc::now()).await?;
            // What a `Retry-After: 1e300` once did deep inside a cycle.
            let wait = std::time::Duration::from_secs_f64(std::hint::black_box(1e300));
            unreachable!("slept {wait:?}")
        })
        .await;
        let Err(CycleError::Panicked(reason)) = result else {
            panic!("expected a caught panic, got {result:?}");
        };
        assert!(reason.contains("cannot convert float seconds"), "{reason}");
        let runs = audit.recent_runs(10).await.unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].outcome.as_deref(), Some("failed"));
        assert!(runs[0]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("cannot convert float seconds"));
        assert_eq!(metrics.runs.with_label_values(&["failed"]).get(), 1);
        audit.close().await;
    }
}
