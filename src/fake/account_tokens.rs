//! Account-owned API tokens of the fake: the deterministic generator, the typed builder tests
//! use for hand-made tokens, the fake's own token (the one it accepts), and the store that
//! serves them by page number. No HTTP and no locking here.
//!
//! Listing reproduces the documented quirks: expired tokens are listed only with
//! `include_expired=true`, and then only those expired within [`RECENTLY_EXPIRED_DAYS`]; a
//! token holding only `token.list_self` sees itself alone. Pages are offsets into the tokens
//! sorted by id (`direction=desc` reverses the order), as in any page-numbered listing.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::data::{splitmix64, text_seed};
use super::store::{Key, PageShape};
use super::tokens::shaped_page;
use super::FakeOptions;

/// Largest generated population of account API tokens.
pub(crate) const MAX_ACCOUNT_TOKENS: usize = 100_000;

/// Page size when an account token listing names none (documented default).
pub const ACCOUNT_TOKENS_DEFAULT_PER_PAGE: usize = 20;
/// Smallest `per_page` the listing accepts; smaller is refused with HTTP 400.
pub const ACCOUNT_TOKENS_MIN_PER_PAGE: usize = 5;
/// Largest `per_page` the listing accepts; larger is refused with HTTP 400.
pub const ACCOUNT_TOKENS_MAX_PER_PAGE: usize = 50;

/// `include_expired=true` lists only tokens whose `expires_on` is at most this many days
/// before now. The real API says "recently expired" without a number: 30 days is the fake's
/// assumption, and generated tokens keep well clear of it (1–25 or 45–400 days).
pub const RECENTLY_EXPIRED_DAYS: i64 = 30;

/// Name of the fake's own token when it is listed among the account's tokens.
pub const OWN_TOKEN_NAME: &str = "zt-janitor";

/// Mixes the seed so that account tokens do not draw from another random stream: adding them
/// never changes the registrations or service tokens of a seed.
const ACCOUNT_TOKEN_STREAM: u64 = 0x3ac1_77e2_9b05_d4c7;
/// Mixes the seed into the own token's id.
const OWN_TOKEN_STREAM: u64 = 0x0e11_5e1f_70c3_a1d9;

const NAME_PREFIXES: [&str; 5] = [
    "terraform",
    "ci-deploy",
    "dns-automation",
    "analytics-read",
    "cert-renewal",
];

/// Permission groups a token's single policy grants (ids made up, names Cloudflare's).
const PERMISSION_GROUPS: [(&str, &str); 4] = [
    ("c8fed203ed3043cba015a93ad1616f1f", "Zone Read"),
    ("4755a26eedb94da69e1066d98aa820be", "DNS Write"),
    ("e086da7e2179491d91ee5f35b3ca210a", "Workers Scripts Write"),
    (
        "8b47d2786a534c08a1f94ee8f9f599ef",
        "Account API Tokens Read",
    ),
];

/// Who owns the fake's own token (the one it accepts as `Authorization: Bearer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenOwner {
    /// An account-owned token: listed among the account's tokens and named by
    /// `GET /accounts/{id}/tokens/verify`.
    #[default]
    Account,
    /// A user-owned token: not among the account's tokens, named by `GET /user/tokens/verify`.
    User,
}

/// `status` of an account API token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountTokenStatus {
    Active,
    Disabled,
    Expired,
}

impl AccountTokenStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountTokenStatus::Active => "active",
            AccountTokenStatus::Disabled => "disabled",
            AccountTokenStatus::Expired => "expired",
        }
    }
}

/// The band a generated token falls in, by its generation index `i` (see
/// [`FakeOptions::account_tokens`]). Bands keep clear of one another and of every boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Band {
    /// `expired`, `expires_on` 1–25 days ago: listed with `include_expired=true`.
    ExpiredRecently,
    /// `expired`, `expires_on` 45–400 days ago: stored, never listed.
    ExpiredLongAgo,
    /// `disabled`, `modified_on` 60–300 days ago.
    Disabled,
    /// Active, never used (`last_used_on` absent), issued 120–390 days ago.
    NeverUsed,
    /// Active, last used 120–390 days ago.
    Idle,
    /// Active, last used 0–20 days ago.
    Fresh,
}

fn band(i: usize) -> Band {
    match i % 10 {
        0 => Band::ExpiredRecently,
        5 => Band::ExpiredLongAgo,
        1 | 6 => Band::Disabled,
        2 => Band::NeverUsed,
        7 => Band::Idle,
        _ => Band::Fresh,
    }
}

/// An account API token made by hand in a test. Fill it with struct update syntax:
/// `FakeAccountToken { last_used_on: Some(t), ..FakeAccountToken::new(id, "ci", issued) }`.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeAccountToken {
    /// 32 lowercase hex characters for real tokens; any string here.
    pub id: String,
    pub name: String,
    pub status: AccountTokenStatus,
    pub issued_on: DateTime<Utc>,
    pub modified_on: DateTime<Utc>,
    /// `None` leaves the field out: the token never expires.
    pub expires_on: Option<DateTime<Utc>>,
    /// `None` leaves the field out: never used.
    pub last_used_on: Option<DateTime<Utc>>,
    /// `None` leaves the field out.
    pub not_before: Option<DateTime<Utc>>,
}

impl FakeAccountToken {
    /// An active token issued (and last modified) at `issued_on`, never expiring, never used.
    pub fn new(id: impl Into<String>, name: impl Into<String>, issued_on: DateTime<Utc>) -> Self {
        FakeAccountToken {
            id: id.into(),
            name: name.into(),
            status: AccountTokenStatus::Active,
            issued_on,
            modified_on: issued_on,
            expires_on: None,
            last_used_on: None,
            not_before: None,
        }
    }

    /// The token as the fake lists it, generated ones included: absent stamps are left out,
    /// `policies` holds one policy derived from the id, `condition` is empty.
    pub fn to_json(&self) -> Value {
        let mut object = json!({
            "id": self.id,
            "name": self.name,
            "status": self.status.as_str(),
            "issued_on": format_secs(self.issued_on),
            "modified_on": format_secs(self.modified_on),
            "policies": [policy_for(&self.id)],
            "condition": {},
        });
        for (field, stamp) in [
            ("not_before", self.not_before),
            ("expires_on", self.expires_on),
            ("last_used_on", self.last_used_on),
        ] {
            if let Some(stamp) = stamp {
                object[field] = Value::String(format_secs(stamp));
            }
        }
        object
    }
}

/// Account tokens' stamps are whole seconds, as in Cloudflare's examples.
pub(crate) fn format_secs(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// 32 lowercase hex characters derived from `seed`.
pub(crate) fn hex32(seed: u64) -> String {
    let hi = splitmix64(seed);
    format!("{hi:016x}{:016x}", splitmix64(hi))
}

/// One `allow` policy on every resource of the account, with a permission group picked by id.
fn policy_for(id: &str) -> Value {
    let seed = text_seed(id);
    let (group_id, group_name) =
        PERMISSION_GROUPS[(seed % PERMISSION_GROUPS.len() as u64) as usize];
    json!({
        "id": hex32(seed ^ 0x9011),
        "effect": "allow",
        "resources": {"com.cloudflare.api.account.*": "*"},
        "permission_groups": [{"id": group_id, "name": group_name}],
    })
}

/// The id of the fake's own token for `seed`: 32 hex characters, the same for every run.
pub(crate) fn own_token_id(seed: u64) -> String {
    hex32(seed ^ OWN_TOKEN_STREAM)
}

/// The own token as listed when it is account-owned: active, issued 30 days before `now`,
/// used just now, never expiring.
pub(crate) fn own_token(seed: u64, now: DateTime<Utc>) -> FakeAccountToken {
    FakeAccountToken {
        last_used_on: Some(now),
        ..FakeAccountToken::new(own_token_id(seed), OWN_TOKEN_NAME, now - Duration::days(30))
    }
}

/// Builds `opts.account_tokens` tokens from `opts.seed` around `opts.now` (the own token not
/// included); the same options always give the same tokens.
pub(crate) fn generate(opts: &FakeOptions) -> Vec<FakeAccountToken> {
    let mut rng = StdRng::seed_from_u64(opts.seed ^ ACCOUNT_TOKEN_STREAM);
    let now = opts.now;
    let days = |rng: &mut StdRng, low: i64, high: i64| {
        Duration::seconds(rng.gen_range(low * 86_400..=high * 86_400))
    };
    (0..opts.account_tokens)
        .map(|i| {
            let id = format!("{:032x}", rng.gen::<u128>());
            let name = format!(
                "{}-{:04}",
                NAME_PREFIXES[rng.gen_range(0..NAME_PREFIXES.len())],
                i + 1
            );
            let mut token = FakeAccountToken::new(id, name, now);
            match band(i) {
                b @ (Band::ExpiredRecently | Band::ExpiredLongAgo) => {
                    let expired_ago = match b {
                        Band::ExpiredRecently => days(&mut rng, 1, 25),
                        _ => days(&mut rng, 45, 400),
                    };
                    let expires = now - expired_ago;
                    token.status = AccountTokenStatus::Expired;
                    token.issued_on = expires - days(&mut rng, 30, 365);
                    token.modified_on = expires;
                    token.expires_on = Some(expires);
                    token.last_used_on = rng.gen::<bool>().then(|| expires - days(&mut rng, 1, 20));
                }
                Band::Disabled => {
                    let modified = now - days(&mut rng, 60, 300);
                    token.status = AccountTokenStatus::Disabled;
                    token.issued_on = modified - days(&mut rng, 30, 300);
                    token.modified_on = modified;
                    token.last_used_on =
                        rng.gen::<bool>().then(|| modified - days(&mut rng, 1, 25));
                }
                Band::NeverUsed => {
                    token.issued_on = now - days(&mut rng, 120, 390);
                    token.modified_on = token.issued_on;
                }
                Band::Idle => {
                    token.issued_on = now - days(&mut rng, 400, 700);
                    token.modified_on = token.issued_on;
                    token.last_used_on = Some(now - days(&mut rng, 120, 390));
                }
                Band::Fresh => {
                    token.issued_on = now - days(&mut rng, 30, 300);
                    token.modified_on = token.issued_on;
                    token.last_used_on = Some(now - days(&mut rng, 0, 20));
                    if i % 10 == 4 || i % 10 == 9 {
                        token.expires_on = Some(now + days(&mut rng, 100, 400));
                    }
                    if i % 10 == 9 {
                        token.not_before = Some(token.issued_on);
                    }
                }
            }
            token
        })
        .collect()
}

/// What a listing asks for, validated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenQuery {
    pub page: usize,
    pub per_page: usize,
    pub include_expired: bool,
    pub descending: bool,
}

/// One page of tokens and the numbers `result_info` reports.
pub(crate) struct AccountTokenPage<'a> {
    pub items: Vec<&'a Value>,
    pub total_count: usize,
}

/// A stored token and what its expiry is read from, parsed once at insertion so that a
/// listing's scan stays cheap.
struct Entry {
    object: Value,
    /// `status` is `expired`.
    status_expired: bool,
    /// `expires_on`, if readable.
    expires_on: Option<DateTime<Utc>>,
}

impl Entry {
    fn new(object: Value) -> Self {
        Entry {
            status_expired: object.get("status").and_then(Value::as_str) == Some("expired"),
            expires_on: object
                .get("expires_on")
                .and_then(Value::as_str)
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc)),
            object,
        }
    }

    /// A token is expired when its `status` says so or its `expires_on` has passed; it counts
    /// as recently expired unless a readable `expires_on` is more than
    /// [`RECENTLY_EXPIRED_DAYS`] before `now`.
    fn expiry(&self, now: DateTime<Utc>) -> Expiry {
        let expired = self.status_expired || self.expires_on.is_some_and(|at| at <= now);
        match (expired, self.expires_on) {
            (false, _) => Expiry::Unexpired,
            (true, Some(at)) if now - at > Duration::days(RECENTLY_EXPIRED_DAYS) => Expiry::LongAgo,
            (true, _) => Expiry::Recently,
        }
    }
}

/// The fake's account API tokens, sorted by id.
#[derive(Default)]
pub(crate) struct AccountTokenStore {
    tokens: BTreeMap<Key, Entry>,
    /// Numbers the keys of raw objects that have no usable `id`.
    anonymous: u64,
}

impl AccountTokenStore {
    pub(crate) fn new(generated: Vec<FakeAccountToken>) -> Self {
        let tokens = generated
            .into_iter()
            .map(|t| (Key::parse(&t.id), Entry::new(t.to_json())))
            .collect();
        AccountTokenStore {
            tokens,
            anonymous: 0,
        }
    }

    pub(crate) fn ids(&self) -> Vec<String> {
        self.tokens.keys().map(Key::to_string).collect()
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Value> {
        self.tokens.get(&Key::parse(id)).map(|e| &e.object)
    }

    /// Stores `object` as-is under its string `id` (or `~raw-N` without one), replacing any
    /// token with that id; returns the key.
    pub(crate) fn insert_raw(&mut self, object: Value) -> String {
        let id = match object.get("id").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => {
                self.anonymous += 1;
                format!("~raw-{}", self.anonymous)
            }
        };
        self.tokens.insert(Key::parse(&id), Entry::new(object));
        id
    }

    /// Removes a token; whether there was one.
    pub(crate) fn delete(&mut self, id: &str) -> bool {
        self.tokens.remove(&Key::parse(id)).is_some()
    }

    /// Page `query.page` of the tokens the listing shows at `now`: unexpired ones, recently
    /// expired ones too with `include_expired`, and only `only` when given (the `list_self`
    /// quirk). `total_count` counts the tokens shown.
    pub(crate) fn page(
        &self,
        query: &TokenQuery,
        now: DateTime<Utc>,
        only: Option<&str>,
        shape: PageShape,
    ) -> AccountTokenPage<'_> {
        let only = only.map(Key::parse);
        let shown = |key: &Key, token: &Entry| {
            only.as_ref().is_none_or(|only| only == key)
                && match token.expiry(now) {
                    Expiry::Unexpired => true,
                    Expiry::Recently => query.include_expired,
                    Expiry::LongAgo => false,
                }
        };
        let total_count = self.tokens.iter().filter(|(k, t)| shown(k, t)).count();
        let items = if query.descending {
            shaped_page(
                || {
                    self.tokens
                        .iter()
                        .rev()
                        .filter(|(k, t)| shown(k, t))
                        .map(|(_, t)| &t.object)
                },
                query.page,
                query.per_page,
                shape,
            )
        } else {
            shaped_page(
                || {
                    self.tokens
                        .iter()
                        .filter(|(k, t)| shown(k, t))
                        .map(|(_, t)| &t.object)
                },
                query.page,
                query.per_page,
                shape,
            )
        };
        AccountTokenPage { items, total_count }
    }
}

enum Expiry {
    Unexpired,
    Recently,
    LongAgo,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn opts(n: usize, seed: u64) -> FakeOptions {
        FakeOptions {
            seed,
            account_tokens: n,
            now: Utc.with_ymd_and_hms(2026, 1, 29, 0, 0, 0).unwrap(),
            ..FakeOptions::default()
        }
    }

    fn stamp(object: &Value, field: &str) -> Option<DateTime<Utc>> {
        object[field]
            .as_str()
            .map(|s| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc))
    }

    #[test]
    fn same_seed_same_tokens_and_another_seed_differs() {
        let json = |o: &FakeOptions| -> Vec<Value> {
            generate(o).into_iter().map(|t| t.to_json()).collect()
        };
        assert_eq!(json(&opts(40, 3)), json(&opts(40, 3)));
        assert_ne!(json(&opts(40, 3))[0]["id"], json(&opts(40, 4))[0]["id"]);
        assert_eq!(own_token_id(3), own_token_id(3));
        assert_ne!(own_token_id(3), own_token_id(4));
    }

    #[test]
    fn bands_hold_and_never_touch_their_boundaries() {
        let o = opts(500, 9);
        let now = o.now;
        let ago = |t: DateTime<Utc>| now - t;
        let within = |d: Duration, low: i64, high: i64| {
            d >= Duration::days(low) && d <= Duration::days(high)
        };
        for (i, token) in generate(&o).iter().enumerate() {
            let t = &token.to_json();
            let id = t["id"].as_str().unwrap();
            assert!(
                id.len() == 32
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{t}"
            );
            let issued = stamp(t, "issued_on").unwrap();
            let modified = stamp(t, "modified_on").unwrap();
            let used = stamp(t, "last_used_on");
            let expires = stamp(t, "expires_on");
            assert!(issued <= modified && modified <= now, "{t}");
            assert!(used.is_none_or(|u| u >= issued && u <= now), "{t}");
            assert_eq!(t.get("last_used_on").is_some(), used.is_some(), "{t}");
            match band(i) {
                Band::ExpiredRecently => {
                    assert_eq!(t["status"], "expired");
                    assert!(within(ago(expires.unwrap()), 1, 25), "{t}");
                    assert_eq!(modified, expires.unwrap());
                }
                Band::ExpiredLongAgo => {
                    assert_eq!(t["status"], "expired");
                    assert!(within(ago(expires.unwrap()), 45, 400), "{t}");
                }
                Band::Disabled => {
                    assert_eq!(t["status"], "disabled");
                    assert!(within(ago(modified), 60, 300), "{t}");
                    assert!(
                        used.is_none_or(|u| u < modified) && expires.is_none(),
                        "{t}"
                    );
                }
                Band::NeverUsed => {
                    assert_eq!(t["status"], "active");
                    assert!(used.is_none() && within(ago(issued), 120, 390), "{t}");
                }
                Band::Idle => {
                    assert_eq!(t["status"], "active");
                    assert!(within(ago(used.unwrap()), 120, 390), "{t}");
                }
                Band::Fresh => {
                    assert_eq!(t["status"], "active");
                    assert!(within(ago(used.unwrap()), 0, 20), "{t}");
                    assert!(
                        expires.is_none_or(|e| e - now >= Duration::days(100)),
                        "{t}"
                    );
                }
            }
        }
    }

    #[test]
    fn listing_hides_expired_tokens_unless_asked_and_old_ones_always() {
        let o = opts(40, 2);
        let store = AccountTokenStore::new(generate(&o));
        let query = |include_expired| TokenQuery {
            page: 1,
            per_page: 50,
            include_expired,
            descending: false,
        };
        let statuses = |include_expired| -> Vec<String> {
            store
                .page(&query(include_expired), o.now, None, PageShape::Normal)
                .items
                .iter()
                .map(|t| t["status"].as_str().unwrap().to_owned())
                .collect()
        };
        let without = statuses(false);
        let with = statuses(true);
        assert!(without.iter().all(|s| s != "expired"));
        assert_eq!(with.len(), without.len() + 4, "4 of 40 expired recently");
        assert_eq!(store.ids().len(), 40);
        let own = own_token(2, o.now);
        let mut store = store;
        store.insert_raw(own.to_json());
        let only = store.page(&query(true), o.now, Some(&own.id), PageShape::Normal);
        assert_eq!(only.total_count, 1);
        assert_eq!(only.items[0]["id"], own.id.as_str());
        let desc = store.page(
            &TokenQuery {
                descending: true,
                ..query(false)
            },
            o.now,
            None,
            PageShape::Normal,
        );
        let mut ids: Vec<&str> = desc
            .items
            .iter()
            .map(|t| t["id"].as_str().unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] > w[1]));
        ids.reverse();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
}
