//! The publisher against the real RabbitMQ: confirms, returns, outages and batching.

use std::time::Duration;

use bus::{Broker, PublishError, Publisher, PublisherConfig, QueueType, Topology};
use faults::Proxy;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use protocol::envelope::decode_batch;
use protocol::{Envelope, Source};
use tokio_util::task::TaskTracker;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A publisher's settings on a shared connection of its own to `url`.
fn config(url: &str) -> PublisherConfig {
    PublisherConfig {
        broker: Broker::spawn(vec![url.into()], "bus-test", &TaskTracker::new()),
        topology: Topology::new(format!("bustest{:x}", rand::random::<u64>())),
        persist_queue_type: QueueType::Classic,
        max_batch_envelopes: 1000,
        max_message_bytes: 256 * 1024,
        max_in_flight: 16,
        group_commit_in_flight: 16,
        linger: Duration::ZERO,
        confirm_timeout: Duration::from_secs(5),
    }
}

fn envelope(i: usize) -> Envelope {
    Envelope::new("app", Source::Api, "chan", "ev", i.to_string())
}

async fn connected(publisher: &Publisher) {
    for _ in 0..100 {
        if publisher.is_connected() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("publisher did not connect");
}

/// Drains the persist queue: (messages, envelopes in order).
async fn drain(topology: &Topology, expected_envelopes: usize) -> (usize, Vec<Envelope>) {
    let connection = bus::connect(AMQP, "test-drain").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            &topology.persist_queue(),
            "drain",
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (mut messages, mut envelopes) = (0, Vec::new());
    while envelopes.len() < expected_envelopes {
        let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .expect("messages arrive")
            .unwrap()
            .unwrap();
        messages += 1;
        envelopes.extend(decode_batch(&delivery.data).unwrap());
    }
    for queue in [topology.persist_queue(), topology.dead_letter_queue()] {
        let _ = channel
            .queue_delete(&queue, QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(&topology.events_exchange(), Default::default())
        .await;
    (messages, envelopes)
}

#[tokio::test]
async fn confirmed_envelopes_are_in_the_persist_queue() {
    let config = config(AMQP);
    let tracker = TaskTracker::new();
    let publisher = Publisher::spawn(config.clone(), &tracker);
    connected(&publisher).await;
    let sent: Vec<Envelope> = (0..3).map(envelope).collect();
    assert_eq!(publisher.publish(sent.clone()).await, Ok(()));
    let (_, received) = drain(&config.topology, 3).await;
    assert_eq!(received, sent);
}

#[tokio::test]
async fn concurrent_requests_are_batched_and_each_sender_keeps_its_order() {
    let config = config(AMQP);
    let tracker = TaskTracker::new();
    let publisher = Publisher::spawn(config.clone(), &tracker);
    connected(&publisher).await;
    let (concurrent, sequential) = (400, 100);
    let ordered = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            for i in 0..sequential {
                let mut e = envelope(i);
                e.channel = "ordered".into();
                publisher.publish(vec![e]).await.unwrap();
            }
        })
    };
    let results = futures_util::future::join_all(
        (0..concurrent).map(|i| publisher.publish(vec![envelope(i)])),
    )
    .await;
    assert!(results.iter().all(Result::is_ok));
    ordered.await.unwrap();
    let (messages, received) = drain(&config.topology, concurrent + sequential).await;
    assert!(
        messages < concurrent,
        "{messages} messages for {concurrent} concurrent requests"
    );
    let in_order: Vec<String> = received
        .iter()
        .filter(|e| e.channel == "ordered")
        .map(|e| e.data.clone())
        .collect();
    let expected: Vec<String> = (0..sequential).map(|i| i.to_string()).collect();
    assert_eq!(in_order, expected);
    let mut rest: Vec<usize> = received
        .iter()
        .filter(|e| e.channel != "ordered")
        .map(|e| e.data.parse().unwrap())
        .collect();
    rest.sort_unstable();
    assert_eq!(rest, (0..concurrent).collect::<Vec<_>>());
}

#[tokio::test]
async fn unroutable_message_is_a_failure() {
    let config = config(AMQP);
    let tracker = TaskTracker::new();
    let publisher = Publisher::spawn(config.clone(), &tracker);
    connected(&publisher).await;
    let connection = bus::connect(AMQP, "test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(
            &config.topology.persist_queue(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        publisher.publish(vec![envelope(1)]).await,
        Err(PublishError::Returned)
    );
    channel
        .queue_declare(
            &config.topology.persist_queue(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    drain(&config.topology, 0).await;
}

#[tokio::test]
async fn unreachable_broker_fails_fast() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let tracker = TaskTracker::new();
    let publisher = Publisher::spawn(
        config(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")),
        &tracker,
    );
    let started = std::time::Instant::now();
    assert_eq!(
        publisher.publish(vec![envelope(1)]).await,
        Err(PublishError::Unavailable)
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(!publisher.is_connected());
}

/// A broker that accepts TCP connections and never says a word: connecting hangs until its
/// timeout, which publishing must never wait for.
#[tokio::test]
async fn silent_broker_fails_fast_while_the_connector_waits() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });
    let tracker = TaskTracker::new();
    let publisher = Publisher::spawn(
        config(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")),
        &tracker,
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..3 {
        let started = std::time::Instant::now();
        assert_eq!(
            publisher.publish(vec![envelope(i)]).await,
            Err(PublishError::Unavailable)
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "answered after {:?}",
            started.elapsed()
        );
    }
    assert!(!publisher.is_connected());
    held.abort();
}

#[tokio::test]
async fn a_large_request_is_split_into_messages_within_the_byte_cap() {
    const CAP: usize = 4096;
    let config = PublisherConfig {
        max_message_bytes: CAP,
        ..config(AMQP)
    };
    let tracker = TaskTracker::new();
    let publisher = Publisher::spawn(config.clone(), &tracker);
    connected(&publisher).await;
    let padded = |i: usize| {
        let mut e = envelope(i);
        e.data = format!("{i:04}{}", "x".repeat(700));
        e
    };
    let large: Vec<Envelope> = (0..30).map(padded).collect();
    let mut huge = envelope(99);
    huge.data = "y".repeat(2 * CAP);
    let (a, b) = tokio::join!(
        publisher.publish(large.clone()),
        publisher.publish(vec![huge.clone()])
    );
    assert_eq!((a, b), (Ok(()), Ok(())));

    let connection = bus::connect(AMQP, "test-sizes").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut bodies = Vec::new();
    while let Some(message) = channel
        .basic_get(&config.topology.persist_queue(), Default::default())
        .await
        .unwrap()
    {
        bodies.push(message.delivery.data.clone());
        message.delivery.ack(Default::default()).await.unwrap();
    }
    let mut received = Vec::new();
    for body in &bodies {
        let envelopes = decode_batch(body).unwrap();
        assert!(
            body.len() <= CAP || envelopes.len() == 1,
            "a message of {} bytes with {} envelopes",
            body.len(),
            envelopes.len()
        );
        received.extend(envelopes);
    }
    assert!(bodies.len() >= 6, "{} messages", bodies.len());
    let in_order: Vec<Envelope> = received
        .iter()
        .filter(|e| e.id != huge.id)
        .cloned()
        .collect();
    assert_eq!(in_order, large, "every envelope once, in order");
    assert_eq!(received.iter().filter(|e| e.id == huge.id).count(), 1);
    drain(&config.topology, 0).await;
}

/// A request split over several messages is confirmed only when every part is: here a queue
/// that takes two messages and refuses the rest (`reject-publish`, which nacks) is bound too.
#[tokio::test]
async fn a_split_request_fails_when_one_of_its_messages_fails() {
    let config = PublisherConfig {
        max_message_bytes: 2048,
        ..config(AMQP)
    };
    let tracker = TaskTracker::new();
    let publisher = Publisher::spawn(config.clone(), &tracker);
    connected(&publisher).await;
    let connection = bus::connect(AMQP, "test-reject").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let small = format!("{}.small", config.topology.prefix);
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(2));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    channel
        .queue_declare(&small, QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    channel
        .queue_bind(
            &small,
            &config.topology.events_exchange(),
            bus::EVENT_ROUTING_KEY,
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let request: Vec<Envelope> = (0..10)
        .map(|i| {
            let mut e = envelope(i);
            e.data = "z".repeat(900);
            e
        })
        .collect();
    assert_eq!(
        publisher.publish(request).await,
        Err(PublishError::Nacked),
        "two of five parts confirmed is no confirm"
    );
    channel
        .queue_delete(&small, QueueDeleteOptions::default())
        .await
        .unwrap();
    // After a nack the publisher takes a fresh channel, and keeps the old one until then.
    assert_eq!(publisher.publish(vec![envelope(1)]).await, Ok(()));
    drain(&config.topology, 0).await;
}

#[tokio::test]
async fn live_queue_overflow_goes_to_the_dropped_queue() {
    let topology = Topology::new(format!("bustest{:x}", rand::random::<u64>()));
    let connection = bus::connect(AMQP, "test-live").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    bus::declare_durable(&channel, &topology, QueueType::Classic)
        .await
        .unwrap();
    let queues = bus::declare_live_queue(&channel, &topology, 7, 3, Duration::from_secs(60))
        .await
        .unwrap();
    let shard = bus::shard_of("app", "chan");
    bus::bind_shard(&channel, &topology, 7, shard, true)
        .await
        .unwrap();
    // As the publisher sends them: routing key `event` (the persist queue) and the shard key
    // in `BCC` (the live queue).
    let mut headers = FieldTable::default();
    headers.insert(
        bus::SHARD_HEADER.into(),
        AMQPValue::FieldArray(vec![AMQPValue::LongString(bus::shard_key(shard).into())].into()),
    );
    for i in 0..5 {
        let body = protocol::envelope::encode_batch(&[envelope(i)]);
        channel
            .basic_publish(
                &topology.events_exchange(),
                bus::EVENT_ROUTING_KEY,
                Default::default(),
                &body,
                lapin::BasicProperties::default().with_headers(headers.clone()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let mut counts = (0, 0);
    for _ in 0..50 {
        let live = channel
            .queue_declare(&queues.live, passive, FieldTable::default())
            .await
            .unwrap();
        let dropped = channel
            .queue_declare(&queues.dropped, passive, FieldTable::default())
            .await
            .unwrap();
        counts = (live.message_count(), dropped.message_count());
        if counts == (3, 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        counts,
        (3, 2),
        "live keeps the newest three, the oldest two are dead-lettered"
    );
    drain(&topology, 5).await;
}

/// A direct connection's count of the messages in the persist queue.
async fn persist_depth(topology: &Topology) -> u32 {
    let connection = bus::connect(AMQP, "test-depth").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = channel
        .queue_declare(
            &topology.persist_queue(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = connection.close(200, "done").await;
    queue.message_count()
}

async fn wait_for_depth(topology: &Topology, depth: u32) {
    for _ in 0..200 {
        if persist_depth(topology).await == depth {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the persist queue never held {depth} messages");
}

/// Group commit: while a message awaits its confirm (the broker's replies are held by a proxy),
/// single-envelope requests are not published one by one but gather in the outbox, and go out
/// one message as soon as they fill it (a full message does not wait for the confirm, only for
/// room in `max_in_flight`).
#[tokio::test]
async fn requests_arriving_during_a_confirm_share_the_next_message() {
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap())
        .await
        .unwrap();
    let config = PublisherConfig {
        group_commit_in_flight: 1,
        max_batch_envelopes: 10,
        ..config(&format!("amqp://guest:guest@{}/%2f", proxy.addr()))
    };
    let tracker = TaskTracker::new();
    let publisher = Publisher::spawn(config.clone(), &tracker);
    connected(&publisher).await;
    proxy.hold_replies();
    let first = publisher.enqueue(vec![envelope(0)]).unwrap();
    wait_for_depth(&config.topology, 1).await;
    // One at a time, with time for the publishing task to publish each if it would.
    let mut gathered = Vec::new();
    for i in 1..=5 {
        gathered.push(publisher.enqueue(vec![envelope(i)]).unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Five more envelopes make the outbox a full message: it goes out during the hold.
    let rest: Vec<Envelope> = (100..105).map(envelope).collect();
    let filling = publisher.enqueue(rest).unwrap();
    wait_for_depth(&config.topology, 2).await;
    proxy.restore();
    assert_eq!(first.confirmed().await, Ok(()));
    for pending in gathered {
        assert_eq!(pending.confirmed().await, Ok(()));
    }
    assert_eq!(filling.confirmed().await, Ok(()));

    let connection = bus::connect(AMQP, "test-group").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut messages: Vec<Vec<String>> = Vec::new();
    while let Some(message) = channel
        .basic_get(&config.topology.persist_queue(), Default::default())
        .await
        .unwrap()
    {
        let envelopes = decode_batch(&message.delivery.data).unwrap();
        messages.push(envelopes.into_iter().map(|e| e.data).collect());
        message.delivery.ack(Default::default()).await.unwrap();
    }
    // The held link is cut at the end, so a message may be there twice (published again on
    // the new link): the same bytes, which storage deduplicates.
    let first_alone = vec!["0".to_owned()];
    let shared: Vec<String> = (1..=5).chain(100..105).map(|i| i.to_string()).collect();
    assert!(
        messages.contains(&first_alone) && messages.contains(&shared),
        "{messages:?}"
    );
    assert!(
        messages.iter().all(|m| *m == first_alone || *m == shared),
        "no other message: {messages:?}"
    );
    drain(&config.topology, 0).await;
}

/// Linger: requests too far apart for group commit (nothing is in flight when each comes) share
/// one message while its oldest envelope lingers, and are answered only after that; a full
/// message does not linger.
#[tokio::test]
async fn a_lingering_message_gathers_requests_spread_out_in_time() {
    const LINGER: Duration = Duration::from_secs(1);
    let config = PublisherConfig {
        linger: LINGER,
        max_batch_envelopes: 10,
        ..config(AMQP)
    };
    let tracker = TaskTracker::new();
    let publisher = Publisher::spawn(config.clone(), &tracker);
    connected(&publisher).await;

    let start = tokio::time::Instant::now();
    let mut spread = Vec::new();
    for i in 0..3 {
        spread.push(publisher.enqueue(vec![envelope(i)]).unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for pending in spread {
        assert_eq!(pending.confirmed().await, Ok(()));
    }
    assert!(
        start.elapsed() >= LINGER,
        "answered after {:?}",
        start.elapsed()
    );
    let start = tokio::time::Instant::now();
    let full = publisher.enqueue((10..20).map(envelope).collect()).unwrap();
    assert_eq!(full.confirmed().await, Ok(()));
    assert!(
        start.elapsed() < LINGER,
        "a full message waited {:?}",
        start.elapsed()
    );

    let (messages, envelopes) = drain(&config.topology, 13).await;
    assert_eq!(messages, 2);
    let data: Vec<String> = envelopes.into_iter().map(|e| e.data).collect();
    let expected: Vec<String> = (0..3).chain(10..20).map(|i| i.to_string()).collect();
    assert_eq!(data, expected);
}
