//! Deviations from hosted Pusher that third-party suites (pusher-js's own integration suite,
//! soketi's users, Laravel apps) found, each pinned by the frames a client sees.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::common::ws::{self, Client, Seen};
use crate::common::{self, TestServer, APP_ID};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", common::random_suffix())
}

async fn subscribe_with(
    client: &mut Client,
    channel: &str,
    auth: &str,
    channel_data: &str,
) -> Value {
    client
        .send(json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth,"channel_data":channel_data}}))
        .await;
    client.next_app_event().await
}

#[tokio::test]
async fn private_channel_with_channel_data_accepts_either_signature() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let channel_data = r#"{"user_id":"1","user_info":{"name":"pusher-js suite"}}"#;
    // As pusher-js's suite signs it: over socket_id:channel:channel_data.
    let with_data = unique("private-with-data");
    let auth = common::presence_auth(&client.socket_id, &with_data, channel_data);
    let reply = subscribe_with(&mut client, &with_data, &auth, channel_data).await;
    assert_eq!(
        reply,
        json!({"event":"pusher_internal:subscription_succeeded","channel":with_data,"data":"{}"})
    );
    // The usual private signature, with channel_data sent anyway.
    let plain = unique("private-plain");
    let auth = common::channel_auth(&client.socket_id, &plain);
    let reply = subscribe_with(&mut client, &plain, &auth, channel_data).await;
    assert_eq!(reply["event"], "pusher_internal:subscription_succeeded");
    // A signature over other channel_data, or for another channel, is still refused.
    let forged_channel = unique("private-forged");
    for auth in [
        common::presence_auth(&client.socket_id, &forged_channel, r#"{"user_id":"2"}"#),
        common::presence_auth(&client.socket_id, &with_data, channel_data),
    ] {
        let reply = subscribe_with(&mut client, &forged_channel, &auth, channel_data).await;
        assert_eq!(reply["event"], "pusher:subscription_error", "{reply}");
        assert_eq!(reply["channel"], forged_channel.as_str());
        assert_eq!(ws::data(&reply)["status"], 401);
    }
    // What was accepted stays: both subscriptions receive events.
    for channel in [&with_data, &plain] {
        assert_eq!(server.trigger(channel, "ev", "x").await.status(), 200);
        let got = client.next_app_event().await;
        assert_eq!(got, json!({"event":"ev","channel":channel,"data":"x"}));
    }
    server.cleanup().await;
}

#[tokio::test]
async fn cache_miss_carries_event_and_channel_only() {
    let server = TestServer::start().await;
    let channel = unique("cache-empty");
    let mut client = server.connect().await;
    client.subscribe(&channel).await;
    assert_eq!(
        client.next_app_event().await,
        json!({"event":"pusher:cache_miss","channel":channel})
    );
    server.cleanup().await;
}

#[tokio::test]
async fn signin_with_a_numeric_id_signs_in_its_string_form() {
    let server = TestServer::start().await;
    let mut user = server.connect().await;
    let user_data = r#"{"id":1,"user_info":{"name":"Taylor"}}"#;
    let auth = common::signin_auth(&user.socket_id, user_data);
    user.send(json!({"event":"pusher:signin","data":{"auth":auth,"user_data":user_data}}))
        .await;
    let success = user.next_event().await;
    assert_eq!(success["event"], "pusher:signin_success", "{success}");
    assert_eq!(ws::data(&success), json!({"user_data": user_data}));
    // sendToUser("1", …) is a trigger to #server-to-user-1.
    user.subscribe("#server-to-user-1").await;
    assert_eq!(
        server
            .trigger("#server-to-user-1", "notice", "for user 1")
            .await
            .status(),
        200
    );
    assert_eq!(
        user.next_app_event().await,
        json!({"event":"notice","channel":"#server-to-user-1","data":"for user 1"})
    );
    let response = server
        .post_signed(
            &format!("/apps/{APP_ID}/users/1/terminate_connections"),
            "{}",
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(user.closed().await, Some(4009));
    server.cleanup().await;
}

#[tokio::test]
async fn client_event_rate_limit_states_the_apps_limit() {
    let server = TestServer::start_with(|c| {
        c.apps[0].client_events = true;
        c.apps[0].limits.client_events_per_second = 3;
    })
    .await;
    let channel = unique("private-limited");
    let mut sender = server.connect().await;
    let mut receiver = server.connect().await;
    sender.subscribe_private(&channel).await;
    receiver.subscribe_private(&channel).await;
    // One write: the server reads the burst far faster than a token refills (333 ms).
    for i in 0..5 {
        let frame = json!({"event":"client-burst","channel":channel,"data":{"i":i}});
        sender
            .socket
            .feed(Message::text(frame.to_string()))
            .await
            .unwrap();
    }
    sender.socket.flush().await.unwrap();
    for _ in 0..2 {
        let error = sender.next_app_event().await;
        assert_eq!(error["event"], "pusher:error");
        assert_eq!(
            ws::data(&error),
            json!({"code":4301,"message":"Client event rate limit reached: at most 3 per second"})
        );
    }
    let mut delivered = Vec::new();
    while let Seen::Event(ev) = receiver.seen(Duration::from_millis(500)).await {
        if ev["event"] == "client-burst" {
            delivered.push(ws::data(&ev)["i"].clone());
        }
    }
    assert_eq!(delivered, [0, 1, 2]);
    server.cleanup().await;
}
