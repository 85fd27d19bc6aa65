//! The fake's registrations, kept sorted by id: lookup, listing pages behind opaque cursors, and
//! the state changes delete/revoke/unrevoke make. No HTTP and no locking here.
//!
//! Listing walks the ids in order and the cursor names the last id served, so deleting (or
//! adding) registrations between page fetches never makes a listing skip or repeat an item.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Bound;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::data::{self, GenRegistration, RegistrationJson, RenderContext};

/// A registration id. Canonical (lowercase, hyphenated) UUIDs are kept as 16 bytes, which is
/// what makes a million generated registrations cheap; anything else a test inserts is kept as
/// text. The order is the order of the id strings either way (lowercase hex digits sort like
/// their values), so listing order does not depend on how an id is stored.
#[derive(Debug, Clone)]
pub(crate) enum Key {
    Uuid([u8; 16]),
    Text(Box<str>),
}

impl Key {
    pub(crate) fn from_uuid(bytes: [u8; 16]) -> Self {
        Key::Uuid(bytes)
    }

    pub(crate) fn parse(id: &str) -> Self {
        match Uuid::try_parse(id) {
            Ok(uuid) if uuid.hyphenated().encode_lower(&mut Uuid::encode_buffer()) == id => {
                Key::Uuid(uuid.into_bytes())
            }
            _ => Key::Text(id.into()),
        }
    }

    fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            Key::Uuid(bytes) => {
                let mut buf = Uuid::encode_buffer();
                f(Uuid::from_bytes(*bytes).hyphenated().encode_lower(&mut buf))
            }
            Key::Text(text) => f(text),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_str(|s| f.write_str(s))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Key::Uuid(a), Key::Uuid(b)) => a.cmp(b),
            (Key::Text(a), Key::Text(b)) => a.cmp(b),
            _ => self.with_str(|a| other.with_str(|b| a.cmp(b))),
        }
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Key {}

/// One stored registration: generated (compact) or inserted by a test (served exactly as given).
pub(crate) enum Stored {
    Generated(GenRegistration),
    Raw(Box<Value>),
}

impl Stored {
    /// Revoked means `revoked_at` is present and not null, whatever its value.
    fn is_revoked(&self) -> bool {
        match self {
            Stored::Generated(r) => r.is_revoked(),
            Stored::Raw(v) => v.get("revoked_at").is_some_and(|t| !t.is_null()),
        }
    }
}

/// A registration ready to be serialized: rendered, or borrowed as inserted.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum Item<'a> {
    Generated(Box<RegistrationJson>),
    Raw(&'a Value),
}

/// Which registrations a listing asks for (`status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusFilter {
    Active,
    Revoked,
    All,
}

impl StatusFilter {
    pub(crate) fn parse(raw: &str) -> Option<Self> {
        match raw {
            "active" => Some(StatusFilter::Active),
            "revoked" => Some(StatusFilter::Revoked),
            "all" => Some(StatusFilter::All),
            _ => None,
        }
    }

    fn admits(self, stored: &Stored) -> bool {
        match self {
            StatusFilter::Active => !stored.is_revoked(),
            StatusFilter::Revoked => stored.is_revoked(),
            StatusFilter::All => true,
        }
    }
}

/// Where a listing resumes: after the id the previous page ended with, or at the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor(Option<Key>);

/// Cursors start with this so that the start of a listing has a non-empty cursor too (needed to
/// serve `RepeatCursor` on a first page) and so that garbage is recognised.
const CURSOR_PREFIX: &str = "zt";

impl Cursor {
    pub(crate) const START: Cursor = Cursor(None);

    fn after(key: &Key) -> Self {
        Cursor(Some(key.clone()))
    }

    /// `zt` + lowercase hex of the last id served.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::from(CURSOR_PREFIX);
        if let Some(key) = &self.0 {
            key.with_str(|id| {
                for b in id.bytes() {
                    out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
                    out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
                }
            });
        }
        out
    }

    /// The empty string (what the last page hands out) also means the start.
    pub(crate) fn decode(raw: &str) -> Option<Self> {
        if raw.is_empty() {
            return Some(Cursor::START);
        }
        let hex = raw.strip_prefix(CURSOR_PREFIX)?.as_bytes();
        if hex.is_empty() {
            return Some(Cursor::START);
        }
        if hex.len() % 2 != 0 {
            return None;
        }
        let bytes = hex
            .chunks(2)
            .map(|pair| {
                let digits = std::str::from_utf8(pair).ok()?;
                u8::from_str_radix(digits, 16).ok()
            })
            .collect::<Option<Vec<u8>>>()?;
        let id = String::from_utf8(bytes).ok()?;
        Some(Cursor(Some(Key::parse(&id))))
    }
}

/// How a page is bent by a listing fault; `Normal` is the real API's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PageShape {
    Normal,
    /// The page's cursor is the request's own cursor.
    RepeatCursor,
    /// About half a page, with a cursor even when nothing follows.
    ShortPageWithCursor,
    /// The page starts with the item the previous page ended with.
    DuplicateIds,
}

/// A listing request after its query string was validated.
#[derive(Debug, Clone)]
pub(crate) struct PageQuery {
    pub status: StatusFilter,
    pub per_page: usize,
    pub cursor: Cursor,
    /// Repeated `id` parameters: only these registrations.
    pub ids: Option<BTreeSet<Key>>,
}

pub(crate) struct Page<'a> {
    pub items: Vec<Item<'a>>,
    /// Empty on the last page.
    pub cursor: String,
}

pub(crate) struct Store {
    registrations: BTreeMap<Key, Stored>,
    ctx: RenderContext,
    /// Numbers the keys of raw objects that have no usable `id`.
    anonymous: u64,
}

impl Store {
    pub(crate) fn new(generated: data::Generated, seed: u64) -> Self {
        let registrations = generated
            .registrations
            .into_iter()
            .map(|(id, r)| (Key::from_uuid(id), Stored::Generated(r)))
            .collect();
        Store {
            registrations,
            ctx: RenderContext {
                devices: generated.devices,
                seed,
            },
            anonymous: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.registrations.len()
    }

    pub(crate) fn ids(&self) -> Vec<String> {
        self.registrations.keys().map(Key::to_string).collect()
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.registrations.contains_key(&Key::parse(id))
    }

    pub(crate) fn get(&self, id: &str) -> Option<Item<'_>> {
        let (key, stored) = self.registrations.get_key_value(&Key::parse(id))?;
        Some(self.item(key, stored))
    }

    fn item<'a>(&'a self, key: &Key, stored: &'a Stored) -> Item<'a> {
        match stored {
            Stored::Generated(r) => Item::Generated(Box::new(r.render(key, &self.ctx))),
            Stored::Raw(v) => Item::Raw(v),
        }
    }

    /// Stores `object` as-is under its string `id`, replacing any registration with that id.
    /// An object without a string id is stored under `~raw-N` (sorting after UUIDs) so it is
    /// still listed; that key is returned.
    pub(crate) fn insert_raw(&mut self, object: Value) -> String {
        let id = match object.get("id").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => {
                self.anonymous += 1;
                format!("~raw-{}", self.anonymous)
            }
        };
        self.registrations
            .insert(Key::parse(&id), Stored::Raw(Box::new(object)));
        id
    }

    pub(crate) fn remove(&mut self, id: &str) -> bool {
        self.registrations.remove(&Key::parse(id)).is_some()
    }

    /// Sets `revoked_at` (and `updated_at`) to `now`; `false` if absent or already revoked.
    pub(crate) fn revoke(&mut self, id: &str, now: DateTime<Utc>) -> bool {
        match self.registrations.get_mut(&Key::parse(id)) {
            Some(Stored::Generated(r)) => r.revoke(now),
            Some(Stored::Raw(v)) if !is_revoked_raw(v) => set_raw_revocation(v, true, now),
            _ => false,
        }
    }

    /// Clears `revoked_at`; `false` if absent or not revoked.
    pub(crate) fn unrevoke(&mut self, id: &str, now: DateTime<Utc>) -> bool {
        match self.registrations.get_mut(&Key::parse(id)) {
            Some(Stored::Generated(r)) => r.unrevoke(now),
            Some(Stored::Raw(v)) if is_revoked_raw(v) => set_raw_revocation(v, false, now),
            _ => false,
        }
    }

    /// One page of a listing, ascending by id.
    pub(crate) fn page(&self, query: &PageQuery, shape: PageShape) -> Page<'_> {
        let after = query.cursor.0.as_ref();
        let take = match shape {
            PageShape::ShortPageWithCursor => query.per_page.div_ceil(2),
            PageShape::DuplicateIds => query.per_page.saturating_sub(1).max(1),
            PageShape::Normal | PageShape::RepeatCursor => query.per_page,
        };
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut walk = self.matching(query, (lower, Bound::Unbounded)).peekable();
        let mut chosen: Vec<(&Key, &Stored)> = walk.by_ref().take(take).collect();
        let more = walk.peek().is_some();

        let last = chosen.last().map(|(key, _)| Cursor::after(key));
        let cursor = match (shape, last) {
            (PageShape::RepeatCursor, _) => query.cursor.encode(),
            (PageShape::ShortPageWithCursor, Some(last)) => last.encode(),
            (_, Some(last)) if more => last.encode(),
            _ => String::new(),
        };
        if shape == PageShape::DuplicateIds {
            // The item the previous page ended with; on a first page, the page's own first item.
            let upper = after.map_or(Bound::Unbounded, Bound::Included);
            let previous = match after {
                Some(_) => self.matching(query, (Bound::Unbounded, upper)).next_back(),
                None => chosen.first().copied(),
            };
            if let Some(previous) = previous {
                match after {
                    Some(_) => chosen.insert(0, previous),
                    None => chosen.push(previous),
                }
            }
        }
        Page {
            items: chosen
                .into_iter()
                .map(|(key, stored)| self.item(key, stored))
                .collect(),
            cursor,
        }
    }

    /// Registrations within `range` that pass the query's status and id filters, in id order.
    fn matching<'a: 'q, 'q>(
        &'a self,
        query: &'q PageQuery,
        range: (Bound<&Key>, Bound<&Key>),
    ) -> Box<dyn DoubleEndedIterator<Item = (&'a Key, &'a Stored)> + 'q> {
        let status = query.status;
        match &query.ids {
            None => Box::new(
                self.registrations
                    .range::<Key, _>(range)
                    .filter(move |(_, s)| status.admits(s)),
            ),
            Some(ids) => Box::new(
                ids.range::<Key, _>(range)
                    .filter_map(|id| self.registrations.get_key_value(id))
                    .filter(move |(_, s)| status.admits(s)),
            ),
        }
    }
}

fn is_revoked_raw(object: &Value) -> bool {
    object.get("revoked_at").is_some_and(|t| !t.is_null())
}

/// Sets (`revoked`) or clears `revoked_at` of a raw object and stamps `updated_at`; `false` if
/// the value is not an object, so there is nothing to change.
fn set_raw_revocation(object: &mut Value, revoked: bool, now: DateTime<Utc>) -> bool {
    let Some(map) = object.as_object_mut() else {
        return false;
    };
    let stamp = data::format_time(now);
    let revoked_at = if revoked {
        Value::String(stamp.clone())
    } else {
        Value::Null
    };
    map.insert("revoked_at".to_owned(), revoked_at);
    map.insert("updated_at".to_owned(), Value::String(stamp));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeOptions;
    use chrono::TimeZone;
    use serde_json::json;

    fn store(registrations: usize) -> Store {
        let opts = FakeOptions {
            registrations,
            revoked_share: 0.3,
            now: Utc.with_ymd_and_hms(2026, 1, 29, 0, 0, 0).unwrap(),
            ..FakeOptions::default()
        };
        Store::new(data::generate(&opts), opts.seed)
    }

    fn query(status: StatusFilter, per_page: usize, cursor: Cursor) -> PageQuery {
        PageQuery {
            status,
            per_page,
            cursor,
            ids: None,
        }
    }

    fn ids(page: &Page<'_>) -> Vec<String> {
        page.items
            .iter()
            .map(|i| {
                serde_json::to_value(i).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        for id in ["0b9a1c2e-6f0e-4a53-9d0e-5b7a3f1c2d4e", "r-1", "ünïcode"] {
            let cursor = Cursor::after(&Key::parse(id));
            let encoded = cursor.encode();
            assert!(
                encoded.bytes().all(|b| b.is_ascii_alphanumeric()),
                "{encoded}"
            );
            assert_eq!(Cursor::decode(&encoded), Some(cursor));
        }
        assert_eq!(Cursor::decode(""), Some(Cursor::START));
        assert_eq!(Cursor::decode(&Cursor::START.encode()), Some(Cursor::START));
        for garbage in ["abc", "zt0", "ztzz", "zt80", "page=2"] {
            assert_eq!(Cursor::decode(garbage), None, "{garbage}");
        }
    }

    #[test]
    fn uuid_and_text_keys_sort_like_their_strings() {
        let mut ids = vec![
            "ffffffff-0000-4000-8000-000000000000",
            "00000000-0000-4000-8000-000000000000",
            "0a000000-0000-4000-8000-000000000000",
            "09zz",
            "~raw-1",
            "A-upper",
            "0A000000-0000-4000-8000-000000000000",
        ];
        let mut keys: Vec<Key> = ids.iter().map(|id| Key::parse(id)).collect();
        assert!(matches!(keys[0], Key::Uuid(_)));
        assert!(
            matches!(keys[6], Key::Text(_)),
            "uppercase UUIDs keep their spelling"
        );
        keys.sort();
        ids.sort();
        assert_eq!(keys.iter().map(Key::to_string).collect::<Vec<_>>(), ids);
    }

    #[test]
    fn listing_survives_deletions_between_pages() {
        let mut store = store(250);
        let expected = store.ids();
        let mut seen = Vec::new();
        let mut cursor = Cursor::START;
        loop {
            let page = store.page(
                &query(StatusFilter::All, 40, cursor.clone()),
                PageShape::Normal,
            );
            let page_ids = ids(&page);
            let next = page.cursor.clone();
            seen.extend(page_ids.iter().cloned());
            // Delete the item just served and one not yet served.
            if let Some(last) = page_ids.last() {
                store.remove(last);
            }
            let ahead = expected.iter().find(|id| !seen.contains(id)).cloned();
            if let Some(ahead) = ahead {
                store.remove(&ahead);
                seen.push(ahead);
            }
            if next.is_empty() {
                break;
            }
            cursor = Cursor::decode(&next).unwrap();
        }
        seen.sort();
        assert_eq!(seen, expected);
    }

    #[test]
    fn status_filter_and_revocation() {
        let mut store = store(100);
        let active = store.page(
            &query(StatusFilter::Active, 1000, Cursor::START),
            PageShape::Normal,
        );
        let revoked = store.page(
            &query(StatusFilter::Revoked, 1000, Cursor::START),
            PageShape::Normal,
        );
        assert_eq!(active.items.len() + revoked.items.len(), 100);
        assert!(!revoked.items.is_empty());
        let id = ids(&active)[0].clone();
        let now = Utc::now();
        assert!(store.revoke(&id, now));
        assert!(!store.revoke(&id, now), "second revoke changes nothing");
        let value = serde_json::to_value(store.get(&id).unwrap()).unwrap();
        assert_eq!(value["revoked_at"], data::format_time(now));
        assert!(store.unrevoke(&id, now));
        let value = serde_json::to_value(store.get(&id).unwrap()).unwrap();
        assert!(value["revoked_at"].is_null());
    }

    #[test]
    fn raw_objects_are_served_as_given_and_can_be_revoked() {
        let mut store = store(0);
        let object = json!({"id": "r-1", "last_seen_at": "not a time", "extra": [1, 2]});
        assert_eq!(store.insert_raw(object.clone()), "r-1");
        assert_eq!(store.insert_raw(json!({"no_id": true})), "~raw-1");
        assert_eq!(
            serde_json::to_value(store.get("r-1").unwrap()).unwrap(),
            object
        );
        assert!(store.revoke("r-1", Utc::now()));
        let revoked = store.page(
            &query(StatusFilter::Revoked, 10, Cursor::START),
            PageShape::Normal,
        );
        assert_eq!(ids(&revoked), ["r-1"]);
        assert!(store.remove("r-1"));
        assert_eq!(store.ids(), ["~raw-1"]);
    }

    #[test]
    fn page_shapes_bend_the_listing_as_documented() {
        let store = store(30);
        let all = store.ids();
        let first = store.page(
            &query(StatusFilter::All, 10, Cursor::START),
            PageShape::Normal,
        );
        let second_cursor = Cursor::decode(&first.cursor).unwrap();

        let repeat = store.page(
            &query(StatusFilter::All, 10, second_cursor.clone()),
            PageShape::RepeatCursor,
        );
        assert_eq!(repeat.cursor, first.cursor);
        let repeat_first = store.page(
            &query(StatusFilter::All, 10, Cursor::START),
            PageShape::RepeatCursor,
        );
        assert_eq!(Cursor::decode(&repeat_first.cursor), Some(Cursor::START));
        assert!(!repeat_first.cursor.is_empty());

        let short = store.page(
            &query(StatusFilter::All, 10, Cursor::START),
            PageShape::ShortPageWithCursor,
        );
        assert_eq!(ids(&short), all[..5]);
        let tail = store.page(
            &query(StatusFilter::All, 100, second_cursor.clone()),
            PageShape::ShortPageWithCursor,
        );
        assert!(!tail.cursor.is_empty(), "a short page keeps a cursor");

        let duplicate = store.page(
            &query(StatusFilter::All, 10, second_cursor),
            PageShape::DuplicateIds,
        );
        let dup_ids = ids(&duplicate);
        assert_eq!(
            dup_ids[0], all[9],
            "starts with the previous page's last item"
        );
        assert_eq!(dup_ids[1..], all[10..19]);
    }

    #[test]
    fn id_filter_lists_only_the_given_registrations() {
        let store = store(50);
        let all = store.ids();
        let wanted: BTreeSet<Key> = [&all[3], &all[7], &all[40]]
            .iter()
            .map(|id| Key::parse(id))
            .collect();
        let q = PageQuery {
            ids: Some(wanted),
            ..query(StatusFilter::All, 2, Cursor::START)
        };
        let first = store.page(&q, PageShape::Normal);
        assert_eq!(ids(&first), [all[3].clone(), all[7].clone()]);
        let q = PageQuery {
            cursor: Cursor::decode(&first.cursor).unwrap(),
            ..q
        };
        let second = store.page(&q, PageShape::Normal);
        assert_eq!(ids(&second), [all[40].clone()]);
        assert_eq!(second.cursor, "");
    }
}
