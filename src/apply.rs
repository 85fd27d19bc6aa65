//! The executor: carries out an approved plan through the Cloudflare client, one bulk call per
//! chunk, writing each mutation's intent to the audit store before sending it and its outcome
//! after. Also reconciles intents a crash left without an outcome.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::Notify;

use crate::audit::{
    ActionStatus, AuditError, AuditStore, Intent, MutationId, MutationKind, MutationResult, RunId,
};
use crate::cloudflare::{ApiError, Client, Endpoint, MutationOutcome, RegistrationId};
use crate::config::Action;
use crate::metrics::Metrics;
use crate::plan::{Candidate, Plan};
use crate::rules::RuleSet;

/// Set when the process is asked to stop: the executor finishes the call in flight, records
/// it, and starts no other; a listing in progress is abandoned.
#[derive(Debug, Clone, Default)]
pub struct StopSignal(Arc<(AtomicBool, Notify)>);

impl StopSignal {
    pub fn stop(&self) {
        self.0 .0.store(true, Ordering::SeqCst);
        self.0 .1.notify_waiters();
    }

    pub fn is_stopped(&self) -> bool {
        self.0 .0.load(Ordering::SeqCst)
    }

    /// Resolves once [`StopSignal::stop`] has been called.
    pub async fn stopped(&self) {
        loop {
            // Register interest before checking, so a stop in between is not missed.
            let notified = self.0 .1.notified();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// What an apply achieved; `stopped_by` says why it ended early, if it did.
#[derive(Debug, Default, Clone)]
pub struct ApplyReport {
    pub done: u64,
    pub already_gone: u64,
    pub failed: u64,
    pub not_attempted: u64,
    pub excluded_at_apply: u64,
    pub mutations: u64,
    pub stopped_by: Option<String>,
}

pub struct Executor<'a> {
    pub client: &'a Client,
    pub audit: &'a AuditStore,
    pub metrics: &'a Metrics,
    pub rules: &'a RuleSet,
    pub run: RunId,
    pub chunk_size: usize,
    pub stop: &'a StopSignal,
}

/// One candidate on its way, with its audit row.
#[derive(Clone, Copy)]
struct Item<'p> {
    candidate: &'p Candidate,
    action_id: i64,
}

impl Executor<'_> {
    /// Applies every actionable candidate of `plan`; `action_ids` are the audit rows of
    /// `plan.candidates`, in order. Stops at the first call that fails for a reason other
    /// than a refused bulk size: a broken API or token is not hammered with more calls.
    pub async fn apply(&self, plan: &Plan, action_ids: &[i64]) -> Result<ApplyReport, ApplyError> {
        let mut report = ApplyReport::default();
        let mut queue: Vec<Item> = Vec::new();
        for (candidate, &action_id) in plan.candidates.iter().zip(action_ids) {
            if candidate.excluded_by.is_some() {
                continue;
            }
            // Defence in depth: the exclusions are asked again right before acting.
            let protected = self.rules.exclusion_for_parts(
                &candidate.id,
                candidate.user_email.as_deref(),
                &candidate.device_name,
            );
            if let Some(exclusion) = protected {
                self.audit
                    .set_action_status(
                        &[action_id],
                        ActionStatus::Excluded,
                        Some(&format!("excluded at apply time by {exclusion}")),
                    )
                    .await?;
                report.excluded_at_apply += 1;
                continue;
            }
            queue.push(Item {
                candidate,
                action_id,
            });
        }
        for action in [Action::Delete, Action::Revoke] {
            let items: Vec<Item> = queue
                .iter()
                .copied()
                .filter(|i| i.candidate.action == action)
                .collect();
            for chunk in items.chunks(self.chunk_size.max(1)) {
                if report.stopped_by.is_none() && self.stop.is_stopped() {
                    report.stopped_by = Some("shutdown requested".to_owned());
                }
                if report.stopped_by.is_some() {
                    self.skip(chunk, &mut report).await?;
                    continue;
                }
                if let Err(e) = self.send_chunk(action, chunk, &mut report).await? {
                    report.stopped_by = Some(e.to_string());
                }
            }
        }
        Ok(report)
    }

    async fn skip(&self, chunk: &[Item<'_>], report: &mut ApplyReport) -> Result<(), AuditError> {
        let ids: Vec<i64> = chunk.iter().map(|i| i.action_id).collect();
        let detail = report.stopped_by.as_deref();
        self.audit
            .set_action_status(&ids, ActionStatus::NotAttempted, detail)
            .await?;
        report.not_attempted += chunk.len() as u64;
        Ok(())
    }

    /// Sends one chunk. A bulk call refused for its size (or its ids) is split in halves, down
    /// to single calls. The inner `Err` is an API failure that should stop the run.
    async fn send_chunk(
        &self,
        action: Action,
        chunk: &[Item<'_>],
        report: &mut ApplyReport,
    ) -> Result<Result<(), ApiError>, AuditError> {
        let mut work: Vec<&[Item]> = vec![chunk];
        while let Some(part) = work.pop() {
            let ids: Vec<RegistrationId> = part.iter().map(|i| i.candidate.id.clone()).collect();
            let action_ids: Vec<i64> = part.iter().map(|i| i.action_id).collect();
            let (kind, method, path) = describe_call(action, &ids);
            let mutation = self
                .audit
                .record_intent(&Intent {
                    run: self.run,
                    kind,
                    method,
                    path: &path,
                    ids: &ids,
                    action_ids: &action_ids,
                    at: Utc::now(),
                })
                .await?;
            report.mutations += 1;
            let result = match kind {
                MutationKind::Delete => self.client.delete_registration(&ids[0]).await,
                MutationKind::BulkDelete => self.client.bulk_delete_registrations(&ids).await,
                MutationKind::Revoke => self.client.revoke_registrations(&ids).await,
            };
            match result {
                Ok(outcome) => {
                    self.record_success(mutation, outcome, part, report).await?;
                }
                Err(e) if part.len() > 1 && refused_as_too_large(&e) => {
                    tracing::warn!(ids = part.len(), error = %e, "bulk call refused; splitting it");
                    self.audit
                        .record_outcome(mutation, &failure(&e), None, Utc::now())
                        .await?;
                    let (a, b) = part.split_at(part.len() / 2);
                    work.push(b);
                    work.push(a);
                }
                Err(e) => {
                    let detail = e.to_string();
                    self.audit
                        .record_outcome(
                            mutation,
                            &failure(&e),
                            Some((ActionStatus::Failed, Some(&detail))),
                            Utc::now(),
                        )
                        .await?;
                    self.count(part, "failed");
                    report.failed += part.len() as u64;
                    for rest in work.drain(..) {
                        self.skip(rest, report).await?;
                    }
                    return Ok(Err(e));
                }
            }
        }
        Ok(Ok(()))
    }

    async fn record_success(
        &self,
        mutation: MutationId,
        outcome: MutationOutcome,
        part: &[Item<'_>],
        report: &mut ApplyReport,
    ) -> Result<(), AuditError> {
        let (result, status, label) = match outcome {
            MutationOutcome::Done { status } => (
                MutationResult {
                    outcome: "ok",
                    http_status: Some(status),
                    cf_error_code: None,
                    cf_error_message: None,
                },
                ActionStatus::Done,
                "done",
            ),
            MutationOutcome::AlreadyGone => (
                MutationResult {
                    outcome: "already_gone",
                    http_status: Some(404),
                    cf_error_code: None,
                    cf_error_message: None,
                },
                ActionStatus::AlreadyGone,
                "already_gone",
            ),
        };
        self.audit
            .record_outcome(mutation, &result, Some((status, None)), Utc::now())
            .await?;
        self.count(part, label);
        match status {
            ActionStatus::AlreadyGone => report.already_gone += part.len() as u64,
            _ => report.done += part.len() as u64,
        }
        Ok(())
    }

    fn count(&self, part: &[Item<'_>], outcome: &str) {
        for item in part {
            let c = item.candidate;
            self.metrics
                .actions
                .with_label_values(&[&c.rule, &c.action.to_string(), outcome])
                .inc();
        }
    }
}

/// The call that carries `ids`, as the audit log records it.
fn describe_call(action: Action, ids: &[RegistrationId]) -> (MutationKind, &'static str, String) {
    match (action, ids) {
        (Action::Delete, [one]) => (
            MutationKind::Delete,
            "DELETE",
            format!("/devices/registrations/{one}"),
        ),
        (Action::Delete, _) => (
            MutationKind::BulkDelete,
            "DELETE",
            "/devices/registrations?id=…".to_owned(),
        ),
        (Action::Revoke, _) => (
            MutationKind::Revoke,
            "POST",
            "/devices/registrations/revoke?id=…".to_owned(),
        ),
    }
}

/// No public source states the largest bulk call; a refusal by size, or a 404 about one of
/// its ids, is answered by asking again in smaller parts.
fn refused_as_too_large(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::Api {
            endpoint: Endpoint::BulkDeleteRegistrations | Endpoint::RevokeRegistrations,
            status: 400 | 404 | 413 | 414,
            ..
        }
    )
}

fn failure(e: &ApiError) -> MutationResult {
    MutationResult {
        outcome: "error",
        http_status: e.status(),
        cf_error_code: e.cf_error().map(|d| d.code),
        cf_error_message: Some(
            e.cf_error()
                .map(|d| d.message.clone())
                .unwrap_or_else(|| e.to_string()),
        ),
    }
}

/// Reconciles intents a crash left without outcome: asks Cloudflare whether each object is in
/// the state the call wanted and records what it finds. Returns how many were reconciled.
pub async fn reconcile_pending(client: &Client, audit: &AuditStore) -> Result<u64, ReconcileError> {
    let pending = audit.pending_mutations().await?;
    for m in &pending {
        let mut all_done = true;
        for id in &m.resource_ids {
            let current = client.get_registration(id).await?;
            let done = match m.kind {
                MutationKind::Delete | MutationKind::BulkDelete => current.is_none(),
                MutationKind::Revoke => current.as_ref().is_some_and(|r| r.is_revoked()),
            };
            all_done &= done;
            let (status, detail) = if done {
                (
                    ActionStatus::Done,
                    "reconciled after restart: Cloudflare shows it done",
                )
            } else {
                (
                    ActionStatus::Failed,
                    "reconciled after restart: the call did not take effect; the next plan decides again",
                )
            };
            audit
                .set_mutation_action_status(m.id, id, status, detail)
                .await?;
        }
        let result = MutationResult {
            outcome: if all_done {
                "reconciled_done"
            } else {
                "reconciled_not_done"
            },
            http_status: None,
            cf_error_code: None,
            cf_error_message: None,
        };
        audit
            .record_outcome(m.id, &result, None, Utc::now())
            .await?;
        tracing::info!(
            mutation = m.id.0,
            run = m.run_id.0,
            kind = m.kind.as_str(),
            ids = m.resource_ids.len(),
            all_done,
            "reconciled an interrupted mutation"
        );
    }
    Ok(pending.len() as u64)
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("cannot reconcile an interrupted mutation: {0}")]
    Api(#[from] ApiError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}
