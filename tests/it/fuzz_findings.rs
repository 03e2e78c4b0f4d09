//! Regression tests for what the property tests and fuzzers found (RELIABILITY.md), each
//! against the real gateway.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::common::{self, TestServer, APP_ID, KEY, SECRET};

/// Signs `GET path` with `signed` extra parameters (as an SDK writes them, unescaped) and
/// sends `sent` in their place with the same signature.
async fn get_resigned(server: &TestServer, path: &str, signed: &str, sent: &str) -> (u16, Value) {
    let auth = format!(
        "auth_key={KEY}&auth_timestamp={}&auth_version=1.0",
        common::now()
    );
    let mut pairs: Vec<&str> = auth.split('&').chain(signed.split('&')).collect();
    pairs.sort_unstable();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("GET\n{path}\n{}", pairs.join("&")).as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    let response =
        reqwest::get(server.url(&format!("{path}?{auth}&{sent}&auth_signature={signature}")))
            .await
            .expect("request reaches the server");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_query_altered_under_its_signature_is_refused_or_means_the_same() {
    let server = TestServer::start().await;
    let room = format!("presence-{}", common::random_suffix());
    let mut member = server.connect().await;
    member.join(&room, "m1").await;
    let path = format!("/apps/{APP_ID}/channels");
    let signed = "filter_by_prefix=presence-&info=user_count";
    let expected = json!({"channels": {room.clone(): {"user_count": 1}}});
    assert_eq!(
        get_resigned(&server, &path, signed, signed).await,
        (200, expected.clone())
    );
    // Two parameters merged into one value sign the same string: refused, not read as a
    // filter nobody signed.
    let (status, body) = get_resigned(
        &server,
        &path,
        signed,
        "filter_by_prefix=presence-%26info%3Duser_count",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("filter_by_prefix"),
        "{body}"
    );
    // Keys are signed lower-cased, so they are read lower-cased too: same signature, same
    // meaning.
    assert_eq!(
        get_resigned(
            &server,
            &path,
            signed,
            "FILTER_BY_PREFIX=presence-&Info=user_count"
        )
        .await,
        (200, expected.clone())
    );
    // A parameter given twice (signed both times) is refused: which one would count?
    let twice = "filter_by_prefix=presence-&filter_by_prefix=x&info=user_count";
    let (status, body) = get_resigned(&server, &path, twice, twice).await;
    assert_eq!(status, 400, "{body}");
    server.cleanup().await;
}

#[tokio::test]
async fn an_auth_timestamp_at_the_end_of_time_is_stale_not_a_crash() {
    let server = TestServer::start().await;
    let path = format!("/apps/{APP_ID}/events");
    let body = json!({"name":"e","channel":"c","data":"x"}).to_string();
    for timestamp in [i64::MIN, i64::MAX] {
        let response = common::post_signed(server.http, &path, &body, SECRET, timestamp).await;
        assert_eq!(response.status(), 401, "{timestamp}");
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"]
                .as_str()
                .unwrap()
                .contains("away from server time"),
            "{error}"
        );
    }
    // Nothing was accepted, and the gateway goes on accepting.
    assert_eq!(server.trigger("c", "e", "after").await.status(), 200);
    assert_eq!(server.wait_count("SELECT count(*) FROM events", 1).await, 1);
    server.cleanup().await;
}
