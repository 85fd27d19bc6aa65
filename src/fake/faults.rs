//! Fault injection: which requests misbehave, when, and how; the `--fault` text syntax; and the
//! per-rule counters that decide whether a rule fires. How a fault is served is `server`'s job.
//!
//! Text syntax (`FaultRule::from_str`), parts separated by `:` in any order after the target:
//!
//! ```text
//! TARGET:FAULT[:retry_after=SECS|:code=N][:WHEN][:id=ID]
//! TARGET  list | get | delete_one | bulk_delete | revoke | list_service_tokens
//!         | delete_service_token | list_account_tokens | delete_account_token
//!         | verify_token (both tokens/verify endpoints) | list_client_certificates
//!         | revoke_client_certificate | unrevoke | reactivate_client_certificate
//!         | any_mutation | any
//! FAULT   status=CODE (400-599) | delay_ms=MS | reset | malformed_json | success_false
//!         | wrong_auth | repeat_cursor (list only) | short_page | duplicate_ids (listings only)
//!         | retry_after_raw=TEXT | retry_after_ms_raw=TEXT | html=CODE | errors_null
//!         | partial_errors (listings only) | partial_apply | noop[=200|202|204] | noop_with_errors
//!         | empty_204 | apply_then_status=CODE | redirect=URL | redirect302=URL (last part)
//! WHEN    always (default) | nth=N | first=N | p=PROB[:seed=N]
//! id=ID   only requests naming ID (in the path, as an `id` query parameter, or as the zone of
//!         a `/zones/{zone}/...` call) match and count
//! ```
//!
//! The listings are `list` (registrations, by cursor) and the page-numbered `list_service_tokens`,
//! `list_account_tokens` and `list_client_certificates`.
//!
//! e.g. `bulk_delete:status=503:first=2`, `list:status=429:retry_after=3:nth=2`,
//! `delete_one:delay_ms=3000:always`, `list:repeat_cursor:nth=2`, `any_mutation:reset:p=0.1:seed=7`,
//! `any_mutation:status=400:code=2001:id=0b9a…`, `any:redirect=http://127.0.0.1:9/client/v4`,
//! `list_client_certificates:status=500:id=<zone>` (one zone fails, the others answer).
//!
//! The faults after `duplicate_ids` are a hostile server's answers: what a proxy, a partial
//! outage or an API that claims more than it did may send. They exist so that every such answer
//! stays in the test suite.

use std::str::FromStr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::server::Op;

/// The requests a rule applies to. `Revoke` is `POST .../registrations/revoke` only;
/// unrevoke and the deprecated revoke are reached through `AnyMutation` and `Any`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ListRegistrations,
    GetRegistration,
    DeleteOne,
    BulkDelete,
    Revoke,
    /// `GET .../access/service_tokens`
    ListServiceTokens,
    /// `DELETE .../access/service_tokens/{id}`
    DeleteServiceToken,
    /// `GET .../accounts/{account}/tokens`
    ListAccountTokens,
    /// `DELETE .../accounts/{account}/tokens/{id}`
    DeleteAccountToken,
    /// `GET .../accounts/{account}/tokens/verify` and `GET .../user/tokens/verify`
    VerifyToken,
    /// `GET .../zones/{zone}/client_certificates`
    ListClientCertificates,
    /// `DELETE .../zones/{zone}/client_certificates/{id}`
    RevokeClientCertificate,
    /// `POST .../registrations/unrevoke`
    Unrevoke,
    /// `PATCH .../zones/{zone}/client_certificates/{id}`
    ReactivateClientCertificate,
    AnyMutation,
    Any,
}

impl Endpoint {
    fn matches(self, op: Op) -> bool {
        match self {
            Endpoint::ListRegistrations => op == Op::List,
            Endpoint::GetRegistration => op == Op::GetOne,
            Endpoint::DeleteOne => op == Op::DeleteOne,
            Endpoint::BulkDelete => op == Op::BulkDelete,
            Endpoint::Revoke => op == Op::Revoke,
            Endpoint::ListServiceTokens => op == Op::ListServiceTokens,
            Endpoint::DeleteServiceToken => op == Op::DeleteServiceToken,
            Endpoint::ListAccountTokens => op == Op::ListAccountTokens,
            Endpoint::DeleteAccountToken => op == Op::DeleteAccountToken,
            Endpoint::VerifyToken => matches!(op, Op::VerifyAccountToken | Op::VerifyUserToken),
            Endpoint::ListClientCertificates => op == Op::ListClientCertificates,
            Endpoint::RevokeClientCertificate => op == Op::RevokeClientCertificate,
            Endpoint::Unrevoke => op == Op::Unrevoke,
            Endpoint::ReactivateClientCertificate => op == Op::ReactivateClientCertificate,
            Endpoint::AnyMutation => op.mutation_kind().is_some(),
            Endpoint::Any => true,
        }
    }

    /// A page-numbered listing: every listing-only fault but `repeat_cursor` applies.
    fn is_page_numbered_listing(self) -> bool {
        matches!(
            self,
            Endpoint::ListServiceTokens
                | Endpoint::ListAccountTokens
                | Endpoint::ListClientCertificates
        )
    }
}

/// Which of the matching requests a rule fires on. Counts are per rule and 1-based.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum When {
    Always,
    /// Only the n-th matching request.
    Nth(u64),
    /// The first n matching requests.
    FirstN(u64),
    /// Each matching request with probability `p`, drawn from a generator seeded with `seed`,
    /// so a run is repeatable.
    Probability {
        p: f64,
        seed: u64,
    },
}

/// What happens to a request a rule fires on. Apart from `Delay`, a faulted mutation changes
/// nothing (it is logged with `applied: false`).
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// An error envelope with this HTTP status; `retry_after` adds a `Retry-After` header
    /// (seconds), as Cloudflare does on 429.
    Status { code: u16, retry_after: Option<u64> },
    /// The connection is reset without any HTTP response: the client sees a transport error.
    ConnectionReset,
    /// The request is served normally after the delay. A mutation takes effect after the delay,
    /// so a client that gives up during it leaves the registration in place (the request is
    /// still in the log, with status 0).
    Delay(Duration),
    /// HTTP 200 with the first half of the JSON body.
    MalformedJson,
    /// HTTP 500 with `success: false` and an error, but still carrying the `result` a read would
    /// have returned, to catch clients that look at `result` before `success`.
    SuccessFalse,
    /// HTTP 403 with the authentication error, whatever the token.
    WrongAuth,
    /// Registration listing only: the page carries the request's own cursor, so following it
    /// loops forever.
    RepeatCursor,
    /// Listings only: about half a page. With a cursor, even after the last item (allowed by
    /// the docs; a correct client still lists everything). By page number, the rest of the
    /// page is lost while `result_info` still counts it: a client must notice the short page.
    ShortPageWithCursor,
    /// Listings only: the page starts with the item the previous page ended with.
    DuplicateIds,
    /// An error envelope with this HTTP status and this Cloudflare error code.
    Error { status: u16, code: u32 },
    /// HTTP 429 whose `Retry-After` and/or `retry-after-ms` carry this text verbatim.
    RawRetryAfter {
        seconds: Option<String>,
        millis: Option<String>,
    },
    /// A redirect: `Location` is `location` followed by the request's path below
    /// `/client/v4` and its query, so it can point at the same call on another server.
    Redirect { status: u16, location: String },
    /// Mutation: only the first id named is changed; the answer is a plain success.
    PartialApply,
    /// Mutation: a success answer (200/202 with an envelope, 204 with no body) that changes
    /// nothing.
    Noop { status: u16 },
    /// Mutation: 200 `success: true` with an `errors` entry per id named; changes nothing.
    NoopWithErrors,
    /// Mutation: applied, answered 204 with an empty body.
    Empty204,
    /// Served normally, with `"errors": null` and `"messages": null` in the envelope.
    ErrorsNull,
    /// Listings only: the page is served with `success: true` and a non-empty `errors`.
    PartialErrors,
    /// Mutation: applied, then answered with this status's error envelope.
    ApplyThenStatus(u16),
    /// This status with an HTML body: a proxy answering, not Cloudflare.
    Html(u16),
}

impl Fault {
    fn applies_to(&self, op: Op) -> bool {
        match self {
            Fault::RepeatCursor => op == Op::List,
            _ => !self.is_listing_only() || op.is_listing(),
        }
    }

    fn is_listing_only(&self) -> bool {
        matches!(
            self,
            Fault::RepeatCursor
                | Fault::ShortPageWithCursor
                | Fault::DuplicateIds
                | Fault::PartialErrors
        )
    }
}

/// One fault injection rule. Rules are checked in order and the first that fires wins; every
/// rule whose target matches counts the request, whether or not an earlier rule fired.
/// A listing-only fault never fires on other requests.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    pub target: Endpoint,
    pub when: When,
    pub fault: Fault,
    /// Only requests naming this id (or, for a zone-scoped call, this zone) match (and are
    /// counted).
    pub only_id: Option<String>,
}

impl FaultRule {
    pub fn new(target: Endpoint, when: When, fault: Fault) -> Self {
        FaultRule {
            target,
            when,
            fault,
            only_id: None,
        }
    }

    /// Restricts the rule to requests that name `id` (path, `id` query parameter, or the zone
    /// of a `/zones/{zone}/...` call).
    pub fn for_id(self, id: impl Into<String>) -> Self {
        FaultRule {
            only_id: Some(id.into()),
            ..self
        }
    }

    pub fn always(target: Endpoint, fault: Fault) -> Self {
        Self::new(target, When::Always, fault)
    }

    pub fn nth(target: Endpoint, n: u64, fault: Fault) -> Self {
        Self::new(target, When::Nth(n), fault)
    }

    pub fn first(target: Endpoint, n: u64, fault: Fault) -> Self {
        Self::new(target, When::FirstN(n), fault)
    }
}

/// A `--fault` string that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid fault rule {rule:?}: {reason} (expected TARGET:FAULT[:WHEN], \
     e.g. \"bulk_delete:status=503:first=2\" or \"list:repeat_cursor:nth=2\")"
)]
pub struct FaultParseError {
    rule: String,
    reason: String,
}

const TARGETS: &str = "list, get, delete_one, bulk_delete, revoke, list_service_tokens, \
                       delete_service_token, list_account_tokens, delete_account_token, \
                       verify_token, list_client_certificates, revoke_client_certificate, \
                       unrevoke, reactivate_client_certificate, any_mutation, any";
const FAULTS: &str = "status=CODE, delay_ms=MS, reset, malformed_json, success_false, wrong_auth, \
                      repeat_cursor, short_page, duplicate_ids, retry_after_raw=TEXT, \
                      retry_after_ms_raw=TEXT, html=CODE, errors_null, partial_errors, \
                      partial_apply, noop[=STATUS], noop_with_errors, empty_204, \
                      apply_then_status=CODE, redirect=URL, redirect302=URL";

impl FromStr for FaultRule {
    type Err = FaultParseError;

    fn from_str(rule: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| FaultParseError {
            rule: rule.to_owned(),
            reason,
        };
        // A redirect's URL holds colons of its own: it takes the rest of the rule.
        let (rule_parts, redirect) = match rule.find(":redirect") {
            Some(at) => {
                let (head, tail) = rule.split_at(at);
                let tail = &tail[1..];
                let (name, url) = tail.split_once('=').unwrap_or((tail, ""));
                let status = match name {
                    "redirect" => 307,
                    "redirect302" => 302,
                    other => return Err(fail(format!("unknown part {other:?}"))),
                };
                if url.is_empty() {
                    return Err(fail(format!("{name} needs a value: {name}=URL")));
                }
                let location = url.to_owned();
                (head, Some(Fault::Redirect { status, location }))
            }
            None => (rule, None),
        };
        let mut parts = rule_parts.split(':').map(str::trim);
        let target = match parts.next().unwrap_or_default() {
            "list" => Endpoint::ListRegistrations,
            "get" => Endpoint::GetRegistration,
            "delete_one" => Endpoint::DeleteOne,
            "bulk_delete" => Endpoint::BulkDelete,
            "revoke" => Endpoint::Revoke,
            "list_service_tokens" => Endpoint::ListServiceTokens,
            "delete_service_token" => Endpoint::DeleteServiceToken,
            "list_account_tokens" => Endpoint::ListAccountTokens,
            "delete_account_token" => Endpoint::DeleteAccountToken,
            "verify_token" => Endpoint::VerifyToken,
            "list_client_certificates" => Endpoint::ListClientCertificates,
            "revoke_client_certificate" => Endpoint::RevokeClientCertificate,
            "unrevoke" => Endpoint::Unrevoke,
            "reactivate_client_certificate" => Endpoint::ReactivateClientCertificate,
            "any_mutation" => Endpoint::AnyMutation,
            "any" => Endpoint::Any,
            other => {
                return Err(fail(format!(
                    "unknown target {other:?}; use one of {TARGETS}"
                )))
            }
        };

        let mut fault = redirect;
        let mut when = None;
        let mut retry_after = None;
        let mut error_code = None;
        let mut only_id = None;
        let mut seed = None;
        for part in parts {
            let (name, value) = match part.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim())),
                None => (part, None),
            };
            let number = |what: &str| -> Result<u64, FaultParseError> {
                let raw =
                    value.ok_or_else(|| fail(format!("{name} needs a value: {name}={what}")))?;
                raw.parse()
                    .map_err(|_| fail(format!("{name}={raw}: {raw:?} is not a whole number")))
            };
            let status_number = |what: &str, range: std::ops::RangeInclusive<u64>| {
                let n = number(what)?;
                if range.contains(&n) {
                    Ok(n as u16)
                } else {
                    Err(fail(format!(
                        "{name}={n}: use a status from {} to {}",
                        range.start(),
                        range.end()
                    )))
                }
            };
            let (new_fault, new_when) = match (name, value) {
                ("status", _) => {
                    let code = number("CODE")?;
                    if !(400..=599).contains(&code) {
                        return Err(fail(format!("status={code}: use an error status, 400-599")));
                    }
                    (
                        Some(Fault::Status {
                            code: code as u16,
                            retry_after: None,
                        }),
                        None,
                    )
                }
                ("delay_ms", _) => (
                    Some(Fault::Delay(Duration::from_millis(number("MS")?))),
                    None,
                ),
                ("reset", None) => (Some(Fault::ConnectionReset), None),
                ("malformed_json", None) => (Some(Fault::MalformedJson), None),
                ("success_false", None) => (Some(Fault::SuccessFalse), None),
                ("wrong_auth", None) => (Some(Fault::WrongAuth), None),
                ("repeat_cursor", None) => (Some(Fault::RepeatCursor), None),
                ("short_page", None) => (Some(Fault::ShortPageWithCursor), None),
                ("duplicate_ids", None) => (Some(Fault::DuplicateIds), None),
                ("retry_after_raw", Some(raw)) => (
                    Some(Fault::RawRetryAfter {
                        seconds: Some(raw.to_owned()),
                        millis: None,
                    }),
                    None,
                ),
                ("retry_after_ms_raw", Some(raw)) => (
                    Some(Fault::RawRetryAfter {
                        seconds: None,
                        millis: Some(raw.to_owned()),
                    }),
                    None,
                ),
                ("html", _) => (Some(Fault::Html(status_number("CODE", 300..=599)?)), None),
                ("errors_null", None) => (Some(Fault::ErrorsNull), None),
                ("partial_errors", None) => (Some(Fault::PartialErrors), None),
                ("partial_apply", None) => (Some(Fault::PartialApply), None),
                ("noop", None) => (Some(Fault::Noop { status: 200 }), None),
                ("noop", Some(_)) => (
                    Some(Fault::Noop {
                        status: status_number("STATUS", 200..=299)?,
                    }),
                    None,
                ),
                ("noop_with_errors", None) => (Some(Fault::NoopWithErrors), None),
                ("empty_204", None) => (Some(Fault::Empty204), None),
                ("apply_then_status", _) => (
                    Some(Fault::ApplyThenStatus(status_number("CODE", 400..=599)?)),
                    None,
                ),
                ("code", _) => {
                    error_code = Some(number("N")?);
                    (None, None)
                }
                ("id", Some(id)) if !id.is_empty() => {
                    only_id = Some(id.to_owned());
                    (None, None)
                }
                ("retry_after", _) => {
                    retry_after = Some(number("SECS")?);
                    (None, None)
                }
                ("always", None) => (None, Some(When::Always)),
                ("nth", _) => match number("N")? {
                    0 => return Err(fail("nth=0: requests are counted from 1".to_owned())),
                    n => (None, Some(When::Nth(n))),
                },
                ("first", _) => (None, Some(When::FirstN(number("N")?))),
                ("p", _) => {
                    let raw = value.unwrap_or_default();
                    match raw.parse::<f64>() {
                        Ok(p) if (0.0..=1.0).contains(&p) => {
                            (None, Some(When::Probability { p, seed: 0 }))
                        }
                        _ => {
                            return Err(fail(format!("p={raw}: use a probability between 0 and 1")))
                        }
                    }
                }
                ("seed", _) => {
                    seed = Some(number("N")?);
                    (None, None)
                }
                _ => {
                    return Err(fail(format!(
                        "unknown part {part:?}; faults are {FAULTS}; \
                         WHEN is always, nth=N, first=N or p=PROB[:seed=N]"
                    )))
                }
            };
            if let Some(new) = new_fault {
                if fault.replace(new).is_some() {
                    return Err(fail(
                        "more than one fault; use one rule per fault".to_owned(),
                    ));
                }
            }
            if let Some(new) = new_when {
                if when.replace(new).is_some() {
                    return Err(fail("more than one of always, nth, first, p".to_owned()));
                }
            }
        }

        let mut fault =
            fault.ok_or_else(|| fail(format!("no fault given; add one of {FAULTS}")))?;
        if let Some(secs) = retry_after {
            match &mut fault {
                Fault::Status { retry_after, .. } => *retry_after = Some(secs),
                _ => return Err(fail("retry_after only goes with status=CODE".to_owned())),
            }
        }
        if let Some(code) = error_code {
            fault = match fault {
                Fault::Status { code: status, .. } => Fault::Error {
                    status,
                    code: u32::try_from(code)
                        .map_err(|_| fail(format!("code={code}: too large")))?,
                },
                _ => return Err(fail("code only goes with status=CODE".to_owned())),
            };
        }
        if fault == Fault::RepeatCursor && target.is_page_numbered_listing() {
            return Err(fail(
                "repeat_cursor only applies to list: service tokens, account tokens and client \
                 certificates are paged by number, not by cursor"
                    .to_owned(),
            ));
        }
        if fault.is_listing_only()
            && target != Endpoint::ListRegistrations
            && !target.is_page_numbered_listing()
        {
            return Err(fail(
                "repeat_cursor, short_page, duplicate_ids and partial_errors only apply to list \
                 (and all but repeat_cursor to list_service_tokens, list_account_tokens and \
                 list_client_certificates)"
                    .to_owned(),
            ));
        }
        let when = match (when.unwrap_or(When::Always), seed) {
            (When::Probability { p, .. }, Some(seed)) => When::Probability { p, seed },
            (_, Some(_)) => return Err(fail("seed only goes with p=PROB".to_owned())),
            (when, None) => when,
        };
        Ok(FaultRule {
            target,
            when,
            fault,
            only_id,
        })
    }
}

/// The installed rules and their counters.
#[derive(Debug, Default)]
pub(crate) struct FaultSet {
    rules: Vec<ActiveRule>,
}

#[derive(Debug)]
struct ActiveRule {
    rule: FaultRule,
    seen: u64,
    rng: Option<StdRng>,
}

impl FaultSet {
    pub(crate) fn new(rules: Vec<FaultRule>) -> Self {
        let rules = rules
            .into_iter()
            .map(|rule| {
                let rng = match rule.when {
                    When::Probability { seed, .. } => Some(StdRng::seed_from_u64(seed)),
                    _ => None,
                };
                ActiveRule { rule, seen: 0, rng }
            })
            .collect();
        FaultSet { rules }
    }

    /// The fault to apply to this request, which names `ids`, if any rule fires.
    pub(crate) fn pick(&mut self, op: Op, ids: &[String]) -> Option<Fault> {
        let mut chosen = None;
        for active in &mut self.rules {
            if !active.rule.target.matches(op) || !active.rule.fault.applies_to(op) {
                continue;
            }
            if let Some(only) = &active.rule.only_id {
                if !ids.contains(only) {
                    continue;
                }
            }
            active.seen += 1;
            let fires = match active.rule.when {
                When::Always => true,
                When::Nth(n) => active.seen == n,
                When::FirstN(n) => active.seen <= n,
                When::Probability { p, .. } => {
                    active.rng.as_mut().is_some_and(|rng| rng.gen::<f64>() < p)
                }
            };
            if fires && chosen.is_none() {
                chosen = Some(active.rule.fault.clone());
            }
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_rules_parse() {
        let cases = [
            (
                "bulk_delete:status=503:first=2",
                FaultRule::first(
                    Endpoint::BulkDelete,
                    2,
                    Fault::Status {
                        code: 503,
                        retry_after: None,
                    },
                ),
            ),
            (
                "list:status=429:retry_after=3:nth=2",
                FaultRule::nth(
                    Endpoint::ListRegistrations,
                    2,
                    Fault::Status {
                        code: 429,
                        retry_after: Some(3),
                    },
                ),
            ),
            (
                "delete_one:delay_ms=3000:always",
                FaultRule::always(Endpoint::DeleteOne, Fault::Delay(Duration::from_secs(3))),
            ),
            (
                "list:repeat_cursor:nth=2",
                FaultRule::nth(Endpoint::ListRegistrations, 2, Fault::RepeatCursor),
            ),
            (
                "list:short_page",
                FaultRule::always(Endpoint::ListRegistrations, Fault::ShortPageWithCursor),
            ),
            (
                "list:duplicate_ids",
                FaultRule::always(Endpoint::ListRegistrations, Fault::DuplicateIds),
            ),
            (
                "get:malformed_json",
                FaultRule::always(Endpoint::GetRegistration, Fault::MalformedJson),
            ),
            (
                "revoke:success_false",
                FaultRule::always(Endpoint::Revoke, Fault::SuccessFalse),
            ),
            (
                "any:wrong_auth:first=1",
                FaultRule::first(Endpoint::Any, 1, Fault::WrongAuth),
            ),
            (
                "any_mutation:reset:p=0.1:seed=7",
                FaultRule::new(
                    Endpoint::AnyMutation,
                    When::Probability { p: 0.1, seed: 7 },
                    Fault::ConnectionReset,
                ),
            ),
            (
                "any_mutation:p=1:reset",
                FaultRule::new(
                    Endpoint::AnyMutation,
                    When::Probability { p: 1.0, seed: 0 },
                    Fault::ConnectionReset,
                ),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<FaultRule>(), Ok(expected), "{text}");
        }
    }

    #[test]
    fn hostile_rules_parse() {
        let cases = [
            (
                "delete_one:status=404:code=7003",
                FaultRule::always(
                    Endpoint::DeleteOne,
                    Fault::Error {
                        status: 404,
                        code: 7003,
                    },
                ),
            ),
            (
                "any_mutation:status=400:code=2001:id=abc",
                FaultRule::always(
                    Endpoint::AnyMutation,
                    Fault::Error {
                        status: 400,
                        code: 2001,
                    },
                )
                .for_id("abc"),
            ),
            (
                "list:retry_after_raw=1e300",
                FaultRule::always(
                    Endpoint::ListRegistrations,
                    Fault::RawRetryAfter {
                        seconds: Some("1e300".into()),
                        millis: None,
                    },
                ),
            ),
            (
                "bulk_delete:noop=202:first=1",
                FaultRule::first(Endpoint::BulkDelete, 1, Fault::Noop { status: 202 }),
            ),
            (
                "any:nth=2:redirect=http://127.0.0.1:1/client/v4",
                FaultRule::nth(
                    Endpoint::Any,
                    2,
                    Fault::Redirect {
                        status: 307,
                        location: "http://127.0.0.1:1/client/v4".into(),
                    },
                ),
            ),
            (
                "delete_one:apply_then_status=502:first=1",
                FaultRule::first(Endpoint::DeleteOne, 1, Fault::ApplyThenStatus(502)),
            ),
            (
                "revoke:noop",
                FaultRule::always(Endpoint::Revoke, Fault::Noop { status: 200 }),
            ),
            (
                "list:partial_errors",
                FaultRule::always(Endpoint::ListRegistrations, Fault::PartialErrors),
            ),
            (
                "list_service_tokens:short_page:nth=2",
                FaultRule::nth(Endpoint::ListServiceTokens, 2, Fault::ShortPageWithCursor),
            ),
            (
                "delete_service_token:status=400:code=12139:id=t-1",
                FaultRule::always(
                    Endpoint::DeleteServiceToken,
                    Fault::Error {
                        status: 400,
                        code: 12139,
                    },
                )
                .for_id("t-1"),
            ),
            (
                "get:html=404",
                FaultRule::always(Endpoint::GetRegistration, Fault::Html(404)),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<FaultRule>(), Ok(expected), "{text}");
        }
        for (text, needle) in [
            ("list:reset:code=3", "code only goes with status"),
            ("list:noop=500", "from 200 to 299"),
            ("any:redirect=", "needs a value"),
            ("bulk_delete:partial_errors", "only apply to list"),
            ("delete_service_token:duplicate_ids", "only apply to list"),
            ("list_service_tokens:repeat_cursor", "paged by number"),
        ] {
            let err = text.parse::<FaultRule>().expect_err(text).to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn invalid_rules_say_what_is_wrong() {
        let cases = [
            ("", "unknown target"),
            ("lst:status=500", "unknown target \"lst\""),
            ("list", "no fault given"),
            ("list:status=200", "400-599"),
            ("list:status=abc", "not a whole number"),
            ("list:status", "needs a value"),
            ("list:status=500:reset", "more than one fault"),
            ("list:reset:nth=1:first=2", "more than one of"),
            ("list:reset:nth=0", "counted from 1"),
            ("list:reset:p=1.5", "between 0 and 1"),
            ("list:reset:seed=3", "seed only goes with p"),
            (
                "list:reset:retry_after=3",
                "retry_after only goes with status",
            ),
            ("delete_one:repeat_cursor", "only apply to list"),
            ("list:explode", "unknown part \"explode\""),
        ];
        for (text, needle) in cases {
            let err = text.parse::<FaultRule>().expect_err(text).to_string();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(err.contains("expected TARGET:FAULT"), "{err}");
        }
    }

    #[test]
    fn counters_are_per_rule_and_first_firing_rule_wins() {
        let mut set = FaultSet::new(vec![
            FaultRule::nth(Endpoint::DeleteOne, 2, Fault::ConnectionReset),
            FaultRule::first(
                Endpoint::AnyMutation,
                3,
                Fault::Status {
                    code: 503,
                    retry_after: None,
                },
            ),
            FaultRule::always(Endpoint::Any, Fault::RepeatCursor),
        ]);
        let status = Some(Fault::Status {
            code: 503,
            retry_after: None,
        });
        assert_eq!(set.pick(Op::DeleteOne, &[]), status);
        assert_eq!(set.pick(Op::DeleteOne, &[]), Some(Fault::ConnectionReset));
        assert_eq!(
            set.pick(Op::BulkDelete, &[]),
            status,
            "third mutation, counted despite the reset"
        );
        assert_eq!(
            set.pick(Op::BulkDelete, &[]),
            None,
            "listing faults never hit mutations"
        );
        assert_eq!(set.pick(Op::List, &[]), Some(Fault::RepeatCursor));
        assert_eq!(set.pick(Op::GetOne, &[]), None);
        assert_eq!(
            set.pick(Op::ListServiceTokens, &[]),
            None,
            "repeat_cursor never hits a page-numbered listing"
        );
    }

    #[test]
    fn service_token_calls_are_mutations_and_listings_for_their_targets() {
        let status = Fault::Status {
            code: 503,
            retry_after: None,
        };
        let mut set = FaultSet::new(vec![
            FaultRule::always(Endpoint::ListServiceTokens, Fault::DuplicateIds),
            FaultRule::always(Endpoint::AnyMutation, status.clone()),
        ]);
        assert_eq!(
            set.pick(Op::ListServiceTokens, &[]),
            Some(Fault::DuplicateIds)
        );
        assert_eq!(set.pick(Op::List, &[]), None, "only the token listing");
        assert_eq!(set.pick(Op::DeleteServiceToken, &[]), Some(status));
        let mut any = FaultSet::new(vec![FaultRule::always(Endpoint::Any, Fault::WrongAuth)]);
        assert_eq!(any.pick(Op::ListServiceTokens, &[]), Some(Fault::WrongAuth));
        let mut delete = FaultSet::new(vec![FaultRule::always(
            Endpoint::DeleteServiceToken,
            Fault::ConnectionReset,
        )]);
        assert_eq!(delete.pick(Op::DeleteOne, &[]), None);
        assert_eq!(
            delete.pick(Op::DeleteServiceToken, &[]),
            Some(Fault::ConnectionReset)
        );
    }

    #[test]
    fn new_kinds_targets_parse_and_listing_faults_fit_their_listings() {
        let zone = "023e105f4ecef8ad9ca31a8372d0c353";
        let cases = [
            (
                "list_account_tokens:short_page:nth=2".to_owned(),
                FaultRule::nth(Endpoint::ListAccountTokens, 2, Fault::ShortPageWithCursor),
            ),
            (
                "delete_account_token:status=503:first=1".to_owned(),
                FaultRule::first(
                    Endpoint::DeleteAccountToken,
                    1,
                    Fault::Status {
                        code: 503,
                        retry_after: None,
                    },
                ),
            ),
            (
                "verify_token:wrong_auth".to_owned(),
                FaultRule::always(Endpoint::VerifyToken, Fault::WrongAuth),
            ),
            (
                format!("list_client_certificates:status=500:id={zone}"),
                FaultRule::always(
                    Endpoint::ListClientCertificates,
                    Fault::Status {
                        code: 500,
                        retry_after: None,
                    },
                )
                .for_id(zone),
            ),
            (
                "list_client_certificates:duplicate_ids".to_owned(),
                FaultRule::always(Endpoint::ListClientCertificates, Fault::DuplicateIds),
            ),
            (
                "list_account_tokens:partial_errors".to_owned(),
                FaultRule::always(Endpoint::ListAccountTokens, Fault::PartialErrors),
            ),
            (
                "revoke_client_certificate:reset:p=0.5:seed=3".to_owned(),
                FaultRule::new(
                    Endpoint::RevokeClientCertificate,
                    When::Probability { p: 0.5, seed: 3 },
                    Fault::ConnectionReset,
                ),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<FaultRule>(), Ok(expected), "{text}");
        }
        for (text, needle) in [
            ("list_account_tokens:repeat_cursor", "paged by number"),
            ("list_client_certificates:repeat_cursor", "paged by number"),
            ("verify_token:short_page", "only apply to list"),
            (
                "revoke_client_certificate:duplicate_ids",
                "only apply to list",
            ),
            ("delete_account_tokens:reset", "unknown target"),
        ] {
            let err = text.parse::<FaultRule>().expect_err(text).to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn new_targets_match_their_calls_only() {
        let reset = || Fault::ConnectionReset;
        let cases = [
            (Endpoint::ListAccountTokens, Op::ListAccountTokens),
            (Endpoint::DeleteAccountToken, Op::DeleteAccountToken),
            (Endpoint::VerifyToken, Op::VerifyAccountToken),
            (Endpoint::VerifyToken, Op::VerifyUserToken),
            (Endpoint::ListClientCertificates, Op::ListClientCertificates),
            (
                Endpoint::RevokeClientCertificate,
                Op::RevokeClientCertificate,
            ),
            (Endpoint::Unrevoke, Op::Unrevoke),
            (
                Endpoint::ReactivateClientCertificate,
                Op::ReactivateClientCertificate,
            ),
        ];
        for (target, op) in cases {
            let mut set = FaultSet::new(vec![FaultRule::always(target, reset())]);
            assert_eq!(set.pick(op, &[]), Some(reset()), "{target:?} {op:?}");
            for other in [Op::List, Op::ListServiceTokens, Op::DeleteServiceToken] {
                assert_eq!(set.pick(other, &[]), None, "{target:?} {other:?}");
            }
        }
        let mut mutations = FaultSet::new(vec![FaultRule::always(Endpoint::AnyMutation, reset())]);
        assert_eq!(mutations.pick(Op::DeleteAccountToken, &[]), Some(reset()));
        assert_eq!(
            mutations.pick(Op::RevokeClientCertificate, &[]),
            Some(reset())
        );
        assert_eq!(mutations.pick(Op::VerifyAccountToken, &[]), None);
        assert_eq!(mutations.pick(Op::ListClientCertificates, &[]), None);
        let mut pages = FaultSet::new(vec![FaultRule::always(
            Endpoint::Any,
            Fault::ShortPageWithCursor,
        )]);
        assert!(pages.pick(Op::ListAccountTokens, &[]).is_some());
        assert!(pages.pick(Op::ListClientCertificates, &[]).is_some());
        assert_eq!(pages.pick(Op::VerifyUserToken, &[]), None);
    }

    #[test]
    fn probability_is_repeatable_for_a_seed() {
        let draws = |seed| {
            let mut set = FaultSet::new(vec![FaultRule::new(
                Endpoint::Any,
                When::Probability { p: 0.5, seed },
                Fault::MalformedJson,
            )]);
            (0..64)
                .map(|_| set.pick(Op::List, &[]).is_some())
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(9), draws(9));
        assert_ne!(draws(9), draws(10));
        let fired = draws(9).iter().filter(|f| **f).count();
        assert!((16..=48).contains(&fired), "{fired}");
    }
}
