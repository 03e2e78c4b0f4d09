//! Pusher channel features over the WebSocket: presence, encrypted and cache channels, client
//! events, user sign-in, subscription counts, and per-app switches.

use std::time::Duration;

use serde_json::{json, Value};
use switchboard::config::Config;

use crate::common::ws::{self, Client, Seen};
use crate::common::{self, TestServer, APP_ID, SECRET};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", common::random_suffix())
}

#[tokio::test]
async fn presence_members_join_and_leave_once_per_user() {
    let server = TestServer::start().await;
    let room = unique("presence-room");
    let mut a1 = server.connect().await;
    let mut a2 = server.connect().await;
    let mut b = server.connect().await;
    let first = a1.join(&room, "alice").await;
    assert_eq!(
        first,
        json!({"presence":{"ids":["alice"],"hash":{"alice":{"name":"alice"}},"count":1}})
    );
    let with_bob = b.join(&room, "bob").await;
    assert_eq!(with_bob["presence"]["count"], 2);
    let added = a1.next_app_event().await;
    assert_eq!(added["event"], "pusher_internal:member_added");
    assert_eq!(
        ws::data(&added),
        json!({"user_id":"bob","user_info":{"name":"bob"}})
    );
    // Alice's second socket: the list stays unique and nobody hears member_added.
    let second = a2.join(&room, "alice").await;
    assert_eq!(second["presence"]["count"], 2);
    b.assert_silent(Duration::from_millis(300)).await;
    a1.assert_silent(Duration::from_millis(100)).await;
    let users = server
        .get_signed(&format!("/apps/{APP_ID}/channels/{room}/users"), "")
        .await;
    assert_eq!(users.status(), 200);
    let mut ids: Vec<String> = users.json::<Value>().await.unwrap()["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["alice", "bob"]);
    // One of Alice's sockets leaves: still there. The last one leaves: member_removed.
    drop(a1);
    b.assert_silent(Duration::from_millis(300)).await;
    a2.send(json!({"event":"pusher:unsubscribe","data":{"channel":room}}))
        .await;
    let removed = b.next_app_event().await;
    assert_eq!(removed["event"], "pusher_internal:member_removed");
    assert_eq!(ws::data(&removed), json!({"user_id":"alice"}));
    server.cleanup().await;
}

#[tokio::test]
async fn presence_rejections() {
    let server = TestServer::start_with(|c| c.apps[0].limits.max_presence_members = 1).await;
    let room = unique("presence-full");
    let mut client = server.connect().await;
    let channel_data = r#"{"user_id":"u1"}"#;
    let forged = common::presence_auth(&client.socket_id, &room, r#"{"user_id":"admin"}"#);
    client
        .send(json!({"event":"pusher:subscribe","data":{"channel":room,"auth":forged,"channel_data":channel_data}}))
        .await;
    let refused = client.next_event().await;
    assert_eq!(refused["event"], "pusher:subscription_error");
    assert_eq!(ws::data(&refused)["status"], 401);
    let long_id = json!({"user_id": "x".repeat(129)}).to_string();
    let auth = common::presence_auth(&client.socket_id, &room, &long_id);
    client
        .send(json!({"event":"pusher:subscribe","data":{"channel":room,"auth":auth,"channel_data":long_id}}))
        .await;
    let refused = client.next_event().await;
    assert_eq!(refused["event"], "pusher:subscription_error");
    assert!(ws::data(&refused)["error"]
        .as_str()
        .unwrap()
        .contains("128"));
    client.join(&room, "u1").await;
    let mut other = server.connect().await;
    let data = r#"{"user_id":"u2"}"#;
    let auth = common::presence_auth(&other.socket_id, &room, data);
    other
        .send(json!({"event":"pusher:subscribe","data":{"channel":room,"auth":auth,"channel_data":data}}))
        .await;
    let full = other.next_event().await;
    assert_eq!(full["event"], "pusher:subscription_error");
    assert_eq!(ws::data(&full)["type"], "LimitReached");
    server.cleanup().await;
}

#[tokio::test]
async fn channels_per_connection_are_limited_and_the_socket_stays() {
    let server = TestServer::start_with(|c| c.gateway.max_channels_per_connection = 2).await;
    let [first, second, third] = ["first", "second", "third"].map(unique);
    let mut client = server.connect().await;
    client.subscribe(&first).await;
    client.subscribe(&second).await;
    client
        .send(json!({"event":"pusher:subscribe","data":{"auth":"","channel":third}}))
        .await;
    let refused = client.next_app_event().await;
    assert_eq!(refused["event"], "pusher:subscription_error", "{refused}");
    assert_eq!(refused["channel"], third.as_str());
    assert_eq!(
        ws::data(&refused),
        json!({"type":"LimitReached","error":"Too many channels on this connection: at most 2","status":4303})
    );
    // The connection and its subscriptions are untouched.
    assert_eq!(
        server.trigger(&first, "ev", "still here").await.status(),
        200
    );
    assert_eq!(client.next_app_event().await["data"], "still here");
    assert_eq!(
        server.trigger(&third, "ev", "not yours").await.status(),
        200
    );
    client.assert_silent(Duration::from_millis(300)).await;
    // Leaving a channel makes room for another.
    client
        .send(json!({"event":"pusher:unsubscribe","data":{"channel":first}}))
        .await;
    client.subscribe(&third).await;
    assert_eq!(
        server.trigger(&third, "ev", "now yours").await.status(),
        200
    );
    assert_eq!(client.next_app_event().await["data"], "now yours");
    server.cleanup().await;
}

#[tokio::test]
async fn client_events_rules() {
    let server = TestServer::start().await;
    let channel = unique("private-chat");
    let mut sender = server.connect().await;
    let mut receiver = server.connect().await;
    // Not subscribed yet.
    sender
        .send(json!({"event":"client-typing","channel":channel,"data":{"x":1}}))
        .await;
    assert_eq!(sender.next_event().await["event"], "pusher:error");
    sender.subscribe_private(&channel).await;
    receiver.subscribe_private(&channel).await;
    sender
        .send(json!({"event":"client-typing","channel":channel,"data":{"x":1}}))
        .await;
    let got = receiver.next_app_event().await;
    assert_eq!(
        got,
        json!({"event":"client-typing","channel":channel,"data":"{\"x\":1}"})
    );
    sender.assert_silent(Duration::from_millis(300)).await;
    // Public channels refuse client events.
    sender.subscribe("public-chat").await;
    sender
        .send(json!({"event":"client-typing","channel":"public-chat","data":{}}))
        .await;
    assert_eq!(sender.next_event().await["event"], "pusher:error");
    // Rate limit: a burst beyond the bucket of 10 (refilled after the event above).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 0..15 {
        sender
            .send(json!({"event":"client-burst","channel":channel,"data":{"i":i}}))
            .await;
    }
    let error = sender.next_app_event().await;
    assert_eq!(error["event"], "pusher:error");
    assert_eq!(ws::data(&error)["code"], 4301);
    let mut delivered = 0;
    while let Seen::Event(ev) = receiver.seen(Duration::from_millis(500)).await {
        if ev["event"] == "client-burst" {
            delivered += 1;
        }
    }
    assert_eq!(delivered, 10);
    // Client events are persisted with their source and sender.
    let stored = server
        .wait_count("SELECT count(*) FROM events WHERE source = 'client'", 11)
        .await;
    assert_eq!(stored, 11);
    let socket: String = server
        .scalar("SELECT DISTINCT socket_id FROM events WHERE source = 'client'")
        .await;
    assert_eq!(socket, sender.socket_id);
    server.cleanup().await;
}

#[tokio::test]
async fn client_events_on_presence_carry_user_id_and_can_be_disabled() {
    let server = TestServer::start().await;
    let room = unique("presence-chat");
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.join(&room, "ann").await;
    b.join(&room, "ben").await;
    a.next_app_event().await; // member_added ben
    a.send(json!({"event":"client-hi","channel":room,"data":"hello"}))
        .await;
    let got = b.next_app_event().await;
    assert_eq!(got["user_id"], "ann");
    assert_eq!(got["data"], "\"hello\"");
    server.cleanup().await;

    let disabled = TestServer::start_with(|c| c.apps[0].client_events = false).await;
    let channel = unique("private-off");
    let mut client = disabled.connect().await;
    client.subscribe_private(&channel).await;
    client
        .send(json!({"event":"client-hi","channel":channel,"data":{}}))
        .await;
    let error = client.next_event().await;
    assert_eq!(error["event"], "pusher:error");
    assert!(ws::data(&error)["message"]
        .as_str()
        .unwrap()
        .contains("not enabled"));
    disabled.cleanup().await;
}

#[tokio::test]
async fn encrypted_channels_pass_data_through_and_refuse_multi_channel_triggers() {
    let server = TestServer::start().await;
    let channel = unique("private-encrypted-vault");
    let mut client = server.connect().await;
    client
        .send(json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":""}}))
        .await;
    assert_eq!(
        client.next_event().await["event"],
        "pusher:subscription_error"
    );
    client.subscribe_private(&channel).await;
    let ciphertext = r#"{"nonce":"bm9uY2U=","ciphertext":"c2VjcmV0"}"#;
    assert_eq!(
        server
            .trigger(&channel, "sealed", ciphertext)
            .await
            .status(),
        200
    );
    assert_eq!(client.next_app_event().await["data"], ciphertext);
    let body = json!({"name":"x","channels":[channel, "other"],"data":"y"}).to_string();
    let response = server
        .post_signed(&format!("/apps/{APP_ID}/events"), &body)
        .await;
    assert_eq!(response.status(), 400);
    server.cleanup().await;
}

#[tokio::test]
async fn cache_channels_replay_last_event_or_miss() {
    let server = TestServer::start().await;
    let cached = unique("cache-prices");
    let mut early = server.connect().await;
    early.subscribe(&cached).await;
    assert_eq!(early.next_app_event().await["event"], "pusher:cache_miss");
    assert_eq!(server.trigger(&cached, "price", "1").await.status(), 200);
    assert_eq!(server.trigger(&cached, "price", "2").await.status(), 200);
    assert_eq!(early.next_app_event().await["data"], "1");
    assert_eq!(early.next_app_event().await["data"], "2");
    let mut late = server.connect().await;
    late.subscribe(&cached).await;
    let replay = late.next_app_event().await;
    assert_eq!(replay, json!({"event":"price","channel":cached,"data":"2"}));
    let info = server
        .get_signed(&format!("/apps/{APP_ID}/channels/{cached}"), "info=cache")
        .await;
    let info: Value = info.json().await.unwrap();
    assert_eq!(info["occupied"], true);
    assert_eq!(info["cache"]["data"], "2");
    assert_eq!(info["cache"]["event"], "price");
    server.cleanup().await;
}

#[tokio::test]
async fn signin_server_to_user_watchlist_and_terminate() {
    let server = TestServer::start().await;
    let mut watcher = server.connect().await;
    let mut user = server.connect().await;
    let mut other = server.connect().await;

    // A bad signature closes with 4009.
    let user_data = r#"{"id":"eve"}"#;
    other
        .send(json!({"event":"pusher:signin","data":{"auth":"app-key:00","user_data":user_data}}))
        .await;
    let error = other.next_event().await;
    assert_eq!(ws::data(&error)["code"], 4009);
    assert_eq!(other.closed().await, Some(4009));

    let watch_data = r#"{"id":"wanda","watchlist":["umar"]}"#;
    let auth = common::signin_auth(&watcher.socket_id, watch_data);
    watcher
        .send(json!({"event":"pusher:signin","data":{"auth":auth,"user_data":watch_data}}))
        .await;
    let success = watcher.next_event().await;
    assert_eq!(success["event"], "pusher:signin_success");
    assert_eq!(ws::data(&success), json!({"user_data": watch_data}));
    let initial = watcher.next_event().await;
    assert_eq!(initial["event"], "pusher_internal:watchlist_events");
    assert_eq!(ws::data(&initial)["events"][0]["name"], "offline");

    // Nobody but the signed-in user may subscribe to #server-to-user-umar.
    watcher
        .send(json!({"event":"pusher:subscribe","data":{"channel":"#server-to-user-umar"}}))
        .await;
    assert_eq!(
        watcher.next_event().await["event"],
        "pusher:subscription_error"
    );

    let user_data = r#"{"id":"umar"}"#;
    let auth = common::signin_auth(&user.socket_id, user_data);
    user.send(json!({"event":"pusher:signin","data":{"auth":auth,"user_data":user_data}}))
        .await;
    assert_eq!(user.next_event().await["event"], "pusher:signin_success");
    let online = watcher.next_event().await;
    assert_eq!(
        ws::data(&online),
        json!({"events":[{"name":"online","user_ids":["umar"]}]})
    );
    user.subscribe("#server-to-user-umar").await;
    assert_eq!(
        server
            .trigger("#server-to-user-umar", "notice", "hi umar")
            .await
            .status(),
        200
    );
    assert_eq!(user.next_app_event().await["data"], "hi umar");

    let response = server
        .post_signed(
            &format!("/apps/{APP_ID}/users/umar/terminate_connections"),
            "{}",
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "{}");
    assert_eq!(user.closed().await, Some(4009));
    let offline = watcher.next_event().await;
    assert_eq!(
        ws::data(&offline),
        json!({"events":[{"name":"offline","user_ids":["umar"]}]})
    );
    server.cleanup().await;
}

#[tokio::test]
async fn subscription_count_is_sent_when_enabled() {
    let server = TestServer::start_with(|c| c.apps[0].subscription_count = true).await;
    let channel = unique("counted");
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.subscribe(&channel).await;
    let first = a.next_app_event().await;
    assert_eq!(first["event"], "pusher_internal:subscription_count");
    assert_eq!(ws::data(&first), json!({"subscription_count": 1}));
    b.subscribe(&channel).await;
    assert_eq!(ws::data(&a.next_app_event().await)["subscription_count"], 2);
    assert_eq!(ws::data(&b.next_app_event().await)["subscription_count"], 2);
    drop(b);
    assert_eq!(ws::data(&a.next_app_event().await)["subscription_count"], 1);
    server.cleanup().await;
}

fn two_apps(config: &mut Config) {
    config
        .apps
        .push(switchboard_app("2", "other-key", "other-secret"));
}

fn switchboard_app(id: &str, key: &str, secret: &str) -> ingest::App {
    ingest::App::new(id, key, secret)
}

#[tokio::test]
async fn concurrent_handshakes_get_exactly_the_connection_quota() {
    const MAX: usize = 3;
    let server = TestServer::start_with(|c| c.apps[0].max_connections = Some(MAX)).await;
    let url = server.ws_url(common::KEY, "protocol=7");
    let handshakes = (0..3 * MAX).map(|_| async {
        let mut socket = Client::connect_raw(&url).await;
        let first = ws::read_seen(&mut socket, ws::WAIT).await;
        (socket, first)
    });
    let outcomes = futures_util::future::join_all(handshakes).await;
    let mut established = 0;
    for (_, first) in &outcomes {
        match first {
            Seen::Event(ev) if ev["event"] == "pusher:connection_established" => established += 1,
            Seen::Event(ev) => assert_eq!(ws::data(ev)["code"], 4004, "{ev}"),
            other => panic!("expected an event, saw {other:?}"),
        }
    }
    assert_eq!(established, MAX);
    server.cleanup().await;
}

#[tokio::test]
async fn apps_are_isolated_and_switchable() {
    let server = TestServer::start_with(|c| {
        two_apps(c);
        c.apps.push(ingest::App {
            enabled: false,
            ..switchboard_app("3", "off-key", "off-secret")
        });
        c.apps.push(ingest::App {
            max_connections: Some(1),
            ..switchboard_app("4", "small-key", "small-secret")
        });
    })
    .await;
    let mut mine = server.connect().await;
    mine.subscribe("shared-name").await;
    let mut theirs = Client::connect(&server.ws_url("other-key", "protocol=7")).await;
    theirs.subscribe("shared-name").await;
    assert_eq!(
        server
            .trigger("shared-name", "ev", "for app-id")
            .await
            .status(),
        200
    );
    assert_eq!(mine.next_app_event().await["data"], "for app-id");
    theirs.assert_silent(Duration::from_millis(300)).await;
    // The other app's channel list does not show ours, and our secret does not sign for it.
    let body = json!({"name":"ev","channel":"c","data":"x"}).to_string();
    let cross =
        common::post_signed(server.http, "/apps/2/events", &body, SECRET, common::now()).await;
    assert_eq!(cross.status(), 401);

    let mut disabled = Client::connect_raw(&server.ws_url("off-key", "protocol=7")).await;
    match ws::read_seen(&mut disabled, ws::WAIT).await {
        Seen::Event(ev) => assert_eq!(ws::data(&ev)["code"], 4003),
        other => panic!("expected pusher:error 4003, saw {other:?}"),
    }
    let _first = Client::connect(&server.ws_url("small-key", "protocol=7")).await;
    let mut over = Client::connect_raw(&server.ws_url("small-key", "protocol=7")).await;
    match ws::read_seen(&mut over, ws::WAIT).await {
        Seen::Event(ev) => assert_eq!(ws::data(&ev)["code"], 4004),
        other => panic!("expected pusher:error 4004, saw {other:?}"),
    }
    let body = json!({"name":"ev","channel":"c","data":"x"}).to_string();
    let path = "/apps/3/events";
    let query = common::signed_query_as("off-key", "off-secret", "POST", path, &body);
    let refused = reqwest::Client::new()
        .post(server.url(&format!("{path}?{query}")))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    server.cleanup().await;
}
