//! Several AMQP URLs: a process connects once per role to the first URL that answers, and every
//! role moves to the next one when its node is lost — here two proxies in front of the one
//! broker, so the queues are the same and nothing may be lost or closed on the way.

use std::time::{Duration, Instant};

use faults::Proxy;

use crate::common::{amqp_url_via, broker_proxy, TestServer};
use crate::processes::free_port;

/// Waits until `proxy` forwards exactly `open` connections.
async fn wait_open(proxy: &Proxy, open: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while proxy.open_connections() != open {
        assert!(
            Instant::now() < deadline,
            "{} connections open through the proxy, expected {open}",
            proxy.open_connections()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_role_shares_one_connection_and_fails_over_to_the_next_url() {
    let (first, second) = (broker_proxy().await, broker_proxy().await);
    let unreachable = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());
    let urls = [unreachable, amqp_url_via(&first), amqp_url_via(&second)].join(",");
    let server = TestServer::start_with(|config| config.amqp_url = urls).await;
    // The gateway's publishers, live link and depth checks share one connection, the worker's
    // consumers another; the unreachable URL is skipped, the third is not needed.
    wait_open(&first, 2).await;
    assert_eq!(second.open_connections(), 0);

    let mut client = server.connect().await;
    client.subscribe("failover").await;
    assert_eq!(
        server.trigger("failover", "ev", "before").await.status(),
        200
    );
    assert_eq!(client.next_app_event().await["data"], "before");

    first.cut();
    let cut = Instant::now();
    wait_open(&second, 2).await;
    // Triggers are answered 200 again once the publisher has a channel on the new connection.
    loop {
        let status = server.trigger("failover", "ev", "after").await.status();
        if status == 200 {
            break;
        }
        assert_eq!(
            status, 503,
            "a trigger without a connection is refused, not lost"
        );
        assert!(
            cut.elapsed() < Duration::from_secs(10),
            "no 200 after the cut"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The socket stayed open (the live queue outlived the connection) and gets the event.
    assert_eq!(client.next_app_event().await["data"], "after");
    assert_eq!(server.wait_count("SELECT count(*) FROM events", 2).await, 2);
    server.cleanup().await;
}
