//! Rendering for people and machines: the plan table and summary, cycle reports and audit
//! listings as text, JSON or CSV. Pure formatting: no I/O beyond the writer it is given.
//!
//! Most of what is printed comes from the API (emails, device names, Cloudflare's error
//! messages) and is hostile until proven otherwise. Text output passes every such value through
//! [`escape`], so a value can neither forge rows nor drive the terminal; CSV output passes every
//! cell through [`neutralise_formula`], so a spreadsheet does not run it; JSON stays exact.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{self, Write};

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::audit::{ActionRow, MarkRow, RunRow};
use crate::cloudflare::{AccountId, Stamp};
use crate::config::{Config, Mode};
use crate::cycle::CycleReport;
use crate::plan::{AnomalyCounts, Candidate, CapCheck, Entry, Plan, SeenCounts};
use crate::resource::{Kind, Scope};
use crate::rules::RuleSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Csv,
}

/// The plan as a table of candidates followed by a summary.
pub fn plan_text<E: Entry>(out: &mut dyn Write, plan: &Plan<E>, rules: &RuleSet) -> io::Result<()> {
    let why = |c: &Candidate| match (&c.excluded_by, &c.grace) {
        (None, None) => c.why.to_string(),
        (None, Some(grace)) => format!("{}; {grace}", c.why),
        (Some(by), _) => format!("{}; protected by {by}", c.why),
    };
    let action = |c: &Candidate| match &c.excluded_by {
        None if crate::resource::undoable(c.kind, c.action) => format!("{} (undoable)", c.action),
        None => c.action.to_string(),
        Some(_) => "(excluded)".to_owned(),
    };
    let candidates = plan.candidates.iter().map(Entry::candidate);
    let (one, many) = plan.kind.noun();
    if plan.candidates.is_empty() {
        writeln!(out, "No {one} matches a rule.")?;
    } else {
        match plan.kind {
            Kind::DeviceRegistration => {
                let rows: Vec<[String; 7]> = candidates
                    .map(|c| {
                        [
                            c.rule.clone(),
                            action(c),
                            c.id.to_string(),
                            c.user_email.clone().unwrap_or_else(|| "-".to_owned()),
                            c.name.clone(),
                            c.last_seen_at.to_string(),
                            why(c),
                        ]
                    })
                    .collect();
                let header = [
                    "RULE",
                    "ACTION",
                    "REGISTRATION",
                    "USER",
                    "DEVICE",
                    "LAST SEEN",
                    "WHY",
                ];
                table(out, &header, &rows)?;
            }
            Kind::AccessServiceToken | Kind::AccountApiToken | Kind::ClientCertificate => {
                let rows: Vec<[String; 6]> = candidates
                    .map(|c| {
                        [
                            c.rule.clone(),
                            action(c),
                            c.id.to_string(),
                            c.name.clone(),
                            c.last_seen_at.to_string(),
                            why(c),
                        ]
                    })
                    .collect();
                let (what, name, seen) = match plan.kind {
                    Kind::ClientCertificate => ("CLIENT CERTIFICATE", "COMMON NAME", "ISSUED"),
                    Kind::AccountApiToken => ("ACCOUNT API TOKEN", "NAME", "LAST USED"),
                    _ => ("SERVICE TOKEN", "NAME", "LAST SEEN"),
                };
                let header = ["RULE", "ACTION", what, name, seen, "WHY"];
                table(out, &header, &rows)?;
            }
        }
    }
    writeln!(out)?;
    match plan.kind {
        Kind::DeviceRegistration => writeln!(
            out,
            "Seen: {} {many} ({} active, {} revoked) in {} pages",
            plan.seen.total, plan.seen.active, plan.seen.revoked, plan.pages
        )?,
        Kind::ClientCertificate => writeln!(
            out,
            "Seen: {} {many} ({} active, {} pending revocation or revoked) in zone {} in {} pages",
            plan.seen.total,
            plan.seen.active,
            plan.seen.revoked,
            plan.scope
                .zone
                .as_ref()
                .map_or("-".to_owned(), ToString::to_string),
            plan.pages
        )?,
        _ => writeln!(
            out,
            "Seen: {} {many} in {} pages",
            plan.seen.total, plan.pages
        )?,
    }
    let by_rule = plan.candidates_by_rule(rules);
    let listed: Vec<String> = by_rule
        .iter()
        .map(|(r, n)| format!("{}: {n}", escape(r)))
        .collect();
    writeln!(
        out,
        "Candidates: {} ({})",
        plan.caps.actions,
        listed.join(", ")
    )?;
    writeln!(out, "Excluded: {}", plan.excluded().count())?;
    let anomalies: Vec<String> = plan
        .anomalies
        .by_label()
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k}: {n}"))
        .collect();
    if !anomalies.is_empty() {
        writeln!(
            out,
            "Untrusted data (no rule acts on these): {}",
            anomalies.join(", ")
        )?;
    }
    if let Some(blocked) = &plan.blocked {
        writeln!(
            out,
            "Refused: an apply run would not act on these: {}",
            escape(blocked)
        )?;
    }
    let caps = &plan.caps;
    if caps.within() {
        writeln!(
            out,
            "Safety caps: within limits ({} of max {} actions, fraction limit {})",
            caps.actions, caps.max_actions_per_run, caps.fraction_limit
        )?;
    } else {
        writeln!(
            out,
            "Safety caps: an apply run would REFUSE to act: {}",
            escape(&caps.violations.join("; "))
        )?;
    }
    if plan.kind == Kind::AccessServiceToken && plan.actionable().next().is_some() {
        writeln!(
            out,
            "Note: Cloudflare refuses to delete a service token that is still in use (attached \
             to the device enrollment policy, or named by an Access policy, group or an app's \
             SCIM configuration); such a token is recorded refused_by_api and left alone. \
             Remove it from those first, or exclude it with service_token_id."
        )?;
    }
    Ok(())
}

/// The heading of one kind's part when a plan or a run covers several; `index` counts from 0.
pub fn kind_heading(out: &mut dyn Write, kind: Kind, index: usize) -> io::Result<()> {
    if index > 0 {
        writeln!(out)?;
    }
    let (_, many) = kind.noun();
    writeln!(out, "== {kind} ({many}) ==")
}

/// One CSV row of the plan: the fields of a candidate in the JSON plan, each always present
/// (CSV needs the same columns in every row).
#[derive(Serialize)]
struct PlanCsvRow<'a> {
    rule: &'a str,
    action: String,
    id: String,
    user_email: Option<&'a str>,
    /// Registrations only; `name` holds every kind's name.
    device_name: Option<&'a str>,
    last_seen_at: &'a Stamp,
    reason: String,
    excluded_by: Option<&'a str>,
    resource: Kind,
    name: &'a str,
}

/// The plans as CSV, one row per candidate of every kind (protected ones included, with
/// `excluded_by`), under one header.
pub fn plan_csv(out: &mut dyn Write, plans: &[Plan]) -> io::Result<()> {
    let rows: Vec<PlanCsvRow<'_>> = plans
        .iter()
        .flat_map(|p| &p.candidates)
        .map(|c| PlanCsvRow {
            rule: &c.rule,
            action: c.action.to_string(),
            id: c.id.to_string(),
            user_email: c.user_email.as_deref(),
            device_name: (c.kind == Kind::DeviceRegistration).then_some(c.name.as_str()),
            last_seen_at: &c.last_seen_at,
            reason: c.why.to_string(),
            excluded_by: c.excluded_by.as_deref(),
            resource: c.kind,
            name: &c.name,
        })
        .collect();
    csv_rows(out, &rows)
}

/// The shape of every JSON document this program prints (the `schema_version` field, and
/// the schemas in `schemas/`): raised when a field is removed or changes meaning, not when
/// one is added.
pub const SCHEMA_VERSION: u32 = 1;

/// What every JSON document starts with: its shape's version, the account and mode of the
/// config it was made with (`None` when the command read no config, as `audit --db`), and
/// when it was made.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Header<'a> {
    schema_version: u32,
    account_id: Option<&'a AccountId>,
    mode: Option<Mode>,
    #[serde(serialize_with = "rfc3339")]
    generated_at: DateTime<Utc>,
}

/// RFC 3339 in UTC to the microsecond, as the audit log writes its times.
fn rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

impl<'a> Header<'a> {
    pub fn new(config: Option<&'a Config>, generated_at: DateTime<Utc>) -> Self {
        Header {
            schema_version: SCHEMA_VERSION,
            account_id: config.map(|c| &c.cloudflare.account_id),
            mode: config.map(|c| c.safety.mode),
            generated_at,
        }
    }
}

/// One part of the machine-readable plan (schemas/plan-part.schema.json). `candidates` holds
/// only what an apply run would act on, so that counting its actions gives the summary's
/// count; the matches an exclusion protects are apart, in `excluded`.
#[derive(Serialize)]
struct PlanJson<'a> {
    #[serde(flatten)]
    header: Header<'a>,
    resource: Kind,
    #[serde(flatten)]
    scope: &'a Scope,
    #[serde(skip_serializing_if = "Option::is_none")]
    blocked: Option<&'a str>,
    pages: u64,
    seen: SeenCounts,
    /// The length of `candidates`: the plan's actions, which the caps count.
    candidates_count: u64,
    candidates_by_rule: BTreeMap<String, u64>,
    excluded_count: u64,
    candidates: Vec<CandidateJson<'a>>,
    excluded: Vec<ExcludedJson<'a>>,
    anomalies: &'a AnomalyCounts,
    caps: &'a CapCheck,
}

/// A candidate, and whether `zt-janitor undo` could reverse its action afterwards.
#[derive(Serialize)]
struct CandidateJson<'a> {
    #[serde(flatten)]
    candidate: &'a Candidate,
    undoable: bool,
}

impl<'a> CandidateJson<'a> {
    fn new(candidate: &'a Candidate) -> Self {
        CandidateJson {
            candidate,
            undoable: crate::resource::undoable(candidate.kind, candidate.action),
        }
    }
}

/// A match an exclusion protects: the candidate's fields, with `action` "skip" (so that no
/// filter on the action can count it) and the rule's own action in `rule_action`.
struct ExcludedJson<'a>(&'a Candidate);

impl Serialize for ExcludedJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let c = self.0;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("resource", &c.kind)?;
        map.serialize_entry("rule", &c.rule)?;
        map.serialize_entry("action", "skip")?;
        map.serialize_entry("rule_action", &c.action)?;
        map.serialize_entry("id", &c.id)?;
        if let Some(zone) = &c.zone {
            map.serialize_entry("zone", zone)?;
        }
        map.serialize_entry("user_email", &c.user_email)?;
        map.serialize_entry(c.name_key(), &c.name)?;
        map.serialize_entry("last_seen_at", &c.last_seen_at)?;
        map.serialize_entry("reason", &c.why.to_string())?;
        map.serialize_entry("excluded_by", &c.excluded_by)?;
        map.end()
    }
}

/// One part of the plan as one JSON document; a plan of several parts prints one after the
/// other (a stream, which `jq` reads as such; `jq -s` makes it an array).
pub fn plan_json(
    out: &mut dyn Write,
    header: &Header<'_>,
    plan: &Plan,
    rules: &RuleSet,
) -> io::Result<()> {
    let candidates: Vec<CandidateJson<'_>> = plan.actionable().map(CandidateJson::new).collect();
    let excluded: Vec<ExcludedJson<'_>> = plan.excluded().map(ExcludedJson).collect();
    let doc = PlanJson {
        header: *header,
        resource: plan.kind,
        scope: &plan.scope,
        blocked: plan.blocked.as_deref(),
        pages: plan.pages,
        seen: plan.seen,
        candidates_count: candidates.len() as u64,
        candidates_by_rule: plan.candidates_by_rule(rules),
        excluded_count: excluded.len() as u64,
        candidates,
        excluded,
        anomalies: &plan.anomalies,
        caps: &plan.caps,
    };
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)
}

/// The report of one cycle (schemas/cycle-report.schema.json); its `mode` is the cycle's.
#[derive(Serialize)]
struct CycleJson<'a> {
    schema_version: u32,
    account_id: &'a AccountId,
    #[serde(serialize_with = "rfc3339")]
    generated_at: DateTime<Utc>,
    #[serde(flatten)]
    report: &'a CycleReport,
}

pub fn cycle_json(
    out: &mut dyn Write,
    account_id: &AccountId,
    generated_at: DateTime<Utc>,
    report: &CycleReport,
) -> io::Result<()> {
    let doc = CycleJson {
        schema_version: SCHEMA_VERSION,
        account_id,
        generated_at,
        report,
    };
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)
}

pub fn cycle_text(out: &mut dyn Write, r: &CycleReport) -> io::Result<()> {
    let s = &r.summary;
    writeln!(
        out,
        "Run {} ({} mode): {}{}",
        r.run_id,
        r.mode,
        r.outcome,
        r.reason
            .as_deref()
            .map(|why| format!(" — {}", escape(why)))
            .unwrap_or_default()
    )?;
    let refused = match s.actions_refused {
        0 => String::new(),
        n => format!(", refused by the API {n}"),
    };
    writeln!(
        out,
        "  seen {}, candidates {}, excluded {}, done {}, failed {}{refused}, API requests {}, {:.2}s",
        s.seen_total.unwrap_or(0),
        s.candidates.unwrap_or(0),
        s.excluded.unwrap_or(0),
        s.actions_done,
        s.actions_failed,
        s.api_requests,
        r.seconds
    )?;
    if r.resources.len() > 1 {
        for part in &r.resources {
            let p = &part.summary;
            writeln!(
                out,
                "  {}: {}{}; seen {}, candidates {}, done {}, failed {}, refused {}",
                part.kind,
                part.outcome,
                part.reason
                    .as_deref()
                    .map(|why| format!(" — {}", escape(why)))
                    .unwrap_or_default(),
                p.seen_total.map_or("-".to_owned(), |n| n.to_string()),
                p.candidates.map_or("-".to_owned(), |n| n.to_string()),
                p.actions_done,
                p.actions_failed,
                p.actions_refused
            )?;
        }
    }
    for part in &r.resources {
        if let Some(g) = &part.grace {
            let zone = part
                .zone
                .as_ref()
                .map(|z| format!(" in zone {z}"))
                .unwrap_or_default();
            writeln!(
                out,
                "  grace period, {}{zone}: newly marked {}, cleared {}, due now {}, still waiting {} (zt-janitor audit marks)",
                part.kind, g.marked, g.cleared, g.due, g.waiting
            )?;
        }
    }
    Ok(())
}

/// Runs as a table, CSV, or one JSON document (schemas/audit-runs.schema.json) that starts
/// with `header`.
pub fn runs(
    out: &mut dyn Write,
    runs: &[RunRow],
    format: Format,
    header: &Header<'_>,
) -> io::Result<()> {
    match format {
        Format::Json => json_document(out, &RunsJson { header, runs }),
        Format::Csv => csv_rows(out, runs),
        Format::Text => {
            let rows: Vec<[String; 9]> = runs
                .iter()
                .map(|r| {
                    [
                        r.id.to_string(),
                        r.started_at.clone(),
                        r.mode.clone(),
                        r.outcome.clone().unwrap_or_else(|| "running".to_owned()),
                        opt(r.seen_total),
                        opt(r.candidates),
                        format!("{}/{}", opt(r.actions_done), opt(r.actions_failed)),
                        // Refused by the API (object in use): neither done nor failed.
                        opt(r.actions_refused),
                        r.reason.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            table(
                out,
                &[
                    "RUN",
                    "STARTED",
                    "MODE",
                    "OUTCOME",
                    "SEEN",
                    "CANDIDATES",
                    "DONE/FAILED",
                    "REFUSED",
                    "REASON",
                ],
                &rows,
            )
        }
    }
}

/// Actions as a table, CSV (the snapshot as the stored text), or one JSON document
/// (schemas/audit-actions.schema.json) that starts with `header`, each snapshot an object.
pub fn actions(
    out: &mut dyn Write,
    actions: &[ActionRow],
    format: Format,
    header: &Header<'_>,
) -> io::Result<()> {
    match format {
        Format::Json => json_document(
            out,
            &ActionsJson {
                header,
                actions: actions.iter().map(ActionJson::new).collect(),
            },
        ),
        Format::Csv => csv_rows(out, actions),
        Format::Text => {
            let rows: Vec<[String; 10]> = actions
                .iter()
                .map(|a| {
                    [
                        a.run_id.to_string(),
                        a.decided_at.clone(),
                        a.rule.clone(),
                        a.action.clone(),
                        a.resource_kind.clone(),
                        a.resource_id.clone(),
                        a.user_email.clone().unwrap_or_else(|| "-".to_owned()),
                        a.device_name.clone().unwrap_or_default(),
                        match &a.status_detail {
                            Some(d) => format!("{} ({d})", a.status),
                            None => a.status.clone(),
                        },
                        a.mutation_completed_at.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            table(
                out,
                &[
                    "RUN",
                    "DECIDED",
                    "RULE",
                    "ACTION",
                    "RESOURCE",
                    "ID",
                    "USER",
                    "NAME",
                    "STATUS",
                    "COMPLETED",
                ],
                &rows,
            )
        }
    }
}

fn opt(v: Option<i64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_owned())
}

fn json_document<T: Serialize>(out: &mut dyn Write, doc: &T) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, doc)?;
    writeln!(out)
}

#[derive(Serialize)]
struct RunsJson<'a> {
    #[serde(flatten)]
    header: &'a Header<'a>,
    runs: &'a [RunRow],
}

/// One current mark, with the time it will be acted on under the config's rules (if it
/// stays a candidate; `None` when no config was read or its rule is gone).
#[derive(Debug, Serialize)]
pub struct MarkView {
    pub resource_kind: String,
    pub zone_id: Option<String>,
    pub resource_id: String,
    pub name: Option<String>,
    pub user_email: Option<String>,
    pub rule: String,
    pub action: String,
    pub first_marked_at: String,
    pub acts_on: Option<String>,
    pub first_run_id: i64,
    pub last_run_id: i64,
}

impl MarkView {
    pub fn new(m: MarkRow, acts_on: Option<String>) -> Self {
        MarkView {
            resource_kind: m.resource_kind,
            zone_id: m.zone_id,
            resource_id: m.resource_id,
            name: m.name,
            user_email: m.user_email,
            rule: m.rule,
            action: m.action,
            first_marked_at: m.first_marked_at,
            acts_on,
            first_run_id: m.first_run_id,
            last_run_id: m.last_run_id,
        }
    }
}

#[derive(Serialize)]
struct MarksJson<'a> {
    #[serde(flatten)]
    header: &'a Header<'a>,
    marks: &'a [MarkView],
}

/// The current marks as a table, CSV, or one JSON document
/// (schemas/audit-marks.schema.json) that starts with `header`.
pub fn marks(
    out: &mut dyn Write,
    marks: &[MarkView],
    format: Format,
    header: &Header<'_>,
) -> io::Result<()> {
    match format {
        Format::Json => json_document(out, &MarksJson { header, marks }),
        Format::Csv => csv_rows(out, marks),
        Format::Text => {
            let rows: Vec<[String; 7]> = marks
                .iter()
                .map(|m| {
                    [
                        m.resource_kind.clone(),
                        m.resource_id.clone(),
                        m.name.clone().unwrap_or_default(),
                        m.rule.clone(),
                        m.action.clone(),
                        m.first_marked_at.clone(),
                        m.acts_on.clone().unwrap_or_else(|| "-".to_owned()),
                    ]
                })
                .collect();
            let header = [
                "RESOURCE",
                "ID",
                "NAME",
                "RULE",
                "ACTION",
                "MARKED SINCE",
                "ACTS ON (IF STILL A CANDIDATE)",
            ];
            table(out, &header, &rows)
        }
    }
}

#[derive(Serialize)]
struct ActionsJson<'a> {
    #[serde(flatten)]
    header: &'a Header<'a>,
    actions: Vec<ActionJson<'a>>,
}

/// An [`ActionRow`] in JSON: its fields in the same order, the snapshot as the JSON object
/// it was listed as, exactly. A snapshot that is not one (a damaged or hand-edited
/// database) is `null`, and `snapshot_error` says why; the row is still printed.
#[derive(Serialize)]
struct ActionJson<'a> {
    id: i64,
    run_id: i64,
    decided_at: &'a str,
    rule: &'a str,
    action: &'a str,
    resource_kind: &'a str,
    resource_id: &'a str,
    user_email: Option<&'a str>,
    device_name: Option<&'a str>,
    last_seen_at: Option<&'a str>,
    reason: &'a str,
    excluded_by: Option<&'a str>,
    status: &'a str,
    status_detail: Option<&'a str>,
    mutation_id: Option<i64>,
    mutation_completed_at: Option<&'a str>,
    http_status: Option<i64>,
    undoes_action_id: Option<i64>,
    snapshot: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_error: Option<String>,
}

impl<'a> ActionJson<'a> {
    fn new(a: &'a ActionRow) -> Self {
        let (snapshot, snapshot_error) = match snapshot_object(&a.snapshot) {
            Ok(raw) => (Some(raw), None),
            Err(why) => (None, Some(why)),
        };
        ActionJson {
            id: a.id,
            run_id: a.run_id,
            decided_at: &a.decided_at,
            rule: &a.rule,
            action: &a.action,
            resource_kind: &a.resource_kind,
            resource_id: &a.resource_id,
            user_email: a.user_email.as_deref(),
            device_name: a.device_name.as_deref(),
            last_seen_at: a.last_seen_at.as_deref(),
            reason: &a.reason,
            excluded_by: a.excluded_by.as_deref(),
            status: &a.status,
            status_detail: a.status_detail.as_deref(),
            mutation_id: a.mutation_id,
            mutation_completed_at: a.mutation_completed_at.as_deref(),
            http_status: a.http_status,
            undoes_action_id: a.undoes_action_id,
            snapshot,
            snapshot_error,
        }
    }
}

/// What `zt-janitor undo` did, one row per action of the run undone (and per `--id` it has
/// none for), then a summary line.
pub fn undo_text(out: &mut dyn Write, report: &crate::undo::UndoReport) -> io::Result<()> {
    let mut rows: Vec<[String; 6]> = report
        .items
        .iter()
        .map(|i| {
            [
                i.action.clone(),
                i.resource_kind.clone(),
                i.resource_id.clone(),
                i.name.clone().unwrap_or_else(|| "-".to_owned()),
                i.result.to_owned(),
                i.detail.clone().unwrap_or_default(),
            ]
        })
        .collect();
    rows.extend(report.not_in_run.iter().map(|id| {
        [
            "-".to_owned(),
            "-".to_owned(),
            id.clone(),
            "-".to_owned(),
            "refused".to_owned(),
            format!("not in run {}", report.run),
        ]
    }));
    if rows.is_empty() {
        writeln!(out, "Run {} has no action to undo.", report.run)?;
    } else {
        let header = ["ACTION", "KIND", "ID", "NAME", "RESULT", "WHY"];
        table(out, &header, &rows)?;
    }
    writeln!(out)?;
    let recorded = match report.undo_run {
        Some(run) => format!("; recorded as run {run}: zt-janitor audit actions --run {run}"),
        None => "; nothing was changed".to_owned(),
    };
    writeln!(
        out,
        "Undo of run {}: {} reversed, {} refused, {} failed{recorded}",
        report.run, report.reversed, report.refused, report.failed
    )
}

/// What `zt-janitor undo` did, as one JSON document starting with `header`.
pub fn undo_json(
    out: &mut dyn Write,
    header: &Header<'_>,
    report: &crate::undo::UndoReport,
) -> io::Result<()> {
    #[derive(Serialize)]
    struct UndoJson<'a> {
        #[serde(flatten)]
        header: &'a Header<'a>,
        #[serde(flatten)]
        report: &'a crate::undo::UndoReport,
    }
    serde_json::to_writer_pretty(&mut *out, &UndoJson { header, report })?;
    writeln!(out)
}

/// The stored snapshot as a JSON object, its text unchanged, or why it cannot be printed
/// as one: not JSON, not an object, or an object that repeats a key (which readers resolve
/// differently; the exact text stays available with `--output csv`).
fn snapshot_object(text: &str) -> Result<&RawValue, String> {
    let raw: &RawValue =
        serde_json::from_str(text).map_err(|e| format!("the stored snapshot is not JSON: {e}"))?;
    if !raw.get().starts_with('{') {
        return Err("the stored snapshot is not a JSON object".to_owned());
    }
    serde_json::from_str::<UniqueKeys>(raw.get())
        .map_err(|e| format!("the stored snapshot is not usable JSON: {e}"))?;
    Ok(raw)
}

/// Any JSON value, read only to learn that no object in it repeats a key.
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeys)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value without repeated keys")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(UniqueKeys)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut keys = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !keys.insert(key) {
                return Err(de::Error::custom("an object repeats a key"));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }
}

/// Rows as CSV with a header row named after the fields, every cell through
/// [`neutralise_formula`]. The rows are serialized once to learn their cells in field order,
/// then written again neutralised.
fn csv_rows<T: Serialize>(out: &mut dyn Write, rows: &[T]) -> io::Result<()> {
    let mut exact = csv::Writer::from_writer(Vec::new());
    for r in rows {
        exact.serialize(r).map_err(io::Error::other)?;
    }
    let exact = exact
        .into_inner()
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(exact.as_slice());
    let mut w = csv::Writer::from_writer(out);
    for record in reader.records() {
        let record = record.map_err(io::Error::other)?;
        w.write_record(
            record
                .iter()
                .map(|cell| neutralise_formula(cell).into_owned()),
        )
        .map_err(io::Error::other)?;
    }
    w.flush()
}

/// A CSV cell a spreadsheet would read as a formula (starting with `=`, `+`, `-`, `@`, tab or
/// carriage return) gets a leading `'`, which makes it text (OWASP's CSV injection advice).
/// Only text cells are touched: no number this program writes is negative.
pub fn neutralise_formula(cell: &str) -> Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

/// `text` with every character that could drive a terminal or break a line written as a
/// visible Rust-style escape (`\u{1b}`): the C0 controls (tab, CR and LF included), DEL, the C1
/// controls, the Unicode line and paragraph separators, and the bidirectional marks,
/// embeddings, overrides and isolates, which reorder what is shown. Everything else, backslash
/// included, is kept as is; JSON output gives the exact value.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            let _ = write!(escaped, "\\u{{{:x}}}", u32::from(c));
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' // line and paragraph separators
            | '\u{200e}' | '\u{200f}' | '\u{061c}' // bidi marks
            | '\u{202a}'..='\u{202e}' // bidi embeddings and overrides
            | '\u{2066}'..='\u{2069}' // bidi isolates
        )
}

/// Left-aligned columns, two spaces apart; the last column is not padded. Every cell goes
/// through [`escape`], so one row stays one line.
fn table<const N: usize>(
    out: &mut dyn Write,
    header: &[&str; N],
    rows: &[[String; N]],
) -> io::Result<()> {
    let rows: Vec<[Cow<'_, str>; N]> = rows
        .iter()
        .map(|row| std::array::from_fn(|i| escape(&row[i])))
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: Vec<&str>| -> io::Result<()> {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, header.to_vec())?;
    for row in &rows {
        line(out, row.iter().map(|cell| cell.as_ref()).collect())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{RunOutcome, RunSummary};
    use crate::config::Mode;

    /// Every character a terminal could act on, other than the line end.
    fn raw_controls(text: &str) -> Vec<char> {
        text.chars()
            .filter(|&c| {
                (c.is_control() && c != '\n')
                    || ('\u{202a}'..='\u{202e}').contains(&c)
                    || ('\u{2066}'..='\u{2069}').contains(&c)
            })
            .collect()
    }

    fn test_header() -> Header<'static> {
        Header::new(None, "2026-11-24T20:00:00Z".parse().unwrap())
    }

    fn run_row(id: i64, reason: Option<&str>) -> RunRow {
        RunRow {
            id,
            started_at: "2026-11-24T19:58:21Z".into(),
            finished_at: None,
            mode: "apply".into(),
            outcome: Some("failed".into()),
            reason: reason.map(Into::into),
            seen_total: Some(10),
            candidates: Some(1),
            excluded: Some(0),
            actions_done: Some(0),
            actions_failed: Some(1),
            actions_refused: Some(0),
            api_requests: Some(2),
        }
    }

    fn action_row(device: &str, email: &str, detail: Option<&str>) -> ActionRow {
        ActionRow {
            id: 1,
            run_id: 1,
            decided_at: "2026-11-24T19:58:21Z".into(),
            rule: "idle-90d".into(),
            action: "delete".into(),
            resource_kind: "device_registration".into(),
            resource_id: "00b3324e-cfe5-4df6-b4ab-faba846cc16b".into(),
            user_email: Some(email.into()),
            device_name: Some(device.into()),
            last_seen_at: None,
            reason: "idle 100d >= 90d".into(),
            excluded_by: None,
            status: "failed".into(),
            status_detail: detail.map(Into::into),
            mutation_id: Some(3),
            mutation_completed_at: None,
            http_status: Some(400),
            snapshot: "{\"id\":\"00b3324e-cfe5-4df6-b4ab-faba846cc16b\"}".into(),
            undoes_action_id: None,
        }
    }

    #[test]
    fn escape_makes_every_terminal_control_visible() {
        // (case, input, expected)
        let cases = [
            ("plain ASCII", "laptop-0001", "laptop-0001"),
            ("non-ASCII letters", "Ärzte 日本 ñ", "Ärzte 日本 ñ"),
            ("backslash kept", r"CORP\laptop", r"CORP\laptop"),
            ("OSC title", "a\x1b]0;pwned\x07b", r"a\u{1b}]0;pwned\u{7}b"),
            ("screen clear", "\x1b[2J", r"\u{1b}[2J"),
            ("CR LF", "row\r\nforged", r"row\u{d}\u{a}forged"),
            ("tab", "a\tb", r"a\u{9}b"),
            ("NUL and DEL", "\0\x7f", r"\u{0}\u{7f}"),
            ("C1 CSI and NEL", "\u{9b}31m\u{85}", r"\u{9b}31m\u{85}"),
            ("bidi override", "\u{202e}gpj.exe", r"\u{202e}gpj.exe"),
            (
                "bidi embeddings",
                "\u{202a}\u{202b}\u{202c}\u{202d}",
                r"\u{202a}\u{202b}\u{202c}\u{202d}",
            ),
            (
                "bidi isolates",
                "\u{2066}\u{2067}\u{2068}\u{2069}",
                r"\u{2066}\u{2067}\u{2068}\u{2069}",
            ),
            (
                "bidi marks",
                "\u{200e}\u{200f}\u{61c}",
                r"\u{200e}\u{200f}\u{61c}",
            ),
            (
                "line separators",
                "a\u{2028}b\u{2029}",
                r"a\u{2028}b\u{2029}",
            ),
        ];
        for (case, input, expected) in cases {
            assert_eq!(escape(input), expected, "{case}");
        }
        assert!(matches!(escape("laptop-0001"), Cow::Borrowed(_)));
    }

    #[test]
    fn csv_cells_that_a_spreadsheet_would_evaluate_get_a_leading_quote() {
        // (input, expected)
        let cases = [
            (
                "=HYPERLINK(\"http://evil\",\"x\")",
                "'=HYPERLINK(\"http://evil\",\"x\")",
            ),
            ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
            ("-1+1", "'-1+1"),
            ("@SUM(1+1)", "'@SUM(1+1)"),
            ("\t=1", "'\t=1"),
            ("\r=1", "'\r=1"),
            ("", ""),
            ("laptop-0001", "laptop-0001"),
            ("a=b", "a=b"),
            ("1-2", "1-2"),
            ("'=already text", "'=already text"),
        ];
        for (input, expected) in cases {
            assert_eq!(neutralise_formula(input), expected, "{input:?}");
        }
    }

    #[test]
    fn runs_table_keeps_one_line_per_run_whatever_the_reason() {
        let hostile = "Cloudflare said: x\x1b]0;pwned\x07\r\n99   2026  apply  applied\u{202e}";
        let mut out = Vec::new();
        runs(
            &mut out,
            &[run_row(2, Some(hostile)), run_row(1, None)],
            Format::Text,
            &test_header(),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(raw_controls(&text), Vec::<char>::new(), "{text}");
        assert_eq!(text.lines().count(), 3, "header and two runs:\n{text}");
        assert!(text.contains(r"x\u{1b}]0;pwned\u{7}\u{d}\u{a}99"), "{text}");
    }

    #[test]
    fn runs_show_how_many_actions_the_api_refused() {
        let refused = RunRow {
            actions_refused: Some(2),
            ..run_row(2, None)
        };
        let before = RunRow {
            actions_refused: None,
            ..run_row(1, None)
        };
        let mut out = Vec::new();
        runs(
            &mut out,
            &[refused.clone(), before.clone()],
            Format::Text,
            &test_header(),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let cells: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(cells[0][6..8], ["DONE/FAILED", "REFUSED"], "{text}");
        assert_eq!(cells[1][6..8], ["0/1", "2"], "{text}");
        assert_eq!(cells[2][6..8], ["0/1", "-"], "not counted before: {text}");

        let mut out = Vec::new();
        runs(
            &mut out,
            &[refused.clone(), before.clone()],
            Format::Json,
            &test_header(),
        )
        .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["runs"][0]["actions_refused"], 2);
        assert!(json["runs"][1]["actions_refused"].is_null());

        let mut out = Vec::new();
        runs(&mut out, &[refused, before], Format::Csv, &test_header()).unwrap();
        let mut reader = csv::Reader::from_reader(out.as_slice());
        let column = reader
            .headers()
            .unwrap()
            .iter()
            .position(|h| h == "actions_refused")
            .unwrap();
        let values: Vec<String> = reader
            .records()
            .map(|r| r.unwrap()[column].to_owned())
            .collect();
        assert_eq!(values, ["2", ""]);
    }

    #[test]
    fn actions_table_escapes_every_cell() {
        let row = action_row(
            "kiosk\x1b[2J\r\nforged",
            "a\tb@example.com",
            Some("HTTP 400: code 2001 \x1b]8;;http://evil\x07click\x1b]8;;\x07"),
        );
        let mut out = Vec::new();
        actions(&mut out, &[row], Format::Text, &test_header()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(raw_controls(&text), Vec::<char>::new(), "{text}");
        assert_eq!(text.lines().count(), 2, "{text}");
        for visible in [
            r"kiosk\u{1b}[2J\u{d}\u{a}forged",
            r"a\u{9}b@example.com",
            r"\u{1b}]8;;http://evil\u{7}click",
        ] {
            assert!(text.contains(visible), "{visible} in {text}");
        }
    }

    #[test]
    fn table_columns_are_aligned_on_the_escaped_text() {
        let mut out = Vec::new();
        let rows = [
            ["a\t\tb".to_owned(), "x".to_owned()],
            ["abcdefghij".to_owned(), "y".to_owned()],
        ];
        table(&mut out, &["H", "LAST"], &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        let columns: Vec<usize> = text
            .lines()
            .map(|l| l.rfind(['x', 'y', 'L']).unwrap())
            .collect();
        // `a\u{9}\u{9}b` is 12 characters wide, then two spaces.
        assert_eq!(columns, [14, 14, 14], "{text}");
    }

    #[test]
    fn cycle_summary_escapes_the_reason() {
        let report = CycleReport {
            run_id: 7,
            mode: Mode::Apply,
            outcome: RunOutcome::Aborted,
            reason: Some("listing failed: \x1b]0;pwned\x07\nRun 8 (apply mode): applied".into()),
            seconds: 0.5,
            summary: RunSummary::default(),
            resources: Vec::new(),
        };
        let mut out = Vec::new();
        cycle_text(&mut out, &report).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(raw_controls(&text), Vec::<char>::new(), "{text}");
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains(r"\u{1b}]0;pwned\u{7}\u{a}Run 8"), "{text}");
    }

    #[test]
    fn undo_text_names_each_refusal_and_escapes_what_the_api_sent() {
        let item = |id: &str, name: &str, result, detail: &str| crate::undo::ItemReport {
            action_id: 1,
            action: "delete".into(),
            resource_kind: "device_registration".into(),
            resource_id: id.into(),
            zone: None,
            name: Some(name.into()),
            result,
            detail: Some(detail.into()),
            undo_action_id: None,
        };
        let report = crate::undo::UndoReport {
            run: 4,
            undo_run: None,
            reversed: 0,
            refused: 2,
            failed: 0,
            items: vec![item(
                "a-1",
                "evil\u{1b}]0;pwned\u{7}",
                "refused",
                "deleted: Cloudflare cannot restore it",
            )],
            not_in_run: vec!["b-2".into()],
        };
        let mut out = Vec::new();
        undo_text(&mut out, &report).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(raw_controls(&text), Vec::<char>::new(), "{text}");
        let line = |id: &str| text.lines().find(|l| l.contains(id)).unwrap().to_owned();
        assert!(
            line("a-1").contains("deleted: Cloudflare cannot restore it"),
            "{text}"
        );
        assert!(line("b-2").contains("not in run 4"), "{text}");
        assert!(
            text.contains("Undo of run 4: 0 reversed, 2 refused, 0 failed; nothing was changed"),
            "{text}"
        );
    }

    #[test]
    fn csv_keeps_columns_and_exact_values_but_neutralises_formulas() {
        let mut out = Vec::new();
        actions(
            &mut out,
            &[action_row(
                "=cmd|' /C calc'!A0",
                "@x.example",
                Some("a,\"b\"\nc"),
            )],
            Format::Csv,
            &test_header(),
        )
        .unwrap();
        let mut reader = csv::Reader::from_reader(out.as_slice());
        let header: Vec<String> = reader.headers().unwrap().iter().map(Into::into).collect();
        assert_eq!(header[..4], ["id", "run_id", "decided_at", "rule"]);
        assert_eq!(header.last().map(String::as_str), Some("snapshot"));
        let record = reader.records().next().unwrap().unwrap();
        let cell = |name: &str| record.get(header.iter().position(|h| h == name).unwrap());
        assert_eq!(cell("device_name"), Some("'=cmd|' /C calc'!A0"));
        assert_eq!(cell("user_email"), Some("'@x.example"));
        assert_eq!(
            cell("status_detail"),
            Some("a,\"b\"\nc"),
            "CSV quoting, not escaping"
        );
        assert_eq!(
            cell("snapshot"),
            Some("{\"id\":\"00b3324e-cfe5-4df6-b4ab-faba846cc16b\"}")
        );
        assert_eq!(cell("http_status"), Some("400"));
        assert_eq!(cell("last_seen_at"), Some(""));

        let mut out = Vec::new();
        runs(
            &mut out,
            &[run_row(1, Some("-5 ids: =x"))],
            Format::Csv,
            &test_header(),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(",'-5 ids: =x,"), "{text}");
    }

    #[test]
    fn actions_json_gives_the_snapshot_as_an_object_or_says_why_not() {
        let stored = |snapshot: &str| ActionRow {
            snapshot: snapshot.into(),
            ..action_row("laptop", "a@example.com", None)
        };
        let exact = r#"{"id":"x","n":12345678901234567890123,"nested":{"a":[1,{"b":null}]}}"#;
        // (case, stored text, snapshot printed, error expected)
        let cases = [
            ("an object, exactly", exact, Some(exact), false),
            (
                "whitespace around it",
                " {\"a\":1}\n",
                Some("{\"a\":1}"),
                false,
            ),
            ("empty", "", None, true),
            ("truncated", "{\"id\":\"x\"", None, true),
            ("not an object", "[1,2]", None, true),
            ("a string", "\"{}\"", None, true),
            ("a repeated key", r#"{"id":"a","id":"b"}"#, None, true),
            (
                "a repeated nested key",
                r#"{"x":[{"k":1,"k":2}]}"#,
                None,
                true,
            ),
            ("nested too deep", &"[".repeat(10_000), None, true),
        ];
        for (case, text, printed, error) in cases {
            let mut out = Vec::new();
            actions(&mut out, &[stored(text)], Format::Json, &test_header()).unwrap();
            let out = String::from_utf8(out).unwrap();
            let doc: serde_json::Value = serde_json::from_str(&out).expect(case);
            let row = &doc["actions"][0];
            assert_eq!(row["resource_id"], "00b3324e-cfe5-4df6-b4ab-faba846cc16b");
            match printed {
                Some(printed) => {
                    assert!(out.contains(printed), "{case}: exact text kept:\n{out}");
                    assert!(row["snapshot"].is_object(), "{case}");
                }
                None => assert!(row["snapshot"].is_null(), "{case}: {row}"),
            }
            assert_eq!(row.get("snapshot_error").is_some(), error, "{case}: {row}");
        }
    }

    #[test]
    fn actions_json_has_every_field_of_the_row_in_its_order() {
        // CSV writes a header of the field names in order: the JSON row mirrors the audit row.
        fn header<T: Serialize>(row: T) -> String {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.serialize(row).unwrap();
            let bytes = w.into_inner().unwrap();
            String::from_utf8(bytes)
                .unwrap()
                .lines()
                .next()
                .unwrap()
                .to_owned()
        }
        let row = action_row("laptop", "a@example.com", Some("HTTP 400"));
        assert_eq!(header(ActionJson::new(&row)), header(&row));
    }

    #[test]
    fn every_json_document_starts_with_its_header() {
        let mut out = Vec::new();
        runs(&mut out, &[run_row(1, None)], Format::Json, &test_header()).unwrap();
        let text = String::from_utf8(out).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["schema_version"], SCHEMA_VERSION);
        assert!(
            doc["account_id"].is_null() && doc["mode"].is_null(),
            "{doc}"
        );
        assert_eq!(doc["generated_at"], "2026-11-24T20:00:00.000000Z");
        assert!(
            text.trim_start().starts_with("{\n  \"schema_version\": 1,"),
            "{text}"
        );
    }
}
