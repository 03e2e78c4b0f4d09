//! Shared harness for the integration tests: a real Switchboard on port 0 against the real
//! RabbitMQ and Postgres, isolated by a random queue prefix and a fresh database per test.

pub mod ws;

use std::net::SocketAddr;
use std::time::Duration;

use faults::Proxy;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use sqlx::{Connection, PgConnection};
use switchboard::config::{Config, PersistQueueType};
use switchboard::{start, Role, Running};
use tokio_util::sync::CancellationToken;

pub const PG: &str = "postgres://postgres@127.0.0.1:5432";
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const AMQP_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], 5672);
pub const APP_ID: &str = "app-id";
pub const KEY: &str = "app-key";
pub const SECRET: &str = "app-secret";

/// A fault proxy in front of the broker.
pub async fn broker_proxy() -> Proxy {
    Proxy::start(AMQP_ADDR.into())
        .await
        .expect("start a proxy in front of RabbitMQ")
}

/// The AMQP URL that reaches the broker through `proxy`.
pub fn amqp_url_via(proxy: &Proxy) -> String {
    format!("amqp://guest:guest@{}/%2f", proxy.addr())
}

/// A gateway whose broker connection goes through `proxy`, and a worker connected directly (so
/// that events reach the table while the gateway's link is cut or held), both with `config`.
pub async fn gateway_and_worker(mut config: Config, proxy: &Proxy) -> (TestServer, TestServer) {
    config.amqp_url = amqp_url_via(proxy);
    let gateway = TestServer::start_config(Role::Gateway, config.clone()).await;
    let worker = TestServer::start_config(
        Role::Worker,
        Config {
            amqp_url: AMQP.into(),
            ..config
        },
    )
    .await;
    (gateway, worker)
}

pub fn random_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A fresh, isolated configuration: port 0 listeners, random database and prefix.
pub fn test_config() -> Config {
    let suffix = random_suffix();
    let mut config = Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        admin_bind: Some("127.0.0.1:0".parse().unwrap()),
        database_url: format!("{PG}/switchboard_test_{suffix}"),
        amqp_url: AMQP.into(),
        amqp_prefix: format!("t{suffix}"),
        persist_queue_type: PersistQueueType::Classic,
        ..Config::default()
    };
    config.worker.batch_linger_ms = 2;
    config
}

pub struct TestServer {
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub config: Config,
    shutdown: CancellationToken,
    running: Option<Running>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = test_config();
        adjust(&mut config);
        Self::start_config(Role::Serve, config).await
    }

    pub async fn start_config(role: Role, config: Config) -> TestServer {
        let shutdown = CancellationToken::new();
        let running = start(role, config.clone(), shutdown.clone())
            .await
            .expect("switchboard starts");
        TestServer {
            http: running.gateway_addr.unwrap_or(running.admin_addr),
            admin: running.admin_addr,
            config,
            shutdown,
            running: Some(running),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn ws_url(&self, key: &str, query: &str) -> String {
        format!("ws://{}/app/{key}?{query}", self.http)
    }

    pub async fn connect(&self) -> ws::Client {
        ws::Client::connect(&self.ws_url(KEY, "protocol=7&client=js&version=8.4.0&flash=false"))
            .await
    }

    /// Stops the server (as SIGTERM would) and returns whether it finished in time.
    pub async fn stop(&mut self) -> bool {
        self.shutdown.cancel();
        match self.running.take() {
            Some(running) => running.finished().await,
            None => true,
        }
    }

    /// Stops the server if still running, then drops its database and queues.
    pub async fn cleanup(mut self) {
        assert!(
            self.stop().await,
            "server stopped within its shutdown timeout"
        );
        cleanup_resources(&self.config).await;
    }

    /// A signed `POST /apps/{app}/events` (or any path) with `body`.
    pub async fn post_signed(&self, path: &str, body: &str) -> reqwest::Response {
        post_signed(self.http, path, body, SECRET, now()).await
    }

    pub async fn get_signed(&self, path: &str, extra: &str) -> reqwest::Response {
        get_signed(self.http, path, extra).await
    }

    pub async fn trigger(&self, channel: &str, name: &str, data: &str) -> reqwest::Response {
        let body =
            serde_json::json!({ "name": name, "channel": channel, "data": data }).to_string();
        self.post_signed(&format!("/apps/{APP_ID}/events"), &body)
            .await
    }

    /// One value from the test database.
    pub async fn scalar<T>(&self, sql: &str) -> T
    where
        T: Send + Unpin + for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        sqlx::query_scalar(sql)
            .fetch_one(&mut self.db().await)
            .await
            .expect("scalar query runs")
    }

    pub async fn db(&self) -> PgConnection {
        PgConnection::connect(&self.config.database_url)
            .await
            .expect("test database reachable")
    }

    /// Polls until `sql` (returning one bigint) yields `expected`, or times out; returns the last value.
    pub async fn wait_count(&self, sql: &str, expected: i64) -> i64 {
        wait_count(&self.config.database_url, sql, expected).await
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

pub async fn wait_count(database_url: &str, sql: &str, expected: i64) -> i64 {
    let mut db = PgConnection::connect(database_url).await.unwrap();
    let mut last = -1;
    for _ in 0..150 {
        last = sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&mut db)
            .await
            .unwrap();
        if last == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn hmac_hex(secret: &str, message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The query string of a signed Pusher HTTP API request, built as the Node SDK does.
pub fn signed_query(method: &str, path: &str, body: &str, secret: &str, timestamp: i64) -> String {
    signed_query_at(KEY, secret, method, path, body, timestamp)
}

/// The same for another app's credentials, signed now.
pub fn signed_query_as(key: &str, secret: &str, method: &str, path: &str, body: &str) -> String {
    signed_query_at(key, secret, method, path, body, now())
}

fn signed_query_at(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    body: &str,
    timestamp: i64,
) -> String {
    let mut query = format!("auth_key={key}&auth_timestamp={timestamp}&auth_version=1.0");
    if !body.is_empty() {
        let md5 = hex::encode(Md5::digest(body.as_bytes()));
        query.push_str(&format!("&body_md5={md5}"));
    }
    let signature = hmac_hex(secret, &format!("{method}\n{path}\n{query}"));
    format!("{query}&auth_signature={signature}")
}

pub async fn post_signed(
    addr: SocketAddr,
    path: &str,
    body: &str,
    secret: &str,
    timestamp: i64,
) -> reqwest::Response {
    let query = signed_query("POST", path, body, secret, timestamp);
    reqwest::Client::new()
        .post(format!("http://{addr}{path}?{query}"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request reaches the server")
}

/// `private-` channel auth as a backend would compute it for pusher-js.
pub fn channel_auth(socket_id: &str, channel: &str) -> String {
    client_auth(&format!("{socket_id}:{channel}"))
}

/// `presence-` channel auth over the exact `channel_data` string.
pub fn presence_auth(socket_id: &str, channel: &str, channel_data: &str) -> String {
    client_auth(&format!("{socket_id}:{channel}:{channel_data}"))
}

/// `pusher:signin` auth over the exact `user_data` string.
pub fn signin_auth(socket_id: &str, user_data: &str) -> String {
    client_auth(&format!("{socket_id}::user::{user_data}"))
}

fn client_auth(message: &str) -> String {
    format!("{KEY}:{}", hmac_hex(SECRET, message))
}

/// A signed `GET` with extra query parameters (`k=v&…`, values unescaped as the SDKs sign them).
pub async fn get_signed(addr: SocketAddr, path: &str, extra: &str) -> reqwest::Response {
    let mut query = format!("auth_key={KEY}&auth_timestamp={}&auth_version=1.0", now());
    if !extra.is_empty() {
        query.push('&');
        query.push_str(extra);
    }
    let mut pairs: Vec<&str> = query.split('&').collect();
    pairs.sort_unstable();
    let signature = hmac_hex(SECRET, &format!("GET\n{path}\n{}", pairs.join("&")));
    reqwest::get(format!(
        "http://{addr}{path}?{query}&auth_signature={signature}"
    ))
    .await
    .expect("request reaches the server")
}

/// Drops the test database and deletes the prefix's exchange and durable queues.
pub async fn cleanup_resources(config: &Config) {
    let name = config.database_url.rsplit('/').next().unwrap().to_owned();
    let mut admin = PgConnection::connect(&format!("{PG}/postgres"))
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
    let topology = bus::Topology::new(config.amqp_prefix.clone());
    let connection = bus::connect(AMQP, "test-cleanup").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    for queue in [
        topology.persist_queue(),
        topology.dead_letter_queue(),
        topology.webhook_queue(),
    ] {
        let _ = channel
            .queue_delete(&queue, lapin::options::QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(
            &topology.events_exchange(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await;
    let _ = connection.close(200, "test cleanup").await;
}
