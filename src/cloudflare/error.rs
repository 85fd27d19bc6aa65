//! Typed failures of Cloudflare API calls. Messages never contain the API token: it only ever
//! travels in a request header, and reqwest errors are reduced to their kind before display.

use std::fmt;

use serde::Deserialize;

/// The endpoint a request went to; also the `endpoint` label of the API metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ListRegistrations,
    /// The registrations among given ids (reconciliation).
    FindRegistrations,
    DeleteRegistration,
    BulkDeleteRegistrations,
    RevokeRegistrations,
}

impl Endpoint {
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::ListRegistrations => "list_registrations",
            Endpoint::FindRegistrations => "find_registrations",
            Endpoint::DeleteRegistration => "delete_registration",
            Endpoint::BulkDeleteRegistrations => "bulk_delete_registrations",
            Endpoint::RevokeRegistrations => "revoke_registrations",
        }
    }

    /// The token permission the call needs, for error hints.
    pub fn permission(self) -> &'static str {
        match self {
            Endpoint::ListRegistrations | Endpoint::FindRegistrations => "Zero Trust Read",
            _ => "Zero Trust Write",
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

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{endpoint}: Cloudflare answered HTTP {status}: {}{}", describe(errors), hint(*endpoint, *status))]
    Api {
        endpoint: Endpoint,
        status: u16,
        errors: Vec<CfErrorDetail>,
    },
    #[error("{endpoint}: {kind} talking to Cloudflare (is the API reachable from here?)")]
    Transport {
        endpoint: Endpoint,
        kind: &'static str,
    },
    #[error("{endpoint}: unreadable response (HTTP {status}): {message}")]
    Decode {
        endpoint: Endpoint,
        status: u16,
        message: String,
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
}

fn describe(errors: &[CfErrorDetail]) -> String {
    if errors.is_empty() {
        return "no error details".to_owned();
    }
    errors
        .iter()
        .map(|e| format!("{} (code {})", e.message, e.code))
        .collect::<Vec<_>>()
        .join("; ")
}

fn hint(endpoint: Endpoint, status: u16) -> String {
    match status {
        401 | 403 => format!(
            " — check the API token: it must be valid for this account and carry the \
             '{}' permission",
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
            ApiError::Api { status, .. } | ApiError::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The first Cloudflare error code and message, for the audit log.
    pub fn cf_error(&self) -> Option<&CfErrorDetail> {
        match self {
            ApiError::Api { errors, .. } => errors.first(),
            _ => None,
        }
    }

    /// Whether the failure concerns the whole run rather than the ids the call named.
    pub fn is_run_wide(&self) -> bool {
        match self {
            ApiError::Api { status, errors, .. } => {
                let routing =
                    errors.is_empty() || errors.iter().any(|e| matches!(e.code, 7000 | 7003));
                matches!(status, 401 | 403 | 429) || *status >= 500 || (*status == 404 && routing)
            }
            _ => true,
        }
    }

    /// Whether the same request may succeed if sent again: rate limits, server errors,
    /// network failures and garbled bodies. Every call zt-janitor makes is idempotent.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Api { status, .. } => *status == 429 || *status >= 500,
            ApiError::Decode { status, .. } => !(400..500).contains(status) || *status == 429,
            ApiError::Transport { .. } => true,
            ApiError::BudgetExhausted { .. } | ApiError::DeadlineExceeded { .. } => false,
        }
    }
}
