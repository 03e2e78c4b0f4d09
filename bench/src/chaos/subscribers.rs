//! Live subscribers on the run's private channels, on both gateways. Each connection's life
//! from `subscription_succeeded` to its close is one [`Segment`] with the events it received;
//! a closed connection reconnects and starts a new segment, as pusher-js does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::producers::private_auth;
use super::Plan;
use crate::payload;
use crate::stats::SeqSet;
use crate::ws;

/// One connection's subscription, from `subscription_succeeded` to its end.
pub struct Segment {
    pub channel: u16,
    pub gateway: usize,
    pub start_us: u64,
    /// The close code or reason when the connection ended before the run did; `None` when it
    /// stayed open to the end.
    pub closed: Option<String>,
    /// The subscriber stopped reading on purpose (the stalled subscriber).
    pub stalled: bool,
    pub received: SeqSet,
}

/// What one subscriber saw.
#[derive(Default)]
pub struct Seen {
    pub segments: Vec<Segment>,
    /// Every delivery's latency.
    pub latencies: Vec<Sample>,
}

/// One delivery: when it arrived (ms on the run's clock), its latency (µs), and the gateway
/// (index) that delivered it.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at_ms: u32,
    pub latency_us: u32,
    pub gateway: usize,
}

/// Shared progress of all subscribers.
#[derive(Default)]
pub struct Progress {
    /// Subscribers that completed their first subscription.
    pub subscribed: AtomicUsize,
    /// When the last delivery arrived (µs on the run's clock).
    pub last_delivery_us: AtomicU64,
}

pub struct Subscriber {
    pub plan: Arc<Plan>,
    pub channel: u16,
    pub gateway: usize,
    pub addr: SocketAddr,
    pub progress: Arc<Progress>,
    /// For the stalled subscriber: stop reading when this fires.
    pub stall: Option<CancellationToken>,
}

impl Subscriber {
    /// Subscribes, reconnecting whenever the connection ends, until `stop` fires.
    pub async fn run(self, stop: CancellationToken) -> Seen {
        let mut seen = Seen::default();
        let mut first = true;
        let name = self.plan.channel_name(self.channel);
        while !stop.is_cancelled() {
            let Ok((mut socket, socket_id)) = ws::connect(self.addr, &self.plan.key, None).await
            else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let auth = private_auth(&self.plan, &socket_id, &name);
            if ws::subscribe(&mut socket, &name, Some(&auth), None)
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            if std::mem::take(&mut first) {
                self.progress.subscribed.fetch_add(1, Ordering::Relaxed);
            }
            let mut segment = Segment {
                channel: self.channel,
                gateway: self.gateway,
                start_us: payload::now_us(),
                closed: None,
                stalled: false,
                received: SeqSet::default(),
            };
            let stall = self.stall.clone().unwrap_or_default();
            loop {
                let message = tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = stall.cancelled(), if self.stall.is_some() && !segment.stalled => {
                        // Stop reading: the server must not let this socket slow the others.
                        segment.stalled = true;
                        stop.cancelled().await;
                        break;
                    }
                    message = socket.next() => message,
                };
                match message {
                    Some(Ok(Message::Text(text))) => {
                        if let Some((seq, sent_us)) = payload::decode(&text) {
                            let now = payload::now_us();
                            segment.received.insert(seq);
                            seen.latencies.push(Sample {
                                at_ms: (now / 1000) as u32,
                                latency_us: now.saturating_sub(sent_us).min(u64::from(u32::MAX))
                                    as u32,
                                gateway: self.gateway,
                            });
                            self.progress
                                .last_delivery_us
                                .fetch_max(now, Ordering::Relaxed);
                        } else if text.contains("\"pusher:ping\"") {
                            let pong = json!({"event": "pusher:pong", "data": {}}).to_string();
                            let _ = socket.send(Message::Text(pong)).await;
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        segment.closed =
                            Some(frame.map_or("close without a code".to_owned(), |f| {
                                format!("close {}", u16::from(f.code))
                            }));
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        segment.closed = Some("connection ended without a close frame".to_owned());
                        break;
                    }
                }
            }
            let ended = segment.closed.is_none();
            seen.segments.push(segment);
            if ended {
                let _ = socket.close(None).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    }
}
