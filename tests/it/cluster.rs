//! Cluster-wide answers are fresh: a backend that asks one gateway right after a client's
//! `subscription_succeeded` on another sees that subscription (the `Sync` barrier), and a query
//! never waits longer than `SYNC_TIMEOUT` for the other nodes.

use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard::Role;

use crate::common::{amqp_url_via, broker_proxy, test_config, TestServer, APP_ID};

/// `asked` (gateway and worker) and `joined` (a second gateway) sharing prefix and database.
async fn two_gateways() -> (TestServer, TestServer) {
    let config = test_config();
    let asked = TestServer::start_config(Role::Serve, config.clone()).await;
    let joined = TestServer::start_config(Role::Gateway, config).await;
    (asked, joined)
}

async fn get(server: &TestServer, path: &str, query: &str) -> Value {
    let response = server
        .get_signed(&format!("/apps/{APP_ID}{path}"), query)
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn answers_right_after_a_subscribe_on_another_node_include_it() {
    let (asked, joined) = two_gateways().await;
    // The nodes know each other once a subscription on one shows on the other.
    let mut first = joined.connect().await;
    first.subscribe("warm-up").await;
    let started = Instant::now();
    while get(&asked, "/channels/warm-up", "").await["occupied"] != true {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nodes never met"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut clients = Vec::new();
    for i in 0..20 {
        let room = format!("presence-fresh-{i}");
        let user = format!("user-{i}");
        let mut client = joined.connect().await;
        client.join(&room, &user).await;
        let users = get(&asked, &format!("/channels/{room}/users"), "").await;
        assert_eq!(
            users["users"],
            serde_json::json!([{ "id": user }]),
            "round {i}"
        );
        let channel = get(&asked, &format!("/channels/{room}"), "info=user_count").await;
        assert_eq!(channel["user_count"], 1, "round {i}");
        let listed = get(&asked, "/channels", "filter_by_prefix=presence-fresh-").await;
        assert_eq!(
            listed["channels"].as_object().unwrap().len(),
            i + 1,
            "round {i}"
        );
        clients.push(client);
    }
    drop((first, clients));
    joined.cleanup().await;
    asked.cleanup().await;
}

#[tokio::test]
async fn a_node_that_does_not_answer_delays_a_query_by_at_most_the_sync_timeout() {
    let proxy = broker_proxy().await;
    let mut config = test_config();
    let asked = TestServer::start_config(Role::Serve, config.clone()).await;
    config.amqp_url = amqp_url_via(&proxy);
    let cut_off = TestServer::start_config(Role::Gateway, config).await;
    let mut client = cut_off.connect().await;
    client.subscribe("cut-off").await;
    let started = Instant::now();
    while get(&asked, "/channels/cut-off", "").await["occupied"] != true {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nodes never met"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Until cluster_node_timeout_ms the node is known but cannot answer: the query waits for it
    // SYNC_TIMEOUT, then answers from what was known.
    proxy.cut();
    let started = Instant::now();
    let channel = get(&asked, "/channels/cut-off", "").await;
    let took = started.elapsed();
    assert_eq!(channel["occupied"], true, "answered from the last snapshot");
    assert!(
        took >= dispatcher::SYNC_TIMEOUT,
        "waited for the node: {took:?}"
    );
    assert!(
        took < dispatcher::SYNC_TIMEOUT + Duration::from_secs(1),
        "not longer than the sync timeout: {took:?}"
    );
    assert!(asked
        .metrics()
        .await
        .contains("switchboard_cluster_sync_timeouts_total 1"));
    drop(client);
    cut_off.cleanup().await;
    asked.cleanup().await;
}
