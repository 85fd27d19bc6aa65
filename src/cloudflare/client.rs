//! The Cloudflare API client: the only code in zt-janitor that speaks HTTP to Cloudflare.
//!
//! Every call goes through [`Client::send`], which enforces the per-cycle request budget and
//! deadline, retries what is safe to retry (429, 5xx, network errors, garbled bodies — all calls
//! made here are idempotent: a repeated delete answers 404, which means "gone"), honours
//! `Retry-After`, and records metrics.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rand::Rng;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::error::{ApiError, CfErrorDetail, Endpoint};
use super::model::{AccountId, CursorInfo, RegistrationId};
use crate::config::CloudflareSettings;
use crate::metrics::Metrics;
use crate::secret::ApiToken;

const USER_AGENT: &str = concat!("zt-janitor/", env!("CARGO_PKG_VERSION"));
/// Longest single wait between retries, whatever `Retry-After` asks for.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(120);
const BACKOFF_BASE: Duration = Duration::from_millis(250);

/// One page of the registration listing. Items stay raw JSON so that the audit log can keep
/// the object exactly as listed; the planner parses each one.
#[derive(Debug)]
pub struct RegistrationPage {
    pub items: Vec<Box<RawValue>>,
    pub next_cursor: Option<String>,
}

/// What a delete or revoke call achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MutationOutcome {
    /// A 2xx answer (a 204 with no body included). Only a claim: confirm by listing.
    Done { status: u16 },
    /// A 404 carrying a Cloudflare error envelope whose code is not a routing error, for a
    /// call naming one id. Only a claim: confirm by listing.
    NotFound {
        code: Option<i64>,
        after_ambiguous_attempt: bool,
    },
}

#[derive(Debug, Clone)]
struct RetryPolicy {
    max_retries: u32,
    base: Duration,
    max_wait: Duration,
}

pub struct Client {
    http: reqwest::Client,
    base_url: String,
    account: AccountId,
    token: ApiToken,
    per_page: u32,
    retry: RetryPolicy,
    budget_limit: u32,
    requests_sent: AtomicU32,
    deadline: Instant,
    metrics: Metrics,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct ClientBuildError(String);

#[derive(Deserialize)]
struct Envelope<T> {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    errors: Vec<CfErrorDetail>,
    result: Option<T>,
    #[serde(default)]
    result_info: Option<CursorInfo>,
    #[serde(skip)]
    status: u16,
}

impl Client {
    /// A client for one cycle: the request budget and the deadline start now.
    pub fn new(
        settings: &CloudflareSettings,
        token: ApiToken,
        metrics: Metrics,
    ) -> Result<Self, ClientBuildError> {
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(settings.request_timeout())
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ClientBuildError(e.to_string()))?;
        Ok(Client {
            http,
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            account: settings.account_id.clone(),
            token,
            per_page: settings.per_page,
            retry: RetryPolicy {
                max_retries: settings.max_retries,
                base: BACKOFF_BASE,
                max_wait: MAX_RETRY_WAIT,
            },
            budget_limit: settings.max_requests_per_cycle,
            requests_sent: AtomicU32::new(0),
            deadline: Instant::now() + settings.cycle_deadline(),
            metrics,
        })
    }

    /// Requests sent so far in this cycle, retries included.
    pub fn requests_sent(&self) -> u32 {
        self.requests_sent.load(Ordering::Relaxed)
    }

    fn registrations_url(&self) -> String {
        format!(
            "{}/accounts/{}/devices/registrations",
            self.base_url, self.account
        )
    }

    /// One page of `GET .../devices/registrations?status=all`. `status=all` matters: the API
    /// lists only active registrations by default, which would hide every revoked one.
    pub async fn list_registrations_page(
        &self,
        cursor: Option<&str>,
    ) -> Result<RegistrationPage, ApiError> {
        self.list_page(Endpoint::ListRegistrations, &[], cursor)
            .await
    }

    /// One page of the registrations among `ids` (`...&id=A&id=B`), any status. Follow the
    /// cursor to the end: an id the complete answer leaves out does not exist.
    pub async fn list_registrations_with_ids_page(
        &self,
        ids: &[RegistrationId],
        cursor: Option<&str>,
    ) -> Result<RegistrationPage, ApiError> {
        self.list_page(Endpoint::FindRegistrations, ids, cursor)
            .await
    }

    async fn list_page(
        &self,
        endpoint: Endpoint,
        ids: &[RegistrationId],
        cursor: Option<&str>,
    ) -> Result<RegistrationPage, ApiError> {
        let per_page = self.per_page.to_string();
        let mut query: Vec<(&str, &str)> = vec![("status", "all"), ("per_page", &per_page)];
        query.extend(ids.iter().map(|id| ("id", id.as_str())));
        if let Some(c) = cursor {
            query.push(("cursor", c));
        }
        let url = self.registrations_url();
        let env: Envelope<Vec<Box<RawValue>>> =
            self.send(endpoint, Method::GET, &url, &query).await?;
        let items = env.result.ok_or(ApiError::Decode {
            endpoint,
            status: env.status,
            message: "the listing has no `result` array".to_owned(),
        })?;
        let next_cursor = env
            .result_info
            .as_ref()
            .and_then(|i| i.next_cursor())
            .map(str::to_owned);
        Ok(RegistrationPage { items, next_cursor })
    }

    /// `DELETE .../devices/registrations/{id}`. A 404 means already gone, not an error.
    pub async fn delete_registration(
        &self,
        id: &RegistrationId,
    ) -> Result<MutationOutcome, ApiError> {
        let url = format!("{}/{}", self.registrations_url(), id);
        self.mutate(Endpoint::DeleteRegistration, Method::DELETE, &url, &[], 1)
            .await
    }

    /// `DELETE .../devices/registrations?id=A&id=B`: one call for the whole chunk.
    pub async fn bulk_delete_registrations(
        &self,
        ids: &[RegistrationId],
    ) -> Result<MutationOutcome, ApiError> {
        let query: Vec<(&str, &str)> = ids.iter().map(|id| ("id", id.as_str())).collect();
        let url = self.registrations_url();
        self.mutate(
            Endpoint::BulkDeleteRegistrations,
            Method::DELETE,
            &url,
            &query,
            ids.len(),
        )
        .await
    }

    /// `POST .../devices/registrations/revoke?id=A&id=B` (never the deprecated
    /// `POST .../devices/revoke`).
    pub async fn revoke_registrations(
        &self,
        ids: &[RegistrationId],
    ) -> Result<MutationOutcome, ApiError> {
        let query: Vec<(&str, &str)> = ids.iter().map(|id| ("id", id.as_str())).collect();
        let url = format!("{}/revoke", self.registrations_url());
        self.mutate(
            Endpoint::RevokeRegistrations,
            Method::POST,
            &url,
            &query,
            ids.len(),
        )
        .await
    }

    /// A 404 means "already gone" only for a call naming one id: for several, it does not say
    /// which is missing, so it stays an error and the executor asks again in smaller parts.
    async fn mutate(
        &self,
        endpoint: Endpoint,
        method: Method,
        url: &str,
        query: &[(&str, &str)],
        ids_named: usize,
    ) -> Result<MutationOutcome, ApiError> {
        match self
            .send::<serde::de::IgnoredAny>(endpoint, method, url, query)
            .await
        {
            Ok(env) => Ok(MutationOutcome::Done { status: env.status }),
            Err(e) if e.is_not_found() && ids_named == 1 && !e.is_run_wide() => {
                Ok(MutationOutcome::NotFound {
                    code: e.cf_error().map(|d| d.code),
                    after_ambiguous_attempt: false,
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        method: Method,
        url: &str,
        query: &[(&str, &str)],
    ) -> Result<Envelope<T>, ApiError> {
        let mut attempt = 0;
        loop {
            let (result, retry_after) = self.send_once(endpoint, method.clone(), url, query).await;
            let err = match result {
                Ok(env) => return Ok(env),
                Err(e) if !e.is_retryable() || attempt >= self.retry.max_retries => return Err(e),
                Err(e) => e,
            };
            attempt += 1;
            let wait = retry_after
                .unwrap_or_else(|| backoff(&self.retry, attempt))
                .min(self.retry.max_wait);
            if Instant::now() + wait > self.deadline {
                return Err(err);
            }
            tracing::warn!(%endpoint, attempt, wait_ms = wait.as_millis() as u64, error = %err, "retrying Cloudflare API call");
            self.metrics
                .api_retries
                .with_label_values(&[endpoint.label()])
                .inc();
            tokio::time::sleep(wait).await;
        }
    }

    /// One HTTP exchange. Returns the server's `Retry-After` wish alongside the result.
    async fn send_once<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        method: Method,
        url: &str,
        query: &[(&str, &str)],
    ) -> (Result<Envelope<T>, ApiError>, Option<Duration>) {
        if Instant::now() >= self.deadline {
            return (Err(ApiError::DeadlineExceeded { endpoint }), None);
        }
        let sent = self.requests_sent.fetch_add(1, Ordering::Relaxed);
        if sent >= self.budget_limit {
            self.requests_sent.fetch_sub(1, Ordering::Relaxed);
            let limit = self.budget_limit;
            return (Err(ApiError::BudgetExhausted { endpoint, limit }), None);
        }
        let started = std::time::Instant::now();
        let response = self
            .http
            .request(method, url)
            .query(query)
            .bearer_auth(self.token.expose())
            .send()
            .await;
        let (result, retry_after, class) = match response {
            Err(e) => (Err(transport_error(endpoint, &e)), None, "error"),
            Ok(resp) => {
                let status = resp.status();
                let retry_after = retry_after(resp.headers());
                let result = read_envelope(endpoint, status, resp).await;
                (result, retry_after, status_class(status))
            }
        };
        self.metrics
            .api_requests
            .with_label_values(&[endpoint.label(), class])
            .inc();
        self.metrics
            .api_latency
            .with_label_values(&[endpoint.label()])
            .observe(started.elapsed().as_secs_f64());
        (result, retry_after)
    }
}

async fn read_envelope<T: DeserializeOwned>(
    endpoint: Endpoint,
    status: StatusCode,
    resp: reqwest::Response,
) -> Result<Envelope<T>, ApiError> {
    let code = status.as_u16();
    let body = resp
        .bytes()
        .await
        .map_err(|e| transport_error(endpoint, &e))?;
    if !status.is_success() {
        // Error bodies are usually envelopes, but a proxy may answer with HTML.
        let errors = serde_json::from_slice::<Envelope<serde::de::IgnoredAny>>(&body)
            .map(|env| env.errors)
            .unwrap_or_default();
        return Err(ApiError::Api {
            endpoint,
            status: code,
            errors,
        });
    }
    let mut env: Envelope<T> = serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
        endpoint,
        status: code,
        message: e.to_string(),
    })?;
    if !env.success {
        return Err(ApiError::Api {
            endpoint,
            status: code,
            errors: env.errors,
        });
    }
    env.status = code;
    Ok(env)
}

/// reqwest errors are reduced to their kind: their text may carry the URL, and nothing
/// request-shaped belongs in a user-facing error.
fn transport_error(endpoint: Endpoint, e: &reqwest::Error) -> ApiError {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failure"
    } else if e.is_body() || e.is_decode() {
        "broken response body"
    } else {
        "network error"
    };
    ApiError::Transport { endpoint, kind }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// `Retry-After` in seconds, or Cloudflare's `retry-after-ms`, whichever is present.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    header("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| header("retry-after").map(Duration::from_secs_f64))
}

/// Exponential backoff with full jitter, so that many clients do not retry in step.
fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let ceiling = policy
        .base
        .saturating_mul(1u32 << attempt.min(16))
        .min(policy.max_wait);
    rand::thread_rng().gen_range(ceiling / 2..=ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn retry_after_prefers_milliseconds_header() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        let mut bad = HeaderMap::new();
        bad.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&bad), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_retries: 10,
            base: Duration::from_millis(100),
            max_wait: Duration::from_secs(2),
        };
        for attempt in 1..12 {
            let ceiling = (Duration::from_millis(100) * 2u32.pow(attempt)).min(p.max_wait);
            let d = backoff(&p, attempt);
            assert!(d <= ceiling && d >= ceiling / 2, "attempt {attempt}: {d:?}");
        }
    }
}
