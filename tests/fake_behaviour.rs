//! The fake behaves like the documented API (status default, pagination, bulk limits, revoke,
//! auth) and its faults do what they promise. Everything goes over real HTTP with reqwest.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use reqwest::Method;
use serde_json::{json, Value};
use zt_janitor::fake::{
    Endpoint, FakeHandle, FakeOptions, FakeRegistration, FakeServer, FakeServiceToken, Fault,
    FaultRule, MutationKind, SERVICE_TOKENS_MAX_PER_PAGE,
};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 29, 0, 0, 0).unwrap()
}

struct Api {
    fake: FakeHandle,
    http: reqwest::Client,
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
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

    async fn with(registrations: usize) -> Api {
        Api::start(FakeOptions {
            registrations,
            revoked_share: 0.2,
            ..FakeOptions::default()
        })
        .await
    }

    fn url(&self, rest: &str) -> String {
        format!(
            "{}/accounts/{}/devices/{rest}",
            self.fake.base_url(),
            self.fake.account_id()
        )
    }

    async fn send_as(&self, method: Method, rest: &str, token: &str) -> Reply {
        let response = self
            .http
            .request(method, self.url(rest))
            .bearer_auth(token)
            .send()
            .await
            .expect("request reaches the fake");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        Reply {
            status,
            headers,
            text: response.text().await.expect("body arrives"),
        }
    }

    async fn send(&self, method: Method, rest: &str) -> Reply {
        self.send_as(method, rest, &self.fake.token()).await
    }

    async fn list(&self, query: &str) -> Reply {
        self.send(Method::GET, &format!("registrations?{query}"))
            .await
    }

    /// Follows cursors to the end; returns the pages' items.
    async fn pages(&self, query: &str) -> Vec<Vec<Value>> {
        let mut pages = Vec::new();
        let mut cursor = String::new();
        loop {
            assert!(pages.len() < 1000, "listing does not end");
            let body = self.list(&format!("{query}&cursor={cursor}")).await.json();
            pages.push(body["result"].as_array().unwrap().clone());
            cursor = body["result_info"]["cursor"].as_str().unwrap().to_owned();
            if cursor.is_empty() {
                return pages;
            }
        }
    }

    fn revoked_in_store(&self) -> HashSet<String> {
        self.fake
            .registration_ids()
            .into_iter()
            .filter(|id| self.fake.get(id).unwrap()["revoked_at"].is_string())
            .collect()
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn query_ids(ids: &[String]) -> String {
    ids.iter()
        .map(|id| format!("id={id}"))
        .collect::<Vec<_>>()
        .join("&")
}

#[tokio::test]
async fn status_defaults_to_active_and_all_includes_revoked() {
    let api = Api::with(200).await;
    let revoked = api.revoked_in_store();
    assert!(!revoked.is_empty());

    let default: Vec<String> = api
        .pages("per_page=1000")
        .await
        .concat()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(default.len(), 200 - revoked.len());
    assert!(default.iter().all(|id| !revoked.contains(id)));

    let only_revoked = ids(&api.pages("status=revoked").await.concat());
    assert_eq!(only_revoked.into_iter().collect::<HashSet<_>>(), revoked);

    let all = ids(&api.pages("status=all").await.concat());
    assert_eq!(all, api.fake.registration_ids());

    assert_eq!(api.list("status=deleted").await.status, 400);
}

#[tokio::test]
async fn per_page_is_capped_and_defaults_to_100() {
    let api = Api::start(FakeOptions {
        registrations: 400,
        revoked_share: 0.0,
        max_per_page: 150,
        ..FakeOptions::default()
    })
    .await;
    let capped = api.list("per_page=1000").await.json();
    assert_eq!(capped["result"].as_array().unwrap().len(), 150);
    assert_eq!(capped["result_info"]["per_page"], 150);
    assert_eq!(capped["result_info"]["count"], 150);

    let default = api.list("").await.json();
    assert_eq!(default["result"].as_array().unwrap().len(), 100);
    assert_eq!(default["result_info"]["per_page"], 100);

    assert_eq!(api.list("per_page=0").await.status, 400);
    assert_eq!(api.list("cursor=not-a-cursor").await.status, 400);
}

#[tokio::test]
async fn pagination_returns_every_id_once_even_with_deletions_between_pages() {
    let api = Api::with(300).await;
    let all = api.fake.registration_ids();
    let mut served = Vec::new();
    let mut deleted_unserved = Vec::new();
    let mut cursor = String::new();
    for round in 0.. {
        let body = api
            .list(&format!("status=all&per_page=25&cursor={cursor}"))
            .await
            .json();
        let page = ids(body["result"].as_array().unwrap());
        served.extend(page.iter().cloned());
        // Every other page, delete the item the cursor points at; always delete one the listing
        // has not reached yet.
        if let Some(last) = page.last().filter(|_| round % 2 == 0) {
            assert_eq!(
                api.send(Method::DELETE, &format!("registrations/{last}"))
                    .await
                    .status,
                200
            );
        }
        let ahead = all
            .iter()
            .rev()
            .find(|id| !served.contains(id) && !deleted_unserved.contains(*id))
            .cloned();
        if let Some(ahead) = ahead {
            assert_eq!(
                api.send(Method::DELETE, &format!("registrations/{ahead}"))
                    .await
                    .status,
                200
            );
            deleted_unserved.push(ahead);
        }
        cursor = body["result_info"]["cursor"].as_str().unwrap().to_owned();
        if cursor.is_empty() {
            break;
        }
    }
    let unique: HashSet<&String> = served.iter().collect();
    assert_eq!(unique.len(), served.len(), "an id was served twice");
    let mut covered: Vec<String> = served.into_iter().chain(deleted_unserved).collect();
    covered.sort();
    assert_eq!(covered, all, "an id was skipped");
}

#[tokio::test]
async fn bulk_delete_deletes_present_ids_and_is_logged() {
    let api = Api::with(50).await;
    let all = api.fake.registration_ids();
    let missing = "00000000-0000-4000-8000-000000000000".to_owned();
    let wanted = vec![all[1].clone(), all[2].clone(), missing.clone()];
    let reply = api
        .send(
            Method::DELETE,
            &format!("registrations?{}", query_ids(&wanted)),
        )
        .await;
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(body["success"], true);
    assert!(body["result"].is_null());

    assert!(!api.fake.contains(&all[1]) && !api.fake.contains(&all[2]));
    assert_eq!(api.fake.len(), 48);
    let log = api.fake.mutations();
    assert_eq!(log.len(), 1);
    let record = &log[0];
    assert_eq!(
        (record.seq, record.kind, record.status, record.applied),
        (1, MutationKind::BulkDelete, 200, true)
    );
    assert_eq!(record.method, "DELETE");
    assert_eq!(record.ids, wanted);
    assert_eq!(record.affected, [all[1].clone(), all[2].clone()]);
    assert_eq!(api.fake.deleted_ids(), [all[1].clone(), all[2].clone()]);
    assert_eq!(api.fake.request_counts().bulk_delete, 1);
}

#[tokio::test]
async fn more_than_max_bulk_ids_is_refused_with_400() {
    let api = Api::start(FakeOptions {
        registrations: 30,
        max_bulk_ids: 10,
        ..FakeOptions::default()
    })
    .await;
    let all = api.fake.registration_ids();
    for (count, status) in [(11, 400), (0, 400), (10, 200)] {
        let reply = api
            .send(
                Method::DELETE,
                &format!("registrations?{}", query_ids(&all[..count])),
            )
            .await;
        assert_eq!(reply.status, status, "{count} ids");
        if status == 400 {
            assert_eq!(reply.json()["success"], false);
        }
    }
    assert_eq!(api.fake.len(), 20, "only the 10-id call deleted");
    let log = api.fake.mutations();
    assert_eq!(
        log.iter()
            .map(|r| (r.status, r.applied))
            .collect::<Vec<_>>(),
        [(400, false), (400, false), (200, true)]
    );

    let reply = api
        .send(
            Method::POST,
            &format!("registrations/revoke?{}", query_ids(&all[10..20])),
        )
        .await;
    assert_eq!(
        reply.status, 200,
        "exactly max_bulk_ids is fine for revoke too"
    );
    let too_many: Vec<String> = (0..11).map(|i| format!("id-{i}")).collect();
    let reply = api
        .send(
            Method::POST,
            &format!("registrations/revoke?{}", query_ids(&too_many)),
        )
        .await;
    assert_eq!(reply.status, 400);
}

#[tokio::test]
async fn revoke_sets_revoked_at_and_unrevoke_clears_it() {
    let api = Api::start(FakeOptions {
        registrations: 20,
        revoked_share: 0.0,
        ..FakeOptions::default()
    })
    .await;
    let id = api.fake.registration_ids()[3].clone();
    let reply = api
        .send(Method::POST, &format!("registrations/revoke?id={id}"))
        .await;
    assert_eq!(reply.status, 200);
    assert!(reply.json()["result"].is_null());

    let served = api
        .send(Method::GET, &format!("registrations/{id}"))
        .await
        .json();
    let revoked_at = served["result"]["revoked_at"]
        .as_str()
        .expect("revoked_at is set");
    let revoked_at = DateTime::parse_from_rfc3339(revoked_at).unwrap();
    assert!(
        (revoked_at.with_timezone(&Utc) - now()).num_seconds().abs() < 60,
        "revoked on the fake's clock"
    );
    assert_eq!(api.fake.revoked_ids(), vec![id.clone()]);
    assert!(ids(&api.pages("status=active").await.concat())
        .iter()
        .all(|i| *i != id));

    assert_eq!(
        api.send(Method::POST, &format!("registrations/unrevoke?id={id}"))
            .await
            .status,
        200
    );
    assert!(api.fake.get(&id).unwrap()["revoked_at"].is_null());
    let kinds: Vec<MutationKind> = api.fake.mutations().iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [MutationKind::Revoke, MutationKind::Unrevoke]);
}

#[tokio::test]
async fn deprecated_revoke_works_and_shows_in_the_log() {
    let api = Api::start(FakeOptions {
        registrations: 10,
        revoked_share: 0.0,
        ..FakeOptions::default()
    })
    .await;
    let id = api.fake.registration_ids()[0].clone();
    let response = api
        .http
        .post(format!(
            "{}/accounts/{}/devices/revoke",
            api.fake.base_url(),
            api.fake.account_id()
        ))
        .bearer_auth(api.fake.token())
        .json(&json!([id]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(api.fake.get(&id).unwrap()["revoked_at"].is_string());
    let log = api.fake.mutations();
    assert_eq!(log[0].kind, MutationKind::DeprecatedRevoke);
    assert_eq!(api.fake.request_counts().deprecated_revoke, 1);
}

#[tokio::test]
async fn bad_credentials_get_403_code_10000_and_change_nothing() {
    let api = Api::with(10).await;
    let id = api.fake.registration_ids()[0].clone();

    let no_header = api.http.get(api.url("registrations")).send().await.unwrap();
    assert_eq!(no_header.status(), 403);
    let body: Value = no_header.json().await.unwrap();
    assert_eq!(
        body["errors"][0],
        json!({"code": 10000, "message": "Authentication error"})
    );

    let wrong = api
        .send_as(
            Method::DELETE,
            &format!("registrations/{id}"),
            "not-the-token",
        )
        .await;
    assert_eq!(wrong.status, 403);
    assert!(api.fake.contains(&id));
    let record = &api.fake.mutations()[0];
    assert_eq!((record.status, record.applied), (403, false));

    api.fake.set_token("rotated");
    assert_eq!(
        api.send_as(Method::GET, "registrations", "fake-token")
            .await
            .status,
        403
    );
    assert_eq!(
        api.send_as(Method::GET, "registrations", "rotated")
            .await
            .status,
        200
    );
    assert_eq!(
        api.fake.request_counts().list_pages,
        3,
        "failed requests are counted"
    );
}

#[tokio::test]
async fn missing_registrations_and_unknown_paths_get_404_envelopes() {
    let api = Api::with(5).await;
    let missing = api
        .send(
            Method::DELETE,
            "registrations/00000000-0000-4000-8000-000000000000",
        )
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["errors"][0]["code"], 1001);
    let unknown = api.send(Method::GET, "nonsense").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["success"], false);
    assert_eq!(api.fake.request_counts().total, 2);
}

#[tokio::test]
async fn raw_registrations_are_served_verbatim_and_deletable() {
    let api = Api::with(5).await;
    let raw = json!({"id": "raw-1", "last_seen_at": "last tuesday", "device": {"id": "d", "name": "n"}, "surprise": [1]});
    assert_eq!(api.fake.insert_raw(raw.clone()), "raw-1");
    let seen = FakeRegistration {
        user_email: None,
        ..FakeRegistration::new("typed-1", now())
    };
    api.fake.insert(&seen);

    let listed = api.pages("status=all").await.concat();
    assert!(listed.contains(&raw));
    assert!(
        listed.contains(&seen.to_json())
            || listed
                .iter()
                .any(|r| r["id"] == "typed-1" && r.get("user").is_none())
    );
    assert_eq!(
        api.send(Method::DELETE, "registrations/raw-1").await.status,
        200
    );
    assert!(!api.fake.contains("raw-1"));
}

#[tokio::test]
async fn same_seed_serves_byte_identical_pages() {
    let a = Api::with(120).await;
    let b = Api::with(120).await;
    let page_a = a.list("status=all&per_page=50").await.text;
    let page_b = b.list("status=all&per_page=50").await.text;
    assert_eq!(page_a, page_b);
    let c = Api::start(FakeOptions {
        registrations: 120,
        seed: 2,
        ..FakeOptions::default()
    })
    .await;
    assert_ne!(c.list("status=all&per_page=50").await.text, page_a);
}

#[tokio::test]
async fn status_fault_429_carries_retry_after_then_recovers() {
    let api = Api::with(30).await;
    api.fake.set_faults(vec![FaultRule::first(
        Endpoint::ListRegistrations,
        1,
        Fault::Status {
            code: 429,
            retry_after: Some(7),
        },
    )]);
    let limited = api.list("").await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.headers["retry-after"], "7");
    assert_eq!(limited.json()["success"], false);
    assert_eq!(api.list("").await.status, 200);
    assert_eq!(api.fake.request_counts().list_pages, 2);
}

#[tokio::test]
async fn faulted_mutations_are_logged_but_not_applied() {
    let api = Api::with(30).await;
    let all = api.fake.registration_ids();
    api.fake.set_faults(vec![FaultRule::first(
        Endpoint::BulkDelete,
        1,
        Fault::Status {
            code: 503,
            retry_after: None,
        },
    )]);
    let path = format!("registrations?{}", query_ids(&all[..3]));
    assert_eq!(api.send(Method::DELETE, &path).await.status, 503);
    assert_eq!(api.fake.len(), 30);
    assert_eq!(api.send(Method::DELETE, &path).await.status, 200);
    let log = api.fake.mutations();
    assert_eq!(
        log.iter()
            .map(|r| (r.status, r.applied))
            .collect::<Vec<_>>(),
        [(503, false), (200, true)]
    );
    assert_eq!(api.fake.len(), 27);
}

#[tokio::test]
async fn repeat_cursor_hands_back_the_request_cursor() {
    let api = Api::with(60).await;
    let first = api.list("status=all&per_page=20").await.json();
    let cursor = first["result_info"]["cursor"].as_str().unwrap().to_owned();
    api.fake.set_faults(vec![FaultRule::always(
        Endpoint::ListRegistrations,
        Fault::RepeatCursor,
    )]);
    for _ in 0..3 {
        let again = api
            .list(&format!("status=all&per_page=20&cursor={cursor}"))
            .await
            .json();
        assert_eq!(
            again["result_info"]["cursor"],
            cursor.as_str(),
            "following it loops forever"
        );
    }
    let start = api.list("status=all&per_page=20").await.json();
    let start_cursor = start["result_info"]["cursor"].as_str().unwrap().to_owned();
    assert!(!start_cursor.is_empty());
    let looped = api
        .list(&format!("status=all&per_page=20&cursor={start_cursor}"))
        .await
        .json();
    assert_eq!(
        looped["result"], start["result"],
        "a repeated first-page cursor serves page one again"
    );
}

#[tokio::test]
async fn duplicate_ids_repeat_the_previous_pages_last_item() {
    let api = Api::with(60).await;
    api.fake.set_faults(vec![FaultRule::nth(
        Endpoint::ListRegistrations,
        2,
        Fault::DuplicateIds,
    )]);
    let pages = api.pages("status=all&per_page=20").await;
    assert_eq!(pages[1][0]["id"], pages[0][19]["id"]);
    let all = ids(&pages.concat());
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(
        (all.len(), unique.len()),
        (61, 60),
        "one duplicate, nothing lost"
    );
}

#[tokio::test]
async fn short_pages_with_cursor_still_list_everything() {
    let api = Api::with(45).await;
    api.fake.set_faults(vec![FaultRule::always(
        Endpoint::ListRegistrations,
        Fault::ShortPageWithCursor,
    )]);
    let pages = api.pages("status=all&per_page=10").await;
    assert!(pages.iter().all(|p| p.len() <= 5));
    assert!(
        pages.last().unwrap().is_empty(),
        "the cursor outlives the last item"
    );
    assert_eq!(ids(&pages.concat()), api.fake.registration_ids());
}

#[tokio::test]
async fn delayed_delete_still_deletes_after_the_delay() {
    let api = Api::with(10).await;
    let id = api.fake.registration_ids()[0].clone();
    api.fake.set_faults(vec![FaultRule::always(
        Endpoint::DeleteOne,
        Fault::Delay(Duration::from_millis(300)),
    )]);
    let started = Instant::now();
    assert_eq!(
        api.send(Method::DELETE, &format!("registrations/{id}"))
            .await
            .status,
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(!api.fake.contains(&id));
}

#[tokio::test]
async fn a_client_gone_during_a_delay_leaves_the_registration_in_place() {
    let api = Api::with(10).await;
    let id = api.fake.registration_ids()[0].clone();
    api.fake.set_faults(vec![FaultRule::always(
        Endpoint::DeleteOne,
        Fault::Delay(Duration::from_millis(500)),
    )]);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let result = impatient
        .delete(api.url(&format!("registrations/{id}")))
        .bearer_auth(api.fake.token())
        .send()
        .await;
    assert!(result.unwrap_err().is_timeout());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(api.fake.contains(&id));
    let log = api.fake.mutations();
    assert_eq!((log.len(), log[0].status, log[0].applied), (1, 0, false));
}

#[tokio::test]
async fn connection_reset_is_a_transport_error_and_changes_nothing() {
    let api = Api::with(10).await;
    let id = api.fake.registration_ids()[0].clone();
    api.fake.set_faults(vec![FaultRule::first(
        Endpoint::AnyMutation,
        1,
        Fault::ConnectionReset,
    )]);
    let url = api.url(&format!("registrations/{id}"));
    let err = api
        .http
        .delete(&url)
        .bearer_auth(api.fake.token())
        .send()
        .await
        .expect_err("no response");
    assert!(!err.is_status() && !err.is_timeout(), "{err:?}");
    assert!(api.fake.contains(&id));
    assert_eq!(
        api.http
            .delete(&url)
            .bearer_auth(api.fake.token())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let log = api.fake.mutations();
    assert_eq!(
        log.iter()
            .map(|r| (r.status, r.applied))
            .collect::<Vec<_>>(),
        [(0, false), (200, true)]
    );
}

#[tokio::test]
async fn malformed_json_success_false_and_wrong_auth() {
    let api = Api::with(10).await;
    let id = api.fake.registration_ids()[0].clone();

    api.fake.set_faults(vec![FaultRule::always(
        Endpoint::ListRegistrations,
        Fault::MalformedJson,
    )]);
    let truncated = api.list("").await;
    assert_eq!(truncated.status, 200);
    assert!(serde_json::from_str::<Value>(&truncated.text).is_err());

    api.fake.set_faults(vec![FaultRule::always(
        Endpoint::GetRegistration,
        Fault::SuccessFalse,
    )]);
    let failed = api.send(Method::GET, &format!("registrations/{id}")).await;
    assert_eq!(failed.status, 500);
    let body = failed.json();
    assert_eq!(body["success"], false);
    assert!(!body["errors"].as_array().unwrap().is_empty());
    assert_eq!(
        body["result"]["id"],
        id.as_str(),
        "a result is present despite the failure"
    );

    api.fake
        .set_faults(vec![FaultRule::always(Endpoint::Any, Fault::WrongAuth)]);
    let denied = api
        .send(Method::DELETE, &format!("registrations/{id}"))
        .await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json()["errors"][0]["code"], 10000);
    assert!(api.fake.contains(&id));

    api.fake.clear_faults();
    assert_eq!(api.list("").await.status, 200);
}

#[tokio::test]
async fn shutdown_closes_the_port() {
    let api = Api::with(1).await;
    assert_eq!(api.list("").await.status, 200);
    api.fake.shutdown().await;
    let fresh = reqwest::Client::new();
    assert!(fresh.get(api.url("registrations")).send().await.is_err());
}

/// The hostile server's answers: each does exactly what its fault promises, and the log says
/// what really changed.
#[tokio::test]
async fn hostile_mutation_faults_claim_more_or_less_than_they_do() {
    let api = Api::with(40).await;
    let all = api.fake.registration_ids();
    let bulk = |ids: &[String]| format!("registrations?{}", query_ids(ids));

    api.fake.set_faults(vec![FaultRule::first(
        Endpoint::BulkDelete,
        1,
        Fault::PartialApply,
    )]);
    let reply = api.send(Method::DELETE, &bulk(&all[..3])).await;
    assert_eq!(
        (reply.status, reply.json()["success"].clone()),
        (200, json!(true))
    );
    assert!(!api.fake.contains(&all[0]));
    assert!(api.fake.contains(&all[1]) && api.fake.contains(&all[2]));

    for (status, body_empty) in [(200, false), (202, false), (204, true)] {
        api.fake.set_faults(vec![FaultRule::first(
            Endpoint::AnyMutation,
            1,
            Fault::Noop { status },
        )]);
        let reply = api.send(Method::DELETE, &bulk(&all[1..3])).await;
        assert_eq!(reply.status, status);
        assert_eq!(
            reply.text.is_empty(),
            body_empty,
            "{status}: {}",
            reply.text
        );
        assert!(api.fake.contains(&all[1]), "noop {status} deleted");
    }

    api.fake.set_faults(vec![FaultRule::first(
        Endpoint::AnyMutation,
        1,
        Fault::NoopWithErrors,
    )]);
    let body = api.send(Method::DELETE, &bulk(&all[1..3])).await.json();
    assert_eq!(body["success"], true);
    assert_eq!(body["errors"].as_array().unwrap().len(), 2);
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains(&all[1]));
    assert!(api.fake.contains(&all[1]));

    api.fake.set_faults(vec![FaultRule::first(
        Endpoint::DeleteOne,
        1,
        Fault::Empty204,
    )]);
    let reply = api
        .send(Method::DELETE, &format!("registrations/{}", all[1]))
        .await;
    assert_eq!((reply.status, reply.text.as_str()), (204, ""));
    assert!(!api.fake.contains(&all[1]));

    api.fake.set_faults(vec![FaultRule::first(
        Endpoint::DeleteOne,
        1,
        Fault::ErrorsNull,
    )]);
    let body = api
        .send(Method::DELETE, &format!("registrations/{}", all[2]))
        .await
        .json();
    assert_eq!(
        (body["success"].clone(), body["errors"].clone()),
        (json!(true), Value::Null)
    );
    assert!(!api.fake.contains(&all[2]));

    api.fake.set_faults(vec![FaultRule::first(
        Endpoint::DeleteOne,
        1,
        Fault::ApplyThenStatus(502),
    )]);
    let reply = api
        .send(Method::DELETE, &format!("registrations/{}", all[3]))
        .await;
    assert_eq!(reply.status, 502);
    assert!(!api.fake.contains(&all[3]), "applied before the 502");
    let last = api.fake.mutations().pop().unwrap();
    assert_eq!((last.status, last.applied), (502, true));
}

#[tokio::test]
async fn error_codes_html_and_raw_retry_after() {
    let api = Api::with(10).await;
    let all = api.fake.registration_ids();
    let rule: FaultRule = "any_mutation:status=404:code=7003".parse().unwrap();
    api.fake.set_faults(vec![rule]);
    let reply = api
        .send(Method::DELETE, &format!("registrations/{}", all[0]))
        .await;
    assert_eq!(
        (reply.status, reply.json()["errors"][0]["code"].clone()),
        (404, json!(7003))
    );
    assert!(api.fake.contains(&all[0]));

    api.fake.set_faults(vec!["get:html=404".parse().unwrap()]);
    let reply = api
        .send(Method::GET, &format!("registrations/{}", all[0]))
        .await;
    assert_eq!(reply.status, 404);
    assert!(reply.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(serde_json::from_str::<Value>(&reply.text).is_err());

    api.fake.set_faults(vec![
        "list:retry_after_raw=1e300:first=1".parse().unwrap(),
        "list:retry_after_ms_raw=99999999999999999999999:nth=1"
            .parse()
            .unwrap(),
    ]);
    let reply = api.list("status=all").await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.headers["retry-after"], "1e300");
    let reply = api.list("status=all").await;
    assert_eq!(reply.status, 200, "both rules counted the first request");

    api.fake
        .set_faults(vec!["list:partial_errors".parse().unwrap()]);
    let body = api.list("status=all").await.json();
    assert_eq!(body["success"], true);
    assert_eq!(body["errors"][0]["code"], 1020);
    assert_eq!(body["result"].as_array().unwrap().len(), 10);
}

#[tokio::test]
async fn id_filtered_faults_hit_only_calls_naming_that_id() {
    let api = Api::with(10).await;
    let all = api.fake.registration_ids();
    let stuck = all[4].clone();
    api.fake.set_faults(vec![format!(
        "any_mutation:status=400:code=2001:id={stuck}"
    )
    .parse()
    .unwrap()]);
    let bulk = format!("registrations?{}", query_ids(&all[3..6]));
    let body = api.send(Method::DELETE, &bulk).await.json();
    assert_eq!(body["errors"][0]["code"], 2001);
    assert_eq!(api.fake.len(), 10, "the whole bulk call is refused");
    for id in &all[3..6] {
        let status = api
            .send(Method::DELETE, &format!("registrations/{id}"))
            .await
            .status;
        assert_eq!(status, if *id == stuck { 400 } else { 200 }, "{id}");
    }
    assert!(api.fake.contains(&stuck));
    assert_eq!(api.fake.len(), 8);
}

#[tokio::test]
async fn redirects_point_at_the_same_call_elsewhere() {
    let api = Api::with(5).await;
    let other = "http://127.0.0.1:9/client/v4";
    let rule: FaultRule = format!("any:redirect302={other}").parse().unwrap();
    assert_eq!(
        rule.fault,
        Fault::Redirect {
            status: 302,
            location: other.to_owned()
        }
    );
    api.fake.set_faults(vec![rule]);
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_follow
        .delete(api.url("registrations?id=a"))
        .bearer_auth(api.fake.token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    assert_eq!(
        response.headers()["location"],
        format!(
            "{other}/accounts/{}/devices/registrations?id=a",
            api.fake.account_id()
        )
        .as_str()
    );
    assert_eq!(api.fake.len(), 5);
}

// ---- Access service tokens: page pagination, delete, the in-use refusal ----

impl Api {
    async fn with_tokens(service_tokens: usize) -> Api {
        Api::start(FakeOptions {
            service_tokens,
            ..FakeOptions::default()
        })
        .await
    }

    fn token_url(&self, rest: &str) -> String {
        format!(
            "{}/accounts/{}/access/{rest}",
            self.fake.base_url(),
            self.fake.account_id()
        )
    }

    async fn tokens_as(&self, method: Method, rest: &str, token: &str) -> Reply {
        let response = self
            .http
            .request(method, self.token_url(rest))
            .bearer_auth(token)
            .send()
            .await
            .expect("request reaches the fake");
        Reply {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            text: response.text().await.expect("body arrives"),
        }
    }

    async fn tokens(&self, method: Method, rest: &str) -> Reply {
        self.tokens_as(method, rest, &self.fake.token()).await
    }

    /// Pages 1, 2, ... until an empty page; returns the non-empty pages' bodies.
    async fn token_pages(&self, per_page: usize) -> Vec<Value> {
        let mut bodies = Vec::new();
        for page in 1.. {
            assert!(page < 1000, "listing does not end");
            let reply = self
                .tokens(
                    Method::GET,
                    &format!("service_tokens?page={page}&per_page={per_page}"),
                )
                .await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            let body = reply.json();
            if body["result"].as_array().unwrap().is_empty() {
                break;
            }
            bodies.push(body);
        }
        bodies
    }
}

fn error_of(reply: &Reply) -> (u16, Value) {
    let body = reply.json();
    assert_eq!(body["success"], false, "{body}");
    (reply.status, body["errors"][0].clone())
}

#[tokio::test]
async fn service_token_pages_list_every_token_once_then_an_empty_page() {
    let api = Api::with_tokens(47).await;
    let bodies = api.token_pages(10).await;
    assert_eq!(bodies.len(), 5);
    for (n, body) in bodies.iter().enumerate() {
        let count = if n < 4 { 10 } else { 7 };
        assert_eq!(
            body["result_info"],
            json!({"page": n + 1, "per_page": 10, "count": count, "total_count": 47, "total_pages": 5})
        );
    }
    let listed: Vec<String> = bodies
        .iter()
        .flat_map(|b| ids(b["result"].as_array().unwrap()))
        .collect();
    assert_eq!(
        listed,
        api.fake.service_token_ids(),
        "every token once, by id"
    );

    let past = api
        .tokens(Method::GET, "service_tokens?page=9&per_page=10")
        .await
        .json();
    assert_eq!(past["result"], json!([]));
    assert_eq!(
        past["result_info"],
        json!({"page": 9, "per_page": 10, "count": 0, "total_count": 47, "total_pages": 5})
    );
    assert_eq!(api.fake.request_counts().list_service_tokens, 7);
    assert_eq!(api.fake.request_counts().list_pages, 0);
}

#[tokio::test]
async fn service_token_per_page_is_capped_and_defaults_to_20() {
    let api = Api::with_tokens(120).await;
    let capped = api
        .tokens(Method::GET, "service_tokens?per_page=1000")
        .await
        .json();
    assert_eq!(SERVICE_TOKENS_MAX_PER_PAGE, 50);
    assert_eq!(capped["result"].as_array().unwrap().len(), 50);
    assert_eq!(capped["result_info"]["per_page"], 50);
    assert_eq!(capped["result_info"]["total_pages"], 3);
    assert_eq!(api.token_pages(1000).await.len(), 3);

    let default = api.tokens(Method::GET, "service_tokens").await.json();
    assert_eq!(default["result"].as_array().unwrap().len(), 20);
    assert_eq!(default["result_info"]["page"], 1);
    assert_eq!(default["result_info"]["total_pages"], 6);

    for bad in ["page=0", "page=two", "per_page=0", "per_page=-3"] {
        let reply = api
            .tokens(Method::GET, &format!("service_tokens?{bad}"))
            .await;
        let (status, error) = error_of(&reply);
        assert_eq!(status, 400, "{bad}");
        assert_eq!(error["code"], 1002, "{bad}");
    }
}

#[tokio::test]
async fn deleting_a_service_token_answers_it_and_is_logged() {
    let api = Api::with_tokens(12).await;
    let in_use = api.fake.service_tokens_in_use();
    let id = api
        .fake
        .service_token_ids()
        .into_iter()
        .find(|id| !in_use.contains(id))
        .unwrap();
    let before = api.fake.service_token(&id).unwrap();

    let reply = api
        .tokens(Method::DELETE, &format!("service_tokens/{id}"))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json()["result"],
        before,
        "the deleted token comes back"
    );
    assert!(api.fake.service_token(&id).is_none());
    assert_eq!(api.fake.service_token_ids().len(), 11);
    assert_eq!(
        api.fake.deleted_service_token_ids(),
        std::slice::from_ref(&id)
    );
    assert!(api.fake.deleted_ids().is_empty(), "no registration deleted");

    let again = api
        .tokens(Method::DELETE, &format!("service_tokens/{id}"))
        .await;
    let (status, error) = error_of(&again);
    assert_eq!((status, error["code"].clone()), (404, json!(1001)));

    let log = api.fake.mutations();
    let summary: Vec<_> = log
        .iter()
        .map(|m| {
            (
                m.kind,
                m.method.as_str(),
                m.ids.clone(),
                m.status,
                m.applied,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                MutationKind::DeleteServiceToken,
                "DELETE",
                vec![id.clone()],
                200,
                true
            ),
            (
                MutationKind::DeleteServiceToken,
                "DELETE",
                vec![id.clone()],
                404,
                false
            ),
        ]
    );
    assert_eq!(
        log[0].path,
        format!(
            "/client/v4/accounts/{}/access/service_tokens/{id}",
            api.fake.account_id()
        )
    );
    assert_eq!(api.fake.request_counts().delete_service_token, 2);
}

#[tokio::test]
async fn a_service_token_in_use_is_refused_with_12139_and_kept() {
    let api = Api::with_tokens(12).await;
    let in_use = api.fake.service_tokens_in_use();
    assert_eq!(
        in_use.len(),
        2,
        "tokens 0 and 6 of 12 are attached to the policy"
    );
    let id = in_use[0].clone();

    let reply = api
        .tokens(Method::DELETE, &format!("service_tokens/{id}"))
        .await;
    let (status, error) = error_of(&reply);
    assert_eq!(status, 400);
    assert_eq!(
        error,
        json!({
            "code": 12139,
            "message": "access.api.error.service_token_in_use: used by a policy, group, or app SCIM configuration"
        })
    );
    assert!(api.fake.service_token(&id).is_some(), "the token is kept");
    let record = &api.fake.mutations()[0];
    assert_eq!((record.status, record.applied), (400, false));

    assert!(api.fake.set_service_token_in_use(&id, false));
    let detached = api
        .tokens(Method::DELETE, &format!("service_tokens/{id}"))
        .await;
    assert_eq!(detached.status, 200, "deletable once detached");

    let created = now() - chrono::Duration::days(30);
    let hand_made = FakeServiceToken {
        in_use: true,
        ..FakeServiceToken::new("5e41c3a0-0000-4000-8000-000000000001", "enroll", created)
    };
    let hand_made_id = api.fake.insert_service_token(&hand_made);
    let refused = api
        .tokens(Method::DELETE, &format!("service_tokens/{hand_made_id}"))
        .await;
    assert_eq!(refused.status, 400);
    assert_eq!(
        api.fake.service_token(&hand_made_id),
        Some(hand_made.to_json())
    );
}

#[tokio::test]
async fn service_token_calls_check_auth_and_account() {
    let api = Api::with_tokens(5).await;
    let id = api.fake.service_token_ids()[1].clone();
    for (method, rest) in [
        (Method::GET, "service_tokens".to_owned()),
        (Method::DELETE, format!("service_tokens/{id}")),
    ] {
        let reply = api.tokens_as(method.clone(), &rest, "not-the-token").await;
        assert_eq!(
            error_of(&reply),
            (
                403,
                json!({"code": 10000, "message": "Authentication error"})
            ),
            "{method} {rest}"
        );
    }
    let no_header = api
        .http
        .get(api.token_url("service_tokens"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_header.status(), 403);

    let other_account = api
        .http
        .delete(format!(
            "{}/accounts/ffffffffffffffffffffffffffffffff/access/service_tokens/{id}",
            api.fake.base_url()
        ))
        .bearer_auth(api.fake.token())
        .send()
        .await
        .unwrap();
    assert_eq!(other_account.status(), 404);
    let body: Value = other_account.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], 7003);
    assert_eq!(api.fake.service_token_ids().len(), 5, "nothing deleted");

    let wrong_method = api
        .tokens(Method::POST, &format!("service_tokens/{id}"))
        .await;
    assert_eq!(error_of(&wrong_method).0, 405);
}

#[tokio::test]
async fn deleting_between_pages_moves_later_tokens_forward() {
    // Page numbers are offsets: a client that deletes while it pages skips tokens. This is
    // the real API's hazard too; the fake keeps it so that clients are tested against it.
    let api = Api::with_tokens(30).await;
    let all = api.fake.service_token_ids();
    let in_use = api.fake.service_tokens_in_use();
    let first = api
        .tokens(Method::GET, "service_tokens?page=1&per_page=10")
        .await
        .json();
    let first_ids = ids(first["result"].as_array().unwrap());
    assert_eq!(first_ids, all[..10]);
    for id in first_ids.iter().filter(|id| !in_use.contains(id)).take(3) {
        let reply = api
            .tokens(Method::DELETE, &format!("service_tokens/{id}"))
            .await;
        assert_eq!(reply.status, 200);
    }
    let second = api
        .tokens(Method::GET, "service_tokens?page=2&per_page=10")
        .await
        .json();
    assert_eq!(ids(second["result"].as_array().unwrap()), all[13..23]);
    assert_eq!(second["result_info"]["total_count"], 27);
}

#[tokio::test]
async fn tokens_do_not_change_the_registrations_of_a_seed() {
    let without = Api::with(60).await;
    let with = Api::start(FakeOptions {
        registrations: 60,
        revoked_share: 0.2,
        service_tokens: 25,
        ..FakeOptions::default()
    })
    .await;
    assert_eq!(
        without.list("status=all&per_page=100").await.text,
        with.list("status=all&per_page=100").await.text
    );
    assert!(without.fake.service_token_ids().is_empty());
    let empty = without.tokens(Method::GET, "service_tokens").await.json();
    assert_eq!(
        empty["result_info"],
        json!({"page": 1, "per_page": 20, "count": 0, "total_count": 0, "total_pages": 0})
    );
}

#[tokio::test]
async fn service_token_faults_hit_their_calls_and_any_covers_them() {
    let api = Api::with_tokens(20).await;
    let in_use = api.fake.service_tokens_in_use();
    let free: Vec<String> = api
        .fake
        .service_token_ids()
        .into_iter()
        .filter(|id| !in_use.contains(id))
        .collect();
    let rules = [
        "list_service_tokens:status=503:first=1",
        "delete_service_token:reset:nth=1",
        "list:status=500",
    ];
    api.fake
        .set_faults(rules.iter().map(|r| r.parse().unwrap()).collect());
    let list = api.tokens(Method::GET, "service_tokens").await;
    assert_eq!(error_of(&list).0, 503);
    assert_eq!(api.tokens(Method::GET, "service_tokens").await.status, 200);
    let reset = api
        .http
        .delete(api.token_url(&format!("service_tokens/{}", free[0])))
        .bearer_auth(api.fake.token())
        .send()
        .await;
    assert!(reset.is_err(), "the connection was reset");
    assert!(
        api.fake.service_token(&free[0]).is_some(),
        "a reset changes nothing"
    );
    assert_eq!(api.fake.mutations()[0].status, 0);

    api.fake
        .set_faults(vec!["any_mutation:status=502".parse().unwrap()]);
    let delete = api
        .tokens(Method::DELETE, &format!("service_tokens/{}", free[0]))
        .await;
    assert_eq!(error_of(&delete).0, 502);
    assert!(api.fake.service_token(&free[0]).is_some());

    api.fake
        .set_faults(vec!["any:wrong_auth:first=1".parse().unwrap()]);
    assert_eq!(api.tokens(Method::GET, "service_tokens").await.status, 403);

    api.fake.set_faults(vec![
        "list_service_tokens:short_page:nth=1".parse().unwrap(),
        "list_service_tokens:duplicate_ids:nth=2".parse().unwrap(),
    ]);
    let short = api
        .tokens(Method::GET, "service_tokens?page=1&per_page=6")
        .await
        .json();
    assert_eq!(ids(short["result"].as_array().unwrap()).len(), 3);
    assert_eq!(
        short["result_info"]["total_pages"], 4,
        "the rest still counted"
    );
    let dup = api
        .tokens(Method::GET, "service_tokens?page=2&per_page=6")
        .await
        .json();
    let all = api.fake.service_token_ids();
    assert_eq!(
        ids(dup["result"].as_array().unwrap()),
        all[5..11],
        "starts with page 1's last token"
    );

    api.fake
        .set_faults(vec!["delete_service_token:status=400:code=12139"
            .parse()
            .unwrap()]);
    let refused = api
        .tokens(Method::DELETE, &format!("service_tokens/{}", free[1]))
        .await;
    assert_eq!(error_of(&refused).1["code"], 12139);
    assert!(api.fake.service_token(&free[1]).is_some());
}

#[tokio::test]
async fn raw_service_tokens_are_served_verbatim_and_deletable() {
    let api = Api::with_tokens(3).await;
    let odd = json!({
        "id": "0000aaaa-0000-4000-8000-000000000000",
        "name": "broken stamps",
        "expires_at": "",
        "last_seen_at": false,
        "x-extra": {"kept": true}
    });
    let id = api.fake.insert_service_token_raw(odd.clone());
    let anonymous = api.fake.insert_service_token_raw(json!({"name": "no id"}));
    assert_eq!(anonymous, "~raw-1");
    let all = api.fake.service_token_ids();
    assert_eq!((all.first(), all.last()), (Some(&id), Some(&anonymous)));

    let listed = api.token_pages(50).await;
    let items = listed[0]["result"].as_array().unwrap();
    assert_eq!(items[0], odd, "served exactly as inserted");
    assert_eq!(items[4], json!({"name": "no id"}));
    assert!(!api.fake.service_tokens_in_use().contains(&id));

    let reply = api
        .tokens(Method::DELETE, &format!("service_tokens/{id}"))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["result"], odd);
    assert_eq!(api.fake.service_token_ids().len(), 4);
}
