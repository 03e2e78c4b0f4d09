//! `ingest`: events through the signed HTTP API (`events` one at a time, or `batch_events` of
//! 10) or the Segment API (`/v1/batch` of N `track` calls) as fast as possible with K concurrent
//! keep-alive requests; `ws-track`: the same Segment batches as `switchboard:track` frames on K
//! WebSocket connections, each with one batch awaiting its ack at a time. Accepted events/s,
//! then the time until the last accepted event is in Postgres `events`, and a check that every
//! accepted event is stored exactly once. Then the baselines, with the batching the server just
//! used. Against a peer server (`--peer`, persisting nothing) only what was accepted is measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use clap::{Args, ValueEnum};
use sqlx::postgres::PgPoolOptions;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::api::{
    batch_body, requests_on_one_connection, segment_batch_body, trigger_body, Api, Event,
};
use crate::baseline::{self, Shape};
use crate::payload::{self, now_us};
use crate::procfs::CpuUsed;
use crate::stats::{rate, thousands, Latency, Report, SeqSet, Tally};
use crate::windows::{self, Windows};
use crate::{run_tag, ws, Target, PEER_NA};

mod durable;

use durable::{Durable, Persisted};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// `POST /apps/{id}/events`, one event per request.
    Trigger,
    /// `POST /apps/{id}/batch_events`, 10 events per request.
    Batch,
    /// Segment `POST /v1/batch`, `--batch-events` `track` calls per request.
    Segment,
    /// The same batches as `switchboard:track` frames over WebSockets (the `ws-track` scenario).
    #[value(skip)]
    WsTrack,
}

impl Mode {
    fn events_per_request(self, batch_events: u64) -> u64 {
        match self {
            Mode::Trigger => 1,
            Mode::Batch => 10,
            Mode::Segment | Mode::WsTrack => batch_events.max(1),
        }
    }

    /// Where the stored row keeps the payload's sequence number.
    fn stored_seq(self) -> &'static str {
        match self {
            Mode::Trigger | Mode::Batch => "(data->'sb'->>0)::bigint",
            Mode::Segment | Mode::WsTrack => "(data->'properties'->'sb'->>0)::bigint",
        }
    }
}

#[derive(Args)]
pub struct IngestArgs {
    #[arg(long, value_enum, default_value = "batch")]
    mode: Mode,
    #[command(flatten)]
    load: LoadArgs,
}

/// What `ingest` and `ws-track` send, and how the result is checked.
#[derive(Args)]
pub struct LoadArgs {
    /// Events to send (fewer when --duration runs out first).
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Requests (or track frames) in flight at once, each on its own keep-alive connection
    /// (or WebSocket).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Segment events per `/v1/batch` request or `switchboard:track` frame.
    #[arg(long, default_value_t = 10)]
    batch_events: u64,
    /// Most seconds of sending.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// The server's database, read to verify what was persisted (required unless --peer).
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Most seconds to wait for the last event to be persisted.
    #[arg(long, default_value_t = 120)]
    persist_timeout: u64,
    /// Also measure the baselines: RabbitMQ publish with confirms (scratch exchange and queues
    /// on this AMQP URL) and COPY (scratch database on the --database-url server).
    #[arg(long)]
    baseline_amqp_url: Option<String>,
    /// Unconfirmed messages in flight in the RabbitMQ baseline (the server's publisher default).
    #[arg(long, default_value_t = 64)]
    baseline_in_flight: usize,
    /// Requests per second in all (paced: request n is sent at n / rate s, or as soon as one
    /// of the --concurrency connections is free after that); 0 sends as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Also report accepted vs persisted events per window of this many seconds (0: off).
    #[arg(long, default_value_t = 0)]
    window_secs: u64,
}

impl LoadArgs {
    /// The server's database: required against Switchboard; none against a peer server
    /// (`--peer`), which persists nothing, so that only acceptance is measured there.
    fn database_url(&self, mode: Mode, peer: bool) -> anyhow::Result<Option<&str>> {
        if !peer {
            return self
                .database_url
                .as_deref()
                .context("--database-url (or DATABASE_URL) is required unless --peer")
                .map(Some);
        }
        ensure!(
            matches!(mode, Mode::Trigger | Mode::Batch),
            "--peer runs ingest only with --mode trigger or batch"
        );
        ensure!(
            self.baseline_amqp_url.is_none(),
            "--baseline-amqp-url needs Switchboard's batching and database: not with --peer"
        );
        ensure!(
            self.window_secs == 0,
            "--window-secs compares accepted with persisted events: not with --peer"
        );
        Ok(None)
    }
}

struct Sender {
    accepted: Vec<u64>,
    latencies: Vec<u32>,
}

fn channel_of(seq: u64) -> String {
    format!("ingest-{}", seq % 10)
}

pub async fn run(target: &Target, args: IngestArgs) -> anyhow::Result<Report> {
    run_mode(target, args.mode, args.load).await
}

/// `ws-track`: the Segment scenario over `switchboard:track`.
pub async fn ws_track(target: &Target, args: LoadArgs) -> anyhow::Result<Report> {
    run_mode(target, Mode::WsTrack, args).await
}

async fn run_mode(target: &Target, mode: Mode, args: LoadArgs) -> anyhow::Result<Report> {
    let database_url = args.database_url(mode, target.peer)?;
    let name = format!("ingest-{}", run_tag());
    let api = Arc::new(Api::new(target, args.concurrency)?);
    let keep_alive = requests_on_one_connection(
        &api,
        &target.ws_addr.to_string(),
        &format!("{name}-keepalive"),
        5,
    )
    .await?;
    let per_request = mode.events_per_request(args.batch_events);

    let durable = match database_url {
        Some(database_url) => Some(Durable {
            database_url,
            pool: PgPoolOptions::new()
                .max_connections(2)
                .connect(database_url)
                .await
                .context("connecting to the server's database")?,
            metrics_before: target.metrics().await?,
        }),
        None => None,
    };
    let meter = target.cpu_meter()?;
    let cpu_before = meter.sample()?;
    let started = Instant::now();
    let t0 = now_us();
    let next = Arc::new(AtomicU64::new(0));
    let accepted_so_far = Arc::new(AtomicU64::new(0));
    let (stop_windows, windows_stopped) = watch::channel(false);
    let windows = (args.window_secs > 0).then(|| {
        let (target, accepted) = (target.clone(), accepted_so_far.clone());
        let window = Duration::from_secs(args.window_secs);
        tokio::spawn(async move {
            windows::sample(&target, window, started, accepted, windows_stopped).await
        })
    });
    let last_ok_us = Arc::new(AtomicU64::new(t0));
    let failures = Arc::new(Tally::default());
    let deadline = started + Duration::from_secs(args.duration);
    let senders: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let (api, next, accepted_so_far, last_ok_us, failures, name) = (
                api.clone(),
                next.clone(),
                accepted_so_far.clone(),
                last_ok_us.clone(),
                failures.clone(),
                name.clone(),
            );
            let (events, payload_bytes, pace) = (args.events, args.payload_bytes, args.rate);
            let (ws_addr, key) = (target.ws_addr, target.key.clone());
            tokio::spawn(async move {
                let mut me = Sender {
                    accepted: Vec::new(),
                    latencies: Vec::new(),
                };
                let mut socket = match mode {
                    Mode::WsTrack => Some(ws::connect(ws_addr, &key, None).await?.0),
                    Mode::Trigger | Mode::Batch | Mode::Segment => None,
                };
                loop {
                    let first = next.fetch_add(per_request, Ordering::Relaxed);
                    if first >= events || Instant::now() >= deadline {
                        break;
                    }
                    if pace > 0.0 {
                        let due = (first / per_request) as f64 / pace;
                        tokio::time::sleep_until(started + Duration::from_secs_f64(due)).await;
                    }
                    let seqs = first..(first + per_request).min(events);
                    let channels: Vec<String> = seqs.clone().map(channel_of).collect();
                    let event = |seq: u64, channel| Event {
                        channel,
                        name: &name,
                        data: payload::encode(seq, now_us(), payload_bytes),
                    };
                    let events = seqs.clone().zip(&channels).map(|(s, c)| (s, event(s, c)));
                    let sent = now_us();
                    let outcome = match mode {
                        Mode::Trigger => {
                            api.post("events", trigger_body(event(first, &channels[0])))
                                .await
                        }
                        Mode::Batch => {
                            let body = batch_body(events.map(|(_, e)| e).collect());
                            api.post("batch_events", body).await
                        }
                        Mode::Segment => {
                            let body = segment_batch_body(events.collect());
                            api.post_segment_batch(body).await
                        }
                        Mode::WsTrack => {
                            let body = segment_batch_body(events.collect());
                            let socket = socket.as_mut().expect("connected above");
                            ws::track(socket, &body, seqs.clone().count()).await
                        }
                    };
                    let done = now_us();
                    me.latencies
                        .push(u32::try_from(done - sent).unwrap_or(u32::MAX));
                    match outcome {
                        Ok(()) => {
                            accepted_so_far
                                .fetch_add(seqs.clone().count() as u64, Ordering::Relaxed);
                            me.accepted.extend(seqs);
                            last_ok_us.fetch_max(done, Ordering::Relaxed);
                        }
                        Err(refused) => failures.add(refused.kind(), seqs.count() as u64),
                    }
                }
                anyhow::Ok(me)
            })
        })
        .collect();
    let mut accepted = SeqSet::with_capacity(args.events);
    let mut latencies = Vec::new();
    for sender in senders {
        let s = sender.await??;
        s.accepted.into_iter().for_each(|seq| {
            accepted.insert(seq);
        });
        latencies.extend(s.latencies);
    }
    let accept_seconds = (last_ok_us.load(Ordering::Relaxed) - t0) as f64 / 1e6;
    let accepted_count = accepted.len();

    let persisted = match &durable {
        Some(durable) => {
            let timeout = Duration::from_secs(args.persist_timeout);
            let persisted = durable.wait_persisted(target, &name, accepted_count, timeout, started);
            Some(persisted.await?)
        }
        None => None,
    };
    let cpu = meter.used(cpu_before, meter.sample()?);
    let _ = stop_windows.send(true);
    let windows = match windows {
        Some(sampler) => Some(Windows(sampler.await??)),
        None => None,
    };
    let audit = match durable.as_ref().zip(persisted) {
        Some((durable, persisted)) => Some(
            durable
                .audit(target, mode, &name, &accepted, persisted)
                .await?,
        ),
        None => None,
    };

    let k = args.concurrency;
    let sent = match mode {
        Mode::Trigger => "ingest: events (1 per request)".to_owned(),
        Mode::Batch => "ingest: batch_events of 10".to_owned(),
        Mode::Segment => format!("ingest: Segment /v1/batch of {per_request} track calls"),
        Mode::WsTrack => format!("ws-track: switchboard:track frames of {per_request} track calls"),
    };
    let mut report = Report::new(match mode {
        Mode::WsTrack => format!("{sent} on {k} WebSockets, one awaiting its ack on each"),
        Mode::Trigger | Mode::Batch | Mode::Segment => {
            format!("{sent} with {k} concurrent keep-alive requests")
        }
    });
    report.row(
        "HTTP keep-alive",
        if keep_alive == 5 {
            "yes: 5 signed triggers answered 200 on one connection".to_owned()
        } else {
            format!("NO: the server closed the connection after {keep_alive} request(s)")
        },
    );
    report.row(
        "accepted",
        format!(
            "{} events in {accept_seconds:.2} s: {}; refused: {failures}",
            thousands(accepted_count),
            rate(accepted_count as f64, accept_seconds)
        ),
    );
    report.row("request latency", Latency::of(latencies));
    report.row(
        "persisted (last accepted event in Postgres)",
        audit.as_ref().map_or(PEER_NA.to_owned(), |audit| {
            let Persisted { stored, seconds } = audit.persisted;
            if stored as u64 >= accepted_count {
                format!(
                    "after {seconds:.2} s: {}",
                    rate(accepted_count as f64, seconds)
                )
            } else {
                format!("NOT ALL: {stored} of {accepted_count} rows after {seconds:.1} s")
            }
        }),
    );
    report.row(
        "stored exactly once",
        audit.as_ref().map_or(PEER_NA.to_owned(), |audit| {
            format!(
                "{} of {}; missing {}, duplicated {}, not accepted but stored {}",
                thousands(audit.present),
                thousands(accepted_count),
                accepted_count - audit.present,
                audit.duplicates,
                audit.unexpected
            )
        }),
    );
    report.row(
        "server batching (mean)",
        audit.as_ref().map_or(PEER_NA.to_owned(), |audit| {
            format!(
                "{:.1} envelopes per AMQP message, {:.1} per INSERT",
                audit.publish_batch, audit.persist_batch
            )
        }),
    );
    if let Some(windows) = windows {
        report.row(
            &format!("accepted vs persisted per {} s", args.window_secs),
            format!("\n{windows}"),
        );
    }
    if args.rate > 0.0 {
        report.row(
            "offered rate",
            format!(
                "{} requests/s ({} events/s)",
                args.rate,
                args.rate * per_request as f64
            ),
        );
    }
    report.row(CpuUsed::LABEL, cpu);
    report.row(
        "CPU per event",
        if target.peer {
            format!(
                "server {:.1} µs (no broker, no database)",
                cpu.us_per(accepted_count)
            )
        } else {
            format!(
                "switchboard + RabbitMQ {:.1} µs, Postgres {:.1} µs",
                cpu.us_per(accepted_count),
                cpu.database * 1e6 / accepted_count.max(1) as f64
            )
        },
    );

    if let (Some(amqp_url), Some(durable), Some(audit)) =
        (&args.baseline_amqp_url, &durable, &audit)
    {
        let events = accepted_count.max(10_000);
        let amqp_shape = Shape {
            batch: (audit.publish_batch.round() as usize).max(1),
            payload_bytes: args.payload_bytes,
        };
        let amqp = baseline::amqp(
            amqp_url,
            target.broker_pid()?,
            events,
            amqp_shape,
            args.baseline_in_flight,
            Duration::from_secs(60),
        )
        .await
        .context("RabbitMQ baseline")?;
        let accepted_rate = accepted_count as f64 / accept_seconds;
        let amqp_rate = amqp.envelopes as f64 / amqp.seconds;
        report.row(
            "baseline: RabbitMQ confirms (lapin)",
            format!(
                "{} envelopes/s ({} per message, {} in flight, {} failed; RabbitMQ {:.1} µs CPU/envelope)",
                thousands(amqp_rate as u64),
                amqp_shape.batch,
                args.baseline_in_flight,
                amqp.failed,
                amqp.broker_cpu * 1e6 / amqp.envelopes.max(1) as f64
            ),
        );
        let copy_shape = Shape {
            batch: (audit.persist_batch.round() as usize).max(1),
            payload_bytes: args.payload_bytes,
        };
        let copy = baseline::copy(durable.database_url, events, copy_shape)
            .await
            .context("COPY baseline")?;
        let persisted_rate = accepted_count as f64 / audit.persisted.seconds;
        let copy_rate = copy.rows as f64 / copy.seconds;
        report.row(
            "baseline: Postgres COPY into events",
            format!(
                "{} rows/s ({} rows per transaction; Postgres {:.1} µs CPU/row)",
                thousands(copy_rate as u64),
                copy_shape.batch,
                copy.database_cpu * 1e6 / copy.rows.max(1) as f64
            ),
        );
        report.row(
            "ratios",
            format!(
                "accepted / RabbitMQ baseline = {:.2}; persisted / COPY baseline = {:.2}",
                accepted_rate / amqp_rate,
                persisted_rate / copy_rate
            ),
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        ingest: IngestArgs,
    }

    /// `ingest` arguments, without a database unless they name one (whatever DATABASE_URL says).
    fn ingest(args: &[&str]) -> IngestArgs {
        let mut ingest =
            Command::try_parse_from(std::iter::once("ingest").chain(args.iter().copied()))
                .unwrap()
                .ingest;
        if !args.contains(&"--database-url") {
            ingest.load.database_url = None;
        }
        ingest
    }

    fn database_url(args: &[&str], peer: bool) -> anyhow::Result<Option<String>> {
        let ingest = ingest(args);
        Ok(ingest
            .load
            .database_url(ingest.mode, peer)?
            .map(str::to_owned))
    }

    #[test]
    fn switchboard_needs_its_database() {
        let error = database_url(&["--mode", "trigger"], false).unwrap_err();
        assert!(error.to_string().contains("--database-url"), "{error}");
        assert_eq!(
            database_url(&["--database-url", "postgres://db/x"], false).unwrap(),
            Some("postgres://db/x".to_owned())
        );
    }

    #[test]
    fn a_peer_is_measured_on_acceptance_only() {
        for mode in ["trigger", "batch"] {
            assert_eq!(database_url(&["--mode", mode], true).unwrap(), None);
        }
        // A database named anyway (DATABASE_URL in the environment) is not read.
        assert_eq!(
            database_url(&["--database-url", "postgres://db/x"], true).unwrap(),
            None
        );
        for (args, refused) in [
            (&["--mode", "segment"][..], "--mode"),
            (&["--baseline-amqp-url", "amqp://mq"], "--baseline-amqp-url"),
            (&["--window-secs", "5"], "--window-secs"),
        ] {
            let error = database_url(args, true).unwrap_err();
            assert!(error.to_string().contains(refused), "{error}");
        }
    }
}
