//! `webhook-delivery`: WebSocket clients, one per private channel, send `client-*` events; the
//! app's webhook (`[[apps.webhooks]]`, `event_types = ["client_event", …]`) points at a minimal
//! receiver inside the bench that answers 200 at once and counts the events of each JSON body.
//! Reports webhook events/s delivered end to end, requests/s and events per request, as a ratio
//! against RabbitMQ publish with confirms of the same events in the same run.
//!
//! `webhook-cost`: the fan-out scenario twice in one run, first on an app without webhooks, then
//! on an app whose webhook wants only types a fan-out on public channels never produces; reports
//! the ratios of delivered events/s and of p99 latency.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use protocol::signature::{channel_string_to_sign, sign};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use warp::Filter;

use crate::baseline::{self, Shape};
use crate::fanout::{self, FanoutArgs, Progress, Received};
use crate::payload::{self, now_us};
use crate::stats::{rate, thousands, Latency, Report};
use crate::{run_tag, ws, Target};

#[derive(Args)]
pub struct DeliveryArgs {
    /// Where the receiver listens: the address the app's webhook URL names.
    #[arg(long, default_value = "127.0.0.1:6081")]
    receiver: SocketAddr,
    /// Connections, each on a private channel of its own, sending client events.
    #[arg(long, default_value_t = 50)]
    channels: usize,
    /// Client events per second over all connections; 0: as fast as the sockets take them.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Seconds of sending (at most `--events` events).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Size of each event's data, bytes.
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// RabbitMQ for the baseline (the run's vhost); no baseline without it.
    #[arg(long)]
    baseline_amqp_url: Option<String>,
    /// Unconfirmed messages at once in the baseline.
    #[arg(long, default_value_t = 16)]
    baseline_in_flight: usize,
}

/// What the receiver counted.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    events: AtomicU64,
    /// Events of this run (their data carries a sequence number), by sequence number.
    received: Mutex<Received>,
    progress: Progress,
}

impl Tally {
    fn take(&self, body: &[u8]) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(body) else {
            return;
        };
        let events = body["events"].as_array().map_or(&[][..], Vec::as_slice);
        self.events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        let mut received = self.received.lock().expect("receiver tally");
        for event in events {
            let decoded = event["data"].as_str().and_then(payload::decode);
            if let Some((seq, sent)) = decoded {
                if received.record(seq, sent) {
                    self.progress.delivered();
                }
            }
        }
    }
}

/// The receiver: every POST is counted and answered 200 with an empty body.
fn serve_receiver(
    addr: SocketAddr,
    tally: Arc<Tally>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let route = warp::post()
        .and(warp::body::bytes())
        .map(move |body: bytes::Bytes| {
            tally.take(&body);
            warp::reply()
        });
    let (_, server) = warp::serve(route)
        .try_bind_with_graceful_shutdown(addr, async move { stop.cancelled().await })
        .with_context(|| format!("binding the webhook receiver on {addr}"))?;
    Ok(tokio::spawn(server))
}

/// `auth` for a private subscription: `key:hex(hmac(secret, socket_id:channel))`.
fn private_auth(key: &str, secret: &str, socket_id: &str, channel: &str) -> String {
    let signed = channel_string_to_sign(socket_id, channel, None);
    format!("{key}:{}", sign(secret, signed.as_bytes()))
}

pub async fn delivery(target: &Target, args: DeliveryArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.channels > 0, "need channels");
    let tag = run_tag();
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let receiver = serve_receiver(args.receiver, tally.clone(), stop.clone())?;

    let mut sockets = Vec::with_capacity(args.channels);
    for i in 0..args.channels {
        let channel = format!("private-webhook-{tag}-{i}");
        let (mut ws, socket_id) = ws::connect(target.ws_addr, &target.key, None).await?;
        let auth = private_auth(&target.key, &target.secret, &socket_id, &channel);
        ws::subscribe(&mut ws, &channel, Some(&auth), None).await?;
        sockets.push((ws, channel));
    }

    let total = if args.rate > 0 {
        (args.rate * args.duration).min(args.events)
    } else {
        args.events
    };
    let metrics_before = target.metrics().await?;
    let meter = target.cpu_meter()?;
    let cpu_before = meter.sample()?;
    let t0 = now_us();
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = sockets
        .into_iter()
        .map(|(ws, channel)| {
            let (next, errors, stop) = (next.clone(), errors.clone(), stop.clone());
            let (rate, duration, payload_bytes) = (args.rate, args.duration, args.payload_bytes);
            tokio::spawn(async move {
                let (mut sink, mut stream) = ws.split();
                // Anything the server sends back (an error, a close) is counted, not awaited.
                let reader = tokio::spawn(async move {
                    let mut frames = 0u64;
                    while let Some(Ok(message)) = stream.next().await {
                        frames += u64::from(matches!(message, Message::Text(_)));
                    }
                    frames
                });
                let mut sent = 0u64;
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= total || started.elapsed() >= Duration::from_secs(duration + 10) {
                        break;
                    }
                    if let Some(at) = (seq * 1_000_000_000).checked_div(rate) {
                        tokio::time::sleep_until(started + Duration::from_nanos(at)).await;
                    }
                    let data = payload::encode(seq, now_us(), payload_bytes);
                    let frame = format!(
                        r#"{{"event":"client-bench","channel":"{channel}","data":{data}}}"#
                    );
                    if sink.send(Message::Text(frame)).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    sent += 1;
                }
                stop.cancelled().await;
                let _ = sink.close().await;
                reader.abort();
                sent
            })
        })
        .collect();
    // Every event is sent once the counter passed the total (or the time ran out).
    while next.load(Ordering::Relaxed) < total
        && started.elapsed() < Duration::from_secs(args.duration + 10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let send_seconds = started.elapsed().as_secs_f64();
    let sent = next.load(Ordering::Relaxed).min(total);
    tally
        .progress
        .drain(sent, Duration::from_secs(5), Duration::from_secs(120))
        .await;
    let cpu = meter.used(cpu_before, meter.sample()?);
    let last_us = tally.progress.last_us.load(Ordering::Relaxed);
    let metrics_after = target.metrics().await?;
    stop.cancel();
    let mut sent_total = 0;
    for sender in senders {
        sent_total += sender.await?;
    }
    receiver.await?;

    let delta = |name: &str| {
        crate::procfs::metric(&metrics_after, name).unwrap_or(0.0)
            - crate::procfs::metric(&metrics_before, name).unwrap_or(0.0)
    };
    let received = std::mem::take(&mut *tally.received.lock().expect("receiver tally"));
    let unique = received.seen.len();
    let requests = tally.requests.load(Ordering::Relaxed);
    let events = tally.events.load(Ordering::Relaxed);
    let window = last_us.saturating_sub(t0) as f64 / 1e6;
    let per_second = unique as f64 / window.max(1e-9);
    let per_request = events as f64 / requests.max(1) as f64;

    let mut report = Report::new(format!(
        "webhook-delivery: {} private channels / {} / {} B data, worker batching defaults",
        args.channels,
        if args.rate > 0 {
            format!("{} client events/s offered", args.rate)
        } else {
            "as fast as possible".to_owned()
        },
        args.payload_bytes
    ));
    report.row(
        "client events sent",
        format!(
            "{} in {send_seconds:.1} s ({}); send errors: {}",
            thousands(sent_total),
            rate(sent_total as f64, send_seconds),
            errors.load(Ordering::Relaxed)
        ),
    );
    report.row(
        "webhook events delivered",
        format!(
            "{} of {} ({} over {window:.1} s); duplicates {}",
            thousands(unique),
            thousands(sent_total),
            rate(unique as f64, window),
            received.duplicates
        ),
    );
    report.row(
        "webhook requests",
        format!(
            "{} ({}), {per_request:.1} events per request",
            thousands(requests),
            rate(requests as f64, window)
        ),
    );
    report.row("send→receiver latency", Latency::of(received.latencies));
    report.row(
        "server: webhook events dropped Δ",
        delta("switchboard_webhook_events_dropped_total"),
    );
    report.row(crate::procfs::CpuUsed::LABEL, cpu);
    report.row(
        "server CPU per webhook event",
        format!("{:.2} µs", cpu.us_per(unique)),
    );
    if let Some(url) = &args.baseline_amqp_url {
        let shape = Shape {
            batch: (per_request.round() as usize).max(1),
            payload_bytes: args.payload_bytes,
        };
        let amqp = baseline::amqp(
            url,
            target.broker_pid()?,
            unique.max(10_000),
            shape,
            args.baseline_in_flight,
            Duration::from_secs(60),
        )
        .await
        .context("RabbitMQ baseline")?;
        let amqp_rate = amqp.envelopes as f64 / amqp.seconds;
        report.row(
            "baseline: RabbitMQ confirms (lapin)",
            format!(
                "{} events/s ({} per message, {} in flight, {} failed)",
                thousands(amqp_rate as u64),
                shape.batch,
                args.baseline_in_flight,
                amqp.failed
            ),
        );
        report.row(
            "webhook events/s ÷ baseline",
            format!("{:.3}", per_second / amqp_rate),
        );
    }
    Ok(report)
}

#[derive(Args)]
pub struct CostArgs {
    #[command(flatten)]
    fanout: FanoutArgs,
    /// The app without webhooks (otherwise configured like the app under test: --app-id, …).
    #[arg(long, default_value = "fanout-plain")]
    plain_app_id: String,
    #[arg(long, default_value = "fanout-plain-key")]
    plain_key: String,
    #[arg(long, default_value = "fanout-plain-secret")]
    plain_secret: String,
    /// Pairs of runs (without, with a webhook); the order alternates from one pair to the next,
    /// so a warm-up or a drift of the machine favours neither side.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

pub async fn cost(target: &Target, args: CostArgs) -> anyhow::Result<Report> {
    let plain_target = Target {
        app_id: args.plain_app_id,
        key: args.plain_key,
        secret: args.plain_secret,
        server_pids: target.server_pids.clone(),
        admin_client: reqwest::Client::new(),
        http: target.http.clone(),
        ws_addrs: target.ws_addrs.clone(),
        admin: target.admin.clone(),
        ..*target
    };
    let mut text = format!(
        "webhook-cost: fan-out on app {} (no webhooks) and on app {} (a webhook for types the fan-out never produces), {} alternating pairs\n",
        plain_target.app_id,
        target.app_id,
        args.rounds.max(1)
    );
    let mut throughput = Vec::new();
    let mut p99 = Vec::new();
    let mut cpu = Vec::new();
    for round in 0..args.rounds.max(1) {
        let hooked_first = round % 2 == 1;
        let run = |t| fanout::measure(t, &args.fanout);
        let ((plain_report, plain), (hooked_report, hooked)) = if hooked_first {
            let hooked = run(target).await?;
            (run(&plain_target).await?, hooked)
        } else {
            let plain = run(&plain_target).await?;
            (plain, run(target).await?)
        };
        text.push_str(&format!(
            "pair {} ({}):\n{plain_report}{hooked_report}",
            round + 1,
            if hooked_first {
                "with first"
            } else {
                "without first"
            }
        ));
        throughput.push(hooked.delivered_per_second / plain.delivered_per_second);
        p99.push(f64::from(hooked.latency.p99) / f64::from(plain.latency.p99.max(1)));
        cpu.push(hooked.cpu_per_delivery_us / plain.cpu_per_delivery_us);
    }
    let mut report = Report::new(text);
    for (name, ratios) in [
        ("delivered/s with ÷ without webhook", throughput),
        ("p99 latency with ÷ without webhook", p99),
        ("server CPU per delivery with ÷ without webhook", cpu),
    ] {
        report.row(name, ratio_summary(ratios));
    }
    Ok(report)
}

/// The median of the ratios, then each one.
fn ratio_summary(mut ratios: Vec<f64>) -> String {
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    format!("median {median:.3} (each pair: {})", each.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receiver_counts_events_and_duplicates_of_this_run() {
        let tally = Tally::default();
        let data = |seq| payload::encode(seq, now_us(), 60);
        let body = serde_json::json!({"time_ms": 1, "events": [
            {"name": "client_event", "channel": "private-a", "event": "client-bench", "data": data(0)},
            {"name": "client_event", "channel": "private-a", "event": "client-bench", "data": data(1)},
            {"name": "cache_miss", "channel": "cache-x"},
        ]});
        tally.take(body.to_string().as_bytes());
        tally.take(body.to_string().as_bytes());
        tally.take(b"not json");
        let received = tally.received.lock().unwrap();
        assert_eq!(tally.requests.load(Ordering::Relaxed), 3);
        assert_eq!(tally.events.load(Ordering::Relaxed), 6);
        assert_eq!((received.seen.len(), received.duplicates), (2, 2));
        assert_eq!(tally.progress.received.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn private_auth_matches_the_protocol_vector() {
        assert_eq!(
            private_auth(
                "278d425bdf160c739803",
                "7ad3773142a6692b25b8",
                "1234.1234",
                "private-foobar"
            ),
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
    }
}
