//! Access service tokens of the fake: the deterministic generator, the typed builder tests use
//! for hand-made tokens, and the store that serves them by page number. No HTTP and no locking
//! here.
//!
//! The store also keeps what the real API keeps but does not serve: whether a token is in use
//! (attached to the device enrollment policy, or named by an Access policy, group or an app's
//! SCIM configuration). Such a token cannot be deleted.
//!
//! Pages are offsets into the tokens sorted by id, as in any page-numbered listing: deleting a
//! token between two page fetches moves every later token one place forward, so a client that
//! deletes while it pages skips tokens. Listing first and acting afterwards is the safe order.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::data::{format_time, splitmix64, text_seed};
use super::store::{Key, PageShape};
use super::FakeOptions;

/// Largest generated population of service tokens (accounts hold tens to hundreds).
pub(crate) const MAX_SERVICE_TOKENS: usize = 100_000;

/// Page size when a token listing names none: the default of Cloudflare's other page-numbered
/// listings (zones, account API tokens); this endpoint's own is not published.
pub const SERVICE_TOKENS_DEFAULT_PER_PAGE: usize = 20;
/// Largest page of tokens served, whatever `per_page` asks for. No public source states this
/// endpoint's maximum; 50 is the most that the other page-numbered listings in the facts accept
/// (account API tokens, client certificates), and a client that follows `total_pages` under a
/// cap this low works under any higher one.
pub const SERVICE_TOKENS_MAX_PER_PAGE: usize = 50;

/// Mixes the seed so that tokens do not draw from the registrations' random stream: adding
/// tokens never changes the registrations of a seed.
const TOKEN_STREAM: u64 = 0x7e4b_5e41_c3a0_0d11;

const NAME_PREFIXES: [&str; 5] = [
    "ci-deploy",
    "backup",
    "monitoring",
    "warp-enroll",
    "legacy-sync",
];

/// The band a generated token falls in, by its generation index `i`. Bands keep clear of one
/// another so a test's oracle never sits on a boundary (see [`FakeOptions::service_tokens`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Band {
    /// `expires_at` 10–400 days before now; about half of them never used.
    Expired,
    /// `last_seen_at` null; created 1–300 days ago, expiring a year or more after creation.
    NeverUsed,
    /// Last seen 120–390 days ago, not expired.
    Idle,
    /// Last seen 0–20 days ago, not expired.
    Fresh,
}

fn band(i: usize) -> Band {
    match i % 8 {
        0 | 4 => Band::Expired,
        1 | 6 => Band::NeverUsed,
        3 => Band::Idle,
        _ => Band::Fresh,
    }
}

/// Every sixth generated token (index `i % 6 == 0`) is attached to the enrollment policy.
fn generated_in_use(i: usize) -> bool {
    i.is_multiple_of(6)
}

/// Every ninth generated token (index `i % 9 == 4`) is disabled.
fn generated_disabled(i: usize) -> bool {
    i % 9 == 4
}

/// A service token made by hand in a test. Fill it with struct update syntax:
/// `FakeServiceToken { last_seen_at: None, ..FakeServiceToken::new(id, "ci", created) }`.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeServiceToken {
    pub id: String,
    pub name: String,
    /// How long the token is valid after creation, in Cloudflare's notation (`8760h`, `60m`).
    pub duration: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// `None` is served as `null`: never used.
    pub last_seen_at: Option<DateTime<Utc>>,
    pub enabled: bool,
    /// Kept by the fake, never served: attached to the device enrollment policy or named by a
    /// policy, so a delete is refused.
    pub in_use: bool,
}

impl FakeServiceToken {
    /// An enabled token valid for a year from `created_at`, never used, not in use. Its
    /// `client_id` is derived from `id`.
    pub fn new(id: impl Into<String>, name: impl Into<String>, created_at: DateTime<Utc>) -> Self {
        FakeServiceToken {
            id: id.into(),
            name: name.into(),
            duration: "8760h".to_owned(),
            created_at,
            expires_at: created_at + Duration::hours(8760),
            last_seen_at: None,
            enabled: true,
            in_use: false,
        }
    }

    /// The token as the fake serves it, generated ones included. `updated_at` is the creation
    /// time: the fake never refreshes or edits a token.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "client_id": client_id_for(&self.id),
            "name": self.name,
            "duration": self.duration,
            "created_at": format_time(self.created_at),
            "updated_at": format_time(self.created_at),
            "expires_at": format_time(self.expires_at),
            "last_seen_at": self.last_seen_at.map(format_time),
            "enabled": self.enabled,
        })
    }
}

/// Client ids look like Cloudflare's: 32 hex characters and `.access`.
fn client_id_for(id: &str) -> String {
    let hi = splitmix64(text_seed(id));
    format!("{hi:016x}{:016x}.access", splitmix64(hi))
}

/// Builds `opts.service_tokens` tokens from `opts.seed` around `opts.now`; the same options
/// always give the same tokens.
pub(crate) fn generate(opts: &FakeOptions) -> Vec<FakeServiceToken> {
    let mut rng = StdRng::seed_from_u64(opts.seed ^ TOKEN_STREAM);
    let now = opts.now;
    let days = |rng: &mut StdRng, low: i64, high: i64| {
        Duration::seconds(rng.gen_range(low * 86_400..=high * 86_400))
    };
    (0..opts.service_tokens)
        .map(|i| {
            let id = uuid::Builder::from_random_bytes(rng.gen())
                .into_uuid()
                .to_string();
            let name = format!(
                "{}-{:04}",
                NAME_PREFIXES[rng.gen_range(0..NAME_PREFIXES.len())],
                i + 1
            );
            let (hours, created, last_seen) = match band(i) {
                Band::Expired => {
                    let hours = [720_i64, 2160, 8760][rng.gen_range(0..3)];
                    let expired_ago = days(&mut rng, 10, 400);
                    let created = now - expired_ago - Duration::hours(hours);
                    let seen = rng
                        .gen::<bool>()
                        .then(|| created + days(&mut rng, 0, hours / 24 - 1));
                    (hours, created, seen)
                }
                Band::NeverUsed => {
                    let hours = [8760_i64, 17520][rng.gen_range(0..2)];
                    (hours, now - days(&mut rng, 1, 300), None)
                }
                Band::Idle => {
                    let hours = [17520_i64, 43800][rng.gen_range(0..2)];
                    let created = now - days(&mut rng, 400, 700);
                    (hours, created, Some(now - days(&mut rng, 120, 390)))
                }
                Band::Fresh => {
                    let hours = [8760_i64, 17520][rng.gen_range(0..2)];
                    let created = now - days(&mut rng, 30, 300);
                    (hours, created, Some(now - days(&mut rng, 0, 20)))
                }
            };
            FakeServiceToken {
                id,
                name,
                duration: format!("{hours}h"),
                created_at: created,
                expires_at: created + Duration::hours(hours),
                last_seen_at: last_seen,
                enabled: !generated_disabled(i),
                in_use: generated_in_use(i),
            }
        })
        .collect()
}

struct Entry {
    object: Value,
    in_use: bool,
}

/// What deleting a token did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Deletion {
    /// Removed; the token as it was served.
    Deleted(Value),
    /// Kept: the token is in use.
    InUse,
    NotFound,
}

/// One page of tokens and the numbers `result_info` reports.
pub(crate) struct TokenPage<'a> {
    pub items: Vec<&'a Value>,
    pub total_count: usize,
}

/// The fake's service tokens, sorted by id.
#[derive(Default)]
pub(crate) struct TokenStore {
    tokens: BTreeMap<Key, Entry>,
    /// Numbers the keys of raw objects that have no usable `id`.
    anonymous: u64,
}

impl TokenStore {
    pub(crate) fn new(generated: Vec<FakeServiceToken>) -> Self {
        let tokens = generated
            .into_iter()
            .map(|t| {
                let entry = Entry {
                    object: t.to_json(),
                    in_use: t.in_use,
                };
                (Key::parse(&t.id), entry)
            })
            .collect();
        TokenStore {
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

    pub(crate) fn in_use(&self) -> Vec<String> {
        self.tokens
            .iter()
            .filter(|(_, e)| e.in_use)
            .map(|(k, _)| k.to_string())
            .collect()
    }

    /// Marks a token in use or not; `false` if there is no such token.
    pub(crate) fn set_in_use(&mut self, id: &str, in_use: bool) -> bool {
        match self.tokens.get_mut(&Key::parse(id)) {
            Some(entry) => {
                entry.in_use = in_use;
                true
            }
            None => false,
        }
    }

    /// Stores `object` as-is under its string `id` (or `~raw-N` without one), replacing any
    /// token with that id; returns the key.
    pub(crate) fn insert_raw(&mut self, object: Value, in_use: bool) -> String {
        let id = match object.get("id").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => {
                self.anonymous += 1;
                format!("~raw-{}", self.anonymous)
            }
        };
        self.tokens
            .insert(Key::parse(&id), Entry { object, in_use });
        id
    }

    pub(crate) fn delete(&mut self, id: &str) -> Deletion {
        let key = Key::parse(id);
        match self.tokens.get(&key) {
            None => Deletion::NotFound,
            Some(entry) if entry.in_use => Deletion::InUse,
            Some(_) => match self.tokens.remove(&key) {
                Some(entry) => Deletion::Deleted(entry.object),
                None => Deletion::NotFound,
            },
        }
    }

    /// Page `page` (1-based) of `per_page` tokens in id order; empty past the end, bent by a
    /// fault's `shape` (see [`shaped_page`]).
    pub(crate) fn page(&self, page: usize, per_page: usize, shape: PageShape) -> TokenPage<'_> {
        let items = shaped_page(
            || self.tokens.values().map(|e| &e.object),
            page,
            per_page,
            shape,
        );
        TokenPage {
            items,
            total_count: self.tokens.len(),
        }
    }
}

/// Page `page` (1-based) of `per_page` items of a page-numbered listing whose items, in listing
/// order, `all` yields afresh on each call; empty past the end. A fault's `shape` bends it the
/// way `PageShape` describes for cursor listings: `ShortPageWithCursor` serves the first half of
/// the page only (the rest is lost to a client that does not notice), `DuplicateIds` starts the
/// page with the previous page's last item.
pub(crate) fn shaped_page<'a, I>(
    all: impl Fn() -> I,
    page: usize,
    per_page: usize,
    shape: PageShape,
) -> Vec<&'a Value>
where
    I: Iterator<Item = &'a Value>,
{
    let offset = (page - 1).saturating_mul(per_page);
    match shape {
        PageShape::ShortPageWithCursor => all().skip(offset).take(per_page.div_ceil(2)).collect(),
        PageShape::DuplicateIds => {
            let mut items: Vec<&Value> = all()
                .skip(offset)
                .take(per_page.saturating_sub(1).max(1))
                .collect();
            let previous = match offset {
                0 => items.first().copied(),
                _ => all().nth(offset - 1),
            };
            if let Some(previous) = previous {
                match offset {
                    0 => items.push(previous),
                    _ => items.insert(0, previous),
                }
            }
            items
        }
        PageShape::Normal | PageShape::RepeatCursor => all().skip(offset).take(per_page).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use uuid::Uuid;

    fn opts(n: usize, seed: u64) -> FakeOptions {
        FakeOptions {
            seed,
            service_tokens: n,
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
        let a: Vec<Value> = generate(&opts(40, 3))
            .into_iter()
            .map(|t| t.to_json())
            .collect();
        let b: Vec<Value> = generate(&opts(40, 3))
            .into_iter()
            .map(|t| t.to_json())
            .collect();
        let c: Vec<Value> = generate(&opts(40, 4))
            .into_iter()
            .map(|t| t.to_json())
            .collect();
        assert_eq!(a, b);
        assert_ne!(a[0]["id"], c[0]["id"]);
    }

    #[test]
    fn bands_hold_and_never_touch_their_boundaries() {
        let o = opts(400, 9);
        let now = o.now;
        for (i, token) in generate(&o).iter().enumerate() {
            let t = &token.to_json();
            assert!(Uuid::parse_str(t["id"].as_str().unwrap()).is_ok());
            let created = stamp(t, "created_at").unwrap();
            let expires = stamp(t, "expires_at").unwrap();
            let seen = stamp(t, "last_seen_at");
            let hours: i64 = t["duration"]
                .as_str()
                .unwrap()
                .trim_end_matches('h')
                .parse()
                .unwrap();
            assert_eq!(expires - created, Duration::hours(hours), "{t}");
            assert!(
                seen.is_none_or(|s| s >= created && s <= now && s < expires),
                "{t}"
            );
            match band(i) {
                Band::Expired => {
                    let ago = now - expires;
                    assert!(
                        ago >= Duration::days(10) && ago <= Duration::days(400),
                        "{t}"
                    );
                }
                Band::NeverUsed => {
                    assert!(seen.is_none() && expires > now, "{t}");
                }
                Band::Idle => {
                    let ago = now - seen.unwrap();
                    assert!(
                        ago >= Duration::days(120) && ago <= Duration::days(390),
                        "{t}"
                    );
                    assert!(expires > now, "{t}");
                }
                Band::Fresh => {
                    assert!(
                        now - seen.unwrap() <= Duration::days(20) && expires > now,
                        "{t}"
                    );
                }
            }
            assert_eq!(token.in_use, i % 6 == 0);
            assert_eq!(t["enabled"], i % 9 != 4);
            assert!(t["client_id"].as_str().unwrap().ends_with(".access"));
        }
    }

    #[test]
    fn pages_are_offsets_in_id_order_and_empty_past_the_end() {
        let store = TokenStore::new(generate(&opts(7, 1)));
        let ids = store.ids();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        let page_ids = |page: usize| -> Vec<String> {
            store
                .page(page, 3, PageShape::Normal)
                .items
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(page_ids(1), ids[0..3]);
        assert_eq!(page_ids(3), ids[6..7]);
        assert!(page_ids(4).is_empty());
        assert_eq!(store.page(4, 3, PageShape::Normal).total_count, 7);
        let short = store.page(1, 3, PageShape::ShortPageWithCursor);
        assert_eq!(short.items.len(), 2);
        let dup = store.page(2, 3, PageShape::DuplicateIds);
        assert_eq!(dup.items[0]["id"], ids[2].as_str());
        assert_eq!(dup.items.len(), 3);
    }

    #[test]
    fn a_token_in_use_is_kept_and_others_are_deleted_once() {
        let mut store = TokenStore::default();
        let created = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        let free = FakeServiceToken::new("t-free", "free", created);
        let used = FakeServiceToken {
            in_use: true,
            ..FakeServiceToken::new("t-used", "used", created)
        };
        store.insert_raw(free.to_json(), free.in_use);
        store.insert_raw(used.to_json(), used.in_use);
        assert_eq!(store.delete("t-used"), Deletion::InUse);
        assert_eq!(store.delete("t-free"), Deletion::Deleted(free.to_json()));
        assert_eq!(store.delete("t-free"), Deletion::NotFound);
        assert_eq!(store.ids(), ["t-used"]);
        assert!(store.set_in_use("t-used", false));
        assert!(!store.set_in_use("t-gone", true));
        assert!(matches!(store.delete("t-used"), Deletion::Deleted(_)));
    }
}
