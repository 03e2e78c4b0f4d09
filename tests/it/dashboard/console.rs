//! The debug console: its reserved channel only takes the dashboard's signature (never the
//! app's), records flow on it only while it is watched, and the event creator triggers through
//! the HTTP API's own path.

use serde_json::{json, Value};

use crate::common::ws::Client;
use crate::common::{TestServer, APP_ID};

const PASSWORD: &str = "console-secret";
const DEBUG_CHANNEL: &str = "private-switchboard-debug";

async fn post(server: &TestServer, path: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!(
            "http://{}/api/console/{APP_ID}{path}",
            server.admin
        ))
        .basic_auth("admin", Some(PASSWORD))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The next debug record the console sees (its frame's data, parsed).
async fn record(console: &mut Client) -> Value {
    let frame = console.next_app_event().await;
    assert_eq!(frame["event"], "record", "{frame}");
    assert_eq!(frame["channel"], DEBUG_CHANNEL);
    serde_json::from_str(frame["data"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn only_the_dashboard_opens_the_console_which_sees_what_happens() {
    let server = TestServer::start_with(|c| c.admin.password = Some(PASSWORD.into())).await;
    let target: Value = reqwest::Client::new()
        .get(format!("http://{}/api/console/{APP_ID}", server.admin))
        .basic_auth("admin", Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(target["channel"], DEBUG_CHANNEL);
    assert_eq!(target["gateway"]["port"], server.http.port());

    // The app's own signature (what its auth endpoint would hand out) does not open it.
    let mut intruder = server.connect().await;
    let auth = crate::common::channel_auth(&intruder.socket_id, DEBUG_CHANNEL);
    intruder
        .send(
            json!({"event": "pusher:subscribe", "data": {"channel": DEBUG_CHANNEL, "auth": auth}}),
        )
        .await;
    let refused = intruder.next_app_event().await;
    assert_eq!(refused["event"], "pusher:subscription_error", "{refused}");

    let mut console = server.connect().await;
    let signed = post(&server, "/auth", &json!({ "socket_id": console.socket_id })).await;
    assert_eq!(signed.status(), 200);
    let auth = signed.json::<Value>().await.unwrap()["auth"].clone();
    console
        .send(
            json!({"event": "pusher:subscribe", "data": {"channel": DEBUG_CHANNEL, "auth": auth}}),
        )
        .await;
    let joined = console.next_app_event().await;
    assert_eq!(joined["event"], "pusher_internal:subscription_succeeded");

    let mut client = server.connect().await;
    let opened = record(&mut console).await;
    assert_eq!(opened["type"], "connection_opened");
    assert_eq!(opened["socket_id"], client.socket_id.as_str());
    client.subscribe("news").await;
    let subscribed = record(&mut console).await;
    assert_eq!(
        (&subscribed["type"], &subscribed["channel"]),
        (&json!("subscribed"), &json!("news"))
    );

    assert_eq!(
        server.trigger("news", "flash", "{\"n\":1}").await.status(),
        200
    );
    let event = record(&mut console).await;
    assert_eq!(event["type"], "api_event");
    assert_eq!(event["event"], "flash");
    assert_eq!(event["data"], "{\"n\":1}");
    assert_eq!(event["delivered"], 1);
    assert_eq!(client.next_app_event().await["event"], "flash");

    // The event creator: the same path as a backend's trigger, answered as it is.
    let sent = post(
        &server,
        "/events",
        &json!({"channel": "news", "event": "from-console", "data": "{\"hello\":\"world\"}"}),
    )
    .await;
    assert_eq!(sent.status(), 200);
    let received = client.next_app_event().await;
    assert_eq!(received["event"], "from-console");
    assert_eq!(received["data"], "{\"hello\":\"world\"}");
    assert_eq!(record(&mut console).await["event"], "from-console");
    let invalid = post(
        &server,
        "/events",
        &json!({"channel": "bad channel", "event": "e", "data": "{}"}),
    )
    .await;
    assert_eq!(invalid.status(), 400, "the HTTP API's own refusal");

    // Nobody but the gateway publishes on the console's channel: no backend, no client.
    let forged = server.trigger(DEBUG_CHANNEL, "record", "{}").await;
    assert_eq!(forged.status(), 400);
    let listed: Value = server
        .get_signed(&format!("/apps/{APP_ID}/channels"), "")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["channels"],
        json!({ "news": {} }),
        "the console's channel is not listed"
    );
    // Client events into the console's channel are refused.
    console
        .send(json!({"event": "client-x", "channel": DEBUG_CHANNEL, "data": "{}"}))
        .await;
    assert_eq!(console.next_app_event().await["event"], "pusher:error");

    drop(client);
    let mut seen = Vec::new();
    while seen
        .last()
        .is_none_or(|r: &Value| r["type"] != "connection_closed")
    {
        seen.push(record(&mut console).await);
    }
    assert_eq!(seen[0]["type"], "unsubscribed", "{seen:?}");
    assert_eq!(seen.last().unwrap()["code"], 1000);

    // Without the password, or as a form, nothing is signed or sent.
    let anonymous = reqwest::Client::new()
        .post(format!("http://{}/api/console/{APP_ID}/auth", server.admin))
        .json(&json!({ "socket_id": "1.1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let form = reqwest::Client::new()
        .post(format!(
            "http://{}/api/console/{APP_ID}/events",
            server.admin
        ))
        .basic_auth("admin", Some(PASSWORD))
        .header("content-type", "text/plain")
        .body(r#"{"channel": "news", "event": "e", "data": "{}"}"#)
        .send()
        .await
        .unwrap();
    assert_ne!(form.status(), 200);
    server.cleanup().await;
}
