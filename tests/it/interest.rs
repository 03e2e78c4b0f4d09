//! Interest-based routing across two gateway processes: each node's live queue receives only the
//! events of the channel shards its own sockets subscribed to (plus control messages and cache
//! channels' events), while `GET /channels` stays cluster-wide.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::ws::Client;
use crate::common::{self, APP_ID, KEY};
use crate::processes::{Deployment, Node};

const EVENTS_PER_CHANNEL: usize = 10;

/// `count` channel names starting with `prefix` whose shards are not in `taken` (nor each
/// other's).
fn channels(prefix: &str, count: usize, taken: &mut Vec<u16>) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0.. {
        let name = format!("{prefix}-{i}");
        let shard = bus::shard_of(APP_ID, &name);
        if !taken.contains(&shard) {
            taken.push(shard);
            names.push(name);
            if names.len() == count {
                break;
            }
        }
    }
    names
}

/// The node's `switchboard_live_envelopes_received_total`.
async fn received(node: &Node) -> u64 {
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", node.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("switchboard_live_envelopes_received_total "))
        .expect("the counter is exposed")
        .parse()
        .unwrap()
}

async fn subscribed(node: &Node, channels: &[String]) -> Client {
    let mut client = Client::connect(&format!(
        "ws://127.0.0.1:{}/app/{KEY}?protocol=7",
        node.http
    ))
    .await;
    for channel in channels {
        client.subscribe(channel).await;
    }
    client
}

#[tokio::test]
async fn each_gateway_receives_only_its_subscribers_shards() {
    let deployment = Deployment::new();
    let a = deployment.start("gateway").await;
    let b = deployment.start("gateway").await;
    let mut taken = Vec::new();
    let on_a = channels("on-a", 5, &mut taken);
    let on_b = channels("on-b", 5, &mut taken);
    let mut client_a = subscribed(&a, &on_a).await;
    let mut client_b = subscribed(&b, &on_b).await;
    let before = (received(&a).await, received(&b).await);

    // Every event through node A's API, one channel per request (one envelope per message).
    for round in 0..EVENTS_PER_CHANNEL {
        for channel in on_a.iter().chain(&on_b) {
            let body = json!({"name":"ev","channel":channel,"data":round.to_string()}).to_string();
            let status = common::post_signed(
                a.http(),
                &format!("/apps/{APP_ID}/events"),
                &body,
                common::SECRET,
                common::now(),
            )
            .await
            .status();
            assert_eq!(status, 200);
        }
    }
    let expected = (on_a.len() * EVENTS_PER_CHANNEL) as u64;
    for (client, mine) in [(&mut client_a, &on_a), (&mut client_b, &on_b)] {
        for _ in 0..expected {
            let event = client.next_app_event().await;
            assert!(
                mine.iter().any(|c| event["channel"] == c.as_str()),
                "{event}"
            );
        }
    }
    // What each live queue received: its own channels' events only.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = (received(&a).await - before.0, received(&b).await - before.1);
        if now == (expected, expected) {
            break;
        }
        assert!(
            Instant::now() < deadline && now.0 <= expected && now.1 <= expected,
            "live queues received {now:?}, expected {expected} each"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A cache channel's events reach every node: a first subscriber on node B gets the replay
    // of an event triggered while nobody there listened.
    let cached = "cache-everywhere";
    let body = json!({"name":"ev","channel":cached,"data":"kept"}).to_string();
    let path = format!("/apps/{APP_ID}/events");
    let status = common::post_signed(a.http(), &path, &body, common::SECRET, common::now())
        .await
        .status();
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut late = subscribed(&b, &[cached.to_owned()]).await;
        let replay = late.next_app_event().await;
        if replay["event"] == "ev" {
            assert_eq!(replay["data"], "kept");
            break;
        }
        assert_eq!(replay["event"], "pusher:cache_miss", "{replay}");
        assert!(
            Instant::now() < deadline,
            "node B never had the cached event"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Occupancy stays cluster-wide: node A lists node B's channels (control messages).
    let listed = common::get_signed(a.http(), &format!("/apps/{APP_ID}/channels"), "").await;
    let listed: Value = listed.json().await.unwrap();
    for channel in on_a.iter().chain(&on_b) {
        assert_eq!(listed["channels"][channel], json!({}), "{listed}");
    }
    drop((a, b));
    deployment.cleanup().await;
}
