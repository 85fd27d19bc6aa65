//! API Shield mTLS client certificates of the fake, per zone: the deterministic generator, the
//! typed builder tests use for hand-made certificates, and the store that serves them by page
//! number and revokes them. No HTTP and no locking here.
//!
//! A revoke (`DELETE`) makes a certificate `pending_revocation` and answers it so; listings
//! show it `revoked` once `revocation_settles_after` has passed on the fake's clock. Revoking a
//! certificate whose revocation is under way or done changes nothing and answers it unchanged.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::data::{splitmix64, text_seed};
use super::store::{Key, PageShape};
use super::tokens::shaped_page;
use super::FakeOptions;

/// Largest generated population of certificates per zone.
pub(crate) const MAX_CERTIFICATES_PER_ZONE: usize = 100_000;
/// Largest generated population of certificates over all zones.
pub(crate) const MAX_CERTIFICATES: usize = 1_000_000;

/// Page size when a certificate listing names none.
pub const CERTIFICATES_DEFAULT_PER_PAGE: usize = 20;
/// Smallest `per_page` the listing accepts; smaller is refused with HTTP 400.
pub const CERTIFICATES_MIN_PER_PAGE: usize = 5;
/// Largest `per_page` the listing accepts; larger is refused with HTTP 400.
pub const CERTIFICATES_MAX_PER_PAGE: usize = 50;

/// The CA of most certificates (and of [`FakeCertificate::new`]).
pub const DEFAULT_CA_ID: &str = "5a1c0d7e-3b2f-4c69-9e8a-1f0b6d4c2a17";
pub const DEFAULT_CA_NAME: &str = "Cloudflare Managed CA for account";
/// The CA of every third generated certificate (generation index `i % 3 == 2`).
pub const OTHER_CA_ID: &str = "c3e9b4a0-7d51-4f2e-8b6c-90a4d1e7f358";
pub const OTHER_CA_NAME: &str = "Partner Devices CA (BYO-CA)";

/// Mixes the seed so that certificates do not draw from another random stream; each zone
/// mixes in its id too, so adding a zone never changes another zone's certificates.
const CERTIFICATE_STREAM: u64 = 0x6c3f_a2d1_58e0_b947;

const NAME_PREFIXES: [&str; 5] = [
    "iot-sensor",
    "mobile-app",
    "partner-api",
    "kiosk",
    "payments-gw",
];
const UNITS: [&str; 3] = ["Engineering", "Field Operations", "Partners"];

/// `status` of a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateStatus {
    Active,
    PendingReactivation,
    PendingRevocation,
    Revoked,
}

impl CertificateStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateStatus::Active => "active",
            CertificateStatus::PendingReactivation => "pending_reactivation",
            CertificateStatus::PendingRevocation => "pending_revocation",
            CertificateStatus::Revoked => "revoked",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        [
            CertificateStatus::Active,
            CertificateStatus::PendingReactivation,
            CertificateStatus::PendingRevocation,
            CertificateStatus::Revoked,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }
}

/// The band a generated certificate falls in, by its generation index `i` in its zone (see
/// [`FakeOptions::client_certificates`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Band {
    /// Active, `expires_on` 10–400 days ago.
    Expired,
    /// Active, `expires_on` 100–1000 days ahead.
    Valid,
    /// `pending_revocation`, expired 10–400 days ago; never settles.
    PendingRevocation,
    /// `revoked`, expired 10–400 days ago.
    Revoked,
}

fn band(i: usize) -> Band {
    match i % 8 {
        0 | 3 => Band::Expired,
        2 => Band::PendingRevocation,
        6 => Band::Revoked,
        _ => Band::Valid,
    }
}

/// A client certificate made by hand in a test. Fill it with struct update syntax:
/// `FakeCertificate { status: CertificateStatus::Revoked, ..FakeCertificate::new(..) }`.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeCertificate {
    pub id: String,
    pub common_name: String,
    pub status: CertificateStatus,
    pub issued_on: DateTime<Utc>,
    pub expires_on: DateTime<Utc>,
    pub ca_id: String,
    pub ca_name: String,
    pub serial_number: String,
    pub fingerprint_sha256: String,
}

impl FakeCertificate {
    /// An active certificate of the default CA; serial number and fingerprint derived from `id`.
    pub fn new(
        id: impl Into<String>,
        common_name: impl Into<String>,
        issued_on: DateTime<Utc>,
        expires_on: DateTime<Utc>,
    ) -> Self {
        let id = id.into();
        let seed = text_seed(&id);
        FakeCertificate {
            serial_number: hex(seed ^ 0x5e41, 40),
            fingerprint_sha256: hex(seed ^ 0xf1f2, 64),
            id,
            common_name: common_name.into(),
            status: CertificateStatus::Active,
            issued_on,
            expires_on,
            ca_id: DEFAULT_CA_ID.to_owned(),
            ca_name: DEFAULT_CA_NAME.to_owned(),
        }
    }

    /// The certificate as the fake lists it, generated ones included. The PEM bodies are
    /// clearly fake; subject fields and `validity_days` (whole days from issue to expiry) are
    /// derived.
    pub fn to_json(&self) -> Value {
        let seed = text_seed(&self.id);
        json!({
            "id": self.id,
            "certificate": pem("CERTIFICATE", &self.fingerprint_sha256),
            "csr": pem("CERTIFICATE REQUEST", &self.serial_number),
            "certificate_authority": {"id": self.ca_id, "name": self.ca_name},
            "common_name": self.common_name,
            "country": "US",
            "state": "California",
            "location": "San Francisco",
            "organization": "Example Inc.",
            "organizational_unit": UNITS[(seed % UNITS.len() as u64) as usize],
            "expires_on": format_secs(self.expires_on),
            "issued_on": format_secs(self.issued_on),
            "fingerprint_sha256": self.fingerprint_sha256,
            "serial_number": self.serial_number,
            "signature": "SHA256WithRSA",
            "ski": hex(seed ^ 0x5c1, 40),
            "status": self.status.as_str(),
            "validity_days": (self.expires_on - self.issued_on).num_days(),
        })
    }
}

fn format_secs(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `len` lowercase hex characters derived from `seed`.
fn hex(seed: u64, len: usize) -> String {
    let mut out = String::with_capacity(len + 16);
    let mut x = seed;
    while out.len() < len {
        x = splitmix64(x);
        out.push_str(&format!("{x:016x}"));
    }
    out.truncate(len);
    out
}

/// A PEM-looking block whose body says it is fake (base64 alphabet only).
fn pem(label: &str, tag: &str) -> String {
    format!(
        "-----BEGIN {label}-----\nRkFLRS1aVC1KQU5JVE9SLU5PVC1BLVJFQUwtQ0VSVElGSUNBVEU{tag}\n-----END {label}-----\n"
    )
}

/// Builds `opts.client_certificates` certificates of `zone` from `opts.seed` around
/// `opts.now`; the same options and zone always give the same certificates.
pub(crate) fn generate(opts: &FakeOptions, zone: &str) -> Vec<FakeCertificate> {
    let mut rng =
        StdRng::seed_from_u64(opts.seed ^ CERTIFICATE_STREAM ^ splitmix64(text_seed(zone)));
    let now = opts.now;
    let days = |rng: &mut StdRng, low: i64, high: i64| {
        Duration::seconds(rng.gen_range(low * 86_400..=high * 86_400))
    };
    (0..opts.client_certificates)
        .map(|i| {
            let id = uuid::Builder::from_random_bytes(rng.gen())
                .into_uuid()
                .to_string();
            let common_name = format!(
                "{}-{:04}",
                NAME_PREFIXES[rng.gen_range(0..NAME_PREFIXES.len())],
                i + 1
            );
            let band = band(i);
            let (expires_on, validity) = match band {
                Band::Valid => (
                    now + days(&mut rng, 100, 1000),
                    [1825_i64, 3650][rng.gen_range(0..2)],
                ),
                _ => (
                    now - days(&mut rng, 10, 400),
                    [365_i64, 730, 3650][rng.gen_range(0..3)],
                ),
            };
            let status = match band {
                Band::Expired | Band::Valid => CertificateStatus::Active,
                Band::PendingRevocation => CertificateStatus::PendingRevocation,
                Band::Revoked => CertificateStatus::Revoked,
            };
            let (ca_id, ca_name) = match i % 3 {
                2 => (OTHER_CA_ID, OTHER_CA_NAME),
                _ => (DEFAULT_CA_ID, DEFAULT_CA_NAME),
            };
            FakeCertificate {
                status,
                ca_id: ca_id.to_owned(),
                ca_name: ca_name.to_owned(),
                ..FakeCertificate::new(
                    id,
                    common_name,
                    expires_on - Duration::days(validity),
                    expires_on,
                )
            }
        })
        .collect()
}

/// What a listing asks for, validated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CertificateQuery {
    /// `None`: every status (`status=all`, or no `status`).
    pub status: Option<CertificateStatus>,
    pub page: usize,
    pub per_page: usize,
}

impl CertificateQuery {
    /// Reads a `status` parameter: `all` or one of the four statuses.
    pub(crate) fn parse_status(raw: &str) -> Option<Option<CertificateStatus>> {
        match raw {
            "all" => Some(None),
            other => CertificateStatus::parse(other).map(Some),
        }
    }
}

/// One page of certificates and the numbers `result_info` reports.
pub(crate) struct CertificatePage<'a> {
    pub items: Vec<&'a Value>,
    pub total_count: usize,
}

/// What revoking a certificate did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Revocation {
    /// Now `pending_revocation`: the certificate as answered.
    Revoked(Value),
    /// Already `pending_revocation` or `revoked`: the certificate, unchanged.
    AlreadyRevoked(Value),
    NotFound,
}

/// What reactivating a certificate did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reactivation {
    /// Was `pending_revocation`, now `active`: the certificate as answered.
    Reactivated(Value),
    /// Not revoked (`active`, `pending_reactivation`): the certificate, unchanged.
    NotRevoked(Value),
    /// Its revocation has settled: too late.
    Revoked,
    NotFound,
}

#[derive(Default)]
struct Zone {
    certificates: BTreeMap<Key, Value>,
}

/// The fake's certificates by zone, each zone's sorted by id.
pub(crate) struct CertificateStore {
    zones: BTreeMap<String, Zone>,
    /// Revocations made through the API that listings have not shown `revoked` yet.
    pending: Vec<(String, Key, DateTime<Utc>)>,
    settles_after: Duration,
    /// Numbers the keys of raw objects that have no usable `id`.
    anonymous: u64,
}

impl CertificateStore {
    /// The certificates of every zone in `zones`, made by `generate`.
    pub(crate) fn new(
        zones: &[String],
        settles_after: Duration,
        mut generate: impl FnMut(&str) -> Vec<FakeCertificate>,
    ) -> Self {
        let zones = zones
            .iter()
            .map(|zone| {
                let certificates = generate(zone)
                    .into_iter()
                    .map(|c| (Key::parse(&c.id), c.to_json()))
                    .collect();
                (zone.clone(), Zone { certificates })
            })
            .collect();
        CertificateStore {
            zones,
            pending: Vec::new(),
            settles_after,
            anonymous: 0,
        }
    }

    pub(crate) fn zones(&self) -> Vec<String> {
        self.zones.keys().cloned().collect()
    }

    pub(crate) fn has_zone(&self, zone: &str) -> bool {
        self.zones.contains_key(zone)
    }

    /// Ids of a zone's certificates in listing order; empty for an unknown zone.
    pub(crate) fn ids(&self, zone: &str) -> Vec<String> {
        self.zones
            .get(zone)
            .map(|z| z.certificates.keys().map(Key::to_string).collect())
            .unwrap_or_default()
    }

    /// Shows `revoked` for every revocation older than `settles_after` at `now`.
    pub(crate) fn settle(&mut self, now: DateTime<Utc>) {
        let settles_after = self.settles_after;
        let zones = &mut self.zones;
        self.pending.retain(|(zone, key, at)| {
            if now - *at < settles_after {
                return true;
            }
            let object = zones
                .get_mut(zone)
                .and_then(|z| z.certificates.get_mut(key));
            if let Some(object) = object {
                if object.get("status").and_then(Value::as_str)
                    == Some(CertificateStatus::PendingRevocation.as_str())
                {
                    object["status"] = Value::from(CertificateStatus::Revoked.as_str());
                }
            }
            false
        });
    }

    /// The certificate as stored now (call [`CertificateStore::settle`] first).
    pub(crate) fn get(&self, zone: &str, id: &str) -> Option<&Value> {
        self.zones.get(zone)?.certificates.get(&Key::parse(id))
    }

    /// Stores `object` as-is in `zone` (served from now on, if it was not) under its string
    /// `id` (or `~raw-N` without one), replacing any certificate with that id; returns the key.
    pub(crate) fn insert_raw(&mut self, zone: &str, object: Value) -> String {
        let id = match object.get("id").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => {
                self.anonymous += 1;
                format!("~raw-{}", self.anonymous)
            }
        };
        let key = Key::parse(&id);
        self.pending.retain(|(z, k, _)| !(z == zone && *k == key));
        self.zones
            .entry(zone.to_owned())
            .or_default()
            .certificates
            .insert(key, object);
        id
    }

    /// Revokes a certificate of a served zone at `now`.
    pub(crate) fn revoke(&mut self, zone: &str, id: &str, now: DateTime<Utc>) -> Revocation {
        let key = Key::parse(id);
        let Some(object) = self
            .zones
            .get_mut(zone)
            .and_then(|z| z.certificates.get_mut(&key))
        else {
            return Revocation::NotFound;
        };
        let status = object.get("status").and_then(Value::as_str);
        if matches!(status, Some("pending_revocation" | "revoked")) {
            return Revocation::AlreadyRevoked(object.clone());
        }
        object["status"] = Value::from(CertificateStatus::PendingRevocation.as_str());
        let answer = object.clone();
        self.pending.push((zone.to_owned(), key, now));
        Revocation::Revoked(answer)
    }

    /// Reactivates a certificate of a served zone whose revocation is still pending (call
    /// [`CertificateStore::settle`] first): it is `active` again and its revocation never
    /// settles.
    pub(crate) fn reactivate(&mut self, zone: &str, id: &str) -> Reactivation {
        let key = Key::parse(id);
        let Some(object) = self
            .zones
            .get_mut(zone)
            .and_then(|z| z.certificates.get_mut(&key))
        else {
            return Reactivation::NotFound;
        };
        match object.get("status").and_then(Value::as_str) {
            Some("pending_revocation") => {
                object["status"] = Value::from(CertificateStatus::Active.as_str());
                let answer = object.clone();
                self.pending.retain(|(z, k, _)| !(z == zone && *k == key));
                Reactivation::Reactivated(answer)
            }
            Some("revoked") => Reactivation::Revoked,
            _ => Reactivation::NotRevoked(object.clone()),
        }
    }

    /// Page `query.page` of a served zone's certificates with the status asked for (settle
    /// first); `None` for an unknown zone.
    pub(crate) fn page(
        &self,
        zone: &str,
        query: &CertificateQuery,
        shape: PageShape,
    ) -> Option<CertificatePage<'_>> {
        let zone = self.zones.get(zone)?;
        let wanted = query.status.map(CertificateStatus::as_str);
        let shown =
            |c: &&Value| wanted.is_none_or(|w| c.get("status").and_then(Value::as_str) == Some(w));
        let items = shaped_page(
            || zone.certificates.values().filter(shown),
            query.page,
            query.per_page,
            shape,
        );
        Some(CertificatePage {
            items,
            total_count: zone.certificates.values().filter(shown).count(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const ZONE: &str = "023e105f4ecef8ad9ca31a8372d0c353";

    fn opts(n: usize, seed: u64) -> FakeOptions {
        FakeOptions {
            seed,
            client_certificates: n,
            now: Utc.with_ymd_and_hms(2026, 1, 29, 0, 0, 0).unwrap(),
            ..FakeOptions::default()
        }
    }

    fn stamp(object: &Value, field: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(object[field].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn same_seed_and_zone_same_certificates_and_zones_differ() {
        let json = |o: &FakeOptions, zone: &str| -> Vec<Value> {
            generate(o, zone).into_iter().map(|c| c.to_json()).collect()
        };
        assert_eq!(json(&opts(20, 3), ZONE), json(&opts(20, 3), ZONE));
        assert_ne!(
            json(&opts(20, 3), ZONE)[0]["id"],
            json(&opts(20, 4), ZONE)[0]["id"]
        );
        let other = "ffffffffffffffffffffffffffffffff";
        assert_ne!(
            json(&opts(20, 3), ZONE)[0]["id"],
            json(&opts(20, 3), other)[0]["id"]
        );
    }

    #[test]
    fn bands_hold_and_never_touch_their_boundaries() {
        let o = opts(400, 5);
        let now = o.now;
        let within = |d: Duration, low: i64, high: i64| {
            d >= Duration::days(low) && d <= Duration::days(high)
        };
        for (i, cert) in generate(&o, ZONE).iter().enumerate() {
            let c = &cert.to_json();
            let expires = stamp(c, "expires_on");
            let issued = stamp(c, "issued_on");
            assert_eq!(c["validity_days"], (expires - issued).num_days(), "{c}");
            assert!(issued < now, "{c}");
            let expected_ca = if i % 3 == 2 {
                OTHER_CA_ID
            } else {
                DEFAULT_CA_ID
            };
            assert_eq!(c["certificate_authority"]["id"], expected_ca);
            assert_eq!(c["fingerprint_sha256"].as_str().unwrap().len(), 64);
            let status = c["status"].as_str().unwrap();
            match band(i) {
                Band::Expired => {
                    assert_eq!(status, "active");
                    assert!(within(now - expires, 10, 400), "{c}");
                }
                Band::Valid => {
                    assert_eq!(status, "active");
                    assert!(within(expires - now, 100, 1000), "{c}");
                }
                Band::PendingRevocation => {
                    assert_eq!(status, "pending_revocation");
                    assert!(within(now - expires, 10, 400), "{c}");
                }
                Band::Revoked => {
                    assert_eq!(status, "revoked");
                    assert!(within(now - expires, 10, 400), "{c}");
                }
            }
        }
    }

    #[test]
    fn a_revocation_is_pending_then_settles_and_is_not_repeated() {
        let o = opts(8, 1);
        let mut store = CertificateStore::new(&[ZONE.to_owned()], Duration::seconds(60), |z| {
            generate(&o, z)
        });
        let ids = store.ids(ZONE);
        let active = ids
            .iter()
            .find(|id| store.get(ZONE, id).unwrap()["status"] == "active")
            .unwrap()
            .clone();
        let now = o.now;
        let Revocation::Revoked(answer) = store.revoke(ZONE, &active, now) else {
            panic!("not revoked")
        };
        assert_eq!(answer["status"], "pending_revocation");
        assert!(matches!(
            store.revoke(ZONE, &active, now),
            Revocation::AlreadyRevoked(_)
        ));
        store.settle(now + Duration::seconds(59));
        assert_eq!(
            store.get(ZONE, &active).unwrap()["status"],
            "pending_revocation"
        );
        store.settle(now + Duration::seconds(60));
        assert_eq!(store.get(ZONE, &active).unwrap()["status"], "revoked");
        assert_eq!(store.revoke(ZONE, "nope", now), Revocation::NotFound);
        assert_eq!(store.revoke("other", &active, now), Revocation::NotFound);
        let query = CertificateQuery {
            status: Some(CertificateStatus::Revoked),
            page: 1,
            per_page: 50,
        };
        let revoked = store.page(ZONE, &query, PageShape::Normal).unwrap();
        assert_eq!(revoked.total_count, 2, "the generated one and ours");
        assert!(store.page("other", &query, PageShape::Normal).is_none());
    }

    #[test]
    fn a_pending_revocation_can_be_reactivated_and_a_settled_one_cannot() {
        let o = opts(8, 1);
        let mut store = CertificateStore::new(&[ZONE.to_owned()], Duration::seconds(60), |z| {
            generate(&o, z)
        });
        let active: Vec<String> = store
            .ids(ZONE)
            .into_iter()
            .filter(|id| store.get(ZONE, id).unwrap()["status"] == "active")
            .take(2)
            .collect();
        let (early, late) = (&active[0], &active[1]);
        let now = o.now;
        store.revoke(ZONE, early, now);
        store.revoke(ZONE, late, now);
        store.settle(now + Duration::seconds(30));
        let Reactivation::Reactivated(answer) = store.reactivate(ZONE, early) else {
            panic!("a pending revocation is reactivated")
        };
        assert_eq!(answer["status"], "active");
        assert!(matches!(
            store.reactivate(ZONE, early),
            Reactivation::NotRevoked(_)
        ));
        store.settle(now + Duration::seconds(60));
        assert_eq!(
            store.get(ZONE, early).unwrap()["status"],
            "active",
            "a reactivated certificate's revocation never settles"
        );
        assert_eq!(store.get(ZONE, late).unwrap()["status"], "revoked");
        assert_eq!(store.reactivate(ZONE, late), Reactivation::Revoked);
        assert_eq!(store.reactivate(ZONE, "nope"), Reactivation::NotFound);
    }
}
