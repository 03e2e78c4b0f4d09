//! The recovery scenario at the wire level: a subscriber on the opt-in path is cut off
//! (TCP proxy) while 500 events are published; it reconnects, subscribes, fetches the history
//! after the last id it saw, and has exactly the 500 it missed, in order, then the live ones.

use std::time::Duration;

use faults::Proxy;
use serde_json::Value;

use super::{browser_history, channel_name, page, trigger_numbered};
use crate::common::ws::{Client, Seen};
use crate::common::{TestServer, KEY};

fn numbered(event: &Value) -> u64 {
    let data: Value = serde_json::from_str(event["data"].as_str().unwrap()).unwrap();
    data["i"].as_u64().unwrap()
}

#[tokio::test]
async fn a_cut_subscriber_recovers_exactly_what_it_missed_then_goes_live() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(server.http).await.unwrap();
    let url = format!(
        "ws://{}/switchboard/app/{KEY}?protocol=7&client=js&version=8.4.0",
        proxy.addr()
    );
    let channel = channel_name("recover");
    let mut client = Client::connect(&url).await;
    client.subscribe(&channel).await;
    trigger_numbered(&server, &channel, "before", 10).await;
    let mut last_id = String::new();
    for i in 0..10 {
        let event = client.next_app_event().await;
        assert_eq!(numbered(&event), i);
        last_id = event["id"].as_str().unwrap().to_owned();
    }

    proxy.cut();
    match client.seen(Duration::from_secs(5)).await {
        Seen::Close(_) => {}
        other => panic!("expected the cut to close the socket, saw {other:?}"),
    }
    trigger_numbered(&server, &channel, "missed", 500).await;
    proxy.restore();

    let mut client = Client::connect(&url).await;
    client.subscribe(&channel).await;
    // Published after the subscription: must come live, after the history.
    trigger_numbered(&server, &channel, "live", 3).await;
    let mut missed = Vec::new();
    let mut query = format!("after={last_id}&limit=200");
    loop {
        let (events, next) = page(browser_history(&server, KEY, &channel, &query).await).await;
        missed.extend(events);
        match next {
            Some(next) => query = format!("after={next}&limit=200"),
            None => break,
        }
    }
    // History is as of the request: the live events may be in it too; the client drops them
    // by id when they come live.
    let history_ids: Vec<String> = missed
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let recovered: Vec<u64> = missed
        .iter()
        .filter(|e| e["event"] == "missed")
        .map(numbered)
        .collect();
    assert_eq!(
        recovered,
        (0..500).collect::<Vec<_>>(),
        "exactly the 500, in order"
    );
    assert!(missed[..500].iter().all(|e| e["event"] == "missed"));
    let mut live = Vec::new();
    while live.len() < 3 {
        let event = client.next_app_event().await;
        assert_eq!(event["event"], "live");
        let id = event["id"].as_str().unwrap().to_owned();
        assert!(id > history_ids[499], "live events follow the missed ones");
        live.push(numbered(&event));
    }
    assert_eq!(live, [0, 1, 2]);
    server.cleanup().await;
}
