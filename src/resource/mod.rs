//! Resource kinds: what differs between the kinds of Cloudflare object zt-janitor cleans up.
//!
//! A kind supplies only its listing request, how a listed item reads, the request for each
//! action, and which answers mean "already gone" or "refused". Everything else (rules engine,
//! caps, executor, audit, metrics) is shared and takes the kind from here. `match kind` in
//! this module is the one place a kind is wired in; each kind lives in a file of its own.

use std::fmt;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::cloudflare::{AccountId, ApiError, Client, Endpoint, Stamp, ZoneId};
use crate::config::Action;
use crate::rules::{Evaluation, RuleSet};

pub mod access_service_token;
pub mod account_api_token;
pub mod client_certificate;
pub mod device_registration;
mod paging;

/// A kind of Cloudflare object. `as_str` is the config value of `[[rule]] resource`, the
/// audit log's `resource_kind` and the metrics' `resource` label.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    DeviceRegistration,
    AccessServiceToken,
    AccountApiToken,
    ClientCertificate,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::DeviceRegistration,
        Kind::AccessServiceToken,
        Kind::AccountApiToken,
        Kind::ClientCertificate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::DeviceRegistration => "device_registration",
            Kind::AccessServiceToken => "access_service_token",
            Kind::AccountApiToken => "account_api_token",
            Kind::ClientCertificate => "client_certificate",
        }
    }

    pub fn parse(raw: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == raw)
    }

    /// The token permission that lists this kind, for error hints.
    pub fn read_permission(self) -> &'static str {
        match self {
            Kind::DeviceRegistration => "Zero Trust Read",
            Kind::AccessServiceToken => "Access: Service Tokens Read",
            Kind::AccountApiToken => "Account API Tokens Read",
            Kind::ClientCertificate => "SSL and Certificates Read",
        }
    }

    /// The token permission that deletes or revokes this kind, for error hints.
    pub fn write_permission(self) -> &'static str {
        match self {
            Kind::DeviceRegistration => "Zero Trust Write",
            Kind::AccessServiceToken => "Access: Service Tokens Write",
            Kind::AccountApiToken => "Account API Tokens Write",
            Kind::ClientCertificate => "SSL and Certificates Write",
        }
    }

    /// What one object of this kind is called in messages, singular and plural.
    pub fn noun(self) -> (&'static str, &'static str) {
        match self {
            Kind::DeviceRegistration => ("registration", "registrations"),
            Kind::AccessServiceToken => ("service token", "service tokens"),
            Kind::AccountApiToken => ("account API token", "account API tokens"),
            Kind::ClientCertificate => ("client certificate", "client certificates"),
        }
    }

    /// Whether objects of this kind live in zones (listed once per zone) rather than in the
    /// account.
    pub fn zoned(self) -> bool {
        self == Kind::ClientCertificate
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The id of a listed object, whatever its kind (a UUID in practice). Only URL-safe
/// characters are accepted, since the id is put into request paths and query strings.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ResourceId(String);

impl ResourceId {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(format!(
                "{raw:?} is not a registration id: expected a UUID such as \
                 \"0b9a1c2e-6f0e-4a53-9d0e-5b7a3f1c2d4e\""
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What this id is, for comparing it with another: a UUID compares as its 128-bit value
    /// (so `…00A` and `…00a` are the same object), any other id ASCII-case-insensitively
    /// (ids hold only ASCII by construction). The id itself keeps its spelling for the API.
    pub fn key(&self) -> IdKey {
        match uuid::Uuid::try_parse(&self.0) {
            Ok(u) => IdKey::Uuid(u.as_u128()),
            Err(_) => IdKey::Other(self.0.to_ascii_lowercase()),
        }
    }
}

/// The comparable identity of a [`ResourceId`]; see [`ResourceId::key`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IdKey {
    Uuid(u128),
    Other(String),
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResourceId({})", self.0)
    }
}

impl<'de> Deserialize<'de> for ResourceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Where the next page of a listing starts: a cursor the server handed out, or a page number
/// (for kinds whose listing counts pages).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PageToken {
    Cursor(String),
    Page(u32),
}

impl PageToken {
    /// The query parameter that asks for this page.
    pub fn query(&self) -> (String, String) {
        match self {
            PageToken::Cursor(c) => ("cursor".to_owned(), c.clone()),
            PageToken::Page(n) => ("page".to_owned(), n.to_string()),
        }
    }
}

/// A listing request, built by the kind; the client only sends it. `path` is relative to the
/// API's base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRequest {
    pub endpoint: Endpoint,
    pub path: String,
    pub query: Vec<(String, String)>,
}

/// A delete or revoke request, built by the kind; the client only sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutationRequest {
    pub endpoint: Endpoint,
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// How many ids the call names: a 404 says "not found" only about a single one.
    pub ids_named: usize,
    /// The call as the audit log shows it: short, without the account and the ids' list.
    pub shown: String,
}

impl MutationRequest {
    /// `DELETE {collection}/{id}`, for a kind whose action takes one id per call; `shown` is
    /// the collection as the audit log shows it.
    pub fn delete_one(
        endpoint: Endpoint,
        collection: &str,
        shown: &str,
        ids: &[ResourceId],
    ) -> Self {
        let one = ids.first().map(ResourceId::as_str).unwrap_or_default();
        MutationRequest {
            endpoint,
            method: Method::DELETE,
            path: format!("{collection}/{one}"),
            query: Vec::new(),
            ids_named: ids.len(),
            shown: format!("{shown}/{one}"),
        }
    }
}

/// What the plan and the audit log show of a listed object, whatever its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub id: ResourceId,
    /// The device name, the token name…
    pub display_name: String,
    /// The user it belongs to, if any.
    pub subject: Option<String>,
    /// The stamp its idle rules read.
    pub last_active: Stamp,
}

/// What a confirmation listing shows of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Active,
    Revoked,
}

/// One page of a listing: the items as listed (raw, so that the audit log keeps them exactly)
/// and where the next page starts, if there is one.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Box<RawValue>>,
    pub next: Option<PageToken>,
    /// How many objects the whole listing holds, when the server says (`total_count`).
    pub total: Option<u64>,
}

/// One listed item, read by its kind.
pub struct Evaluated<'r> {
    pub facts: Facts,
    /// For the `status` of the seen counts.
    pub revoked: bool,
    pub eval: Evaluation<'r>,
    /// What the audit log keeps of it, when not the item as listed (a certificate's metadata
    /// without its PEM body).
    pub snapshot: Option<Box<RawValue>>,
}

/// Where a part of a cycle lists and acts, beyond the account, and what it must not touch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Scope {
    /// The zone, for a kind that lives in zones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<ZoneId>,
    /// The API token the janitor runs with, which no rule acts on (account API tokens).
    #[serde(skip)]
    pub own_token: Option<ResourceId>,
}

impl Scope {
    pub fn zone(zone: ZoneId) -> Self {
        Scope {
            zone: Some(zone),
            own_token: None,
        }
    }

    /// The zone of a zone-scoped kind; an error (never a panic) if a caller forgot it.
    fn zone_of(&self, endpoint: Endpoint) -> Result<&ZoneId, ApiError> {
        self.zone.as_ref().ok_or(ApiError::InconsistentListing {
            endpoint,
            message: "no zone given for a zone-scoped kind (a bug: please report it)".to_owned(),
        })
    }

    /// Whether the scope names what `kind` needs: a zoned kind is nothing without its zone.
    pub fn check(&self, kind: Kind) -> Result<(), String> {
        if kind.zoned() && self.zone.is_none() {
            return Err(format!(
                "{kind}: no zone to act in (a bug: please report it); nothing was done"
            ));
        }
        Ok(())
    }
}

/// One page of everything of `kind` in the account, from `token` (the first page if `None`).
pub async fn list_page(
    kind: Kind,
    client: &Client,
    scope: &Scope,
    token: Option<&PageToken>,
) -> Result<Page, ApiError> {
    let (account, per_page) = (client.account(), client.per_page());
    let request = match kind {
        Kind::DeviceRegistration => device_registration::list_request(account, per_page, token),
        Kind::AccessServiceToken => access_service_token::list_request(account, token),
        Kind::AccountApiToken => account_api_token::list_request(account, token),
        Kind::ClientCertificate => client_certificate::list_request(
            scope.zone_of(Endpoint::ListClientCertificates)?,
            token,
        ),
    };
    read_page(kind, client, &request, token).await
}

/// One page of the objects of `kind` among `ids`, whatever their state: what confirms a call
/// and reconciles an interrupted one. An id the complete listing leaves out does not exist.
pub async fn find_page(
    kind: Kind,
    client: &Client,
    scope: &Scope,
    ids: &[ResourceId],
    token: Option<&PageToken>,
) -> Result<Page, ApiError> {
    if kind == Kind::DeviceRegistration {
        let (account, per_page) = (client.account(), client.per_page());
        let request = device_registration::find_request(account, per_page, ids, token);
        return read_page(kind, client, &request, token).await;
    }
    // No filter by id: the whole listing, which the caller searches.
    list_page(kind, client, scope, token).await
}

/// The id of the API token the janitor runs with: `tokens/verify` as an account-owned token,
/// then, if that is refused, as a user-owned one. `Err` when neither names it.
pub async fn own_token_id(client: &Client) -> Result<ResourceId, ApiError> {
    let [account, user] = account_api_token::verify_requests(client.account());
    let raw = match client.read(&account).await {
        Ok(raw) => raw,
        Err(first)
            if first
                .status()
                .is_some_and(|s| (400..500).contains(&s) && s != 429) =>
        {
            tracing::debug!(error = %first, "not an account-owned token; asking as a user token");
            client.read(&user).await?
        }
        Err(e) => return Err(e),
    };
    account_api_token::verified_id(&raw).map_err(|e| ApiError::Decode {
        endpoint: Endpoint::VerifyAccountToken,
        status: 200,
        message: format!("the answer names no token id: {e}"),
    })
}

async fn read_page(
    kind: Kind,
    client: &Client,
    request: &ListRequest,
    token: Option<&PageToken>,
) -> Result<Page, ApiError> {
    let listed = client.list(request).await?;
    let info = listed.info.as_ref();
    let (asked, items) = (paging::page_number(token), listed.items.len());
    let next = match kind {
        Kind::DeviceRegistration => Ok(device_registration::next_page(info)),
        Kind::AccessServiceToken => {
            paging::next_page(info, asked, items, access_service_token::PER_PAGE)
        }
        Kind::AccountApiToken => paging::next_page(info, asked, items, account_api_token::PER_PAGE),
        Kind::ClientCertificate => {
            paging::next_page(info, asked, items, client_certificate::PER_PAGE)
        }
    }
    .map_err(|message| ApiError::InconsistentListing {
        endpoint: request.endpoint,
        message,
    })?;
    // The planner checks the objects listed against `total_count`: an unreadable one must not
    // pass that check by being ignored.
    let total = info
        .map(|i| i.total_count.trusted("total_count"))
        .transpose()
        .map_err(|message| ApiError::InconsistentListing {
            endpoint: request.endpoint,
            message,
        })?
        .flatten();
    Ok(Page {
        total,
        items: listed.items,
        next,
    })
}

/// Whether a listing of `kind` can be filtered by id: if not, confirming a call lists every
/// object of the kind, and costs a whole listing's pages.
pub fn finds_by_id(kind: Kind) -> bool {
    match kind {
        Kind::DeviceRegistration => true,
        Kind::AccessServiceToken | Kind::AccountApiToken | Kind::ClientCertificate => false,
    }
}

/// Reads one listed item of `kind` and asks the rules about it at `now`; an item whose data no
/// rule trusts is logged. An item without identity is an error: the listing it came in cannot
/// be trusted.
pub fn evaluate<'r>(
    kind: Kind,
    raw: &RawValue,
    rules: &'r RuleSet,
    now: DateTime<Utc>,
    scope: &Scope,
) -> Result<Evaluated<'r>, serde_json::Error> {
    match kind {
        Kind::DeviceRegistration => device_registration::evaluate(raw, rules, now),
        Kind::AccessServiceToken => access_service_token::evaluate(raw, rules, now),
        Kind::AccountApiToken => {
            account_api_token::evaluate(raw, rules, now, scope.own_token.as_ref())
        }
        Kind::ClientCertificate => client_certificate::evaluate(raw, rules, now),
    }
}

/// What a confirmation listing's item shows: its id, its state, and its status as listed for
/// kinds that have one (for the audit log).
pub fn presence(
    kind: Kind,
    raw: &RawValue,
) -> Result<(ResourceId, Presence, Option<String>), serde_json::Error> {
    let plain = |(id, presence)| (id, presence, None);
    match kind {
        Kind::DeviceRegistration => device_registration::presence(raw).map(plain),
        Kind::AccessServiceToken => access_service_token::presence(raw).map(plain),
        Kind::AccountApiToken => account_api_token::presence(raw).map(plain),
        Kind::ClientCertificate => client_certificate::presence(raw),
    }
}

/// Whether `kind` takes many ids in one call for `action` (else one call per id).
pub fn bulk(kind: Kind, action: Action) -> bool {
    match kind {
        Kind::DeviceRegistration => device_registration::bulk(action),
        Kind::AccessServiceToken => access_service_token::bulk(action),
        Kind::AccountApiToken | Kind::ClientCertificate => false,
    }
}

/// The call that carries out `action` on `ids` of `kind` in `account` and, for a zoned kind,
/// the scope's zone. The executor refuses a zoned plan without a zone before any call (see
/// [`Scope::check`]), so a request without one is never built.
pub fn mutation_request(
    kind: Kind,
    account: &AccountId,
    scope: &Scope,
    action: Action,
    ids: &[ResourceId],
) -> MutationRequest {
    match (kind, &scope.zone) {
        (Kind::DeviceRegistration, _) => {
            device_registration::mutation_request(account, action, ids)
        }
        (Kind::AccessServiceToken, _) => access_service_token::mutation_request(account, ids),
        (Kind::AccountApiToken, _) => account_api_token::mutation_request(account, ids),
        (Kind::ClientCertificate, Some(zone)) => client_certificate::mutation_request(zone, ids),
        (Kind::ClientCertificate, None) => {
            client_certificate::mutation_request(&ZoneId::missing(), ids)
        }
    }
}

/// Whether Cloudflare can reverse `action` on `kind` afterwards (`zt-janitor undo`): a
/// revoked registration can be unrevoked, and a revoked client certificate reactivated while
/// it is still `pending_revocation`. A deletion never can.
pub fn undoable(kind: Kind, action: Action) -> bool {
    match (kind, action) {
        (Kind::DeviceRegistration | Kind::ClientCertificate, Action::Revoke) => true,
        (_, Action::Delete)
        | (Kind::AccessServiceToken | Kind::AccountApiToken, Action::Revoke) => false,
    }
}

/// The call that reverses a revocation of `ids` of `kind` (see [`undoable`]); `None` for a
/// kind that has none.
pub fn undo_request(
    kind: Kind,
    account: &AccountId,
    scope: &Scope,
    ids: &[ResourceId],
) -> Option<MutationRequest> {
    match (kind, &scope.zone) {
        (Kind::DeviceRegistration, _) => Some(device_registration::unrevoke_request(account, ids)),
        (Kind::ClientCertificate, Some(zone)) => {
            Some(client_certificate::reactivate_request(zone, ids))
        }
        _ => None,
    }
}

/// Whether a Cloudflare error answer to a call naming one object of the kind of `endpoint`
/// means that the object is already gone.
pub fn means_gone(endpoint: Endpoint, status: u16) -> bool {
    match endpoint.kind() {
        Kind::DeviceRegistration => device_registration::means_gone(status),
        Kind::AccessServiceToken => access_service_token::means_gone(status),
        // A 404 about one token or certificate, in Cloudflare's envelope with a code other
        // than a routing error (checked by the client), means it does not exist.
        Kind::AccountApiToken | Kind::ClientCertificate => status == 404,
    }
}

/// What the user must change before Cloudflare accepts an action it refused.
pub fn refusal_hint(kind: Kind) -> &'static str {
    match kind {
        Kind::AccessServiceToken => access_service_token::REFUSAL_HINT,
        Kind::DeviceRegistration | Kind::AccountApiToken | Kind::ClientCertificate => {
            "Cloudflare refuses to act on it; see the error above"
        }
    }
}

/// Whether `error`, answered to a call naming one object, is Cloudflare refusing to act on
/// that object for a reason the user must fix first (a service token still in use): recorded
/// `refused_by_api`, not retried, and not a failure of the run.
pub fn means_refused(error: &ApiError) -> bool {
    match error {
        ApiError::Api {
            endpoint,
            status,
            errors,
            envelope: true,
        } if !error.is_run_wide() => match endpoint.kind() {
            Kind::DeviceRegistration | Kind::AccountApiToken | Kind::ClientCertificate => false,
            Kind::AccessServiceToken => access_service_token::means_refused(*status, errors),
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_id_rejects_path_characters() {
        assert!(ResourceId::parse("0b9a1c2e-6f0e-4a53-9d0e-5b7a3f1c2d4e").is_ok());
        for bad in ["", "../x", "a b", "a?b", "a/b", "a&id=b"] {
            assert!(ResourceId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ids_compare_as_uuids_whatever_the_case() {
        let id = |s: &str| ResourceId::parse(s).unwrap().key();
        assert_eq!(
            id("0b9a1c2e-6f0e-4a53-9d0e-5b7a3f1c2d4e"),
            id("0B9A1C2E-6F0E-4A53-9D0E-5B7A3F1C2D4E")
        );
        assert_eq!(
            id("0b9a1c2e-6f0e-4a53-9d0e-5b7a3f1c2d4e"),
            id("0b9a1c2e6f0e4a539d0e5b7a3f1c2d4e")
        );
        assert_ne!(
            id("0b9a1c2e-6f0e-4a53-9d0e-5b7a3f1c2d4e"),
            id("0b9a1c2e-6f0e-4a53-9d0e-5b7a3f1c2d4f")
        );
        assert_eq!(id("r-1A"), id("R-1a"));
        assert_ne!(id("r-1"), id("r-2"));
        // The id keeps its spelling for the API.
        assert_eq!(ResourceId::parse("ABC").unwrap().as_str(), "ABC");
    }

    #[test]
    fn a_kind_reads_back_from_its_name() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
            assert_eq!(kind.to_string(), kind.as_str());
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.as_str())
            );
        }
        assert_eq!(Kind::parse("service_token"), None);
        assert_eq!(Kind::parse("Access_Service_Token"), None);
    }

    #[test]
    fn page_tokens_ask_for_their_page() {
        assert_eq!(
            PageToken::Cursor("c".into()).query(),
            ("cursor".to_owned(), "c".to_owned())
        );
        assert_eq!(
            PageToken::Page(3).query(),
            ("page".to_owned(), "3".to_owned())
        );
    }
}
