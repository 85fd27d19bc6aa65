//! The fake's account-owned API tokens, `tokens/verify`, API Shield client certificates and the
//! global key behave like the documented API, quirks included (`per_page` 5–50, only recently
//! expired tokens, the `list_self` partial list, revocations that settle later), and their
//! faults do what they promise. Everything goes over real HTTP with reqwest.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use reqwest::Method;
use serde_json::{json, Value};
use zt_janitor::fake::{
    AccountTokenStatus, CertificateStatus, Endpoint, FakeAccountToken, FakeCertificate, FakeHandle,
    FakeOptions, FakeServer, Fault, FaultRule, MutationKind, TokenOwner, OWN_TOKEN_NAME,
    RECENTLY_EXPIRED_DAYS,
};

const ZONE_A: &str = "023e105f4ecef8ad9ca31a8372d0c353";
const ZONE_B: &str = "9f1c2d3e4b5a69788796a5b4c3d2e1f0";
const UNKNOWN_ZONE: &str = "ffffffffffffffffffffffffffffffff";
const EMAIL: &str = "admin@example.com";
const KEY: &str = "c2547eb745079dac9320b638f5e225cf483cc5cfdda41";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 29, 0, 0, 0).unwrap()
}

/// How a request authenticates.
#[derive(Clone, Copy)]
enum Auth<'a> {
    Token,
    Bearer(&'a str),
    GlobalKey(&'a str, &'a str),
    Nothing,
}

struct Reply {
    status: u16,
    body: Value,
}

impl Reply {
    fn error(&self) -> (u16, i64) {
        assert_eq!(self.body["success"], false, "{}", self.body);
        (
            self.status,
            self.body["errors"][0]["code"].as_i64().unwrap(),
        )
    }

    fn items(&self) -> &Vec<Value> {
        assert_eq!(self.status, 200, "{}", self.body);
        self.body["result"].as_array().expect("result is an array")
    }

    fn ids(&self) -> Vec<String> {
        self.items()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

struct Api {
    fake: FakeHandle,
    http: reqwest::Client,
}

impl Api {
    async fn start(opts: FakeOptions) -> Api {
        let fake = FakeServer::start(FakeOptions { now: now(), ..opts })
            .await
            .expect("fake starts");
        Api {
            fake,
            http: reqwest::Client::new(),
        }
    }

    /// `rest` is below `/client/v4`; `{account}` is replaced by the fake's account id.
    async fn send_as(&self, method: Method, rest: &str, auth: Auth<'_>) -> Reply {
        let rest = rest.replace("{account}", self.fake.account_id());
        let mut request = self
            .http
            .request(method, format!("{}/{rest}", self.fake.base_url()));
        request = match auth {
            Auth::Token => request.bearer_auth(self.fake.token()),
            Auth::Bearer(token) => request.bearer_auth(token),
            Auth::GlobalKey(email, key) => request
                .header("X-Auth-Email", email)
                .header("X-Auth-Key", key),
            Auth::Nothing => request,
        };
        let response = request.send().await.expect("request reaches the fake");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body arrives");
        let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        Reply { status, body }
    }

    async fn get(&self, rest: &str) -> Reply {
        self.send_as(Method::GET, rest, Auth::Token).await
    }

    async fn delete(&self, rest: &str) -> Reply {
        self.send_as(Method::DELETE, rest, Auth::Token).await
    }

    async fn tokens(&self, query: &str) -> Reply {
        self.get(&format!("accounts/{{account}}/tokens?{query}"))
            .await
    }

    async fn certificates(&self, zone: &str, query: &str) -> Reply {
        self.get(&format!("zones/{zone}/client_certificates?{query}"))
            .await
    }

    /// Every page of the page-numbered listing `rest` (path and query below `/client/v4`,
    /// without `page`) until an empty one; the items of all pages.
    async fn all_pages(&self, rest: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut page = 1;
        loop {
            assert!(page < 1000, "listing does not end");
            let reply = self.get(&format!("{rest}&page={page}")).await;
            if reply.items().is_empty() {
                return items;
            }
            items.extend(reply.items().iter().cloned());
            page += 1;
        }
    }

    async fn all_tokens(&self, query: &str) -> Vec<Value> {
        self.all_pages(&format!("accounts/{{account}}/tokens?per_page=50&{query}"))
            .await
    }

    async fn all_certificates(&self, zone: &str) -> Vec<Value> {
        self.all_pages(&format!(
            "zones/{zone}/client_certificates?status=all&per_page=50"
        ))
        .await
    }
}

fn stamp(object: &Value, field: &str) -> Option<DateTime<Utc>> {
    object[field]
        .as_str()
        .map(|s| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc))
}

fn ids_of(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

fn with_kinds() -> FakeOptions {
    FakeOptions {
        account_tokens: 40,
        zones: vec![ZONE_A.to_owned(), ZONE_B.to_owned()],
        client_certificates: 24,
        ..FakeOptions::default()
    }
}

// ---- Account-owned API tokens ----

#[tokio::test]
async fn per_page_must_be_5_to_50_in_both_new_listings() {
    let api = Api::start(with_kinds()).await;
    for per_page in [4, 51, 0, 1000] {
        let query = format!("per_page={per_page}");
        let tokens = api.tokens(&query).await;
        assert_eq!(tokens.error(), (400, 1002), "tokens {per_page}");
        let message = tokens.body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains("between 5 and 50"), "{message}");
        let certs = api.certificates(ZONE_A, &query).await;
        assert_eq!(certs.error(), (400, 1002), "certificates {per_page}");
    }
    for per_page in [5, 50] {
        let query = format!("per_page={per_page}");
        let tokens = api.tokens(&query).await;
        assert_eq!(tokens.items().len(), per_page.min(33), "tokens {per_page}");
        assert_eq!(tokens.body["result_info"]["per_page"], per_page);
        let certs = api.certificates(ZONE_A, &query).await;
        assert_eq!(certs.items().len(), per_page.min(24));
    }
    let default = api.tokens("").await;
    assert_eq!(default.body["result_info"]["per_page"], 20);
    assert_eq!(default.items().len(), 20);
    for bad in [
        "per_page=abc",
        "page=0",
        "direction=up",
        "include_expired=yes",
    ] {
        assert_eq!(api.tokens(bad).await.error(), (400, 1002), "{bad}");
    }
    assert_eq!(
        api.certificates(ZONE_A, "status=expired").await.error(),
        (400, 1002)
    );
}

#[tokio::test]
async fn token_pages_cover_every_listed_token_once_in_id_order() {
    let api = Api::start(with_kinds()).await;
    // 40 generated: 4 recently expired (hidden without include_expired), 4 long expired
    // (always hidden), plus the own token.
    let first = api.tokens("page=1&per_page=7").await;
    assert_eq!(
        first.body["result_info"],
        json!({"page": 1, "per_page": 7, "count": 7, "total_count": 33, "total_pages": 5})
    );
    let all = api.all_pages("accounts/{account}/tokens?per_page=7").await;
    let ids = ids_of(&all);
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "sorted by id, each once");
    assert_eq!(ids.len(), 33);
    let last = api.tokens("page=5&per_page=7").await;
    assert_eq!(last.body["result_info"]["count"], 5);
    assert!(api.tokens("page=6&per_page=7").await.items().is_empty());

    let desc = api
        .all_pages("accounts/{account}/tokens?per_page=10&direction=desc")
        .await;
    let mut reversed = ids_of(&desc);
    reversed.reverse();
    assert_eq!(reversed, ids);
    assert_eq!(api.fake.request_counts().list_account_tokens, 14);
}

#[tokio::test]
async fn expired_tokens_are_listed_only_when_asked_and_only_recent_ones() {
    let api = Api::start(with_kinds()).await;
    let stored = api.fake.account_token_ids();
    assert_eq!(stored.len(), 41, "40 generated and the own token");

    let without = api.all_tokens("").await;
    assert!(
        without.iter().all(|t| t["status"] != "expired"),
        "no expired"
    );
    let with = api.all_tokens("include_expired=true").await;
    let expired: Vec<&Value> = with.iter().filter(|t| t["status"] == "expired").collect();
    assert_eq!(expired.len(), 4);
    assert_eq!(with.len(), without.len() + 4);
    for token in &expired {
        let ago = now() - stamp(token, "expires_on").unwrap();
        assert!(
            ago <= chrono::Duration::days(RECENTLY_EXPIRED_DAYS),
            "{token}"
        );
    }
    let long_expired: Vec<String> = stored
        .iter()
        .filter(|id| {
            let t = api.fake.account_token(id).unwrap();
            t["status"] == "expired"
                && now() - stamp(&t, "expires_on").unwrap()
                    > chrono::Duration::days(RECENTLY_EXPIRED_DAYS)
        })
        .cloned()
        .collect();
    assert_eq!(long_expired.len(), 4, "stored but never listed");
    assert!(long_expired.iter().all(|id| !ids_of(&with).contains(id)));
    assert_eq!(api.all_tokens("include_expired=false").await, without);

    // Hand-made: just inside and just outside the 30 days, and one expired by date only.
    let issued = now() - chrono::Duration::days(400);
    let expired_at = |days: i64| FakeAccountToken {
        status: AccountTokenStatus::Expired,
        expires_on: Some(now() - chrono::Duration::days(days)),
        ..FakeAccountToken::new(format!("{days:032x}"), "hand", issued)
    };
    let recent = api.fake.insert_account_token(&expired_at(29));
    let old = api.fake.insert_account_token(&expired_at(31));
    let by_date = api.fake.insert_account_token(&FakeAccountToken {
        expires_on: Some(now() - chrono::Duration::days(2)),
        ..FakeAccountToken::new("b".repeat(32), "active-but-past", issued)
    });
    let listed = ids_of(&api.all_tokens("include_expired=true").await);
    assert!(listed.contains(&recent) && listed.contains(&by_date));
    assert!(!listed.contains(&old));
    let hidden = ids_of(&api.all_tokens("").await);
    assert!(!hidden.contains(&recent) && !hidden.contains(&by_date));
}

#[tokio::test]
async fn a_list_self_token_sees_only_itself() {
    let api = Api::start(FakeOptions {
        own_token_lists_self_only: true,
        ..with_kinds()
    })
    .await;
    let reply = api.tokens("include_expired=true&per_page=50").await;
    assert_eq!(reply.ids(), [api.fake.own_token_id()]);
    assert_eq!(reply.body["result_info"]["total_count"], 1);
    assert_eq!(api.fake.account_token_ids().len(), 41, "the others exist");

    let user = Api::start(FakeOptions {
        own_token_lists_self_only: true,
        own_token_owner: TokenOwner::User,
        ..with_kinds()
    })
    .await;
    assert!(user.tokens("include_expired=true").await.items().is_empty());
}

#[tokio::test]
async fn verify_names_the_own_token_for_its_owner_only() {
    let account = Api::start(with_kinds()).await;
    let own = account.fake.own_token_id();
    assert_eq!(own.len(), 32);
    assert!(own
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    let listed = account
        .fake
        .account_token(&own)
        .expect("own token is stored");
    assert_eq!(listed["name"], OWN_TOKEN_NAME);
    assert_eq!(listed["status"], "active");
    assert!(account.fake.account_token_ids().contains(&own));

    let reply = account.get("accounts/{account}/tokens/verify").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["result"], json!({"id": own, "status": "active"}));
    assert_eq!(account.get("user/tokens/verify").await.error(), (401, 1000));

    let user = Api::start(FakeOptions {
        own_token_owner: TokenOwner::User,
        ..with_kinds()
    })
    .await;
    assert_eq!(user.fake.own_token_id(), own, "same seed, same id");
    assert!(!user.fake.account_token_ids().contains(&own));
    assert!(!ids_of(&user.all_tokens("include_expired=true").await).contains(&own));
    assert_eq!(
        user.get("accounts/{account}/tokens/verify").await.error(),
        (401, 1000)
    );
    let reply = user.get("user/tokens/verify").await;
    assert_eq!(reply.body["result"], json!({"id": own, "status": "active"}));

    for api in [&account, &user] {
        let bad = api
            .send_as(Method::GET, "user/tokens/verify", Auth::Bearer("wrong"))
            .await;
        assert_eq!(bad.error(), (403, 10000));
    }
    assert_eq!(account.fake.request_counts().verify_token, 3);
    assert_eq!(user.fake.request_counts().verify_token, 3);

    let other_seed = Api::start(FakeOptions {
        seed: 2,
        ..with_kinds()
    })
    .await;
    assert_ne!(other_seed.fake.own_token_id(), own);
}

#[tokio::test]
async fn the_global_key_is_accepted_when_set_and_refused_by_verify() {
    let api = Api::start(FakeOptions {
        global_key: Some((EMAIL.to_owned(), KEY.to_owned())),
        ..with_kinds()
    })
    .await;
    let as_key = Auth::GlobalKey(EMAIL, KEY);
    let list = api
        .send_as(Method::GET, "accounts/{account}/tokens", as_key)
        .await;
    assert_eq!(list.items().len(), 20);
    let certs = api
        .send_as(
            Method::GET,
            &format!("zones/{ZONE_A}/client_certificates"),
            as_key,
        )
        .await;
    assert_eq!(certs.items().len(), 20);
    let registrations = api
        .send_as(
            Method::GET,
            "accounts/{account}/devices/registrations",
            as_key,
        )
        .await;
    assert_eq!(registrations.status, 200);
    for path in ["accounts/{account}/tokens/verify", "user/tokens/verify"] {
        let reply = api.send_as(Method::GET, path, as_key).await;
        assert_eq!(reply.error(), (400, 6003), "{path}");
        assert_eq!(
            reply.body["errors"][0]["message"],
            "Invalid request headers"
        );
    }
    for wrong in [
        Auth::GlobalKey(EMAIL, "wrong-key"),
        Auth::GlobalKey("other@example.com", KEY),
        Auth::Nothing,
    ] {
        let reply = api
            .send_as(Method::GET, "accounts/{account}/tokens", wrong)
            .await;
        assert_eq!(reply.error(), (403, 10000));
    }
    // The Bearer token still works beside the key.
    assert_eq!(api.tokens("").await.items().len(), 20);

    let without = Api::start(with_kinds()).await;
    let reply = without
        .send_as(Method::GET, "accounts/{account}/tokens", as_key)
        .await;
    assert_eq!(reply.error(), (403, 10000), "no global key configured");
}

#[tokio::test]
async fn deleting_a_token_answers_its_id_and_the_own_token_is_not_protected() {
    let api = Api::start(with_kinds()).await;
    let listed = api.all_tokens("").await;
    let own = api.fake.own_token_id();
    let victim = ids_of(&listed).into_iter().find(|id| *id != own).unwrap();
    let path = format!("accounts/{{account}}/tokens/{victim}");
    let reply = api.delete(&path).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["result"], json!({"id": victim}));
    assert!(api.fake.account_token(&victim).is_none());
    assert_eq!(api.delete(&path).await.error(), (404, 1001));

    let reply = api
        .delete(&format!("accounts/{{account}}/tokens/{own}"))
        .await;
    assert_eq!(reply.body["result"], json!({"id": own}));
    assert!(!api.fake.account_token_ids().contains(&own));
    assert_eq!(api.fake.deleted_account_token_ids(), [victim.clone(), own]);

    let log: Vec<_> = api
        .fake
        .mutations()
        .into_iter()
        .filter(|m| m.kind == MutationKind::DeleteAccountToken)
        .collect();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].ids, std::slice::from_ref(&victim));
    assert!(log[0].applied && !log[1].applied && log[2].applied);
    assert_eq!(log[1].status, 404);
    assert_eq!(api.fake.request_counts().delete_account_token, 3);

    let wrong_account = api
        .delete(&format!(
            "accounts/ffffffffffffffffffffffffffffffff/tokens/{victim}"
        ))
        .await;
    assert_eq!(wrong_account.error(), (404, 7003));
}

#[tokio::test]
async fn raw_tokens_are_served_verbatim() {
    let api = Api::start(FakeOptions::default()).await;
    let key = api
        .fake
        .insert_account_token_raw(json!({"name": "no id", "status": "active"}));
    assert_eq!(key, "~raw-1");
    let id = api.fake.insert_account_token_raw(json!({
        "id": "0".repeat(32), "name": 7, "last_used_on": "yesterday"
    }));
    let listed = api.all_tokens("").await;
    assert_eq!(
        listed.len(),
        3,
        "own token, the raw one and the nameless one"
    );
    assert!(listed.contains(&api.fake.account_token(&id).unwrap()));
    assert_eq!(listed[2], json!({"name": "no id", "status": "active"}));
}

// ---- Client certificates ----

#[tokio::test]
async fn certificates_list_every_status_by_default_and_filter_by_status() {
    let api = Api::start(with_kinds()).await;
    let all = api.all_certificates(ZONE_A).await;
    assert_eq!(ids_of(&all), api.fake.certificate_ids(ZONE_A));
    assert_eq!(all.len(), 24);
    let by_default = api
        .all_pages(&format!("zones/{ZONE_A}/client_certificates?per_page=50"))
        .await;
    assert_eq!(by_default, all, "no status means all");
    for status in [
        "active",
        "pending_revocation",
        "revoked",
        "pending_reactivation",
    ] {
        let reply = api
            .certificates(ZONE_A, &format!("status={status}&per_page=50"))
            .await;
        let expected = all.iter().filter(|c| c["status"] == status).count();
        assert_eq!(reply.items().len(), expected, "{status}");
        assert_eq!(reply.body["result_info"]["total_count"], expected);
        assert!(reply.items().iter().all(|c| c["status"] == status));
    }
    assert_eq!(all.iter().filter(|c| c["status"] == "revoked").count(), 3);
    let page = api.certificates(ZONE_B, "page=2&per_page=10").await;
    assert_eq!(
        page.body["result_info"],
        json!({"page": 2, "per_page": 10, "count": 10, "total_count": 24, "total_pages": 3})
    );
    assert_ne!(
        api.fake.certificate_ids(ZONE_A),
        api.fake.certificate_ids(ZONE_B)
    );
    assert_eq!(api.fake.zones(), [ZONE_A, ZONE_B]);
}

#[tokio::test]
async fn unknown_zones_get_a_routing_404() {
    let api = Api::start(with_kinds()).await;
    let list = api.certificates(UNKNOWN_ZONE, "status=all").await;
    assert_eq!(list.error(), (404, 7003));
    let id = &api.fake.certificate_ids(ZONE_A)[0];
    let revoke = api
        .delete(&format!("zones/{UNKNOWN_ZONE}/client_certificates/{id}"))
        .await;
    assert_eq!(revoke.error(), (404, 7003));
    // A certificate of another zone is not found in this one.
    let elsewhere = api
        .delete(&format!("zones/{ZONE_B}/client_certificates/{id}"))
        .await;
    assert_eq!(elsewhere.error(), (404, 1001));
    assert!(api.fake.revoked_certificate_ids().is_empty());
}

fn first_active(api: &Api, zone: &str) -> String {
    api.fake
        .certificate_ids(zone)
        .into_iter()
        .find(|id| api.fake.certificate(zone, id).unwrap()["status"] == "active")
        .unwrap()
}

#[tokio::test]
async fn a_revoked_certificate_is_pending_then_revoked_once_it_settles() {
    let api = Api::start(FakeOptions {
        revocation_settles_after: Duration::from_millis(1500),
        ..with_kinds()
    })
    .await;
    let id = first_active(&api, ZONE_A);
    let before = api.fake.certificate(ZONE_A, &id).unwrap();
    let reply = api
        .delete(&format!("zones/{ZONE_A}/client_certificates/{id}"))
        .await;
    assert_eq!(reply.status, 200);
    let answered = &reply.body["result"];
    assert_eq!(answered["status"], "pending_revocation");
    let mut expected = before.clone();
    expected["status"] = json!("pending_revocation");
    assert_eq!(*answered, expected, "only the status changes");

    let status_listed = |items: Vec<Value>| {
        items
            .into_iter()
            .find(|c| c["id"] == id.as_str())
            .map(|c| c["status"].clone())
    };
    assert_eq!(
        status_listed(api.all_certificates(ZONE_A).await),
        Some(json!("pending_revocation"))
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        status_listed(api.all_certificates(ZONE_A).await),
        Some(json!("revoked"))
    );
    assert_eq!(
        api.fake.certificate(ZONE_A, &id).unwrap()["status"],
        "revoked"
    );
    assert_eq!(api.fake.revoked_certificate_ids(), [id]);
}

#[tokio::test]
async fn with_no_settle_time_the_next_listing_shows_revoked_and_a_repeat_changes_nothing() {
    let api = Api::start(with_kinds()).await;
    let id = first_active(&api, ZONE_B);
    let path = format!("zones/{ZONE_B}/client_certificates/{id}");
    let first = api.delete(&path).await;
    assert_eq!(first.body["result"]["status"], "pending_revocation");
    let listed = api.certificates(ZONE_B, "status=revoked&per_page=50").await;
    assert!(listed.ids().contains(&id));

    let again = api.delete(&path).await;
    assert_eq!(again.status, 200);
    assert_eq!(
        again.body["result"],
        api.fake.certificate(ZONE_B, &id).unwrap()
    );
    assert_eq!(again.body["result"]["status"], "revoked");

    let generated_pending = api
        .fake
        .certificate_ids(ZONE_B)
        .into_iter()
        .find(|c| api.fake.certificate(ZONE_B, c).unwrap()["status"] == "pending_revocation")
        .unwrap();
    let pending = api
        .delete(&format!(
            "zones/{ZONE_B}/client_certificates/{generated_pending}"
        ))
        .await;
    assert_eq!(pending.body["result"]["status"], "pending_revocation");

    let missing = api
        .delete(&format!(
            "zones/{ZONE_B}/client_certificates/00000000-0000-4000-8000-000000000000"
        ))
        .await;
    assert_eq!(missing.error(), (404, 1001));

    let log: Vec<(bool, u16)> = api
        .fake
        .mutations()
        .iter()
        .filter(|m| m.kind == MutationKind::RevokeClientCertificate)
        .map(|m| (m.applied, m.status))
        .collect();
    assert_eq!(log, [(true, 200), (false, 200), (false, 200), (false, 404)]);
    assert_eq!(api.fake.revoked_certificate_ids(), [id]);
    assert_eq!(api.fake.request_counts().revoke_client_certificate, 4);
}

/// `PATCH` reactivates a certificate while its revocation is pending; once it has settled,
/// the call is refused and changes nothing. Counted and logged like every mutation.
#[tokio::test]
async fn a_pending_revocation_is_reactivated_by_patch_and_a_settled_one_is_refused() {
    let api = Api::start(FakeOptions {
        revocation_settles_after: Duration::from_secs(3600),
        ..with_kinds()
    })
    .await;
    let id = first_active(&api, ZONE_A);
    let path = format!("zones/{ZONE_A}/client_certificates/{id}");
    api.delete(&path).await;

    api.fake.set_faults(vec![FaultRule::always(
        Endpoint::ReactivateClientCertificate,
        Fault::Status {
            code: 503,
            retry_after: None,
        },
    )]);
    assert_eq!(
        api.send_as(Method::PATCH, &path, Auth::Token).await.error(),
        (503, 10001)
    );
    assert_eq!(
        api.fake.certificate(ZONE_A, &id).unwrap()["status"],
        "pending_revocation",
        "a faulted call changes nothing"
    );
    api.fake.clear_faults();
    let reply = api.send_as(Method::PATCH, &path, Auth::Token).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["result"]["status"], "active");
    assert_eq!(
        api.fake.certificate(ZONE_A, &id).unwrap()["status"],
        "active"
    );
    let again = api.send_as(Method::PATCH, &path, Auth::Token).await;
    assert_eq!(again.status, 200, "not revoked: answered unchanged");

    // A generated certificate already revoked: too late.
    let revoked = api
        .fake
        .certificate_ids(ZONE_B)
        .into_iter()
        .find(|c| api.fake.certificate(ZONE_B, c).unwrap()["status"] == "revoked")
        .unwrap();
    let late = format!("zones/{ZONE_B}/client_certificates/{revoked}");
    assert_eq!(
        api.send_as(Method::PATCH, &late, Auth::Token).await.error(),
        (400, 1406)
    );
    assert_eq!(
        api.fake.certificate(ZONE_B, &revoked).unwrap()["status"],
        "revoked"
    );

    let log: Vec<(bool, u16)> = api
        .fake
        .mutations()
        .iter()
        .filter(|m| m.kind == MutationKind::ReactivateClientCertificate)
        .map(|m| (m.applied, m.status))
        .collect();
    assert_eq!(log, [(false, 503), (true, 200), (false, 200), (false, 400)]);
    assert_eq!(api.fake.reactivated_certificate_ids(), [id]);
    assert_eq!(api.fake.request_counts().reactivate_client_certificate, 4);
}

#[tokio::test]
async fn hand_made_certificates_are_served_in_their_zone() {
    let api = Api::start(with_kinds()).await;
    let issued = now() - chrono::Duration::days(800);
    let cert = FakeCertificate {
        status: CertificateStatus::PendingReactivation,
        ..FakeCertificate::new(
            "00000000-0000-4000-8000-000000000001",
            "hand-made",
            issued,
            now() - chrono::Duration::days(70),
        )
    };
    let id = api.fake.insert_certificate(ZONE_A, &cert);
    let served = api.fake.certificate(ZONE_A, &id).unwrap();
    assert_eq!(served, cert.to_json());
    assert_eq!(served["validity_days"], 730);
    assert_eq!(api.all_certificates(ZONE_A).await[0], served, "smallest id");

    let new_zone = "1".repeat(32);
    let raw = api
        .fake
        .insert_certificate_raw(&new_zone, json!({"status": "active"}));
    assert_eq!(raw, "~raw-1");
    assert!(api.fake.zones().contains(&new_zone));
    assert_eq!(
        api.all_certificates(&new_zone).await,
        [json!({"status": "active"})]
    );
}

// ---- Faults ----

#[tokio::test]
async fn a_zone_fault_fails_that_zone_only() {
    let api = Api::start(with_kinds()).await;
    let rule: FaultRule = format!("list_client_certificates:status=500:id={ZONE_A}")
        .parse()
        .unwrap();
    api.fake.set_faults(vec![rule]);
    assert_eq!(api.certificates(ZONE_A, "").await.error(), (500, 10002));
    assert_eq!(api.certificates(ZONE_B, "").await.items().len(), 20);

    let id = first_active(&api, ZONE_B);
    api.fake.set_faults(vec![FaultRule::always(
        Endpoint::RevokeClientCertificate,
        Fault::Status {
            code: 503,
            retry_after: None,
        },
    )
    .for_id(ZONE_B)]);
    let path = format!("zones/{ZONE_B}/client_certificates/{id}");
    assert_eq!(api.delete(&path).await.error(), (503, 10001));
    let record = api.fake.mutations().pop().unwrap();
    assert_eq!((record.ids, record.applied), (vec![id.clone()], false));
    assert_eq!(
        api.fake.certificate(ZONE_B, &id).unwrap()["status"],
        "active"
    );
    api.fake.clear_faults();
    assert_eq!(api.delete(&path).await.status, 200);
}

#[tokio::test]
async fn listing_faults_bend_the_new_listings_too() {
    let api = Api::start(with_kinds()).await;
    let clean = api.tokens("page=2&per_page=10").await.ids();
    let page1 = api.tokens("page=1&per_page=10").await.ids();
    api.fake.set_faults(vec![
        "list_account_tokens:short_page:nth=1".parse().unwrap(),
        "list_account_tokens:duplicate_ids:nth=2".parse().unwrap(),
        "list_account_tokens:partial_errors:nth=3".parse().unwrap(),
    ]);
    let short = api.tokens("page=2&per_page=10").await;
    assert_eq!(short.ids(), clean[..5]);
    assert_eq!(short.body["result_info"]["total_count"], 33);
    let dup = api.tokens("page=2&per_page=10").await.ids();
    assert_eq!(dup[0], page1[9]);
    assert_eq!(dup[1..], clean[..9]);
    let partial = api.tokens("page=2&per_page=10").await;
    assert_eq!(partial.body["success"], true);
    assert_eq!(partial.body["errors"].as_array().unwrap().len(), 1);
    assert_eq!(partial.ids(), clean);

    api.fake.set_faults(vec![FaultRule::always(
        Endpoint::ListClientCertificates,
        Fault::ShortPageWithCursor,
    )]);
    assert_eq!(
        api.certificates(ZONE_A, "per_page=10").await.items().len(),
        5
    );
    api.fake
        .set_faults(vec!["verify_token:malformed_json".parse().unwrap()]);
    let response = reqwest::Client::new()
        .get(format!("{}/user/tokens/verify", api.fake.base_url()))
        .bearer_auth(api.fake.token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(serde_json::from_str::<Value>(&response.text().await.unwrap()).is_err());
}

// ---- Determinism ----

#[tokio::test]
async fn same_seed_same_data_and_new_kinds_change_nothing_else() {
    let base = FakeOptions {
        registrations: 60,
        service_tokens: 20,
        ..FakeOptions::default()
    };
    let plain = Api::start(base.clone()).await;
    let a = Api::start(FakeOptions {
        account_tokens: 30,
        zones: vec![ZONE_A.to_owned(), ZONE_B.to_owned()],
        client_certificates: 15,
        ..base.clone()
    })
    .await;
    let b = Api::start(FakeOptions {
        account_tokens: 30,
        zones: vec![ZONE_A.to_owned()],
        client_certificates: 15,
        ..base.clone()
    })
    .await;
    let c = Api::start(FakeOptions {
        account_tokens: 30,
        ..base.clone()
    })
    .await;

    for api in [&a, &b, &c] {
        assert_eq!(api.fake.registration_ids(), plain.fake.registration_ids());
        for id in plain.fake.registration_ids() {
            assert_eq!(api.fake.get(&id), plain.fake.get(&id));
        }
        assert_eq!(api.fake.service_token_ids(), plain.fake.service_token_ids());
        for id in plain.fake.service_token_ids() {
            assert_eq!(api.fake.service_token(&id), plain.fake.service_token(&id));
        }
        assert_eq!(api.fake.own_token_id(), plain.fake.own_token_id());
    }
    let tokens = |api: &Api| -> Vec<Option<Value>> {
        api.fake
            .account_token_ids()
            .iter()
            .map(|id| api.fake.account_token(id))
            .collect()
    };
    assert_eq!(tokens(&a), tokens(&b));
    assert_eq!(tokens(&a), tokens(&c));
    assert_eq!(
        a.all_tokens("include_expired=true").await,
        b.all_tokens("include_expired=true").await
    );
    assert_eq!(
        a.all_certificates(ZONE_A).await,
        b.all_certificates(ZONE_A).await
    );
    assert!(c.fake.zones().is_empty());

    let other = Api::start(FakeOptions {
        seed: 99,
        account_tokens: 30,
        zones: vec![ZONE_A.to_owned()],
        client_certificates: 15,
        ..base
    })
    .await;
    assert_ne!(other.fake.account_token_ids(), a.fake.account_token_ids());
    assert_ne!(
        other.fake.certificate_ids(ZONE_A),
        a.fake.certificate_ids(ZONE_A)
    );
}

#[tokio::test]
async fn invalid_new_options_are_refused() {
    for opts in [
        FakeOptions {
            zones: vec!["ABCDEF0123456789ABCDEF0123456789".to_owned()],
            ..FakeOptions::default()
        },
        FakeOptions {
            zones: vec!["abc".to_owned()],
            ..FakeOptions::default()
        },
        FakeOptions {
            zones: vec![ZONE_A.to_owned(), ZONE_A.to_owned()],
            ..FakeOptions::default()
        },
        FakeOptions {
            account_tokens: 100_001,
            ..FakeOptions::default()
        },
        FakeOptions {
            zones: vec![ZONE_A.to_owned()],
            client_certificates: 100_001,
            ..FakeOptions::default()
        },
        FakeOptions {
            global_key: Some((String::new(), KEY.to_owned())),
            ..FakeOptions::default()
        },
    ] {
        let err = FakeServer::start(opts).await.expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    }
}
