//! `zt-janitor explain ID`: why one object is or is not a candidate under the current config.
//! Read-only, like `plan`: it lists the account (only the kinds that rules select from, and
//! certificates in the config's zones) until it finds the id, asks the rules about it, each
//! rule on its own too, and reads what the audit log holds about it. Nothing is mutated and
//! nothing is written to the audit log.

use std::collections::HashSet;
use std::io::{self, Write};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::audit::{ActionFilter, ActionRow, AuditError, AuditStore};
use crate::cloudflare::client::ClientBuildError;
use crate::cloudflare::{ApiError, Client, Stamp, ZoneId};
use crate::config::{Action, Config};
use crate::metrics::Metrics;
use crate::report::{self, escape, Format};
use crate::resource::{self, Kind, PageToken, ResourceId};
use crate::rules::{RuleSet, Verdict, OWN_TOKEN};
use crate::secret::{Credentials, TokenError};

/// How many of the object's audited actions are shown, newest first.
const AUDIT_ROWS: i64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Client(#[from] ClientBuildError),
    #[error("listing the {} failed: {error}", kind.noun().1)]
    Listing { kind: Kind, error: ApiError },
    #[error("listing the {}: an object is not readable ({message})", kind.noun().1)]
    Malformed { kind: Kind, message: String },
    #[error("listing the {} repeats a cursor already followed: the listing would loop", kind.noun().1)]
    CursorLoop { kind: Kind },
    #[error("no rule in the config: nothing is listed, and nothing is a candidate")]
    NoRules,
    #[error(
        "no object with id {id} among the {listed} listed (only the kinds that rules select \
         from are listed{zones}); check the id, or add a rule for its kind"
    )]
    NotFound {
        id: ResourceId,
        listed: String,
        zones: String,
    },
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// What happens to the object under the current config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A rule selects it and no exclusion protects it: a run acts on it (in apply mode,
    /// within the caps).
    Candidate,
    /// A rule selects it, but an exclusion protects it.
    Excluded,
    /// No rule selects it.
    Kept,
    /// Its data is not trusted: no rule acts on it, whatever the rules say.
    Untrusted,
}

/// What one rule, asked on its own, says about the object.
#[derive(Debug, Clone, Serialize)]
pub struct RuleAnswer {
    pub rule: String,
    /// The rule's action, kind and conditions, as `check-config` shows them.
    pub conditions: String,
    pub selects: bool,
    /// Why it selects it, when it does.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub resource: Kind,
    pub id: ResourceId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<ZoneId>,
    pub name: String,
    pub user_email: Option<String>,
    /// The stamp idle rules read (`last_seen_at`, `last_used_on`, a certificate's issue time).
    pub last_seen_at: Stamp,
    pub outcome: Outcome,
    /// The rule that wins (the first in config order that selects it), its action and reason.
    pub rule: Option<String>,
    pub action: Option<Action>,
    pub reason: Option<String>,
    /// The exclusion that protects it, whether or not a rule selects it.
    pub excluded_by: Option<String>,
    /// The anomaly that makes its data untrusted, if any.
    pub anomaly: Option<&'static str>,
    /// Why no action on this kind would be taken this run whatever the rules say, if so.
    pub blocked: Option<String>,
    /// Every rule of its kind, in config order, each asked on its own.
    pub rules: Vec<RuleAnswer>,
    /// Its most recent audited actions, newest first.
    pub audit: Vec<ActionRow>,
    /// How many audited actions it has in all.
    pub audit_total: i64,
    /// Why the audit log was not read, if it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_note: Option<String>,
}

/// Finds `id` in the account under `config` and explains it at `now`.
pub async fn explain(
    config: &Config,
    rules: &RuleSet,
    id: &ResourceId,
    now: DateTime<Utc>,
) -> Result<Explanation, ExplainError> {
    let kinds = rules.kinds();
    if kinds.is_empty() {
        return Err(ExplainError::NoRules);
    }
    let credentials = Credentials::load(&config.cloudflare)?;
    let client = Client::new(&config.cloudflare, credentials, Metrics::new())?;
    for &kind in &kinds {
        for (scope, blocked) in
            crate::plan::scopes(&client, &config.cloudflare.zone_ids, kind).await
        {
            let mut token: Option<PageToken> = None;
            let mut followed = HashSet::new();
            loop {
                let page = resource::list_page(kind, &client, &scope, token.as_ref())
                    .await
                    .map_err(|error| ExplainError::Listing { kind, error })?;
                for raw in &page.items {
                    let item = resource::evaluate(kind, raw, rules, now, &scope).map_err(|e| {
                        ExplainError::Malformed {
                            kind,
                            message: e.to_string(),
                        }
                    })?;
                    if item.facts.id.key() != id.key() {
                        continue;
                    }
                    let answers = rules
                        .one_by_one(kind)
                        .into_iter()
                        .map(|(rule, alone)| {
                            let verdict = resource::evaluate(kind, raw, &alone, now, &scope)
                                .map(|e| e.eval.verdict);
                            let reason = match verdict {
                                Ok(Verdict::Act { why, .. } | Verdict::Excluded { why, .. }) => {
                                    Some(why.to_string())
                                }
                                _ => None,
                            };
                            RuleAnswer {
                                rule: rule.name.clone(),
                                conditions: config
                                    .rules
                                    .iter()
                                    .find(|s| s.name == rule.name)
                                    .map(|s| {
                                        let line = s.describe();
                                        let name = format!("{}: ", s.name);
                                        line.strip_prefix(&name).unwrap_or(&line).to_owned()
                                    })
                                    .unwrap_or_default(),
                                selects: reason.is_some(),
                                reason,
                            }
                        })
                        .collect();
                    let facts = item.facts;
                    let (outcome, winner, excluded_by) = match item.eval.verdict {
                        Verdict::Act { rule, why } => (Outcome::Candidate, Some((rule, why)), None),
                        Verdict::Excluded {
                            rule,
                            why,
                            exclusion,
                        } => (
                            Outcome::Excluded,
                            Some((rule, why)),
                            Some(exclusion.to_owned()),
                        ),
                        Verdict::Keep if item.eval.anomaly.is_some() => {
                            (Outcome::Untrusted, None, None)
                        }
                        Verdict::Keep => (Outcome::Kept, None, None),
                    };
                    // An exclusion is asked only once a rule selects; say which would protect
                    // the object anyway.
                    let excluded_by = excluded_by.or_else(|| {
                        if scope
                            .own_token
                            .as_ref()
                            .is_some_and(|own| own.key() == id.key())
                        {
                            return Some(OWN_TOKEN.to_owned());
                        }
                        rules
                            .exclusion_for_parts(
                                kind,
                                &facts.id,
                                facts.subject.as_deref(),
                                &facts.display_name,
                            )
                            .map(str::to_owned)
                    });
                    let (audit, audit_total, audit_note) = audited(config, &facts.id).await?;
                    return Ok(Explanation {
                        resource: kind,
                        zone: scope.zone.clone(),
                        name: facts.display_name,
                        user_email: facts.subject,
                        last_seen_at: facts.last_active,
                        outcome,
                        rule: winner.as_ref().map(|(r, _)| r.name.clone()),
                        action: winner.as_ref().map(|(r, _)| r.action),
                        reason: winner.as_ref().map(|(_, why)| why.to_string()),
                        excluded_by,
                        anomaly: item.eval.anomaly.map(|a| a.label()),
                        blocked: blocked.clone(),
                        rules: answers,
                        audit,
                        audit_total,
                        audit_note,
                        id: facts.id,
                    });
                }
                match page.next {
                    None => break,
                    Some(next) => {
                        if !followed.insert(next.clone()) {
                            return Err(ExplainError::CursorLoop { kind });
                        }
                        token = Some(next);
                    }
                }
            }
        }
    }
    Err(ExplainError::NotFound {
        id: id.clone(),
        listed: kinds
            .iter()
            .map(|k| k.noun().1)
            .collect::<Vec<_>>()
            .join(", "),
        zones: if kinds.iter().any(|k| k.zoned()) {
            "; certificates in the zones of zone_ids".to_owned()
        } else {
            String::new()
        },
    })
}

/// The object's recent audited actions and how many there are, read-only; nothing (and why)
/// when there is no audit database yet.
async fn audited(
    config: &Config,
    id: &ResourceId,
) -> Result<(Vec<ActionRow>, i64, Option<String>), ExplainError> {
    let path = &config.audit.path;
    if !path.exists() {
        let note = format!(
            "no audit database at {}: nothing has run with this config yet",
            path.display()
        );
        return Ok((Vec::new(), 0, Some(note)));
    }
    let store = AuditStore::open_read_only(path).await?;
    let filter = ActionFilter {
        resource_id: Some(id.as_str().to_owned()),
        limit: AUDIT_ROWS,
        ..ActionFilter::default()
    };
    let rows = store.actions(&filter).await;
    let total = store.count_actions(&filter).await;
    store.close().await;
    Ok((rows?, total?, None))
}

/// The explanation for people: what the object is, what happens to it and why, what each
/// rule says, the exclusion and the audit log. `width` fits the audit table.
pub fn text(out: &mut dyn Write, e: &Explanation, width: Option<usize>) -> io::Result<()> {
    let (one, _) = e.resource.noun();
    writeln!(out, "{one} {}", e.id)?;
    writeln!(out, "  kind:        {}", e.resource)?;
    if let Some(zone) = &e.zone {
        writeln!(out, "  zone:        {zone}")?;
    }
    writeln!(out, "  name:        {}", escape(&e.name))?;
    if let Some(email) = &e.user_email {
        writeln!(out, "  user:        {}", escape(email))?;
    }
    writeln!(
        out,
        "  last seen:   {}",
        escape(&e.last_seen_at.to_string())
    )?;
    let rule = e.rule.as_deref().map(escape).unwrap_or_default();
    let reason = e.reason.as_deref().map(escape).unwrap_or_default();
    let action = e.action.map(|a| a.to_string()).unwrap_or_default();
    let verdict = match e.outcome {
        Outcome::Candidate => format!(
            "CANDIDATE: rule \"{rule}\" selects it ({reason}); a run in apply mode would {action} it"
        ),
        Outcome::Excluded => format!(
            "PROTECTED: rule \"{rule}\" selects it ({reason}), but exclusion \"{}\" protects \
             it; nothing is done to it",
            escape(e.excluded_by.as_deref().unwrap_or_default())
        ),
        Outcome::Kept => format!("KEPT: no rule of {} selects it", e.resource),
        Outcome::Untrusted => format!(
            "KEPT: its data is not trusted ({}); no rule acts on it",
            e.anomaly.unwrap_or_default()
        ),
    };
    writeln!(out, "  verdict:     {verdict}")?;
    if let Some(blocked) = &e.blocked {
        writeln!(out, "  refused:     {}", escape(blocked))?;
    }
    writeln!(
        out,
        "  rules of {}, in config order (the first that selects it wins):",
        e.resource
    )?;
    for answer in &e.rules {
        let says = match &answer.reason {
            Some(why) => format!("selects it: {}", escape(why)),
            None => "does not select it".to_owned(),
        };
        writeln!(out, "    {}: {says}", escape(&answer.rule))?;
        writeln!(out, "      [{}]", escape(&answer.conditions))?;
    }
    match &e.excluded_by {
        Some(by) => writeln!(out, "  exclusion:   \"{}\" protects it", escape(by))?,
        None => writeln!(out, "  exclusion:   none protects it")?,
    }
    if let Some(note) = &e.audit_note {
        writeln!(out, "  audit log:   {}", escape(note))?;
    } else if e.audit.is_empty() {
        writeln!(out, "  audit log:   no action recorded on it")?;
    } else {
        let total = report::plural(e.audit_total.max(0) as u64, "action", "actions");
        match e.audit.len() as i64 {
            n if n < e.audit_total => {
                writeln!(out, "  audit log:   {total}, the {n} most recent:")?
            }
            _ => writeln!(out, "  audit log:   {total}:")?,
        }
        let header = report::Header::new(None, chrono::Utc::now());
        report::actions_fit(out, &e.audit, Format::Text, &header, width)?;
    }
    Ok(())
}
