//! Switchboard as separate processes (the real binary): several nodes sharing one RabbitMQ,
//! a worker killed mid-batch, SIGTERM, and start-up failures.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::Connection;

use crate::common::ws::{self, Client};
use crate::common::{self, APP_ID, KEY};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One deployment: a database and a queue prefix shared by its processes.
pub(crate) struct Deployment {
    pub(crate) database_url: String,
    pub(crate) prefix: String,
    /// `AMQP_URL` of every process unless started with [`Deployment::start_on`].
    pub(crate) amqp_url: String,
    pub(crate) env: Vec<(&'static str, &'static str)>,
    /// A config file for every process (`--config`).
    pub(crate) config_file: Option<std::path::PathBuf>,
    /// Where each process's log (standard output and error) goes, a file per process in it,
    /// instead of a pipe nobody reads — one that fills up would stall a process that logs a lot.
    pub(crate) log_dir: Option<std::path::PathBuf>,
}

pub(crate) struct Node {
    pub(crate) child: Child,
    pub(crate) http: u16,
    pub(crate) admin: u16,
}

impl Deployment {
    pub(crate) fn new() -> Deployment {
        let config = common::test_config();
        Deployment {
            database_url: config.database_url,
            prefix: config.amqp_prefix,
            amqp_url: common::AMQP.into(),
            env: Vec::new(),
            config_file: None,
            log_dir: None,
        }
    }

    pub(crate) fn command(&self, role: &str) -> (Command, u16, u16) {
        let (http, admin) = (free_port(), free_port());
        let mut command = Command::new(BIN);
        command
            .arg(role)
            .env("DATABASE_URL", &self.database_url)
            .env("AMQP_URL", &self.amqp_url)
            .env("SWITCHBOARD_AMQP_PREFIX", &self.prefix)
            .env("SWITCHBOARD_BIND", format!("127.0.0.1:{http}"))
            .env("SWITCHBOARD_ADMIN_BIND", format!("127.0.0.1:{admin}"))
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(file) = &self.config_file {
            command.arg("--config").arg(file);
        }
        if let Some(dir) = &self.log_dir {
            std::fs::create_dir_all(dir).unwrap();
            let log = std::fs::File::create(dir.join(format!("{role}-{http}.log"))).unwrap();
            command.stdout(log.try_clone().unwrap()).stderr(log);
        }
        (command, http, admin)
    }

    /// Starts a role and waits until its `/ready` answers 200.
    pub(crate) async fn start(&self, role: &str) -> Node {
        self.start_on(role, &self.amqp_url).await
    }

    /// Starts a role with its own `AMQP_URL` and waits until its `/ready` answers 200.
    pub(crate) async fn start_on(&self, role: &str, amqp_url: &str) -> Node {
        let (mut command, http, admin) = self.command(role);
        command.env("AMQP_URL", amqp_url);
        let child = command.spawn().expect("switchboard binary runs");
        let node = Node { child, http, admin };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = reqwest::get(format!("http://127.0.0.1:{admin}/ready")).await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return node;
            }
            assert!(Instant::now() < deadline, "{role} did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn count(&self, expected: i64) -> i64 {
        common::wait_count(&self.database_url, "SELECT count(*) FROM events", expected).await
    }

    pub(crate) async fn cleanup(&self) {
        let mut config = common::test_config();
        config.database_url.clone_from(&self.database_url);
        config.amqp_prefix.clone_from(&self.prefix);
        config.amqp_url.clone_from(&self.amqp_url);
        common::cleanup_resources(&config).await;
    }
}

impl Node {
    pub(crate) fn http(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.http).into()
    }

    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `limit`; returns its exit code.
    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn trigger(node: &Node, channels: &[String], data: &str) -> reqwest::StatusCode {
    let body = json!({"name":"ev","channels":channels,"data":data}).to_string();
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

#[tokio::test]
async fn two_gateways_share_live_events_and_one_worker_stores_them_once() {
    let deployment = Deployment::new();
    let a = deployment.start("gateway").await;
    let b = deployment.start("gateway").await;
    let worker = deployment.start("worker").await;
    let url = |node: &Node| format!("ws://127.0.0.1:{}/app/{KEY}?protocol=7", node.http);
    let mut on_a = Client::connect(&url(&a)).await;
    let mut on_b = Client::connect(&url(&b)).await;
    assert_ne!(
        on_a.socket_id, on_b.socket_id,
        "socket ids are unique across nodes"
    );
    on_a.subscribe("shared").await;
    on_b.subscribe("shared").await;
    assert_eq!(trigger(&a, &["shared".into()], "from-a").await, 200);
    assert_eq!(trigger(&b, &["shared".into()], "from-b").await, 200);
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(client.next_app_event().await["data"], "from-a");
        assert_eq!(client.next_app_event().await["data"], "from-b");
    }
    assert_eq!(deployment.count(2).await, 2);
    drop((a, b, worker));
    deployment.cleanup().await;
}

#[tokio::test]
async fn worker_killed_mid_batch_loses_and_duplicates_nothing() {
    let deployment = Deployment::new();
    let gateway = deployment.start("gateway").await;
    let mut worker = deployment.start("worker").await;
    let channels: Vec<String> = (0..10).map(|i| format!("load-{i}")).collect();
    let requests = 400;
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load = {
        let (channels, accepted, http) = (channels.clone(), accepted.clone(), gateway.http);
        tokio::spawn(async move {
            let node_addr: std::net::SocketAddr = ([127, 0, 0, 1], http).into();
            let body = json!({"name":"ev","channels":channels,"data":"{\"n\":1}"}).to_string();
            let tasks = (0..8).map(|_| {
                let (body, accepted) = (body.clone(), accepted.clone());
                tokio::spawn(async move {
                    for _ in 0..requests / 8 {
                        let status = common::post_signed(
                            node_addr,
                            &format!("/apps/{APP_ID}/events"),
                            &body,
                            common::SECRET,
                            common::now(),
                        )
                        .await
                        .status();
                        assert_eq!(status, 200);
                        accepted.fetch_add(10, std::sync::atomic::Ordering::SeqCst);
                    }
                })
            });
            for task in futures_util::future::join_all(tasks).await {
                task.unwrap();
            }
        })
    };
    // Kill the worker once it has persisted part of the stream.
    let mut db = sqlx::PgConnection::connect_with(&deployment.database_url.parse().unwrap())
        .await
        .unwrap();
    loop {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&mut db)
            .await
            .unwrap();
        if rows > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.signal("KILL");
    worker.child.wait().unwrap();
    load.await.unwrap();
    let total = accepted.load(std::sync::atomic::Ordering::SeqCst) as i64;
    assert_eq!(total, (requests / 8 * 8 * 10) as i64);
    let _restarted = deployment.start("worker").await;
    assert_eq!(deployment.count(total).await, total);
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT id) FROM events")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(distinct, total);
    drop(gateway);
    deployment.cleanup().await;
}

#[tokio::test]
async fn sigterm_closes_sockets_with_4200_and_exits_zero() {
    let deployment = Deployment::new();
    let mut node = deployment.start("serve").await;
    let mut client = Client::connect(&format!(
        "ws://127.0.0.1:{}/app/{KEY}?protocol=7",
        node.http
    ))
    .await;
    client.subscribe("bye").await;
    assert_eq!(trigger(&node, &["bye".into()], "last").await, 200);
    assert_eq!(client.next_app_event().await["data"], "last");
    let started = Instant::now();
    node.signal("TERM");
    assert_eq!(client.closed().await, Some(4200));
    assert_eq!(node.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(deployment.count(1).await, 1);
    deployment.cleanup().await;
}

/// Runs the binary expecting it to fail at start; returns its stderr.
pub(crate) async fn failing_start(deployment: &Deployment, env: &[(&str, &str)]) -> String {
    let (mut command, _, _) = deployment.command("serve");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || command.output().unwrap()),
    )
    .await
    .expect("start-up failure is reported promptly")
    .unwrap();
    assert!(!output.status.success());
    String::from_utf8(output.stderr).unwrap()
}

#[tokio::test]
async fn start_up_failures_name_what_and_where() {
    let deployment = Deployment::new();
    let closed = free_port();
    let broker = format!("amqp://guest:hunter2@127.0.0.1:{closed}/%2f");
    let stderr = failing_start(&deployment, &[("AMQP_URL", &broker)]).await;
    assert!(
        stderr.contains(&format!(
            "cannot reach RabbitMQ at amqp://127.0.0.1:{closed}"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");

    let database = format!("postgres://postgres:hunter2@127.0.0.1:{closed}/x");
    let stderr = failing_start(&deployment, &[("DATABASE_URL", &database)]).await;
    assert!(
        stderr.contains("Postgres") && stderr.contains(&format!("127.0.0.1:{closed}")),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");

    let stderr = failing_start(
        &deployment,
        &[("SWITCHBOARD_GATEWAY__SOCKET_QUEUE_LEN", "lots")],
    )
    .await;
    assert!(
        stderr.to_lowercase().contains("socket_queue_len"),
        "{stderr}"
    );
    deployment.cleanup().await;
}

async fn user_count(node: &Node, channel: &str) -> Value {
    let response = common::get_signed(
        node.http(),
        &format!("/apps/{APP_ID}/channels/{channel}"),
        "info=user_count,subscription_count",
    )
    .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn wait_for_users(node: &Node, channel: &str, users: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = user_count(node, channel).await;
        if info["user_count"] == users {
            return info;
        }
        assert!(Instant::now() < deadline, "user_count stayed at {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn presence_is_cluster_wide_and_a_killed_node_leaves() {
    let mut deployment = Deployment::new();
    deployment.env = vec![
        ("SWITCHBOARD_GATEWAY__CLUSTER_HEARTBEAT_MS", "200"),
        ("SWITCHBOARD_GATEWAY__CLUSTER_NODE_TIMEOUT_MS", "1500"),
    ];
    let a = deployment.start("gateway").await;
    let mut b = deployment.start("gateway").await;
    let url = |node: &Node| format!("ws://127.0.0.1:{}/app/{KEY}?protocol=7", node.http);
    let room = "presence-cluster";
    let mut on_a = Client::connect(&url(&a)).await;
    let mut on_b = Client::connect(&url(&b)).await;
    on_a.join(room, "ann").await;
    wait_for_users(&b, room, 1).await;
    let joined = on_b.join(room, "bob").await;
    assert_eq!(joined["presence"]["count"], 2, "{joined}");
    let added = on_a.next_app_event().await;
    assert_eq!(added["event"], "pusher_internal:member_added");
    assert_eq!(ws::data(&added)["user_id"], "bob");
    let info = wait_for_users(&a, room, 2).await;
    assert_eq!(
        info,
        json!({"occupied":true,"user_count":2,"subscription_count":2})
    );
    let list = common::get_signed(a.http(), &format!("/apps/{APP_ID}/channels"), "").await;
    assert_eq!(
        list.json::<Value>().await.unwrap()["channels"][room],
        json!({})
    );

    // terminate_connections on node A closes bob's signed-in socket on node B.
    let mut bob_signed = Client::connect(&url(&b)).await;
    let user_data = r#"{"id":"bob"}"#;
    let auth = common::signin_auth(&bob_signed.socket_id, user_data);
    bob_signed
        .send(json!({"event":"pusher:signin","data":{"auth":auth,"user_data":user_data}}))
        .await;
    assert_eq!(
        bob_signed.next_event().await["event"],
        "pusher:signin_success"
    );
    let body = "{}";
    let terminate = common::post_signed(
        a.http(),
        &format!("/apps/{APP_ID}/users/bob/terminate_connections"),
        body,
        common::SECRET,
        common::now(),
    )
    .await;
    assert_eq!(terminate.status(), 200);
    assert_eq!(bob_signed.closed().await, Some(4009));

    // Node B dies without a word: its member leaves everywhere within the node timeout.
    b.signal("KILL");
    b.child.wait().unwrap();
    let started = Instant::now();
    let removed = on_a.next_app_event().await;
    assert_eq!(removed["event"], "pusher_internal:member_removed");
    assert_eq!(ws::data(&removed)["user_id"], "bob");
    assert!(started.elapsed() < Duration::from_secs(5));
    let users = common::get_signed(
        a.http(),
        &format!("/apps/{APP_ID}/channels/{room}/users"),
        "",
    )
    .await;
    assert_eq!(
        users.json::<Value>().await.unwrap(),
        json!({"users":[{"id":"ann"}]})
    );
    drop(a);
    deployment.cleanup().await;
}
