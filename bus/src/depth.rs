//! Queue depths for the dashboard's system view: every `interval`, a passive declare of each
//! watched queue on a channel of its own on the process's shared connection; its message count is kept in an atomic, read
//! without waiting. Unknown (`None`) while the broker cannot be asked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{setup_step, Backoff, Broker, BusError};

const UNKNOWN: u64 = u64::MAX;

/// The last message counts of a fixed list of queues.
#[derive(Debug)]
pub struct QueueDepths {
    queues: Vec<String>,
    counts: Vec<AtomicU64>,
}

impl QueueDepths {
    pub fn new(queues: Vec<String>) -> Arc<QueueDepths> {
        let counts = queues.iter().map(|_| AtomicU64::new(UNKNOWN)).collect();
        Arc::new(QueueDepths { queues, counts })
    }

    /// The last count of the `index`th queue, `None` when unknown.
    pub fn get(&self, index: usize) -> Option<u64> {
        let count = self.counts.get(index)?.load(Ordering::Relaxed);
        (count != UNKNOWN).then_some(count)
    }

    fn forget(&self) {
        for count in &self.counts {
            count.store(UNKNOWN, Ordering::Relaxed);
        }
    }

    /// Asks the broker for the depths every `interval` until `shutdown`; opens its channel again
    /// with backoff, the counts unknown meanwhile.
    pub async fn watch(
        self: Arc<Self>,
        mut broker: Broker,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Backoff::default();
        loop {
            let failure = tokio::select! {
                _ = shutdown.cancelled() => return,
                failure = self.poll(&mut broker, interval, &mut backoff) => failure,
            };
            self.forget();
            debug!(error = %failure, "queue depths unavailable");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    async fn poll(
        &self,
        broker: &mut Broker,
        interval: Duration,
        backoff: &mut Backoff,
    ) -> BusError {
        let Some(connected) = broker.connected().await else {
            return BusError::NoUrl;
        };
        let opened = setup_step("opening a channel", connected.connection.create_channel()).await;
        let channel = match opened {
            Ok(channel) => channel,
            Err(error) => return error,
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let mut ticks = tokio::time::interval(interval);
        loop {
            ticks.tick().await;
            for (queue, count) in self.queues.iter().zip(&self.counts) {
                let declared = setup_step(
                    "asking a queue's depth",
                    channel.queue_declare(queue, passive, FieldTable::default()),
                )
                .await;
                match declared {
                    Ok(declared) => {
                        count.store(u64::from(declared.message_count()), Ordering::Relaxed);
                    }
                    Err(error) => {
                        // Best effort: a channel the broker closed fails to close again.
                        let _ = channel.close(200, "depth check failed").await;
                        return error;
                    }
                }
            }
            backoff.reset();
        }
    }
}
