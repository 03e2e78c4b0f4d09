//! Live copies of Segment events on each app's analytics channel (or none), and client events
//! kept out of it.

use ingest::AnalyticsChannel;
use serde_json::{json, Value};

use super::{ok, post, ROWS_SQL};
use crate::common::ws::{data, Client};
use crate::common::{TestServer, APP_ID};

#[tokio::test]
async fn private_analytics_subscribers_see_segment_events_live() {
    let server = TestServer::start().await;
    let mut dashboard = server.connect().await;
    dashboard.subscribe_private("private-analytics").await;
    let track = json!({"userId": "u", "event": "Order Completed", "properties": {"total": 9}});
    assert_eq!(post(&server, "track", &track).await, ok());
    let live = dashboard.next_app_event().await;
    assert_eq!(live["event"], "Order Completed");
    assert_eq!(live["channel"], "private-analytics");
    assert_eq!(data(&live), track);
    let page = json!({"anonymousId": "a", "properties": {"path": "/"}});
    assert_eq!(post(&server, "page", &page).await, ok());
    let live = dashboard.next_app_event().await;
    assert_eq!(live["event"], "page");
    assert_eq!(data(&live), page);
    server.cleanup().await;
}

async fn start_with_analytics_channel(channel: AnalyticsChannel) -> TestServer {
    TestServer::start_with(|config| config.apps[0].analytics_channel = channel).await
}

/// Triggers `marker` on `channel` through the HTTP API and returns the next app event `socket`
/// sees: a live copy published before the marker would arrive first.
async fn next_before_marker(server: &TestServer, socket: &mut Client, channel: &str) -> Value {
    let response = server.trigger(channel, "marker", "{}").await;
    assert_eq!(response.status(), 200);
    socket.next_app_event().await
}

/// Sends the client event `name` on `channel`.
async fn client_event(socket: &mut Client, channel: &str, name: &str) {
    socket
        .send(json!({"event": name, "channel": channel, "data": {"n": name}}))
        .await;
}

/// Sends a client event into the analytics channel `channel` and expects its refusal.
async fn assert_client_event_refused(socket: &mut Client, channel: &str, name: &str) {
    client_event(socket, channel, name).await;
    let refused = socket.next_app_event().await;
    assert_eq!(refused["event"], "pusher:error", "{refused}");
    assert_eq!(
        data(&refused)["message"],
        "Client events are not allowed on the analytics channel"
    );
}

#[tokio::test]
async fn a_configured_analytics_channel_gets_the_live_copy() {
    let server =
        start_with_analytics_channel(AnalyticsChannel::Channel("private-staff".into())).await;
    let mut dashboard = server.connect().await;
    dashboard.subscribe_private("private-staff").await;
    dashboard.subscribe_private("private-analytics").await;
    let track = json!({"userId": "u", "event": "Signed Up", "traits": {"email": "a@example.com"}});
    assert_eq!(post(&server, "track", &track).await, ok());
    let live = dashboard.next_app_event().await;
    assert_eq!(
        (&live["event"], &live["channel"]),
        (&json!("Signed Up"), &json!("private-staff"))
    );
    assert_eq!(data(&live), track);
    let next = next_before_marker(&server, &mut dashboard, "private-analytics").await;
    assert_eq!(
        (&next["event"], &next["channel"]),
        (&json!("marker"), &json!("private-analytics")),
        "nothing on the default channel"
    );
    // Client events: refused on the configured channel, allowed on the other.
    assert_client_event_refused(&mut dashboard, "private-staff", "client-spoof").await;
    let mut peer = server.connect().await;
    peer.subscribe_private("private-analytics").await;
    client_event(&mut dashboard, "private-analytics", "client-fine").await;
    assert_eq!(peer.next_app_event().await["event"], "client-fine");

    assert_eq!(server.wait_count(ROWS_SQL, 3).await, 3);
    let channel: String = server
        .scalar("SELECT channel FROM events WHERE source = 'track'")
        .await;
    assert_eq!(channel, "private-staff");
    server.cleanup().await;
}

#[tokio::test]
async fn an_app_with_analytics_off_sends_no_live_copy_but_stores() {
    let server = start_with_analytics_channel(AnalyticsChannel::Off).await;
    let mut dashboard = server.connect().await;
    dashboard.subscribe_private("private-analytics").await;
    let identify = json!({"userId": "u", "traits": {"email": "a@example.com"}});
    assert_eq!(post(&server, "identify", &identify).await, ok());
    let next = next_before_marker(&server, &mut dashboard, "private-analytics").await;
    assert_eq!(next["event"], "marker", "no live copy: {next}");
    assert_eq!(server.wait_count(ROWS_SQL, 2).await, 2);
    let stored: (String, String) = sqlx::query_as(
        "SELECT channel, data->'traits'->>'email' FROM events WHERE source = 'track' AND app_id = $1",
    )
    .bind(APP_ID)
    .fetch_one(&mut server.db().await)
    .await
    .unwrap();
    assert_eq!(stored, (String::new(), "a@example.com".to_owned()));
    server.cleanup().await;
}

#[tokio::test]
async fn client_events_into_the_analytics_channel_are_refused_and_not_stored() {
    let server = TestServer::start().await;
    assert!(server.config.apps[0].client_events);
    let mut sender = server.connect().await;
    let mut watcher = server.connect().await;
    for socket in [&mut sender, &mut watcher] {
        socket.subscribe_private("private-analytics").await;
        socket.subscribe_private("private-chat").await;
    }
    assert_client_event_refused(&mut sender, "private-analytics", "client-forged").await;
    // The next client event, on another channel, is the first the watcher sees.
    client_event(&mut sender, "private-chat", "client-hello").await;
    let seen = watcher.next_app_event().await;
    assert_eq!(
        (&seen["event"], &seen["channel"]),
        (&json!("client-hello"), &json!("private-chat"))
    );
    assert_eq!(server.wait_count(ROWS_SQL, 1).await, 1);
    let forged: i64 = server
        .scalar("SELECT count(*) FROM events WHERE name = 'client-forged'")
        .await;
    assert_eq!(forged, 0);
    server.cleanup().await;
}
