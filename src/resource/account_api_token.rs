//! Account-owned API tokens (`/accounts/{id}/tokens`): listed by page number (expired ones
//! only when asked for), deleted one by one, and never the token the janitor runs with, which
//! `tokens/verify` names.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    paging, Evaluated, Facts, ListRequest, MutationRequest, PageToken, Presence, ResourceId,
};
use crate::cloudflare::{AccountApiToken, AccountId, Endpoint};
use crate::rules::RuleSet;

/// Tokens asked for per page: the endpoint takes 5 to 50.
pub const PER_PAGE: u32 = 50;

fn path(account: &AccountId) -> String {
    format!("accounts/{account}/tokens")
}

/// One page of `GET .../tokens?page=N&per_page=50&include_expired=true`: without
/// `include_expired` the expired tokens, which rules look for, are not listed at all.
pub fn list_request(account: &AccountId, token: Option<&PageToken>) -> ListRequest {
    ListRequest {
        endpoint: Endpoint::ListAccountTokens,
        path: path(account),
        query: vec![
            ("page".to_owned(), paging::page_number(token).to_string()),
            ("per_page".to_owned(), PER_PAGE.to_string()),
            ("include_expired".to_owned(), "true".to_owned()),
        ],
    }
}

/// The two questions that name the token making the request: as an account-owned token
/// (`/accounts/{id}/tokens/verify`), then as a user-owned one (`/user/tokens/verify`).
pub fn verify_requests(account: &AccountId) -> [ListRequest; 2] {
    [
        ListRequest {
            endpoint: Endpoint::VerifyAccountToken,
            path: format!("{}/verify", path(account)),
            query: Vec::new(),
        },
        ListRequest {
            endpoint: Endpoint::VerifyUserToken,
            path: "user/tokens/verify".to_owned(),
            query: Vec::new(),
        },
    ]
}

/// The id a `tokens/verify` answer names; an answer without one is unreadable.
pub fn verified_id(raw: &RawValue) -> Result<ResourceId, serde_json::Error> {
    #[derive(Deserialize)]
    struct Verified {
        id: ResourceId,
    }
    Ok(serde_json::from_str::<Verified>(raw.get())?.id)
}

/// Reads a listed token (one without an id is an error) and asks the rules about it; `own`
/// is the token the janitor runs with, which no rule ever acts on.
pub fn evaluate<'r>(
    raw: &RawValue,
    rules: &'r RuleSet,
    now: DateTime<Utc>,
    own: Option<&ResourceId>,
) -> Result<Evaluated<'r>, serde_json::Error> {
    let token: AccountApiToken = serde_json::from_str(raw.get())?;
    let eval = rules.evaluate_account_token(&token, now, own);
    if let Some(a) = eval.anomaly {
        tracing::warn!(
            account_api_token = %token.id,
            anomaly = a.label(),
            last_used_on = %token.last_used_on,
            issued_on = %token.issued_on,
            modified_on = %token.modified_on,
            expires_on = %token.expires_on,
            "account API token data not trusted; no rule acts on it"
        );
    }
    Ok(Evaluated {
        revoked: false,
        eval,
        snapshot: None,
        facts: Facts {
            display_name: token.name.unwrap_or_default(),
            subject: None,
            last_active: token.last_used_on,
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
    Ok((
        serde_json::from_str::<Listed>(raw.get())?.id,
        Presence::Active,
    ))
}

/// `DELETE .../tokens/{id}`, one token per call.
pub fn mutation_request(account: &AccountId, ids: &[ResourceId]) -> MutationRequest {
    MutationRequest::delete_one(Endpoint::DeleteAccountToken, &path(account), "/tokens", ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> AccountId {
        AccountId::parse("0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn listings_ask_for_expired_tokens_too() {
        let r = list_request(&account(), Some(&PageToken::Page(2)));
        assert_eq!(r.endpoint, Endpoint::ListAccountTokens);
        assert_eq!(r.path, "accounts/0123456789abcdef0123456789abcdef/tokens");
        let q = |k: &str| {
            r.query
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(q("page"), Some("2"));
        assert_eq!(q("per_page"), Some("50"));
        assert_eq!(q("include_expired"), Some("true"));
    }

    #[test]
    fn verify_asks_as_an_account_token_then_as_a_user_token() {
        let [account_verify, user_verify] = verify_requests(&account());
        assert_eq!(
            account_verify.path,
            "accounts/0123456789abcdef0123456789abcdef/tokens/verify"
        );
        assert_eq!(user_verify.path, "user/tokens/verify");
        let raw = RawValue::from_string(
            r#"{"id":"ed17574386854bf78a67040be0a770b0","status":"active"}"#.to_owned(),
        )
        .unwrap();
        assert_eq!(
            verified_id(&raw).unwrap().as_str(),
            "ed17574386854bf78a67040be0a770b0"
        );
        let no_id = RawValue::from_string(r#"{"status":"active"}"#.to_owned()).unwrap();
        assert!(verified_id(&no_id).is_err());
    }

    #[test]
    fn a_token_is_deleted_by_its_path() {
        let id = ResourceId::parse("ed17574386854bf78a67040be0a770b0").unwrap();
        let r = mutation_request(&account(), std::slice::from_ref(&id));
        assert_eq!(r.endpoint, Endpoint::DeleteAccountToken);
        assert_eq!(r.method, reqwest::Method::DELETE);
        assert_eq!(
            r.path,
            format!("accounts/0123456789abcdef0123456789abcdef/tokens/{id}")
        );
        assert_eq!(r.shown, format!("/tokens/{id}"));
    }
}
