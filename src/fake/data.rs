//! Registration data of the fake: the deterministic generator, the compact record that keeps a
//! million registrations in memory, the typed builder tests use for hand-made registrations, and
//! the rendering of all of them to the JSON Cloudflare serves.
//!
//! This module knows nothing about HTTP, locking or ordering; `store` arranges the records.

use std::net::{Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::store::Key;
use super::FakeOptions;

const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;

/// Team name in the identity Cloudflare shows for registrations made with a service token.
pub const FAKE_TEAM: &str = "zt-janitor-fake";

/// Largest generated population: every registration gets its own address in 100.64.0.0/10.
pub(crate) const MAX_GENERATED: usize = 4_000_000;

const DEVICE_KINDS: [&str; 4] = ["laptop", "phone", "desktop", "tablet"];
const CLIENT_VERSIONS: [&str; 4] = [
    "2024.12.554.0",
    "2025.4.929.0",
    "2025.7.176.0",
    "2025.9.558.0",
];

/// `revoked_us` of a registration that is not revoked.
const NOT_REVOKED: i64 = i64::MIN;
const FLAG_BROWSER_EXTENSION: u8 = 1;
const FLAG_MASQUE: u8 = 2;
/// `user` codes below this are not people; people are numbered from `FIRST_PERSON`.
const USER_ABSENT: u32 = 0;
const USER_SERVICE_TOKEN: u32 = 1;
const FIRST_PERSON: u32 = 2;

/// A physical device shared by the generated registrations made on it.
#[derive(Debug, Clone)]
pub(crate) struct GenDevice {
    id: [u8; 16],
    number: u32,
    kind: u8,
    client_version: u8,
}

/// A generated registration, about 48 bytes: names, keys and addresses are derived when the
/// record is rendered instead of being stored.
#[derive(Debug, Clone)]
pub(crate) struct GenRegistration {
    created_us: i64,
    updated_us: i64,
    last_seen_us: i64,
    revoked_us: i64,
    device: u32,
    user: u32,
    ordinal: u32,
    flags: u8,
}

/// What rendering needs besides the record itself.
pub(crate) struct RenderContext {
    pub devices: Vec<GenDevice>,
    pub seed: u64,
}

/// The output of [`generate`]: registrations in generation order and the devices they use.
pub(crate) struct Generated {
    pub registrations: Vec<([u8; 16], GenRegistration)>,
    pub devices: Vec<GenDevice>,
}

/// Builds `opts.registrations` registrations from `opts.seed`; the same options always give the
/// same data. Bands relative to `opts.now`, chosen so that any idle threshold between 30 and 120
/// days (and any revoked-age threshold outside 10–80 days) splits the data the same way:
/// - fresh: `last_seen_at` 0–20 days ago;
/// - idle (`idle_share`): `last_seen_at` 120–720 days ago;
/// - revoked (`revoked_share`): `revoked_at` 10–80 days ago and `last_seen_at` 1 hour to 2 days
///   before that, so a revoked registration is never idle by a 90-day rule.
pub(crate) fn generate(opts: &FakeOptions) -> Generated {
    let total = opts.registrations;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let now = opts.now.timestamp_micros();
    let people = u32::try_from(total / 2)
        .unwrap_or(u32::MAX - FIRST_PERSON)
        .max(1);
    let mut registrations = Vec::with_capacity(total);
    let mut devices = Vec::with_capacity(total / 2 + 1);
    let mut without_user = 0u64;

    while registrations.len() < total {
        let device_index = devices.len() as u32;
        devices.push(GenDevice {
            id: random_uuid(&mut rng),
            number: device_index + 1,
            kind: rng.gen_range(0..DEVICE_KINDS.len()) as u8,
            client_version: rng.gen_range(0..CLIENT_VERSIONS.len()) as u8,
        });
        let owner = rng.gen_range(0..people);
        let on_device = rng.gen_range(1..=3).min(total - registrations.len());
        for _ in 0..on_device {
            let id = random_uuid(&mut rng);
            let roll: f64 = rng.gen();
            let (last_seen_us, revoked_us) = if roll < opts.revoked_share {
                let revoked = now - rng.gen_range(10 * DAY_US..=80 * DAY_US);
                (revoked - rng.gen_range(HOUR_US..=2 * DAY_US), revoked)
            } else if roll < opts.revoked_share + opts.idle_share {
                (
                    now - rng.gen_range(120 * DAY_US..=720 * DAY_US),
                    NOT_REVOKED,
                )
            } else {
                (now - rng.gen_range(0..=20 * DAY_US), NOT_REVOKED)
            };
            let created_us = last_seen_us - rng.gen_range(0..=365 * DAY_US);
            let user = if rng.gen::<f64>() < opts.no_user_share {
                // Alternate the two ways Cloudflare shows a registration without a person.
                without_user += 1;
                if without_user % 2 == 1 {
                    USER_ABSENT
                } else {
                    USER_SERVICE_TOKEN
                }
            } else if rng.gen::<f64>() < 0.85 {
                FIRST_PERSON + owner
            } else {
                FIRST_PERSON + rng.gen_range(0..people)
            };
            let mut flags = 0;
            if rng.gen::<f64>() < 0.05 {
                flags |= FLAG_BROWSER_EXTENSION;
            }
            if rng.gen::<bool>() {
                flags |= FLAG_MASQUE;
            }
            let record = GenRegistration {
                created_us,
                updated_us: if revoked_us == NOT_REVOKED {
                    last_seen_us
                } else {
                    revoked_us
                },
                last_seen_us,
                revoked_us,
                device: device_index,
                user,
                ordinal: registrations.len() as u32,
                flags,
            };
            registrations.push((id, record));
        }
    }
    Generated {
        registrations,
        devices,
    }
}

fn random_uuid(rng: &mut StdRng) -> [u8; 16] {
    uuid::Builder::from_random_bytes(rng.gen())
        .into_uuid()
        .into_bytes()
}

impl GenRegistration {
    pub(crate) fn is_revoked(&self) -> bool {
        self.revoked_us != NOT_REVOKED
    }

    /// Marks the registration revoked at `now`; `false` if it already was (the first revocation
    /// time is kept).
    pub(crate) fn revoke(&mut self, now: DateTime<Utc>) -> bool {
        if self.is_revoked() {
            return false;
        }
        self.revoked_us = now.timestamp_micros();
        self.updated_us = self.revoked_us;
        true
    }

    /// Clears the revocation; `false` if the registration was not revoked.
    pub(crate) fn unrevoke(&mut self, now: DateTime<Utc>) -> bool {
        if !self.is_revoked() {
            return false;
        }
        self.revoked_us = NOT_REVOKED;
        self.updated_us = now.timestamp_micros();
        true
    }

    pub(crate) fn render(&self, id: &Key, ctx: &RenderContext) -> RegistrationJson {
        let device = &ctx.devices[self.device as usize];
        let masque = self.flags & FLAG_MASQUE != 0;
        let user = match self.user {
            USER_ABSENT => None,
            USER_SERVICE_TOKEN => Some(UserJson {
                id: derived_uuid(ctx.seed, u64::MAX),
                email: format!("non_identity@{FAKE_TEAM}.cloudflareaccess.com"),
                name: "Service token".to_owned(),
            }),
            person => {
                let n = person - FIRST_PERSON + 1;
                Some(UserJson {
                    id: derived_uuid(ctx.seed, u64::from(n)),
                    email: format!("user{n}@example.com"),
                    name: format!("User {n}"),
                })
            }
        };
        let ordinal = self.ordinal + 1;
        let id = id.to_string();
        RegistrationJson {
            key: public_key(text_seed(&id), masque),
            id,
            created_at: stamp(self.created_us),
            updated_at: stamp(self.updated_us),
            last_seen_at: stamp(self.last_seen_us),
            registration_type: if self.flags & FLAG_BROWSER_EXTENSION != 0 {
                "browser_extension"
            } else {
                "warp"
            },
            device: DeviceJson {
                id: Uuid::from_bytes(device.id).to_string(),
                name: format!(
                    "{}-{:04}",
                    DEVICE_KINDS[device.kind as usize], device.number
                ),
                client_version: CLIENT_VERSIONS[device.client_version as usize],
            },
            user,
            revoked_at: self.is_revoked().then(|| stamp(self.revoked_us)),
            deleted_at: None,
            key_type: if masque { "secp256r1" } else { "curve25519" },
            tunnel_type: if masque { "masque" } else { "wireguard" },
            // One address each in the CGNAT range and a /64 of Cloudflare's, like real WARP IPs.
            virtual_ipv4: Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + ordinal)
                .to_string(),
            virtual_ipv6: Ipv6Addr::from((0x2606_4700_0110_8000_u128 << 64) | u128::from(ordinal))
                .to_string(),
        }
    }
}

/// A generated registration as served. Field order is fixed so output is byte-identical.
#[derive(Debug, Serialize)]
pub(crate) struct RegistrationJson {
    id: String,
    created_at: String,
    updated_at: String,
    last_seen_at: String,
    key: String,
    registration_type: &'static str,
    device: DeviceJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<UserJson>,
    revoked_at: Option<String>,
    deleted_at: Option<String>,
    key_type: &'static str,
    tunnel_type: &'static str,
    virtual_ipv4: String,
    virtual_ipv6: String,
}

#[derive(Debug, Serialize)]
struct DeviceJson {
    id: String,
    name: String,
    client_version: &'static str,
}

#[derive(Debug, Serialize)]
struct UserJson {
    id: String,
    email: String,
    name: String,
}

/// RFC 3339 with microseconds and `Z`, the way Cloudflare writes timestamps.
pub(crate) fn stamp(micros: i64) -> String {
    format_time(DateTime::from_timestamp_micros(micros).unwrap_or_default())
}

pub(crate) fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A registration made by hand in a test, with the fields rules look at. Fill it with struct
/// update syntax: `FakeRegistration { revoked_at: Some(t), ..FakeRegistration::new(id, seen) }`.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeRegistration {
    pub id: String,
    /// `None` leaves the `user` field out, as for a registration without an identity.
    pub user_email: Option<String>,
    pub device_id: String,
    pub device_name: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Free text so tests can also serve values Cloudflare does not document.
    pub registration_type: String,
}

impl FakeRegistration {
    /// A WARP registration of `user@example.com` on `laptop-test`, created a day before it was
    /// last seen. The device id is derived from `id`, so it is stable across runs.
    pub fn new(id: impl Into<String>, last_seen_at: DateTime<Utc>) -> Self {
        let id = id.into();
        FakeRegistration {
            device_id: derived_uuid(text_seed(&id), 0),
            id,
            user_email: Some("user@example.com".to_owned()),
            device_name: "laptop-test".to_owned(),
            created_at: last_seen_at - chrono::Duration::days(1),
            last_seen_at,
            revoked_at: None,
            registration_type: "warp".to_owned(),
        }
    }

    /// The registration as the fake serves it.
    pub fn to_json(&self) -> Value {
        let mut object = json!({
            "id": self.id,
            "created_at": format_time(self.created_at),
            "updated_at": format_time(self.revoked_at.unwrap_or(self.last_seen_at)),
            "last_seen_at": format_time(self.last_seen_at),
            "key": public_key(text_seed(&self.id), false),
            "registration_type": self.registration_type,
            "device": {"id": self.device_id, "name": self.device_name, "client_version": CLIENT_VERSIONS[0]},
            "revoked_at": self.revoked_at.map(format_time),
            "deleted_at": null,
            "key_type": "curve25519",
            "tunnel_type": "wireguard",
        });
        if let Some(email) = &self.user_email {
            let local = email.split('@').next().unwrap_or(email);
            object["user"] =
                json!({"id": derived_uuid(text_seed(email), 0), "email": email, "name": local});
        }
        object
    }
}

/// A v4-shaped UUID that is a pure function of its inputs, for ids that must not consume the
/// generator's random stream.
fn derived_uuid(seed: u64, n: u64) -> String {
    let hi = splitmix64(seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let lo = splitmix64(hi);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hi.to_be_bytes());
    bytes[8..].copy_from_slice(&lo.to_be_bytes());
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

pub(crate) fn text_seed(text: &str) -> u64 {
    text.bytes()
        .fold(0x5eed, |acc, b| splitmix64(acc ^ u64::from(b)))
}

pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A plausible public key derived from `seed`: 32 bytes for WireGuard (curve25519), a 65-byte
/// uncompressed point for MASQUE (secp256r1), base64 like the real ones.
fn public_key(seed: u64, masque: bool) -> String {
    let len = if masque { 65 } else { 32 };
    let mut state = seed;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state = splitmix64(state);
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    if masque {
        bytes[0] = 0x04;
    }
    base64(&bytes)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn options(registrations: usize, seed: u64) -> FakeOptions {
        FakeOptions {
            seed,
            registrations,
            now: Utc.with_ymd_and_hms(2026, 1, 29, 0, 0, 0).unwrap(),
            ..FakeOptions::default()
        }
    }

    fn rendered(generated: &Generated, seed: u64) -> Vec<Value> {
        let ctx = RenderContext {
            devices: generated.devices.clone(),
            seed,
        };
        generated
            .registrations
            .iter()
            .map(|(id, r)| serde_json::to_value(r.render(&Key::from_uuid(*id), &ctx)).unwrap())
            .collect()
    }

    #[test]
    fn same_seed_gives_identical_data_and_another_seed_does_not() {
        let a = rendered(&generate(&options(300, 7)), 7);
        let b = rendered(&generate(&options(300, 7)), 7);
        let c = rendered(&generate(&options(300, 8)), 8);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        assert_ne!(a[0]["id"], c[0]["id"]);
        assert_eq!(a.len(), 300);
    }

    #[test]
    fn shares_are_roughly_respected_and_bands_never_touch_the_90_day_boundary() {
        let opts = options(20_000, 3);
        let now = opts.now.timestamp_micros();
        let generated = generate(&opts);
        let (mut idle, mut revoked, mut fresh, mut without_user) = (0, 0, 0, 0);
        for (_, r) in &generated.registrations {
            let age = now - r.last_seen_us;
            assert!(r.created_us <= r.last_seen_us);
            if r.is_revoked() {
                revoked += 1;
                let revoked_age = now - r.revoked_us;
                assert!((10 * DAY_US..=80 * DAY_US).contains(&revoked_age));
                assert!(r.last_seen_us < r.revoked_us);
                assert!(age < 90 * DAY_US, "a revoked registration looks idle");
            } else if age > 30 * DAY_US {
                idle += 1;
                assert!(
                    (120 * DAY_US..=720 * DAY_US).contains(&age),
                    "idle age {age}"
                );
            } else {
                fresh += 1;
                assert!(age <= 20 * DAY_US);
            }
            if r.user < FIRST_PERSON {
                without_user += 1;
            }
        }
        let share = |n: i32| f64::from(n) / 20_000.0;
        assert!(
            (share(idle) - 0.2).abs() < 0.02,
            "idle share {}",
            share(idle)
        );
        assert!(
            (share(revoked) - 0.05).abs() < 0.01,
            "revoked share {}",
            share(revoked)
        );
        assert!((share(without_user) - 0.05).abs() < 0.01);
        assert!(fresh > 0);
    }

    #[test]
    fn registrations_share_devices_one_to_three_at_a_time() {
        let generated = generate(&options(1_000, 5));
        let mut per_device = vec![0; generated.devices.len()];
        for (_, r) in &generated.registrations {
            per_device[r.device as usize] += 1;
        }
        assert!(per_device.iter().all(|n| (1..=3).contains(n)));
        assert!(per_device.iter().any(|n| *n > 1));
    }

    #[test]
    fn rendered_registration_has_cloudflare_shapes() {
        let generated = generate(&options(200, 11));
        let all = rendered(&generated, 11);
        let one = &all[0];
        let stamp = one["last_seen_at"].as_str().unwrap();
        assert!(stamp.ends_with('Z') && stamp.contains('.'), "{stamp}");
        assert!(DateTime::parse_from_rfc3339(stamp).is_ok());
        assert!(Uuid::parse_str(one["id"].as_str().unwrap()).is_ok());
        let name = one["device"]["name"].as_str().unwrap();
        assert!(DEVICE_KINDS.iter().any(|k| name.starts_with(k)), "{name}");
        assert!(all.iter().any(|r| r.get("user").is_none()));
        assert!(all.iter().any(|r| r["user"]["email"]
            .as_str()
            .is_some_and(|e| e.starts_with("non_identity@"))));
        assert!(all.iter().all(|r| r["key"].as_str().unwrap().len() >= 44));
        let v4: Ipv4Addr = one["virtual_ipv4"].as_str().unwrap().parse().unwrap();
        assert!(
            v4.octets()[0] == 100 && (64..128).contains(&v4.octets()[1]),
            "{v4}"
        );
        let v6: Ipv6Addr = one["virtual_ipv6"].as_str().unwrap().parse().unwrap();
        assert_eq!(v6.segments()[..4], [0x2606, 0x4700, 0x110, 0x8000]);
    }

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn hand_made_registration_renders_user_only_when_given() {
        let seen = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
        let with_user = FakeRegistration::new("r-1", seen).to_json();
        assert_eq!(with_user["user"]["email"], "user@example.com");
        assert_eq!(with_user["last_seen_at"], "2025-06-01T12:00:00.000000Z");
        let without = FakeRegistration {
            user_email: None,
            ..FakeRegistration::new("r-2", seen)
        };
        assert!(without.to_json().get("user").is_none());
        assert_eq!(
            FakeRegistration::new("r-1", seen).device_id,
            FakeRegistration::new("r-1", seen).device_id
        );
    }
}
