//! History: pages in id order with `next`, `limit` and `after` checked, the recovery window
//! (410), the signed route's signature (401) and the browser route's authorization and CORS.

use chrono::{Duration as Age, Utc};
use serde_json::Value;
use uuid::{NoContext, Timestamp, Uuid};

use super::{browser_history, channel_name, page, signed_history, trigger_numbered};
use crate::common::{channel_auth, presence_auth, TestServer, APP_ID, KEY};

/// The ids of `channel`'s stored events, in order.
async fn stored_ids(server: &TestServer, channel: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT id::text FROM events WHERE channel = $1 ORDER BY id")
        .bind(channel)
        .fetch_all(&mut server.db().await)
        .await
        .unwrap()
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A UUIDv7 of `age` ago.
fn id_aged(age: Age) -> Uuid {
    let at = Utc::now() - age;
    let ts = Timestamp::from_unix(NoContext, at.timestamp() as u64, 0);
    Uuid::new_v7(ts)
}

#[tokio::test]
async fn pages_follow_next_in_order_and_carry_what_live_frames_carry() {
    let server = TestServer::start().await;
    let channel = channel_name("history");
    trigger_numbered(&server, &channel, "tick", 25).await;
    // Not JSON: stored as a JSON string, answered as the string itself.
    assert_eq!(
        server
            .trigger(&channel, "note", "plain, not JSON")
            .await
            .status(),
        200
    );
    // Answered at once: the fence makes every confirmed event part of the answer.
    let (first, next) = page(signed_history(&server, &channel, "limit=10").await).await;
    assert_eq!(first.len(), 10);
    assert_eq!(next.as_deref(), first[9]["id"].as_str());
    assert_eq!(first[0]["event"], "tick");
    assert_eq!(first[0]["data"], r#"{"i":0}"#);
    assert_eq!(first[0]["user_id"], Value::Null);
    let received_at = first[0]["received_at"].as_str().unwrap();
    assert!(
        received_at.len() == "2025-03-01T12:00:00.123456Z".len() && received_at.ends_with('Z'),
        "{received_at}"
    );
    let mut all = first;
    let mut after = next;
    while let Some(cursor) = after {
        let (events, next) =
            page(signed_history(&server, &channel, &format!("after={cursor}&limit=10")).await)
                .await;
        all.extend(events);
        after = next;
    }
    assert_eq!(all.len(), 26);
    let data: Vec<&str> = all.iter().map(|e| e["data"].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..25)
        .map(|i| format!(r#"{{"i":{i}}}"#))
        .chain(["plain, not JSON".to_owned()])
        .collect();
    assert_eq!(data, expected);
    assert_eq!(ids(&all), stored_ids(&server, &channel).await);
    // The last page was short: no `next`. An exactly full last page has one, then an empty page.
    let (events, next) = page(
        signed_history(
            &server,
            &channel,
            &format!("after={}&limit=6", all[19]["id"].as_str().unwrap()),
        )
        .await,
    )
    .await;
    assert_eq!(events.len(), 6);
    let (rest, none) =
        page(signed_history(&server, &channel, &format!("after={}", next.unwrap())).await).await;
    assert!(rest.is_empty());
    assert_eq!(none, None);
    server.cleanup().await;
}

#[tokio::test]
async fn limit_and_after_are_checked() {
    let server = TestServer::start().await;
    let channel = channel_name("checked");
    for query in ["limit=0", "limit=1001", "limit=ten", "limit=-1"] {
        let response = signed_history(&server, &channel, query).await;
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "limit must be an integer from 1 to 1000");
    }
    let v4 = Uuid::new_v4();
    for query in ["after=nope".to_owned(), format!("after={v4}")] {
        let response = signed_history(&server, &channel, &query).await;
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "after must be an event id (a UUIDv7)");
    }
    let (events, next) = page(signed_history(&server, &channel, "limit=1000").await).await;
    assert!(events.is_empty());
    assert_eq!(next, None);
    server.cleanup().await;
}

#[tokio::test]
async fn the_recovery_window_is_bounded_by_age_and_by_count() {
    let server = TestServer::start_with(|c| c.history.max_events = 5).await;
    let channel = channel_name("window");
    trigger_numbered(&server, &channel, "e", 8).await;
    let old = id_aged(Age::hours(25));
    let response = signed_history(&server, &channel, &format!("after={old}")).await;
    assert_eq!(response.status(), 410);
    let body: Value = response.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("beyond the recovery window"), "{error}");
    assert!(error.contains("24 hours"), "{error}");
    // Within the hours, but 7 events follow the first: more than 5.
    let stored = server
        .wait_count(
            &format!("SELECT count(*) FROM events WHERE channel = '{channel}'"),
            8,
        )
        .await;
    assert_eq!(stored, 8);
    let all = stored_ids(&server, &channel).await;
    assert_eq!(all.len(), 8);
    let response = signed_history(&server, &channel, &format!("after={}", all[0])).await;
    assert_eq!(response.status(), 410);
    let body: Value = response.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("beyond the recovery window"), "{error}");
    assert!(error.contains("more than 5 events"), "{error}");
    // Also when the page asked for is smaller than what follows.
    let response = signed_history(&server, &channel, &format!("after={}&limit=2", all[0])).await;
    assert_eq!(response.status(), 410);
    // Exactly 5 follow the third.
    let (events, _) =
        page(signed_history(&server, &channel, &format!("after={}", all[2])).await).await;
    assert_eq!(ids(&events), all[3..]);
    // Without `after`: from the start of the window, here its 5 newest events.
    let (events, _) = page(signed_history(&server, &channel, "").await).await;
    assert_eq!(ids(&events), all[3..]);
    // An hour-old cursor is within the hours, but all 8 follow it.
    let hour = id_aged(Age::hours(1));
    let response = signed_history(&server, &channel, &format!("after={hour}&limit=3")).await;
    assert_eq!(response.status(), 410);
    server.cleanup().await;
}

#[tokio::test]
async fn the_signed_route_refuses_bad_signatures() {
    let server = TestServer::start().await;
    let path = format!("/apps/{APP_ID}/channels/news/events");
    let unsigned = reqwest::get(server.url(&path)).await.unwrap();
    assert_eq!(unsigned.status(), 401);
    let forged = format!(
        "{path}?auth_key={KEY}&auth_timestamp={}&auth_version=1.0&auth_signature={}",
        crate::common::now(),
        "0".repeat(64)
    );
    let response = reqwest::get(server.url(&forged)).await.unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("signature"),
        "{body}"
    );
    // `after` and `limit` are signed: changing one after signing is refused.
    let query = crate::common::signed_query(
        "GET",
        &path,
        "",
        crate::common::SECRET,
        crate::common::now(),
    );
    let response = reqwest::get(server.url(&format!("{path}?{query}&limit=5")))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = reqwest::get(server.url(&format!("{path}?{query}")))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    server.cleanup().await;
}

#[tokio::test]
async fn the_browser_route_is_authorized_like_a_subscription() {
    let server = TestServer::start().await;
    let public = channel_name("public");
    let private = channel_name("private-room");
    let presence = channel_name("presence-room");
    let encrypted = channel_name("private-encrypted-room");
    for channel in [&public, &private, &presence] {
        trigger_numbered(&server, channel, "e", 2).await;
    }
    let (events, _) = page(browser_history(&server, KEY, &public, "").await).await;
    assert_eq!(events.len(), 2);

    let socket_id = "123.456";
    let refused = [
        format!("socket_id={socket_id}"),
        format!("socket_id={socket_id}&auth={KEY}:{}", "0".repeat(64)),
        format!("auth={}", channel_auth(socket_id, &private)),
        format!("socket_id=999.1&auth={}", channel_auth(socket_id, &private)),
    ];
    for query in &refused {
        let response = browser_history(&server, KEY, &private, query).await;
        assert_eq!(response.status(), 401, "{query}");
        assert_eq!(
            response.headers()["access-control-allow-origin"],
            "https://app.example"
        );
    }
    let auth = channel_auth(socket_id, &private);
    let query = format!("socket_id={socket_id}&auth={}", urlencode(&auth));
    let (events, _) = page(browser_history(&server, KEY, &private, &query).await).await;
    assert_eq!(events.len(), 2);

    let channel_data = r#"{"user_id":"u1","user_info":{"name":"Ann"}}"#;
    let auth = presence_auth(socket_id, &presence, channel_data);
    let without_data = format!("socket_id={socket_id}&auth={}", urlencode(&auth));
    assert_eq!(
        browser_history(&server, KEY, &presence, &without_data)
            .await
            .status(),
        401
    );
    let query = format!("{without_data}&channel_data={}", urlencode(channel_data));
    let (events, _) = page(browser_history(&server, KEY, &presence, &query).await).await;
    assert_eq!(events.len(), 2);

    // Encrypted channels: the ciphertext as stored, with a valid auth only.
    assert_eq!(
        browser_history(&server, KEY, &encrypted, &format!("socket_id={socket_id}"))
            .await
            .status(),
        401
    );
    let auth = channel_auth(socket_id, &encrypted);
    let query = format!("socket_id={socket_id}&auth={}", urlencode(&auth));
    assert_eq!(
        browser_history(&server, KEY, &encrypted, &query)
            .await
            .status(),
        200
    );

    let response = browser_history(&server, KEY, "%23server-to-user-u1", "").await;
    assert_eq!(response.status(), 403);
    let response = browser_history(&server, "no-such-key", &public, "").await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let response = browser_history(&server, KEY, &public, "limit=0").await;
    assert_eq!(response.status(), 400);
    server.cleanup().await;
}

#[tokio::test]
async fn the_browser_route_answers_cors_preflights() {
    let server = TestServer::start().await;
    let response = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            server.url("/app/app-key/channels/news/events"),
        )
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("GET"));
    let response = browser_history(&server, KEY, "news", "").await;
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    server.cleanup().await;
}

fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("v", text)]).unwrap()[2..].to_owned()
}
