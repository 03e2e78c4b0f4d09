//! The debug console: its reserved channel only takes the dashboard's signature (never the
//! app's), records flow on it only while it is watched, and the event creator triggers through
//! the HTTP API's own path.

use serde_json::{json, Value};
use switchboard::Role;

use crate::common::ws::Client;
use crate::common::{test_config, TestServer, APP_ID};

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

/// A console on `server` (the dashboard's signature), subscribed to its app's debug channel.
async fn console(server: &TestServer) -> Client {
    let mut console = server.connect().await;
    let signed = post(server, "/auth", &json!({ "socket_id": console.socket_id })).await;
    assert_eq!(signed.status(), 200);
    let auth = signed.json::<Value>().await.unwrap()["auth"].clone();
    console
        .send(
            json!({"event": "pusher:subscribe", "data": {"channel": DEBUG_CHANNEL, "auth": auth}}),
        )
        .await;
    let joined = console.next_app_event().await;
    assert_eq!(joined["event"], "pusher_internal:subscription_succeeded");
    console
}

/// Drops `client` and returns the console's records up to its `connection_closed`, after
/// checking that its unsubscription came first.
async fn records_until_closed(console: &mut Client, client: Client) -> Vec<Value> {
    drop(client);
    let mut seen = Vec::new();
    while seen
        .last()
        .is_none_or(|r: &Value| r["type"] != "connection_closed")
    {
        seen.push(record(console).await);
    }
    assert_eq!(seen[0]["type"], "unsubscribed", "{seen:?}");
    seen
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

    let mut console = console(&server).await;

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

    let seen = records_until_closed(&mut console, client).await;
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

#[tokio::test]
async fn a_console_sees_what_happens_on_the_other_gateways_too() {
    let mut config = test_config();
    config.admin.password = Some(PASSWORD.into());
    let watched = TestServer::start_config(Role::Serve, config.clone()).await;
    let other = TestServer::start_config(Role::Gateway, config).await;
    let mut console = console(&watched).await;
    // The nodes have met once the other one sees a subscription on the watched one; from then
    // on a cluster-wide query passes the sync barrier, so once it is answered the other node
    // has applied every change the watched one made before (the console's subscription too).
    let mut warm_up = watched.connect().await;
    warm_up.subscribe("warm-up").await;
    let met = std::time::Instant::now();
    loop {
        let channel: Value = other
            .get_signed(&format!("/apps/{APP_ID}/channels/warm-up"), "")
            .await
            .json()
            .await
            .unwrap();
        if channel["occupied"] == true {
            break;
        }
        assert!(met.elapsed().as_secs() < 10, "the nodes never met");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for expected in ["connection_opened", "subscribed"] {
        assert_eq!(record(&mut console).await["type"], expected);
    }

    let mut client = other.connect().await;
    let opened = record(&mut console).await;
    assert_eq!(opened["type"], "connection_opened", "{opened}");
    assert_eq!(opened["socket_id"], client.socket_id.as_str());
    client.subscribe("news").await;
    let subscribed = record(&mut console).await;
    assert_eq!(
        (
            &subscribed["type"],
            &subscribed["channel"],
            &subscribed["socket_id"]
        ),
        (
            &json!("subscribed"),
            &json!("news"),
            &json!(client.socket_id)
        )
    );

    // The event once, recorded by the console's own node (no subscriber there), and the other
    // node's deliveries of it by id.
    assert_eq!(
        other.trigger("news", "flash", "{\"n\":1}").await.status(),
        200
    );
    assert_eq!(client.next_app_event().await["event"], "flash");
    let mut event = None;
    let mut delivered = None;
    while event.is_none() || delivered.is_none() {
        let next = record(&mut console).await;
        match next["type"].as_str() {
            Some("api_event") => {
                assert!(event.is_none(), "the event is recorded once: {next}");
                event = Some(next);
            }
            Some("delivered") => {
                assert!(delivered.is_none(), "one node delivered it: {next}");
                delivered = Some(next);
            }
            _ => panic!("unexpected record {next}"),
        }
    }
    let (event, delivered) = (event.unwrap(), delivered.unwrap());
    assert_eq!(event["event"], "flash");
    assert_eq!(event["delivered"], 0, "nobody on the console's node");
    assert_eq!(delivered["id"], event["id"]);
    assert_eq!(delivered["delivered"], 1);

    records_until_closed(&mut console, client).await;
    other.cleanup().await;
    watched.cleanup().await;
}

#[tokio::test]
async fn the_console_lists_the_webhooks_sent_and_failed_since_it_last_asked() {
    use faults::receiver::{Behaviour, Receiver};
    use protocol::webhook::EventType;
    use std::time::{Duration, Instant};

    let flaky = Receiver::start(Behaviour::FailFirst(1)).await;
    let broken = Receiver::start(Behaviour::Status(500)).await;
    let mut config = test_config();
    config.admin.password = Some(PASSWORD.into());
    crate::webhooks::with_webhooks(
        &mut config,
        [flaky.url("/flaky"), broken.url("/broken")]
            .iter()
            .map(|url| crate::webhooks::webhook(url, &[EventType::ClientEvent], None))
            .collect(),
    );
    let server = TestServer::start_config(Role::Serve, config).await;
    let get = |query: String| {
        let url = format!(
            "http://{}/api/console/{APP_ID}/webhooks{query}",
            server.admin
        );
        async move {
            reqwest::Client::new()
                .get(url)
                .basic_auth("admin", Some(PASSWORD))
                .send()
                .await
                .unwrap()
        }
    };
    let first: Value = get(String::new()).await.json().await.unwrap();
    assert_eq!(
        first["records"],
        json!([]),
        "the first answer only says when"
    );
    let since = first["now"].as_i64().unwrap();

    let channel = crate::webhooks::unique("private-console-hook");
    let mut sender = server.connect().await;
    let mut other = server.connect().await;
    sender.subscribe_private(&channel).await;
    other.subscribe_private(&channel).await;
    sender
        .send(json!({"event": "client-ping", "channel": channel, "data": "{}"}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (sent, failed) = loop {
        let answer: Value = get(format!("?since={since}")).await.json().await.unwrap();
        let records = answer["records"].as_array().unwrap();
        let find = |kind: &str, webhook: &str| {
            records
                .iter()
                .find(|r| r["type"] == kind && r["webhook"] == webhook)
                .cloned()
        };
        let sent = find("webhook_sent", &flaky.url("/flaky"));
        if let (Some(sent), Some(failed)) = (sent, find("webhook_failed", &broken.url("/broken"))) {
            break (sent, failed);
        }
        assert!(Instant::now() < deadline, "{answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(sent["events"], 1);
    assert_eq!(sent["event_types"], json!(["client_event"]));
    assert_eq!(
        sent["attempts"], 2,
        "delivered on its second attempt: {sent}"
    );
    assert!(
        sent["error"].as_str().is_some_and(|e| e.contains("500")),
        "why the first failed: {sent}"
    );
    assert_eq!(sent["dead"], false);
    assert!(sent["t"].as_i64().unwrap() >= since);
    assert!(
        failed["error"].as_str().is_some_and(|e| e.contains("500")),
        "{failed}"
    );
    assert_eq!(failed["dead"], false, "still retried");

    let unknown = reqwest::Client::new()
        .get(format!("http://{}/api/console/nope/webhooks", server.admin))
        .basic_auth("admin", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let anonymous = reqwest::Client::new()
        .get(format!(
            "http://{}/api/console/{APP_ID}/webhooks",
            server.admin
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    drop((sender, other));
    server.cleanup().await;
}
