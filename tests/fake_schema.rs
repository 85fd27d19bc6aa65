//! The fake serves exactly the documented wire format: every registration, service token,
//! account API token (and `tokens/verify` answer), client certificate, `result_info` and
//! envelope it returns validates against the JSON Schemas generated from Cloudflare's SDK models
//! (vendored in `tests/data/cloudflare-schemas.json`, see `tests/data/README.md`) and the
//! envelope Cloudflare documents.

use chrono::{DateTime, TimeZone, Utc};
use jsonschema::Validator;
use serde_json::{json, Value};
use zt_janitor::fake::{
    FakeAccountToken, FakeCertificate, FakeHandle, FakeOptions, FakeRegistration, FakeServer,
    FakeServiceToken, TokenOwner,
};

const SCHEMAS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/cloudflare-schemas.json"
);

/// A definition used as the root schema, so its `#/$defs/...` references resolve.
fn validator(definition: &str) -> Validator {
    let text =
        std::fs::read_to_string(SCHEMAS).expect("tests/data/cloudflare-schemas.json is readable");
    let schemas: Value = serde_json::from_str(&text).expect("schemas are JSON");
    let schema = &schemas["definitions"][definition];
    assert!(schema.is_object(), "no definition {definition}");
    jsonschema::validator_for(schema).expect("definition compiles")
}

/// The envelope of cloudflare-api.md ("Basics"), success or failure.
fn envelope_validator(success: bool) -> Validator {
    let message = json!({
        "type": "object",
        "required": ["code", "message"],
        "properties": {"code": {"type": "integer"}, "message": {"type": "string"}}
    });
    let errors = if success {
        json!({"type": "array", "maxItems": 0})
    } else {
        json!({"type": "array", "minItems": 1, "items": message})
    };
    jsonschema::validator_for(&json!({
        "type": "object",
        "required": ["success", "errors", "messages", "result"],
        "properties": {
            "success": {"const": success},
            "errors": errors,
            "messages": {"type": "array", "items": message},
            "result": if success { json!({}) } else { json!({"type": "null"}) }
        }
    }))
    .expect("envelope schema compiles")
}

fn assert_valid(validator: &Validator, instance: &Value, what: &str) {
    if let Err(err) = validator.validate(instance) {
        panic!(
            "{what} does not match the schema: {err} at {}\n{instance:#}",
            err.instance_path
        );
    }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 29, 0, 57, 57).unwrap()
}

async fn start() -> FakeHandle {
    FakeServer::start(FakeOptions {
        registrations: 500,
        service_tokens: 130,
        revoked_share: 0.15,
        no_user_share: 0.2,
        now: now(),
        ..FakeOptions::default()
    })
    .await
    .expect("fake starts")
}

fn url(fake: &FakeHandle, rest: &str) -> String {
    format!(
        "{}/accounts/{}/devices/{rest}",
        fake.base_url(),
        fake.account_id()
    )
}

async fn get(fake: &FakeHandle, rest: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(url(fake, rest));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request reaches the fake");
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(content_type, "application/json");
    (status, response.json().await.expect("body is JSON"))
}

#[tokio::test]
async fn every_listed_registration_matches_the_schema() {
    let fake = start().await;
    fake.insert(&FakeRegistration::new("hand-made-1", now()));
    let registration = validator("DeviceRegistration");
    let result_info = validator("CursorResultInfo");
    let envelope = envelope_validator(true);
    let token = fake.token();

    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let (status, body) = get(
            &fake,
            &format!("registrations?status=all&per_page=97&cursor={cursor}"),
            Some(&token),
        )
        .await;
        assert_eq!(status, 200);
        assert_valid(&envelope, &body, "list envelope");
        assert_valid(&result_info, &body["result_info"], "result_info");
        let items = body["result"].as_array().expect("result is an array");
        assert_eq!(body["result_info"]["count"], items.len());
        assert_eq!(body["result_info"]["per_page"], 97);
        for item in items {
            assert_valid(&registration, item, "registration");
            for field in ["created_at", "updated_at", "last_seen_at"] {
                let stamp = item[field].as_str().unwrap();
                assert!(
                    DateTime::parse_from_rfc3339(stamp).is_ok() && stamp.ends_with('Z'),
                    "{stamp}"
                );
                assert!(stamp.contains('.'), "no fractional seconds: {stamp}");
            }
            seen.push(item.clone());
        }
        pages += 1;
        cursor = body["result_info"]["cursor"]
            .as_str()
            .expect("cursor is a string")
            .to_owned();
        if cursor.is_empty() {
            break;
        }
    }

    assert_eq!(seen.len(), 501);
    assert_eq!(pages, 6, "501 items at 97 per page");
    assert!(
        seen.iter().any(|r| r.get("user").is_none()),
        "some registrations have no user"
    );
    assert!(
        seen.iter().any(|r| r["user"]["email"]
            .as_str()
            .is_some_and(|e| e.starts_with("non_identity@"))),
        "some registrations show a service token's identity"
    );
    assert!(
        seen.iter().any(|r| r["revoked_at"].is_string()),
        "some registrations are revoked"
    );
    assert!(
        seen.iter().any(|r| r["revoked_at"].is_null()),
        "some registrations are active"
    );
    assert!(seen
        .iter()
        .any(|r| r["registration_type"] == "browser_extension"));
}

#[tokio::test]
async fn get_one_matches_the_schema() {
    let fake = start().await;
    let registration = validator("DeviceRegistration");
    let envelope = envelope_validator(true);
    let ids = fake.registration_ids();
    let revoked = ids
        .iter()
        .find(|id| fake.get(id).unwrap()["revoked_at"].is_string())
        .unwrap();
    for id in [&ids[0], revoked] {
        let (status, body) = get(&fake, &format!("registrations/{id}"), Some(&fake.token())).await;
        assert_eq!(status, 200);
        assert_valid(&envelope, &body, "get envelope");
        assert!(body.get("result_info").is_none());
        assert_valid(&registration, &body["result"], "registration");
        assert_eq!(
            body["result"],
            fake.get(id).unwrap(),
            "the handle shows what is served"
        );
    }
}

#[tokio::test]
async fn error_envelopes_have_the_cloudflare_shape() {
    let fake = start().await;
    let failure = envelope_validator(false);
    let id = fake.registration_ids()[0].clone();
    let token = fake.token();
    let cases = [
        ("registrations".to_owned(), None, 403, 10000),
        ("registrations".to_owned(), Some("wrong-token"), 403, 10000),
        (
            "registrations/00000000-0000-4000-8000-000000000000".to_owned(),
            Some(token.as_str()),
            404,
            1001,
        ),
        (
            format!("registrations/{id}"),
            Some("wrong-token"),
            403,
            10000,
        ),
    ];
    for (rest, token, status, code) in cases {
        let (got, body) = get(&fake, &rest, token).await;
        assert_eq!(got, status, "{rest}");
        assert_valid(&failure, &body, "error envelope");
        assert_eq!(body["errors"][0]["code"], code, "{rest}: {body}");
    }

    let other_account = format!(
        "{}/accounts/ffffffffffffffffffffffffffffffff/devices/registrations",
        fake.base_url()
    );
    let response = reqwest::Client::new()
        .get(other_account)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_valid(&failure, &body, "wrong-account envelope");
    assert_eq!(body["errors"][0]["code"], 7003);
}

#[tokio::test]
async fn the_schema_check_itself_rejects_broken_registrations() {
    let registration = validator("DeviceRegistration");
    let fake = start().await;
    let good = fake.get(&fake.registration_ids()[0]).unwrap();
    assert!(registration.validate(&good).is_ok());
    for (field, broken) in [
        ("device", json!({"name": "laptop-0001"})),
        ("registration_type", json!("carrier_pigeon")),
        ("last_seen_at", Value::Null),
    ] {
        let mut bad = good.clone();
        bad[field] = broken;
        assert!(registration.validate(&bad).is_err(), "{field} not checked");
    }
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("key");
    assert!(
        registration.validate(&missing).is_err(),
        "required fields not checked"
    );
    assert!(envelope_validator(true)
        .validate(&json!({"success": true, "result": []}))
        .is_err());
}

/// `GET|DELETE .../access/{rest}` with the fake's token.
async fn access(fake: &FakeHandle, method: reqwest::Method, rest: &str) -> (u16, Value) {
    let url = format!(
        "{}/accounts/{}/access/{rest}",
        fake.base_url(),
        fake.account_id()
    );
    let response = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(fake.token())
        .send()
        .await
        .expect("request reaches the fake");
    let status = response.status().as_u16();
    assert_eq!(response.headers()["content-type"], "application/json");
    (status, response.json().await.expect("body is JSON"))
}

/// The SDK's model makes every field optional; the fields the fake serves are also checked for
/// presence and shape, so a token that lost a field cannot pass unnoticed.
fn assert_token_shape(token: &Value) {
    for field in ["id", "client_id", "name", "duration"] {
        assert!(token[field].is_string(), "{field}: {token}");
    }
    assert!(token["enabled"].is_boolean(), "{token}");
    for field in ["created_at", "updated_at", "expires_at", "last_seen_at"] {
        let value = &token[field];
        if field == "last_seen_at" && value.is_null() {
            continue;
        }
        let stamp = value.as_str().unwrap_or_else(|| panic!("{field}: {token}"));
        assert!(
            DateTime::parse_from_rfc3339(stamp).is_ok() && stamp.ends_with('Z'),
            "{field}: {stamp}"
        );
    }
}

#[tokio::test]
async fn every_listed_service_token_matches_the_schema() {
    let fake = start().await;
    let token = validator("AccessServiceToken");
    let result_info = validator("PageResultInfo");
    let envelope = envelope_validator(true);

    let mut seen = Vec::new();
    for page in 1.. {
        let (status, body) = access(
            &fake,
            reqwest::Method::GET,
            &format!("service_tokens?page={page}&per_page=40"),
        )
        .await;
        assert_eq!(status, 200);
        assert_valid(&envelope, &body, "token list envelope");
        assert_valid(&result_info, &body["result_info"], "result_info");
        let info = &body["result_info"];
        assert_eq!(
            (info["page"].clone(), info["per_page"].clone()),
            (json!(page), json!(40))
        );
        assert_eq!(
            (info["total_count"].clone(), info["total_pages"].clone()),
            (json!(130), json!(4))
        );
        let items = body["result"].as_array().expect("result is an array");
        assert_eq!(info["count"], items.len());
        if items.is_empty() {
            assert_eq!(page, 5, "the page after the last is empty");
            break;
        }
        for item in items {
            assert_valid(&token, item, "service token");
            assert_token_shape(item);
            seen.push(item.clone());
        }
    }
    assert_eq!(seen.len(), 130);
    let now = now();
    let stamp = |t: &Value, f: &str| DateTime::parse_from_rfc3339(t[f].as_str().unwrap()).unwrap();
    assert!(
        seen.iter().any(|t| stamp(t, "expires_at") < now),
        "some are expired"
    );
    assert!(
        seen.iter().any(|t| t["last_seen_at"].is_null()),
        "some were never used"
    );
    assert!(
        seen.iter().any(|t| t["last_seen_at"].is_string()
            && now - stamp(t, "last_seen_at").with_timezone(&Utc) < chrono::Duration::days(21)),
        "some were used recently"
    );
    assert!(seen.iter().any(|t| t["enabled"] == false));
    assert!(!fake.service_tokens_in_use().is_empty(), "some are in use");
}

#[tokio::test]
async fn service_token_delete_and_its_refusals_have_the_cloudflare_shape() {
    let fake = start().await;
    let token = validator("AccessServiceToken");
    let success = envelope_validator(true);
    let failure = envelope_validator(false);
    let in_use = fake.service_tokens_in_use();
    let free = fake
        .service_token_ids()
        .into_iter()
        .find(|id| !in_use.contains(id))
        .unwrap();

    let (status, body) = access(
        &fake,
        reqwest::Method::DELETE,
        &format!("service_tokens/{free}"),
    )
    .await;
    assert_eq!(status, 200);
    assert_valid(&success, &body, "delete envelope");
    assert_valid(&token, &body["result"], "deleted token");
    assert_token_shape(&body["result"]);

    for (id, status, code) in [(&in_use[0], 400, 12139), (&free, 404, 1001)] {
        let (got, body) = access(
            &fake,
            reqwest::Method::DELETE,
            &format!("service_tokens/{id}"),
        )
        .await;
        assert_eq!(got, status);
        assert_valid(&failure, &body, "refusal envelope");
        assert_eq!(body["errors"][0]["code"], code);
    }
}

#[tokio::test]
async fn the_schema_check_itself_rejects_broken_service_tokens() {
    let token = validator("AccessServiceToken");
    let result_info = validator("PageResultInfo");
    let created = now() - chrono::Duration::days(3);
    let good = FakeServiceToken::new("t-1", "ci", created).to_json();
    assert!(token.validate(&good).is_ok());
    assert_token_shape(&good);
    for (field, broken) in [
        ("enabled", json!("yes")),
        ("name", json!(5)),
        ("id", json!({"uuid": "t-1"})),
    ] {
        let mut bad = good.clone();
        bad[field] = broken;
        assert!(token.validate(&bad).is_err(), "{field} not checked");
    }
    assert!(result_info
        .validate(&json!({"page": "1", "per_page": 20}))
        .is_err());
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("client_id");
    let shape = std::panic::catch_unwind(|| assert_token_shape(&missing));
    assert!(
        shape.is_err(),
        "a missing field is caught by the shape check"
    );
}

// ---- Account API tokens and client certificates ----

const ZONES: [&str; 2] = [
    "023e105f4ecef8ad9ca31a8372d0c353",
    "9f1c2d3e4b5a69788796a5b4c3d2e1f0",
];

async fn start_kinds(owner: TokenOwner) -> FakeHandle {
    FakeServer::start(FakeOptions {
        account_tokens: 130,
        own_token_owner: owner,
        zones: ZONES.map(str::to_owned).to_vec(),
        client_certificates: 60,
        now: now(),
        ..FakeOptions::default()
    })
    .await
    .expect("fake starts")
}

/// `method` on `rest` (below `/client/v4`) with the fake's token; status and JSON body.
async fn call(fake: &FakeHandle, method: reqwest::Method, rest: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .request(method, format!("{}/{rest}", fake.base_url()))
        .bearer_auth(fake.token())
        .send()
        .await
        .expect("request reaches the fake");
    let status = response.status().as_u16();
    assert_eq!(response.headers()["content-type"], "application/json");
    (status, response.json().await.expect("body is JSON"))
}

fn assert_stamp(object: &Value, field: &str, optional: bool) {
    let value = &object[field];
    if optional && value.is_null() {
        assert!(
            object.get(field).is_none(),
            "{field} is left out, not null: {object}"
        );
        return;
    }
    let stamp = value
        .as_str()
        .unwrap_or_else(|| panic!("{field}: {object}"));
    assert!(
        DateTime::parse_from_rfc3339(stamp).is_ok() && stamp.ends_with('Z'),
        "{field}: {stamp}"
    );
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What the fake serves of an account token beyond the SDK model, which makes every field
/// optional: a 32-hex id, a name, a documented status, the stamps it always has.
fn assert_account_token_shape(token: &Value) {
    assert!(
        is_hex(token["id"].as_str().unwrap_or_default(), 32),
        "{token}"
    );
    assert!(token["name"].is_string(), "{token}");
    assert!(
        ["active", "disabled", "expired"].contains(&token["status"].as_str().unwrap_or_default()),
        "{token}"
    );
    assert_stamp(token, "issued_on", false);
    assert_stamp(token, "modified_on", false);
    for field in ["not_before", "expires_on", "last_used_on"] {
        assert_stamp(token, field, true);
    }
    assert!(
        token["policies"].is_array() && token["condition"].is_object(),
        "{token}"
    );
}

/// The same for a certificate: its identity, status, CA, stamps and the PEM body.
fn assert_certificate_shape(cert: &Value) {
    assert!(
        uuid::Uuid::parse_str(cert["id"].as_str().unwrap_or_default()).is_ok(),
        "{cert}"
    );
    for field in ["common_name", "serial_number", "fingerprint_sha256"] {
        assert!(cert[field].is_string(), "{field}: {cert}");
    }
    assert!(
        is_hex(cert["fingerprint_sha256"].as_str().unwrap(), 64),
        "{cert}"
    );
    assert!(
        [
            "active",
            "pending_reactivation",
            "pending_revocation",
            "revoked"
        ]
        .contains(&cert["status"].as_str().unwrap_or_default()),
        "{cert}"
    );
    assert!(cert["certificate_authority"]["id"].is_string(), "{cert}");
    assert!(cert["certificate_authority"]["name"].is_string(), "{cert}");
    assert!(cert["validity_days"].is_u64(), "{cert}");
    let pem = cert["certificate"].as_str().unwrap_or_default();
    assert!(
        pem.starts_with("-----BEGIN CERTIFICATE-----\n")
            && pem.ends_with("-----END CERTIFICATE-----\n"),
        "{cert}"
    );
    assert_stamp(cert, "issued_on", false);
    assert_stamp(cert, "expires_on", false);
}

#[tokio::test]
async fn every_listed_account_token_and_the_verify_answer_match_the_schema() {
    let fake = start_kinds(TokenOwner::Account).await;
    let token = validator("AccountApiToken");
    let result_info = validator("PageResultInfo");
    let envelope = envelope_validator(true);
    fake.insert_account_token(&FakeAccountToken {
        last_used_on: Some(now()),
        expires_on: Some(now() + chrono::Duration::days(9)),
        not_before: Some(now() - chrono::Duration::days(1)),
        ..FakeAccountToken::new(
            "f".repeat(32),
            "hand-made",
            now() - chrono::Duration::days(3),
        )
    });

    let mut seen = Vec::new();
    for page in 1.. {
        let rest = format!(
            "accounts/{}/tokens?page={page}&per_page=50&include_expired=true",
            fake.account_id()
        );
        let (status, body) = call(&fake, reqwest::Method::GET, &rest).await;
        assert_eq!(status, 200);
        assert_valid(&envelope, &body, "token list envelope");
        assert_valid(&result_info, &body["result_info"], "result_info");
        let items = body["result"].as_array().expect("result is an array");
        assert_eq!(body["result_info"]["count"], items.len());
        if items.is_empty() {
            break;
        }
        for item in items {
            assert_valid(&token, item, "account API token");
            assert_account_token_shape(item);
            seen.push(item.clone());
        }
    }
    // 130 generated, 13 of them expired long ago and never listed; the own and hand-made ones.
    assert_eq!(seen.len(), 119);
    for status in ["active", "disabled", "expired"] {
        assert!(seen.iter().any(|t| t["status"] == status), "{status}");
    }
    for field in ["last_used_on", "expires_on", "not_before"] {
        assert!(
            seen.iter().any(|t| t.get(field).is_some()),
            "{field} served"
        );
        assert!(
            seen.iter().any(|t| t.get(field).is_none()),
            "{field} left out"
        );
    }

    let (status, body) = call(
        &fake,
        reqwest::Method::GET,
        &format!("accounts/{}/tokens/verify", fake.account_id()),
    )
    .await;
    assert_eq!(status, 200);
    assert_valid(&envelope, &body, "verify envelope");
    assert!(body.get("result_info").is_none());
    assert_valid(&token, &body["result"], "verify answer");
    assert!(is_hex(body["result"]["id"].as_str().unwrap(), 32));
    assert_eq!(body["result"]["status"], "active");

    let user = start_kinds(TokenOwner::User).await;
    let (status, body) = call(&user, reqwest::Method::GET, "user/tokens/verify").await;
    assert_eq!(status, 200);
    assert_valid(&token, &body["result"], "user verify answer");

    let id = seen[0]["id"].as_str().unwrap();
    let (status, body) = call(
        &fake,
        reqwest::Method::DELETE,
        &format!("accounts/{}/tokens/{id}", fake.account_id()),
    )
    .await;
    assert_eq!(status, 200);
    assert_valid(&envelope, &body, "delete envelope");
    assert_eq!(body["result"], json!({"id": id}));
}

#[tokio::test]
async fn every_listed_certificate_and_the_revoke_answer_match_the_schema() {
    let fake = start_kinds(TokenOwner::Account).await;
    let certificate = validator("ClientCertificate");
    let result_info = validator("PageResultInfo");
    let envelope = envelope_validator(true);
    let mut seen = Vec::new();
    for zone in ZONES {
        for page in 1.. {
            let rest =
                format!("zones/{zone}/client_certificates?status=all&page={page}&per_page=25");
            let (status, body) = call(&fake, reqwest::Method::GET, &rest).await;
            assert_eq!(status, 200);
            assert_valid(&envelope, &body, "certificate list envelope");
            assert_valid(&result_info, &body["result_info"], "result_info");
            assert_eq!(body["result_info"]["total_count"], 60);
            assert_eq!(body["result_info"]["total_pages"], 3);
            let items = body["result"].as_array().expect("result is an array");
            if items.is_empty() {
                break;
            }
            for item in items {
                assert_valid(&certificate, item, "client certificate");
                assert_certificate_shape(item);
                seen.push(item.clone());
            }
        }
    }
    assert_eq!(seen.len(), 120);
    for status in ["active", "pending_revocation", "revoked"] {
        assert!(seen.iter().any(|c| c["status"] == status), "{status}");
    }
    let cas: std::collections::BTreeSet<&str> = seen
        .iter()
        .map(|c| c["certificate_authority"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(cas.len(), 2);

    let active = seen.iter().find(|c| c["status"] == "active").unwrap();
    let zone = ZONES
        .into_iter()
        .find(|z| {
            fake.certificate(z, active["id"].as_str().unwrap())
                .is_some()
        })
        .unwrap();
    let (status, body) = call(
        &fake,
        reqwest::Method::DELETE,
        &format!(
            "zones/{zone}/client_certificates/{}",
            active["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_valid(&envelope, &body, "revoke envelope");
    assert_valid(&certificate, &body["result"], "revoked certificate");
    assert_certificate_shape(&body["result"]);
    assert_eq!(body["result"]["status"], "pending_revocation");

    // PATCH reactivates a certificate still pending_revocation and answers it, now active.
    let pending = seen
        .iter()
        .find(|c| c["status"] == "pending_revocation")
        .unwrap();
    let pending_id = pending["id"].as_str().unwrap();
    let zone = ZONES
        .into_iter()
        .find(|z| fake.certificate(z, pending_id).is_some())
        .unwrap();
    let (status, body) = call(
        &fake,
        reqwest::Method::PATCH,
        &format!("zones/{zone}/client_certificates/{pending_id}"),
    )
    .await;
    assert_eq!(status, 200);
    assert_valid(&envelope, &body, "reactivate envelope");
    assert_valid(&certificate, &body["result"], "reactivated certificate");
    assert_certificate_shape(&body["result"]);
    assert_eq!(body["result"]["status"], "active");
    assert_eq!(fake.reactivated_certificate_ids(), [pending_id.to_owned()]);
}

#[tokio::test]
async fn refusals_of_the_new_endpoints_have_the_cloudflare_shape() {
    let fake = start_kinds(TokenOwner::Account).await;
    let failure = envelope_validator(false);
    let account = fake.account_id().to_owned();
    let zone = ZONES[0];
    let revoked = fake
        .certificate_ids(zone)
        .into_iter()
        .find(|c| fake.certificate(zone, c).unwrap()["status"] == "revoked")
        .expect("a generated certificate already revoked");
    let cases = [
        (
            reqwest::Method::GET,
            format!("accounts/{account}/tokens?per_page=4"),
            400,
            1002,
        ),
        (
            reqwest::Method::GET,
            format!("zones/{zone}/client_certificates?per_page=51"),
            400,
            1002,
        ),
        (
            reqwest::Method::GET,
            "user/tokens/verify".to_owned(),
            401,
            1000,
        ),
        (
            reqwest::Method::GET,
            "zones/ffffffffffffffffffffffffffffffff/client_certificates".to_owned(),
            404,
            7003,
        ),
        (
            reqwest::Method::DELETE,
            format!("accounts/{account}/tokens/{}", "0".repeat(32)),
            404,
            1001,
        ),
        (
            reqwest::Method::DELETE,
            format!("zones/{zone}/client_certificates/00000000-0000-4000-8000-000000000000"),
            404,
            1001,
        ),
        (
            reqwest::Method::PATCH,
            format!("zones/{zone}/client_certificates/00000000-0000-4000-8000-000000000000"),
            404,
            1001,
        ),
        (
            reqwest::Method::PATCH,
            format!("zones/{zone}/client_certificates/{revoked}"),
            400,
            1406,
        ),
    ];
    for (method, rest, status, code) in cases {
        let (got, body) = call(&fake, method, &rest).await;
        assert_eq!(got, status, "{rest}");
        assert_valid(&failure, &body, "refusal envelope");
        assert_eq!(body["errors"][0]["code"], code, "{rest}: {body}");
    }
}

#[tokio::test]
async fn the_schema_check_itself_rejects_broken_tokens_and_certificates() {
    let token = validator("AccountApiToken");
    let good = FakeAccountToken::new("a".repeat(32), "ci", now()).to_json();
    assert!(token.validate(&good).is_ok());
    assert_account_token_shape(&good);
    for (field, broken) in [
        ("status", json!("revoked")),
        ("expires_on", json!(17)),
        ("policies", json!([{"effect": "allow"}])),
        ("condition", json!("anywhere")),
    ] {
        let mut bad = good.clone();
        bad[field] = broken;
        assert!(token.validate(&bad).is_err(), "{field} not checked");
    }
    let mut null_stamp = good.clone();
    null_stamp["last_used_on"] = Value::Null;
    let shape = std::panic::catch_unwind(|| assert_account_token_shape(&null_stamp));
    assert!(shape.is_err(), "a null stamp is caught by the shape check");

    let certificate = validator("ClientCertificate");
    let good = FakeCertificate::new(
        "00000000-0000-4000-8000-000000000001",
        "device",
        now() - chrono::Duration::days(30),
        now() + chrono::Duration::days(335),
    )
    .to_json();
    assert!(certificate.validate(&good).is_ok());
    assert_certificate_shape(&good);
    for (field, broken) in [
        ("status", json!("expired")),
        ("validity_days", json!("365")),
        ("certificate_authority", json!("Managed CA")),
        ("common_name", json!(["device"])),
    ] {
        let mut bad = good.clone();
        bad[field] = broken;
        assert!(certificate.validate(&bad).is_err(), "{field} not checked");
    }
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("certificate");
    let shape = std::panic::catch_unwind(|| assert_certificate_shape(&missing));
    assert!(
        shape.is_err(),
        "a missing PEM body is caught by the shape check"
    );
    assert!(validator("PageResultInfo")
        .validate(&json!({"page": 1, "per_page": "50"}))
        .is_err());
}
