//! `history-query`: how fast a recovery query is with millions of rows in `events`. Fills a
//! scratch database's `events` (migrated as the worker migrates it) by COPY with synthetic rows
//! spread evenly over `--days` days up to now and over `--channels` channels, then
//! `VACUUM ANALYZE`s it and times `ingest::history::read` — the very queries and page the
//! gateway answers a history request with once its storage fence is passed — for cursors taken
//! at random from the last hour (a reconnect) and from the last day (a long absence: full pages
//! and the window's count), then without a cursor. The database is dropped at the end unless
//! `--keep`.

use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use ingest::history::{self, HistoryConfig, HistoryQuery};
use protocol::{Envelope, Source};
use sqlx::PgPool;
use uuid::{NoContext, Timestamp, Uuid};

use crate::baseline::{copy_row, drop_scratch, with_database, COPY_EVENTS};
use crate::run_tag;
use crate::stats::{rate, thousands, Latency, Report};

#[derive(clap::Args)]
pub struct HistoryQueryArgs {
    /// Rows to put into `events`.
    #[arg(long, default_value_t = 10_000_000)]
    rows: u64,
    /// Channels the rows are spread over (one app).
    #[arg(long, default_value_t = 1000)]
    channels: u64,
    /// Days the rows are spread over, ending now.
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// Timed queries of each kind.
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Events per page asked for.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// A Postgres server to make the scratch database on (any database of it).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Keep the scratch database (its name is in the report).
    #[arg(long)]
    keep: bool,
}

const APP: &str = "bench-history";
/// Rows per COPY statement (and transaction).
const COPY_ROWS: u64 = 100_000;

/// Where row `n` of `total` goes: its channel and when it was received.
struct Spread {
    start: DateTime<Utc>,
    span_us: i64,
    total: u64,
    channels: u64,
}

impl Spread {
    fn channel(&self, n: u64) -> String {
        // A fixed scramble, so that each channel's rows are spread over the whole span.
        format!("bench-{}", n.wrapping_mul(2_654_435_761) % self.channels)
    }

    fn received_at(&self, n: u64) -> DateTime<Utc> {
        let offset = (i128::from(self.span_us) * i128::from(n) / i128::from(self.total)) as i64;
        self.start + Duration::microseconds(offset)
    }

    /// Row `n` as the worker would have stored it: its id a UUIDv7 of its `received_at`.
    fn envelope(&self, n: u64) -> Envelope {
        let received_at = self.received_at(n);
        let data = format!(r#"{{"n":{n},"text":"a recovered event"}}"#);
        let mut envelope = Envelope::new(APP, Source::Api, &self.channel(n), "tick", data);
        let micros = received_at.timestamp_micros();
        let timestamp = Timestamp::from_unix(
            NoContext,
            micros.div_euclid(1_000_000) as u64,
            (micros.rem_euclid(1_000_000) * 1000) as u32,
        );
        envelope.id = Uuid::new_v7(timestamp);
        envelope.received_at = received_at;
        envelope
    }
}

pub async fn run(args: HistoryQueryArgs) -> anyhow::Result<Report> {
    let name = format!("switchboard_benchhistory_{}", run_tag());
    let scratch = with_database(&args.database_url, &name)?;
    let measured = measure(&args, &scratch).await;
    if !args.keep {
        drop_scratch(&args.database_url, &name).await?;
    }
    let mut report = measured?;
    report.row(
        "scratch database",
        if args.keep {
            format!("{name} (kept)")
        } else {
            format!("{name} (dropped)")
        },
    );
    Ok(report)
}

async fn measure(args: &HistoryQueryArgs, scratch: &str) -> anyhow::Result<Report> {
    let pool = consumer_worker::prepare_database(scratch, 1).await?;
    let now = Utc::now();
    let spread = Spread {
        start: now - Duration::days(i64::from(args.days)),
        span_us: i64::from(args.days) * 86_400_000_000,
        total: args.rows.max(1),
        channels: args.channels.max(1),
    };
    for day in 0..=args.days {
        let day = (spread.start + Duration::days(i64::from(day))).date_naive();
        sqlx::query("SELECT switchboard_ensure_partition($1)")
            .bind(day)
            .execute(&pool)
            .await
            .context("creating the partitions")?;
    }
    let started = Instant::now();
    let mut first = 0;
    while first < args.rows {
        let last = (first + COPY_ROWS).min(args.rows);
        let text: String = (first..last)
            .map(|n| copy_row(&spread.envelope(n)))
            .collect();
        let mut transaction = pool.begin().await?;
        let mut copy = transaction.copy_in_raw(COPY_EVENTS).await?;
        copy.send(text.as_bytes()).await?;
        copy.finish().await?;
        transaction.commit().await?;
        first = last;
    }
    let load_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    sqlx::query("VACUUM ANALYZE events").execute(&pool).await?;
    let vacuum_seconds = started.elapsed().as_secs_f64();

    let mut report = Report::new(format!(
        "history-query: {} rows over {} channels and {} days; pages of {}",
        thousands(args.rows),
        args.channels,
        args.days,
        args.limit
    ));
    report.row(
        "loaded (COPY, then VACUUM ANALYZE)",
        format!(
            "{load_seconds:.1} s ({}), {vacuum_seconds:.1} s",
            rate(args.rows as f64, load_seconds)
        ),
    );
    let config = HistoryConfig::default();
    let hour = spread.received_at(args.rows).timestamp_micros() - 3_600_000_000;
    // 23 hours: a cursor at the edge of the 24-hour window would leave it while the queries run.
    let day = spread.received_at(args.rows).timestamp_micros() - 23 * 3_600_000_000;
    for (label, since_us) in [
        ("after an id of the last hour", hour),
        ("after an id of the last 23 h", day),
    ] {
        let (latency, events, beyond) = recoveries(&pool, &config, &spread, args, since_us).await?;
        report.row(
            label,
            format!(
                "{latency}; {:.0} events per answer, {beyond} beyond the window (410)",
                events
            ),
        );
    }
    let mut samples = Vec::with_capacity(args.queries);
    for q in 0..args.queries {
        let channel = spread.channel(q as u64);
        let query = HistoryQuery::parse(None, Some(&args.limit.to_string()))?;
        let started = Instant::now();
        history::read(&pool, &config, APP, &channel, query).await?;
        samples.push(started.elapsed().as_micros() as u32);
    }
    report.row("without after (the window's start)", Latency::of(samples));
    report.row("plan of a recovery", plan(&pool, &spread, args.rows).await?);
    pool.close().await;
    Ok(report)
}

/// Times `args.queries` recoveries after ids of rows received after `since_us`: the latency,
/// the mean events per answer, and how many were refused as beyond the window.
async fn recoveries(
    pool: &PgPool,
    config: &HistoryConfig,
    spread: &Spread,
    args: &HistoryQueryArgs,
    since_us: i64,
) -> anyhow::Result<(Latency, f64, usize)> {
    let first = (0..args.rows)
        .find(|&n| spread.received_at(n).timestamp_micros() >= since_us)
        .unwrap_or(0);
    let mut samples = Vec::with_capacity(args.queries);
    let (mut events, mut beyond) = (0usize, 0usize);
    for q in 0..args.queries as u64 {
        // Rows of the range, picked by a fixed scramble.
        let n = first + q.wrapping_mul(11_400_714_819_323_198_485) % (args.rows - first).max(1);
        let row = spread.envelope(n);
        let query = HistoryQuery::parse(Some(&row.id.to_string()), Some(&args.limit.to_string()))?;
        let started = Instant::now();
        let answer = history::read(pool, config, APP, &row.channel, query).await;
        samples.push(started.elapsed().as_micros() as u32);
        match answer {
            Ok(page) => events += page["events"].as_array().map_or(0, Vec::len),
            Err(history::HistoryError::TooMany { .. } | history::HistoryError::TooOld { .. }) => {
                beyond += 1
            }
            Err(error) => return Err(error.into()),
        }
    }
    let answered = (args.queries - beyond).max(1);
    Ok((
        Latency::of(samples),
        events as f64 / answered as f64,
        beyond,
    ))
}

/// The plan of one recovery's page query, in one line: its nodes and the partitions it read.
async fn plan(pool: &PgPool, spread: &Spread, rows: u64) -> anyhow::Result<String> {
    let row = spread.envelope(rows.saturating_sub(rows / 100 + 1));
    let lines: Vec<String> = sqlx::query_scalar(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) \
         SELECT id, name, data, user_id, received_at FROM events \
         WHERE app_id = $1 AND channel = $2 AND id > $3 AND received_at >= $4 \
         ORDER BY id LIMIT 100",
    )
    .bind(APP)
    .bind(&row.channel)
    .bind(row.id)
    .bind(row.received_at - Duration::minutes(1))
    .fetch_all(pool)
    .await?;
    let execution = lines
        .iter()
        .find(|line| line.contains("Execution Time"))
        .map_or("", |line| line.trim());
    Ok(format!("index scans: {}; {execution}", index_scans(&lines)))
}

/// The indexes a plan's lines scan, counted per kind: partition indexes are named
/// `events_YYYYMMDD_<columns>_idx`, so the kind is what follows the date.
fn index_scans(lines: &[String]) -> String {
    let mut scans: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for line in lines {
        // `Index Scan using IDX on …`, `Index Only Scan using IDX on …`, `Bitmap Index Scan on IDX`.
        let named = line
            .split_once(" using ")
            .or_else(|| line.split_once("Bitmap Index Scan on "))
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if let Some(index) = named {
            let kind = index.get("events_YYYYMMDD_".len()..).unwrap_or(index);
            *scans.entry(kind).or_default() += 1;
        }
    }
    let scans: Vec<String> = scans.iter().map(|(k, n)| format!("{n} × {k}")).collect();
    scans.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_scans_are_read_from_plain_only_and_bitmap_scans() {
        let plan: Vec<String> = [
            "Limit (actual rows=30 loops=1)",
            "  ->  Index Scan using events_20261207_app_id_channel_id_received_at_idx on events_20261207 events_1",
            "  ->  Index Only Scan using events_20261206_app_id_channel_id_received_at_idx on events_20261206 events_2",
            "        ->  Bitmap Index Scan on events_20261205_app_id_channel_received_at_idx",
            "Execution Time: 0.519 ms",
        ]
        .map(str::to_owned)
        .into();
        assert_eq!(
            index_scans(&plan),
            "2 × app_id_channel_id_received_at_idx, 1 × app_id_channel_received_at_idx"
        );
        assert_eq!(index_scans(&["Seq Scan on events_20261207".to_owned()]), "");
    }
}
