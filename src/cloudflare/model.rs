//! Typed views of the Cloudflare objects zt-janitor reads, parsed once at the edge.
//!
//! Parsing is deliberately lenient about timestamps (a registration with a broken `last_seen_at`
//! is still listed; the rules then refuse to act on it) and strict about identity (`id`,
//! `device`): an object we cannot identify makes the whole page untrustworthy.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use crate::resource::ResourceId;

/// A Cloudflare account id: 32 lowercase hex characters.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct AccountId(String);

impl AccountId {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.len() == 32 && raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(format!(
                "{raw:?} is not a Cloudflare account id: expected 32 lowercase hex characters \
                 (copy it from the dashboard URL or the account overview page)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A Cloudflare zone id: 32 lowercase hex characters. Client certificates live in zones.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ZoneId(String);

impl ZoneId {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.len() == 32 && raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(format!(
                "{raw:?} is not a Cloudflare zone id: expected 32 lowercase hex characters \
                 (the zone's overview page shows it under API)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An empty zone, in the one request path that is built but never sent (see
    /// `resource::mutation_request`).
    pub(crate) fn missing() -> Self {
        Self(String::new())
    }
}

impl fmt::Display for ZoneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ZoneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ZoneId({})", self.0)
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({})", self.0)
    }
}

/// A timestamp field as Cloudflare sent it. Missing and unparsable values are kept distinct
/// from valid ones so that rules can refuse to act on them instead of guessing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Stamp {
    Valid(DateTime<Utc>),
    #[default]
    Missing,
    Invalid(String),
}

impl Stamp {
    pub fn parse(raw: &str) -> Self {
        match DateTime::parse_from_rfc3339(raw) {
            Ok(t) => Stamp::Valid(t.with_timezone(&Utc)),
            Err(_) => Stamp::Invalid(raw.to_owned()),
        }
    }

    pub fn valid(&self) -> Option<DateTime<Utc>> {
        match self {
            Stamp::Valid(t) => Some(*t),
            _ => None,
        }
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stamp::Valid(t) => write!(f, "{}", t.format("%Y-%m-%dT%H:%M:%SZ")),
            Stamp::Missing => f.write_str("(missing)"),
            Stamp::Invalid(raw) => write!(f, "(invalid: {raw:?})"),
        }
    }
}

impl<'de> Deserialize<'de> for Stamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Anything that is not a string (a number, an object) is as unusable as a bad string.
        Ok(match serde_json::Value::deserialize(d)? {
            serde_json::Value::Null => Stamp::Missing,
            serde_json::Value::String(s) => Stamp::parse(&s),
            other => Stamp::Invalid(other.to_string()),
        })
    }
}

impl Serialize for Stamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Stamp::Valid(t) => {
                s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            }
            Stamp::Missing => s.serialize_none(),
            Stamp::Invalid(raw) => s.serialize_str(raw),
        }
    }
}

/// How a registration was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistrationType {
    Warp,
    BrowserExtension,
}

impl fmt::Display for RegistrationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RegistrationType::Warp => "warp",
            RegistrationType::BrowserExtension => "browser_extension",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Device {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct User {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// One enrollment of the WARP client, as listed by
/// `GET /accounts/{id}/devices/registrations`. Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Registration {
    pub id: ResourceId,
    #[serde(default)]
    pub created_at: Stamp,
    #[serde(default)]
    pub last_seen_at: Stamp,
    /// Present and non-null exactly when the registration is revoked.
    #[serde(default, deserialize_with = "present_stamp")]
    pub revoked_at: Option<Stamp>,
    /// Present and non-null when Cloudflare marks the registration deleted; any value, even
    /// a broken one, counts as set, so that no rule acts on it.
    #[serde(default, deserialize_with = "present_stamp")]
    pub deleted_at: Option<Stamp>,
    /// Unknown values (a new registration type) parse as `None`, so no rule that asks for a
    /// type can match them by accident.
    #[serde(default, deserialize_with = "lenient_registration_type")]
    pub registration_type: Option<RegistrationType>,
    pub device: Device,
    #[serde(default)]
    pub user: Option<User>,
}

impl Registration {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }

    pub fn user_email(&self) -> Option<&str> {
        self.user.as_ref().and_then(|u| u.email.as_deref())
    }
}

/// `null` and absent both mean "not set" (not revoked, not deleted); any other value (even a
/// broken one) means set.
fn present_stamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Stamp>, D::Error> {
    Ok(match Stamp::deserialize(d)? {
        Stamp::Missing => None,
        other => Some(other),
    })
}

fn lenient_registration_type<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<RegistrationType>, D::Error> {
    let raw = Option::<serde_json::Value>::deserialize(d)?;
    Ok(raw.and_then(|v| serde_json::from_value(v).ok()))
}

/// `result_info` of a listing: a cursor (device registrations) or page numbers (service
/// tokens and the other page-numbered listings). The cursor must be a string: the listing
/// follows it. The counts are read leniently ([`Count`]): a count no decision rests on (the
/// page numbers of a cursor listing) may hold anything, and a check that rests on one refuses
/// the page when it is unreadable. `count` (the items on this page) is read by nothing, and
/// not parsed.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResultInfo {
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub per_page: Count,
    #[serde(default)]
    pub page: Count,
    #[serde(default)]
    pub total_count: Count,
    #[serde(default)]
    pub total_pages: Count,
}

impl ResultInfo {
    /// The cursor of the next page; `None` when the listing is complete.
    pub fn next_cursor(&self) -> Option<&str> {
        self.cursor.as_deref().filter(|c| !c.is_empty())
    }
}

/// A count of `result_info`, in three states like [`Stamp`]: absent (or `null`), a
/// non-negative integer, or unreadable (a negative number, a fraction, a string, …), which
/// keeps the value as it came, shortened, for the message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Count {
    #[default]
    Absent,
    Valid(u64),
    Unreadable(String),
}

impl Count {
    /// The count, for a check that rests on it: `None` when absent, and an error naming
    /// `field` when unreadable, so that the check is never passed on a value nobody could read.
    pub fn trusted(&self, field: &str) -> Result<Option<u64>, String> {
        match self {
            Count::Absent => Ok(None),
            Count::Valid(n) => Ok(Some(*n)),
            Count::Unreadable(raw) => Err(format!("result_info.{field} is {raw}, not a count")),
        }
    }
}

impl From<Option<u64>> for Count {
    fn from(n: Option<u64>) -> Self {
        n.map_or(Count::Absent, Count::Valid)
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const SHOWN: usize = 40;
        Ok(match Option::<serde_json::Value>::deserialize(d)? {
            None | Some(serde_json::Value::Null) => Count::Absent,
            Some(v) => match v.as_u64() {
                Some(n) => Count::Valid(n),
                None => Count::Unreadable(v.to_string().chars().take(SHOWN).collect()),
            },
        })
    }
}

/// An Access service token, as listed by `GET /accounts/{id}/access/service_tokens`. The
/// SDK's model has no `created_at` or `last_seen_at` (the reference page shows both), so
/// they are optional here; unknown fields are ignored. The id and the name are what rules and
/// exclusions rest on: a token without them is unreadable.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServiceToken {
    pub id: ResourceId,
    pub name: String,
    #[serde(default)]
    pub created_at: Stamp,
    #[serde(default)]
    pub last_seen_at: Stamp,
    /// `null` or absent: the token never expires.
    #[serde(default)]
    pub expires_at: Stamp,
}

/// An account-owned API token, as listed by `GET /accounts/{id}/tokens`. Every field but the
/// id is optional in the SDK's model; the rules read `status` and the stamps, and an unknown
/// status matches no status rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AccountApiToken {
    pub id: ResourceId,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub status: Option<String>,
    #[serde(default)]
    pub issued_on: Stamp,
    #[serde(default)]
    pub modified_on: Stamp,
    #[serde(default)]
    pub expires_on: Stamp,
    #[serde(default)]
    pub last_used_on: Stamp,
}

/// An API Shield mTLS client certificate, as listed by `GET /zones/{id}/client_certificates`.
/// The PEM body is never kept: see [`ClientCertificate::metadata`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ClientCertificate {
    pub id: ResourceId,
    #[serde(default, deserialize_with = "lenient_string")]
    pub status: Option<String>,
    #[serde(default)]
    pub common_name: Option<String>,
    #[serde(default)]
    pub certificate_authority: Option<CertificateAuthority>,
    #[serde(default)]
    pub expires_on: Stamp,
    #[serde(default)]
    pub issued_on: Stamp,
    #[serde(default)]
    pub serial_number: Option<String>,
    #[serde(default)]
    pub fingerprint_sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct CertificateAuthority {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

impl ClientCertificate {
    /// What the audit log keeps of a certificate: its metadata, never the PEM body.
    pub fn metadata(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "status": self.status,
            "common_name": self.common_name,
            "certificate_authority": self.certificate_authority,
            "serial_number": self.serial_number,
            "fingerprint_sha256": self.fingerprint_sha256,
            "issued_on": self.issued_on,
            "expires_on": self.expires_on,
        })
    }
}

/// A string field no decision rests on by its exact type: anything that is not a string reads
/// as absent.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_id_must_be_32_lowercase_hex() {
        assert!(AccountId::parse("0123456789abcdef0123456789abcdef").is_ok());
        for bad in [
            "",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123",
            "0123456789abcdef0123456789abcdeg",
        ] {
            assert!(AccountId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn registration_parses_lenient_timestamps_and_strict_identity() {
        let json = r#"{"id":"r-1","created_at":"2026-01-29T00:57:57.925979Z","updated_at":"x",
            "last_seen_at":"yesterday","key":"k","registration_type":"carrier_pigeon",
            "device":{"id":"d","name":"n","client_version":null},"revoked_at":null,"new_field":[1]}"#;
        let r: Registration = serde_json::from_str(json).unwrap();
        assert!(matches!(r.created_at, Stamp::Valid(_)));
        assert_eq!(r.last_seen_at, Stamp::Invalid("yesterday".into()));
        assert_eq!(r.revoked_at, None);
        assert_eq!(r.registration_type, None);
        assert!(r.user.is_none());

        let no_device = r#"{"id":"r-1","last_seen_at":"2026-01-29T00:57:57Z"}"#;
        assert!(serde_json::from_str::<Registration>(no_device).is_err());
    }

    #[test]
    fn unreadable_revoked_at_values_read_as_revoked_but_invalid() {
        for raw in [r#""""#, "false", "0", "{}", r#""garbage""#, "[]"] {
            let r: Registration = serde_json::from_str(&format!(
                r#"{{"id":"r","device":{{"id":"d","name":"n"}},"revoked_at":{raw}}}"#
            ))
            .unwrap();
            assert!(r.is_revoked(), "{raw}");
            assert!(
                matches!(r.revoked_at, Some(Stamp::Invalid(_))),
                "{raw}: {:?}",
                r.revoked_at
            );
        }
    }

    #[test]
    fn deleted_at_is_set_by_any_value_but_null() {
        let read = |raw: &str| -> Registration {
            serde_json::from_str(&format!(
                r#"{{"id":"r","device":{{"id":"d","name":"n"}}{raw}}}"#
            ))
            .unwrap()
        };
        assert_eq!(read("").deleted_at, None);
        assert_eq!(read(r#","deleted_at":null"#).deleted_at, None);
        assert!(matches!(
            read(r#","deleted_at":"2026-01-01T00:00:00Z""#).deleted_at,
            Some(Stamp::Valid(_))
        ));
        assert!(matches!(
            read(r#","deleted_at":false"#).deleted_at,
            Some(Stamp::Invalid(_))
        ));
    }

    #[test]
    fn revoked_at_with_any_value_means_revoked() {
        let r: Registration = serde_json::from_str(
            r#"{"id":"r","device":{"id":"d","name":"n"},"revoked_at":"garbage"}"#,
        )
        .unwrap();
        assert!(r.is_revoked());
    }
}
