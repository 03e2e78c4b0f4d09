//! A gateway's live link to RabbitMQ through a TCP proxy that cuts it: events acknowledged by
//! another gateway meanwhile reach every socket that stayed open; when the live queue was lost,
//! the sockets are closed with 4200 instead of missing events silently; a long outage does not
//! slow the next reconnect.

use std::time::{Duration, Instant};

use bus::Topology;
use faults::Proxy;
use lapin::options::QueueDeleteOptions;
use switchboard::Role;

use crate::common::ws::Client;
use crate::common::{amqp_url_via, broker_proxy, test_config, TestServer, AMQP};

const NODE: u32 = 7_000_001;

/// Gateway `behind` (node [`NODE`], its broker connection through `proxy`) and `direct` (gateway
/// and worker, straight to the broker), sharing one prefix and database.
async fn two_gateways(proxy: &Proxy) -> (TestServer, TestServer) {
    let mut config = test_config();
    let direct = TestServer::start_config(Role::Serve, config.clone()).await;
    config.node_id = Some(NODE);
    config.amqp_url = amqp_url_via(proxy);
    let behind = TestServer::start_config(Role::Gateway, config).await;
    (behind, direct)
}

/// Whether `server`'s live link is consuming, as its `/ready` reports it.
async fn live_ready(server: &TestServer) -> bool {
    let ready: serde_json::Value = reqwest::get(format!("http://{}/ready", server.admin))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    ready["live_queue"] == true
}

async fn wait_live(server: &TestServer, ready: bool) -> Duration {
    let started = Instant::now();
    while live_ready(server).await != ready {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "live link never became ready={ready}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

async fn subscribers(server: &TestServer, channel: &str, count: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for _ in 0..count {
        let mut client = server.connect().await;
        client.subscribe(channel).await;
        clients.push(client);
    }
    clients
}

async fn trigger_all(server: &TestServer, channel: &str, range: std::ops::Range<usize>) {
    for i in range {
        let status = server
            .trigger(channel, "tick", &i.to_string())
            .await
            .status();
        assert_eq!(status, 200, "the direct gateway acknowledges event {i}");
    }
}

#[tokio::test]
async fn events_acknowledged_during_a_broker_blip_reach_every_open_socket() {
    let proxy = broker_proxy().await;
    let (behind, direct) = two_gateways(&proxy).await;
    let mut clients = subscribers(&behind, "blip", 3).await;
    trigger_all(&direct, "blip", 0..5).await;
    for client in &mut clients {
        for i in 0..5 {
            assert_eq!(client.next_app_event().await["data"], i.to_string());
        }
    }

    proxy.cut();
    wait_live(&behind, false).await;
    trigger_all(&direct, "blip", 5..25).await;
    proxy.restore();
    wait_live(&behind, true).await;
    trigger_all(&direct, "blip", 25..30).await;

    for client in &mut clients {
        for i in 5..30 {
            let event = client.next_app_event().await;
            assert_eq!(event["event"], "tick", "{event}");
            assert_eq!(event["data"], i.to_string(), "in order, none missed");
        }
        client.assert_silent(Duration::from_millis(300)).await;
    }
    drop(clients);
    behind.cleanup().await;
    direct.cleanup().await;
}

#[tokio::test]
async fn a_live_queue_lost_while_away_closes_the_nodes_sockets_with_4200() {
    let proxy = broker_proxy().await;
    let (behind, direct) = two_gateways(&proxy).await;
    let mut clients = subscribers(&behind, "gap", 2).await;

    proxy.cut();
    wait_live(&behind, false).await;
    trigger_all(&direct, "gap", 0..3).await;
    // What a broker restart does to the transient live queue.
    let connection = bus::connect(AMQP, "test-live-link").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let topology = Topology::new(behind.config.amqp_prefix.clone());
    channel
        .queue_delete(&topology.live_queue(NODE), QueueDeleteOptions::default())
        .await
        .unwrap();
    proxy.restore();

    for client in &mut clients {
        assert_eq!(client.closed().await, Some(4200), "a gap is never silent");
    }
    wait_live(&behind, true).await;
    let mut fresh = subscribers(&behind, "gap", 1).await;
    trigger_all(&direct, "gap", 3..4).await;
    assert_eq!(fresh[0].next_app_event().await["data"], "3");
    assert!(behind
        .metrics()
        .await
        .contains("switchboard_live_gap_closes_total 2"));
    drop((clients, fresh));
    behind.cleanup().await;
    direct.cleanup().await;
}

#[tokio::test]
async fn after_a_long_outage_the_next_blip_reconnects_at_once() {
    let proxy = broker_proxy().await;
    let (behind, direct) = two_gateways(&proxy).await;

    // Long enough for several failed attempts: the backoff grows past 1.6 s.
    proxy.cut();
    wait_live(&behind, false).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.restore();
    wait_live(&behind, true).await;

    // Consuming resumed, so the backoff starts again from 100 ms, well inside the peers'
    // cluster_node_timeout_ms (5 s); without the reset it would wait 3.2 s or more.
    proxy.cut();
    wait_live(&behind, false).await;
    proxy.restore();
    let back = wait_live(&behind, true).await;
    assert!(back < Duration::from_secs(2), "reconnected after {back:?}");
    behind.cleanup().await;
    direct.cleanup().await;
}
