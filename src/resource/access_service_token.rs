//! Access service tokens (`/accounts/{id}/access/service_tokens`): listed by page number,
//! deleted one by one. A token still in use (attached to the device enrollment policy, or
//! named by an Access policy, group or an app's SCIM configuration) is refused by Cloudflare.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    paging, Evaluated, Facts, ListRequest, MutationRequest, PageToken, Presence, ResourceId,
};
use crate::cloudflare::{AccountId, CfErrorDetail, Endpoint, ServiceToken};
use crate::config::Action;
use crate::rules::RuleSet;

/// Tokens asked for per page. The endpoint's maximum is not published; 50 is the most the
/// other page-numbered listings accept, and the listing follows `total_pages` whatever the
/// server serves.
pub const PER_PAGE: u32 = 50;

/// The refusal code one public report quotes for a token in use
/// (`access.api.error.service_token_in_use`). Unconfirmed, so the message is read too: see
/// [`means_refused`].
pub const IN_USE_CODE: i64 = 12139;

/// What to do about a token Cloudflare refuses to delete.
pub const REFUSAL_HINT: &str = "The token is still in use: remove it from the device \
    enrollment policy and from every Access policy, group and application SCIM configuration \
    that names it (Zero Trust dashboard), then the next run deletes it; or exclude it with \
    service_token_id";

fn path(account: &AccountId) -> String {
    format!("accounts/{account}/access/service_tokens")
}

/// One page of `GET .../access/service_tokens?page=N&per_page=50`. The listing cannot be
/// filtered by id, so it is also what confirms a deletion.
pub fn list_request(account: &AccountId, token: Option<&PageToken>) -> ListRequest {
    let page = paging::page_number(token);
    ListRequest {
        endpoint: Endpoint::ListServiceTokens,
        path: path(account),
        query: vec![
            ("page".to_owned(), page.to_string()),
            ("per_page".to_owned(), PER_PAGE.to_string()),
        ],
    }
}

/// Reads a listed token (one without id or name is an error) and asks the rules about it.
pub fn evaluate<'r>(
    raw: &RawValue,
    rules: &'r RuleSet,
    now: DateTime<Utc>,
) -> Result<Evaluated<'r>, serde_json::Error> {
    let token: ServiceToken = serde_json::from_str(raw.get())?;
    let eval = rules.evaluate_service_token(&token, now);
    if let Some(a) = eval.anomaly {
        tracing::warn!(
            service_token = %token.id,
            anomaly = a.label(),
            last_seen_at = %token.last_seen_at,
            created_at = %token.created_at,
            expires_at = %token.expires_at,
            "service token data not trusted; no rule acts on it"
        );
    }
    Ok(Evaluated {
        revoked: false,
        eval,
        snapshot: None,
        facts: Facts {
            display_name: token.name,
            subject: None,
            last_active: token.last_seen_at,
            id: token.id,
        },
    })
}

/// What a confirmation listing shows of one token: only that it exists.
pub fn presence(raw: &RawValue) -> Result<(ResourceId, Presence), serde_json::Error> {
    #[derive(Deserialize)]
    struct Listed {
        id: ResourceId,
    }
    let listed: Listed = serde_json::from_str(raw.get())?;
    Ok((listed.id, Presence::Active))
}

/// The API deletes one token per call.
pub fn bulk(_action: Action) -> bool {
    false
}

/// `DELETE .../access/service_tokens/{id}`. Validation allows only `delete` for this kind.
pub fn mutation_request(account: &AccountId, ids: &[ResourceId]) -> MutationRequest {
    MutationRequest::delete_one(
        Endpoint::DeleteServiceToken,
        &path(account),
        "/access/service_tokens",
        ids,
    )
}

/// A 404 about one token means it does not exist.
pub fn means_gone(status: u16) -> bool {
    status == 404
}

/// Whether an error answer to deleting one token is Cloudflare refusing because the token is
/// in use. The reported code is unconfirmed, so the refusal is also recognised by its message
/// ("in use", "used by a policy, group, or app SCIM configuration"); any other 4xx stays a
/// failure that someone should look at.
pub fn means_refused(status: u16, errors: &[CfErrorDetail]) -> bool {
    matches!(status, 400 | 409 | 422)
        && errors.iter().any(|e| {
            let message = e.message.to_ascii_lowercase();
            e.code == IN_USE_CODE
                || message.contains("in use")
                || message.contains("in_use")
                || message.contains("used by")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> AccountId {
        AccountId::parse("0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn listings_ask_for_numbered_pages_of_fifty() {
        let first = list_request(&account(), None);
        assert_eq!(first.endpoint, Endpoint::ListServiceTokens);
        assert_eq!(
            first.path,
            "accounts/0123456789abcdef0123456789abcdef/access/service_tokens"
        );
        assert_eq!(
            first.query,
            vec![
                ("page".to_owned(), "1".to_owned()),
                ("per_page".to_owned(), "50".to_owned())
            ]
        );
        let third = list_request(&account(), Some(&PageToken::Page(3)));
        assert_eq!(third.query[0], ("page".to_owned(), "3".to_owned()));
    }

    #[test]
    fn a_token_is_deleted_by_its_path() {
        let id = ResourceId::parse("3f6b0c2e-1111-4a53-9d0e-5b7a3f1c2d4e").unwrap();
        let r = mutation_request(&account(), std::slice::from_ref(&id));
        assert_eq!(r.endpoint, Endpoint::DeleteServiceToken);
        assert_eq!(r.method, reqwest::Method::DELETE);
        assert_eq!(
            r.path,
            format!("accounts/0123456789abcdef0123456789abcdef/access/service_tokens/{id}")
        );
        assert_eq!(r.shown, format!("/access/service_tokens/{id}"));
        assert_eq!(r.ids_named, 1);
        assert!(!bulk(Action::Delete));
    }

    #[test]
    fn a_token_in_use_is_recognised_by_its_code_or_its_message() {
        let e = |code: i64, message: &str| CfErrorDetail {
            code,
            message: message.to_owned(),
        };
        let reported = e(12139, "access.api.error.service_token_in_use");
        assert!(means_refused(400, std::slice::from_ref(&reported)));
        // Another code, the same meaning.
        assert!(means_refused(
            409,
            &[e(
                12130,
                "Service token is used by a policy, group, or app SCIM configuration"
            )]
        ));
        assert!(means_refused(400, &[e(1, "service_token_in_use")]));
        // Not a refusal: other 4xx, other messages, other statuses.
        assert!(!means_refused(400, &[e(12000, "invalid id")]));
        assert!(!means_refused(403, std::slice::from_ref(&reported)));
        assert!(!means_refused(500, std::slice::from_ref(&reported)));
        assert!(!means_refused(400, &[]));
    }
}
