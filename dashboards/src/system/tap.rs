//! The numbers the system view reads, tapped from the process's metrics as they are recorded:
//! [`Tapped`] wraps the Prometheus recorder and, for the few metrics the view shows, also adds
//! to a [`Tap`] — so the page and `/metrics` count the same events, from the same call sites.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// A tapped counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    EventsApi,
    EventsClient,
    EventsTrack,
    Deliveries,
    SlowCloses,
    Persisted,
    PersistDuplicates,
    DeadLettered,
}

impl Count {
    const ALL: [Count; 8] = [
        Count::EventsApi,
        Count::EventsClient,
        Count::EventsTrack,
        Count::Deliveries,
        Count::SlowCloses,
        Count::Persisted,
        Count::PersistDuplicates,
        Count::DeadLettered,
    ];

    /// The counter a metric key adds to, if the view shows it.
    fn of(key: &Key) -> Option<Count> {
        let label = |name: &str| {
            key.labels()
                .find(|label| label.key() == name)
                .map(|label| label.value().to_owned())
        };
        match key.name() {
            "switchboard_events_in_total" => match label("source").as_deref() {
                Some("api") => Some(Count::EventsApi),
                Some("client") => Some(Count::EventsClient),
                Some("track") => Some(Count::EventsTrack),
                _ => None,
            },
            "switchboard_deliveries_total" => Some(Count::Deliveries),
            "switchboard_slow_consumers_closed_total" => Some(Count::SlowCloses),
            "switchboard_persisted_events_total" => Some(Count::Persisted),
            "switchboard_persist_duplicates_total" => Some(Count::PersistDuplicates),
            "switchboard_dead_lettered_total" => Some(Count::DeadLettered),
            _ => None,
        }
    }
}

/// A tapped histogram of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    PublishConfirm,
    Persist,
}

impl Timing {
    fn of(key: &Key) -> Option<Timing> {
        match key.name() {
            "switchboard_publish_confirm_seconds" => Some(Timing::PublishConfirm),
            "switchboard_persist_seconds" => Some(Timing::Persist),
            _ => None,
        }
    }
}

/// The slowest and the mean of what was recorded since the last [`Tap::take`], in ms.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Latency {
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// One timing's window: microseconds, so the sum can be added atomically.
#[derive(Debug, Default)]
struct Window {
    max_us: AtomicU64,
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Window {
    fn record(&self, seconds: f64) {
        let micros = (seconds.max(0.0) * 1e6).round() as u64;
        self.max_us.fetch_max(micros, Ordering::Relaxed);
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn take(&self) -> Option<Latency> {
        let count = self.count.swap(0, Ordering::Relaxed);
        let sum = self.sum_us.swap(0, Ordering::Relaxed);
        let max = self.max_us.swap(0, Ordering::Relaxed);
        (count > 0).then(|| Latency {
            max_ms: max as f64 / 1e3,
            mean_ms: sum as f64 / count as f64 / 1e3,
        })
    }
}

/// The tapped totals since the process started and the timings since the last take.
#[derive(Debug, Default)]
pub struct Tap {
    counts: [AtomicU64; Count::ALL.len()],
    timings: [Window; 2],
}

impl Tap {
    /// The total of `count` since the process started.
    pub fn total(&self, count: Count) -> u64 {
        self.counts[count as usize].load(Ordering::Relaxed)
    }

    /// The timings of `timing` recorded since the previous call.
    pub fn take(&self, timing: Timing) -> Option<Latency> {
        self.timings[timing as usize].take()
    }

    fn add(&self, count: Count, value: u64) {
        self.counts[count as usize].fetch_add(value, Ordering::Relaxed);
    }
}

/// A recorder that records into `inner` and, for the metrics a [`Tap`] shows, into it too.
pub struct Tapped<R> {
    inner: R,
    tap: Arc<Tap>,
}

impl<R> Tapped<R> {
    pub fn new(inner: R, tap: Arc<Tap>) -> Tapped<R> {
        Tapped { inner, tap }
    }
}

struct TapCounter {
    inner: Counter,
    tap: Arc<Tap>,
    count: Count,
}

impl CounterFn for TapCounter {
    fn increment(&self, value: u64) {
        self.inner.increment(value);
        self.tap.add(self.count, value);
    }

    fn absolute(&self, value: u64) {
        self.inner.absolute(value);
        self.tap.counts[self.count as usize].fetch_max(value, Ordering::Relaxed);
    }
}

struct TapHistogram {
    inner: Histogram,
    tap: Arc<Tap>,
    timing: Timing,
}

impl HistogramFn for TapHistogram {
    fn record(&self, value: f64) {
        self.inner.record(value);
        self.tap.timings[self.timing as usize].record(value);
    }
}

impl<R: Recorder> Recorder for Tapped<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        let inner = self.inner.register_counter(key, metadata);
        match Count::of(key) {
            Some(count) => Counter::from_arc(Arc::new(TapCounter {
                inner,
                tap: self.tap.clone(),
                count,
            })),
            None => inner,
        }
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.inner.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        let inner = self.inner.register_histogram(key, metadata);
        match Timing::of(key) {
            Some(timing) => Histogram::from_arc(Arc::new(TapHistogram {
                inner,
                tap: self.tap.clone(),
                timing,
            })),
            None => inner,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shown_metrics_are_tapped_and_the_others_pass_through() {
        let tap = Arc::new(Tap::default());
        let recorder = Tapped::new(metrics::NoopRecorder, tap.clone());
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("switchboard_events_in_total", "source" => "api").increment(2);
            metrics::counter!("switchboard_events_in_total", "source" => "track").increment(1);
            metrics::counter!("switchboard_events_in_total", "source" => "other").increment(7);
            metrics::counter!("switchboard_deliveries_total").increment(5);
            metrics::counter!("switchboard_dead_lettered_total", "reason" => "decode").increment(1);
            metrics::counter!("switchboard_dead_lettered_total", "reason" => "failed").increment(1);
            metrics::counter!("switchboard_accept_errors_total").increment(9);
            metrics::histogram!("switchboard_publish_confirm_seconds").record(0.004);
            metrics::histogram!("switchboard_publish_confirm_seconds").record(0.002);
        });
        assert_eq!(tap.total(Count::EventsApi), 2);
        assert_eq!(tap.total(Count::EventsTrack), 1);
        assert_eq!(tap.total(Count::EventsClient), 0);
        assert_eq!(tap.total(Count::Deliveries), 5);
        assert_eq!(tap.total(Count::DeadLettered), 2);
        assert_eq!(
            tap.take(Timing::PublishConfirm),
            Some(Latency {
                max_ms: 4.0,
                mean_ms: 3.0
            })
        );
        assert_eq!(tap.take(Timing::PublishConfirm), None, "taken");
        assert_eq!(tap.take(Timing::Persist), None);
    }
}
