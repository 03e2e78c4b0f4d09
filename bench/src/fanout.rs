//! `fanout`: N subscribers over C channels; events triggered over the signed HTTP API at a rate
//! (or as fast as possible), each carrying its sequence number and send time. Every subscriber
//! records what it receives: deliveries/s, publish→receive latency, lost and duplicated
//! deliveries, and who was closed by the server; server + RabbitMQ CPU per delivery (the
//! server's alone with `--peer`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::api::{trigger_body, Api, Event};
use crate::payload::{self, now_us};
use crate::procfs::CpuUsed;
use crate::stats::{rate, thousands, Latency, Report, Tally};
use crate::ws::{self, Subscription, Ws};
use crate::{run_tag, Target, PEER_NA};

#[derive(Args)]
pub struct FanoutArgs {
    #[arg(long, default_value_t = 5000)]
    subscribers: usize,
    #[arg(long, default_value_t = 10)]
    channels: usize,
    /// Events per second over all channels (round robin); 0: as fast as possible.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// With --rate 0: at most this many events.
    #[arg(long, default_value_t = 100_000)]
    max_events: u64,
    /// Trigger requests in flight at once (keep-alive connections).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Size of each event's data, bytes.
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// WebSocket handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Connections per source address (127.0.0.2, .3, … beyond it).
    #[arg(long, default_value_t = 20_000)]
    per_source: usize,
}

/// What one subscriber saw, by the sequence number's index within its channel.
#[derive(Default)]
pub struct Received {
    pub seen: crate::stats::SeqSet,
    pub duplicates: u64,
    pub latencies: Vec<u32>,
}

impl Received {
    /// Records a delivery of `index` sent at `sent_us`; false for a duplicate.
    pub fn record(&mut self, index: u64, sent_us: u64) -> bool {
        if self.seen.insert(index) {
            let latency = now_us().saturating_sub(sent_us);
            self.latencies
                .push(u32::try_from(latency).unwrap_or(u32::MAX));
            true
        } else {
            self.duplicates += 1;
            false
        }
    }
}

/// Counters shared by all receivers, to know when everything arrived.
#[derive(Default)]
pub struct Progress {
    pub received: AtomicU64,
    pub last_us: AtomicU64,
}

impl Progress {
    pub fn delivered(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.last_us.fetch_max(now_us(), Ordering::Relaxed);
    }

    /// Waits until `expected` deliveries arrived, or nothing arrived for `stall`, at most `cap`.
    pub async fn drain(&self, expected: u64, stall: Duration, cap: Duration) {
        let started = Instant::now();
        let mut seen = self.received.load(Ordering::Relaxed);
        let mut last_change = Instant::now();
        while started.elapsed() < cap {
            let now = self.received.load(Ordering::Relaxed);
            if now >= expected {
                return;
            }
            if now != seen {
                seen = now;
                last_change = Instant::now();
            } else if last_change.elapsed() >= stall {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The close code a subscriber saw (1006 when the connection ended without a close frame).
pub fn close_code(
    message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Option<u16> {
    match message {
        Some(Ok(Message::Close(frame))) => Some(frame.map_or(1005, |f| u16::from(f.code))),
        Some(Ok(_)) => None,
        Some(Err(_)) | None => Some(1006),
    }
}

struct Subscriber {
    channel: usize,
    received: Received,
    closed: Option<u16>,
    wrong_channel: u64,
}

async fn receive(
    mut ws: Ws,
    channel: usize,
    channels: u64,
    stop: CancellationToken,
    progress: Arc<Progress>,
) -> Subscriber {
    let mut me = Subscriber {
        channel,
        received: Received::default(),
        closed: None,
        wrong_channel: 0,
    };
    loop {
        let message = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            message = ws.next() => message,
        };
        if let Some(Ok(Message::Text(text))) = &message {
            if let Some((seq, sent)) = payload::decode(text) {
                if seq % channels != channel as u64 {
                    me.wrong_channel += 1;
                } else if me.received.record(seq / channels, sent) {
                    progress.delivered();
                }
            }
            continue;
        }
        if let Some(code) = close_code(message) {
            me.closed = Some(code);
            break;
        }
    }
    me
}

/// What other scenarios compare between fan-out runs.
pub struct Outcome {
    pub delivered_per_second: f64,
    pub latency: Latency,
    /// Server + RabbitMQ CPU per delivery, µs.
    pub cpu_per_delivery_us: f64,
}

pub async fn run(target: &Target, args: FanoutArgs) -> anyhow::Result<Report> {
    Ok(measure(target, &args).await?.0)
}

pub async fn measure(target: &Target, args: &FanoutArgs) -> anyhow::Result<(Report, Outcome)> {
    anyhow::ensure!(
        args.channels > 0 && args.subscribers > 0,
        "need subscribers and channels"
    );
    let tag = run_tag();
    let channel_name = |c: usize| format!("fanout-{tag}-{c}");
    let (sockets, open_time) = ws::open_many(
        target,
        args.subscribers,
        args.connect_concurrency,
        args.per_source,
        |i| Subscription {
            channel: channel_name(i % args.channels),
            presence_user: None,
        },
    )
    .await?;
    let mut per_channel = vec![0u64; args.channels];
    let stop = CancellationToken::new();
    let progress = Arc::new(Progress::default());
    let readers: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, (ws, _))| {
            per_channel[i % args.channels] += 1;
            tokio::spawn(receive(
                ws,
                i % args.channels,
                args.channels as u64,
                stop.clone(),
                progress.clone(),
            ))
        })
        .collect();

    let api = Arc::new(Api::new(target, args.concurrency)?);
    let total_events = if args.rate > 0 {
        args.rate * args.duration
    } else {
        args.max_events
    };
    // Late publishers stop this long after the planned end: the report shows what was not sent.
    let send_deadline = Instant::now() + Duration::from_secs(args.duration + 10);
    let metrics_before = target.switchboard_metrics().await?;
    let meter = target.cpu_meter()?;
    let cpu_before = meter.sample()?;
    let t0 = now_us();
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let accepted: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.channels).map(|_| AtomicU64::new(0)).collect());
    let failures = Arc::new(Tally::default());
    let publishers: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let (api, next, accepted, failures) = (
                api.clone(),
                next.clone(),
                accepted.clone(),
                failures.clone(),
            );
            let channel_names: Vec<String> = (0..args.channels).map(channel_name).collect();
            let (rate, payload_bytes, duration) = (args.rate, args.payload_bytes, args.duration);
            tokio::spawn(async move {
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    let too_late = if rate > 0 {
                        Instant::now() >= send_deadline
                    } else {
                        started.elapsed() >= Duration::from_secs(duration)
                    };
                    if seq >= total_events || too_late {
                        break;
                    }
                    if let Some(at) = (seq * 1_000_000_000).checked_div(rate) {
                        tokio::time::sleep_until(started + Duration::from_nanos(at)).await;
                    }
                    let channel = (seq % channel_names.len() as u64) as usize;
                    let body = trigger_body(Event {
                        channel: &channel_names[channel],
                        name: "bench",
                        data: payload::encode(seq, now_us(), payload_bytes),
                    });
                    match api.post("events", body).await {
                        Ok(()) => {
                            accepted[channel].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(refused) => failures.add(refused.kind(), 1),
                    }
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await?;
    }
    let publish_seconds = started.elapsed().as_secs_f64();
    let accepted: Vec<u64> = accepted.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    let expected: u64 = accepted.iter().zip(&per_channel).map(|(a, n)| a * n).sum();
    progress
        .drain(expected, Duration::from_secs(3), Duration::from_secs(30))
        .await;
    let cpu = meter.used(cpu_before, meter.sample()?);
    let last_us = progress.last_us.load(Ordering::Relaxed);
    stop.cancel();

    let mut latencies = Vec::new();
    let (mut unique, mut duplicates, mut wrong_channel) = (0u64, 0u64, 0u64);
    let (mut lost_open, mut lost_closed) = (0u64, 0u64);
    let closes = Tally::default();
    for reader in readers {
        let s = reader.await?;
        let got = s.received.seen.len();
        let lost = accepted[s.channel].saturating_sub(got);
        match s.closed {
            Some(code) => {
                closes.add(format!("close {code}"), 1);
                lost_closed += lost;
            }
            None => lost_open += lost,
        }
        unique += got;
        duplicates += s.received.duplicates;
        wrong_channel += s.wrong_channel;
        latencies.extend(s.received.latencies);
    }
    let metrics_after = target.switchboard_metrics().await?;
    let window = last_us.saturating_sub(t0) as f64 / 1e6;
    let sent: u64 = accepted.iter().sum::<u64>() + failures.total();

    let mut report = Report::new(format!(
        "fanout: {} subscribers / {} channels / {}",
        args.subscribers,
        args.channels,
        if args.rate > 0 {
            format!("{} events/s offered", args.rate)
        } else {
            "as fast as possible".to_owned()
        }
    ));
    report.row(
        "connect + subscribe",
        format!("{:.1} s", open_time.as_secs_f64()),
    );
    report.row(
        "events sent / accepted",
        format!(
            "{} / {} in {publish_seconds:.1} s ({}); refused: {failures}",
            thousands(sent),
            thousands(accepted.iter().sum()),
            rate(sent as f64, publish_seconds)
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
    report.row("lost on open sockets", thousands(lost_open));
    report.row(
        "lost on sockets the server closed",
        format!("{} (closes: {closes})", thousands(lost_closed)),
    );
    report.row(
        "duplicated / wrong channel",
        format!("{duplicates} / {wrong_channel}"),
    );
    let latency = Latency::of(latencies);
    report.row("publish→receive latency", latency);
    report.row(
        "server: deliveries_total Δ / slow consumers closed Δ",
        match (metrics_before, metrics_after) {
            (Some(before), Some(after)) => {
                let delta = |name: &str| {
                    crate::procfs::metric(&after, name).unwrap_or(0.0)
                        - crate::procfs::metric(&before, name).unwrap_or(0.0)
                };
                format!(
                    "{} / {}",
                    thousands(delta("switchboard_deliveries_total") as u64),
                    delta("switchboard_slow_consumers_closed_total")
                )
            }
            _ => PEER_NA.to_owned(),
        },
    );
    report.row(CpuUsed::LABEL, cpu);
    report.row("server CPU per delivery", {
        let per = |seconds: f64| seconds * 1e6 / unique.max(1) as f64;
        if target.peer {
            format!(
                "{:.2} µs (server only, no broker; {:.2} of it in user space)",
                cpu.us_per(unique),
                per(cpu.server_user)
            )
        } else {
            format!(
                "{:.2} µs (switchboard {:.2}, {:.2} of it in user space, + RabbitMQ {:.2})",
                cpu.us_per(unique),
                per(cpu.server),
                per(cpu.server_user),
                per(cpu.broker)
            )
        }
    });
    let outcome = Outcome {
        delivered_per_second: unique as f64 / window.max(1e-9),
        latency,
        cpu_per_delivery_us: cpu.us_per(unique),
    };
    Ok((report, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_counts_duplicates_once() {
        let mut r = Received::default();
        assert!(r.record(5, now_us()));
        assert!(!r.record(5, now_us()));
        assert!(r.record(6, 0));
        assert_eq!((r.seen.len(), r.duplicates, r.latencies.len()), (2, 1, 2));
    }

    #[test]
    fn close_codes() {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        let frame = CloseFrame {
            code: CloseCode::from(4100),
            reason: "slow".into(),
        };
        assert_eq!(
            close_code(Some(Ok(Message::Close(Some(frame))))),
            Some(4100)
        );
        assert_eq!(close_code(Some(Ok(Message::Close(None)))), Some(1005));
        assert_eq!(close_code(None), Some(1006));
        assert_eq!(close_code(Some(Ok(Message::Ping(vec![])))), None);
    }
}
