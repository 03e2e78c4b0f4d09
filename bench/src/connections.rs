//! `connections`: N idle connections, each subscribed to one channel; how long opening them takes
//! and how much server memory (VmRSS) each holds. Every connection answers a `pusher:ping` at the
//! end, so none was silently dropped.

use std::time::Duration;

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::stats::{rate, thousands, Report};
use crate::ws::{self, Subscription, Ws};
use crate::{run_tag, Target, PEER_NA};

#[derive(Args)]
pub struct ConnectionsArgs {
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Channels the connections are spread over.
    #[arg(long, default_value_t = 100)]
    channels: usize,
    /// WebSocket handshakes in flight at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Connections per source address (127.0.0.2, .3, … beyond it).
    #[arg(long, default_value_t = 20_000)]
    per_source: usize,
    /// Seconds to let the server settle before reading its memory.
    #[arg(long, default_value_t = 2)]
    settle: u64,
}

const PONG_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `pusher:ping` and waits for `pusher:pong`; gives the socket back to keep it open.
async fn ping(mut ws: Ws) -> (Ws, bool) {
    let ping = r#"{"event":"pusher:ping","data":{}}"#.to_owned();
    let answered = async {
        ws.send(Message::Text(ping)).await.ok()?;
        loop {
            if let Message::Text(text) = ws.next().await?.ok()? {
                if text.contains("pusher:pong") {
                    return Some(());
                }
            }
        }
    };
    let ok = tokio::time::timeout(PONG_TIMEOUT, answered)
        .await
        .is_ok_and(|a| a.is_some());
    (ws, ok)
}

/// Switchboard's count of open connections; none against a peer server (`--peer`).
async fn connections_gauge(target: &Target) -> anyhow::Result<Option<f64>> {
    Ok(target
        .switchboard_metrics()
        .await?
        .map(|text| crate::procfs::metric(&text, "switchboard_connections").unwrap_or(0.0)))
}

pub async fn run(target: &Target, args: ConnectionsArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.channels > 0, "need at least one channel");
    let tag = run_tag();
    let own_before = crate::procfs::rss_kib(std::process::id())?;
    let rss_before = target.server_rss_kib()?;
    let gauge_before = connections_gauge(target).await?;
    let (sockets, took) = ws::open_many(
        target,
        args.connections,
        args.connect_concurrency,
        args.per_source,
        |i| Subscription {
            channel: format!("idle-{tag}-{}", i % args.channels),
            presence_user: None,
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let rss_open = target.server_rss_kib()?;
    let own_open = crate::procfs::rss_kib(std::process::id())?;
    let gauge_open = connections_gauge(target).await?;

    let mut pings = JoinSet::new();
    for (ws, _) in sockets {
        pings.spawn(ping(ws));
    }
    let mut alive = Vec::with_capacity(args.connections);
    let mut answered = 0usize;
    while let Some(result) = pings.join_next().await {
        let (ws, ok) = result?;
        answered += usize::from(ok);
        alive.push(ws);
    }
    drop(alive);
    tokio::time::sleep(Duration::from_secs(args.settle + 1)).await;
    let rss_closed = target.server_rss_kib()?;
    let gauge_closed = connections_gauge(target).await?;

    let n = args.connections as f64;
    let sources = ws::source_address(args.connections - 1, args.connections, args.per_source)
        .map_or("127.0.0.1".to_owned(), |last| format!("127.0.0.2 … {last}"));
    let mut report = Report::new(format!(
        "connections: {} idle subscribed connections over {} channels",
        thousands(args.connections as u64),
        args.channels
    ));
    report.row(
        "time to open + subscribe",
        format!(
            "{:.1} s ({}), source addresses {sources}",
            took.as_secs_f64(),
            rate(n, took.as_secs_f64())
        ),
    );
    report.row(
        "server connections gauge",
        match (gauge_before, gauge_open, gauge_closed) {
            (Some(before), Some(open), Some(closed)) => {
                format!("{before} before, {open} open, {closed} after closing")
            }
            _ => PEER_NA.to_owned(),
        },
    );
    report.row(
        "server RSS before / open / after closing",
        format!(
            "{} / {} / {} KiB",
            thousands(rss_before),
            thousands(rss_open),
            thousands(rss_closed)
        ),
    );
    report.row(
        "server RSS per connection",
        format!("{:.1} KiB", rss_open.saturating_sub(rss_before) as f64 / n),
    );
    report.row(
        "bench RSS per connection",
        format!("{:.1} KiB", own_open.saturating_sub(own_before) as f64 / n),
    );
    report.row(
        "answered pusher:ping at the end",
        format!(
            "{} of {}",
            thousands(answered as u64),
            thousands(args.connections as u64)
        ),
    );
    Ok(report)
}
