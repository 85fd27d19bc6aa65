//! The executor: carries out an approved plan through the Cloudflare client, one bulk call per
//! chunk. Every call's intent is committed to the audit store before the call is sent. What a
//! call answers is only a claim: the ids it named are then listed (`?status=all&id=…`, 100 per
//! listing), and each action is recorded `done` only if the listing shows it gone (or revoked);
//! the call's answer and those statuses are committed together, so a crash before the listing
//! leaves the intent pending for reconciliation. A failure that concerns only the ids a call
//! named fails those ids and the others go on; one that concerns the whole run stops it. Also
//! reconciles intents a crash left without an outcome.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use chrono::Utc;

use crate::audit::{
    ActionStatus, AuditError, AuditStore, CallOutcome, Intent, JournalEntry, MutationId,
    MutationKind, MutationResult, Outcome, PlannedAction, RunId, RunPart, Settled, Withdrawal,
};
use crate::cloudflare::{ApiError, Client, MutationOutcome};
use crate::config::Action;
use crate::metrics::Metrics;
use crate::resource::{self, Kind, PageToken, Presence, ResourceId, Scope};
use crate::rules::RuleSet;

/// Calls go out in groups, and the intents of the next group are committed while the current
/// group's calls are in flight and the previous group's are confirmed by listing, so the audit
/// log's commits and the confirmations overlap the network instead of adding to it. A group is
/// one call while the API is slower than the audit disk (a remote API) and doubles, up to this
/// many calls, while the audit write is the slower one. A crash leaves at most three groups'
/// intents to reconcile, one filtered listing per hundred ids.
const MAX_GROUP: usize = 32;

/// Planned actions are read back from the audit log this many at a time, so that a run holds
/// one batch of candidates in memory (about 5 MB) whatever their number. Large enough that
/// the calls of a batch fill many groups: the pipeline drains only once per batch.
pub const APPLY_BATCH: usize = 25_000;

/// A registration whose call failed for its id alone, the same way, this many runs in a row is
/// stuck: it is not attempted again, so it neither fails every later run nor costs calls.
/// Three rather than two so that a failure that clears by itself (a device that was busy) is
/// retried twice before anyone is told; low enough that a run is failed by it for less than a
/// day at the default six-hour schedule.
pub const STUCK_AFTER_RUNS: u32 = 3;

pub use crate::stop::StopSignal;

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
    /// Claimed done by Cloudflare, not confirmed by the listing.
    pub unconfirmed: u64,
    /// Not attempted: the same failure in the last [`STUCK_AFTER_RUNS`] runs.
    pub stuck: u64,
    /// Refused by Cloudflare until the user changes something (a service token in use).
    pub refused: u64,
    /// The first per-id failure, for the run's reason.
    pub first_failure: Option<String>,
    pub not_attempted: u64,
    pub excluded_at_apply: u64,
    pub mutations: u64,
    pub stopped_by: Option<String>,
}

/// What confirming a group of calls found, merged into the [`ApplyReport`] afterwards: the
/// confirmation of one group runs while the next group's calls are sent.
#[derive(Debug, Default)]
struct Tally {
    done: u64,
    already_gone: u64,
    failed: u64,
    unconfirmed: u64,
    refused: u64,
    first_failure: Option<String>,
    /// Set when the listing itself failed: acting on without it is not safe.
    stop: Option<String>,
}

/// The outcomes of a confirmed group, ready for the journal, and what they came to.
#[derive(Default)]
struct Confirmed {
    outcomes: Vec<Outcome>,
    tally: Tally,
}

impl ApplyReport {
    fn absorb(&mut self, tally: Tally) {
        self.done += tally.done;
        self.already_gone += tally.already_gone;
        self.failed += tally.failed;
        self.unconfirmed += tally.unconfirmed;
        self.refused += tally.refused;
        if self.first_failure.is_none() {
            self.first_failure = tally.first_failure;
        }
        if self.stopped_by.is_none() {
            self.stopped_by = tally.stop;
        }
    }
}

pub struct Executor<'a> {
    pub client: &'a Client,
    pub audit: &'a AuditStore,
    pub metrics: &'a Metrics,
    pub rules: &'a RuleSet,
    pub run: RunId,
    pub chunk_size: usize,
    pub stop: &'a StopSignal,
    /// `[cloudflare] max_requests_per_cycle`: no call is sent without budget left to confirm it.
    pub request_budget: u32,
    /// Where the plan was listed (its zone) and the janitor's own token, never acted on.
    pub scope: &'a Scope,
    /// Planned actions read back from the audit log at a time ([`APPLY_BATCH`]).
    pub batch: usize,
}

/// One planned action on its way, with its audit row.
#[derive(Clone, Copy)]
struct Item<'p> {
    target: &'p PlannedAction,
    action_id: i64,
}

/// One API call: what it does, to which kind, and the actions it carries.
#[derive(Clone, Copy)]
struct Call<'q, 'p> {
    kind: Kind,
    action: Action,
    items: &'q [Item<'p>],
}

/// A call whose intent is committed, so it may be sent.
#[derive(Clone, Copy)]
struct Journaled<'q, 'p> {
    call: Call<'q, 'p>,
    mutation: MutationId,
}

/// How sending one group went.
#[derive(Default)]
struct Sent<'q, 'p> {
    /// Calls answered, waiting for the confirmation listing.
    answered: Vec<Answered<'q, 'p>>,
    /// Calls whose intents are committed but which were not sent: the run stopped first.
    unsent: Vec<Journaled<'q, 'p>>,
}

/// What Cloudflare said about a call's ids: only a claim until the listing confirms it.
#[derive(Debug, Clone)]
enum Claim {
    Done {
        status: u16,
    },
    NotFound {
        after_ambiguous_attempt: bool,
    },
    Failed {
        detail: String,
        /// The server may have acted before the failure (5xx, transport, garbled answer).
        maybe_acted: bool,
    },
    /// Cloudflare will not act on it until the user changes something; not retried.
    Refused {
        detail: String,
    },
}

/// A call that got an answer (or gave up), with what it claims.
struct Answered<'q, 'p> {
    mutation: MutationId,
    kind: Kind,
    action: Action,
    items: &'q [Item<'p>],
    result: MutationResult,
    claim: Claim,
}

impl Executor<'_> {
    /// Applies every action of this part of the run still `planned` in the audit log, read
    /// back `batch` ([`APPLY_BATCH`]) at a time. Stops at the first call that fails for a reason that
    /// concerns the whole run: a broken API or token is not hammered with more calls.
    /// `pages`: how many pages the part's listing took (what a whole-listing confirmation costs).
    /// `planned`: every planned action of the part, when the caller still holds them all (then
    /// nothing is read back unless more turn up).
    pub async fn apply(
        &self,
        kind: Kind,
        pages: u64,
        planned: Option<Vec<PlannedAction>>,
    ) -> Result<ApplyReport, ApplyError> {
        let mut report = ApplyReport::default();
        let part = RunPart {
            run: self.run,
            kind,
            zone: self.scope.zone.as_ref(),
        };
        if let Err(why) = self.scope.check(kind) {
            report.not_attempted = self.audit.withdraw_planned(&part, 0, &why).await?;
            report.stopped_by = Some(why);
            return Ok(report);
        }
        let cost = ConfirmCost::of(kind, pages);
        let stuck = self.stuck_actions().await?;
        // The group size the pipeline found carries over from one batch to the next.
        let mut group_size = 1;
        let mut after = 0;
        let mut held = planned;
        loop {
            if report.stopped_by.is_none() && self.stop.is_stopped() {
                report.stopped_by = Some("shutdown requested".to_owned());
            }
            if let Some(reason) = &report.stopped_by {
                // What the batches not yet read would have done is left for the next run.
                report.not_attempted += self.audit.withdraw_planned(&part, after, reason).await?;
                return Ok(report);
            }
            let batch = match held.take() {
                Some(batch) => batch,
                None => {
                    self.audit
                        .planned_actions(&part, after, self.batch.max(1))
                        .await?
                }
            };
            let Some(last) = batch.last() else {
                return Ok(report);
            };
            after = last.action_id;
            let queue = self.still_unprotected(&batch, &mut report).await?;
            let queue = self.leave_out_stuck(queue, &stuck, &mut report).await?;
            self.apply_batch(queue, cost, &mut group_size, &mut report)
                .await?;
        }
    }

    /// Carries out one batch's actions (all of one kind), in calls of up to `chunk_size` ids,
    /// `group_size` calls at a time (resized as the batch goes).
    async fn apply_batch(
        &self,
        queue: Vec<Item<'_>>,
        cost: ConfirmCost,
        group_size: &mut usize,
        report: &mut ApplyReport,
    ) -> Result<(), AuditError> {
        let by_action: Vec<(Kind, Action, Vec<Item>)> = Kind::ALL
            .into_iter()
            .flat_map(|kind| [Action::Delete, Action::Revoke].map(|action| (kind, action)))
            .map(|(kind, action)| {
                let items = queue
                    .iter()
                    .copied()
                    .filter(|i| i.target.kind == kind && i.target.action == action)
                    .collect();
                (kind, action, items)
            })
            .collect();
        let mut calls: VecDeque<Call> = by_action
            .iter()
            .flat_map(|(kind, action, items)| {
                // A kind without a bulk call for this action takes one id per call.
                let chunk = if resource::bulk(*kind, *action) {
                    self.chunk_size.max(1)
                } else {
                    1
                };
                items.chunks(chunk).map(|items| Call {
                    kind: *kind,
                    action: *action,
                    items,
                })
            })
            .collect();

        // Three things overlap: the intents of the next group are committed, the current
        // group's calls are sent, and the previous group's calls are confirmed by listing. A
        // group's outcomes, confirmed, are committed with the intents of the group after next.
        let mut group = self
            .journal(take(&mut calls, *group_size), Vec::new())
            .await?;
        let mut unwritten: Vec<Outcome> = Vec::new();
        let mut confirming: Vec<Answered> = Vec::new();
        while !group.is_empty() {
            let next = if self.stop.is_stopped() {
                Vec::new()
            } else {
                take(&mut calls, *group_size)
            };
            let pending_lookups = cost.lookups(&confirming);
            let ((next, write_took), ((sent, confirmed), calls_took)) = self
                .audit
                .alongside(self.journal(next, std::mem::take(&mut unwritten)), async {
                    let send = self.send_group(&group, pending_lookups, cost, report);
                    let confirm = self.confirm(std::mem::take(&mut confirming));
                    match cost {
                        ConfirmCost::PerHundredIds => tokio::join!(send, confirm),
                        // A page-numbered listing read while deletions go on shifts under
                        // the reader: confirm first, then send.
                        ConfirmCost::WholeListing { .. } => {
                            let confirmed = confirm.await;
                            (send.await, confirmed)
                        }
                    }
                })
                .await;
            let (next, mut sent) = (next?, sent?);
            report.absorb(confirmed.tally);
            unwritten = confirmed.outcomes;
            if let Some(reason) = report.stopped_by.clone() {
                // What the calls made did is confirmed before the run closes; calls journaled
                // but not sent, and calls never journaled, never go out.
                let last = self.confirm(std::mem::take(&mut sent.answered)).await;
                report.absorb(last.tally);
                unwritten.extend(last.outcomes);
                let unsent: Vec<Journaled> = sent.unsent.into_iter().chain(next).collect();
                let never = calls.iter().flat_map(|c| c.items);
                let actions = action_ids_of(unsent.iter().flat_map(|j| j.call.items).chain(never));
                report.not_attempted += actions.len() as u64;
                let entry = JournalEntry {
                    outcomes: unwritten,
                    withdrawal: Some(Withdrawal {
                        mutations: unsent.iter().map(|j| j.mutation).collect(),
                        actions,
                        reason,
                    }),
                    intents: Vec::new(),
                };
                self.audit.write_journal(self.run, &entry).await?;
                return Ok(());
            }
            confirming = sent.answered;
            *group_size = resize(*group_size, write_took, calls_took);
            group = next;
        }
        let last = self.confirm(confirming).await;
        report.absorb(last.tally);
        unwritten.extend(last.outcomes);
        if !unwritten.is_empty() {
            let entry = JournalEntry {
                outcomes: unwritten,
                ..JournalEntry::default()
            };
            self.audit.write_journal(self.run, &entry).await?;
        }
        Ok(())
    }

    /// The actionable candidates that no exclusion protects now. Defence in depth: the
    /// exclusions are asked again right before acting.
    async fn still_unprotected<'p>(
        &self,
        batch: &'p [PlannedAction],
        report: &mut ApplyReport,
    ) -> Result<Vec<Item<'p>>, AuditError> {
        let mut queue = Vec::new();
        for candidate in batch {
            let action_id = candidate.action_id;
            let own = self
                .scope
                .own_token
                .as_ref()
                .filter(|own| {
                    candidate.kind == Kind::AccountApiToken && own.key() == candidate.id.key()
                })
                .map(|_| crate::rules::OWN_TOKEN);
            let protected = own.or_else(|| {
                self.rules.exclusion_for_parts(
                    candidate.kind,
                    &candidate.id,
                    candidate.user_email.as_deref(),
                    &candidate.name,
                )
            });
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
                target: candidate,
                action_id,
            });
        }
        Ok(queue)
    }

    /// Leaves out the candidates whose call failed for them alone, the same way, in each of the
    /// last [`STUCK_AFTER_RUNS`] runs: they are recorded `stuck` and not attempted, until they
    /// leave the plan.
    async fn leave_out_stuck<'p>(
        &self,
        queue: Vec<Item<'p>>,
        stuck: &HashMap<i64, (MutationId, String)>,
        report: &mut ApplyReport,
    ) -> Result<Vec<Item<'p>>, AuditError> {
        let (stuck_items, queue): (Vec<Item>, Vec<Item>) = queue
            .into_iter()
            .partition(|i| stuck.contains_key(&i.action_id));
        if stuck_items.is_empty() {
            return Ok(queue);
        }
        let rows: Vec<(i64, MutationId, String)> = stuck_items
            .iter()
            .filter_map(|i| {
                let (m, d) = stuck.get(&i.action_id)?;
                Some((i.action_id, *m, d.clone()))
            })
            .collect();
        self.audit.mark_stuck(&rows).await?;
        for item in &stuck_items {
            tracing::warn!(
                id = %item.target.id,
                rule = %item.target.rule,
                detail = stuck.get(&item.action_id).map_or("", |(_, d)| d.as_str()),
                "registration stuck: not attempted"
            );
        }
        self.count(&stuck_items, ActionStatus::Stuck.as_str());
        report.stuck += stuck_items.len() as u64;
        Ok(queue)
    }

    /// The actions of this run whose call failed for them alone, the same way, in each of the
    /// last [`STUCK_AFTER_RUNS`] runs, with the failed call and why they are stuck.
    async fn stuck_actions(&self) -> Result<HashMap<i64, (MutationId, String)>, AuditError> {
        let streaks = self
            .audit
            .failure_streaks(self.run, STUCK_AFTER_RUNS)
            .await?;
        Ok(streaks
            .into_iter()
            .filter(|s| s.runs >= STUCK_AFTER_RUNS)
            .map(|s| {
                let detail = if s.already_stuck {
                    s.detail
                } else {
                    format!(
                        "stuck: failed the same way in the last {STUCK_AFTER_RUNS} runs, so it is not attempted again until it leaves the plan: {}",
                        s.detail
                    )
                };
                (s.action_id, (s.mutation, detail))
            })
            .collect())
    }

    /// The intent of `call`, as the audit log records it.
    fn intent(&self, call: &Call<'_, '_>) -> Intent {
        let ids: Vec<ResourceId> = call.items.iter().map(|i| i.target.id.clone()).collect();
        let request = resource::mutation_request(
            call.kind,
            self.client.account(),
            self.scope,
            call.action,
            &ids,
        );
        Intent {
            resource_kind: call.kind,
            zone: self.scope.zone.clone(),
            kind: call_kind(call.action, ids.len()),
            method: request.method.to_string(),
            path: request.shown,
            ids,
            at: Utc::now(),
        }
    }

    /// Commits `outcomes` and the intents of `calls` in one transaction.
    async fn journal<'q, 'p>(
        &self,
        calls: Vec<Call<'q, 'p>>,
        outcomes: Vec<Outcome>,
    ) -> Result<Vec<Journaled<'q, 'p>>, AuditError> {
        let entry = JournalEntry {
            outcomes,
            withdrawal: None,
            intents: calls.iter().map(|c| self.intent(c)).collect(),
        };
        let ids = self.audit.write_journal(self.run, &entry).await?;
        Ok(calls
            .into_iter()
            .zip(ids)
            .map(|(call, mutation)| Journaled { call, mutation })
            .collect())
    }

    /// Sends the calls of a group in order until one fails or a stop is requested.
    /// `pending_lookups`: the listings still to come for the group being confirmed meanwhile,
    /// which the request budget must leave room for too.
    async fn send_group<'q, 'p>(
        &self,
        group: &[Journaled<'q, 'p>],
        pending_lookups: usize,
        cost: ConfirmCost,
        report: &mut ApplyReport,
    ) -> Result<Sent<'q, 'p>, AuditError> {
        let mut sent = Sent::default();
        for (i, journaled) in group.iter().enumerate() {
            if report.stopped_by.is_none() && self.stop.is_stopped() {
                report.stopped_by = Some("shutdown requested".to_owned());
            }
            if report.stopped_by.is_some() {
                sent.unsent.extend_from_slice(&group[i..]);
                break;
            }
            self.send_call(*journaled, pending_lookups, cost, report, &mut sent)
                .await?;
        }
        Ok(sent)
    }

    /// Why a call naming `ids` ids may not be sent: the request budget would not leave room
    /// for the listings that confirm it, the calls of its group already answered, and the
    /// group being confirmed meanwhile (`pending_lookups`; counted whole even once some are
    /// sent, so the reservation errs on the safe side).
    fn no_budget_to_confirm(
        &self,
        ids: usize,
        answered: &[Answered<'_, '_>],
        pending_lookups: usize,
        cost: ConfirmCost,
    ) -> Option<String> {
        let answered_ids: usize = answered.iter().map(|a| a.items.len()).sum();
        let lookups = cost.calls(answered_ids + ids) + pending_lookups;
        let needed = u64::from(self.client.requests_sent()) + 1 + lookups as u64;
        (needed > u64::from(self.request_budget)).then(|| {
            format!(
                "the request budget of {} API calls per cycle is spent, but for the listings that confirm the calls already made; raise [cloudflare] max_requests_per_cycle if this account really needs more",
                self.request_budget
            )
        })
    }

    /// Asks Cloudflare, by listing the ids of the calls answered (one listing call per
    /// hundred, per kind), whether each really is gone (or revoked), and settles every action
    /// on what the listing shows rather than on what the call answered.
    async fn confirm(&self, mut answered: Vec<Answered<'_, '_>>) -> Confirmed {
        let mut confirmed = Confirmed::default();
        for kind in Kind::ALL {
            let (of_kind, rest): (Vec<Answered>, Vec<Answered>) =
                answered.into_iter().partition(|a| a.kind == kind);
            answered = rest;
            if of_kind.is_empty() {
                continue;
            }
            let ids: Vec<ResourceId> = of_kind
                .iter()
                .flat_map(|a| a.items.iter().map(|i| i.target.id.clone()))
                .collect();
            let found = current_state(self.client, kind, self.scope, &ids).await;
            if let Err(e) = &found {
                tracing::warn!(ids = ids.len(), error = %e, "cannot confirm the calls just made by listing; their actions are recorded unconfirmed");
                // Acting on without being able to check what the calls did is not safe.
                confirmed.tally.stop.get_or_insert_with(|| {
                    format!("cannot confirm by listing what the calls did: {e}")
                });
            }
            let why = found.as_ref().err().map(ToString::to_string);
            for answered in of_kind {
                let found = match (&found, &why) {
                    (Ok(f), _) => Ok(f),
                    (Err(_), why) => Err(why.as_deref().unwrap_or("the listing failed")),
                };
                let outcome = self.settle(answered, found, &mut confirmed.tally);
                confirmed.outcomes.push(outcome);
            }
        }
        confirmed
    }

    /// Turns one answered call and the confirmation listing into the call's outcome.
    fn settle(
        &self,
        answered: Answered<'_, '_>,
        found: Result<&HashMap<ResourceId, Listed>, &str>,
        report: &mut Tally,
    ) -> Outcome {
        let mut settles: Vec<Settled> = Vec::new();
        let mut unconfirmed = 0;
        for item in answered.items {
            let listed = found.map(|f| f.get(&item.target.id));
            let now = listed.map(|l| l.map(|l| l.presence));
            let (status, mut detail) = verdict(answered.action, &answered.claim, now);
            // A kind with a status of its own (a certificate's `pending_revocation`) records
            // it as it is after the call; the snapshot holds it as it was before.
            if let (
                ActionStatus::Done,
                Ok(Some(Listed {
                    status: Some(s), ..
                })),
            ) = (status, listed)
            {
                detail.get_or_insert_with(|| format!("status after: {s}"));
            }
            self.count(std::slice::from_ref(item), status.as_str());
            match status {
                ActionStatus::Done => report.done += 1,
                ActionStatus::AlreadyGone => report.already_gone += 1,
                ActionStatus::Unconfirmed => {
                    report.unconfirmed += 1;
                    unconfirmed += 1;
                }
                ActionStatus::RefusedByApi => report.refused += 1,
                _ => {
                    report.failed += 1;
                    if report.first_failure.is_none() {
                        report.first_failure = Some(format!(
                            "{}: {}",
                            item.target.id,
                            detail.as_deref().unwrap_or("failed")
                        ));
                    }
                }
            }
            match settles
                .iter_mut()
                .find(|s| s.status == status && s.detail == detail)
            {
                Some(s) => s.actions.push(item.action_id),
                None => settles.push(Settled {
                    actions: vec![item.action_id],
                    status,
                    detail,
                }),
            }
        }
        if unconfirmed > 0 {
            tracing::warn!(
                mutation = answered.mutation.0,
                ids = unconfirmed,
                answer = ?answered.claim,
                "Cloudflare claimed success, but the listing does not confirm it; recorded unconfirmed"
            );
        }
        Outcome {
            mutation: answered.mutation,
            result: answered.result,
            settles,
            at: Utc::now(),
        }
    }

    /// Sends one call. A call naming several ids refused for reasons that concern its ids (its
    /// size, or one id Cloudflare will not act on) is split in halves, down to single calls; a
    /// single id's refusal is that id's failure, and the others go on; a failure that
    /// concerns the whole run (auth, budget, deadline, 5xx once retries are spent...) stops it.
    async fn send_call<'q, 'p>(
        &self,
        journaled: Journaled<'q, 'p>,
        pending_lookups: usize,
        cost: ConfirmCost,
        report: &mut ApplyReport,
        sent: &mut Sent<'q, 'p>,
    ) -> Result<(), AuditError> {
        let action = journaled.call.action;
        let mut work = vec![journaled];
        while let Some(Journaled { call, mutation }) = work.pop() {
            let part = call.items;
            if let Some(reason) =
                self.no_budget_to_confirm(part.len(), &sent.answered, pending_lookups, cost)
            {
                report.stopped_by = Some(reason);
                sent.unsent.push(Journaled { call, mutation });
                sent.unsent.append(&mut work);
                return Ok(());
            }
            let ids: Vec<ResourceId> = part.iter().map(|i| i.target.id.clone()).collect();
            report.mutations += 1;
            let request = resource::mutation_request(
                call.kind,
                self.client.account(),
                self.scope,
                action,
                &ids,
            );
            let result = self.client.mutate(&request).await;
            let (result, claim) = match result {
                Ok(MutationOutcome::Done { status }) => (
                    MutationResult {
                        outcome: CallOutcome::Ok,
                        http_status: Some(status),
                        cf_error_code: None,
                        cf_error_message: None,
                    },
                    Claim::Done { status },
                ),
                Ok(MutationOutcome::NotFound {
                    code,
                    after_ambiguous_attempt,
                }) => (
                    MutationResult {
                        outcome: CallOutcome::NotFound,
                        http_status: Some(404),
                        cf_error_code: code,
                        cf_error_message: None,
                    },
                    Claim::NotFound {
                        after_ambiguous_attempt,
                    },
                ),
                Err(e) if part.len() > 1 && !e.is_run_wide() => {
                    tracing::warn!(ids = part.len(), error = %e, "call refused for its ids; splitting it");
                    let (a, b) = part.split_at(part.len() / 2);
                    let refused = Outcome {
                        mutation,
                        result: failure(&e),
                        settles: Vec::new(),
                        at: Utc::now(),
                    };
                    let halves = [a, b]
                        .map(|items| Call {
                            kind: call.kind,
                            action,
                            items,
                        })
                        .to_vec();
                    let mut halves = self.journal(halves, vec![refused]).await?;
                    // Popped from the end: the first half goes first.
                    halves.reverse();
                    work.extend(halves);
                    continue;
                }
                Err(e) if resource::means_refused(&e) => {
                    tracing::warn!(id = %ids[0], error = %e, "Cloudflare refused to act on it until it is no longer in use; not retried");
                    let detail = format!("{e}. {}", resource::refusal_hint(call.kind));
                    (failure(&e), Claim::Refused { detail })
                }
                Err(e) => {
                    let detail = e.to_string();
                    if e.is_run_wide() {
                        report.stopped_by = Some(detail.clone());
                    } else {
                        tracing::warn!(id = %ids[0], error = %e, "Cloudflare refused the call for this registration; going on with the others");
                    }
                    (
                        failure(&e),
                        Claim::Failed {
                            detail,
                            maybe_acted: e.leaves_outcome_unknown(),
                        },
                    )
                }
            };
            sent.answered.push(Answered {
                mutation,
                kind: call.kind,
                action,
                items: part,
                result,
                claim,
            });
            if report.stopped_by.is_some() {
                sent.unsent.append(&mut work);
                return Ok(());
            }
        }
        Ok(())
    }

    fn count(&self, part: &[Item<'_>], outcome: &str) {
        for item in part {
            let c = item.target;
            self.metrics
                .actions
                .with_label_values(&[c.kind.as_str(), &c.rule, c.action.as_str(), outcome])
                .inc();
        }
    }
}

fn action_ids_of<'a, 'p: 'a>(items: impl IntoIterator<Item = &'a Item<'p>>) -> Vec<i64> {
    items.into_iter().map(|i| i.action_id).collect()
}

/// What confirming calls costs in listing requests, for the request budget.
#[derive(Clone, Copy, Debug)]
enum ConfirmCost {
    /// A filtered listing per hundred ids.
    PerHundredIds,
    /// The kind cannot be listed by id: every confirmation lists it whole, which took
    /// `pages` pages when planning (deletions only shrink it).
    WholeListing { pages: u64 },
}

impl ConfirmCost {
    fn of(kind: Kind, pages: u64) -> Self {
        if resource::finds_by_id(kind) {
            ConfirmCost::PerHundredIds
        } else {
            ConfirmCost::WholeListing {
                pages: pages.max(1),
            }
        }
    }

    /// The listing calls that confirming calls naming `ids` ids in all takes.
    fn calls(self, ids: usize) -> usize {
        match self {
            ConfirmCost::PerHundredIds => ids.div_ceil(IDS_PER_LOOKUP),
            ConfirmCost::WholeListing { pages } if ids > 0 => {
                usize::try_from(pages).unwrap_or(usize::MAX)
            }
            ConfirmCost::WholeListing { .. } => 0,
        }
    }

    /// The listing calls that confirming `answered` takes (one plan, so one kind).
    fn lookups(self, answered: &[Answered<'_, '_>]) -> usize {
        self.calls(answered.iter().map(|a| a.items.len()).sum())
    }
}

fn take<'q, 'p>(calls: &mut VecDeque<Call<'q, 'p>>, n: usize) -> Vec<Call<'q, 'p>> {
    let n = n.min(calls.len());
    calls.drain(..n).collect()
}

/// Doubles the group while the audit write took longer than the calls it ran beside (the
/// calls waited for it), and halves it once the write takes under a quarter of their time.
fn resize(size: usize, write: Duration, calls: Duration) -> usize {
    if write > calls {
        (size * 2).min(MAX_GROUP)
    } else if write * 4 < calls {
        (size / 2).max(1)
    } else {
        size
    }
}

fn call_kind(action: Action, ids: usize) -> MutationKind {
    match (action, ids) {
        (Action::Delete, 1) => MutationKind::Delete,
        (Action::Delete, _) => MutationKind::BulkDelete,
        (Action::Revoke, _) => MutationKind::Revoke,
    }
}

/// What a registration's action came to, from the call's claim and what the confirmation
/// listing shows of it now (`Err`: the listing failed).
fn verdict(
    action: Action,
    claim: &Claim,
    now: Result<Option<Presence>, &str>,
) -> (ActionStatus, Option<String>) {
    let s = |t: &str| Some(t.to_owned());
    let now = match now {
        Ok(now) => now,
        Err(why) => {
            return match claim {
                Claim::Failed { detail, .. } => (ActionStatus::Failed, Some(detail.clone())),
                Claim::Refused { detail } => (ActionStatus::RefusedByApi, Some(detail.clone())),
                Claim::Done { status } => (
                    ActionStatus::Unconfirmed,
                    Some(format!("Cloudflare answered HTTP {status}, but the listing that confirms it failed: {why}")),
                ),
                Claim::NotFound { .. } => (
                    ActionStatus::Unconfirmed,
                    Some(format!("Cloudflare answered 404, but the listing that confirms it failed: {why}")),
                ),
            };
        }
    };
    if action == Action::Revoke && now.is_none() {
        return (
            ActionStatus::AlreadyGone,
            s("the registration no longer exists (deleted elsewhere), so there is nothing to revoke"),
        );
    }
    let achieved = match action {
        Action::Delete => now.is_none(),
        Action::Revoke => now == Some(Presence::Revoked),
    };
    let (gone, still) = match action {
        Action::Delete => ("gone", "still lists the registration"),
        Action::Revoke => ("revoked", "shows the registration not revoked"),
    };
    match (claim, achieved) {
        (Claim::Done { .. }, true) => (ActionStatus::Done, None),
        (Claim::Done { status }, false) => (
            ActionStatus::Unconfirmed,
            Some(format!("Cloudflare answered HTTP {status}, but the listing {still}; the next plan decides again")),
        ),
        (Claim::NotFound { after_ambiguous_attempt: false }, true) => (
            ActionStatus::AlreadyGone,
            Some(format!("Cloudflare answered 404 and the listing confirms it {gone}")),
        ),
        (Claim::NotFound { after_ambiguous_attempt: true }, true) => (
            ActionStatus::Done,
            Some(format!("Cloudflare answered 404 after an earlier attempt of the same call went unanswered, and the listing confirms it {gone}: this run most likely did it")),
        ),
        (Claim::NotFound { .. }, false) => (
            ActionStatus::Failed,
            s("Cloudflare answered 404 but the registration still exists"),
        ),
        (Claim::Failed { detail, maybe_acted: true }, true) => (
            ActionStatus::Done,
            Some(format!("{detail}; but the listing confirms it {gone}: an attempt of this run most likely took effect")),
        ),
        (Claim::Failed { detail, maybe_acted: false }, true) => (
            ActionStatus::AlreadyGone,
            Some(format!("{detail}; but the listing shows it {gone}")),
        ),
        (Claim::Failed { detail, .. }, false) => (ActionStatus::Failed, Some(detail.clone())),
        (Claim::Refused { detail }, false) => (ActionStatus::RefusedByApi, Some(detail.clone())),
        (Claim::Refused { detail }, true) => (
            ActionStatus::AlreadyGone,
            Some(format!("{detail}; but the listing shows it {gone}")),
        ),
    }
}

pub(crate) fn failure(e: &ApiError) -> MutationResult {
    MutationResult {
        outcome: if e.is_run_wide() {
            CallOutcome::Error
        } else {
            CallOutcome::Rejected
        },
        http_status: e.status(),
        cf_error_code: e.cf_error().map(|d| d.code),
        cf_error_message: Some(
            e.cf_error()
                .map(|d| d.message.clone())
                .unwrap_or_else(|| e.to_string()),
        ),
    }
}

/// Ids per reconciliation lookup: about 4 KB of URL, as for a bulk call.
const IDS_PER_LOOKUP: usize = 100;

/// Reconciles intents a crash left without outcome: asks Cloudflare whether each object is in
/// the state the call wanted and records what it finds. Returns how many were reconciled.
pub async fn reconcile_pending(client: &Client, audit: &AuditStore) -> Result<u64, ReconcileError> {
    let pending = audit.pending_mutations().await?;
    for m in &pending {
        let scope = Scope {
            zone: m.zone.clone(),
            own_token: None,
        };
        let now = current_state(client, m.resource_kind, &scope, &m.resource_ids).await?;
        let mut all_done = true;
        for id in &m.resource_ids {
            let done = match m.kind {
                MutationKind::Delete | MutationKind::BulkDelete => !now.contains_key(id),
                MutationKind::Revoke => now.get(id).map(|l| l.presence) == Some(Presence::Revoked),
                // An undo: the registration listed not revoked, the certificate `active` or
                // `pending_reactivation` (neither reads as revoked).
                MutationKind::Unrevoke | MutationKind::Reactivate => {
                    now.get(id).map(|l| l.presence) == Some(Presence::Active)
                }
            };
            all_done &= done;
            let undo = matches!(m.kind, MutationKind::Unrevoke | MutationKind::Reactivate);
            let (status, detail) = match (done, undo) {
                (true, _) => (
                    ActionStatus::Done,
                    "reconciled after restart: Cloudflare shows it done",
                ),
                (false, false) => (
                    ActionStatus::Failed,
                    "reconciled after restart: the call did not take effect; the next plan decides again",
                ),
                (false, true) => (
                    ActionStatus::Failed,
                    "reconciled after restart: the undo did not take effect; run the undo again",
                ),
            };
            audit
                .set_mutation_action_status(m, id, status, detail)
                .await?;
        }
        let result = MutationResult {
            outcome: if all_done {
                CallOutcome::ReconciledDone
            } else {
                CallOutcome::ReconciledNotDone
            },
            http_status: None,
            cf_error_code: None,
            cf_error_message: None,
        };
        let entry = JournalEntry {
            outcomes: vec![Outcome {
                mutation: m.id,
                result,
                settles: Vec::new(),
                at: Utc::now(),
            }],
            ..JournalEntry::default()
        };
        audit.write_journal(m.run_id, &entry).await?;
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

/// What Cloudflare holds now of `ids` of `kind`: one filtered listing per hundred ids rather
/// than a GET each, followed to its end. An id missing from the map does not exist. Used to
/// reconcile interrupted calls and to confirm what every call claims.
/// One object as a confirmation listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    pub(crate) presence: Presence,
    /// Its status as listed, for kinds that have one.
    pub(crate) status: Option<String>,
}

pub(crate) async fn current_state(
    client: &Client,
    kind: Kind,
    scope: &Scope,
    ids: &[ResourceId],
) -> Result<HashMap<ResourceId, Listed>, LookupError> {
    let mut found = HashMap::new();
    // A kind that cannot be listed by id is listed whole, once.
    let lookups: Vec<&[ResourceId]> = if resource::finds_by_id(kind) {
        ids.chunks(IDS_PER_LOOKUP).collect()
    } else {
        vec![ids]
    };
    for lookup in lookups {
        let mut token: Option<PageToken> = None;
        let mut followed = HashSet::new();
        let (mut total, mut listed) = (None, 0u64);
        loop {
            let page = resource::find_page(kind, client, scope, lookup, token.as_ref()).await?;
            listed += page.items.len() as u64;
            match (total, page.total) {
                (Some(before), Some(now)) if before != now => {
                    return Err(LookupError::Unreadable(format!(
                        "the listing changed while it was read: {before} objects in all, then {now}"
                    )))
                }
                (None, now) => total = now,
                _ => {}
            }
            for raw in &page.items {
                let (id, presence, status) = resource::presence(kind, raw)
                    .map_err(|e| LookupError::Unreadable(e.to_string()))?;
                found.insert(id, Listed { presence, status });
            }
            match page.next {
                None => {
                    if let Some(total) = total.filter(|t| *t != listed) {
                        return Err(LookupError::Unreadable(format!(
                            "the listing counted {total} objects in all but held {listed}"
                        )));
                    }
                    break;
                }
                Some(next) if followed.insert(next.clone()) => token = Some(next),
                Some(_) => {
                    return Err(LookupError::Unreadable(
                        "the listing repeats a cursor".to_owned(),
                    ))
                }
            }
        }
    }
    Ok(found)
}

/// Why the registrations among some ids could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("Cloudflare's listing of those ids is unreadable ({0})")]
    Unreadable(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("cannot reconcile an interrupted mutation: {0}; it stays pending and is tried again next run")]
    Lookup(#[from] LookupError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listing_decides_what_a_call_achieved() {
        use ActionStatus::*;
        let done = Claim::Done { status: 200 };
        let not_found = Claim::NotFound {
            after_ambiguous_attempt: false,
        };
        let not_found_after_502 = Claim::NotFound {
            after_ambiguous_attempt: true,
        };
        let refused = Claim::Failed {
            detail: "400 (code 2001)".to_owned(),
            maybe_acted: false,
        };
        let after_502 = Claim::Failed {
            detail: "502".to_owned(),
            maybe_acted: true,
        };
        let active = Ok(Some(Presence::Active));
        let revoked = Ok(Some(Presence::Revoked));
        let absent = Ok(None);
        let unreadable = Err("listing failed");
        let cases = [
            // (action, claim, what the listing shows, status)
            (Action::Delete, &done, absent, Done),
            (Action::Delete, &done, active, Unconfirmed),
            (Action::Delete, &done, revoked, Unconfirmed),
            (Action::Delete, &done, unreadable, Unconfirmed),
            (Action::Delete, &not_found, absent, AlreadyGone),
            (Action::Delete, &not_found, active, Failed),
            (Action::Delete, &not_found, unreadable, Unconfirmed),
            (Action::Delete, &not_found_after_502, absent, Done),
            (Action::Delete, &not_found_after_502, active, Failed),
            (Action::Delete, &refused, active, Failed),
            (Action::Delete, &refused, absent, AlreadyGone),
            (Action::Delete, &refused, unreadable, Failed),
            (Action::Delete, &after_502, absent, Done),
            (Action::Delete, &after_502, active, Failed),
            (Action::Revoke, &done, revoked, Done),
            (Action::Revoke, &done, active, Unconfirmed),
            (Action::Revoke, &done, absent, AlreadyGone),
            (Action::Revoke, &not_found, active, Failed),
            (Action::Revoke, &not_found, revoked, AlreadyGone),
        ];
        for (action, claim, now, expected) in cases {
            let (status, detail) = verdict(action, claim, now);
            assert_eq!(status, expected, "{action:?} {claim:?} {now:?}: {detail:?}");
        }
        let (_, detail) = verdict(Action::Delete, &not_found_after_502, absent);
        assert!(detail.unwrap().contains("this run most likely did it"));
    }

    #[test]
    fn the_call_group_grows_while_the_audit_is_slower_and_shrinks_when_the_api_is() {
        let ms = Duration::from_millis;
        let cases = [
            // (size, write, calls, next size)
            (1, ms(5), ms(1), 2),
            (4, ms(5), ms(4), 8),
            (MAX_GROUP, ms(50), ms(1), MAX_GROUP),
            (8, ms(2), ms(4), 8),
            (8, ms(1), ms(4), 8),
            (8, ms(1), ms(400), 4),
            (1, ms(1), ms(400), 1),
        ];
        for (size, write, calls, next) in cases {
            assert_eq!(
                resize(size, write, calls),
                next,
                "size {size}, write {write:?}, calls {calls:?}"
            );
        }
    }
}
