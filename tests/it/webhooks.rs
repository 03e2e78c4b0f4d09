//! Webhooks end to end through the real server: WebSocket clients make the events, a receiver in
//! the test takes the requests (`faults::receiver`).

use std::time::Duration;

use faults::receiver::{Behaviour, Received, Receiver};
use ingest::WebhookConfig;
use protocol::webhook::{Body, EventType, WebhookEvent};
use serde_json::json;
use switchboard::config::Config;
use switchboard::Role;

use crate::common::{
    amqp_url_via, broker_proxy, gateway_and_worker, test_config, TestServer, AMQP, KEY, SECRET,
};

const WAIT: Duration = Duration::from_secs(30);

/// Subscribes `client` to a plain channel in the shard of each of `channels`, so that the live
/// queue stays bound to those shards: while the broker is away, a subscription to a channel of a
/// shard not bound yet is refused (503) rather than risk missing its events.
async fn bind_shards(client: &mut crate::common::ws::Client, channels: &[String]) {
    let mut shards = std::collections::HashSet::new();
    for channel in channels {
        let shard = bus::shard_of(crate::common::APP_ID, channel);
        // Two channels of one shard share a twin: subscribing to it again would be a no-op,
        // which Pusher does not answer.
        if !shards.insert(shard) {
            continue;
        }
        let twin = (0..)
            .map(|i| format!("shard-twin-{i}"))
            .find(|name| bus::shard_of(crate::common::APP_ID, name) == shard)
            .unwrap();
        client.subscribe(&twin).await;
    }
}

pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// The test's webhooks: quick batches, quick retries.
pub(crate) fn with_webhooks(config: &mut Config, webhooks: Vec<WebhookConfig>) {
    config.apps[0].webhooks = webhooks;
    config.webhooks.batch_window_ms = 20;
    config.webhooks.backoff_base_ms = 20;
    config.webhooks.backoff_max_ms = 200;
}

pub(crate) fn webhook(url: &str, types: &[EventType], prefix: Option<&str>) -> WebhookConfig {
    WebhookConfig {
        event_types: types.to_vec(),
        channel_prefix: prefix.map(str::to_owned),
        ..WebhookConfig::new(url)
    }
}

/// Every event of every request the receiver answered, after checking its signature.
pub(crate) fn events(received: &[Received]) -> Vec<WebhookEvent> {
    received
        .iter()
        .filter(|r| r.status == Some(200))
        .flat_map(|r| {
            assert_eq!(r.headers["x-pusher-key"], KEY);
            assert_eq!(r.headers["content-type"], "application/json");
            assert!(protocol::webhook::verify(
                SECRET,
                &r.body,
                &r.headers["x-pusher-signature"]
            ));
            serde_json::from_slice::<Body>(&r.body).unwrap().events
        })
        .collect()
}

pub(crate) async fn wait_for_events(receiver: &Receiver, count: usize) -> Vec<WebhookEvent> {
    let received = receiver
        .wait_until(WAIT, |r| events(r).len() >= count)
        .await;
    events(&received)
}

#[tokio::test]
async fn client_events_and_cache_misses_reach_the_webhooks_that_want_them() {
    let everything = Receiver::start(Behaviour::Ok).await;
    let presence_only = Receiver::start(Behaviour::Ok).await;
    let misses_only = Receiver::start(Behaviour::Ok).await;
    let server = TestServer::start_with(|c| {
        with_webhooks(
            c,
            vec![
                WebhookConfig::new(&everything.url("/all")),
                webhook(
                    &presence_only.url("/presence"),
                    &[EventType::ClientEvent],
                    Some("presence-"),
                ),
                webhook(&misses_only.url("/misses"), &[EventType::CacheMiss], None),
            ],
        )
    })
    .await;
    let private = unique("private-hook");
    let room = unique("presence-hook");
    let cache = unique("cache-hook");
    let mut ann = server.connect().await;
    let mut ben = server.connect().await;
    ann.subscribe_private(&private).await;
    ann.join(&room, "ann").await;
    ben.join(&room, "ben").await;
    ann.next_app_event().await; // member_added ben
    ann.send(json!({"event":"client-typing","channel":private,"data":{"x":1}}))
        .await;
    ben.send(json!({"event":"client-wave","channel":room,"data":"hi"}))
        .await;
    assert_eq!(ann.next_app_event().await["event"], "client-wave");
    ann.subscribe(&cache).await;
    assert_eq!(ann.next_app_event().await["event"], "pusher:cache_miss");

    let got = wait_for_events(&everything, 3).await;
    let typing = WebhookEvent::ClientEvent {
        channel: private.clone(),
        event: "client-typing".into(),
        data: r#"{"x":1}"#.into(),
        socket_id: ann.socket_id.clone(),
        user_id: None,
    };
    let wave = WebhookEvent::ClientEvent {
        channel: room.clone(),
        event: "client-wave".into(),
        data: r#""hi""#.into(),
        socket_id: ben.socket_id.clone(),
        user_id: Some("ben".into()),
    };
    let miss = WebhookEvent::CacheMiss {
        channel: cache.clone(),
    };
    for expected in [&typing, &wave, &miss] {
        assert!(got.contains(expected), "{expected:?} not in {got:?}");
    }
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(wait_for_events(&presence_only, 1).await, [wave]);
    assert_eq!(wait_for_events(&misses_only, 1).await, [miss]);
    // A cache channel with an event cached is no miss.
    let response = server.trigger(&cache, "cached", "{}").await;
    assert_eq!(response.status(), 200);
    assert_eq!(ann.next_app_event().await["event"], "cached");
    let mut late = server.connect().await;
    late.subscribe(&cache).await;
    assert_eq!(late.next_app_event().await["event"], "cached");
    let sql = "SELECT count(*)::bigint FROM webhook_deliveries d, jsonb_array_elements(d.events) \
               WHERE d.status = 'delivered' AND d.webhook LIKE '%/all'";
    assert_eq!(server.wait_count(sql, 3).await, 3, "stored and delivered");
    assert_eq!(events(&everything.received()).len(), 3, "no second miss");
    server.cleanup().await;
}

#[tokio::test]
async fn webhook_events_made_while_the_broker_is_away_are_delivered_after() {
    let receiver = Receiver::start(Behaviour::Ok).await;
    let proxy = broker_proxy().await;
    let mut config = test_config();
    with_webhooks(
        &mut config,
        vec![WebhookConfig::new(&receiver.url("/hooks"))],
    );
    let (gateway, worker) = gateway_and_worker(config, &proxy).await;
    let mut client = gateway.connect().await;
    let before = unique("cache-before");
    client.subscribe(&before).await;
    assert_eq!(client.next_app_event().await["event"], "pusher:cache_miss");
    assert_eq!(wait_for_events(&receiver, 1).await.len(), 1);

    let during: Vec<String> = (0..5).map(|_| unique("cache-during")).collect();
    bind_shards(&mut client, &during).await;
    proxy.cut();
    for channel in &during {
        client.subscribe(channel).await;
        assert_eq!(client.next_app_event().await["event"], "pusher:cache_miss");
    }
    proxy.restore();
    let got = wait_for_events(&receiver, 1 + during.len()).await;
    for channel in &during {
        let miss = WebhookEvent::CacheMiss {
            channel: channel.clone(),
        };
        assert!(got.contains(&miss), "{channel} lost: {got:?}");
    }
    drop(client);
    gateway.cleanup().await;
    worker.cleanup().await;
}

#[tokio::test]
async fn a_full_webhook_buffer_drops_the_newest_and_counts_them() {
    let receiver = Receiver::start(Behaviour::Ok).await;
    let proxy = broker_proxy().await;
    let mut config = test_config();
    with_webhooks(
        &mut config,
        vec![WebhookConfig::new(&receiver.url("/hooks"))],
    );
    config.amqp_url = amqp_url_via(&proxy);
    config.webhooks.buffer_events = 3;
    let server = TestServer::start_config(Role::Serve, config).await;
    let mut client = server.connect().await;
    let channels: Vec<String> = (0..20).map(|_| unique("cache-full")).collect();
    bind_shards(&mut client, &channels).await;
    proxy.cut();
    for channel in &channels {
        client.subscribe(channel).await;
        assert_eq!(client.next_app_event().await["event"], "pusher:cache_miss");
    }
    let metrics = server.metrics().await;
    assert!(
        metrics.lines().any(|l| l
            .starts_with(r#"switchboard_webhook_events_dropped_total{reason="buffer_full"}"#)
            && !l.ends_with(" 0")),
        "{metrics}"
    );
    proxy.restore();
    // What the buffer held (and the message being retried) arrives; the rest was dropped.
    let got = wait_for_events(&receiver, 4).await;
    assert!((4..20).contains(&got.len()), "{}", got.len());
    drop(client);
    server.cleanup().await;
}

/// The latest `subscription_count` of `channel` received: of the newest batch that has one (batches
/// may arrive out of order; `time_ms` orders them), its last.
fn latest_count(received: &[Received], channel: &str) -> Option<u64> {
    let mut bodies: Vec<Body> = received
        .iter()
        .filter(|r| r.status == Some(200))
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    bodies.sort_by_key(|b| b.time_ms);
    bodies
        .iter()
        .flat_map(|b| &b.events)
        .filter_map(|event| match event {
            WebhookEvent::SubscriptionCount {
                channel: c,
                subscription_count,
            } if c == channel => Some(*subscription_count),
            _ => None,
        })
        .next_back()
}

#[tokio::test]
async fn subscription_counts_follow_the_channel_when_the_app_counts_them() {
    let receiver = Receiver::start(Behaviour::Ok).await;
    let server = TestServer::start_with(|c| {
        with_webhooks(
            c,
            vec![webhook(
                &receiver.url("/counts"),
                &[EventType::SubscriptionCount],
                None,
            )],
        );
        c.apps[0].subscription_count = true;
    })
    .await;
    let channel = unique("counted");
    let room = unique("presence-counted");
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    let mut c = server.connect().await;
    c.join(&room, "cid").await;
    a.subscribe(&channel).await;
    b.subscribe(&channel).await;
    let at = |n| {
        let channel = channel.clone();
        move |r: &[Received]| latest_count(r, &channel) == Some(n)
    };
    let received = receiver.wait_until(WAIT, at(2)).await;
    assert_eq!(latest_count(&received, &channel), Some(2));
    b.send(json!({"event":"pusher:unsubscribe","data":{"channel":channel}}))
        .await;
    assert_eq!(
        latest_count(&receiver.wait_until(WAIT, at(1)).await, &channel),
        Some(1)
    );
    drop(a);
    let received = receiver.wait_until(WAIT, at(0)).await;
    assert_eq!(latest_count(&received, &channel), Some(0));
    assert_eq!(
        latest_count(&received, &room),
        None,
        "none for presence channels"
    );
    server.cleanup().await;
}

/// Every webhook event waiting in the queue of `config`'s prefix, once one is there.
async fn queued_webhook_events(config: &Config) -> Vec<protocol::webhook::Queued> {
    let amqp = bus::connect(AMQP, "switchboard-test").await.unwrap();
    let channel = amqp.create_channel().await.unwrap();
    let queue = bus::Topology::new(config.amqp_prefix.clone()).webhook_queue();
    let mut events = Vec::new();
    for _ in 0..200 {
        let got = channel
            .basic_get(&queue, lapin::options::BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        match got {
            Some(message) => {
                events.extend(protocol::webhook::decode_queued(&message.delivery.data).unwrap())
            }
            None if !events.is_empty() => break,
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let _ = amqp.close(200, "taken").await;
    events
}

#[tokio::test]
async fn the_gateway_publishes_only_what_some_webhook_wants() {
    let mut config = test_config();
    with_webhooks(
        &mut config,
        vec![webhook(
            "http://127.0.0.1:9/misses",
            &[EventType::CacheMiss],
            Some("cache-wanted-"),
        )],
    );
    // A gateway alone: what it publishes stays in the queue.
    let gateway = TestServer::start_config(Role::Gateway, config.clone()).await;
    let mut sender = gateway.connect().await;
    let mut other = gateway.connect().await;
    let private = unique("private-unwanted");
    sender.subscribe_private(&private).await;
    other.subscribe_private(&private).await;
    sender
        .send(json!({"event":"client-x","channel":private,"data":{}}))
        .await;
    assert_eq!(other.next_app_event().await["event"], "client-x");
    sender.subscribe(&unique("cache-other")).await;
    assert_eq!(sender.next_app_event().await["event"], "pusher:cache_miss");
    sender.subscribe(&unique("cache-wanted")).await;
    assert_eq!(sender.next_app_event().await["event"], "pusher:cache_miss");
    let queued = queued_webhook_events(&config).await;
    let wanted = queued.iter().map(|q| q.event.channel()).collect::<Vec<_>>();
    assert_eq!(
        wanted.len(),
        1,
        "only the wanted cache_miss was published: {wanted:?}"
    );
    assert!(wanted[0].starts_with("cache-wanted-"), "{wanted:?}");
    gateway.cleanup().await;
}

#[tokio::test]
async fn a_gateway_stopped_while_the_broker_is_away_stops_in_time_counting_what_it_drops() {
    let proxy = broker_proxy().await;
    let mut config = test_config();
    with_webhooks(
        &mut config,
        vec![WebhookConfig::new("http://127.0.0.1:9/never")],
    );
    config.amqp_url = amqp_url_via(&proxy);
    let mut server = TestServer::start_config(Role::Serve, config).await;
    let mut client = server.connect().await;
    let stranded = unique("cache-stranded");
    bind_shards(&mut client, std::slice::from_ref(&stranded)).await;
    proxy.cut();
    client.subscribe(&stranded).await;
    assert_eq!(client.next_app_event().await["event"], "pusher:cache_miss");
    let metrics = server.metrics().await;
    assert!(server.stop().await, "stopped within the shutdown timeout");
    drop(client);
    let dropped = |metrics: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(r#"switchboard_webhook_events_dropped_total{reason="shutdown"} "#)
            })
            .map_or(0.0, |n| n.parse::<f64>().unwrap())
    };
    let after = switchboard::admin::metrics_handle().render();
    assert!(dropped(&after) > dropped(&metrics), "{after}");
    proxy.restore();
    server.cleanup().await;
}
