//! API Shield mTLS client certificates (`/zones/{id}/client_certificates`): zone-scoped,
//! listed by page number with every status, revoked one by one. A revoked certificate goes
//! `pending_revocation`, then `revoked`; one in either state is never acted on again. The audit
//! log keeps a certificate's metadata, never its PEM body.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    paging, Evaluated, Facts, ListRequest, MutationRequest, PageToken, Presence, ResourceId,
};
use crate::cloudflare::{ClientCertificate, Endpoint, ZoneId};
use crate::rules::RuleSet;

/// Certificates asked for per page: the endpoint takes 5 to 50.
pub const PER_PAGE: u32 = 50;

/// The states of a certificate whose revocation is under way or done.
pub const REVOKED_STATES: [&str; 2] = ["pending_revocation", "revoked"];

fn path(zone: &ZoneId) -> String {
    format!("zones/{zone}/client_certificates")
}

/// One page of `GET /zones/{zone}/client_certificates?status=all&page=N&per_page=50`.
pub fn list_request(zone: &ZoneId, token: Option<&PageToken>) -> ListRequest {
    ListRequest {
        endpoint: Endpoint::ListClientCertificates,
        path: path(zone),
        query: vec![
            ("status".to_owned(), "all".to_owned()),
            ("page".to_owned(), paging::page_number(token).to_string()),
            ("per_page".to_owned(), PER_PAGE.to_string()),
        ],
    }
}

/// Reads a listed certificate (one without an id is an error) and asks the rules about it.
/// The audit log gets its metadata in place of the listed object, which holds the PEM body.
pub fn evaluate<'r>(
    raw: &RawValue,
    rules: &'r RuleSet,
    now: DateTime<Utc>,
) -> Result<Evaluated<'r>, serde_json::Error> {
    let cert: ClientCertificate = serde_json::from_str(raw.get())?;
    let eval = rules.evaluate_certificate(&cert, now);
    if let Some(a) = eval.anomaly {
        tracing::warn!(
            client_certificate = %cert.id,
            anomaly = a.label(),
            expires_on = %cert.expires_on,
            "client certificate data not trusted; no rule acts on it"
        );
    }
    let snapshot = RawValue::from_string(cert.metadata().to_string())?;
    Ok(Evaluated {
        revoked: cert
            .status
            .as_deref()
            .is_some_and(|s| REVOKED_STATES.contains(&s)),
        eval,
        snapshot: Some(snapshot),
        facts: Facts {
            display_name: cert.common_name.unwrap_or_default(),
            subject: None,
            last_active: cert.issued_on,
            id: cert.id,
        },
    })
}

/// What a confirmation listing shows of one certificate: revoked once its revocation is under
/// way (`pending_revocation`) or done, with the status as listed.
pub fn presence(
    raw: &RawValue,
) -> Result<(ResourceId, Presence, Option<String>), serde_json::Error> {
    #[derive(Deserialize)]
    struct Listed {
        id: ResourceId,
        #[serde(default)]
        status: Option<serde_json::Value>,
    }
    let listed: Listed = serde_json::from_str(raw.get())?;
    let status = listed.status.and_then(|s| s.as_str().map(str::to_owned));
    let presence = match status.as_deref() {
        Some(s) if REVOKED_STATES.contains(&s) => Presence::Revoked,
        _ => Presence::Active,
    };
    Ok((listed.id, presence, status))
}

/// `DELETE /zones/{zone}/client_certificates/{id}`: the API's revocation, one per call.
pub fn mutation_request(zone: &ZoneId, ids: &[ResourceId]) -> MutationRequest {
    MutationRequest::delete_one(
        Endpoint::RevokeClientCertificate,
        &path(zone),
        &format!("/zones/{zone}/client_certificates"),
        ids,
    )
}

/// `PATCH /zones/{zone}/client_certificates/{id}`: reactivates a certificate while it is still
/// `pending_revocation` (`zt-janitor undo`), one per call. No body: the call itself asks it.
pub fn reactivate_request(zone: &ZoneId, ids: &[ResourceId]) -> MutationRequest {
    let one = ids.first().map(ResourceId::as_str).unwrap_or_default();
    MutationRequest {
        endpoint: Endpoint::ReactivateClientCertificate,
        method: reqwest::Method::PATCH,
        path: format!("{}/{one}", path(zone)),
        query: Vec::new(),
        ids_named: ids.len(),
        shown: format!("/zones/{zone}/client_certificates/{one}"),
    }
}

/// Whether a certificate in `status` can still be reactivated: only while its revocation is
/// pending. Once `revoked`, Cloudflare cannot bring it back.
pub fn reactivatable(status: Option<&str>) -> bool {
    status == Some("pending_revocation")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> ZoneId {
        ZoneId::parse("fedcba9876543210fedcba9876543210").unwrap()
    }

    #[test]
    fn listings_ask_for_every_status_of_one_zone() {
        let r = list_request(&zone(), None);
        assert_eq!(r.endpoint, Endpoint::ListClientCertificates);
        assert_eq!(
            r.path,
            "zones/fedcba9876543210fedcba9876543210/client_certificates"
        );
        assert_eq!(r.query[0], ("status".to_owned(), "all".to_owned()));
        assert_eq!(r.query[1], ("page".to_owned(), "1".to_owned()));
    }

    #[test]
    fn revocation_under_way_or_done_reads_as_revoked() {
        let read = |json: &str| presence(&RawValue::from_string(json.to_owned()).unwrap()).unwrap();
        assert_eq!(read(r#"{"id":"c1","status":"active"}"#).1, Presence::Active);
        for status in REVOKED_STATES {
            let (_, p, s) = read(&format!(r#"{{"id":"c1","status":"{status}"}}"#));
            assert_eq!((p, s.as_deref()), (Presence::Revoked, Some(status)));
        }
        assert_eq!(read(r#"{"id":"c1","status":7}"#).1, Presence::Active);
    }

    #[test]
    fn the_snapshot_keeps_the_metadata_not_the_pem() {
        let raw = RawValue::from_string(
            r#"{"id":"c1","status":"active","common_name":"device-1.example.com",
               "certificate":"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
               "serial_number":"42","fingerprint_sha256":"ab","expires_on":"2026-01-01T00:00:00Z"}"#
                .to_owned(),
        )
        .unwrap();
        let rules = RuleSet::new(&[], &[]).unwrap();
        let item = evaluate(&raw, &rules, Utc::now()).unwrap();
        let kept = item.snapshot.unwrap();
        assert!(!kept.get().contains("BEGIN CERTIFICATE"), "{}", kept.get());
        for field in ["device-1.example.com", "\"42\"", "\"ab\"", "2026-01-01"] {
            assert!(kept.get().contains(field), "{field} in {}", kept.get());
        }
    }

    #[test]
    fn a_certificate_is_reactivated_by_a_patch_of_its_path_while_pending() {
        let id = ResourceId::parse("c1").unwrap();
        let r = reactivate_request(&zone(), std::slice::from_ref(&id));
        assert_eq!(r.method, reqwest::Method::PATCH);
        assert_eq!(r.endpoint, Endpoint::ReactivateClientCertificate);
        assert_eq!(
            r.path,
            "zones/fedcba9876543210fedcba9876543210/client_certificates/c1"
        );
        assert!(reactivatable(Some("pending_revocation")));
        for status in [
            Some("revoked"),
            Some("active"),
            Some("pending_reactivation"),
            None,
        ] {
            assert!(!reactivatable(status), "{status:?}");
        }
    }

    #[test]
    fn a_certificate_is_revoked_by_a_delete_of_its_path() {
        let id = ResourceId::parse("c1").unwrap();
        let r = mutation_request(&zone(), std::slice::from_ref(&id));
        assert_eq!(r.method, reqwest::Method::DELETE);
        assert_eq!(r.endpoint, Endpoint::RevokeClientCertificate);
        assert_eq!(
            r.path,
            "zones/fedcba9876543210fedcba9876543210/client_certificates/c1"
        );
    }
}
