//! `client-events`: M presence channels of G members; every member sends client events at a
//! steady rate (under the 10/s limit) and receives the others'. Reports deliveries/s, latency,
//! lost and duplicated deliveries, echoes to the sender (must be 0), frames without the sender's
//! `user_id`, and server + RabbitMQ CPU per delivery.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::fanout::{close_code, Progress, Received};
use crate::payload::{self, now_us};
use crate::procfs::CpuUsed;
use crate::stats::{rate, thousands, Latency, Report, SeqSet, Tally};
use crate::ws::{self, Subscription, Ws};
use crate::{run_tag, Target};

#[derive(Args)]
pub struct ClientEventsArgs {
    #[arg(long, default_value_t = 100)]
    channels: usize,
    /// Members (connections) per presence channel.
    #[arg(long, default_value_t = 10)]
    members: usize,
    /// Client events per second each member sends (the server allows 10).
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 15)]
    duration: u64,
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
}

struct Member {
    sent: SeqSet,
    received: Received,
    echoes: u64,
    without_user_id: u64,
    errors: u64,
    closed: Option<u16>,
}

struct Plan {
    channel: String,
    period: Duration,
    phase: Duration,
    send_until: Instant,
    payload_bytes: usize,
}

async fn member(
    mut ws: Ws,
    plan: Plan,
    next_seq: Arc<AtomicU64>,
    sent_total: Arc<AtomicU64>,
    progress: Arc<Progress>,
    stop: CancellationToken,
) -> Member {
    let mut me = Member {
        sent: SeqSet::default(),
        received: Received::default(),
        echoes: 0,
        without_user_id: 0,
        errors: 0,
        closed: None,
    };
    let start = Instant::now() + plan.phase;
    let send_until = plan.send_until;
    let mut tick = tokio::time::interval_at(start, plan.period);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = tick.tick(), if Instant::now() < send_until => {
                let seq = next_seq.fetch_add(1, Ordering::Relaxed);
                let data = payload::encode(seq, now_us(), plan.payload_bytes);
                let frame = format!(
                    r#"{{"event":"client-bench","channel":"{}","data":{data}}}"#,
                    plan.channel
                );
                if ws.send(Message::Text(frame)).await.is_err() {
                    me.closed = Some(1006);
                    break;
                }
                me.sent.insert(seq);
                sent_total.fetch_add(1, Ordering::Relaxed);
            }
            message = ws.next() => {
                if let Some(Ok(Message::Text(text))) = &message {
                    if text.contains("\"pusher:error\"") {
                        me.errors += 1;
                    } else if let Some((seq, sent)) = payload::decode(text) {
                        if me.sent.contains(seq) {
                            me.echoes += 1;
                        } else {
                            if !text.contains("\"user_id\"") {
                                me.without_user_id += 1;
                            }
                            if me.received.record(seq, sent) {
                                progress.delivered();
                            }
                        }
                    }
                    continue;
                }
                if let Some(code) = close_code(message) {
                    me.closed = Some(code);
                    break;
                }
            }
        }
    }
    me
}

pub async fn run(target: &Target, args: ClientEventsArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.members >= 2, "need at least 2 members per channel");
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    let tag = run_tag();
    let total = args.channels * args.members;
    let channel_name = |i: usize| format!("presence-ce-{tag}-{}", i / args.members);
    let (sockets, open_time) = ws::open_many(target, total, args.connect_concurrency, total, |i| {
        Subscription {
            channel: channel_name(i),
            presence_user: Some(format!("u{i}")),
        }
    })
    .await?;

    let metrics_before = target.metrics().await?;
    let meter = target.cpu_meter()?;
    let cpu_before = meter.sample()?;
    let t0 = now_us();
    let started = Instant::now();
    let next_seq = Arc::new(AtomicU64::new(0));
    let sent_total = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Progress::default());
    let stop = CancellationToken::new();
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let send_until = started + Duration::from_secs(args.duration);
    let members: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, (ws, _))| {
            let plan = Plan {
                channel: channel_name(i),
                period,
                // Spread the members' sends over the period (golden-ratio phases).
                phase: period.mul_f64((i as f64 * 0.618_034) % 1.0),
                send_until,
                payload_bytes: args.payload_bytes,
            };
            tokio::spawn(member(
                ws,
                plan,
                next_seq.clone(),
                sent_total.clone(),
                progress.clone(),
                stop.clone(),
            ))
        })
        .collect();
    // A member that began a send just before the end counts it right after.
    tokio::time::sleep_until(send_until + Duration::from_millis(200)).await;
    let others = (args.members - 1) as u64;
    let expected = sent_total.load(Ordering::Relaxed) * others;
    progress
        .drain(expected, Duration::from_secs(3), Duration::from_secs(20))
        .await;
    let cpu = meter.used(cpu_before, meter.sample()?);
    let window = progress.last_us.load(Ordering::Relaxed).saturating_sub(t0) as f64 / 1e6;
    stop.cancel();

    let mut latencies = Vec::new();
    let (mut sent, mut unique, mut duplicates, mut echoes, mut without_user, mut errors) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let closes = Tally::default();
    for m in members {
        let m = m.await?;
        sent += m.sent.len();
        unique += m.received.seen.len();
        duplicates += m.received.duplicates;
        echoes += m.echoes;
        without_user += m.without_user_id;
        errors += m.errors;
        if let Some(code) = m.closed {
            closes.add(format!("close {code}"), 1);
        }
        latencies.extend(m.received.latencies);
    }
    let expected = sent * others;
    let metrics_after = target.metrics().await?;
    let events_in =
        |text: &str| crate::procfs::metric(text, "switchboard_events_in_total").unwrap_or(0.0);

    let mut report = Report::new(format!(
        "client-events: {} presence channels × {} members, {} events/s each",
        args.channels, args.members, args.rate
    ));
    report.row(
        "connect + subscribe",
        format!("{:.1} s", open_time.as_secs_f64()),
    );
    report.row(
        "client events sent",
        format!(
            "{} in {:.1} s ({}); server counted {} in",
            thousands(sent),
            started.elapsed().as_secs_f64(),
            rate(sent as f64, args.duration as f64),
            thousands((events_in(&metrics_after) - events_in(&metrics_before)) as u64)
        ),
    );
    report.row("deliveries expected", thousands(expected));
    report.row(
        "deliveries received",
        format!(
            "{} ({} over {window:.1} s)",
            thousands(unique),
            rate(unique as f64, window)
        ),
    );
    report.row(
        "lost / duplicated / echoed to sender",
        format!(
            "{} / {duplicates} / {echoes}",
            expected.saturating_sub(unique)
        ),
    );
    report.row(
        "frames without user_id / pusher:error / closes",
        format!("{without_user} / {errors} / {closes}"),
    );
    report.row("send→receive latency", Latency::of(latencies));
    report.row(CpuUsed::LABEL, cpu);
    report.row(
        "server CPU per delivery",
        format!("{:.2} µs", cpu.us_per(unique)),
    );
    Ok(report)
}
