//! Typed failures of Cloudflare API calls. Messages never contain the API token: it only ever
//! travels in a request header, and reqwest errors are reduced to their kind, the request's
//! host and path, and their innermost cause before display.

use std::fmt;

use serde::Deserialize;

use crate::resource::Kind;

/// The endpoint a request went to; also the `endpoint` label of the API metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ListRegistrations,
    /// The registrations among given ids (reconciliation).
    FindRegistrations,
    DeleteRegistration,
    BulkDeleteRegistrations,
    RevokeRegistrations,
    /// `POST .../registrations/unrevoke?id=…`: `zt-janitor undo`.
    UnrevokeRegistrations,
    /// Every Access service token, page by page (also what confirms a deletion: the listing
    /// cannot be filtered by id).
    ListServiceTokens,
    DeleteServiceToken,
    /// Every account-owned API token, page by page (also what confirms a deletion).
    ListAccountTokens,
    /// `GET .../tokens/verify` (account-owned) or `/user/tokens/verify`: which token the
    /// janitor itself runs with.
    VerifyAccountToken,
    VerifyUserToken,
    DeleteAccountToken,
    /// One zone's client certificates, page by page (also what confirms a revocation).
    ListClientCertificates,
    RevokeClientCertificate,
    /// `PATCH .../client_certificates/{id}`: reactivates one still `pending_revocation`
    /// (`zt-janitor undo`).
    ReactivateClientCertificate,
}

impl Endpoint {
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::ListRegistrations => "list_registrations",
            Endpoint::FindRegistrations => "find_registrations",
            Endpoint::DeleteRegistration => "delete_registration",
            Endpoint::BulkDeleteRegistrations => "bulk_delete_registrations",
            Endpoint::RevokeRegistrations => "revoke_registrations",
            Endpoint::UnrevokeRegistrations => "unrevoke_registrations",
            Endpoint::ListServiceTokens => "list_service_tokens",
            Endpoint::DeleteServiceToken => "delete_service_token",
            Endpoint::ListAccountTokens => "list_account_tokens",
            Endpoint::VerifyAccountToken => "verify_account_token",
            Endpoint::VerifyUserToken => "verify_user_token",
            Endpoint::DeleteAccountToken => "delete_account_token",
            Endpoint::ListClientCertificates => "list_client_certificates",
            Endpoint::RevokeClientCertificate => "revoke_client_certificate",
            Endpoint::ReactivateClientCertificate => "reactivate_client_certificate",
        }
    }

    /// The kind of object the call lists or acts on.
    pub fn kind(self) -> Kind {
        match self {
            Endpoint::ListRegistrations
            | Endpoint::FindRegistrations
            | Endpoint::DeleteRegistration
            | Endpoint::BulkDeleteRegistrations
            | Endpoint::RevokeRegistrations
            | Endpoint::UnrevokeRegistrations => Kind::DeviceRegistration,
            Endpoint::ListServiceTokens | Endpoint::DeleteServiceToken => Kind::AccessServiceToken,
            Endpoint::ListAccountTokens
            | Endpoint::VerifyAccountToken
            | Endpoint::VerifyUserToken
            | Endpoint::DeleteAccountToken => Kind::AccountApiToken,
            Endpoint::ListClientCertificates
            | Endpoint::RevokeClientCertificate
            | Endpoint::ReactivateClientCertificate => Kind::ClientCertificate,
        }
    }

    /// Whether the call reads a listing (names no object to act on).
    pub fn is_listing(self) -> bool {
        matches!(
            self,
            Endpoint::ListRegistrations
                | Endpoint::FindRegistrations
                | Endpoint::ListServiceTokens
                | Endpoint::ListAccountTokens
                | Endpoint::VerifyAccountToken
                | Endpoint::VerifyUserToken
                | Endpoint::ListClientCertificates
        )
    }

    /// The token permission the call needs, for error hints.
    pub fn permission(self) -> &'static str {
        if self.is_listing() {
            self.kind().read_permission()
        } else {
            self.kind().write_permission()
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// One entry of the envelope's `errors` array.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CfErrorDetail {
    #[serde(default)]
    pub code: i64,
    #[serde(default)]
    pub message: String,
}

/// Cloudflare's routing errors: the request reached no handler (7000 "No route for that URI",
/// 7003 "Could not route to ..."). A 404 carrying one says nothing about the object named.
pub const ROUTING_ERROR_CODES: [i64; 2] = [7000, 7003];

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// An answer with an error status (or `success: false`). `envelope` is false when the body
    /// was not a Cloudflare envelope (HTML from a proxy, empty, not JSON).
    #[error("{endpoint}: {}", describe_api(*endpoint, *status, errors, *envelope))]
    Api {
        endpoint: Endpoint,
        status: u16,
        errors: Vec<CfErrorDetail>,
        envelope: bool,
    },
    #[error(
        "{endpoint}: {kind} talking to Cloudflare at {at}{}; is the API reachable from here \
         (DNS, firewall, proxy), and is [cloudflare] base_url right?",
        if cause.is_empty() { String::new() } else { format!(": {cause}") }
    )]
    Transport {
        endpoint: Endpoint,
        kind: &'static str,
        /// Host, port and path of the request: never its query, never a credential.
        at: String,
        /// The innermost cause (e.g. "Connection refused (os error 111)"), escaped.
        cause: String,
    },
    #[error("{endpoint}: unreadable response (HTTP {status}): {message}")]
    Decode {
        endpoint: Endpoint,
        status: u16,
        message: String,
    },
    /// `success: true` with a non-empty `errors` array: the answer covers only part of what was
    /// asked (a listing missing a shard, a bulk call that did not act on every id).
    #[error(
        "{endpoint}: Cloudflare answered HTTP {status} with success but also with errors: {}; \
         the answer is partial and is not trusted",
        describe(errors)
    )]
    PartialResult {
        endpoint: Endpoint,
        status: u16,
        errors: Vec<CfErrorDetail>,
    },
    /// A 3xx. Redirects are never followed: the token would travel with the request to a host
    /// nobody configured.
    #[error(
        "{endpoint}: the API answered HTTP {status}, a redirect to {}; API calls never follow \
         redirects, so nothing was sent there. Check [cloudflare] base_url and any proxy in \
         front of the API",
        location_host.as_deref().unwrap_or("an unreadable location")
    )]
    Redirect {
        endpoint: Endpoint,
        status: u16,
        /// Host (and port, if not the default) of the `Location`, never its path, query or
        /// credentials.
        location_host: Option<String>,
    },
    #[error(
        "{endpoint}: the request budget of {limit} API calls per cycle is spent; \
         raise [cloudflare] max_requests_per_cycle if this account really needs more"
    )]
    BudgetExhausted { endpoint: Endpoint, limit: u32 },
    #[error(
        "{endpoint}: the cycle deadline passed before the request could be sent; \
         raise [cloudflare] cycle_deadline_secs or look at the API latency metrics"
    )]
    DeadlineExceeded { endpoint: Endpoint },
    /// The wait before the next attempt would end after the cycle deadline, so the call gives
    /// up now instead of sleeping into it.
    #[error(
        "{endpoint}: the next attempt would have to wait {wait_secs} s, past the cycle deadline \
         ({left_secs} s left); gave up after: {last}"
    )]
    WaitPastDeadline {
        endpoint: Endpoint,
        wait_secs: u64,
        left_secs: u64,
        last: Box<ApiError>,
    },
    /// Cloudflare's rate-limit window has no quota left for the janitor's share, and the next
    /// one opens after the cycle deadline: the call is not sent.
    #[error(
        "{endpoint}: the janitor's share of Cloudflare's rate-limit quota is spent for this \
         window, and the next call could go only in {wait_secs} s, past the cycle deadline \
         ({left_secs} s left); the rest waits for the next cycle. If cycles this large are \
         normal, raise [cloudflare] cycle_deadline_secs (or rate_share, if other users of the \
         token need less)"
    )]
    QuotaPastDeadline {
        endpoint: Endpoint,
        wait_secs: u64,
        left_secs: u64,
    },
    /// A page-numbered listing contradicted itself (a page shorter than its size before the
    /// last, a page number or total that changed between pages): objects came or went while it
    /// was read, so it may have skipped some.
    #[error(
        "{endpoint}: the listing is inconsistent ({message}); objects may have been skipped, \
         so it is not trusted"
    )]
    InconsistentListing { endpoint: Endpoint, message: String },
    /// A stop request cut a retry wait short; the call was not sent again.
    #[error("{endpoint}: shutdown requested while waiting to retry; the call was not sent again")]
    Stopped { endpoint: Endpoint },
}

fn describe_api(
    endpoint: Endpoint,
    status: u16,
    errors: &[CfErrorDetail],
    envelope: bool,
) -> String {
    if !envelope {
        return format!(
            "HTTP {status} without a Cloudflare error envelope (not Cloudflare's JSON: a proxy \
             or a wrong [cloudflare] base_url?){}",
            hint(endpoint, status, &[])
        );
    }
    format!(
        "Cloudflare answered HTTP {status}: {}{}",
        describe(errors),
        hint(endpoint, status, errors)
    )
}

fn describe(errors: &[CfErrorDetail]) -> String {
    if errors.is_empty() {
        return "no error details".to_owned();
    }
    errors
        .iter()
        // The message is the server's text and reaches logs and terminals: control
        // characters in it must not forge log lines.
        .map(|e| format!("{} (code {})", crate::report::escape(&e.message), e.code))
        .collect::<Vec<_>>()
        .join("; ")
}

fn hint(endpoint: Endpoint, status: u16, errors: &[CfErrorDetail]) -> String {
    if errors.iter().any(CfErrorDetail::is_routing) {
        // What Cloudflare answers for an account (or zone) id it cannot route to.
        let ids = match endpoint.kind() {
            Kind::ClientCertificate => "[cloudflare] account_id and zone_ids name",
            _ => "[cloudflare] account_id names",
        };
        return format!(
            " — Cloudflare has no such route: check that {ids} your account (32 hex \
             characters, in the dashboard's URL) and that [cloudflare] base_url is the API's"
        );
    }
    match status {
        401 | 403 => format!(
            " — check the API token: it must be valid for this account and carry the \
             '{}' permission, and [cloudflare] account_id must be the account the token \
             belongs to",
            endpoint.permission()
        ),
        429 => " — rate limited by Cloudflare; lower the schedule frequency or \
                [cloudflare] max_requests_per_cycle"
            .to_owned(),
        _ => String::new(),
    }
}

impl ApiError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Api { status, .. }
            | ApiError::Decode { status, .. }
            | ApiError::PartialResult { status, .. }
            | ApiError::Redirect { status, .. } => Some(*status),
            ApiError::WaitPastDeadline { last, .. } => last.status(),
            _ => None,
        }
    }

    /// The first Cloudflare error code and message, for the audit log.
    pub fn cf_error(&self) -> Option<&CfErrorDetail> {
        match self {
            ApiError::Api { errors, .. } | ApiError::PartialResult { errors, .. } => errors.first(),
            ApiError::WaitPastDeadline { last, .. } => last.cf_error(),
            _ => None,
        }
    }

    /// Whether the same request may succeed if sent again: rate limits, server errors,
    /// network failures and garbled bodies, and a partial listing. Every call zt-janitor
    /// makes is idempotent.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Api { status, .. } => *status == 429 || *status >= 500,
            ApiError::Decode { status, .. } => !(400..500).contains(status) || *status == 429,
            ApiError::Transport { .. } => true,
            // A shard missing now may be back in a moment; a mutation's answer stands.
            ApiError::PartialResult { endpoint, .. } => endpoint.is_listing(),
            ApiError::Redirect { .. }
            | ApiError::InconsistentListing { .. }
            | ApiError::BudgetExhausted { .. }
            | ApiError::DeadlineExceeded { .. }
            | ApiError::WaitPastDeadline { .. }
            | ApiError::QuotaPastDeadline { .. }
            | ApiError::Stopped { .. } => false,
        }
    }

    /// Whether the server may have acted on a call that ended this way: it gave no
    /// trustworthy answer (a server error other than 429, a transport failure or timeout, a
    /// garbled body). A later 404 for the same call may then be this run's own deletion.
    pub fn leaves_outcome_unknown(&self) -> bool {
        match self {
            ApiError::Api { status, .. } => *status >= 500,
            ApiError::Decode { .. } | ApiError::Transport { .. } => true,
            _ => false,
        }
    }

    /// Whether the failure concerns the whole run rather than the ids the call named: the
    /// token, the rate limit, a server or network failing after retries, an answer that is
    /// not Cloudflare's (no envelope, a routing error, a redirect), the budget, the deadline, a
    /// stop, and any failure of a listing. False for other 4xx answered with a Cloudflare
    /// envelope (400 "cannot be deleted", 409, 422, a 404 on a bulk call...).
    pub fn is_run_wide(&self) -> bool {
        match self {
            ApiError::Api {
                endpoint,
                status,
                errors,
                envelope,
            } => {
                endpoint.is_listing()
                    || !envelope
                    || matches!(status, 401 | 403 | 429)
                    || *status >= 500
                    || errors.iter().any(CfErrorDetail::is_routing)
            }
            ApiError::PartialResult { endpoint, .. } => endpoint.is_listing(),
            ApiError::Transport { .. }
            | ApiError::Decode { .. }
            | ApiError::Redirect { .. }
            | ApiError::InconsistentListing { .. }
            | ApiError::BudgetExhausted { .. }
            | ApiError::DeadlineExceeded { .. }
            | ApiError::WaitPastDeadline { .. }
            | ApiError::QuotaPastDeadline { .. }
            | ApiError::Stopped { .. } => true,
        }
    }
}

impl CfErrorDetail {
    /// A routing error: the request reached no handler, so it says nothing about any object.
    pub fn is_routing(&self) -> bool {
        ROUTING_ERROR_CODES.contains(&self.code)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An API error with these codes, each with a placeholder message.
    pub(crate) fn api(endpoint: Endpoint, status: u16, codes: &[i64], envelope: bool) -> ApiError {
        ApiError::Api {
            endpoint,
            status,
            errors: codes
                .iter()
                .map(|&code| CfErrorDetail {
                    code,
                    message: "m".to_owned(),
                })
                .collect(),
            envelope,
        }
    }

    #[test]
    fn a_servers_message_cannot_forge_log_lines() {
        let e = ApiError::Api {
            endpoint: Endpoint::DeleteRegistration,
            status: 400,
            errors: vec![CfErrorDetail {
                code: 2001,
                message: "no\n2026-11-26T00:00:00Z INFO cycle finished outcome=applied\x1b[2J"
                    .to_owned(),
            }],
            envelope: true,
        };
        let shown = e.to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(
            shown.contains("no\\u{a}2026") && shown.contains("\\u{1b}[2J"),
            "{shown}"
        );
    }

    #[test]
    fn run_wide_failures_are_those_not_about_the_ids_named() {
        use Endpoint::*;
        let boxed = |e| Box::new(e);
        // (case, error, run-wide?)
        let cases: Vec<(&str, ApiError, bool)> = vec![
            (
                "401",
                api(BulkDeleteRegistrations, 401, &[10000], true),
                true,
            ),
            ("403", api(DeleteRegistration, 403, &[10000], true), true),
            (
                "429 after retries",
                api(DeleteRegistration, 429, &[971], true),
                true,
            ),
            ("500", api(RevokeRegistrations, 500, &[10002], true), true),
            (
                "502 from a proxy",
                api(DeleteRegistration, 502, &[], false),
                true,
            ),
            (
                "404 routing 7003",
                api(DeleteRegistration, 404, &[7003], true),
                true,
            ),
            (
                "404 routing 7000",
                api(BulkDeleteRegistrations, 404, &[7000], true),
                true,
            ),
            (
                "404 without envelope",
                api(DeleteRegistration, 404, &[], false),
                true,
            ),
            (
                "400 from a proxy",
                api(DeleteRegistration, 400, &[], false),
                true,
            ),
            (
                "400 code 2001",
                api(DeleteRegistration, 400, &[2001], true),
                false,
            ),
            (
                "400 bulk code 2001",
                api(BulkDeleteRegistrations, 400, &[2001], true),
                false,
            ),
            ("409", api(RevokeRegistrations, 409, &[1009], true), false),
            ("422", api(DeleteRegistration, 422, &[1010], true), false),
            (
                "404 on a bulk call",
                api(BulkDeleteRegistrations, 404, &[1001], true),
                false,
            ),
            (
                "listing 400",
                api(ListRegistrations, 400, &[1002], true),
                true,
            ),
            (
                "lookup 404",
                api(FindRegistrations, 404, &[1001], true),
                true,
            ),
            (
                "transport",
                ApiError::Transport {
                    endpoint: DeleteRegistration,
                    kind: "timeout",
                    at: "api.cloudflare.com/client/v4".to_owned(),
                    cause: String::new(),
                },
                true,
            ),
            (
                "decode",
                ApiError::Decode {
                    endpoint: DeleteRegistration,
                    status: 200,
                    message: "eof".into(),
                },
                true,
            ),
            (
                "partial listing",
                ApiError::PartialResult {
                    endpoint: ListRegistrations,
                    status: 200,
                    errors: vec![],
                },
                true,
            ),
            (
                "partial bulk",
                ApiError::PartialResult {
                    endpoint: BulkDeleteRegistrations,
                    status: 200,
                    errors: vec![],
                },
                false,
            ),
            (
                "redirect",
                ApiError::Redirect {
                    endpoint: DeleteRegistration,
                    status: 307,
                    location_host: None,
                },
                true,
            ),
            (
                "budget",
                ApiError::BudgetExhausted {
                    endpoint: DeleteRegistration,
                    limit: 3,
                },
                true,
            ),
            (
                "deadline",
                ApiError::DeadlineExceeded {
                    endpoint: DeleteRegistration,
                },
                true,
            ),
            (
                "wait past deadline",
                ApiError::WaitPastDeadline {
                    endpoint: DeleteRegistration,
                    wait_secs: 120,
                    left_secs: 3,
                    last: boxed(api(DeleteRegistration, 429, &[971], true)),
                },
                true,
            ),
            (
                "quota past deadline",
                ApiError::QuotaPastDeadline {
                    endpoint: ListRegistrations,
                    wait_secs: 200,
                    left_secs: 3,
                },
                true,
            ),
            (
                "stopped",
                ApiError::Stopped {
                    endpoint: BulkDeleteRegistrations,
                },
                true,
            ),
        ];
        for (case, error, expected) in cases {
            assert_eq!(error.is_run_wide(), expected, "{case}: {error}");
        }
    }

    #[test]
    fn a_redirect_names_the_host_only_and_is_not_retried() {
        let e = ApiError::Redirect {
            endpoint: Endpoint::ListRegistrations,
            status: 307,
            location_host: Some("evil.example:8443".to_owned()),
        };
        let text = e.to_string();
        assert!(
            text.contains("HTTP 307") && text.contains("evil.example:8443"),
            "{text}"
        );
        assert!(!e.is_retryable());
        assert_eq!(e.status(), Some(307));
    }
}
