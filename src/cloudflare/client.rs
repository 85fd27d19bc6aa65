//! The Cloudflare API client: the only code in zt-janitor that speaks HTTP to Cloudflare.
//!
//! Every call goes through [`Client::send`], which enforces the per-cycle request budget and
//! deadline, retries what is safe to retry (429, 5xx, network errors, garbled bodies — all calls
//! made here are idempotent), honours `Retry-After` within bounds, stops waiting when the
//! process is asked to stop, and records metrics. Redirects are never followed: the credentials
//! would go with them.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, LOCATION};
use reqwest::{Method, StatusCode};
use secrecy::zeroize::Zeroize;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::error::{ApiError, CfErrorDetail, Endpoint};
use super::model::{AccountId, ResultInfo};
use super::quota::{self, Quota, Slot, Wait};
use crate::config::{CloudflareSettings, MAX_CYCLE_DEADLINE_SECS};
use crate::metrics::Metrics;
use crate::resource::{self, ListRequest, MutationRequest};
use crate::secret::Credentials;
use crate::stop::StopSignal;

const USER_AGENT: &str = concat!("zt-janitor/", env!("CARGO_PKG_VERSION"));
/// Longest single wait between retries, whatever `Retry-After` asks for (and never past the
/// cycle deadline).
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(120);
const BACKOFF_BASE: Duration = Duration::from_millis(250);

/// One page of a listing as the server answered it. Items stay raw JSON so that the audit log
/// can keep the object exactly as listed; the resource kind reads `info` for the next page.
#[derive(Debug)]
pub struct ListedPage {
    pub items: Vec<Box<RawValue>>,
    pub info: Option<ResultInfo>,
}

/// What a delete or revoke call was answered. Both are only claims: confirm by listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MutationOutcome {
    /// A 2xx answer (a 204 with no body included).
    Done { status: u16 },
    /// An error answer that the resource kind reads as "already gone" (a 404 for device
    /// registrations), carrying a Cloudflare error envelope whose code is not a routing error,
    /// for a call naming one id. `after_ambiguous_attempt`: an earlier attempt of the same call ended
    /// without a trustworthy answer (5xx, transport error, timeout, garbled body), so the
    /// server may have acted and the 404 may be this run's own deletion.
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
    /// Turned into headers afresh for each request, so that the only long-lived copy stays
    /// in [`crate::secret`]'s zeroed types.
    credentials: Credentials,
    per_page: u32,
    retry: RetryPolicy,
    budget_limit: u32,
    requests_sent: AtomicU32,
    deadline: Instant,
    metrics: Metrics,
    stop: StopSignal,
    quota: Quota,
    rate_share: f64,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct ClientBuildError(String);

#[derive(Deserialize)]
struct Envelope<T> {
    /// Absent in an answer that is not Cloudflare's envelope at all.
    #[serde(default)]
    success: Option<bool>,
    #[serde(default, deserialize_with = "null_as_empty")]
    errors: Vec<CfErrorDetail>,
    result: Option<T>,
    #[serde(default)]
    result_info: Option<ResultInfo>,
    #[serde(skip)]
    status: u16,
}

/// What an error answer must look like to be Cloudflare's: a JSON object with `success: false`
/// and an `errors` array (or null). A proxy's HTML, an empty body or other JSON is not.
#[derive(Deserialize)]
struct ErrorEnvelope {
    success: bool,
    #[serde(deserialize_with = "null_as_empty")]
    errors: Vec<CfErrorDetail>,
}

/// `"errors": null` reads as no errors.
fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<CfErrorDetail>, D::Error> {
    Ok(Option::<Vec<CfErrorDetail>>::deserialize(d)?.unwrap_or_default())
}

/// Whether a 2xx answer may come without a body: a mutation's may (204), a listing's may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Required,
    Optional,
}

impl Client {
    /// A client for one cycle: the request budget and the deadline start now.
    pub fn new(
        settings: &CloudflareSettings,
        credentials: Credentials,
        metrics: Metrics,
    ) -> Result<Self, ClientBuildError> {
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            // A redirect would carry the credentials to wherever it points; a 3xx is an error.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.request_timeout())
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ClientBuildError(e.to_string()))?;
        Ok(Client {
            http,
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            account: settings.account_id.clone(),
            // Checked once here, so that every request can build them.
            credentials: auth_headers(&credentials).map(|_| credentials)?,
            per_page: settings.per_page,
            retry: RetryPolicy {
                max_retries: settings.max_retries,
                base: BACKOFF_BASE,
                max_wait: MAX_RETRY_WAIT,
            },
            budget_limit: settings.max_requests_per_cycle,
            requests_sent: AtomicU32::new(0),
            deadline: deadline_after(settings.cycle_deadline()),
            metrics,
            stop: StopSignal::default(),
            quota: Quota::default(),
            rate_share: settings.rate_share,
        })
    }

    /// Paces under `quota`, the rate-limit state the process's cycles share, instead of a
    /// fresh one that knows nothing of the calls before this client.
    pub fn with_quota(mut self, quota: Quota) -> Client {
        self.quota = quota;
        self
    }

    /// A stop request cuts any retry wait short; the call then fails with
    /// [`ApiError::Stopped`]. A request already on the wire is not cut: its answer is read.
    pub fn with_stop(mut self, stop: StopSignal) -> Client {
        self.stop = stop;
        self
    }

    /// Requests sent so far in this cycle, retries included.
    pub fn requests_sent(&self) -> u32 {
        self.requests_sent.load(Ordering::Relaxed)
    }

    pub fn account(&self) -> &AccountId {
        &self.account
    }

    /// Whether the janitor authenticates with an API token, which `tokens/verify` can name
    /// (the global API key cannot be named).
    pub fn credentials_are_api_token(&self) -> bool {
        self.credentials.is_api_token()
    }

    /// `[cloudflare] per_page`: the page size listings ask for.
    pub fn per_page(&self) -> u32 {
        self.per_page
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base_url, path)
    }

    /// Sends one listing request (built by the resource kind) and reads its page.
    pub async fn list(&self, request: &ListRequest) -> Result<ListedPage, ApiError> {
        let endpoint = request.endpoint;
        let query = pairs(&request.query);
        let env: Envelope<Vec<Box<RawValue>>> = self
            .send(
                endpoint,
                Method::GET,
                &self.url(&request.path),
                &query,
                Body::Required,
                &mut false,
            )
            .await?;
        let items = env.result.ok_or(ApiError::Decode {
            endpoint,
            status: env.status,
            message: "the listing has no `result` array".to_owned(),
        })?;
        Ok(ListedPage {
            items,
            info: env.result_info,
        })
    }

    /// Sends one read request whose `result` is a single object (built by the resource kind),
    /// such as `tokens/verify`.
    pub async fn read(&self, request: &ListRequest) -> Result<Box<RawValue>, ApiError> {
        let endpoint = request.endpoint;
        let query = pairs(&request.query);
        let env: Envelope<Box<RawValue>> = self
            .send(
                endpoint,
                Method::GET,
                &self.url(&request.path),
                &query,
                Body::Required,
                &mut false,
            )
            .await?;
        env.result.ok_or(ApiError::Decode {
            endpoint,
            status: env.status,
            message: "the answer has no `result` object".to_owned(),
        })
    }

    /// Sends one delete or revoke request (built by the resource kind). An error answer that
    /// the kind reads as "already gone", with Cloudflare's envelope and a code other than a
    /// routing error, for a call naming one id, is [`MutationOutcome::NotFound`]; any other
    /// error answer is an error.
    pub async fn mutate(&self, request: &MutationRequest) -> Result<MutationOutcome, ApiError> {
        let mut ambiguous = false;
        let query = pairs(&request.query);
        let result = self
            .send::<serde::de::IgnoredAny>(
                request.endpoint,
                request.method.clone(),
                &self.url(&request.path),
                &query,
                Body::Optional,
                &mut ambiguous,
            )
            .await;
        mutation_outcome(result.map(|env| env.status), request.ids_named, ambiguous)
    }

    /// Sends a request, retrying what may succeed when sent again. `ambiguous` is set when an
    /// attempt ended without a trustworthy answer (the server may have acted).
    async fn send<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        method: Method,
        url: &str,
        query: &[(&str, &str)],
        body: Body,
        ambiguous: &mut bool,
    ) -> Result<Envelope<T>, ApiError> {
        let mut attempt = 0;
        loop {
            let (result, retry_after) = self
                .send_once(endpoint, method.clone(), url, query, body)
                .await;
            let err = match result {
                Ok(env) => return Ok(env),
                Err(e) => e,
            };
            *ambiguous |= err.leaves_outcome_unknown();
            if !err.is_retryable() || attempt >= self.retry.max_retries {
                return Err(err);
            }
            attempt += 1;
            // `retry_after` is already bounded by the parser; the backoff by its ceiling.
            let wait = retry_after
                .unwrap_or_else(|| backoff(&self.retry, attempt))
                .min(self.retry.max_wait);
            let left = self.deadline.saturating_duration_since(Instant::now());
            if wait > left {
                return Err(ApiError::WaitPastDeadline {
                    endpoint,
                    wait_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                    left_secs: left.as_secs(),
                    last: Box::new(err),
                });
            }
            if self.stop.is_stopped() {
                return Err(ApiError::Stopped { endpoint });
            }
            tracing::warn!(%endpoint, attempt, wait_ms = wait.as_millis() as u64, error = %err, "retrying Cloudflare API call");
            self.metrics
                .api_retries
                .with_label_values(&[endpoint.label()])
                .inc();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.stop.stopped() => return Err(ApiError::Stopped { endpoint }),
            }
        }
    }

    /// One HTTP exchange. Returns the server's `Retry-After` wish alongside the result.
    async fn send_once<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        method: Method,
        url: &str,
        query: &[(&str, &str)],
        body: Body,
    ) -> (Result<Envelope<T>, ApiError>, Option<Duration>) {
        let slot = match self.pace(endpoint).await {
            Ok(slot) => slot,
            Err(e) => return (Err(e), None),
        };
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
            // `new` checked that these build; were they not to, the request would go without
            // credentials and be refused, never with a credential in the clear.
            .headers(auth_headers(&self.credentials).unwrap_or_default())
            .send()
            .await;
        let (result, retry_after, class) = match response {
            Err(e) => (Err(transport_error(endpoint, &e)), None, "error"),
            Ok(resp) if resp.status().is_redirection() => {
                let err = ApiError::Redirect {
                    endpoint,
                    status: resp.status().as_u16(),
                    location_host: location_host(&resp),
                };
                (Err(err), None, "3xx")
            }
            Ok(resp) => {
                let status = resp.status();
                // Read once: the pacer believes a 429's wish up to its own bound, the retry
                // loop up to its shorter one.
                let server_wait = retry_after(resp.headers(), Utc::now(), MAX_RATE_LIMIT_BLOCK);
                self.settle(slot, status, resp.headers(), server_wait);
                let retry_after = server_wait.map(|wait| wait.min(self.retry.max_wait));
                let result = read_envelope(endpoint, status, resp, body).await;
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

impl Client {
    /// Waits until Cloudflare's rate limit leaves room for one more call of the janitor's
    /// share (see [`quota`]): never past the cycle deadline, and never past a stop request.
    async fn pace(&self, endpoint: Endpoint) -> Result<Slot, ApiError> {
        let started = Instant::now();
        let mut announced = false;
        let mut waited = false;
        let result = loop {
            let now = Instant::now();
            let wait = match self.quota.decide(now, self.rate_share) {
                Ok(slot) => break Ok(slot),
                Err(wait) => wait,
            };
            if self.stop.is_stopped() {
                break Err(ApiError::Stopped { endpoint });
            }
            waited = true;
            match wait {
                Wait::Until(until) => {
                    if until > self.deadline {
                        break Err(ApiError::QuotaPastDeadline {
                            endpoint,
                            wait_secs: until.duration_since(now).as_secs() + 1,
                            left_secs: self.deadline.saturating_duration_since(now).as_secs(),
                        });
                    }
                    if !announced {
                        announced = true;
                        tracing::info!(
                            %endpoint,
                            wait_secs = until.duration_since(now).as_secs(),
                            calls_this_cycle = self.requests_sent(),
                            quota_remaining = ?self.quota.remaining(),
                            rate_share = self.rate_share,
                            "pacing under Cloudflare's rate limit: waiting for the next window"
                        );
                    }
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        () = self.stop.stopped() => break Err(ApiError::Stopped { endpoint }),
                    }
                }
                // The answer to a call in flight says where a new window stands; the timeout
                // only guards against a wake-up lost between the check and the wait.
                Wait::ForAnswer => {
                    tokio::select! {
                        _ = tokio::time::timeout(Duration::from_millis(100), self.quota.answer_came()) => {}
                        () = self.stop.stopped() => break Err(ApiError::Stopped { endpoint }),
                    }
                }
            }
        };
        if waited {
            self.metrics
                .quota_wait_seconds
                .inc_by(started.elapsed().as_secs_f64());
        }
        result
    }

    /// Tells the pacer what an answer said of the rate limit.
    fn settle(
        &self,
        slot: Slot,
        status: StatusCode,
        headers: &HeaderMap,
        server_wait: Option<Duration>,
    ) {
        let seen = headers
            .get("ratelimit")
            .and_then(|v| v.to_str().ok())
            .and_then(quota::parse_ratelimit);
        if let Some(seen) = seen {
            self.metrics.quota_remaining.set(i64::from(seen.remaining));
        }
        let block = (status == StatusCode::TOO_MANY_REQUESTS).then(|| {
            self.metrics.rate_limited.inc();
            quota::block_after_429(server_wait)
        });
        slot.answered(seen, block);
    }
}

/// The longest a 429's `Retry-After` may keep every call waiting: Cloudflare's block is five
/// minutes, and a wish beyond twice that is not believed.
const MAX_RATE_LIMIT_BLOCK: Duration = Duration::from_secs(600);

/// The headers that authenticate a request, each marked sensitive so that no debug output of
/// `reqwest` or `hyper` shows it. A value that cannot be a header is refused without being
/// shown (loading already refuses such values).
fn auth_headers(credentials: &Credentials) -> Result<HeaderMap, ClientBuildError> {
    fn sensitive(value: &str) -> Result<HeaderValue, ClientBuildError> {
        let mut value = HeaderValue::from_str(value).map_err(|_| {
            ClientBuildError("a credential contains characters not allowed in a header".into())
        })?;
        value.set_sensitive(true);
        Ok(value)
    }
    let mut headers = HeaderMap::new();
    match credentials {
        Credentials::ApiToken(token) => {
            let mut bearer = format!("Bearer {}", token.expose());
            let value = sensitive(&bearer);
            bearer.zeroize();
            headers.insert(reqwest::header::AUTHORIZATION, value?);
        }
        Credentials::GlobalKey { email, key } => {
            headers.insert(
                HeaderName::from_static("x-auth-email"),
                sensitive(email.as_str())?,
            );
            headers.insert(
                HeaderName::from_static("x-auth-key"),
                sensitive(key.expose())?,
            );
        }
    }
    Ok(headers)
}

fn pairs(query: &[(String, String)]) -> Vec<(&str, &str)> {
    query
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// The outcome of a delete or revoke from its final answer. An answer the kind reads as "not
/// found" means so only for a call naming one id (for several it does not say which is
/// missing), only with Cloudflare's envelope (a proxy or a wrong route answers 404 too), and
/// only without a routing error code.
fn mutation_outcome(
    answer: Result<u16, ApiError>,
    ids_named: usize,
    after_ambiguous_attempt: bool,
) -> Result<MutationOutcome, ApiError> {
    match answer {
        Ok(status) => Ok(MutationOutcome::Done { status }),
        Err(ApiError::Api {
            endpoint,
            status,
            envelope: true,
            errors,
        }) if ids_named == 1
            && !errors.iter().any(CfErrorDetail::is_routing)
            && resource::means_gone(endpoint, status) =>
        {
            Ok(MutationOutcome::NotFound {
                code: errors.first().map(|e| e.code),
                after_ambiguous_attempt,
            })
        }
        Err(e) => Err(e),
    }
}

async fn read_envelope<T: DeserializeOwned>(
    endpoint: Endpoint,
    status: StatusCode,
    resp: reqwest::Response,
    expected: Body,
) -> Result<Envelope<T>, ApiError> {
    let body = resp
        .bytes()
        .await
        .map_err(|e| transport_error(endpoint, &e))?;
    parse_answer(endpoint, status, &body, expected)
}

/// Reads an answer's body: an error status is an error, with or without Cloudflare's envelope;
/// a success must be an envelope with `success: true` and no errors (or no body at all, where
/// `expected` allows it).
fn parse_answer<T: DeserializeOwned>(
    endpoint: Endpoint,
    status: StatusCode,
    body: &[u8],
    expected: Body,
) -> Result<Envelope<T>, ApiError> {
    let code = status.as_u16();
    if !status.is_success() {
        // Error bodies are usually envelopes, but a proxy may answer with HTML.
        let envelope = serde_json::from_slice::<ErrorEnvelope>(body)
            .ok()
            .filter(|env| !env.success);
        return Err(ApiError::Api {
            endpoint,
            status: code,
            envelope: envelope.is_some(),
            errors: envelope.map(|env| env.errors).unwrap_or_default(),
        });
    }
    if expected == Body::Optional && body.iter().all(u8::is_ascii_whitespace) {
        // A mutation answered 204 (or 200) with no body: done, nothing more to read.
        return Ok(Envelope {
            success: Some(true),
            errors: Vec::new(),
            result: None,
            result_info: None,
            status: code,
        });
    }
    let mut env: Envelope<T> = serde_json::from_slice(body).map_err(|e| ApiError::Decode {
        endpoint,
        status: code,
        message: e.to_string(),
    })?;
    let Some(success) = env.success else {
        return Err(ApiError::Decode {
            endpoint,
            status: code,
            message: "the answer is JSON but not Cloudflare's envelope (no `success`)".to_owned(),
        });
    };
    if !success {
        return Err(ApiError::Api {
            endpoint,
            status: code,
            errors: env.errors,
            envelope: true,
        });
    }
    if !env.errors.is_empty() {
        return Err(ApiError::PartialResult {
            endpoint,
            status: code,
            errors: env.errors,
        });
    }
    env.status = code;
    Ok(env)
}

/// The deadline `after` from now, which config validation keeps far from overflowing.
fn deadline_after(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .or_else(|| now.checked_add(Duration::from_secs(MAX_CYCLE_DEADLINE_SECS)))
        .unwrap_or(now)
}

/// Host (and port, unless the scheme's default) of a redirect's `Location`, resolved against
/// the request's URL: never its credentials, path or query.
fn location_host(resp: &reqwest::Response) -> Option<String> {
    let location = resp.headers().get(LOCATION)?.to_str().ok()?;
    let target = resp.url().join(location.trim()).ok()?;
    let host = target.host_str()?;
    Some(match target.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
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
    // Where: host, port and path only (the query is dropped; credentials travel in headers).
    let at = e.url().map_or_else(
        || "the API".to_owned(),
        |u| {
            let host = u.host_str().unwrap_or("");
            match u.port() {
                Some(port) => format!("{host}:{port}{}", u.path()),
                None => format!("{host}{}", u.path()),
            }
        },
    );
    // Why: the innermost cause (the OS's or the resolver's words), whose text names no URL.
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    let cause = if std::ptr::addr_eq(cause, e as &dyn std::error::Error) {
        String::new()
    } else {
        crate::report::escape(&cause.to_string()).into_owned()
    };
    ApiError::Transport {
        endpoint,
        kind,
        at: crate::report::escape(&at).into_owned(),
        cause,
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The server's wish from Cloudflare's `retry-after-ms`, else `Retry-After` (seconds or an
/// HTTP-date), never more than `max`. A wish that is not a number or date, negative or NaN is
/// ignored (the backoff applies); a huge or infinite one becomes `max`.
fn retry_after(headers: &HeaderMap, now: DateTime<Utc>, max: Duration) -> Option<Duration> {
    let text = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    if let Some(wait) = text("retry-after-ms").and_then(|t| server_wait(t, 1000.0, max)) {
        return Some(wait);
    }
    let value = text("retry-after")?;
    server_wait(value, 1.0, max).or_else(|| {
        let date = DateTime::parse_from_rfc2822(value).ok()?;
        // A date already past means "now".
        let wait = (date.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO);
        Some(wait.min(max))
    })
}

/// `text` as a number of `per_second` units, bounded by `max` before it becomes a Duration:
/// converting an unbounded float panics or overflows.
fn server_wait(text: &str, per_second: f64, max: Duration) -> Option<Duration> {
    let n: f64 = text.parse().ok()?;
    if n.is_nan() || n < 0.0 {
        return None;
    }
    let secs = n / per_second;
    if secs >= max.as_secs_f64() {
        return Some(max);
    }
    Some(Duration::try_from_secs_f64(secs).map_or(max, |d| d.min(max)))
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
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_prefers_milliseconds_header() {
        let now = Utc::now();
        let h = headers(&[("retry-after", "3")]);
        assert_eq!(
            retry_after(&h, now, MAX_RETRY_WAIT),
            Some(Duration::from_secs(3))
        );
        let h = headers(&[("retry-after", "3"), ("retry-after-ms", "1500")]);
        assert_eq!(
            retry_after(&h, now, MAX_RETRY_WAIT),
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn server_given_waits_are_bounded_and_never_panic() {
        let now: DateTime<Utc> = "2026-11-26T12:00:00Z".parse().unwrap();
        let max = MAX_RETRY_WAIT;
        let cases: &[(&str, &str, Option<Duration>)] = &[
            ("retry-after", "1e300", Some(max)),
            ("retry-after", "inf", Some(max)),
            ("retry-after", "-inf", None),
            ("retry-after", "NaN", None),
            ("retry-after", "-1", None),
            ("retry-after", "99999999999999999999999", Some(max)),
            ("retry-after", "1.5", Some(Duration::from_millis(1500))),
            ("retry-after", "0", Some(Duration::ZERO)),
            ("retry-after", "soon", None),
            ("retry-after-ms", "99999999999999999999999", Some(max)),
            ("retry-after-ms", "1e300", Some(max)),
            ("retry-after-ms", "inf", Some(max)),
            ("retry-after-ms", "NaN", None),
            ("retry-after-ms", "-1", None),
            ("retry-after-ms", "250", Some(Duration::from_millis(250))),
            // HTTP-dates: in the future (bounded), and in the past (retry now).
            (
                "retry-after",
                "Thu, 26 Nov 2026 12:00:30 GMT",
                Some(Duration::from_secs(30)),
            ),
            ("retry-after", "Fri, 26 Nov 2027 12:00:00 GMT", Some(max)),
            (
                "retry-after",
                "Wed, 21 Oct 2015 07:28:00 GMT",
                Some(Duration::ZERO),
            ),
        ];
        for (name, value, expected) in cases {
            let got = retry_after(&headers(&[(name, value)]), now, max);
            assert_eq!(got, *expected, "{name}: {value}");
        }
        // The bound given wins over MAX_RETRY_WAIT.
        let small = Duration::from_secs(5);
        assert_eq!(
            retry_after(&headers(&[("retry-after", "1e300")]), now, small),
            Some(small)
        );
    }

    fn api(status: u16, codes: &[i64], envelope: bool) -> ApiError {
        crate::cloudflare::error::tests::api(Endpoint::DeleteRegistration, status, codes, envelope)
    }

    #[test]
    fn only_a_cloudflare_404_about_one_id_means_not_found() {
        let not_found = |code, after| {
            Some(MutationOutcome::NotFound {
                code,
                after_ambiguous_attempt: after,
            })
        };
        // (case, answer, ids named, ambiguous earlier attempt, expected outcome; None = error)
        type Case = (
            &'static str,
            Result<u16, ApiError>,
            usize,
            bool,
            Option<MutationOutcome>,
        );
        let cases: Vec<Case> = vec![
            (
                "200",
                Ok(200),
                1,
                false,
                Some(MutationOutcome::Done { status: 200 }),
            ),
            (
                "204",
                Ok(204),
                3,
                false,
                Some(MutationOutcome::Done { status: 204 }),
            ),
            (
                "404 code 1001",
                Err(api(404, &[1001], true)),
                1,
                false,
                not_found(Some(1001), false),
            ),
            (
                "404 after a 502",
                Err(api(404, &[1001], true)),
                1,
                true,
                not_found(Some(1001), true),
            ),
            (
                "404 envelope, no errors",
                Err(api(404, &[], true)),
                1,
                false,
                not_found(None, false),
            ),
            (
                "404 routing 7003",
                Err(api(404, &[7003], true)),
                1,
                false,
                None,
            ),
            (
                "404 routing 7000",
                Err(api(404, &[7000], true)),
                1,
                false,
                None,
            ),
            (
                "404 routing second",
                Err(api(404, &[1001, 7003], true)),
                1,
                false,
                None,
            ),
            (
                "404 without envelope",
                Err(api(404, &[], false)),
                1,
                false,
                None,
            ),
            (
                "404 on a bulk call",
                Err(api(404, &[1001], true)),
                2,
                false,
                None,
            ),
            (
                "400 code 2001",
                Err(api(400, &[2001], true)),
                1,
                false,
                None,
            ),
            ("410", Err(api(410, &[1001], true)), 1, false, None),
        ];
        for (case, answer, ids, ambiguous, expected) in cases {
            let got = mutation_outcome(answer, ids, ambiguous).ok();
            assert_eq!(got, expected, "{case}");
        }
    }

    #[test]
    fn answers_are_read_strictly() {
        type Env = Result<Envelope<serde::de::IgnoredAny>, ApiError>;
        let read = |status: u16, body: &str, expected: Body| -> Env {
            parse_answer(
                Endpoint::BulkDeleteRegistrations,
                StatusCode::from_u16(status).unwrap(),
                body.as_bytes(),
                expected,
            )
        };
        let ok = r#"{"success":true,"errors":[],"messages":[],"result":null}"#;
        let null_errors = r#"{"success":true,"errors":null,"messages":null,"result":null}"#;
        let partial =
            r#"{"success":true,"errors":[{"code":1020,"message":"partial results"}],"result":[]}"#;
        assert_eq!(read(200, ok, Body::Required).unwrap().status, 200);
        assert_eq!(read(200, null_errors, Body::Required).unwrap().status, 200);
        assert_eq!(read(204, "", Body::Optional).unwrap().status, 204);
        assert_eq!(read(200, " \n", Body::Optional).unwrap().status, 200);
        for garbled in ["", "{}", "[]", "<html></html>", r#"{"success":"yes"}"#] {
            assert!(
                matches!(
                    read(200, garbled, Body::Required),
                    Err(ApiError::Decode { .. })
                ),
                "{garbled:?}"
            );
        }
        assert!(matches!(
            read(200, "{}", Body::Optional),
            Err(ApiError::Decode { .. })
        ));
        assert!(matches!(
            read(200, partial, Body::Required),
            Err(ApiError::PartialResult { status: 200, .. })
        ));
        assert!(matches!(
            read(200, partial, Body::Optional),
            Err(ApiError::PartialResult { .. })
        ));
        // Error statuses: Cloudflare's envelope or not.
        let envelope = |status, body| match read(status, body, Body::Optional) {
            Err(ApiError::Api {
                envelope, errors, ..
            }) => (envelope, errors.len()),
            other => panic!("{status} {body}: {:?}", other.err()),
        };
        let cf_404 = r#"{"success":false,"errors":[{"code":1001,"message":"Registration not found"}],"messages":[],"result":null}"#;
        assert_eq!(envelope(404, cf_404), (true, 1));
        assert_eq!(
            envelope(404, r#"{"success":false,"errors":null,"result":null}"#),
            (true, 0)
        );
        assert_eq!(
            envelope(404, "<html><body>Not Found</body></html>"),
            (false, 0)
        );
        assert_eq!(envelope(404, ""), (false, 0));
        assert_eq!(envelope(404, r#"{"error":"not found"}"#), (false, 0));
        assert_eq!(envelope(404, r#"{"success":true,"errors":[]}"#), (false, 0));
        assert_eq!(envelope(502, "Bad Gateway"), (false, 0));
    }

    #[test]
    fn auth_headers_are_the_bearer_token_or_the_email_and_key_all_sensitive() {
        use crate::secret::{ApiEmail, ApiKey, ApiToken};
        let token = Credentials::ApiToken(ApiToken::new("cf-token".into()).unwrap());
        let h = auth_headers(&token).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h["authorization"], "Bearer cf-token");
        assert!(h["authorization"].is_sensitive());

        let key = Credentials::GlobalKey {
            email: ApiEmail::new("admin@example.com".into()).unwrap(),
            key: ApiKey::new("0123456789abcdef".into()).unwrap(),
        };
        let h = auth_headers(&key).unwrap();
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["x-auth-email"], "admin@example.com");
        assert_eq!(h["x-auth-key"], "0123456789abcdef");
        assert!(h.values().all(HeaderValue::is_sensitive));
        let shown = format!("{h:?}");
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
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
