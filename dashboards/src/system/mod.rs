//! The system view's numbers: an in-process sampler takes one [`Sample`] a second from where the
//! numbers live — the tapped counters and timings ([`tap`]), the registry's connections per app
//! with their peak within the second, the broker's queue depths — keeps the last
//! [`HISTORY`] in a ring and pushes each to the pages watching (Server-Sent Events).

pub mod tap;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, Stream, StreamExt};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use warp::sse::Event;

use tap::{Count, Latency, Tap, Timing};

/// Samples kept: 15 minutes at one a second.
pub const HISTORY: usize = 900;
/// How often a sample is taken.
pub const RESOLUTION: Duration = Duration::from_secs(1);
/// Samples a slow page may fall behind before it skips ahead.
const SUBSCRIBER_BACKLOG: usize = 16;

/// An app's connections across the cluster and its subscriptions on this node: now, and the
/// most at any moment since the previous sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConnections {
    pub app_id: String,
    pub now: usize,
    pub peak: usize,
    pub subscriptions_now: usize,
    pub subscriptions_peak: usize,
}

/// The depths of the queues the view shows; `None` while unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueCounts {
    pub persist: Option<u64>,
    pub dead: Option<u64>,
    pub webhooks: Option<u64>,
}

type Read<T> = Box<dyn Fn() -> T + Send + Sync>;

/// Where the sampler reads.
pub struct Sources {
    pub tap: Arc<Tap>,
    /// Connections per app with their peaks since the previous call (`None`: no gateway here).
    pub connections: Option<Read<Vec<AppConnections>>>,
    pub queues: Read<QueueCounts>,
    /// The configured apps and their connection quotas, in order.
    pub apps: Vec<(String, Option<usize>)>,
    /// Whether this process both accepts and stores events (then accepted − stored is its lag).
    pub persist_lag: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EventsIn {
    pub api: u64,
    pub client: u64,
    pub track: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppSample {
    pub app_id: String,
    /// Connections across the cluster.
    pub now: usize,
    pub peak: usize,
    pub quota: Option<usize>,
    /// Subscriptions on this node.
    pub subscriptions_now: usize,
    pub subscriptions_peak: usize,
}

/// One second of the system: counts are of that second, connections its peak.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Milliseconds since the Unix epoch at the end of the second.
    pub t: i64,
    pub events_in: EventsIn,
    pub deliveries: u64,
    pub slow_closes: u64,
    /// Events the worker of this process stored (or found stored, or dead-lettered).
    pub stored: u64,
    /// Accepted but not yet stored by this process; `None` unless it runs both.
    pub persist_lag: Option<u64>,
    pub confirm: Option<Latency>,
    pub persist: Option<Latency>,
    /// Empty when this process has no gateway.
    pub connections: Vec<AppSample>,
    pub queues: QueueCounts,
}

/// Totals at the previous sample, to take differences from.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    api: u64,
    client: u64,
    track: u64,
    deliveries: u64,
    slow_closes: u64,
    stored: u64,
}

impl Totals {
    fn read(tap: &Tap) -> Totals {
        Totals {
            api: tap.total(Count::EventsApi),
            client: tap.total(Count::EventsClient),
            track: tap.total(Count::EventsTrack),
            deliveries: tap.total(Count::Deliveries),
            slow_closes: tap.total(Count::SlowCloses),
            stored: tap.total(Count::Persisted)
                + tap.total(Count::PersistDuplicates)
                + tap.total(Count::DeadLettered),
        }
    }

    fn accepted(&self) -> u64 {
        self.api + self.client + self.track
    }
}

struct Ring {
    samples: VecDeque<Arc<Sample>>,
    live: broadcast::Sender<Arc<Sample>>,
}

/// The last [`HISTORY`] samples and the pages watching.
pub struct System {
    ring: Mutex<Ring>,
    shutdown: CancellationToken,
}

impl System {
    /// An empty history; streams to pages end at `shutdown`.
    pub fn new(shutdown: CancellationToken) -> Arc<System> {
        let (live, _) = broadcast::channel(SUBSCRIBER_BACKLOG);
        Arc::new(System {
            ring: Mutex::new(Ring {
                samples: VecDeque::with_capacity(HISTORY),
                live,
            }),
            shutdown,
        })
    }

    /// Takes a sample every [`RESOLUTION`] from `sources` until the shutdown.
    pub async fn run(self: Arc<Self>, sources: Sources) {
        let mut ticks = tokio::time::interval(RESOLUTION);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let mut previous = Totals::read(&sources.tap);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let totals = Totals::read(&sources.tap);
            let sample = sample(
                &sources,
                previous,
                totals,
                chrono::Utc::now().timestamp_millis(),
            );
            previous = totals;
            self.push(sample);
        }
    }

    fn push(&self, sample: Sample) {
        let sample = Arc::new(sample);
        let mut ring = self.ring.lock();
        if ring.samples.len() == HISTORY {
            ring.samples.pop_front();
        }
        ring.samples.push_back(sample.clone());
        // No page watching is not an error.
        let _ = ring.live.send(sample);
    }

    /// What a page receives: the history as one `history` event, then a `sample` event a
    /// second, until the shutdown. Nothing is missed or repeated between the two. With an
    /// `app_id`, the samples carry that app's counts only (a page shows one app; the history
    /// of every configured app would weigh 900 times their number).
    pub fn stream(
        &self,
        app_id: Option<String>,
    ) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
        let (history, live) = {
            let ring = self.ring.lock();
            let history: Vec<Arc<Sample>> = ring.samples.iter().cloned().collect();
            (history, ring.live.subscribe())
        };
        let only = Arc::new(app_id);
        let first = {
            let only = only.clone();
            stream::once(async move {
                let history: Vec<Sample> = history.iter().map(|s| s.of(only.as_deref())).collect();
                event("history", &history)
            })
        };
        let rest = stream::unfold(live, move |mut live| {
            let only = only.clone();
            async move {
                loop {
                    match live.recv().await {
                        Ok(sample) => {
                            return Some((event("sample", &sample.of(only.as_deref())), live))
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        first
            .chain(rest)
            .take_until(self.shutdown.clone().cancelled_owned())
    }
}

impl Sample {
    /// The sample with the connections of `app_id` only (all when `None`).
    fn of(&self, app_id: Option<&str>) -> Sample {
        let mut sample = self.clone();
        if let Some(app_id) = app_id {
            sample.connections.retain(|c| c.app_id == app_id);
        }
        sample
    }
}

fn event(name: &str, data: &impl Serialize) -> Result<Event, Infallible> {
    let json = serde_json::to_string(data).expect("samples serialize");
    Ok(Event::default().event(name).data(json))
}

fn sample(sources: &Sources, previous: Totals, totals: Totals, t: i64) -> Sample {
    let connections = sources.connections.as_ref().map(|read| read());
    let connections = match connections {
        None => Vec::new(),
        Some(counted) => sources
            .apps
            .iter()
            .map(|(app_id, quota)| {
                let counts = counted.iter().find(|c| &c.app_id == app_id);
                AppSample {
                    app_id: app_id.clone(),
                    now: counts.map_or(0, |c| c.now),
                    peak: counts.map_or(0, |c| c.peak),
                    quota: *quota,
                    subscriptions_now: counts.map_or(0, |c| c.subscriptions_now),
                    subscriptions_peak: counts.map_or(0, |c| c.subscriptions_peak),
                }
            })
            .collect(),
    };
    Sample {
        t,
        events_in: EventsIn {
            api: totals.api - previous.api,
            client: totals.client - previous.client,
            track: totals.track - previous.track,
        },
        deliveries: totals.deliveries - previous.deliveries,
        slow_closes: totals.slow_closes - previous.slow_closes,
        stored: totals.stored - previous.stored,
        persist_lag: sources
            .persist_lag
            .then(|| totals.accepted().saturating_sub(totals.stored)),
        confirm: sources.tap.take(Timing::PublishConfirm),
        persist: sources.tap.take(Timing::Persist),
        connections,
        queues: (sources.queues)(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(tap: Arc<Tap>) -> Sources {
        Sources {
            tap,
            connections: Some(Box::new(|| {
                vec![AppConnections {
                    app_id: "b".into(),
                    now: 2,
                    peak: 5,
                    subscriptions_now: 7,
                    subscriptions_peak: 9,
                }]
            })),
            queues: Box::new(|| QueueCounts {
                persist: Some(3),
                dead: None,
                webhooks: Some(0),
            }),
            apps: vec![("a".into(), None), ("b".into(), Some(10))],
            persist_lag: true,
        }
    }

    #[test]
    fn a_sample_is_the_second_s_differences_and_every_app_s_peak() {
        let tap = Arc::new(Tap::default());
        let sources = sources(tap);
        let previous = Totals {
            api: 10,
            client: 1,
            track: 4,
            deliveries: 100,
            slow_closes: 0,
            stored: 12,
        };
        let totals = Totals {
            api: 13,
            deliveries: 130,
            stored: 14,
            slow_closes: 1,
            ..previous
        };
        let sample = sample(&sources, previous, totals, 1_000);
        assert_eq!(
            sample.events_in,
            EventsIn {
                api: 3,
                client: 0,
                track: 0
            }
        );
        assert_eq!(sample.deliveries, 30);
        assert_eq!(sample.slow_closes, 1);
        assert_eq!(sample.stored, 2);
        assert_eq!(sample.persist_lag, Some(18 - 14));
        assert_eq!(
            sample.connections,
            vec![
                AppSample {
                    app_id: "a".into(),
                    now: 0,
                    peak: 0,
                    quota: None,
                    subscriptions_now: 0,
                    subscriptions_peak: 0,
                },
                AppSample {
                    app_id: "b".into(),
                    now: 2,
                    peak: 5,
                    quota: Some(10),
                    subscriptions_now: 7,
                    subscriptions_peak: 9,
                },
            ]
        );
        assert_eq!(sample.queues.persist, Some(3));
    }

    #[tokio::test]
    async fn the_ring_keeps_the_last_fifteen_minutes_and_streams_the_rest() {
        let system = System::new(CancellationToken::new());
        let tap = Arc::new(Tap::default());
        let sources = sources(tap);
        for t in 0..(HISTORY as i64 + 5) {
            system.push(sample(&sources, Totals::default(), Totals::default(), t));
        }
        let mut events = Box::pin(system.stream(Some("b".into())));
        let history = events.next().await.unwrap().unwrap().to_string();
        assert!(history.starts_with("event:history\n"));
        assert!(history.contains("\"app_id\":\"b\""));
        assert!(
            !history.contains("\"app_id\":\"a\""),
            "only the app asked for"
        );
        assert!(history.contains("\"t\":5,"), "the oldest kept");
        assert!(!history.contains("\"t\":4,"), "older ones dropped");
        system.push(sample(
            &sources,
            Totals::default(),
            Totals::default(),
            7_777,
        ));
        let next = events.next().await.unwrap().unwrap().to_string();
        assert!(
            next.contains("event:sample") && next.contains("\"t\":7777"),
            "{next}"
        );
        system.shutdown.cancel();
        assert!(events.next().await.is_none(), "the stream ends at shutdown");
    }
}
