//! `segment-memory`: what one Segment `/v1/batch` request costs the server in memory, as a
//! multiple of its body, and how responsive the gateway stays meanwhile. K connections post the
//! same gzip body of one shape N times each; the server's RSS is sampled every 2 ms (peak over
//! the baseline before the load), a WebSocket sends `pusher:ping` every 10 ms (pong round trip),
//! and the CPU work of one request (inflate, parse, validate, enrich: what the gateway runs on
//! its blocking pool) is timed here with the server's own code.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use flate2::write::GzEncoder;
use flate2::Compression;
use futures_util::{SinkExt, StreamExt};
use protocol::segment::{Edge, Endpoint, Request};
use tokio_tungstenite::tungstenite::Message;

use crate::api::Api;
use crate::stats::{Latency, Report, Tally};
use crate::{ws, Target};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shape {
    /// The issue's attack: 1,500 tiny events and a 380 KB batch `context` (refused: 413).
    Attack,
    /// The most a batch `context` may expand into: 20 KB merged into as many tiny events as
    /// fit in 500 KB expanded (accepted).
    Context,
    /// 1,000 tiny events, no context: the most envelopes per body byte (accepted).
    Tiny,
    /// 16 events of 30 KB, no context: a full-size body (accepted).
    Large,
}

#[derive(Args)]
pub struct SegmentMemoryArgs {
    #[arg(long, value_enum, default_value = "attack")]
    shape: Shape,
    /// Requests in flight at once, each on its own keep-alive connection.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Requests each connection sends, one after the other.
    #[arg(long, default_value_t = 20)]
    requests: usize,
}

/// A body of `shape` and what it expands into.
struct Body {
    json: String,
    events: usize,
    /// Every event's JSON text plus the batch context, once per event.
    expanded: usize,
}

const TINY: &str = r#"{"type":"track","event":"m","userId":"u"}"#;

fn body(shape: Shape) -> Body {
    let context = |bytes: usize| format!(r#"{{"pad":"{}"}}"#, "x".repeat(bytes - 10));
    let (events, context): (Vec<String>, Option<String>) = match shape {
        Shape::Attack => (vec![TINY.to_owned(); 1500], Some(context(380_000))),
        Shape::Context => {
            let fit = 500 * 1024 / (TINY.len() + 20_000);
            (vec![TINY.to_owned(); fit], Some(context(20_000)))
        }
        Shape::Tiny => (vec![TINY.to_owned(); 1000], None),
        Shape::Large => {
            let event = format!(
                r#"{{"type":"track","event":"m","userId":"u","properties":{{"pad":"{}"}}}}"#,
                "x".repeat(30_000)
            );
            (vec![event; 16], None)
        }
    };
    let context_bytes = context.as_ref().map_or(0, String::len);
    let expanded = events.iter().map(|e| e.len() + context_bytes).sum();
    let batch = events.join(",");
    let json = match context {
        Some(context) => format!(r#"{{"batch":[{batch}],"context":{context}}}"#),
        None => format!(r#"{{"batch":[{batch}]}}"#),
    };
    Body {
        json,
        events: events.len(),
        expanded,
    }
}

fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

/// The CPU time of the gateway's work on one request (median of 20 runs), and whether the
/// server's code accepts the body.
fn local_work(wire: &[u8]) -> (Duration, bool) {
    let edge = Edge {
        received_at: chrono::Utc::now(),
        ip: None,
        user_agent: Some("switchboard-bench"),
        live_channel: Some("private-analytics"),
    };
    let once = || {
        let mut inflated = Vec::new();
        let inflates = flate2::read::GzDecoder::new(wire)
            .read_to_end(&mut inflated)
            .is_ok();
        inflates
            && Request::parse(Endpoint::Batch, &inflated)
                .is_ok_and(|request| request.into_envelopes("app", &edge).is_ok())
    };
    let mut accepted = false;
    let mut runs: Vec<Duration> = (0..20)
        .map(|_| {
            let started = Instant::now();
            accepted = std::hint::black_box(once());
            started.elapsed()
        })
        .collect();
    runs.sort();
    (runs[runs.len() / 2], accepted)
}

/// Median time of `work` over 50 runs.
fn median(mut work: impl FnMut()) -> Duration {
    let mut runs: Vec<Duration> = (0..50)
        .map(|_| {
            let started = Instant::now();
            work();
            started.elapsed()
        })
        .collect();
    runs.sort();
    runs[runs.len() / 2]
}

/// What the gateway's inline limits stand for on this machine, timed with the server's code:
/// the Segment work on a batch of tiny events of 4 KiB (`SEGMENT_INLINE_MAX_BYTES`) and 16 KiB,
/// and the MD5 + JSON of Pusher `batch_events` bodies of 16 KiB (`API_INLINE_MAX_BYTES`) and
/// 256 KB (the body limit), with JSON-in-string `data` as the SDKs send it.
fn reference_costs() -> String {
    let edge = Edge {
        received_at: chrono::Utc::now(),
        ip: None,
        user_agent: Some("switchboard-bench"),
        live_channel: Some("private-analytics"),
    };
    let segment = |bytes: usize| {
        let events = bytes / (TINY.len() + 1);
        let body = format!(r#"{{"batch":[{}]}}"#, vec![TINY; events].join(","));
        median(|| {
            let request = Request::parse(Endpoint::Batch, body.as_bytes()).expect("a valid batch");
            std::hint::black_box(request.into_envelopes("app", &edge).expect("valid events"));
        })
    };
    let api = |bytes: usize| {
        let data = serde_json::json!({"id": 1, "text": "x".repeat(100)}).to_string();
        let item = serde_json::json!({"name": "e", "channel": "c", "data": data}).to_string();
        let items = vec![item.as_str(); bytes / (item.len() + 1)].join(",");
        let body = format!(r#"{{"batch":[{items}]}}"#);
        median(|| {
            std::hint::black_box(protocol::signature::body_md5(body.as_bytes()));
            std::hint::black_box(serde_json::from_str::<serde_json::Value>(&body).expect("JSON"));
        })
    };
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    format!(
        "Segment 4 KiB {:.0} µs, 16 KiB {:.0} µs; API MD5 + JSON 16 KiB {:.0} µs, 256 KB {:.0} µs",
        us(segment(4 * 1024)),
        us(segment(16 * 1024)),
        us(api(16 * 1024)),
        us(api(256 * 1024))
    )
}

/// Samples the server's RSS every 2 ms until `stop`; returns the peak, KiB.
async fn peak_rss(target: &Target, stop: Arc<AtomicBool>) -> anyhow::Result<u64> {
    let mut peak = 0;
    while !stop.load(Ordering::Relaxed) {
        peak = peak.max(target.server_rss_kib()?);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(peak)
}

/// Pings over a WebSocket every 10 ms until `stop`; returns the pong round trips, µs.
async fn ping_round_trips(target: &Target, stop: Arc<AtomicBool>) -> anyhow::Result<Vec<u32>> {
    let (mut socket, _) = ws::connect(target.ws_addr, &target.key, None).await?;
    let mut round_trips = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        socket
            .send(Message::text(r#"{"event":"pusher:ping","data":{}}"#))
            .await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
                Ok(Some(Ok(Message::Text(text)))) if text.contains("pusher:pong") => break,
                Ok(Some(Ok(_))) => {}
                Ok(other) => anyhow::bail!("the ping socket ended: {other:?}"),
                Err(_) => anyhow::bail!("no pong within 10 s"),
            }
        }
        round_trips.push(sent.elapsed().as_micros() as u32);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(round_trips)
}

pub async fn run(target: &Target, args: SegmentMemoryArgs) -> anyhow::Result<Report> {
    let body = body(args.shape);
    let wire = gzip(body.json.as_bytes())?;
    let (work, accepted_here) = local_work(&wire);
    let api = Arc::new(Api::new(target, args.concurrency)?);

    let mut baseline = u64::MAX;
    for _ in 0..50 {
        baseline = baseline.min(target.server_rss_kib()?);
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = peak_rss(target, stop.clone());
    let pinger = ping_round_trips(target, stop.clone());
    let answers = Arc::new(Tally::default());
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let accepted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let load = {
        let stop = stop.clone();
        let tasks: Vec<_> = (0..args.concurrency)
            .map(|_| {
                let (api, wire, answers, latencies, accepted) = (
                    api.clone(),
                    wire.clone(),
                    answers.clone(),
                    latencies.clone(),
                    accepted.clone(),
                );
                tokio::spawn(async move {
                    for _ in 0..args.requests {
                        let sent = Instant::now();
                        match api.post_segment_batch_gzip(wire.clone()).await {
                            Ok(()) => {
                                accepted.fetch_add(1, Ordering::Relaxed);
                                answers.add("HTTP 200", 1);
                            }
                            Err(refused) => answers.add(refused.kind(), 1),
                        }
                        let took = sent.elapsed().as_micros() as u32;
                        latencies.lock().expect("not poisoned").push(took);
                    }
                })
            })
            .collect();
        async move {
            for task in tasks {
                task.await.context("a load task panicked")?;
            }
            stop.store(true, Ordering::Relaxed);
            anyhow::Ok(())
        }
    };
    let (peak, round_trips, loaded) = tokio::join!(sampler, pinger, load);
    loaded?;
    let elapsed = started.elapsed();
    let (peak, round_trips) = (peak?, round_trips?);

    let growth = peak.saturating_sub(baseline) * 1024;
    let per_request = growth as f64 / args.concurrency as f64;
    let mut report = Report::new(format!(
        "segment-memory: {} × {} gzip /v1/batch requests, shape {}",
        args.concurrency,
        args.requests,
        match args.shape {
            Shape::Attack => "attack",
            Shape::Context => "context",
            Shape::Tiny => "tiny",
            Shape::Large => "large",
        }
    ));
    report.row("events per request", body.events);
    report.row(
        "body: gzip / inflated / expanded",
        format!(
            "{} / {} / {} bytes",
            wire.len(),
            body.json.len(),
            body.expanded
        ),
    );
    report.row("answers", answers.as_ref());
    report.row(
        "server's code here: accepts / work per request",
        format!(
            "{} / {:.2} ms (inflate + parse + validate + enrich, median of 20)",
            if accepted_here { "yes" } else { "no" },
            work.as_secs_f64() * 1000.0
        ),
    );
    report.row("inline limits, timed here", reference_costs());
    report.row(
        "server RSS: baseline / peak",
        format!("{} / {} KiB", baseline, peak),
    );
    report.row(
        "peak growth per request in flight",
        format!(
            "{:.0} KiB = {:.1} × inflated body = {:.1} × expanded",
            per_request / 1024.0,
            per_request / body.json.len() as f64,
            per_request / body.expanded as f64
        ),
    );
    let latencies = std::mem::take(&mut *latencies.lock().expect("not poisoned"));
    report.row("request latency", Latency::of(latencies));
    report.row(
        "WebSocket ping → pong meanwhile",
        format!(
            "{} ({} pings)",
            Latency::of(round_trips.clone()),
            round_trips.len()
        ),
    );
    report.row(
        "requests/s",
        format!(
            "{:.0}",
            (args.concurrency * args.requests) as f64 / elapsed.as_secs_f64()
        ),
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_what_they_claim() {
        for shape in [Shape::Attack, Shape::Context, Shape::Tiny, Shape::Large] {
            let body = body(shape);
            let (_, accepted) = local_work(&gzip(body.json.as_bytes()).unwrap());
            assert_eq!(accepted, shape != Shape::Attack);
            assert!(body.json.len() <= protocol::segment::MAX_REQUEST_BYTES);
        }
        let attack = body(Shape::Attack);
        assert_eq!(attack.events, 1500);
        assert!(gzip(attack.json.as_bytes()).unwrap().len() < 8 * 1024);
        let context = body(Shape::Context);
        assert!(context.expanded <= protocol::segment::MAX_REQUEST_BYTES);
        assert!(context.expanded > 20 * context.json.len());
    }
}
