//! A fake Cloudflare API v4 for device registrations, Access service tokens, account-owned API
//! tokens and API Shield client certificates, served over HTTP on loopback. Integration tests, benchmarks and the demo (`zt-janitor fake-api`) run the
//! real client against it.
//!
//! It speaks the documented wire format exactly (see `shared/cloudflare-api.md`): base path
//! `/client/v4`, the `success`/`errors`/`messages`/`result`/`result_info` envelope, Bearer
//! authentication (and optionally the legacy global key), cursor pagination, `status` defaulting to `active`, ids as repeated `id`
//! query parameters. On top of that it records every request, logs every mutation at receipt,
//! and injects faults on demand ([`FaultRule`]). With [`FakeOptions::rate_limit`] it applies
//! Cloudflare's rate limit: a quota per fixed window, the `Ratelimit` and `Ratelimit-Policy`
//! headers, and a block (429 with `Retry-After`) once the quota is spent ([`FakeRateLimit`]).
//!
//! Served under `/client/v4/accounts/{account}/devices`:
//! - `GET registrations` (`status`, `per_page`, `cursor`, repeated `id`; others ignored)
//! - `GET|DELETE registrations/{id}`
//! - `DELETE registrations?id=..` (bulk), `POST registrations/revoke?id=..`, `POST registrations/unrevoke?id=..`
//! - `POST revoke` (deprecated, body: JSON array of ids; served, and logged so tests can assert
//!   it is never used)
//!
//! and under `/client/v4/accounts/{account}/access`:
//! - `GET service_tokens` (`page`, `per_page`; page pagination, see the `tokens` module)
//! - `DELETE service_tokens/{id}` (answers the deleted token; a token in use is refused)
//!
//! under `/client/v4/accounts/{account}/tokens` (see the `account_tokens` module):
//! - `GET` (`page`, `per_page` 5–50, `direction`, `include_expired`; page pagination)
//! - `DELETE {id}` (answers `{"id": ..}`; the fake's own token is not protected)
//! - `GET verify`, and `GET /client/v4/user/tokens/verify`: the fake's own token, as an
//!   account-owned or a user-owned token ([`TokenOwner`])
//!
//! and under `/client/v4/zones/{zone}/client_certificates` (see the `certificates` module):
//! - `GET` (`status`, `page`, `per_page` 5–50; page pagination)
//! - `DELETE {id}` (revokes: answers the certificate, now `pending_revocation`)
//! - `PATCH {id}` (reactivates one still `pending_revocation`: answers it, now `active`; one
//!   already `revoked` is refused with 400)
//!
//! The fake owns no knowledge of zt-janitor's rules or client; it must never import them, so
//! that it stays an independent check of the client's understanding of the API.

mod account_tokens;
mod args;
mod certificates;
mod conn;
mod data;
mod faults;
mod ratelimit;
mod server;
mod store;
mod tokens;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use account_tokens::{
    AccountTokenStatus, FakeAccountToken, TokenOwner, ACCOUNT_TOKENS_DEFAULT_PER_PAGE,
    ACCOUNT_TOKENS_MAX_PER_PAGE, ACCOUNT_TOKENS_MIN_PER_PAGE, OWN_TOKEN_NAME,
    RECENTLY_EXPIRED_DAYS,
};
pub use args::{serve_from_args, FakeApiArgs};
pub use certificates::{
    CertificateStatus, FakeCertificate, CERTIFICATES_DEFAULT_PER_PAGE, CERTIFICATES_MAX_PER_PAGE,
    CERTIFICATES_MIN_PER_PAGE, DEFAULT_CA_ID, DEFAULT_CA_NAME, OTHER_CA_ID, OTHER_CA_NAME,
};
pub use data::{FakeRegistration, FAKE_TEAM};
pub use faults::{Endpoint, Fault, FaultParseError, FaultRule, When};
pub use ratelimit::FakeRateLimit;
pub use tokens::{FakeServiceToken, SERVICE_TOKENS_DEFAULT_PER_PAGE, SERVICE_TOKENS_MAX_PER_PAGE};

use account_tokens::AccountTokenStore;
use certificates::CertificateStore;
use conn::{ConnControl, FakeListener};
use faults::FaultSet;
use ratelimit::RateLimiter;
use server::{lock, Clock, Log, OwnToken, Shared};
use store::Store;
use tokens::TokenStore;

/// The account id the fake serves unless told otherwise.
pub const DEFAULT_ACCOUNT_ID: &str = "0123456789abcdef0123456789abcdef";
/// The API token the fake accepts unless told otherwise.
pub const DEFAULT_TOKEN: &str = "fake-token";

/// What the fake serves. Generated data is a pure function of these options (except `token`,
/// which only gates access).
#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// Requests for any other account get a 404 envelope (code 7003).
    pub account_id: String,
    /// Accepted as `Authorization: Bearer <token>`; anything else gets 403 (code 10000). Its id
    /// is the own token's ([`FakeHandle::own_token_id`]).
    pub token: String,
    /// Seed of the generator: the same seed and options give byte-identical registrations.
    pub seed: u64,
    /// How many registrations to generate (at most 4,000,000).
    pub registrations: usize,
    /// Share of registrations last seen 120–720 days before `now`. The others, unless revoked,
    /// were last seen 0–20 days before `now`, so any idle threshold from 30 to 120 days counts
    /// exactly the idle ones.
    pub idle_share: f64,
    /// Share of registrations revoked 10–80 days before `now` (last seen 1 hour to 2 days
    /// before their revocation, so never idle by a 90-day rule).
    pub revoked_share: f64,
    /// Share of registrations without a person: alternately no `user` field and the
    /// `non_identity@<team>.cloudflareaccess.com` identity of service tokens.
    pub no_user_share: f64,
    /// The generator's "today"; the fake's clock starts here and runs in real time.
    pub now: DateTime<Utc>,
    /// Largest page served, whatever `per_page` asks for.
    pub max_per_page: usize,
    /// Most ids one bulk delete/revoke/unrevoke accepts; more get HTTP 400.
    pub max_bulk_ids: usize,
    /// How many Access service tokens to generate (at most 100,000), from their own random
    /// stream of `seed`, so the registrations of a seed do not change. Token `i` (0-based, in
    /// generation order; listing order is by id) is:
    /// - expired (`expires_at` 10–400 days before `now`; about half never used) when `i % 8` is 0 or 4,
    /// - never used (`last_seen_at` null, created 1–300 days ago, not expired) when 1 or 6,
    /// - idle (last seen 120–390 days ago, not expired) when 3,
    /// - fresh (last seen 0–20 days ago, not expired) otherwise;
    /// - in use (attached to the device enrollment policy: kept by the fake, not served, and a
    ///   delete is refused) when `i % 6 == 0`, disabled when `i % 9 == 4`.
    pub service_tokens: usize,
    /// How many account-owned API tokens to generate (at most 100,000; the own token comes on
    /// top), from their own random stream of `seed`, so nothing else of a seed changes. Ids are
    /// 32 lowercase hex characters. Token `i` (0-based, in generation order; listing order is
    /// by id) is, by `i % 10`:
    /// - 0: expired recently: status `expired`, `expires_on` 1–25 days before `now`,
    ///   `modified_on` = `expires_on`, issued 30–365 days before expiry; about half never used,
    ///   the others last used 1–20 days before expiry,
    /// - 5: expired long ago: the same with `expires_on` 45–400 days ago; stored but never
    ///   listed (only tokens expired at most [`RECENTLY_EXPIRED_DAYS`] ago are),
    /// - 1, 6: disabled: status `disabled`, `modified_on` 60–300 days ago, issued 30–300 days
    ///   before that; about half never used, the others last used 1–25 days before `modified_on`,
    /// - 2: never used: active, no `last_used_on`, issued (= modified) 120–390 days ago,
    /// - 7: idle: active, last used 120–390 days ago, issued 400–700 days ago,
    /// - 3, 4, 8, 9: fresh: active, last used 0–20 days ago, issued 30–300 days ago; 4 and 9
    ///   expire 100–400 days after `now`, 9 has `not_before` = `issued_on`.
    ///
    /// Only the expired bands carry `expires_on` in the past; the others have none or a future
    /// one.
    pub account_tokens: usize,
    /// Who owns the fake's own token: [`TokenOwner::Account`] lists it among the account's
    /// tokens (active, named [`OWN_TOKEN_NAME`], used just now, issued 30 days before `now`).
    pub own_token_owner: TokenOwner,
    /// The own token holds only `token.list_self`: the account token listing shows it alone
    /// (nothing at all when it is user-owned).
    pub own_token_lists_self_only: bool,
    /// Zone ids served under `/client/v4/zones/{zone}` (32 lowercase hex characters each);
    /// any other zone gets a 404 envelope (code 7003).
    pub zones: Vec<String>,
    /// How many API Shield client certificates to generate in each zone (at most 100,000, and
    /// 1,000,000 over all zones), from their own random stream of `seed` and the zone id, so
    /// nothing else changes. Ids are UUIDs. Certificate `i` of a zone (0-based, in generation
    /// order; listing order is by id) is, by `i % 8`:
    /// - 0, 3: expired: `active`, `expires_on` 10–400 days before `now`,
    /// - 1, 4, 5, 7: valid: `active`, `expires_on` 100–1000 days after `now`,
    /// - 2: `pending_revocation` (never settles), expired 10–400 days ago,
    /// - 6: `revoked`, expired 10–400 days ago;
    ///
    /// and issued by [`OTHER_CA_ID`] when `i % 3 == 2`, by [`DEFAULT_CA_ID`] otherwise.
    /// `validity_days` is 365, 730 or 3650 (expired bands) or 1825 or 3650 (valid), and
    /// `issued_on` is `expires_on` minus that.
    pub client_certificates: usize,
    /// How long a certificate revoked through the API stays `pending_revocation` in listings
    /// before they show it `revoked` (on the fake's clock). The `DELETE` answer always says
    /// `pending_revocation`; with 0 the next listing already says `revoked`.
    pub revocation_settles_after: std::time::Duration,
    /// The legacy global API key, `(email, key)`: when set, `X-Auth-Email` + `X-Auth-Key`
    /// with these values are accepted as well as the Bearer token. `tokens/verify` refuses
    /// them (400, code 6003), as Cloudflare does.
    pub global_key: Option<(String, String)>,
    /// Cloudflare's API rate limit (see [`FakeRateLimit`]); `None` (the default): no limit and
    /// no rate limit headers.
    pub rate_limit: Option<FakeRateLimit>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            account_id: DEFAULT_ACCOUNT_ID.to_owned(),
            token: DEFAULT_TOKEN.to_owned(),
            seed: 1,
            registrations: 0,
            idle_share: 0.2,
            revoked_share: 0.05,
            no_user_share: 0.05,
            now: Utc::now(),
            max_per_page: 1000,
            max_bulk_ids: 100,
            service_tokens: 0,
            account_tokens: 0,
            own_token_owner: TokenOwner::Account,
            own_token_lists_self_only: false,
            zones: Vec::new(),
            client_certificates: 0,
            revocation_settles_after: std::time::Duration::ZERO,
            global_key: None,
            rate_limit: None,
        }
    }
}

impl FakeOptions {
    fn validate(&self) -> Result<(), String> {
        let share = |name: &str, value: f64| {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(format!("{name} must be between 0 and 1, got {value}"))
            }
        };
        share("idle_share", self.idle_share)?;
        share("revoked_share", self.revoked_share)?;
        share("no_user_share", self.no_user_share)?;
        if self.idle_share + self.revoked_share > 1.0 {
            return Err("idle_share + revoked_share must not exceed 1".to_owned());
        }
        if self.max_per_page == 0 || self.max_bulk_ids == 0 {
            return Err("max_per_page and max_bulk_ids must be at least 1".to_owned());
        }
        if self.service_tokens > tokens::MAX_SERVICE_TOKENS {
            return Err(format!(
                "at most {} service tokens can be generated",
                tokens::MAX_SERVICE_TOKENS
            ));
        }
        if self.account_tokens > account_tokens::MAX_ACCOUNT_TOKENS {
            return Err(format!(
                "at most {} account API tokens can be generated",
                account_tokens::MAX_ACCOUNT_TOKENS
            ));
        }
        let mut zones = std::collections::BTreeSet::new();
        for zone in &self.zones {
            let hex = zone.len() == 32
                && zone
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex {
                return Err(format!(
                    "zone id {zone:?} is not 32 lowercase hex characters"
                ));
            }
            if !zones.insert(zone) {
                return Err(format!("zone id {zone} is given twice"));
            }
        }
        if self.client_certificates > certificates::MAX_CERTIFICATES_PER_ZONE
            || self.client_certificates.saturating_mul(self.zones.len())
                > certificates::MAX_CERTIFICATES
        {
            return Err(format!(
                "at most {} client certificates per zone and {} in all can be generated",
                certificates::MAX_CERTIFICATES_PER_ZONE,
                certificates::MAX_CERTIFICATES
            ));
        }
        if chrono::Duration::from_std(self.revocation_settles_after).is_err() {
            return Err("revocation_settles_after is too long".to_owned());
        }
        if let Some((email, key)) = &self.global_key {
            if email.is_empty() || key.is_empty() {
                return Err("the global key needs an email and a key".to_owned());
            }
        }
        if let Some(limit) = &self.rate_limit {
            limit.validate()?;
        }
        if self.registrations > data::MAX_GENERATED {
            return Err(format!(
                "at most {} registrations can be generated",
                data::MAX_GENERATED
            ));
        }
        Ok(())
    }
}

/// Kinds of state-changing requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MutationKind {
    /// `DELETE .../registrations/{id}`
    DeleteOne,
    /// `DELETE .../registrations?id=..`
    BulkDelete,
    /// `POST .../registrations/revoke?id=..`
    Revoke,
    /// `POST .../registrations/unrevoke?id=..`
    Unrevoke,
    /// `POST .../devices/revoke` (deprecated)
    DeprecatedRevoke,
    /// `DELETE .../access/service_tokens/{id}`
    DeleteServiceToken,
    /// `DELETE .../accounts/{account}/tokens/{id}`
    DeleteAccountToken,
    /// `DELETE .../zones/{zone}/client_certificates/{id}`
    RevokeClientCertificate,
    /// `PATCH .../zones/{zone}/client_certificates/{id}` (reactivation)
    ReactivateClientCertificate,
}

/// One mutation request, logged when it arrived (before faults) and completed when answered.
#[derive(Debug, Clone, PartialEq)]
pub struct MutationRecord {
    /// 1, 2, 3... in order of arrival.
    pub seq: u64,
    pub method: String,
    /// Path without the query string.
    pub path: String,
    pub kind: MutationKind,
    /// The ids the request named (path, query or body), as given.
    pub ids: Vec<String>,
    /// The ids whose state the request changed.
    pub affected: Vec<String>,
    /// HTTP status of the answer; 0 when none was sent (connection reset by a fault, or the
    /// client went away during a delay).
    pub status: u16,
    /// Whether the request changed any state.
    pub applied: bool,
    /// Refused by the rate limiter (HTTP 429, never reached the API), not by a fault.
    pub rate_limited: bool,
    /// On the fake's clock (see [`FakeOptions::now`]).
    pub received_at: DateTime<Utc>,
}

/// Requests received per endpoint, failed and faulted ones included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub list_pages: u64,
    pub get_one: u64,
    pub delete_one: u64,
    pub bulk_delete: u64,
    pub revoke: u64,
    pub unrevoke: u64,
    pub deprecated_revoke: u64,
    /// Pages of `GET .../access/service_tokens`.
    pub list_service_tokens: u64,
    pub delete_service_token: u64,
    /// Pages of `GET .../accounts/{account}/tokens`.
    pub list_account_tokens: u64,
    pub delete_account_token: u64,
    /// Both `tokens/verify` endpoints.
    pub verify_token: u64,
    /// Pages of `GET .../zones/{zone}/client_certificates`, all zones.
    pub list_client_certificates: u64,
    pub revoke_client_certificate: u64,
    pub reactivate_client_certificate: u64,
    /// Everything, including requests to unknown paths.
    pub total: u64,
    /// Requests the rate limiter refused with 429 (also counted above; injected 429s are not
    /// counted here).
    pub rate_limited: u64,
}

/// Starts fakes.
pub struct FakeServer;

impl FakeServer {
    /// Generates the data and serves it on a random loopback port, on the current runtime.
    pub async fn start(opts: FakeOptions) -> io::Result<FakeHandle> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), opts).await
    }

    /// Like [`FakeServer::start`], on `addr`. Invalid options are an `InvalidInput` error.
    pub async fn start_on(addr: SocketAddr, opts: FakeOptions) -> io::Result<FakeHandle> {
        opts.validate()
            .map_err(|msg| io::Error::new(io::ErrorKind::InvalidInput, msg))?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (listener, listener_closed) = FakeListener::new(listener);

        let FakeOptions {
            account_id,
            token,
            seed,
            now,
            max_per_page,
            max_bulk_ids,
            own_token_owner,
            own_token_lists_self_only,
            global_key,
            rate_limit,
            ..
        } = opts.clone();
        let own_token = OwnToken {
            id: account_tokens::own_token_id(seed),
            owner: own_token_owner,
            lists_self_only: own_token_lists_self_only,
        };
        // A million registrations take a moment: keep the runtime's worker threads free.
        let (store, tokens, account_tokens, certificates) =
            tokio::task::spawn_blocking(move || {
                let tokens = TokenStore::new(tokens::generate(&opts));
                let mut account_tokens = AccountTokenStore::new(account_tokens::generate(&opts));
                if opts.own_token_owner == TokenOwner::Account {
                    account_tokens.insert_raw(account_tokens::own_token(seed, now).to_json());
                }
                let settles_after =
                    chrono::Duration::from_std(opts.revocation_settles_after).unwrap_or_default();
                let certificates = CertificateStore::new(&opts.zones, settles_after, |zone| {
                    certificates::generate(&opts, zone)
                });
                let store = Store::new(data::generate(&opts), seed);
                (store, tokens, account_tokens, certificates)
            })
            .await
            .map_err(io::Error::other)?;
        let (shutdown, mut shutdown_requested) = watch::channel(false);
        let shared = Arc::new(Shared {
            account_id,
            max_per_page,
            max_bulk_ids,
            clock: Clock::starting_at(now),
            token: Mutex::new(token),
            store: Mutex::new(store),
            tokens: Mutex::new(tokens),
            account_tokens: Mutex::new(account_tokens),
            certificates: Mutex::new(certificates),
            own_token,
            global_key,
            faults: Mutex::new(FaultSet::default()),
            rate_limit: rate_limit.map(RateLimiter::new),
            log: Mutex::new(Log::default()),
            shutdown,
        });

        let app = Router::new()
            .fallback(server::handle)
            .with_state(Arc::clone(&shared))
            .into_make_service_with_connect_info::<ConnControl>();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = shutdown_requested.wait_for(|stop| *stop).await;
            };
            if let Err(err) = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::error!(%err, "fake API server stopped");
            }
        });
        Ok(FakeHandle {
            shared,
            addr,
            listener_closed,
        })
    }
}

/// Control and inspection of a running fake. Clones share the same fake.
#[derive(Clone)]
pub struct FakeHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    listener_closed: watch::Receiver<()>,
}

impl std::fmt::Debug for FakeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FakeHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/client/v4`, to use in place of `https://api.cloudflare.com/client/v4`.
    pub fn base_url(&self) -> String {
        format!("http://{}/client/v4", self.addr)
    }

    pub fn account_id(&self) -> &str {
        &self.shared.account_id
    }

    pub fn token(&self) -> String {
        lock(&self.shared.token).clone()
    }

    /// Accept `token` from now on (and nothing else).
    pub fn set_token(&self, token: impl Into<String>) {
        *lock(&self.shared.token) = token.into();
    }

    /// The fake's current time (see [`FakeOptions::now`]).
    pub fn now(&self) -> DateTime<Utc> {
        self.shared.clock.now()
    }

    /// Ids of all stored registrations, revoked ones included, in listing order (sorted).
    pub fn registration_ids(&self) -> Vec<String> {
        lock(&self.shared.store).ids()
    }

    pub fn contains(&self, id: &str) -> bool {
        lock(&self.shared.store).contains(id)
    }

    /// The registration exactly as `GET .../registrations/{id}` would return it.
    pub fn get(&self, id: &str) -> Option<Value> {
        let store = lock(&self.shared.store);
        store
            .get(id)
            .and_then(|item| serde_json::to_value(item).ok())
    }

    pub fn len(&self) -> usize {
        lock(&self.shared.store).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores `object` exactly as given (broken timestamps, extra fields and all) under its
    /// string `id`, replacing any registration with that id; returns the id. An object without
    /// a string `id` is stored under `~raw-N`, listed after all UUIDs, and that key is returned.
    pub fn insert_raw(&self, object: Value) -> String {
        lock(&self.shared.store).insert_raw(object)
    }

    /// Stores a hand-made registration; returns its id.
    pub fn insert(&self, registration: &FakeRegistration) -> String {
        self.insert_raw(registration.to_json())
    }

    /// Removes a registration as someone else (the dashboard) would; `false` if absent. Not
    /// recorded as a mutation: the janitor did not make it.
    pub fn remove(&self, id: &str) -> bool {
        lock(&self.shared.store).remove(id)
    }

    /// Every mutation request received so far, in order of arrival.
    pub fn mutations(&self) -> Vec<MutationRecord> {
        lock(&self.shared.log).mutations.clone()
    }

    /// Registration ids deleted through the API (one-by-one or bulk), in the order they were
    /// deleted.
    pub fn deleted_ids(&self) -> Vec<String> {
        self.affected_by(&[MutationKind::DeleteOne, MutationKind::BulkDelete])
    }

    /// Ids revoked through the API (either revoke endpoint), in order; a later unrevoke does
    /// not remove an id from this list.
    pub fn revoked_ids(&self) -> Vec<String> {
        self.affected_by(&[MutationKind::Revoke, MutationKind::DeprecatedRevoke])
    }

    fn affected_by(&self, kinds: &[MutationKind]) -> Vec<String> {
        lock(&self.shared.log)
            .mutations
            .iter()
            .filter(|record| kinds.contains(&record.kind))
            .flat_map(|record| record.affected.iter().cloned())
            .collect()
    }

    /// Ids of all stored service tokens, in listing order (sorted).
    pub fn service_token_ids(&self) -> Vec<String> {
        lock(&self.shared.tokens).ids()
    }

    /// The service token exactly as the listing serves it.
    pub fn service_token(&self, id: &str) -> Option<Value> {
        lock(&self.shared.tokens).get(id).cloned()
    }

    /// Ids of the tokens in use (whose delete is refused), sorted.
    pub fn service_tokens_in_use(&self) -> Vec<String> {
        lock(&self.shared.tokens).in_use()
    }

    /// Attaches a token to the enrollment policy (`true`) or detaches it; `false` if there is
    /// no such token.
    pub fn set_service_token_in_use(&self, id: &str, in_use: bool) -> bool {
        lock(&self.shared.tokens).set_in_use(id, in_use)
    }

    /// Stores `object` exactly as given under its string `id` (`~raw-N` without one, listed
    /// after all UUIDs), not in use, replacing any token with that id; returns the key.
    pub fn insert_service_token_raw(&self, object: Value) -> String {
        lock(&self.shared.tokens).insert_raw(object, false)
    }

    /// Stores a hand-made service token, in use or not as it says; returns its id.
    pub fn insert_service_token(&self, token: &FakeServiceToken) -> String {
        lock(&self.shared.tokens).insert_raw(token.to_json(), token.in_use)
    }

    /// Service token ids deleted through the API, in the order they were deleted.
    pub fn deleted_service_token_ids(&self) -> Vec<String> {
        self.affected_by(&[MutationKind::DeleteServiceToken])
    }

    /// Ids of all stored account API tokens in listing order (sorted), those the listing does
    /// not show included; the own token among them when it is account-owned.
    pub fn account_token_ids(&self) -> Vec<String> {
        lock(&self.shared.account_tokens).ids()
    }

    /// The account API token exactly as the listing serves it.
    pub fn account_token(&self, id: &str) -> Option<Value> {
        lock(&self.shared.account_tokens).get(id).cloned()
    }

    /// Account API token ids deleted through the API, in the order they were deleted.
    pub fn deleted_account_token_ids(&self) -> Vec<String> {
        self.affected_by(&[MutationKind::DeleteAccountToken])
    }

    /// The id of the token the fake accepts (see [`FakeOptions::own_token_owner`]).
    pub fn own_token_id(&self) -> String {
        self.shared.own_token.id.clone()
    }

    /// Stores a hand-made account API token; returns its id.
    pub fn insert_account_token(&self, token: &FakeAccountToken) -> String {
        self.insert_account_token_raw(token.to_json())
    }

    /// Stores `object` exactly as given under its string `id` (`~raw-N` without one, listed
    /// after all hex ids), replacing any token with that id; returns the key.
    pub fn insert_account_token_raw(&self, object: Value) -> String {
        lock(&self.shared.account_tokens).insert_raw(object)
    }

    /// The zones served, sorted (those given in [`FakeOptions::zones`] and any a certificate
    /// was inserted into).
    pub fn zones(&self) -> Vec<String> {
        lock(&self.shared.certificates).zones()
    }

    /// Ids of a zone's certificates in listing order (sorted), whatever their status.
    pub fn certificate_ids(&self, zone: &str) -> Vec<String> {
        lock(&self.shared.certificates).ids(zone)
    }

    /// The certificate exactly as a listing would serve it now (a settled revocation shows
    /// `revoked`).
    pub fn certificate(&self, zone: &str, id: &str) -> Option<Value> {
        let mut certificates = lock(&self.shared.certificates);
        certificates.settle(self.shared.clock.now());
        certificates.get(zone, id).cloned()
    }

    /// Certificate ids whose state a revoke through the API changed, in order, all zones.
    pub fn revoked_certificate_ids(&self) -> Vec<String> {
        self.affected_by(&[MutationKind::RevokeClientCertificate])
    }

    /// Certificate ids a reactivation through the API changed, in order, all zones.
    pub fn reactivated_certificate_ids(&self) -> Vec<String> {
        self.affected_by(&[MutationKind::ReactivateClientCertificate])
    }

    /// Registration ids an unrevoke through the API changed, in order.
    pub fn unrevoked_ids(&self) -> Vec<String> {
        self.affected_by(&[MutationKind::Unrevoke])
    }

    /// Stores a hand-made certificate in `zone` (which is served from then on); returns its id.
    pub fn insert_certificate(&self, zone: &str, certificate: &FakeCertificate) -> String {
        self.insert_certificate_raw(zone, certificate.to_json())
    }

    /// Stores `object` exactly as given in `zone` (served from then on) under its string `id`
    /// (`~raw-N` without one, listed after all UUIDs), replacing any certificate with that id;
    /// returns the key.
    pub fn insert_certificate_raw(&self, zone: &str, object: Value) -> String {
        lock(&self.shared.certificates).insert_raw(zone, object)
    }

    pub fn request_counts(&self) -> RequestCounts {
        lock(&self.shared.log).counts
    }

    /// 429s the rate limiter sent (a block's refusals included; injected faults' are not).
    pub fn rate_limited(&self) -> u64 {
        self.shared
            .rate_limit
            .as_ref()
            .map_or(0, |limiter| limiter.counters().0)
    }

    /// How many times a request found the quota spent and started a block.
    pub fn blocks(&self) -> u64 {
        self.shared
            .rate_limit
            .as_ref()
            .map_or(0, |limiter| limiter.counters().1)
    }

    /// The quota remaining now and the time until the window ends, as the next `Ratelimit`
    /// header would say (while blocked: 0, and the time until the block ends); `None` without
    /// a rate limit.
    pub fn rate_limit_status(&self) -> Option<(u32, std::time::Duration)> {
        self.shared
            .rate_limit
            .as_ref()
            .map(|limiter| limiter.peek().quota())
    }

    /// Another consumer of the token spends `n` units of the current window now. It trips
    /// nothing by itself; if it leaves nothing, the next request trips the block. No-op without
    /// a rate limit.
    pub fn spend_quota(&self, n: u32) {
        if let Some(limiter) = &self.shared.rate_limit {
            limiter.spend(n);
        }
    }

    /// Replaces the fault rules (and restarts their counters).
    pub fn set_faults(&self, rules: Vec<FaultRule>) {
        *lock(&self.shared.faults) = FaultSet::new(rules);
    }

    pub fn clear_faults(&self) {
        self.set_faults(Vec::new());
    }

    /// Stops accepting connections and returns once the port is closed. Requests in flight
    /// (e.g. delayed by a fault) are still answered; idle keep-alive connections are closed.
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        let mut closed = self.listener_closed.clone();
        // Errs once the listener (the sender) is dropped, which is what we wait for.
        while closed.changed().await.is_ok() {}
    }
}
