//! Device registrations (`/accounts/{id}/devices/registrations`): listed by cursor, deleted in
//! bulk or one by one, revoked in bulk.

use reqwest::Method;
use serde::Deserialize;
use serde_json::value::RawValue;

use chrono::{DateTime, Utc};

use super::{Evaluated, Facts, ListRequest, MutationRequest, PageToken, Presence, ResourceId};
use crate::cloudflare::{AccountId, Endpoint, Registration, ResultInfo, Stamp};
use crate::config::Action;
use crate::rules::RuleSet;

fn path(account: &AccountId) -> String {
    format!("accounts/{account}/devices/registrations")
}

/// One page of `GET .../devices/registrations?status=all`. `status=all` matters: the API
/// lists only active registrations by default, which would hide every revoked one.
pub fn list_request(account: &AccountId, per_page: u32, token: Option<&PageToken>) -> ListRequest {
    listing(Endpoint::ListRegistrations, account, per_page, &[], token)
}

/// One page of the registrations among `ids` (`...&id=A&id=B`), any status. Follow the
/// cursor to the end: an id the complete answer leaves out does not exist.
pub fn find_request(
    account: &AccountId,
    per_page: u32,
    ids: &[ResourceId],
    token: Option<&PageToken>,
) -> ListRequest {
    listing(Endpoint::FindRegistrations, account, per_page, ids, token)
}

fn listing(
    endpoint: Endpoint,
    account: &AccountId,
    per_page: u32,
    ids: &[ResourceId],
    token: Option<&PageToken>,
) -> ListRequest {
    let mut query = vec![
        ("status".to_owned(), "all".to_owned()),
        ("per_page".to_owned(), per_page.to_string()),
    ];
    query.extend(
        ids.iter()
            .map(|id| ("id".to_owned(), id.as_str().to_owned())),
    );
    query.extend(token.map(PageToken::query));
    ListRequest {
        endpoint,
        path: path(account),
        query,
    }
}

/// The cursor listing ends when the server hands out no cursor.
pub fn next_page(info: Option<&ResultInfo>) -> Option<PageToken> {
    info.and_then(ResultInfo::next_cursor)
        .map(|c| PageToken::Cursor(c.to_owned()))
}

/// Reads a listed registration (an object without id or device is an error) and asks the
/// rules about it.
pub fn evaluate<'r>(
    raw: &RawValue,
    rules: &'r RuleSet,
    now: DateTime<Utc>,
) -> Result<Evaluated<'r>, serde_json::Error> {
    let reg: Registration = serde_json::from_str(raw.get())?;
    let eval = rules.evaluate(&reg, now);
    if let Some(a) = eval.anomaly {
        tracing::warn!(
            registration = %reg.id,
            anomaly = a.label(),
            last_seen_at = %reg.last_seen_at,
            created_at = %reg.created_at,
            revoked_at = %reg.revoked_at.as_ref().unwrap_or(&Stamp::Missing),
            deleted_at = %reg.deleted_at.as_ref().unwrap_or(&Stamp::Missing),
            "registration data not trusted; no rule acts on it"
        );
    }
    Ok(Evaluated {
        revoked: reg.is_revoked(),
        eval,
        snapshot: None,
        facts: Facts {
            display_name: reg.device.name,
            subject: reg.user.and_then(|u| u.email),
            last_active: reg.last_seen_at,
            id: reg.id,
        },
    })
}

/// What a confirmation listing shows of one item. Only the id and `revoked_at` are read, so
/// that an object odd in other fields still answers.
pub fn presence(raw: &RawValue) -> Result<(ResourceId, Presence), serde_json::Error> {
    #[derive(Deserialize)]
    struct Listed {
        id: ResourceId,
        #[serde(default)]
        revoked_at: Option<serde_json::Value>,
    }
    let listed: Listed = serde_json::from_str(raw.get())?;
    let presence = match listed.revoked_at {
        Some(v) if !v.is_null() => Presence::Revoked,
        _ => Presence::Active,
    };
    Ok((listed.id, presence))
}

/// Both actions take many ids per call.
pub fn bulk(_action: Action) -> bool {
    true
}

/// The call for `action` on `ids`: `DELETE .../registrations/{id}` for one id,
/// `DELETE .../registrations?id=A&id=B` for several, `POST .../registrations/revoke?id=…`
/// (never the deprecated `POST .../devices/revoke`) to revoke.
pub fn mutation_request(
    account: &AccountId,
    action: Action,
    ids: &[ResourceId],
) -> MutationRequest {
    let id_query = || -> Vec<(String, String)> {
        ids.iter()
            .map(|id| ("id".to_owned(), id.as_str().to_owned()))
            .collect()
    };
    let base = path(account);
    let (endpoint, method, path, query, shown) = match (action, ids) {
        (Action::Delete, [one]) => (
            Endpoint::DeleteRegistration,
            Method::DELETE,
            format!("{base}/{one}"),
            Vec::new(),
            format!("/devices/registrations/{one}"),
        ),
        (Action::Delete, _) => (
            Endpoint::BulkDeleteRegistrations,
            Method::DELETE,
            base,
            id_query(),
            "/devices/registrations?id=…".to_owned(),
        ),
        (Action::Revoke, _) => (
            Endpoint::RevokeRegistrations,
            Method::POST,
            format!("{base}/revoke"),
            id_query(),
            "/devices/registrations/revoke?id=…".to_owned(),
        ),
    };
    MutationRequest {
        endpoint,
        method,
        path,
        query,
        ids_named: ids.len(),
        shown,
    }
}

/// `POST .../registrations/unrevoke?id=A&id=B…`: reverses a revocation, many ids per call,
/// like revoke (`zt-janitor undo`).
pub fn unrevoke_request(account: &AccountId, ids: &[ResourceId]) -> MutationRequest {
    MutationRequest {
        endpoint: Endpoint::UnrevokeRegistrations,
        method: Method::POST,
        path: format!("{}/unrevoke", path(account)),
        query: ids
            .iter()
            .map(|id| ("id".to_owned(), id.as_str().to_owned()))
            .collect(),
        ids_named: ids.len(),
        shown: "/devices/registrations/unrevoke?id=…".to_owned(),
    }
}

/// A 404 about one registration means it does not exist (the client has already ruled out
/// routing errors and answers that are not Cloudflare's).
pub fn means_gone(status: u16) -> bool {
    status == 404
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> AccountId {
        AccountId::parse("0123456789abcdef0123456789abcdef").unwrap()
    }

    fn ids(raw: &[&str]) -> Vec<ResourceId> {
        raw.iter().map(|r| ResourceId::parse(r).unwrap()).collect()
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn unrevoke_names_its_ids_in_the_query_like_revoke() {
        let r = unrevoke_request(&account(), &ids(&["a-1", "b-2"]));
        assert_eq!(r.endpoint, Endpoint::UnrevokeRegistrations);
        assert_eq!(r.method, Method::POST);
        assert_eq!(
            r.path,
            "accounts/0123456789abcdef0123456789abcdef/devices/registrations/unrevoke"
        );
        assert_eq!(r.query, q(&[("id", "a-1"), ("id", "b-2")]));
        assert_eq!(r.ids_named, 2);
    }

    #[test]
    fn listings_ask_for_every_status_and_follow_the_cursor() {
        let path = "accounts/0123456789abcdef0123456789abcdef/devices/registrations";
        let first = list_request(&account(), 1000, None);
        assert_eq!(first.endpoint, Endpoint::ListRegistrations);
        assert_eq!(first.path, path);
        assert_eq!(first.query, q(&[("status", "all"), ("per_page", "1000")]));
        let next = list_request(&account(), 10, Some(&PageToken::Cursor("c2".into())));
        assert_eq!(
            next.query,
            q(&[("status", "all"), ("per_page", "10"), ("cursor", "c2")])
        );
        let find = find_request(&account(), 10, &ids(&["a", "b"]), None);
        assert_eq!(find.endpoint, Endpoint::FindRegistrations);
        assert_eq!(
            find.query,
            q(&[
                ("status", "all"),
                ("per_page", "10"),
                ("id", "a"),
                ("id", "b")
            ])
        );
        let info = |cursor: Option<&str>| ResultInfo {
            cursor: cursor.map(str::to_owned),
            ..ResultInfo::default()
        };
        assert_eq!(
            next_page(Some(&info(Some("c3")))),
            Some(PageToken::Cursor("c3".into()))
        );
        assert_eq!(next_page(Some(&info(Some("")))), None);
        assert_eq!(next_page(Some(&info(None))), None);
        assert_eq!(next_page(None), None);
    }

    #[test]
    fn one_id_is_deleted_by_path_several_in_bulk_and_revoke_is_always_bulk() {
        let base = "accounts/0123456789abcdef0123456789abcdef/devices/registrations";
        // (action, ids, endpoint, method, path, query, as the audit shows it)
        let cases = [
            (
                Action::Delete,
                vec!["a"],
                Endpoint::DeleteRegistration,
                Method::DELETE,
                format!("{base}/a"),
                q(&[]),
                "/devices/registrations/a",
            ),
            (
                Action::Delete,
                vec!["a", "b"],
                Endpoint::BulkDeleteRegistrations,
                Method::DELETE,
                base.to_owned(),
                q(&[("id", "a"), ("id", "b")]),
                "/devices/registrations?id=…",
            ),
            (
                Action::Revoke,
                vec!["a"],
                Endpoint::RevokeRegistrations,
                Method::POST,
                format!("{base}/revoke"),
                q(&[("id", "a")]),
                "/devices/registrations/revoke?id=…",
            ),
        ];
        for (action, raw, endpoint, method, path, query, shown) in cases {
            let r = mutation_request(&account(), action, &ids(&raw));
            assert_eq!(
                (r.endpoint, r.method, r.path, r.query, r.shown.as_str()),
                (endpoint, method, path, query, shown),
                "{action} {raw:?}"
            );
            assert_eq!(r.ids_named, raw.len());
        }
    }

    #[test]
    fn presence_reads_only_the_id_and_revoked_at() {
        let read = |json: &str| presence(&RawValue::from_string(json.to_owned()).unwrap());
        assert_eq!(
            read(r#"{"id":"a","device":"odd"}"#).unwrap(),
            (ResourceId::parse("a").unwrap(), Presence::Active)
        );
        assert_eq!(
            read(r#"{"id":"a","revoked_at":null}"#).unwrap().1,
            Presence::Active
        );
        assert_eq!(
            read(r#"{"id":"a","revoked_at":false}"#).unwrap().1,
            Presence::Revoked
        );
        assert!(read(r#"{"revoked_at":null}"#).is_err());
    }
}
