//! The gateway: the only component that speaks HTTP and WebSocket to clients.
//!
//! It authenticates and validates what clients send, turns accepted events into envelopes,
//! publishes them through the confirmed [`bus::Publisher`] and answers only after the confirm.
//! WebSocket sessions register their subscriptions in the dispatcher's [`Registry`].

pub mod apps;
pub mod body;
pub mod channel_auth;
pub mod cluster_webhooks;
pub mod console;
pub mod error;
pub mod forwarded;
pub mod history;
pub mod http_api;
pub mod idempotency;
pub mod offload;
pub mod root;
pub mod segment;
pub mod server;
pub mod tls;
pub mod webhooks;
pub mod websocket;

use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bus::Publisher;
use bytes::Bytes;
use dispatcher::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::Filter;

pub use apps::{AnalyticsChannel, App, Apps, AppsError, Limits};
pub use forwarded::{PeerAddr, TrustedProxy};
pub use history::{History, HistoryConfig};
pub use root::About;
pub use webhooks::{WebhookConfig, Webhooks};

/// Gateway limits and timings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Advertised in `connection_established`; the server pings a client silent this long.
    pub activity_timeout: Duration,
    /// How long the server waits for any frame after its ping before closing with 4201.
    pub pong_timeout: Duration,
    /// Frames queued per socket before it is closed as a slow consumer (4100).
    pub socket_queue_len: usize,
    /// How long a socket's oldest unwritten frame may wait before the socket is closed as a
    /// slow consumer (4100).
    pub socket_max_lag: Duration,
    /// Largest WebSocket frame/message accepted from a client.
    pub max_frame_bytes: usize,
    /// Largest HTTP request body.
    pub max_body_bytes: u64,
    /// How long a cache channel keeps its last event.
    pub cache_ttl: Duration,
    /// Most channels one connection may be subscribed to at once.
    pub max_channels_per_connection: usize,
    /// Proxies whose `X-Forwarded-For` gives the client's address (Segment `ip`).
    pub trusted_proxies: Vec<TrustedProxy>,
    /// How many confirmed idempotency keys the node remembers (the least recently used go).
    pub idempotency_cache_entries: NonZeroUsize,
    /// How long a confirmed idempotency key is remembered (storage's dedup window).
    pub idempotency_window: Duration,
    /// What `GET /` tells a visitor.
    pub about: About,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            activity_timeout: Duration::from_secs(120),
            pong_timeout: Duration::from_secs(30),
            socket_queue_len: 1024,
            socket_max_lag: Duration::from_secs(5),
            max_frame_bytes: 64 * 1024,
            max_body_bytes: 256 * 1024,
            cache_ttl: Duration::from_secs(30 * 60),
            max_channels_per_connection: 100,
            trusted_proxies: Vec::new(),
            idempotency_cache_entries: NonZeroUsize::new(100_000).expect("not zero"),
            idempotency_window: Duration::from_secs(48 * 3600),
            about: About::default(),
        }
    }
}

/// Where the gateway sends what it accepts and asks what it answers: the confirmed publisher,
/// webhooks, and the history (Postgres behind the storage fence).
pub struct Backends {
    pub publisher: Publisher,
    pub webhooks: webhooks::Webhooks,
    pub history: History,
}

/// Everything a request or session needs, shared.
pub struct Gateway {
    pub apps: Apps,
    pub config: GatewayConfig,
    pub publisher: Publisher,
    pub registry: Arc<Registry>,
    /// Channels' events from Postgres.
    pub history: History,
    /// Idempotency keys this node published and had confirmed.
    pub recent_keys: idempotency::RecentKeys,
    /// This node's id: the first half of every socket id it hands out.
    pub node: u32,
    /// The bounded way to the blocking pool for big request bodies.
    pub offload: offload::Offload,
    /// Where webhook events go.
    pub webhooks: webhooks::Webhooks,
    next_socket: AtomicU64,
    shutdown: CancellationToken,
    sessions: TaskTracker,
}

impl Gateway {
    pub fn new(
        apps: Apps,
        config: GatewayConfig,
        backends: Backends,
        registry: Arc<Registry>,
        node: u32,
        shutdown: CancellationToken,
    ) -> Gateway {
        let Backends {
            publisher,
            webhooks,
            history,
        } = backends;
        websocket::register_track_metrics();
        Gateway {
            apps,
            history,
            recent_keys: idempotency::RecentKeys::new(
                config.idempotency_cache_entries,
                config.idempotency_window,
            ),
            config,
            publisher,
            registry,
            node,
            offload: offload::Offload::per_core(),
            webhooks,
            next_socket: AtomicU64::new(1),
            shutdown,
            sessions: TaskTracker::new(),
        }
    }
}

fn with_gateway(
    gateway: Arc<Gateway>,
) -> impl Filter<Extract = (Arc<Gateway>,), Error = Infallible> + Clone {
    warp::any().map(move || gateway.clone())
}

/// The raw query string, empty when there is none.
pub(crate) fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

fn query_param(raw_query: &str, name: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(raw_query)
        .ok()?
        .into_iter()
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// Every client-facing route, with errors rendered by [`error::recover`].
pub fn routes(
    gateway: Arc<Gateway>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    // `/app/{key}` serves stock Pusher clients; `/switchboard/app/{key}` is the same protocol
    // for connections that opt in to Switchboard's extensions (event ids).
    let stock = warp::path!("app" / String).map(|key| (key, false));
    let opted_in = warp::path!("switchboard" / "app" / String).map(|key| (key, true));
    let origin = warp::ext::optional::<PeerAddr>()
        .and(warp::header::optional::<String>("x-forwarded-for"))
        .and(warp::header::optional::<String>("user-agent"))
        .and(with_gateway(gateway.clone()))
        .map(
            |peer: Option<PeerAddr>,
             forwarded: Option<String>,
             user_agent: Option<String>,
             gateway: Arc<Gateway>| websocket::Origin {
                ip: peer.map(|PeerAddr(peer)| {
                    forwarded::client_ip(
                        peer.ip(),
                        forwarded.as_deref(),
                        &gateway.config.trusted_proxies,
                    )
                }),
                user_agent,
            },
        );
    let websocket = stock
        .or(opted_in)
        .unify()
        .and(warp::ws())
        .and(raw_query())
        .and(origin)
        .and(with_gateway(gateway.clone()))
        .map(
            |(key, event_ids): (String, bool),
             ws: warp::ws::Ws,
             query: String,
             origin: websocket::Origin,
             gateway: Arc<Gateway>| {
                let handshake = websocket::Handshake {
                    key,
                    protocol: query_param(&query, "protocol"),
                    event_ids,
                    origin,
                };
                let limit = gateway.config.max_frame_bytes;
                let sessions = gateway.sessions.clone();
                ws.max_frame_size(limit)
                    .max_message_size(limit)
                    .on_upgrade(move |socket| {
                        sessions.track_future(websocket::run(gateway, handshake, socket))
                    })
            },
        )
        .map(warp::Reply::into_response);

    let api = |method: &'static str| {
        warp::path::full()
            .map(|p: warp::path::FullPath| p.as_str().to_owned())
            .and(raw_query())
            .and(warp::header::headers_cloned())
            .map(move |path, query, headers| (method, path, query, headers))
    };
    let limit = gateway.config.max_body_bytes;
    let body = move || body::limited(limit);
    let trigger = warp::path!("apps" / String / "events")
        .and(warp::post())
        .map(|app: String| (Some(app), http_api::Endpoint::Trigger))
        .and(api("POST"))
        .and(body());
    let batch = warp::path!("apps" / String / "batch_events")
        .and(warp::post())
        .map(|app: String| (Some(app), http_api::Endpoint::BatchTrigger))
        .and(api("POST"))
        .and(body());
    let terminate = warp::path!("apps" / String / "users" / String / "terminate_connections")
        .and(warp::post())
        .map(|app: String, user: String| {
            (Some(app), http_api::Endpoint::TerminateConnections(user))
        })
        .or(warp::path!("users" / String / "terminate_connections")
            .and(warp::post())
            .map(|user: String| (None, http_api::Endpoint::TerminateConnections(user))))
        .unify()
        .and(api("POST"))
        .and(body());
    let no_body = || warp::any().map(Bytes::new);
    let channels = warp::path!("apps" / String / "channels")
        .and(warp::get())
        .map(|app: String| (Some(app), http_api::Endpoint::Channels))
        .and(api("GET"))
        .and(no_body());
    let channel = warp::path!("apps" / String / "channels" / String)
        .and(warp::get())
        .map(|app: String, name: String| (Some(app), http_api::Endpoint::Channel(name)))
        .and(api("GET"))
        .and(no_body());
    let users = warp::path!("apps" / String / "channels" / String / "users")
        .and(warp::get())
        .map(|app: String, name: String| (Some(app), http_api::Endpoint::Users(name)))
        .and(api("GET"))
        .and(no_body());
    let history = warp::path!("apps" / String / "channels" / String / "events")
        .and(warp::get())
        .map(|app: String, name: String| (Some(app), http_api::Endpoint::History(name)))
        .and(api("GET"))
        .and(no_body());
    let api_routes = trigger
        .or(batch)
        .unify()
        .or(terminate)
        .unify()
        .or(channels)
        .unify()
        .or(channel)
        .unify()
        .or(users)
        .unify()
        .or(history)
        .unify()
        .and(with_gateway(gateway.clone()))
        .then(
            |(app_id, endpoint),
             (method, path, query, headers),
             body: Bytes,
             gateway: Arc<Gateway>| {
                let request = http_api::ApiRequest {
                    app_id,
                    method,
                    path,
                    query,
                    headers,
                    body,
                };
                http_api::handle(gateway, endpoint, request)
            },
        );

    let about = root::route(gateway.config.about.clone());
    websocket
        .or(api_routes)
        .unify()
        .or(segment::routes(gateway.clone()))
        .unify()
        .or(history::browser_route(gateway))
        .unify()
        .or(about)
        .unify()
        .recover(error::recover)
        .unify()
}

/// Serves the gateway on `listener` until the gateway's shutdown token fires, then closes every
/// WebSocket with 4200 and waits for the sessions (and in-flight requests) to end.
pub async fn serve(listener: server::Listener, gateway: Arc<Gateway>) {
    let service = warp::service(routes(gateway.clone()));
    server::serve(listener, service, gateway.shutdown.clone()).await;
    gateway.sessions.close();
    gateway.sessions.wait().await;
}
