//! Scale-out on a real 3-node RabbitMQ cluster (`scripts/rabbitmq-cluster.sh`): two gateways and
//! two workers (the real binary), each given the three nodes' URLs in its own order; the node
//! leading the persist queue is killed with `kill -9` under load. Nothing acknowledged is lost
//! or stored twice, and both gateways serve again (a trigger answered 200, a WebSocket delivery)
//! within [`SERVE_AGAIN_WITHIN`]. Built only with `--features cluster-test` (`make
//! cluster-test` starts the cluster first and stops it after).

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::Connection;

use crate::common::ws::{Client, Seen};
use crate::common::{self, APP_ID, KEY};
use crate::processes::{Deployment, Node};

/// How long after the kill both gateways must answer a trigger with 200 and deliver an event
/// to a WebSocket subscriber again. Measured: BENCHMARKS.md, "Scale-out (issue 12)".
const SERVE_AGAIN_WITHIN: Duration = Duration::from_secs(20);
/// Load tasks per gateway, each sending one trigger at a time.
const SENDERS: usize = 4;
/// Most triggers one load task sends (the load also stops once the test has what it needs).
const MAX_TRIGGERS: usize = 3_000;

fn script() -> String {
    format!("{}/scripts/rabbitmq-cluster.sh", env!("CARGO_MANIFEST_DIR"))
}

/// Runs the cluster script; its standard output.
fn cluster(args: &[&str]) -> String {
    let output = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .expect("the cluster script runs");
    assert!(
        output.status.success(),
        "rabbitmq-cluster.sh {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The cluster's URLs, first the `first`th, then the others in order (each process gets its
/// own order, so the connections spread over the nodes).
fn urls_from(urls: &[String], first: usize) -> String {
    (0..urls.len())
        .map(|i| urls[(first + i) % urls.len()].as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The persist queue's leader node (1, 2 or 3) and its members, asked of a node still up.
fn persist_queue(asked: usize, queue: &str) -> (usize, Vec<String>) {
    let listed = cluster(&[
        "ctl",
        &asked.to_string(),
        "-q",
        "list_queues",
        "name",
        "leader",
        "members",
        "--formatter",
        "json",
    ]);
    let queues: Vec<Value> = serde_json::from_str(&listed).expect("list_queues answers JSON");
    let found = queues
        .iter()
        .find(|q| q["name"] == queue)
        .unwrap_or_else(|| panic!("{queue} is not in {listed}"));
    let leader = found["leader"].as_str().unwrap();
    let node = leader
        .strip_prefix("sb-rmq-")
        .and_then(|rest| rest.split('@').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("leader {leader}"));
    let members = found["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    (node, members)
}

async fn trigger(node: &Node, channel: &str, data: &str) -> reqwest::StatusCode {
    let body = json!({"name":"ev","channel":channel,"data":data}).to_string();
    common::post_signed(
        node.http(),
        &format!("/apps/{APP_ID}/events"),
        &body,
        common::SECRET,
        common::now(),
    )
    .await
    .status()
}

/// Sends triggers to `node` until `stop`, remembering the data of every one answered 200.
async fn load(
    node: std::net::SocketAddr,
    sender: String,
    acked: Arc<Mutex<Vec<String>>>,
    refused: Arc<Mutex<usize>>,
    stop: Arc<AtomicBool>,
) {
    for i in 0..MAX_TRIGGERS {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let data = format!("{sender}-{i}");
        let body = json!({"name":"ev","channel":"load","data":data}).to_string();
        let status = common::post_signed(
            node,
            &format!("/apps/{APP_ID}/events"),
            &body,
            common::SECRET,
            common::now(),
        )
        .await
        .status();
        if status == 200 {
            acked.lock().unwrap().push(data);
        } else {
            assert_eq!(status, 503, "refused with 503 only");
            *refused.lock().unwrap() += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Whether `node` answers a trigger with 200 and delivers it to a fresh subscriber within a
/// couple of seconds; else what went wrong.
async fn serves(node: &Node, probe: &str) -> Result<(), String> {
    let url = format!("ws://127.0.0.1:{}/app/{KEY}?protocol=7", node.http().port());
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio_tungstenite::connect_async(&url),
    )
    .await
    .map_err(|_| "no WebSocket handshake".to_owned())?
    .map_err(|error| format!("WebSocket: {error}"))?;
    let mut client = Client {
        socket,
        socket_id: String::new(),
        established: Value::Null,
    };
    expect(&mut client, "connection_established", &|e| {
        e["event"] == "pusher:connection_established"
    })
    .await?;
    client
        .send(json!({"event":"pusher:subscribe","data":{"auth":"","channel":probe}}))
        .await;
    expect(&mut client, "subscription_succeeded", &|e| {
        e["event"] == "pusher_internal:subscription_succeeded"
    })
    .await?;
    let status = trigger(node, probe, "probe").await;
    if status != 200 {
        let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", node.admin))
            .await
            .map_err(|error| error.to_string())?
            .text()
            .await
            .map_err(|error| error.to_string())?;
        let failures: Vec<&str> = metrics
            .lines()
            .filter(|line| line.starts_with("switchboard_publish_"))
            .collect();
        return Err(format!("trigger answered {status}; {failures:?}"));
    }
    expect(&mut client, "the probe event", &|e| {
        e["event"] == "ev" && e["channel"] == probe
    })
    .await
}

/// The client's next frame within 2 s, if `check` accepts it.
async fn expect(
    client: &mut Client,
    what: &str,
    check: &dyn Fn(&Value) -> bool,
) -> Result<(), String> {
    match client.seen(Duration::from_secs(2)).await {
        Seen::Event(event) if check(&event) => Ok(()),
        other => Err(format!("expected {what}, saw {other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_persist_queue_leader_loses_and_duplicates_nothing() {
    // Idempotent: brings back a node an earlier run killed.
    cluster(&["start"]);
    let urls: Vec<String> = cluster(&["urls"])
        .trim()
        .split(',')
        .map(str::to_owned)
        .collect();
    assert_eq!(urls.len(), 3);
    let mut deployment = Deployment::new();
    deployment.amqp_url = urls.join(",");
    let logs = format!("{}/target/cluster-test", env!("CARGO_MANIFEST_DIR"));
    let _ = std::fs::remove_dir_all(&logs);
    deployment.log_dir = Some(logs.into());
    deployment.env = vec![("RUST_LOG", "info")];
    let gateways = [
        deployment.start_on("gateway", &urls_from(&urls, 0)).await,
        deployment.start_on("gateway", &urls_from(&urls, 1)).await,
    ];
    let workers = [
        deployment.start_on("worker", &urls_from(&urls, 2)).await,
        deployment.start_on("worker", &urls_from(&urls, 0)).await,
    ];
    let queue = format!("{}.persist", deployment.prefix);
    let (leader, members) = persist_queue(1, &queue);
    assert_eq!(
        members.len(),
        3,
        "the persist queue is quorum on every node: {members:?}"
    );

    let acked = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for (g, gateway) in gateways.iter().enumerate() {
        for s in 0..SENDERS {
            senders.push(tokio::spawn(load(
                gateway.http(),
                format!("g{g}s{s}"),
                acked.clone(),
                refused.clone(),
                stop.clone(),
            )));
        }
    }
    // Under load: some events are stored before the kill.
    let stored_before = common::wait_count(
        &deployment.database_url,
        "SELECT least(count(*), 200) FROM events",
        200,
    )
    .await;
    assert_eq!(stored_before, 200, "events are stored before the kill");
    cluster(&["kill", &leader.to_string()]);
    let killed = Instant::now();

    let mut back = HashMap::new();
    let mut failures = HashMap::new();
    for round in 0.. {
        for (g, gateway) in gateways.iter().enumerate() {
            if back.contains_key(&g) {
                continue;
            }
            match serves(gateway, &format!("probe-{g}-{round}")).await {
                Ok(()) => {
                    back.insert(g, killed.elapsed());
                }
                Err(failure) => {
                    failures.insert(g, failure);
                }
            }
        }
        if back.len() == gateways.len() {
            break;
        }
        assert!(
            killed.elapsed() < SERVE_AGAIN_WITHIN,
            "gateways serving again: {back:?} after {:?}; last failures {failures:?}",
            killed.elapsed()
        );
    }
    let serving_again = back.values().max().copied().unwrap();
    // More load after recovery, then stop it.
    let acked_at_recovery = acked.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < acked_at_recovery + 200 {
        assert!(
            Instant::now() < deadline,
            "no load acknowledged after recovery"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.await.unwrap();
    }

    let acked: Vec<String> = acked.lock().unwrap().clone();
    let mut db = sqlx::PgConnection::connect_with(&deployment.database_url.parse().unwrap())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let stored: Vec<(String, i64)> = loop {
        let stored: Vec<(String, i64)> = sqlx::query_as(
            "SELECT data #>> '{}', count(*) FROM events WHERE channel = 'load' GROUP BY 1",
        )
        .fetch_all(&mut db)
        .await
        .unwrap();
        let have: HashSet<&str> = stored.iter().map(|(data, _)| data.as_str()).collect();
        let missing = acked
            .iter()
            .filter(|data| !have.contains(data.as_str()))
            .count();
        if missing == 0 {
            break stored;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} acknowledged events never stored",
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let twice: Vec<&(String, i64)> = stored.iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    eprintln!(
        "cluster test: killed node {leader} (persist queue leader); {} acknowledged, {} refused \
         (503), {} stored; gateways served again after {back:?} (max {serving_again:?})",
        acked.len(),
        refused.lock().unwrap(),
        stored.len()
    );
    drop((gateways, workers));
    deployment.cleanup().await;
}
