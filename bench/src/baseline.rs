//! The limits of Switchboard's own parts, measured on the same machine in the same run:
//! RabbitMQ publish-with-confirms through lapin (the same topology, message bodies and batching
//! as Switchboard's publisher), and Postgres COPY into the same `events` table (a scratch
//! database migrated by `consumer_worker::prepare_database`). Both clean up after themselves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bus::{QueueType, Topology, EVENT_ROUTING_KEY};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::BasicProperties;
use protocol::envelope::encode_batch;
use protocol::{Envelope, Source};
use sqlx::{Connection, PgConnection};
use tokio::sync::Semaphore;

use crate::payload;
use crate::procfs::CpuMeter;

/// How the baseline messages look: envelopes per AMQP message and event data size.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub batch: usize,
    pub payload_bytes: usize,
}

fn envelopes(shape: Shape, first: u64) -> Vec<Envelope> {
    (0..shape.batch as u64)
        .map(|i| {
            let seq = first + i;
            let channel = format!("ingest-{}", seq % 10);
            let data = payload::encode(seq, payload::now_us(), shape.payload_bytes);
            Envelope::new("app-id", Source::Api, &channel, "baseline", data)
        })
        .collect()
}

pub struct AmqpResult {
    pub envelopes: u64,
    pub seconds: f64,
    pub failed: u64,
    pub broker_cpu: f64,
}

/// Publishes `total` envelopes as JSON arrays of `shape.batch` with `mandatory`, at most
/// `in_flight` unconfirmed messages, to a scratch copy of Switchboard's topology (quorum persist
/// queue, dead-letter queue, a bounded live queue), for at most `max_time`. `broker_pid` is
/// RabbitMQ's process, whose CPU is measured.
pub async fn amqp(
    url: &str,
    broker_pid: u32,
    total: u64,
    shape: Shape,
    in_flight: usize,
    max_time: Duration,
) -> anyhow::Result<AmqpResult> {
    let connection = bus::connect(url, "switchboard-bench-baseline").await?;
    let channel = connection.create_channel().await?;
    let topology = Topology::new(format!("benchbase{}", crate::run_tag()));
    let measured = async {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        bus::declare_durable(&channel, &topology, QueueType::Quorum).await?;
        bus::declare_live_queue(&channel, &topology, 0, 100_000, Duration::from_secs(60)).await?;
        // A few distinct bodies, encoded before the clock starts: the broker's work, not ours.
        let bodies: Vec<Vec<u8>> = (0..8)
            .map(|k| encode_batch(&envelopes(shape, k * shape.batch as u64)))
            .collect();
        let meter = CpuMeter::new(Vec::new(), Some(broker_pid))?;
        let cpu_before = meter.sample()?;
        let exchange = topology.events_exchange();
        let permits = Arc::new(Semaphore::new(in_flight));
        let confirmed = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let messages = total.div_ceil(shape.batch as u64);
        let started = Instant::now();
        for m in 0..messages {
            if started.elapsed() >= max_time {
                break;
            }
            let permit = permits.clone().acquire_owned().await?;
            let confirm = channel
                .basic_publish(
                    &exchange,
                    EVENT_ROUTING_KEY,
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &bodies[m as usize % bodies.len()],
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into()),
                )
                .await?;
            let (confirmed, failed) = (confirmed.clone(), failed.clone());
            tokio::spawn(async move {
                match confirm.await {
                    Ok(Confirmation::Ack(None)) => confirmed.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                drop(permit);
            });
        }
        let _all_confirmed = permits.acquire_many(in_flight as u32).await?;
        let seconds = started.elapsed().as_secs_f64();
        let cpu = meter.used(cpu_before, meter.sample()?);
        anyhow::Ok(AmqpResult {
            envelopes: confirmed.load(Ordering::Relaxed) * shape.batch as u64,
            seconds,
            failed: failed.load(Ordering::Relaxed),
            broker_cpu: cpu.broker,
        })
    }
    .await;
    // Scratch resources go whatever happened; the live queue goes with the connection.
    for queue in [
        topology.persist_queue(),
        topology.dead_letter_queue(),
        topology.webhook_queue(),
    ] {
        let _ = channel
            .queue_delete(&queue, QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(
            &topology.events_exchange(),
            ExchangeDeleteOptions::default(),
        )
        .await;
    let _ = connection.close(200, "baseline done").await;
    measured
}

/// `url` with its database name replaced by `database` (query parameters kept).
pub fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").context("database URL has no scheme")? + 3;
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |at| scheme_end + at);
    let mut out = format!("{}/{database}", &base[..host_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

/// Escapes a value for Postgres COPY text format.
pub fn copy_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// One `events` row in COPY text format, for the columns of [`COPY_EVENTS`].
pub fn copy_row(envelope: &Envelope) -> String {
    let at = envelope
        .received_at
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t\\N\t\\N\t{at}\t{at}\n",
        envelope.id,
        copy_escape(&envelope.app_id),
        envelope.source.as_str(),
        copy_escape(&envelope.channel),
        copy_escape(&envelope.name),
        copy_escape(&envelope.data),
    )
}

pub const COPY_EVENTS: &str = "COPY events (id, app_id, source, channel, name, data, user_id, \
    socket_id, occurred_at, received_at) FROM STDIN";

pub struct CopyResult {
    pub rows: u64,
    pub seconds: f64,
    pub database_cpu: f64,
}

/// COPYs `total` rows into `events` of a fresh scratch database on the server of `database_url`,
/// one transaction per `shape.batch` rows, one after the other (as the single worker writes).
pub async fn copy(database_url: &str, total: u64, shape: Shape) -> anyhow::Result<CopyResult> {
    let name = format!("switchboard_benchbase_{}", crate::run_tag());
    let scratch = with_database(database_url, &name)?;
    let measured = async {
        let pool = consumer_worker::prepare_database(&scratch, 1).await?;
        let batches: Vec<String> = (0..total.div_ceil(shape.batch as u64))
            .map(|b| {
                envelopes(shape, b * shape.batch as u64)
                    .iter()
                    .map(copy_row)
                    .collect()
            })
            .collect();
        // The pool's backend exists now: Postgres CPU is measured from here.
        let meter = CpuMeter::new(Vec::new(), None)?;
        let cpu_before = meter.sample()?;
        let started = Instant::now();
        for batch in &batches {
            let mut transaction = pool.begin().await?;
            let mut copy = transaction.copy_in_raw(COPY_EVENTS).await?;
            copy.send(batch.as_bytes()).await?;
            copy.finish().await?;
            transaction.commit().await?;
        }
        let seconds = started.elapsed().as_secs_f64();
        let cpu = meter.used(cpu_before, meter.sample()?);
        pool.close().await;
        anyhow::Ok(CopyResult {
            rows: batches.len() as u64 * shape.batch as u64,
            seconds,
            database_cpu: cpu.database,
        })
    }
    .await;
    drop_scratch(database_url, &name).await?;
    measured
}

/// Drops scratch database `name` on the server of `database_url`.
pub async fn drop_scratch(database_url: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(&with_database(database_url, "postgres")?)
        .await
        .context("connecting to drop the scratch database")?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .with_context(|| format!("dropping scratch database {name}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls() {
        let check = |url: &str, expected: &str| {
            assert_eq!(with_database(url, "scratch").unwrap(), expected, "{url}")
        };
        check(
            "postgres://postgres@127.0.0.1:5432/switchboard",
            "postgres://postgres@127.0.0.1:5432/scratch",
        );
        check(
            "postgres://u:p@db/sb?sslmode=disable",
            "postgres://u:p@db/scratch?sslmode=disable",
        );
        check("postgresql://db", "postgresql://db/scratch");
        assert!(with_database("nourl", "x").is_err());
    }

    #[test]
    fn copy_text_escaping() {
        assert_eq!(copy_escape(r#"{"a":"b\"c"}"#), r#"{"a":"b\\"c"}"#);
        assert_eq!(copy_escape("t\tn\nr\r"), "t\\tn\\nr\\r");
    }

    #[test]
    fn copy_rows_have_ten_columns_and_the_payload() {
        let shape = Shape {
            batch: 2,
            payload_bytes: 64,
        };
        let batch = envelopes(shape, 10);
        assert_eq!(batch.len(), 2);
        assert_eq!(payload::decode(&batch[1].data).map(|(s, _)| s), Some(11));
        let row = copy_row(&batch[0]);
        assert!(row.ends_with('\n'));
        assert_eq!(row.trim_end().split('\t').count(), 10);
        assert!(row.contains("\tapi\tingest-0\tbaseline\t"));
    }
}
