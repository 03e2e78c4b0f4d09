//! `switchboard:track`: Segment events over the WebSocket, acknowledged per event (README,
//! "Analytics over the WebSocket").
//!
//! The reader refuses what it can refuse at once (over the rate limit, too many batches in
//! flight) and hands each other batch to the connection's track task, spawned with the first
//! batch. The task prepares the batch with `protocol::segment` (per-event verdicts: the valid
//! events are published, each invalid one is nacked with the reason the HTTP API gives), queues
//! the envelopes on the publisher without waiting, and awaits the confirms of up to
//! [`MAX_IN_FLIGHT`] batches at once, answering them in the order they were sent. The reader
//! never waits on the broker: pings and every other frame keep flowing.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use bus::{Pending, PublishError};
use chrono::Utc;
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use governor::clock::DefaultClock;
use protocol::frame;
use protocol::segment::{readable_message_ids, BodyError, Edge, Endpoint, Request, Verdict};
use protocol::{Envelope, Source};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::rate::RateLimit;
use crate::apps::App;
use crate::error::ApiError;
use crate::offload::SEGMENT_INLINE_MAX_BYTES;
use crate::Gateway;
use dispatcher::SocketHandle;

/// Batches of one connection queued or awaiting their confirm; beyond, a batch is nacked with
/// `retry: true`.
pub const MAX_IN_FLIGHT: usize = 16;

/// Longest `messageId` over the WebSocket, in characters.
pub const MAX_MESSAGE_ID_CHARS: usize = 100;

/// The nack reason of an event without a usable `messageId` (it is named by none).
pub const MESSAGE_ID_REQUIRED: &str = "messageId is required over the WebSocket";

/// Why events were nacked: the `reason` label of `switchboard_ws_track_refused_total`.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// The frame is not a batch, or too big a one.
    Malformed,
    /// The event is invalid (the HTTP API would refuse it with 400 or 413).
    Invalid,
    /// The event has no `messageId` to be named by.
    Unnamed,
    RateLimited,
    InFlight,
    /// RabbitMQ did not take or confirm it.
    Unavailable,
}

impl Refusal {
    const ALL: [Refusal; 6] = [
        Refusal::Malformed,
        Refusal::Invalid,
        Refusal::Unnamed,
        Refusal::RateLimited,
        Refusal::InFlight,
        Refusal::Unavailable,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Invalid => "invalid",
            Refusal::Unnamed => "unnamed",
            Refusal::RateLimited => "rate_limited",
            Refusal::InFlight => "in_flight",
            Refusal::Unavailable => "unavailable",
        }
    }

    /// Whether sending the events again (same `messageId`) may succeed.
    fn retry(self) -> bool {
        matches!(
            self,
            Refusal::RateLimited | Refusal::InFlight | Refusal::Unavailable
        )
    }
}

/// Exposes `switchboard_ws_track_refused_total` at 0 for every reason.
pub fn register_metrics() {
    for refusal in Refusal::ALL {
        metrics::counter!("switchboard_ws_track_refused_total", "reason" => refusal.label())
            .increment(0);
    }
}

/// Nacks `message_ids` (`events` of them: unnamed ones count without an id) for `reason`.
fn nack(
    handle: &SocketHandle,
    refusal: Refusal,
    message_ids: &[String],
    events: usize,
    reason: &str,
) {
    metrics::counter!("switchboard_ws_track_refused_total", "reason" => refusal.label())
        .increment(events as u64);
    handle.send(frame::encode_track_nack(message_ids, reason, refusal.retry()).into());
}

/// Where the connection came from: the Segment `ip` and `userAgent` of its events unless their
/// `context` gives them.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

/// One connection's track state.
pub(super) struct Track {
    limit: RateLimit,
    in_flight: Arc<Semaphore>,
    origin: Arc<Origin>,
    /// To the connection's track task, once it runs.
    batches: Option<mpsc::Sender<Batch>>,
}

/// A batch accepted by the reader, holding its place among the batches in flight.
struct Batch {
    body: String,
    _permit: OwnedSemaphorePermit,
}

impl Track {
    pub(super) fn new(app: &App, origin: Origin) -> Track {
        Track {
            limit: RateLimit::new(app.limits.track_batches_per_second, DefaultClock::default()),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            origin: Arc::new(origin),
            batches: None,
        }
    }

    /// Takes one `switchboard:track` frame's `body`. Never waits.
    pub(super) fn take(
        &mut self,
        gateway: &Arc<Gateway>,
        app: &Arc<App>,
        handle: &SocketHandle,
        body: String,
    ) {
        if !self.limit.allow() {
            let ids = readable_message_ids(body.as_bytes());
            let reason = match app.limits.track_batches_per_second {
                0 => "Analytics over the WebSocket are off for this app \
                      (limits.track_batches_per_second = 0): send them to /v1/batch"
                    .to_owned(),
                limit => format!(
                    "Track rate limit reached: at most {limit} batches per second \
                     (limits.track_batches_per_second)"
                ),
            };
            return nack(handle, Refusal::RateLimited, &ids, ids.len(), &reason);
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            let ids = readable_message_ids(body.as_bytes());
            let reason = format!(
                "too many batches in flight: at most {MAX_IN_FLIGHT} awaiting their confirm"
            );
            return nack(handle, Refusal::InFlight, &ids, ids.len(), &reason);
        };
        let batches = self.batches.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
            let task = run(
                gateway.clone(),
                app.clone(),
                handle.clone(),
                self.origin.clone(),
                rx,
            );
            gateway.sessions.spawn(task);
            tx
        });
        // Never full: a batch holds one of the MAX_IN_FLIGHT permits until it is answered.
        let _ = batches.try_send(Batch {
            body,
            _permit: permit,
        });
    }
}

/// A batch published, until its confirm.
struct Awaited {
    message_ids: Vec<String>,
    events: usize,
    _permit: OwnedSemaphorePermit,
}

/// The connection's track task: prepares each batch, publishes its valid events, answers each
/// batch once confirmed, in order. Ends when the reader is gone and every confirm is in.
async fn run(
    gateway: Arc<Gateway>,
    app: Arc<App>,
    handle: SocketHandle,
    origin: Arc<Origin>,
    mut batches: mpsc::Receiver<Batch>,
) {
    let mut confirms = FuturesOrdered::new();
    let mut open = true;
    loop {
        tokio::select! {
            batch = batches.recv(), if open => match batch {
                Some(batch) => {
                    if let Some(awaiting) = publish(&gateway, &app, &handle, &origin, batch).await {
                        confirms.push_back(awaiting);
                    }
                }
                None => open = false,
            },
            Some((confirmed, awaited)) = confirms.next(), if !confirms.is_empty() => {
                answer(&handle, confirmed, &awaited);
            }
            else => break,
        }
    }
}

type Confirm = std::pin::Pin<
    Box<dyn std::future::Future<Output = (Result<(), PublishError>, Awaited)> + Send>,
>;

/// Prepares a batch, nacks what is refused, queues the valid events on the publisher; returns
/// the confirm to await, if anything was published.
async fn publish(
    gateway: &Arc<Gateway>,
    app: &Arc<App>,
    handle: &SocketHandle,
    origin: &Arc<Origin>,
    batch: Batch,
) -> Option<Confirm> {
    let Batch {
        body,
        _permit: permit,
    } = batch;
    let size = body.len();
    let job = {
        let (app, origin) = (app.clone(), origin.clone());
        move || prepare(&app, &origin, &body)
    };
    let verdicts = match gateway
        .offload
        .run(size, SEGMENT_INLINE_MAX_BYTES, job)
        .await
    {
        Ok(verdicts) => verdicts,
        Err((error, ids)) => {
            nack(
                handle,
                Refusal::Malformed,
                &ids,
                ids.len(),
                &error.to_string(),
            );
            return None;
        }
    };
    let sorted = Sorted::of(verdicts);
    if sorted.unnamed > 0 {
        nack(
            handle,
            Refusal::Unnamed,
            &[],
            sorted.unnamed,
            MESSAGE_ID_REQUIRED,
        );
    }
    for (reason, ids) in &sorted.refused {
        nack(handle, Refusal::Invalid, ids, ids.len(), reason);
    }
    if sorted.envelopes.is_empty() {
        return None;
    }
    let awaited = Awaited {
        events: sorted.envelopes.len(),
        message_ids: sorted.accepted,
        _permit: permit,
    };
    match gateway.publisher.enqueue(sorted.envelopes) {
        Ok(pending) => Some(Box::pin(confirmed(pending, awaited))),
        Err(error) => {
            answer(handle, Err(error), &awaited);
            None
        }
    }
}

async fn confirmed(pending: Pending, awaited: Awaited) -> (Result<(), PublishError>, Awaited) {
    (pending.confirmed().await, awaited)
}

/// Acks a confirmed batch, or nacks it with the HTTP API's 503 text.
fn answer(handle: &SocketHandle, confirmed: Result<(), PublishError>, awaited: &Awaited) {
    match confirmed {
        Ok(()) => {
            metrics::counter!("switchboard_events_in_total", "source" => Source::Track.as_str())
                .increment(awaited.events as u64);
            handle.send(frame::encode_track_ack(&awaited.message_ids).into());
        }
        Err(error) => {
            let reason = ApiError::Unavailable(error).to_string();
            nack(
                handle,
                Refusal::Unavailable,
                &awaited.message_ids,
                awaited.events,
                &reason,
            );
        }
    }
}

/// The verdicts of one batch, or why the frame as a whole was refused (with the `messageId`s
/// that could be read from it). The connection's app key is the write key: a `writeKey` in the
/// body is ignored.
fn prepare(
    app: &App,
    origin: &Origin,
    body: &str,
) -> Result<Vec<Verdict>, (BodyError, Vec<String>)> {
    let request = Request::parse(Endpoint::Batch, body.as_bytes())
        .map_err(|error| (error, readable_message_ids(body.as_bytes())))?;
    let edge = Edge {
        received_at: Utc::now(),
        ip: origin.ip,
        user_agent: origin.user_agent.as_deref(),
        live_channel: app.analytics_channel.name(),
    };
    Ok(request.verdicts(&app.id, &edge))
}

/// A batch's verdicts sorted into what to publish and what to nack, by reason.
#[derive(Default)]
struct Sorted {
    envelopes: Vec<Envelope>,
    /// The `messageId`s of `envelopes`.
    accepted: Vec<String>,
    /// Events without a usable `messageId`.
    unnamed: usize,
    /// The refused events' `messageId`s by reason (one nack per distinct reason).
    refused: BTreeMap<String, Vec<String>>,
}

impl Sorted {
    fn of(verdicts: Vec<Verdict>) -> Sorted {
        let mut sorted = Sorted::default();
        for Verdict {
            message_id,
            outcome,
        } in verdicts
        {
            let Some(id) = message_id else {
                sorted.unnamed += 1;
                continue;
            };
            let refusal = if id.chars().count() > MAX_MESSAGE_ID_CHARS {
                Err(format!(
                    "messageId is longer than {MAX_MESSAGE_ID_CHARS} characters over the WebSocket"
                ))
            } else {
                outcome.map_err(|error| error.to_string())
            };
            match refusal {
                Ok(envelope) => {
                    sorted.envelopes.push(envelope);
                    sorted.accepted.push(id);
                }
                Err(reason) => sorted.refused.entry(reason).or_default().push(id),
            }
        }
        sorted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(body: &str) -> Sorted {
        let app = App::new("1", "k", "s");
        Sorted::of(prepare(&app, &Origin::default(), body).unwrap())
    }

    #[test]
    fn verdicts_are_sorted_per_event_and_reason() {
        let long = "m".repeat(MAX_MESSAGE_ID_CHARS + 1);
        let body = format!(
            r#"{{"batch":[
            {{"type":"track","event":"a","userId":"u","messageId":"m1"}},
            {{"type":"track","userId":"u","messageId":"m2"}},
            {{"type":"track","event":"b","userId":"u"}},
            {{"type":"track","event":"c","userId":"u","messageId":""}},
            {{"type":"track","userId":"u","messageId":"m5"}},
            {{"type":"page","messageId":"m6"}},
            {{"type":"track","event":"d","userId":"u","messageId":"{long}"}},
            {{"type":"identify","userId":"u","messageId":"m8"}}
        ]}}"#
        );
        let sorted = sorted(&body);
        assert_eq!(sorted.accepted, ["m1", "m8"]);
        assert_eq!(sorted.envelopes.len(), 2);
        assert_eq!(sorted.unnamed, 2);
        let refused: Vec<(&str, Vec<&str>)> = sorted
            .refused
            .iter()
            .map(|(reason, ids)| (reason.as_str(), ids.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            refused,
            [
                ("`event` is required for this call", vec!["m2", "m5"]),
                (
                    "messageId is longer than 100 characters over the WebSocket",
                    vec![long.as_str()]
                ),
                ("userId or anonymousId is required", vec!["m6"]),
            ]
        );
    }

    #[test]
    fn a_frame_that_is_not_a_batch_is_refused_whole() {
        let app = App::new("1", "k", "s");
        for (body, ids) in [
            ("null", vec![]),
            ("not json", vec![]),
            (r#"{"batch":[]}"#, vec![]),
            (
                r#"{"batch":[{"messageId":"m1"}],"sentAt":"soon"}"#,
                vec!["m1"],
            ),
        ] {
            let Err((_, readable)) = prepare(&app, &Origin::default(), body) else {
                panic!("{body} was accepted");
            };
            assert_eq!(readable, ids, "{body}");
        }
    }
}
