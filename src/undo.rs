//! `zt-janitor undo --run N`: reverses what run N did where Cloudflare allows it. A
//! registration the run revoked is unrevoked (in bulk, chunked like revoke); a client
//! certificate it revoked is reactivated while Cloudflare still shows it `pending_revocation`
//! (one per call). Everything else is refused by name, with why: deletions above all, which
//! Cloudflare cannot restore.
//!
//! An undo is a run of its own in the audit log (mode `undo`), and its calls follow the same
//! intent/outcome journal as any mutation: each undo action names the action it reverses
//! (`undoes_action_id`), each call's intent is committed before it is sent, and each outcome is
//! settled by listing, so an interrupted undo is reconciled by the next run like any call.

use std::collections::HashMap;

use chrono::Utc;
use serde::Serialize;

use crate::apply::{current_state, failure, Listed, LookupError};
use crate::audit::{
    ActionStatus, AuditError, AuditStore, CallOutcome, Intent, JournalEntry, MutationId,
    MutationKind, MutationResult, Outcome, RunAction, RunId, RunOutcome, RunSummary, Settled,
    UndoDecision,
};
use crate::cloudflare::{Client, MutationOutcome, ZoneId};
use crate::config::Action;
use crate::resource::{self, client_certificate, Kind, Presence, ResourceId, Scope};

#[derive(Debug, thiserror::Error)]
pub enum UndoError {
    #[error("the audit log has no run {0}; see `zt-janitor audit runs` for the run ids")]
    NoSuchRun(i64),
    #[error("cannot read from Cloudflare what run {run}'s objects are now: {source}; nothing was undone, try again")]
    Lookup {
        run: i64,
        #[source]
        source: LookupError,
    },
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// What undo makes of one action of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Reversible, by this call.
    Reverse(MutationKind),
    /// Not reversible, and why.
    Refuse(String),
}

/// Where objects are listed: their kind, and their zone for a zoned kind.
type Place = (Kind, Option<String>);

/// How Cloudflare lists an object now: `None` when it is not listed (it no longer exists).
pub type Now<'a> = Option<(Presence, Option<&'a str>)>;

/// Decides whether `action` (of the run undone) can be reversed, given how Cloudflare lists
/// its object now. Pure, so that every refusal is a table test.
pub fn decide(action: &RunAction, now: Now<'_>) -> Verdict {
    let refuse = |why: &str| Verdict::Refuse(why.to_owned());
    match action.action.as_str() {
        "delete" => return refuse("deleted: Cloudflare cannot restore it"),
        "unrevoke" | "reactivate" => {
            return refuse("an undo itself: undo reverses the janitor's revocations, not its undos")
        }
        _ => {}
    }
    if action.status != ActionStatus::Done.as_str() {
        return Verdict::Refuse(format!(
            "not done (status {}): there is nothing to undo",
            action.status
        ));
    }
    let undoable = match (action.kind, Action::parse(&action.action)) {
        (Some(kind), Some(a)) => resource::undoable(kind, a),
        _ => false,
    };
    if !undoable {
        return Verdict::Refuse(format!(
            "Cloudflare offers no way to reverse a {} of a {}",
            action.action, action.resource_kind
        ));
    }
    let Some((presence, status)) = now else {
        return refuse("no longer exists (deleted since): Cloudflare cannot restore it");
    };
    match action.kind {
        Some(Kind::ClientCertificate) if client_certificate::reactivatable(status) => {
            Verdict::Reverse(MutationKind::Reactivate)
        }
        Some(Kind::ClientCertificate) if status == Some("revoked") => refuse(
            "already revoked: Cloudflare reactivates a certificate only while it is pending_revocation",
        ),
        Some(Kind::ClientCertificate) => Verdict::Refuse(format!(
            "not revoked any more (status {}): nothing to undo",
            status.unwrap_or("unknown")
        )),
        _ if presence == Presence::Revoked => Verdict::Reverse(MutationKind::Unrevoke),
        _ => refuse("not revoked any more: nothing to undo"),
    }
}

/// The actions of the run that `--id` names (all of them without `--id`), and the ids asked
/// for that the run has no action on. Ids compare as Cloudflare compares them (a UUID in any
/// case or spelling).
pub fn select(actions: Vec<RunAction>, ids: &[String]) -> (Vec<RunAction>, Vec<String>) {
    if ids.is_empty() {
        return (actions, Vec::new());
    }
    let key = |raw: &str| ResourceId::parse(raw).map(|id| id.key()).ok();
    let same = |a: &str, b: &str| a == b || (key(a).is_some() && key(a) == key(b));
    let missing = ids
        .iter()
        .filter(|id| !actions.iter().any(|a| same(&a.resource_id, id)))
        .cloned()
        .collect();
    let chosen = actions
        .into_iter()
        .filter(|a| ids.iter().any(|id| same(&a.resource_id, id)))
        .collect();
    (chosen, missing)
}

/// One action of the run and what undo makes of it.
#[derive(Debug, Clone)]
pub struct Item {
    pub action: RunAction,
    pub verdict: Verdict,
}

/// What an undo would do: reverse some actions of run `run`, refuse the others.
#[derive(Debug, Clone)]
pub struct UndoPlan {
    pub run: RunId,
    pub items: Vec<Item>,
    /// Ids `--id` named that run `run` has no action on.
    pub not_in_run: Vec<String>,
}

impl UndoPlan {
    pub fn reversible(&self) -> impl Iterator<Item = &Item> {
        self.items
            .iter()
            .filter(|i| matches!(i.verdict, Verdict::Reverse(_)))
    }

    pub fn refused(&self) -> usize {
        self.items.len() - self.reversible().count() + self.not_in_run.len()
    }
}

/// Reads run `run`'s actions (those `ids` names, or all) and decides each against how
/// Cloudflare lists its object now. Reads only: nothing is recorded, nothing is changed.
pub async fn prepare(
    audit: &AuditStore,
    client: &Client,
    run: RunId,
    ids: &[String],
) -> Result<UndoPlan, UndoError> {
    if audit.run_mode(run).await?.is_none() {
        return Err(UndoError::NoSuchRun(run.0));
    }
    let (actions, not_in_run) = select(audit.run_actions(run).await?, ids);
    // Only what might be reversed is looked up: one listing per hundred registrations, and
    // each zone's certificates listed whole.
    let mut wanted: HashMap<Place, Vec<ResourceId>> = HashMap::new();
    for a in &actions {
        let reversible_kind = matches!(
            a.kind,
            Some(Kind::DeviceRegistration | Kind::ClientCertificate)
        );
        if a.action == "revoke" && a.status == ActionStatus::Done.as_str() && reversible_kind {
            if let (Some(kind), Ok(id)) = (a.kind, ResourceId::parse(&a.resource_id)) {
                wanted.entry((kind, a.zone.clone())).or_default().push(id);
            }
        }
    }
    let mut listed: HashMap<Place, HashMap<ResourceId, Listed>> = HashMap::new();
    for ((kind, zone), ids) in wanted {
        let scope = scope_of(kind, zone.as_deref());
        let now = current_state(client, kind, &scope, &ids)
            .await
            .map_err(|source| UndoError::Lookup { run: run.0, source })?;
        listed.insert((kind, zone), now);
    }
    let items = actions
        .into_iter()
        .map(|action| {
            let now = action.kind.and_then(|kind| {
                let id = ResourceId::parse(&action.resource_id).ok()?;
                listed.get(&(kind, action.zone.clone()))?.get(&id)
            });
            let verdict = decide(&action, now.map(|l| (l.presence, l.status.as_deref())));
            Item { action, verdict }
        })
        .collect();
    Ok(UndoPlan {
        run,
        items,
        not_in_run,
    })
}

fn scope_of(kind: Kind, zone: Option<&str>) -> Scope {
    match zone.and_then(|z| ZoneId::parse(z).ok()) {
        Some(zone) if kind.zoned() => Scope::zone(zone),
        _ => Scope::default(),
    }
}

/// How one action's reversal ended.
#[derive(Debug, Clone, Serialize)]
pub struct ItemReport {
    /// The action of the run undone.
    pub action_id: i64,
    pub action: String,
    pub resource_kind: String,
    pub resource_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    pub name: Option<String>,
    /// `unrevoked`, `reactivated`, `refused`, `failed`, `unconfirmed` or `not_attempted`.
    pub result: &'static str,
    pub detail: Option<String>,
    /// The undo's own action in the audit log, if one was recorded.
    pub undo_action_id: Option<i64>,
}

/// What an undo did.
#[derive(Debug, Clone, Serialize)]
pub struct UndoReport {
    /// The run undone.
    pub run: i64,
    /// The undo's own run in the audit log; `None` when there was nothing to reverse.
    pub undo_run: Option<i64>,
    pub reversed: u64,
    pub refused: u64,
    pub failed: u64,
    pub items: Vec<ItemReport>,
    /// Ids `--id` named that the run has no action on.
    pub not_in_run: Vec<String>,
}

impl UndoReport {
    /// The exit status: 0 when every action asked about was reversed (or there was none), 3
    /// when some could not be (the others were), 5 when a reversal failed or is unconfirmed.
    pub fn exit_code(&self) -> u8 {
        if self.failed > 0 {
            5
        } else if self.refused > 0 {
            3
        } else {
            0
        }
    }
}

/// One call of the undo and the actions it carries (indices into the decisions).
struct Call {
    kind: Kind,
    zone: Option<ZoneId>,
    mutation: MutationKind,
    items: Vec<usize>,
}

/// Carries out `plan`: records the undo as its own run, then each call as intent, call and
/// outcome confirmed by listing. `chunk`: registration ids per unrevoke call.
pub async fn execute(
    audit: &AuditStore,
    client: &Client,
    plan: &UndoPlan,
    chunk: usize,
) -> Result<UndoReport, UndoError> {
    let mut report = UndoReport {
        run: plan.run.0,
        undo_run: None,
        reversed: 0,
        refused: plan.refused() as u64,
        failed: 0,
        items: Vec::new(),
        not_in_run: plan.not_in_run.clone(),
    };
    let refused = plan.items.iter().filter_map(|i| match &i.verdict {
        Verdict::Refuse(why) => Some(item_report(&i.action, "refused", Some(why.clone()), None)),
        Verdict::Reverse(_) => None,
    });
    report.items.extend(refused);
    let reversible: Vec<&Item> = plan.reversible().collect();
    if reversible.is_empty() {
        return Ok(report);
    }
    let started = Utc::now();
    let run = audit.begin_undo_run(plan.run, started).await?;
    report.undo_run = Some(run.0);
    let decisions: Vec<UndoDecision> = reversible
        .iter()
        .filter_map(|item| {
            let Verdict::Reverse(mutation) = item.verdict else {
                return None;
            };
            let a = &item.action;
            Some(UndoDecision {
                undoes: a.action_id,
                mutation,
                kind: a.kind?,
                id: ResourceId::parse(&a.resource_id).ok()?,
                zone: a.zone.as_deref().and_then(|z| ZoneId::parse(z).ok()),
                rule: a.rule.clone(),
                user_email: a.user_email.clone(),
                name: a.name.clone(),
                reason: format!(
                    "undo of action {} of run {} ({} by rule {})",
                    a.action_id, plan.run.0, a.action, a.rule
                ),
            })
        })
        .collect();
    let action_ids = audit.record_undo_actions(run, started, &decisions).await?;

    let calls = calls(&decisions, chunk);
    let mut results: Vec<Option<(ActionStatus, Option<String>)>> = vec![None; decisions.len()];
    let mut answered: Vec<(MutationId, &Call, MutationResult, Claim)> = Vec::new();
    let mut stopped: Option<String> = None;
    for call in &calls {
        if stopped.is_some() {
            break;
        }
        let ids: Vec<ResourceId> = call
            .items
            .iter()
            .map(|&i| decisions[i].id.clone())
            .collect();
        let scope = scope_of(call.kind, call.zone.as_ref().map(ZoneId::as_str));
        let Some(request) = resource::undo_request(call.kind, client.account(), &scope, &ids)
        else {
            continue;
        };
        let intent = Intent {
            resource_kind: call.kind,
            zone: call.zone.clone(),
            kind: call.mutation,
            method: request.method.to_string(),
            path: request.shown.clone(),
            ids,
            at: Utc::now(),
        };
        let entry = JournalEntry {
            intents: vec![intent],
            ..JournalEntry::default()
        };
        // The intent is durable before the call is sent.
        let mutation = audit.write_journal(run, &entry).await?[0];
        let (result, claim) = match client.mutate(&request).await {
            Ok(MutationOutcome::Done { status }) => (
                MutationResult {
                    outcome: CallOutcome::Ok,
                    http_status: Some(status),
                    cf_error_code: None,
                    cf_error_message: None,
                },
                Claim::Done(status),
            ),
            Ok(MutationOutcome::NotFound { code, .. }) => (
                MutationResult {
                    outcome: CallOutcome::NotFound,
                    http_status: Some(404),
                    cf_error_code: code,
                    cf_error_message: None,
                },
                Claim::Failed("Cloudflare answered 404: it no longer exists".to_owned()),
            ),
            Err(e) => {
                if e.is_run_wide() {
                    stopped = Some(e.to_string());
                }
                (failure(&e), Claim::Failed(e.to_string()))
            }
        };
        answered.push((mutation, call, result, claim));
    }

    // Confirm by listing: per kind and zone, the ids of every call answered.
    let mut wanted: HashMap<Place, Vec<ResourceId>> = HashMap::new();
    for (_, call, _, _) in &answered {
        let key = (call.kind, call.zone.as_ref().map(|z| z.as_str().to_owned()));
        let ids = call.items.iter().map(|&i| decisions[i].id.clone());
        wanted.entry(key).or_default().extend(ids);
    }
    let mut listed: HashMap<Place, Result<HashMap<ResourceId, Listed>, String>> = HashMap::new();
    for ((kind, zone), ids) in wanted {
        let scope = scope_of(kind, zone.as_deref());
        let now = current_state(client, kind, &scope, &ids)
            .await
            .map_err(|e| e.to_string());
        listed.insert((kind, zone), now);
    }
    let mut outcomes = Vec::new();
    for (mutation, call, result, claim) in answered {
        let key = (call.kind, call.zone.as_ref().map(|z| z.as_str().to_owned()));
        let mut settles: Vec<Settled> = Vec::new();
        for &i in &call.items {
            let now = match listed.get(&key) {
                Some(Ok(found)) => Ok(found.get(&decisions[i].id)),
                Some(Err(why)) => Err(why.as_str()),
                None => Err("not listed"),
            };
            let (status, detail) = verdict(&claim, now);
            results[i] = Some((status, detail.clone()));
            match settles
                .iter_mut()
                .find(|s| s.status == status && s.detail == detail)
            {
                Some(s) => s.actions.push(action_ids[i]),
                None => settles.push(Settled {
                    actions: vec![action_ids[i]],
                    status,
                    detail,
                }),
            }
        }
        outcomes.push(Outcome {
            mutation,
            result,
            settles,
            at: Utc::now(),
        });
    }
    let not_sent: Vec<i64> = results
        .iter()
        .zip(&action_ids)
        .filter(|(r, _)| r.is_none())
        .map(|(_, id)| *id)
        .collect();
    let withdrawal = (!not_sent.is_empty()).then(|| crate::audit::Withdrawal {
        mutations: Vec::new(),
        actions: not_sent,
        reason: format!(
            "not attempted: the undo stopped first ({})",
            stopped.as_deref().unwrap_or("no call for it")
        ),
    });
    audit
        .write_journal(
            run,
            &JournalEntry {
                outcomes,
                withdrawal,
                intents: Vec::new(),
            },
        )
        .await?;

    let mut summary = RunSummary {
        candidates: Some(decisions.len() as u64),
        api_requests: u64::from(client.requests_sent()),
        ..RunSummary::default()
    };
    for (i, d) in decisions.iter().enumerate() {
        let item = reversible
            .iter()
            .find(|it| it.action.action_id == d.undoes)
            .map(|it| &it.action);
        let (result, detail) = match &results[i] {
            Some((ActionStatus::Done, detail)) => {
                summary.actions_done += 1;
                report.reversed += 1;
                let done = match d.mutation {
                    MutationKind::Reactivate => "reactivated",
                    _ => "unrevoked",
                };
                (done, detail.clone())
            }
            Some((ActionStatus::Unconfirmed, detail)) => {
                summary.actions_failed += 1;
                summary.actions_unconfirmed += 1;
                report.failed += 1;
                ("unconfirmed", detail.clone())
            }
            Some((_, detail)) => {
                summary.actions_failed += 1;
                report.failed += 1;
                ("failed", detail.clone())
            }
            None => {
                report.failed += 1;
                summary.actions_failed += 1;
                ("not_attempted", stopped.clone())
            }
        };
        if let Some(action) = item {
            report
                .items
                .push(item_report(action, result, detail, Some(action_ids[i])));
        }
    }
    let outcome = if report.failed == 0 {
        RunOutcome::Applied
    } else {
        RunOutcome::Failed
    };
    let reason = format!(
        "undo of run {}: {} reversed, {} failed, {} refused{}",
        plan.run.0,
        report.reversed,
        report.failed,
        report.refused,
        stopped
            .as_deref()
            .map(|s| format!("; stopped: {s}"))
            .unwrap_or_default()
    );
    audit
        .finish_run(run, outcome, Some(&reason), &summary, &[], Utc::now())
        .await?;
    Ok(report)
}

fn item_report(
    a: &RunAction,
    result: &'static str,
    detail: Option<String>,
    undo_action_id: Option<i64>,
) -> ItemReport {
    ItemReport {
        action_id: a.action_id,
        action: a.action.clone(),
        resource_kind: a.resource_kind.clone(),
        resource_id: a.resource_id.clone(),
        zone: a.zone.clone(),
        name: a.name.clone(),
        result,
        detail,
        undo_action_id,
    }
}

/// The undo's calls: registrations in chunks of `chunk` ids, certificates one per call.
fn calls(decisions: &[UndoDecision], chunk: usize) -> Vec<Call> {
    let mut calls: Vec<Call> = Vec::new();
    for (i, d) in decisions.iter().enumerate() {
        let joins = resource::bulk(d.kind, Action::Revoke) && d.mutation == MutationKind::Unrevoke;
        match calls.last_mut() {
            Some(last)
                if joins
                    && last.kind == d.kind
                    && last.mutation == d.mutation
                    && last.zone == d.zone
                    && last.items.len() < chunk.max(1) =>
            {
                last.items.push(i)
            }
            _ => calls.push(Call {
                kind: d.kind,
                zone: d.zone.clone(),
                mutation: d.mutation,
                items: vec![i],
            }),
        }
    }
    calls
}

/// What Cloudflare answered an undo call: only a claim until the listing confirms it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Claim {
    Done(u16),
    Failed(String),
}

/// What one reversal came to, from the call's claim and how the listing shows the object now
/// (`Err`: the listing failed). Reversed means listed and not revoked: a registration without
/// `revoked_at`, a certificate `active` or `pending_reactivation`.
fn verdict(claim: &Claim, now: Result<Option<&Listed>, &str>) -> (ActionStatus, Option<String>) {
    let now = match now {
        Ok(now) => now,
        Err(why) => {
            return match claim {
                Claim::Done(status) => (
                    ActionStatus::Unconfirmed,
                    Some(format!(
                        "Cloudflare answered HTTP {status}, but the listing that confirms it failed: {why}"
                    )),
                ),
                Claim::Failed(detail) => (ActionStatus::Failed, Some(detail.clone())),
            }
        }
    };
    let reversed = now.is_some_and(|l| l.presence == Presence::Active);
    let status_after = now
        .and_then(|l| l.status.as_deref())
        .map(|s| format!("status after: {s}"));
    match (claim, reversed) {
        (Claim::Done(_), true) => (ActionStatus::Done, status_after),
        (Claim::Done(status), false) => (
            ActionStatus::Unconfirmed,
            Some(format!(
                "Cloudflare answered HTTP {status}, but the listing {}",
                if now.is_some() {
                    "still shows it revoked"
                } else {
                    "no longer shows it"
                }
            )),
        ),
        (Claim::Failed(detail), true) => (
            ActionStatus::Done,
            Some(format!("{detail}; but the listing shows it reversed")),
        ),
        (Claim::Failed(detail), false) => (ActionStatus::Failed, Some(detail.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(kind: Kind, action: &str, status: &str) -> RunAction {
        RunAction {
            action_id: 7,
            rule: "r".to_owned(),
            action: action.to_owned(),
            kind: Some(kind),
            resource_kind: kind.as_str().to_owned(),
            resource_id: "0b9a1c2e-6f0e-4a53-9d0e-5b7a3f1c2d4e".to_owned(),
            zone: None,
            status: status.to_owned(),
            user_email: None,
            name: None,
        }
    }

    #[test]
    fn only_revocations_done_and_still_in_place_are_reversed() {
        use Kind::*;
        let revoked = Some((Presence::Revoked, None));
        let active = Some((Presence::Active, None));
        let pending = Some((Presence::Revoked, Some("pending_revocation")));
        let settled = Some((Presence::Revoked, Some("revoked")));
        let cert_active = Some((Presence::Active, Some("active")));
        let reverse = |m| Verdict::Reverse(m);
        // (case, kind, action, status, now, verdict: Ok(call) or Err(part of the refusal))
        type Case<'a> = (
            &'a str,
            Kind,
            &'a str,
            &'a str,
            Now<'a>,
            Result<Verdict, &'a str>,
        );
        let cases: [Case<'_>; 13] = [
            (
                "a revoked registration",
                DeviceRegistration,
                "revoke",
                "done",
                revoked,
                Ok(reverse(MutationKind::Unrevoke)),
            ),
            (
                "a deletion",
                DeviceRegistration,
                "delete",
                "done",
                None,
                Err("deleted: Cloudflare cannot restore it"),
            ),
            (
                "a deleted token",
                AccessServiceToken,
                "delete",
                "done",
                None,
                Err("deleted: Cloudflare cannot restore it"),
            ),
            (
                "a failed revoke",
                DeviceRegistration,
                "revoke",
                "failed",
                revoked,
                Err("not done (status failed)"),
            ),
            (
                "an excluded match",
                DeviceRegistration,
                "revoke",
                "excluded",
                active,
                Err("not done (status excluded)"),
            ),
            (
                "a planned one",
                DeviceRegistration,
                "revoke",
                "planned",
                active,
                Err("not done (status planned)"),
            ),
            (
                "unrevoked since",
                DeviceRegistration,
                "revoke",
                "done",
                active,
                Err("not revoked any more"),
            ),
            (
                "deleted since",
                DeviceRegistration,
                "revoke",
                "done",
                None,
                Err("no longer exists"),
            ),
            (
                "a pending certificate",
                ClientCertificate,
                "revoke",
                "done",
                pending,
                Ok(reverse(MutationKind::Reactivate)),
            ),
            (
                "a revoked certificate",
                ClientCertificate,
                "revoke",
                "done",
                settled,
                Err("already revoked"),
            ),
            (
                "a certificate reactivated since",
                ClientCertificate,
                "revoke",
                "done",
                cert_active,
                Err("not revoked any more (status active)"),
            ),
            (
                "an undo's own action",
                DeviceRegistration,
                "unrevoke",
                "done",
                active,
                Err("an undo itself"),
            ),
            (
                "an action unknown to this version",
                DeviceRegistration,
                "disable",
                "done",
                revoked,
                Err("no way to reverse"),
            ),
        ];
        for (case, kind, act, status, now, expected) in cases {
            let got = decide(&action(kind, act, status), now);
            match (expected, &got) {
                (Ok(want), got) => assert_eq!(got, &want, "{case}"),
                (Err(part), Verdict::Refuse(why)) => {
                    assert!(why.contains(part), "{case}: {why:?} lacks {part:?}")
                }
                (Err(_), got) => panic!("{case}: {got:?}, expected a refusal"),
            }
        }
    }

    #[test]
    fn ids_select_the_run_s_actions_and_the_others_are_named() {
        let a = action(Kind::DeviceRegistration, "revoke", "done");
        let mut b = a.clone();
        b.resource_id = "c1".to_owned();
        let actions = vec![a.clone(), b];
        let (all, missing) = select(actions.clone(), &[]);
        assert_eq!((all.len(), missing.len()), (2, 0));
        let ids = [
            "0B9A1C2E-6F0E-4A53-9D0E-5B7A3F1C2D4E".to_owned(),
            "not-in-the-run".to_owned(),
        ];
        let (chosen, missing) = select(actions, &ids);
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].resource_id, a.resource_id, "a UUID in any case");
        assert_eq!(missing, ["not-in-the-run"]);
    }

    #[test]
    fn registrations_share_calls_up_to_the_chunk_and_certificates_go_one_by_one() {
        let zone = ZoneId::parse("fedcba9876543210fedcba9876543210").unwrap();
        let d = |kind: Kind, mutation, n: usize, zone: Option<ZoneId>| UndoDecision {
            undoes: n as i64,
            mutation,
            kind,
            id: ResourceId::parse(&format!("id-{n}")).unwrap(),
            zone,
            rule: "r".to_owned(),
            user_email: None,
            name: None,
            reason: String::new(),
        };
        let mut decisions: Vec<UndoDecision> = (0..5)
            .map(|n| d(Kind::DeviceRegistration, MutationKind::Unrevoke, n, None))
            .collect();
        for n in 5..7 {
            decisions.push(d(
                Kind::ClientCertificate,
                MutationKind::Reactivate,
                n,
                Some(zone.clone()),
            ));
        }
        let sizes: Vec<usize> = calls(&decisions, 2).iter().map(|c| c.items.len()).collect();
        assert_eq!(sizes, [2, 2, 1, 1, 1]);
    }

    #[test]
    fn only_the_listing_says_a_reversal_took_effect() {
        let active = Listed {
            presence: Presence::Active,
            status: Some("active".to_owned()),
        };
        let revoked = Listed {
            presence: Presence::Revoked,
            status: None,
        };
        let done = Claim::Done(200);
        let failed = Claim::Failed("502".to_owned());
        let cases = [
            (&done, Ok(Some(&active)), ActionStatus::Done),
            (&done, Ok(Some(&revoked)), ActionStatus::Unconfirmed),
            (&done, Ok(None), ActionStatus::Unconfirmed),
            (&done, Err("listing failed"), ActionStatus::Unconfirmed),
            (&failed, Ok(Some(&active)), ActionStatus::Done),
            (&failed, Ok(Some(&revoked)), ActionStatus::Failed),
            (&failed, Err("listing failed"), ActionStatus::Failed),
        ];
        for (claim, now, expected) in cases {
            assert_eq!(verdict(claim, now).0, expected, "{claim:?} {now:?}");
        }
        let (_, detail) = verdict(&done, Ok(Some(&active)));
        assert_eq!(detail.as_deref(), Some("status after: active"));
    }
}
