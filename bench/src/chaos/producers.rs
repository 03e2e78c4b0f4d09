//! The load: signed HTTP triggers, batch triggers and Segment batches spread over both gateways
//! at a fixed offered rate, retried as a careful client would (same idempotency key, same
//! `messageId`s) on 503 and on transport errors, and client events over WebSockets. Every event
//! is recorded in the [`Ledger`] when sent and when acknowledged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use protocol::signature::{channel_string_to_sign, sign};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ledger::{Kind, Ledger, NO_CHANNEL};
use super::Plan;
use crate::api::{batch_body, segment_batch_body, signed_query, trigger_body, Event};
use crate::payload;
use crate::stats::Tally;
use crate::ws;

/// Events per batch trigger (Pusher's limit) and per Segment batch.
const BATCH_EVENTS: u64 = 10;
const SEGMENT_EVENTS: u64 = 30;
/// One cycle of HTTP requests, chosen so that batch triggers carry about half the events,
/// single triggers a tenth and Segment batches a third.
const CYCLE: [Kind; 16] = [
    Kind::Batch,
    Kind::Trigger,
    Kind::Trigger,
    Kind::Batch,
    Kind::Trigger,
    Kind::Segment,
    Kind::Trigger,
    Kind::Batch,
    Kind::Trigger,
    Kind::Trigger,
    Kind::Batch,
    Kind::Trigger,
    Kind::Trigger,
    Kind::Batch,
    Kind::Trigger,
    Kind::Trigger,
];
/// Client events per second per sending connection (the app allows 10).
const CLIENT_EVENTS_PER_SECOND: u64 = 8;
/// A client event counts as accepted once this long passed without a `pusher:error` about it
/// and with its connection still open: the gateway reports a failed confirm within its 5 s
/// confirm timeout.
const CLIENT_EVENT_SETTLE: Duration = Duration::from_secs(7);
/// How long one request is retried before the event counts as not accepted.
const RETRY_FOR: Duration = Duration::from_secs(90);
/// Most HTTP requests in flight.
const MAX_IN_FLIGHT: usize = 128;

/// Why the run failed on the producers' side: an answer no retry can change.
pub type Refusals = Tally;

/// Shares of the offered rate.
pub fn client_senders(rate: u64) -> usize {
    (rate / 10).div_ceil(CLIENT_EVENTS_PER_SECOND).max(1) as usize
}

struct Http {
    client: reqwest::Client,
    gateways: Vec<SocketAddr>,
    plan: Arc<Plan>,
    ledger: Arc<Ledger>,
    /// Answers that are not retried (4xx): each is a bug of the server or of this tool.
    refused: Arc<Refusals>,
    /// Attempts that were retried, by cause.
    retried: Arc<Tally>,
}

/// Offers HTTP requests at `rate` events per second until the ledger's events (minus the client
/// events' share) are sent, then waits for every request's final answer.
pub async fn run_http(
    plan: Arc<Plan>,
    ledger: Arc<Ledger>,
    gateways: Vec<SocketAddr>,
    refused: Arc<Refusals>,
    retried: Arc<Tally>,
) -> anyhow::Result<()> {
    let http = Arc::new(Http {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(MAX_IN_FLIGHT)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(15))
            .build()?,
        gateways,
        plan: plan.clone(),
        ledger,
        refused,
        retried,
    });
    let http_rate = (plan.rate - plan.rate / 10).max(1) as f64;
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let tasks = TaskTracker::new();
    let started = Instant::now();
    let mut offered = 0.0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut turn = 0usize;
    'offer: loop {
        tick.tick().await;
        let budget = started.elapsed().as_secs_f64() * http_rate;
        while offered < budget {
            let kind = CYCLE[turn % CYCLE.len()];
            turn += 1;
            let count = match kind {
                Kind::Batch => BATCH_EVENTS,
                Kind::Segment => SEGMENT_EVENTS,
                Kind::Trigger | Kind::Client => 1,
            };
            let Some(seqs) = http.ledger.allocate(count) else {
                break 'offer;
            };
            offered += count as f64;
            let permit = in_flight.clone().acquire_owned().await?;
            let http = http.clone();
            tasks.spawn(async move {
                http.send(kind, seqs.start, count, turn).await;
                drop(permit);
            });
        }
    }
    tasks.close();
    tasks.wait().await;
    Ok(())
}

impl Http {
    /// One request of `count` events from `first`, retried until answered 200 or [`RETRY_FOR`]
    /// passed; records the events as sent and, on 200, as acknowledged.
    async fn send(&self, kind: Kind, first: u64, count: u64, turn: usize) {
        let sent_us = payload::now_us();
        let channels = self.plan.channels as u64;
        let channel = |seq: u64| (seq % channels) as u16;
        let name = self.plan.event_name();
        let names: Vec<String> = (first..first + count)
            .map(|seq| self.plan.channel_name(channel(seq)))
            .collect();
        let event = |i: u64| Event {
            channel: &names[i as usize],
            name: &name,
            data: payload::encode(first + i, sent_us, 64),
        };
        let (path, body) = match kind {
            Kind::Trigger => (self.plan.api_path("events"), trigger_body(event(0))),
            Kind::Batch => (
                self.plan.api_path("batch_events"),
                batch_body((0..count).map(event).collect()),
            ),
            Kind::Segment => (
                "/v1/batch".to_owned(),
                segment_batch_body((0..count).map(|i| (first + i, event(i))).collect()),
            ),
            Kind::Client => unreachable!("client events go over WebSockets"),
        };
        for seq in first..first + count {
            let on = if kind == Kind::Segment {
                NO_CHANNEL
            } else {
                channel(seq)
            };
            self.ledger.sent(seq, kind, on, sent_us);
        }
        let idempotency_key = format!("{}-{first}", self.plan.tag);
        let deadline = Instant::now() + RETRY_FOR;
        let mut delay = Duration::from_millis(50);
        let mut gateway = turn;
        loop {
            let addr = self.gateways[gateway % self.gateways.len()];
            let outcome = self
                .attempt(addr, kind, &path, &body, &idempotency_key)
                .await;
            match outcome {
                Ok(200) => {
                    self.ledger.acked(first..first + count);
                    return;
                }
                Ok(status @ 502..=504) => self.retried.add(format!("HTTP {status}"), 1),
                Ok(status) => {
                    self.refused
                        .add(format!("{} answered HTTP {status}", kind.label()), 1);
                    return;
                }
                Err(error) => {
                    self.retried.add(error, 1);
                    // As a load balancer would: try the other gateway.
                    gateway += 1;
                }
            }
            if Instant::now() + delay > deadline {
                self.retried.add("gave up after retrying", 1);
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    async fn attempt(
        &self,
        addr: SocketAddr,
        kind: Kind,
        path: &str,
        body: &[u8],
        idempotency_key: &str,
    ) -> Result<u16, String> {
        let request = match kind {
            Kind::Segment => self.client.post(format!("http://{addr}{path}")).header(
                "authorization",
                format!("Basic {}", BASE64.encode(format!("{}:", self.plan.key))),
            ),
            _ => {
                let query = signed_query(
                    &self.plan.key,
                    &self.plan.secret,
                    "POST",
                    path,
                    body,
                    chrono::Utc::now().timestamp(),
                );
                self.client
                    .post(format!("http://{addr}{path}?{query}"))
                    .header("x-idempotency-key", idempotency_key)
            }
        };
        let response = request
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    "connection refused".to_owned()
                } else if e.is_timeout() {
                    "timed out".to_owned()
                } else {
                    "transport error".to_owned()
                }
            })?;
        let status = response.status().as_u16();
        let _ = response.bytes().await;
        Ok(status)
    }
}

/// The `auth` of a private-channel subscription.
pub fn private_auth(plan: &Plan, socket_id: &str, channel: &str) -> String {
    let signed = channel_string_to_sign(socket_id, channel, None);
    format!("{}:{}", plan.key, sign(&plan.secret, signed.as_bytes()))
}

/// Connection `index` sending client events on its channel through one gateway, reconnecting
/// when closed, until the ledger is exhausted or `stop` fires.
pub async fn run_client_sender(
    plan: Arc<Plan>,
    ledger: Arc<Ledger>,
    index: usize,
    gateway: SocketAddr,
    refused: Arc<Refusals>,
    reconnects: Arc<Tally>,
    stop: CancellationToken,
) {
    let channel = (index % plan.channels) as u16;
    let name = plan.channel_name(channel);
    let period = Duration::from_micros(1_000_000 / CLIENT_EVENTS_PER_SECOND);
    while !stop.is_cancelled() {
        let Ok((mut socket, socket_id)) = ws::connect(gateway, &plan.key, None).await else {
            reconnects.add("client sender: connect failed", 1);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let auth = private_auth(&plan, &socket_id, &name);
        if ws::subscribe(&mut socket, &name, Some(&auth), None)
            .await
            .is_err()
        {
            reconnects.add("client sender: subscribe failed", 1);
            continue;
        }
        // Sent, not yet settled: (seq, when).
        let mut pending: std::collections::VecDeque<(u64, Instant)> = Default::default();
        let mut tick = tokio::time::interval(period);
        let closed = loop {
            tokio::select! {
                _ = stop.cancelled() => break None,
                _ = tick.tick() => {
                    while pending.front().is_some_and(|(_, at)| at.elapsed() >= CLIENT_EVENT_SETTLE) {
                        let (seq, _) = pending.pop_front().expect("front exists");
                        ledger.acked(seq..seq + 1);
                    }
                    let Some(seqs) = ledger.allocate(1) else { break None };
                    let sent_us = payload::now_us();
                    ledger.sent(seqs.start, Kind::Client, channel, sent_us);
                    // `data` as an object, as pusher-js sends it: stored as that object.
                    let frame = format!(
                        r#"{{"event":"client-chaos","channel":"{name}","data":{}}}"#,
                        payload::encode(seqs.start, sent_us, 64)
                    );
                    if socket.send(Message::Text(frame)).await.is_err() {
                        break Some("send failed".to_owned());
                    }
                    pending.push_back((seqs.start, Instant::now()));
                }
                message = socket.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        if text.contains("\"pusher:error\"") {
                            if text.contains("4301") || text.contains("not allowed") {
                                refused.add(format!("client event refused: {text}"), 1);
                            }
                            // Not delivered: none of the pending events counts as accepted.
                            pending.clear();
                        } else if text.contains("\"pusher:ping\"") {
                            let pong = json!({"event": "pusher:pong", "data": {}}).to_string();
                            let _ = socket.send(Message::Text(pong)).await;
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        break Some(frame.map_or("close".to_owned(), |f| format!("close {}", u16::from(f.code))));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break Some("connection ended".to_owned()),
                },
            }
        };
        match closed {
            // Events still pending when the connection went are unknown: not counted accepted.
            Some(reason) => reconnects.add(format!("client sender: {reason}"), 1),
            None => {
                // The run is over: what is pending settles on an open connection.
                let settle = pending
                    .back()
                    .map(|(_, at)| CLIENT_EVENT_SETTLE.saturating_sub(at.elapsed()));
                if let Some(wait) = settle {
                    let errored = tokio::time::timeout(wait, async {
                        while let Some(Ok(message)) = socket.next().await {
                            if message
                                .to_text()
                                .is_ok_and(|t| t.contains("\"pusher:error\""))
                            {
                                return true;
                            }
                        }
                        true
                    })
                    .await
                    .unwrap_or(false);
                    if !errored {
                        for (seq, _) in pending.drain(..) {
                            ledger.acked(seq..seq + 1);
                        }
                    }
                }
                let _ = socket.close(None).await;
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
