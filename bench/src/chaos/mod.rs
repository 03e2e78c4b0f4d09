//! The chaos run (RELIABILITY.md): events of every kind through two gateways and two workers
//! while processes are killed and restarted, each role's RabbitMQ link is cut, Postgres goes
//! away, a gateway is terminated and one subscriber stalls. The verdict holds the promise to
//! account: nothing acknowledged lost, nothing stored twice, nothing missed live by a connection
//! that stayed open.

mod deploy;
mod ledger;
mod producers;
mod subscribers;
mod verify;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use sqlx::{Connection, PgConnection};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::payload;
use crate::stats::{thousands, Latency, Report, Tally};
use deploy::Deployment;
use ledger::{Kind, Ledger};
use subscribers::{Progress, Sample, Seen, Subscriber};

#[derive(Args)]
pub struct ChaosArgs {
    /// The `switchboard` binary to run as gateways and workers.
    #[arg(long)]
    bin: PathBuf,
    /// Events to send in all (HTTP triggers, batch triggers, Segment batches, client events).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Events offered per second.
    #[arg(long, default_value_t = 6_000)]
    rate: u64,
    /// How long Postgres is unreachable.
    #[arg(long, default_value_t = 30)]
    postgres_outage_secs: u64,
    /// How long each RabbitMQ link is cut.
    #[arg(long, default_value_t = 3)]
    link_cut_secs: u64,
    /// Channels the events are spread over; each has two subscribers on each gateway.
    #[arg(long, default_value_t = 16)]
    channels: usize,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    postgres: String,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
    /// Where the processes' logs go (one file per process).
    #[arg(long, default_value = "target/chaos")]
    log_dir: PathBuf,
    /// Keep the run's database and queues afterwards.
    #[arg(long)]
    keep: bool,
    /// Fail when the stall raises the live p99 of the others on its gateway, relative to the
    /// other gateway's, by more than this many percent (10 s after the stall against 10 s before).
    #[arg(long, default_value_t = 10.0)]
    max_stall_effect_pct: f64,
}

/// What every part of the run shares: names, credentials, rates.
pub struct Plan {
    pub tag: String,
    pub app_id: String,
    pub key: String,
    pub secret: String,
    pub channels: usize,
    pub rate: u64,
}

impl Plan {
    pub fn channel_name(&self, channel: u16) -> String {
        format!("private-chaos-{}-{channel}", self.tag)
    }

    pub fn event_name(&self) -> String {
        format!("chaos-{}", self.tag)
    }

    pub fn api_path(&self, endpoint: &str) -> String {
        format!("/apps/{}/{endpoint}", self.app_id)
    }
}

/// The faults, in the order they are injected.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// One subscriber stops reading.
    Stall,
    /// `kill -9` a worker, restart it.
    KillWorker(&'static str),
    /// Cut one process's RabbitMQ connection through its proxy, restore it.
    CutLink(&'static str),
    /// Postgres unreachable for the workers.
    PostgresOutage,
    /// SIGTERM a gateway, start it again.
    Terminate(&'static str),
}

const FAULTS: [Fault; 8] = [
    Fault::Stall,
    Fault::KillWorker("worker-1"),
    Fault::CutLink("gateway-a"),
    Fault::CutLink("gateway-b"),
    Fault::CutLink("worker-1"),
    Fault::CutLink("worker-2"),
    Fault::PostgresOutage,
    Fault::Terminate("gateway-b"),
];

/// How long a process may take to exit after SIGTERM (its shutdown timeout is 10 s).
const EXIT_LIMIT: Duration = Duration::from_secs(15);
/// Window before and after the stall whose latencies are compared.
const STALL_WINDOW: Duration = Duration::from_secs(10);
/// How long the run waits for acknowledged events to be stored after the load ended.
const DRAIN_LIMIT: Duration = Duration::from_secs(180);

/// The timeline of what was done when (seconds since the load started).
#[derive(Default)]
struct Timeline(std::sync::Mutex<Vec<(f64, String)>>);

impl Timeline {
    fn note(&self, started: Instant, what: impl Into<String>) {
        let at = started.elapsed().as_secs_f64();
        self.0.lock().expect("timeline").push((at, what.into()));
    }
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<Report> {
    let tag = crate::run_tag();
    let plan = Arc::new(Plan {
        tag: tag.clone(),
        app_id: "app-id".into(),
        key: "app-key".into(),
        secret: "app-secret".into(),
        channels: args.channels.max(1),
        rate: args.rate.max(10),
    });
    let log_dir = args.log_dir.join(&tag);
    let mut deployment =
        Deployment::new(&args.bin, &log_dir, &tag, &args.postgres, &args.amqp).await?;
    deployment
        .start_all()
        .await
        .context("starting the deployment")?;
    let gateways = deployment.gateways();
    let database_url = deployment.database_url();
    let deployment = Arc::new(Mutex::new(deployment));

    let stop_sampling = CancellationToken::new();
    let memory_high = Arc::new(AtomicU64::new(0));
    let sampler = tokio::spawn(sample_memory(
        deployment.clone(),
        memory_high.clone(),
        stop_sampling.clone(),
    ));

    let progress = Arc::new(Progress::default());
    let stop_subscribers = CancellationToken::new();
    let stall = CancellationToken::new();
    let mut subscriber_tasks = Vec::new();
    for channel in 0..plan.channels as u16 {
        for (gateway, addr) in gateways.iter().enumerate() {
            for _ in 0..2 {
                let subscriber = Subscriber {
                    plan: plan.clone(),
                    channel,
                    gateway,
                    addr: *addr,
                    progress: progress.clone(),
                    stall: None,
                };
                subscriber_tasks.push(tokio::spawn(subscriber.run(stop_subscribers.clone())));
            }
        }
    }
    let stalled = Subscriber {
        plan: plan.clone(),
        channel: 0,
        gateway: StallEffect::EXPOSED_GATEWAY,
        addr: gateways[StallEffect::EXPOSED_GATEWAY],
        progress: progress.clone(),
        stall: Some(stall.clone()),
    };
    subscriber_tasks.push(tokio::spawn(stalled.run(stop_subscribers.clone())));
    let subscribers = subscriber_tasks.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.subscribed.load(Ordering::Relaxed) < subscribers {
        if Instant::now() > deadline {
            bail!("the subscribers did not all subscribe within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let ledger = Arc::new(Ledger::new(args.events));
    let refused = Arc::new(Tally::default());
    let retried = Arc::new(Tally::default());
    let reconnects = Arc::new(Tally::default());
    let stop_senders = CancellationToken::new();
    let senders: Vec<_> = (0..producers::client_senders(plan.rate))
        .map(|index| {
            tokio::spawn(producers::run_client_sender(
                plan.clone(),
                ledger.clone(),
                index,
                gateways[index % gateways.len()],
                refused.clone(),
                reconnects.clone(),
                stop_senders.clone(),
            ))
        })
        .collect();

    let started = Instant::now();
    let timeline = Arc::new(Timeline::default());
    let http = tokio::spawn(producers::run_http(
        plan.clone(),
        ledger.clone(),
        gateways.clone(),
        refused.clone(),
        retried.clone(),
    ));
    let planned = Duration::from_secs_f64(args.events as f64 / plan.rate as f64);
    let outage = Duration::from_secs(args.postgres_outage_secs);
    let cut = Duration::from_secs(args.link_cut_secs);
    let schedule = run_faults(
        deployment.clone(),
        stall,
        planned,
        outage,
        cut,
        started,
        timeline.clone(),
    )
    .await;
    let stall_at_us = schedule?;
    http.await??;
    timeline.note(started, "HTTP load finished");
    stop_senders.cancel();
    for sender in senders {
        sender.await?;
    }
    let load_seconds = started.elapsed().as_secs_f64();
    timeline.note(started, "client events settled");

    // Drain: at least every acknowledged event stored, no new row and no delivery for a while.
    let acked_now = ledger.entries().iter().filter(|e| e.acked).count() as i64;
    let drain_started = Instant::now();
    let mut last_rows = -1;
    loop {
        let rows = verify::row_count(&database_url).await.unwrap_or(0);
        let quiet = payload::now_us()
            .saturating_sub(progress.last_delivery_us.load(Ordering::Relaxed))
            > 2_000_000;
        if rows >= acked_now && rows == last_rows && quiet {
            break;
        }
        last_rows = rows;
        if drain_started.elapsed() > DRAIN_LIMIT {
            timeline.note(
                started,
                format!("drain gave up with {rows} rows of {acked_now}"),
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    stop_subscribers.cancel();
    let mut seen = Seen::default();
    for task in subscriber_tasks {
        let part = task.await?;
        seen.segments.extend(part.segments);
        seen.latencies.extend(part.latencies);
    }
    stop_sampling.cancel();
    sampler.await?;
    deployment.lock().await.stop_all(EXIT_LIMIT).await?;

    let entries = ledger.entries();
    let counts = verify::stored_counts(&database_url, ledger.capacity()).await?;
    let storage = verify::storage(&entries, &counts);
    let live = verify::live(&entries, &seen.segments, plan.channels);
    let deployment = deployment.lock().await;
    let dead_letters = dead_letter_count(&deployment.amqp_url(), &deployment.prefix).await?;

    let mut report = Report::new(format!(
        "chaos: {} events offered at {}/s, 2 gateways + 2 workers",
        thousands(args.events),
        thousands(plan.rate)
    ));
    for (at, what) in timeline.0.lock().expect("timeline").iter() {
        report.row(&format!("t+{at:.1}s"), what);
    }
    report.row(
        "load",
        format!("{load_seconds:.1} s, drain {drain_seconds:.1} s"),
    );
    for kind in Kind::ALL {
        report.row(
            &format!("{} sent / acknowledged", kind.label()),
            format!(
                "{} / {}",
                thousands(storage.sent.get(&kind).copied().unwrap_or(0)),
                thousands(storage.acked.get(&kind).copied().unwrap_or(0))
            ),
        );
    }
    let acked: u64 = storage.acked.values().sum();
    report.row("acknowledged", thousands(acked));
    report.row("stored (distinct)", thousands(storage.stored));
    report.row(
        "stored, not acknowledged",
        thousands(storage.stored_unacked),
    );
    report.row("lost (acknowledged, not stored)", storage.lost.len());
    report.row("duplicated (stored twice)", storage.duplicated.len());
    report.row("dead-lettered", dead_letters);
    report.row("requests retried", &*retried);
    report.row("refused (not retryable)", &*refused);
    report.row("client sender reconnects", &*reconnects);
    report.row(
        "live: connections open to the end",
        format!(
            "{}, {} deliveries expected, {} missed",
            live.measured,
            thousands(live.expected),
            live.missed.len()
        ),
    );
    let closed: Vec<String> = live
        .closed
        .iter()
        .map(|(k, v)| format!("{v} × {k}"))
        .collect();
    report.row("live: connections closed by faults", closed.join(", "));
    let latencies: Vec<u32> = seen.latencies.iter().map(|s| s.latency_us).collect();
    report.row("live latency, whole run", Latency::of(latencies));
    let stall = StallEffect::measure(&seen.latencies, (stall_at_us / 1000) as u32);
    report.row("live latency 10 s before the stall", stall.before);
    report.row("live latency 10 s after the stall", stall.after);
    report.row(
        "stalled subscriber's gateway, p99 before / after",
        format!("{} / {} µs", stall.exposed.0, stall.exposed.1),
    );
    report.row(
        "other gateway (control), p99 before / after",
        format!("{} / {} µs", stall.control.0, stall.control.1),
    );
    let effect = stall.effect();
    report.row(
        "stalled subscriber's effect on p99",
        format!("{:+.1} % (against the control gateway)", effect * 100.0),
    );
    let per_process: Vec<String> = deployment
        .processes
        .iter()
        .map(|p| format!("{} {} MiB", p.name, p.rss_high_kib() / 1024))
        .collect();
    report.row("memory high-water", per_process.join(", "));
    report.row(
        "memory high-water, all processes together",
        format!("{} MiB", memory_high.load(Ordering::Relaxed) / 1024),
    );
    report.row("logs", log_dir.display());

    let mut failures = Vec::new();
    if !storage.lost.is_empty() {
        failures.push(format!(
            "{} acknowledged events lost (first: {:?})",
            storage.lost.len(),
            &storage.lost[..storage.lost.len().min(5)]
        ));
    }
    if !storage.duplicated.is_empty() {
        failures.push(format!(
            "{} events stored twice (first: {:?})",
            storage.duplicated.len(),
            &storage.duplicated[..storage.duplicated.len().min(5)]
        ));
    }
    if !live.missed.is_empty() {
        failures.push(format!(
            "{} live deliveries missed by connections that stayed open (first (channel, gateway, seq): {:?})",
            live.missed.len(),
            &live.missed[..live.missed.len().min(5)]
        ));
    }
    if refused.total() > 0 {
        failures.push(format!("requests refused: {refused}"));
    }
    if effect * 100.0 > args.max_stall_effect_pct {
        failures.push(format!(
            "the stalled subscriber raised the others' p99 by {:.1} % (at most {} %)",
            effect * 100.0,
            args.max_stall_effect_pct
        ));
    }
    if dead_letters > 0 {
        failures.push(format!("{dead_letters} messages dead-lettered"));
    }
    if !args.keep {
        cleanup(&deployment).await?;
    }
    if failures.is_empty() {
        report.row("verdict", "PASS");
        Ok(report)
    } else {
        println!("{report}");
        bail!("chaos run failed: {}", failures.join("; "))
    }
}

/// The others' live latency around the stall. The stalled subscriber reads from gateway 0, so
/// the subscribers of gateway 0 are exposed and those of gateway 1 are the control: both see the
/// same load and faults, so the change of the exposed p99 relative to the control's is the
/// stall's own effect, not the load's ups and downs between two windows.
struct StallEffect {
    before: Latency,
    after: Latency,
    /// p99 (µs) of the stalled subscriber's gateway before and after.
    exposed: (u32, u32),
    /// p99 (µs) of the other gateway before and after.
    control: (u32, u32),
}

impl StallEffect {
    const EXPOSED_GATEWAY: usize = 0;

    fn measure(samples: &[Sample], stall_ms: u32) -> StallEffect {
        let window = STALL_WINDOW.as_millis() as u32;
        let before = stall_ms.saturating_sub(window)..stall_ms;
        let after = stall_ms..stall_ms + window;
        let latency = |range: &std::ops::Range<u32>, gateway: Option<usize>| {
            Latency::of(
                samples
                    .iter()
                    .filter(|s| range.contains(&s.at_ms))
                    .filter(|s| gateway.is_none_or(|g| s.gateway == g))
                    .map(|s| s.latency_us)
                    .collect(),
            )
        };
        let p99 = |gateway| {
            (
                latency(&before, Some(gateway)).p99,
                latency(&after, Some(gateway)).p99,
            )
        };
        StallEffect {
            before: latency(&before, None),
            after: latency(&after, None),
            exposed: p99(Self::EXPOSED_GATEWAY),
            control: p99(1 - Self::EXPOSED_GATEWAY),
        }
    }

    /// (exposed after / exposed before) / (control after / control before) − 1.
    fn effect(&self) -> f64 {
        let ratio = |(before, after): (u32, u32)| {
            if before == 0 {
                1.0
            } else {
                f64::from(after) / f64::from(before)
            }
        };
        ratio(self.exposed) / ratio(self.control) - 1.0
    }
}

async fn sample_memory(
    deployment: Arc<Mutex<Deployment>>,
    high: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        // While a fault holds the deployment (a restart), skip the sample.
        if let Ok(deployment) = deployment.try_lock() {
            high.fetch_max(deployment.sample_memory(), Ordering::Relaxed);
        }
    }
}

/// Injects [`FAULTS`] one after the other, spread over the planned load time; returns when the
/// subscriber was stalled (µs on the run's clock).
async fn run_faults(
    deployment: Arc<Mutex<Deployment>>,
    stall: CancellationToken,
    planned: Duration,
    outage: Duration,
    cut: Duration,
    started: Instant,
    timeline: Arc<Timeline>,
) -> anyhow::Result<u64> {
    let busy = outage + cut * 4 + Duration::from_secs(10);
    let gap = (planned.mul_f64(0.8).saturating_sub(busy) / FAULTS.len() as u32)
        .max(Duration::from_secs(2));
    let mut stall_at_us = 0;
    tokio::time::sleep(planned.mul_f64(0.1).max(STALL_WINDOW)).await;
    for fault in FAULTS {
        match fault {
            Fault::Stall => {
                stall.cancel();
                stall_at_us = payload::now_us();
                timeline.note(started, "one subscriber stops reading");
                tokio::time::sleep(STALL_WINDOW).await;
            }
            Fault::KillWorker(name) => {
                deployment.lock().await.kill(name)?;
                timeline.note(started, format!("kill -9 {name}"));
                tokio::time::sleep(Duration::from_secs(2)).await;
                deployment.lock().await.start(name).await?;
                timeline.note(started, format!("{name} restarted and ready"));
            }
            Fault::CutLink(name) => {
                deployment.lock().await.process(name).amqp.cut();
                timeline.note(started, format!("{name}'s RabbitMQ link cut"));
                tokio::time::sleep(cut).await;
                deployment.lock().await.process(name).amqp.restore();
                timeline.note(started, format!("{name}'s RabbitMQ link restored"));
            }
            Fault::PostgresOutage => {
                deployment.lock().await.postgres.cut();
                timeline.note(started, "Postgres unreachable");
                tokio::time::sleep(outage).await;
                deployment.lock().await.postgres.restore();
                timeline.note(started, "Postgres reachable again");
            }
            Fault::Terminate(name) => {
                let took = deployment.lock().await.terminate(name, EXIT_LIMIT).await?;
                timeline.note(
                    started,
                    format!("SIGTERM {name}: exited 0 after {:.1} s", took.as_secs_f64()),
                );
                deployment.lock().await.start(name).await?;
                timeline.note(started, format!("{name} started again and ready"));
            }
        }
        tokio::time::sleep(gap).await;
    }
    Ok(stall_at_us)
}

async fn dead_letter_count(amqp_url: &str, prefix: &str) -> anyhow::Result<u32> {
    let topology = bus::Topology::new(prefix);
    let connection = bus::connect(amqp_url, "switchboard-chaos").await?;
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            &topology.dead_letter_queue(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await?;
    let _ = connection.close(200, "chaos verdict").await;
    Ok(queue.message_count())
}

/// Drops the run's database and its durable queues and exchange.
async fn cleanup(deployment: &Deployment) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(&deployment.admin_database_url()).await?;
    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        deployment.database
    ))
    .execute(&mut admin)
    .await?;
    let topology = bus::Topology::new(deployment.prefix.clone());
    let connection = bus::connect(&deployment.amqp_url(), "switchboard-chaos-cleanup").await?;
    let channel = connection.create_channel().await?;
    for queue in [
        topology.persist_queue(),
        topology.dead_letter_queue(),
        topology.webhook_queue(),
    ] {
        channel
            .queue_delete(&queue, lapin::options::QueueDeleteOptions::default())
            .await?;
    }
    channel
        .exchange_delete(
            &topology.events_exchange(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await?;
    let _ = connection.close(200, "chaos cleanup").await;
    Ok(())
}
