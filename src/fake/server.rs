//! The HTTP side of the fake: routing of the Cloudflare paths, authentication, the JSON envelope,
//! applying faults, and the log of requests and mutations. The data is the stores' (`store`,
//! `tokens`, `account_tokens`, `certificates`); this module only holds each behind a lock that
//! is never held across an `.await`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::account_tokens::{
    AccountTokenStore, TokenOwner, TokenQuery, ACCOUNT_TOKENS_DEFAULT_PER_PAGE,
    ACCOUNT_TOKENS_MAX_PER_PAGE, ACCOUNT_TOKENS_MIN_PER_PAGE,
};
use super::certificates::{
    CertificateQuery, CertificateStore, Reactivation, Revocation, CERTIFICATES_DEFAULT_PER_PAGE,
    CERTIFICATES_MAX_PER_PAGE, CERTIFICATES_MIN_PER_PAGE,
};
use super::conn::ConnControl;
use super::faults::{Fault, FaultSet};
use super::ratelimit::{ceil_secs, Admission, RateLimiter};
use super::store::{Cursor, Key, PageQuery, PageShape, StatusFilter, Store};
use super::tokens::{
    Deletion, TokenStore, SERVICE_TOKENS_DEFAULT_PER_PAGE, SERVICE_TOKENS_MAX_PER_PAGE,
};
use super::{MutationKind, MutationRecord, RequestCounts};

/// Page size when the request names none (what many Cloudflare list endpoints use).
pub(crate) const DEFAULT_PER_PAGE: usize = 100;
/// The deprecated `POST .../devices/revoke` documents this limit; it does not follow
/// `max_bulk_ids`.
pub(crate) const DEPRECATED_REVOKE_MAX_IDS: usize = 200;

/// Error codes. 10000, 7000, 7003, 971, 1000 and 6003 are the codes Cloudflare uses for these
/// cases; the others (1001 not found, 1002 bad request, also for `per_page` outside 5–50) are
/// not published, so these are the fake's own, kept stable.
mod code {
    /// `tokens/verify` for a token of the other owner (account vs user): "Invalid API Token".
    pub const INVALID_API_TOKEN: u32 = 1000;
    /// `tokens/verify` under the global key, which is not a token: "Invalid request headers".
    pub const INVALID_HEADERS: u32 = 6003;
    pub const NOT_FOUND: u32 = 1001;
    pub const BAD_REQUEST: u32 = 1002;
    pub const NO_ROUTE: u32 = 7000;
    pub const METHOD_NOT_ALLOWED: u32 = 7001;
    pub const BAD_ACCOUNT: u32 = 7003;
    pub const RATE_LIMITED: u32 = 971;
    pub const AUTHENTICATION: u32 = 10000;
    pub const UNAVAILABLE: u32 = 10001;
    pub const INTERNAL: u32 = 10002;
    /// The refusal to delete a service token in use. Unconfirmed: no Cloudflare document lists
    /// it; one public report quotes this code with `access.api.error.service_token_in_use`.
    pub const SERVICE_TOKEN_IN_USE: u32 = 12139;
    /// The fake's own refusal to reactivate a certificate whose revocation has settled (no
    /// Cloudflare document gives the real code).
    pub const CERTIFICATE_REVOKED: u32 = 1406;
}

/// The message of [`code::SERVICE_TOKEN_IN_USE`], as quoted in the same report.
pub(crate) const SERVICE_TOKEN_IN_USE_MESSAGE: &str =
    "access.api.error.service_token_in_use: used by a policy, group, or app SCIM configuration";

/// The fake's clock: `FakeOptions::now` at start-up, advancing in real time. Revocations and the
/// log use it, so data generated around a pinned `now` stays consistent with later changes.
pub(crate) struct Clock {
    base: DateTime<Utc>,
    started: Instant,
}

impl Clock {
    pub(crate) fn starting_at(base: DateTime<Utc>) -> Self {
        Clock {
            base,
            started: Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.base + chrono::Duration::from_std(self.started.elapsed()).unwrap_or_default()
    }
}

/// Everything the handlers share; the public handle is a clone of the same `Arc`.
pub(crate) struct Shared {
    pub account_id: String,
    pub max_per_page: usize,
    pub max_bulk_ids: usize,
    pub clock: Clock,
    pub token: Mutex<String>,
    pub store: Mutex<Store>,
    pub tokens: Mutex<TokenStore>,
    pub account_tokens: Mutex<AccountTokenStore>,
    pub certificates: Mutex<CertificateStore>,
    pub own_token: OwnToken,
    /// `(email, key)` accepted as `X-Auth-Email` + `X-Auth-Key`.
    pub global_key: Option<(String, String)>,
    pub faults: Mutex<FaultSet>,
    /// `None`: no rate limit.
    pub rate_limit: Option<RateLimiter>,
    pub log: Mutex<Log>,
    pub shutdown: watch::Sender<bool>,
}

/// The token the fake accepts, as `tokens/verify` and the account token listing know it.
pub(crate) struct OwnToken {
    pub id: String,
    pub owner: TokenOwner,
    pub lists_self_only: bool,
}

/// How a request authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    Token,
    GlobalKey,
}

#[derive(Default)]
pub(crate) struct Log {
    pub mutations: Vec<MutationRecord>,
    pub counts: RequestCounts,
}

/// A poisoned lock only means a test thread panicked mid-read; the data is still usable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The API operations the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    List,
    GetOne,
    DeleteOne,
    BulkDelete,
    Revoke,
    Unrevoke,
    DeprecatedRevoke,
    ListServiceTokens,
    DeleteServiceToken,
    ListAccountTokens,
    DeleteAccountToken,
    VerifyAccountToken,
    VerifyUserToken,
    ListClientCertificates,
    RevokeClientCertificate,
    ReactivateClientCertificate,
}

impl Op {
    pub(crate) fn is_listing(self) -> bool {
        matches!(
            self,
            Op::List | Op::ListServiceTokens | Op::ListAccountTokens | Op::ListClientCertificates
        )
    }

    /// Reads whose answer `MalformedJson` and `SuccessFalse` bend.
    fn is_read(self) -> bool {
        self.is_listing()
            || matches!(
                self,
                Op::GetOne | Op::VerifyAccountToken | Op::VerifyUserToken
            )
    }

    /// Under `/zones/{zone}`: the zone must be served.
    fn is_zone_scoped(self) -> bool {
        matches!(
            self,
            Op::ListClientCertificates
                | Op::RevokeClientCertificate
                | Op::ReactivateClientCertificate
        )
    }

    pub(crate) fn mutation_kind(self) -> Option<MutationKind> {
        match self {
            Op::List
            | Op::GetOne
            | Op::ListServiceTokens
            | Op::ListAccountTokens
            | Op::VerifyAccountToken
            | Op::VerifyUserToken
            | Op::ListClientCertificates => None,
            Op::DeleteOne => Some(MutationKind::DeleteOne),
            Op::BulkDelete => Some(MutationKind::BulkDelete),
            Op::Revoke => Some(MutationKind::Revoke),
            Op::Unrevoke => Some(MutationKind::Unrevoke),
            Op::DeprecatedRevoke => Some(MutationKind::DeprecatedRevoke),
            Op::DeleteServiceToken => Some(MutationKind::DeleteServiceToken),
            Op::DeleteAccountToken => Some(MutationKind::DeleteAccountToken),
            Op::RevokeClientCertificate => Some(MutationKind::RevokeClientCertificate),
            Op::ReactivateClientCertificate => Some(MutationKind::ReactivateClientCertificate),
        }
    }
}

enum Route {
    /// `account` is empty outside `/accounts/{account}`, `zone` outside `/zones/{zone}`.
    Api {
        op: Op,
        account: String,
        zone: String,
        id: String,
    },
    WrongMethod,
    Unknown,
}

fn route(method: &Method, path: &str) -> Route {
    if let Some(rest) = path.strip_prefix("/client/v4/user/") {
        return match (rest, method) {
            ("tokens/verify", &Method::GET) => Route::Api {
                op: Op::VerifyUserToken,
                account: String::new(),
                zone: String::new(),
                id: String::new(),
            },
            ("tokens/verify", _) => Route::WrongMethod,
            _ => Route::Unknown,
        };
    }
    if let Some(rest) = path.strip_prefix("/client/v4/zones/") {
        let segments: Vec<&str> = rest.split('/').collect();
        let (zone, op, id) = match (segments.as_slice(), method) {
            ([zone, "client_certificates"], &Method::GET) => (zone, Op::ListClientCertificates, ""),
            ([zone, "client_certificates", id], &Method::DELETE) if !id.is_empty() => {
                (zone, Op::RevokeClientCertificate, *id)
            }
            ([zone, "client_certificates", id], &Method::PATCH) if !id.is_empty() => {
                (zone, Op::ReactivateClientCertificate, *id)
            }
            ([_, "client_certificates", ..], _) => return Route::WrongMethod,
            _ => return Route::Unknown,
        };
        return Route::Api {
            op,
            account: String::new(),
            zone: percent_decode(zone),
            id: percent_decode(id),
        };
    }
    let Some(rest) = path.strip_prefix("/client/v4/accounts/") else {
        return Route::Unknown;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let (account, op, id) = match (segments.as_slice(), method) {
        ([account, "devices", "registrations"], &Method::GET) => (account, Op::List, ""),
        ([account, "devices", "registrations"], &Method::DELETE) => (account, Op::BulkDelete, ""),
        ([account, "devices", "registrations", "revoke"], &Method::POST) => {
            (account, Op::Revoke, "")
        }
        ([account, "devices", "registrations", "unrevoke"], &Method::POST) => {
            (account, Op::Unrevoke, "")
        }
        ([account, "devices", "registrations", id], &Method::GET) if !id.is_empty() => {
            (account, Op::GetOne, *id)
        }
        ([account, "devices", "registrations", id], &Method::DELETE) if !id.is_empty() => {
            (account, Op::DeleteOne, *id)
        }
        ([account, "devices", "revoke"], &Method::POST) => (account, Op::DeprecatedRevoke, ""),
        ([account, "access", "service_tokens"], &Method::GET) => {
            (account, Op::ListServiceTokens, "")
        }
        ([account, "access", "service_tokens", id], &Method::DELETE) if !id.is_empty() => {
            (account, Op::DeleteServiceToken, *id)
        }
        ([account, "tokens"], &Method::GET) => (account, Op::ListAccountTokens, ""),
        ([account, "tokens", "verify"], &Method::GET) => (account, Op::VerifyAccountToken, ""),
        ([account, "tokens", id], &Method::DELETE) if !id.is_empty() => {
            (account, Op::DeleteAccountToken, *id)
        }
        (
            [_, "devices", "registrations", ..]
            | [_, "devices", "revoke"]
            | [_, "access", "service_tokens", ..]
            | [_, "tokens", ..],
            _,
        ) => return Route::WrongMethod,
        _ => return Route::Unknown,
    };
    Route::Api {
        op,
        account: percent_decode(account),
        zone: String::new(),
        id: percent_decode(id),
    }
}

/// Decodes `%XX` escapes in a path segment (ids inserted by tests may need them).
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| segment.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A response before it becomes HTTP, so faults can still bend it.
struct Reply {
    status: StatusCode,
    body: Vec<u8>,
    retry_after: Option<u64>,
    /// Headers a fault adds verbatim (raw `Retry-After`, `Location`, a content type).
    extra_headers: Vec<(header::HeaderName, String)>,
}

#[derive(Serialize)]
struct ApiError {
    code: u32,
    message: String,
}

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    success: bool,
    errors: &'a [ApiError],
    messages: &'a [ApiError],
    result: T,
    #[serde(skip_serializing_if = "Option::is_none")]
    result_info: Option<ResultInfo>,
}

/// `result_info` of a listing: cursor pagination (registrations) or page pagination (tokens).
#[derive(Serialize)]
#[serde(untagged)]
enum ResultInfo {
    Cursor {
        count: usize,
        cursor: String,
        per_page: usize,
    },
    Page {
        page: usize,
        per_page: usize,
        count: usize,
        total_count: usize,
        total_pages: usize,
    },
}

impl Reply {
    fn ok(result: impl Serialize, result_info: Option<ResultInfo>) -> Reply {
        let envelope = Envelope {
            success: true,
            errors: &[],
            messages: &[],
            result,
            result_info,
        };
        Reply {
            status: StatusCode::OK,
            body: serde_json::to_vec(&envelope).unwrap_or_default(),
            retry_after: None,
            extra_headers: Vec::new(),
        }
    }

    fn error(status: StatusCode, code: u32, message: impl Into<String>) -> Reply {
        let errors = [ApiError {
            code,
            message: message.into(),
        }];
        let envelope = Envelope {
            success: false,
            errors: &errors,
            messages: &[],
            result: Value::Null,
            result_info: None,
        };
        Reply {
            status,
            body: serde_json::to_vec(&envelope).unwrap_or_default(),
            retry_after: None,
            extra_headers: Vec::new(),
        }
    }

    fn authentication() -> Reply {
        Reply::error(
            StatusCode::FORBIDDEN,
            code::AUTHENTICATION,
            "Authentication error",
        )
    }

    fn bad_request(message: impl Into<String>) -> Reply {
        Reply::error(StatusCode::BAD_REQUEST, code::BAD_REQUEST, message)
    }

    fn not_found() -> Reply {
        Reply::error(
            StatusCode::NOT_FOUND,
            code::NOT_FOUND,
            "Registration not found",
        )
    }

    /// The envelope Cloudflare sends with an injected HTTP status.
    fn injected(status: u16, retry_after: Option<u64>) -> Reply {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (code, message) = match status.as_u16() {
            400 => (code::BAD_REQUEST, "Bad request"),
            401 | 403 => (code::AUTHENTICATION, "Authentication error"),
            404 => (code::NOT_FOUND, "Registration not found"),
            429 => (
                code::RATE_LIMITED,
                "Please wait and consider throttling your request speed",
            ),
            502 => (code::INTERNAL, "Bad gateway"),
            503 => (code::UNAVAILABLE, "Service temporarily unavailable"),
            500..=599 => (code::INTERNAL, "Internal server error"),
            _ => (code::BAD_REQUEST, "Request failed"),
        };
        Reply {
            retry_after,
            ..Reply::error(status, code, message)
        }
    }

    /// The rate limiter's refusal: Cloudflare's 429 (code 971), `Retry-After` in whole seconds
    /// rounded up. Its body is the same as an injected 429's; the log tells them apart.
    fn rate_limited(retry_after: std::time::Duration) -> Reply {
        Reply::injected(429, Some(ceil_secs(retry_after)))
    }

    /// A success answer with no body (HTTP 204).
    fn no_content() -> Reply {
        Reply {
            status: StatusCode::NO_CONTENT,
            body: Vec::new(),
            retry_after: None,
            extra_headers: Vec::new(),
        }
    }

    /// The envelope rewritten by `edit`, for faults that bend a served answer.
    fn edit_envelope(mut self, edit: impl FnOnce(&mut Value)) -> Reply {
        if let Ok(mut envelope) = serde_json::from_slice::<Value>(&self.body) {
            edit(&mut envelope);
            self.body = serde_json::to_vec(&envelope).unwrap_or_default();
        }
        self
    }

    fn into_response(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        let headers = response.headers_mut();
        if self.status != StatusCode::NO_CONTENT && !self.status.is_redirection() {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        for (name, value) in self.extra_headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        response
    }
}

/// What a request asked for, parsed once.
#[derive(Clone)]
struct Request {
    op: Op,
    account: String,
    zone: String,
    params: Result<Vec<(String, String)>, String>,
    /// Path id (get/delete one), query ids (bulk) or body ids (deprecated revoke).
    ids: Result<Vec<String>, String>,
    authorization: Option<String>,
    /// `X-Auth-Email` and `X-Auth-Key` (the global key).
    auth_email: Option<String>,
    auth_key: Option<String>,
    path: String,
    query: Option<String>,
}

impl Request {
    /// Every id the request names: path, query or body ids, `id` filters of a listing, and the
    /// zone of a zone-scoped call.
    fn named_ids(&self) -> Vec<String> {
        let mut ids = self.ids.clone().unwrap_or_default();
        if self.op.is_zone_scoped() {
            ids.push(self.zone.clone());
        }
        if let Ok(params) = &self.params {
            if self.op == Op::List {
                ids.extend(
                    params
                        .iter()
                        .filter(|(k, _)| k == "id")
                        .map(|(_, v)| v.clone()),
                );
            }
        }
        ids
    }
}

/// The single entry point: every request goes through counting, logging, faults, auth.
pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnControl>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let authorization = header_text(header::AUTHORIZATION.as_str());
    let auth_email = header_text("x-auth-email");
    let auth_key = header_text("x-auth-key");
    let (op, account, zone, id) = match route(&method, &path) {
        Route::Api {
            op,
            account,
            zone,
            id,
        } => (op, account, zone, id),
        route @ (Route::WrongMethod | Route::Unknown) => {
            lock(&shared.log).counts.total += 1;
            // Cloudflare counts every call of the user, whatever the path.
            let admission = shared.admission(
                authorization.as_deref(),
                auth_email.as_deref(),
                auth_key.as_deref(),
            );
            let reply = match (route, admission) {
                (_, Some(Admission::Refused { retry_after, .. })) => {
                    shared.refused(None);
                    Reply::rate_limited(retry_after)
                }
                (Route::WrongMethod, _) => Reply::error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    code::METHOD_NOT_ALLOWED,
                    "Method not allowed",
                ),
                _ => Reply::error(
                    StatusCode::NOT_FOUND,
                    code::NO_ROUTE,
                    "No route for that URI",
                ),
            };
            return shared.respond(reply, admission);
        }
    };
    let params = Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|err| format!("Invalid query string: {err}"));
    let ids = match op {
        Op::GetOne
        | Op::DeleteOne
        | Op::DeleteServiceToken
        | Op::DeleteAccountToken
        | Op::RevokeClientCertificate
        | Op::ReactivateClientCertificate => Ok(vec![id]),
        Op::BulkDelete | Op::Revoke | Op::Unrevoke => params
            .as_ref()
            .map(|params| {
                params
                    .iter()
                    .filter(|(k, _)| k == "id")
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .map_err(Clone::clone),
        Op::DeprecatedRevoke => serde_json::from_slice::<Vec<String>>(&body)
            .map_err(|_| "Request body must be a JSON array of registration ids".to_owned()),
        Op::List
        | Op::ListServiceTokens
        | Op::ListAccountTokens
        | Op::VerifyAccountToken
        | Op::VerifyUserToken
        | Op::ListClientCertificates => Ok(Vec::new()),
    };
    let request = Request {
        op,
        account,
        zone,
        params,
        ids,
        authorization,
        auth_email,
        auth_key,
        path,
        query: uri.query().map(str::to_owned),
    };

    let record = shared.receive(&request, &method);
    // The limiter stands before the API: a refused request meets no fault and changes nothing.
    let admission = shared.admission(
        request.authorization.as_deref(),
        request.auth_email.as_deref(),
        request.auth_key.as_deref(),
    );
    if let Some(Admission::Refused { retry_after, .. }) = admission {
        shared.refused(record);
        tracing::debug!(%method, path = %request.path, "fake API rate limited the request");
        return shared.respond(Reply::rate_limited(retry_after), admission);
    }
    let fault = lock(&shared.faults).pick(op, &request.named_ids());
    let (reply, affected) = match fault {
        None => shared.process(&request, PageShape::Normal),
        Some(Fault::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            shared.process(&request, PageShape::Normal)
        }
        Some(Fault::RepeatCursor) => shared.process(&request, PageShape::RepeatCursor),
        Some(Fault::ShortPageWithCursor) => {
            shared.process(&request, PageShape::ShortPageWithCursor)
        }
        Some(Fault::DuplicateIds) => shared.process(&request, PageShape::DuplicateIds),
        Some(Fault::Status { code, retry_after }) => {
            (Reply::injected(code, retry_after), Vec::new())
        }
        Some(Fault::WrongAuth) => (Reply::authentication(), Vec::new()),
        Some(Fault::MalformedJson) => {
            let mut reply = shared.read_only(&request);
            reply.body.truncate(reply.body.len() / 2);
            reply.status = StatusCode::OK;
            (reply, Vec::new())
        }
        Some(Fault::SuccessFalse) => (success_false(shared.read_only(&request)), Vec::new()),
        Some(Fault::ConnectionReset) => {
            conn.reset();
            tracing::debug!(path = %request.path, "fake API reset the connection");
            // Never written: the connection fails first. Status 0 in the log says so.
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        Some(other) => hostile(&shared, &request, other),
    };
    if let Some(index) = record {
        shared.finish(index, reply.status.as_u16(), affected);
    }
    tracing::debug!(%method, path = %request.path, status = reply.status.as_u16(), "fake API request");
    shared.respond(reply, admission)
}

/// The answers of a hostile or confused server (see [`Fault`] from `Error` on).
fn hostile(shared: &Shared, request: &Request, fault: Fault) -> (Reply, Vec<String>) {
    match fault {
        Fault::Error { status, code } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            let message = match code {
                code::BAD_ACCOUNT | code::NO_ROUTE => {
                    format!(
                        "Could not route to {}, perhaps your object identifier is invalid?",
                        request.path
                    )
                }
                2001 => "Registration cannot be deleted".to_owned(),
                _ => format!("Request failed (code {code})"),
            };
            (Reply::error(status, code, message), Vec::new())
        }
        Fault::RawRetryAfter { seconds, millis } => {
            let mut reply = Reply::injected(429, None);
            if let Some(v) = seconds {
                reply.extra_headers.push((header::RETRY_AFTER, v));
            }
            if let Some(v) = millis {
                reply
                    .extra_headers
                    .push((header::HeaderName::from_static("retry-after-ms"), v));
            }
            (reply, Vec::new())
        }
        Fault::Redirect { status, location } => {
            let below = request
                .path
                .strip_prefix("/client/v4")
                .unwrap_or(&request.path);
            let query = request
                .query
                .as_deref()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            let reply = Reply {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::TEMPORARY_REDIRECT),
                body: Vec::new(),
                retry_after: None,
                extra_headers: vec![(header::LOCATION, format!("{location}{below}{query}"))],
            };
            (reply, Vec::new())
        }
        Fault::PartialApply => {
            let first = Request {
                ids: request
                    .ids
                    .as_ref()
                    .map(|ids| ids.iter().take(1).cloned().collect())
                    .map_err(Clone::clone),
                ..request.clone()
            };
            let (_, affected) = shared.process(&first, PageShape::Normal);
            (Reply::ok(Value::Null, None), affected)
        }
        Fault::Noop { status: 204 } => (Reply::no_content(), Vec::new()),
        Fault::Noop { status } => {
            let mut reply = Reply::ok(Value::Null, None);
            reply.status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            (reply, Vec::new())
        }
        Fault::NoopWithErrors => {
            let errors: Vec<Value> = request
                .ids
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(
                    |id| serde_json::json!({"code": 1003, "message": format!("{id}: not deleted")}),
                )
                .collect();
            let reply = Reply::ok(Value::Null, None)
                .edit_envelope(|env| env["errors"] = Value::Array(errors));
            (reply, Vec::new())
        }
        Fault::Empty204 => {
            let (reply, affected) = shared.process(request, PageShape::Normal);
            if reply.status.is_success() {
                (Reply::no_content(), affected)
            } else {
                (reply, affected)
            }
        }
        Fault::ErrorsNull => {
            let (reply, affected) = shared.process(request, PageShape::Normal);
            let reply = reply.edit_envelope(|env| {
                env["errors"] = Value::Null;
                env["messages"] = Value::Null;
            });
            (reply, affected)
        }
        Fault::PartialErrors => {
            let (reply, affected) = shared.process(request, PageShape::Normal);
            let reply = reply.edit_envelope(|env| {
                env["errors"] = serde_json::json!([
                    {"code": 1020, "message": "partial results: shard 2 unavailable"}
                ]);
            });
            (reply, affected)
        }
        Fault::ApplyThenStatus(status) => {
            let (_, affected) = shared.process(request, PageShape::Normal);
            (Reply::injected(status, None), affected)
        }
        Fault::Html(status) => {
            let reply = Reply {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND),
                body: b"<html><body><h1>Not Found</h1>nginx</body></html>".to_vec(),
                retry_after: None,
                extra_headers: vec![(header::CONTENT_TYPE, "text/html".to_owned())],
            };
            (reply, Vec::new())
        }
        // Served by `handle` itself.
        Fault::Status { .. }
        | Fault::ConnectionReset
        | Fault::Delay(_)
        | Fault::MalformedJson
        | Fault::SuccessFalse
        | Fault::WrongAuth
        | Fault::RepeatCursor
        | Fault::ShortPageWithCursor
        | Fault::DuplicateIds => shared.process(request, PageShape::Normal),
    }
}

/// `result_info` of a page-numbered listing.
fn page_info(page: usize, per_page: usize, count: usize, total_count: usize) -> ResultInfo {
    ResultInfo::Page {
        page,
        per_page,
        count,
        total_count,
        total_pages: total_count.div_ceil(per_page),
    }
}

/// A `page` parameter: a whole number from 1.
fn page_number(value: &str) -> Result<usize, Reply> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            Reply::bad_request(format!("Invalid page {value:?}: use a whole number from 1"))
        })
}

/// A `per_page` parameter of a listing that refuses (400, code 1002) sizes outside `min..=max`.
fn bounded_per_page(value: &str, min: usize, max: usize) -> Result<usize, Reply> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            Reply::bad_request(format!(
                "Invalid per_page {value:?}: per_page must be between {min} and {max}"
            ))
        })
}

/// The answer for a zone the fake does not serve: Cloudflare's routing error.
fn unknown_zone(request: &Request) -> Reply {
    Reply::error(
        StatusCode::NOT_FOUND,
        code::BAD_ACCOUNT,
        format!(
            "Could not route to {}, perhaps your object identifier is invalid?",
            request.path
        ),
    )
}

/// Turns `reply` into HTTP 500 with `success: false` and an error, keeping its `result`.
fn success_false(reply: Reply) -> Reply {
    let mut envelope: Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    envelope["success"] = Value::Bool(false);
    envelope["errors"] =
        serde_json::json!([{"code": code::INTERNAL, "message": "Internal server error"}]);
    Reply {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        body: serde_json::to_vec(&envelope).unwrap_or_default(),
        retry_after: None,
        extra_headers: Vec::new(),
    }
}

impl Shared {
    /// Counts the request and, for a mutation, logs it before anything can fail; returns the
    /// log index to complete later.
    fn receive(&self, request: &Request, method: &Method) -> Option<usize> {
        let mut log = lock(&self.log);
        let counts = &mut log.counts;
        counts.total += 1;
        match request.op {
            Op::List => counts.list_pages += 1,
            Op::GetOne => counts.get_one += 1,
            Op::DeleteOne => counts.delete_one += 1,
            Op::BulkDelete => counts.bulk_delete += 1,
            Op::Revoke => counts.revoke += 1,
            Op::Unrevoke => counts.unrevoke += 1,
            Op::DeprecatedRevoke => counts.deprecated_revoke += 1,
            Op::ListServiceTokens => counts.list_service_tokens += 1,
            Op::DeleteServiceToken => counts.delete_service_token += 1,
            Op::ListAccountTokens => counts.list_account_tokens += 1,
            Op::DeleteAccountToken => counts.delete_account_token += 1,
            Op::VerifyAccountToken | Op::VerifyUserToken => counts.verify_token += 1,
            Op::ListClientCertificates => counts.list_client_certificates += 1,
            Op::RevokeClientCertificate => counts.revoke_client_certificate += 1,
            Op::ReactivateClientCertificate => counts.reactivate_client_certificate += 1,
        }
        let kind = request.op.mutation_kind()?;
        let index = log.mutations.len();
        log.mutations.push(MutationRecord {
            seq: index as u64 + 1,
            method: method.to_string(),
            path: request.path.clone(),
            kind,
            ids: request.ids.clone().unwrap_or_default(),
            affected: Vec::new(),
            status: 0,
            applied: false,
            rate_limited: false,
            received_at: self.clock.now(),
        });
        Some(index)
    }

    /// The rate limiter's word on a request (`None` without a limiter). A request with the
    /// accepted credentials (token or global key: one user, one quota) uses a unit or is
    /// refused; any other only learns the state, so its answer can carry the headers.
    fn admission(
        &self,
        authorization: Option<&str>,
        auth_email: Option<&str>,
        auth_key: Option<&str>,
    ) -> Option<Admission> {
        let limiter = self.rate_limit.as_ref()?;
        Some(
            if self.accepts(authorization, auth_email, auth_key).is_some() {
                limiter.admit()
            } else {
                limiter.peek()
            },
        )
    }

    /// Logs a refusal by the rate limiter: counted apart from faults, and a mutation's record
    /// says 429, not applied, rate limited.
    fn refused(&self, record: Option<usize>) {
        let mut log = lock(&self.log);
        log.counts.rate_limited += 1;
        if let Some(record) = record.and_then(|index| log.mutations.get_mut(index)) {
            record.status = StatusCode::TOO_MANY_REQUESTS.as_u16();
            record.applied = false;
            record.rate_limited = true;
        }
    }

    /// The HTTP answer, with the rate limit headers when the fake sends them.
    fn respond(&self, reply: Reply, admission: Option<Admission>) -> Response {
        let mut response = reply.into_response();
        if let (Some(limiter), Some(admission)) = (&self.rate_limit, admission) {
            if limiter.config.headers {
                let headers = response.headers_mut();
                for (name, value) in [
                    ("ratelimit", admission.header()),
                    ("ratelimit-policy", limiter.config.policy_header()),
                ] {
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        headers.insert(header::HeaderName::from_static(name), value);
                    }
                }
            }
        }
        response
    }

    fn finish(&self, index: usize, status: u16, affected: Vec<String>) {
        if let Some(record) = lock(&self.log).mutations.get_mut(index) {
            record.status = status;
            record.applied = !affected.is_empty();
            record.affected = affected;
        }
    }

    /// The Bearer token, else the global key (when the fake has one); `None` if neither holds.
    fn credential(&self, request: &Request) -> Option<Credential> {
        self.accepts(
            request.authorization.as_deref(),
            request.auth_email.as_deref(),
            request.auth_key.as_deref(),
        )
    }

    /// [`Shared::credential`] from the raw header values.
    fn accepts(
        &self,
        authorization: Option<&str>,
        auth_email: Option<&str>,
        auth_key: Option<&str>,
    ) -> Option<Credential> {
        let token = lock(&self.token);
        let bearer = authorization
            .and_then(|value| value.strip_prefix("Bearer "))
            .is_some_and(|given| given == token.as_str());
        let global_key = self.global_key.as_ref().is_some_and(|(email, key)| {
            auth_email == Some(email.as_str()) && auth_key == Some(key.as_str())
        });
        if bearer {
            Some(Credential::Token)
        } else if global_key {
            Some(Credential::GlobalKey)
        } else {
            None
        }
    }

    /// Serves the request as the real API would; returns the ids whose state changed.
    fn process(&self, request: &Request, shape: PageShape) -> (Reply, Vec<String>) {
        let Some(credential) = self.credential(request) else {
            return (Reply::authentication(), Vec::new());
        };
        let account_scoped = !request.op.is_zone_scoped() && request.op != Op::VerifyUserToken;
        if account_scoped && request.account != self.account_id {
            let message = format!(
                "Could not route to {}, perhaps your object identifier is invalid?",
                request.path
            );
            return (
                Reply::error(StatusCode::NOT_FOUND, code::BAD_ACCOUNT, message),
                Vec::new(),
            );
        }
        let params = match &request.params {
            Ok(params) => params,
            Err(message) => return (Reply::bad_request(message.clone()), Vec::new()),
        };
        let ids = match &request.ids {
            Ok(ids) => ids.as_slice(),
            Err(message) => return (Reply::bad_request(message.clone()), Vec::new()),
        };
        let now = self.clock.now();
        // Each arm takes only the lock it needs, so the two stores never nest.
        match request.op {
            Op::List => match self.page_query(params) {
                Ok(query) => {
                    let store = lock(&self.store);
                    let page = store.page(&query, shape);
                    let info = ResultInfo::Cursor {
                        count: page.items.len(),
                        cursor: page.cursor,
                        per_page: query.per_page,
                    };
                    (Reply::ok(&page.items, Some(info)), Vec::new())
                }
                Err(message) => (Reply::bad_request(message), Vec::new()),
            },
            Op::GetOne => match lock(&self.store).get(&ids[0]) {
                Some(item) => (Reply::ok(item, None), Vec::new()),
                None => (Reply::not_found(), Vec::new()),
            },
            Op::DeleteOne => {
                if lock(&self.store).remove(&ids[0]) {
                    (Reply::ok(Value::Null, None), ids.to_vec())
                } else {
                    (Reply::not_found(), Vec::new())
                }
            }
            Op::ListServiceTokens => (self.token_page(params, shape), Vec::new()),
            Op::DeleteServiceToken => self.delete_token(&ids[0]),
            Op::ListAccountTokens => (self.account_token_page(params, now, shape), Vec::new()),
            Op::DeleteAccountToken => {
                if lock(&self.account_tokens).delete(&ids[0]) {
                    (Reply::ok(json!({"id": ids[0]}), None), ids.to_vec())
                } else {
                    let reply =
                        Reply::error(StatusCode::NOT_FOUND, code::NOT_FOUND, "Token not found");
                    (reply, Vec::new())
                }
            }
            Op::VerifyAccountToken | Op::VerifyUserToken => {
                (self.verify(request.op, credential), Vec::new())
            }
            Op::ListClientCertificates => (
                self.certificate_page(request, params, now, shape),
                Vec::new(),
            ),
            Op::RevokeClientCertificate => self.revoke_certificate(request, &ids[0], now),
            Op::ReactivateClientCertificate => self.reactivate_certificate(request, &ids[0], now),
            Op::BulkDelete | Op::Revoke | Op::Unrevoke | Op::DeprecatedRevoke => {
                let max = if request.op == Op::DeprecatedRevoke {
                    DEPRECATED_REVOKE_MAX_IDS
                } else {
                    self.max_bulk_ids
                };
                if ids.is_empty() {
                    return (
                        Reply::bad_request("No registration ids given: pass at least one id"),
                        Vec::new(),
                    );
                }
                if ids.len() > max {
                    let message = format!(
                        "Too many ids: {} given, at most {max} per request",
                        ids.len()
                    );
                    return (Reply::bad_request(message), Vec::new());
                }
                // Ids that do not exist are skipped without an error, so retrying a bulk call
                // that already succeeded is harmless; `affected` tells what really changed.
                let mut store = lock(&self.store);
                let affected = ids
                    .iter()
                    .filter(|id| match request.op {
                        Op::BulkDelete => store.remove(id),
                        Op::Unrevoke => store.unrevoke(id, now),
                        _ => store.revoke(id, now),
                    })
                    .cloned()
                    .collect();
                (Reply::ok(Value::Null, None), affected)
            }
        }
    }

    /// A read's reply as it would be served, or a mutation's success reply without applying
    /// it: the material `MalformedJson` and `SuccessFalse` bend.
    fn read_only(&self, request: &Request) -> Reply {
        if request.op.is_read() {
            self.process(request, PageShape::Normal).0
        } else {
            Reply::ok(Value::Null, None)
        }
    }

    /// `tokens/verify` as the account (`Op::VerifyAccountToken`) or the user: the own token if
    /// it has that owner, else 401 code 1000; under the global key 400 code 6003.
    fn verify(&self, op: Op, credential: Credential) -> Reply {
        if credential == Credential::GlobalKey {
            return Reply::error(
                StatusCode::BAD_REQUEST,
                code::INVALID_HEADERS,
                "Invalid request headers",
            );
        }
        let asked = match op {
            Op::VerifyAccountToken => TokenOwner::Account,
            _ => TokenOwner::User,
        };
        if self.own_token.owner == asked {
            Reply::ok(json!({"id": self.own_token.id, "status": "active"}), None)
        } else {
            Reply::error(
                StatusCode::UNAUTHORIZED,
                code::INVALID_API_TOKEN,
                "Invalid API Token",
            )
        }
    }

    /// One page of account API tokens (see the `account_tokens` module for what is listed).
    fn account_token_page(
        &self,
        params: &[(String, String)],
        now: DateTime<Utc>,
        shape: PageShape,
    ) -> Reply {
        let mut query = TokenQuery {
            page: 1,
            per_page: ACCOUNT_TOKENS_DEFAULT_PER_PAGE,
            include_expired: false,
            descending: false,
        };
        for (name, value) in params {
            match name.as_str() {
                "page" => match page_number(value) {
                    Ok(n) => query.page = n,
                    Err(reply) => return reply,
                },
                "per_page" => match bounded_per_page(
                    value,
                    ACCOUNT_TOKENS_MIN_PER_PAGE,
                    ACCOUNT_TOKENS_MAX_PER_PAGE,
                ) {
                    Ok(n) => query.per_page = n,
                    Err(reply) => return reply,
                },
                "include_expired" => match value.as_str() {
                    "true" => query.include_expired = true,
                    "false" => query.include_expired = false,
                    _ => {
                        return Reply::bad_request(format!(
                            "Invalid include_expired {value:?}: use true or false"
                        ))
                    }
                },
                "direction" => match value.as_str() {
                    "asc" => query.descending = false,
                    "desc" => query.descending = true,
                    _ => {
                        return Reply::bad_request(format!(
                            "Invalid direction {value:?}: use asc or desc"
                        ))
                    }
                },
                _ => {}
            }
        }
        let only = self
            .own_token
            .lists_self_only
            .then_some(self.own_token.id.as_str());
        let tokens = lock(&self.account_tokens);
        let served = tokens.page(&query, now, only, shape);
        Reply::ok(
            &served.items,
            Some(page_info(
                query.page,
                query.per_page,
                served.items.len(),
                served.total_count,
            )),
        )
    }

    /// One page of a zone's client certificates, revocations settled first.
    fn certificate_page(
        &self,
        request: &Request,
        params: &[(String, String)],
        now: DateTime<Utc>,
        shape: PageShape,
    ) -> Reply {
        let mut query = CertificateQuery {
            status: None,
            page: 1,
            per_page: CERTIFICATES_DEFAULT_PER_PAGE,
        };
        for (name, value) in params {
            match name.as_str() {
                "status" => match CertificateQuery::parse_status(value) {
                    Some(status) => query.status = status,
                    None => {
                        return Reply::bad_request(format!(
                            "Invalid status {value:?}: use all, active, pending_reactivation, \
                             pending_revocation or revoked"
                        ))
                    }
                },
                "page" => match page_number(value) {
                    Ok(n) => query.page = n,
                    Err(reply) => return reply,
                },
                "per_page" => match bounded_per_page(
                    value,
                    CERTIFICATES_MIN_PER_PAGE,
                    CERTIFICATES_MAX_PER_PAGE,
                ) {
                    Ok(n) => query.per_page = n,
                    Err(reply) => return reply,
                },
                // limit, offset: accepted and ignored, the fake pages by number only.
                _ => {}
            }
        }
        let mut certificates = lock(&self.certificates);
        certificates.settle(now);
        match certificates.page(&request.zone, &query, shape) {
            Some(served) => Reply::ok(
                &served.items,
                Some(page_info(
                    query.page,
                    query.per_page,
                    served.items.len(),
                    served.total_count,
                )),
            ),
            None => unknown_zone(request),
        }
    }

    /// Revokes a certificate: answers it `pending_revocation`; one already revoked (or under
    /// way) is answered unchanged and changes nothing.
    fn revoke_certificate(
        &self,
        request: &Request,
        id: &str,
        now: DateTime<Utc>,
    ) -> (Reply, Vec<String>) {
        let mut certificates = lock(&self.certificates);
        if !certificates.has_zone(&request.zone) {
            return (unknown_zone(request), Vec::new());
        }
        certificates.settle(now);
        match certificates.revoke(&request.zone, id, now) {
            Revocation::Revoked(cert) => (Reply::ok(cert, None), vec![id.to_owned()]),
            Revocation::AlreadyRevoked(cert) => (Reply::ok(cert, None), Vec::new()),
            Revocation::NotFound => (
                Reply::error(
                    StatusCode::NOT_FOUND,
                    code::NOT_FOUND,
                    "Client certificate not found",
                ),
                Vec::new(),
            ),
        }
    }

    /// `PATCH` of a certificate: reactivates it while its revocation is pending; one already
    /// `revoked` is refused (400), one not revoked is answered unchanged.
    fn reactivate_certificate(
        &self,
        request: &Request,
        id: &str,
        now: DateTime<Utc>,
    ) -> (Reply, Vec<String>) {
        let mut certificates = lock(&self.certificates);
        if !certificates.has_zone(&request.zone) {
            return (unknown_zone(request), Vec::new());
        }
        certificates.settle(now);
        match certificates.reactivate(&request.zone, id) {
            Reactivation::Reactivated(cert) => (Reply::ok(cert, None), vec![id.to_owned()]),
            Reactivation::NotRevoked(cert) => (Reply::ok(cert, None), Vec::new()),
            Reactivation::Revoked => (
                Reply::error(
                    StatusCode::BAD_REQUEST,
                    code::CERTIFICATE_REVOKED,
                    "Client certificate is revoked and cannot be reactivated",
                ),
                Vec::new(),
            ),
            Reactivation::NotFound => (
                Reply::error(
                    StatusCode::NOT_FOUND,
                    code::NOT_FOUND,
                    "Client certificate not found",
                ),
                Vec::new(),
            ),
        }
    }

    /// One page of service tokens with page-pagination `result_info`; an empty page past the
    /// end. `name` and `search` filters are accepted and ignored: the fake lists every token.
    fn token_page(&self, params: &[(String, String)], shape: PageShape) -> Reply {
        let mut page = 1;
        let mut per_page = SERVICE_TOKENS_DEFAULT_PER_PAGE;
        for (name, value) in params {
            let number = || value.parse::<usize>().ok().filter(|n| *n > 0);
            match name.as_str() {
                "page" => match number() {
                    Some(n) => page = n,
                    None => {
                        return Reply::bad_request(format!(
                            "Invalid page {value:?}: use a whole number from 1"
                        ))
                    }
                },
                "per_page" => match number() {
                    Some(n) => per_page = n.min(SERVICE_TOKENS_MAX_PER_PAGE),
                    None => {
                        return Reply::bad_request(format!(
                            "Invalid per_page {value:?}: use a positive whole number"
                        ))
                    }
                },
                _ => {}
            }
        }
        let tokens = lock(&self.tokens);
        let served = tokens.page(page, per_page, shape);
        let info = page_info(page, per_page, served.items.len(), served.total_count);
        Reply::ok(&served.items, Some(info))
    }

    /// Deletes a service token unless it is in use; answers the deleted token.
    fn delete_token(&self, id: &str) -> (Reply, Vec<String>) {
        match lock(&self.tokens).delete(id) {
            Deletion::Deleted(token) => (Reply::ok(token, None), vec![id.to_owned()]),
            Deletion::InUse => (
                Reply::error(
                    StatusCode::BAD_REQUEST,
                    code::SERVICE_TOKEN_IN_USE,
                    SERVICE_TOKEN_IN_USE_MESSAGE,
                ),
                Vec::new(),
            ),
            Deletion::NotFound => (
                Reply::error(
                    StatusCode::NOT_FOUND,
                    code::NOT_FOUND,
                    "Service token not found",
                ),
                Vec::new(),
            ),
        }
    }

    fn page_query(&self, params: &[(String, String)]) -> Result<PageQuery, String> {
        let mut query = PageQuery {
            status: StatusFilter::Active,
            per_page: DEFAULT_PER_PAGE.min(self.max_per_page),
            cursor: Cursor::START,
            ids: None,
        };
        for (name, value) in params {
            match name.as_str() {
                "status" => {
                    query.status = StatusFilter::parse(value).ok_or_else(|| {
                        format!("Invalid status {value:?}: use active, revoked or all")
                    })?;
                }
                "per_page" => match value.parse::<usize>() {
                    Ok(n) if n > 0 => query.per_page = n.min(self.max_per_page),
                    _ => {
                        return Err(format!(
                            "Invalid per_page {value:?}: use a positive whole number"
                        ))
                    }
                },
                "cursor" => {
                    query.cursor = Cursor::decode(value).ok_or_else(|| {
                        "Invalid cursor: pass result_info.cursor unchanged".to_owned()
                    })?;
                }
                "id" => {
                    query
                        .ids
                        .get_or_insert_with(BTreeSet::new)
                        .insert(Key::parse(value));
                }
                // sort_by, sort_order, seen_before, search, ...: accepted and ignored, the fake
                // always lists by ascending id.
                _ => {}
            }
        }
        Ok(query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_cover_the_documented_paths() {
        let base = "/client/v4/accounts/acc/devices";
        let cases = [
            (Method::GET, format!("{base}/registrations"), Some(Op::List)),
            (
                Method::DELETE,
                format!("{base}/registrations"),
                Some(Op::BulkDelete),
            ),
            (
                Method::POST,
                format!("{base}/registrations/revoke"),
                Some(Op::Revoke),
            ),
            (
                Method::POST,
                format!("{base}/registrations/unrevoke"),
                Some(Op::Unrevoke),
            ),
            (
                Method::GET,
                format!("{base}/registrations/r-1"),
                Some(Op::GetOne),
            ),
            (
                Method::DELETE,
                format!("{base}/registrations/r-1"),
                Some(Op::DeleteOne),
            ),
            (
                Method::POST,
                format!("{base}/revoke"),
                Some(Op::DeprecatedRevoke),
            ),
            (
                Method::GET,
                "/client/v4/accounts/acc/access/service_tokens".to_owned(),
                Some(Op::ListServiceTokens),
            ),
            (
                Method::DELETE,
                "/client/v4/accounts/acc/access/service_tokens/t-1".to_owned(),
                Some(Op::DeleteServiceToken),
            ),
            (
                Method::DELETE,
                "/client/v4/accounts/acc/access/service_tokens/".to_owned(),
                None,
            ),
            (
                Method::GET,
                "/client/v4/accounts/acc/tokens".to_owned(),
                Some(Op::ListAccountTokens),
            ),
            (
                Method::GET,
                "/client/v4/accounts/acc/tokens/verify".to_owned(),
                Some(Op::VerifyAccountToken),
            ),
            (
                Method::DELETE,
                "/client/v4/accounts/acc/tokens/0123".to_owned(),
                Some(Op::DeleteAccountToken),
            ),
            (Method::GET, format!("{base}/registrations/"), None),
            (Method::GET, "/client/v4/zones/z/devices".to_owned(), None),
        ];
        for (method, path, expected) in cases {
            let got = match route(&method, &path) {
                Route::Api { op, account, .. } => {
                    assert_eq!(account, "acc");
                    Some(op)
                }
                _ => None,
            };
            assert_eq!(got, expected, "{method} {path}");
        }
        assert!(matches!(
            route(&Method::PUT, &format!("{base}/registrations")),
            Route::WrongMethod
        ));
        assert!(matches!(
            route(
                &Method::POST,
                "/client/v4/accounts/acc/access/service_tokens/t-1"
            ),
            Route::WrongMethod
        ));
    }

    #[test]
    fn user_and_zone_paths_route_with_their_zone() {
        let api = |method: Method, path: &str| match route(&method, path) {
            Route::Api { op, zone, id, .. } => Some((op, zone, id)),
            _ => None,
        };
        assert_eq!(
            api(Method::GET, "/client/v4/user/tokens/verify"),
            Some((Op::VerifyUserToken, String::new(), String::new()))
        );
        assert_eq!(
            api(Method::GET, "/client/v4/zones/z1/client_certificates"),
            Some((Op::ListClientCertificates, "z1".to_owned(), String::new()))
        );
        assert_eq!(
            api(
                Method::DELETE,
                "/client/v4/zones/z1/client_certificates/c-1"
            ),
            Some((
                Op::RevokeClientCertificate,
                "z1".to_owned(),
                "c-1".to_owned()
            ))
        );
        assert_eq!(
            api(Method::PATCH, "/client/v4/zones/z1/client_certificates/c-1"),
            Some((
                Op::ReactivateClientCertificate,
                "z1".to_owned(),
                "c-1".to_owned()
            ))
        );
        for (method, path) in [
            (Method::POST, "/client/v4/user/tokens/verify"),
            (Method::PUT, "/client/v4/zones/z1/client_certificates/c-1"),
            (Method::GET, "/client/v4/zones/z1/client_certificates/c-1"),
            (Method::PUT, "/client/v4/accounts/acc/tokens"),
        ] {
            assert!(
                matches!(route(&method, path), Route::WrongMethod),
                "{method} {path}"
            );
        }
        for path in ["/client/v4/user/tokens", "/client/v4/zones/z1/dns_records"] {
            assert!(
                matches!(route(&Method::GET, path), Route::Unknown),
                "{path}"
            );
        }
    }

    #[test]
    fn path_ids_are_percent_decoded() {
        assert_eq!(percent_decode("a%20b%2Fc"), "a b/c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn injected_statuses_use_cloudflare_envelopes() {
        let reply = Reply::injected(429, Some(3));
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["success"], false);
        assert_eq!(body["errors"][0]["code"], code::RATE_LIMITED);
        let response = reply.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }
}
