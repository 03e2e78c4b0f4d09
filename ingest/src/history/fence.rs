//! The gateway's side of the storage fence (ARCHITECTURE.md, "Decisions (history)"): before a
//! history request is answered, every event confirmed before it arrived is in Postgres.
//!
//! One task runs fence rounds, one at a time. A round takes every request waiting when it
//! starts (so concurrent requests share it), publishes a fence to the persist queue, and is
//! done once as many consumers of the queue as it has now have recorded a copy of it; a copy is
//! published again every 50 ms until then. RabbitMQ delivers the queue in order, so a consumer
//! that recorded a copy had committed everything it took before; and every message confirmed
//! before the round began was delivered before the first copy. A round that is not done within
//! [`FENCE_TIMEOUT`] fails, and its requests are answered 503.

use std::time::Duration;

use bus::FencePublisher;
use sqlx::PgPool;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// How long a history request waits for its fence before it is answered 503.
pub const FENCE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a copy of an unrecorded fence is published again (a new consumer, or one that took
/// an earlier copy before it was recorded, gets the next one).
const REPUBLISH_EVERY: Duration = Duration::from_millis(50);
/// How often a round looks whether its fence is recorded.
const CHECK_EVERY: Duration = Duration::from_millis(10);
/// Requests waiting for the next round; beyond, a request is answered 503 at once.
const MAX_WAITING: usize = 1024;

/// Why a fence round did not complete: the 503's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FenceError {
    #[error("RabbitMQ is unavailable")]
    Broker,
    #[error("no worker is consuming the persist queue")]
    NoWorker,
    #[error("the workers have not stored everything accepted before the request yet")]
    Behind,
    #[error("Postgres did not answer")]
    Database,
    #[error("too many history requests are waiting")]
    Busy,
    #[error("the gateway is shutting down")]
    Stopped,
}

impl FenceError {
    const ALL: [FenceError; 6] = [
        FenceError::Broker,
        FenceError::NoWorker,
        FenceError::Behind,
        FenceError::Database,
        FenceError::Busy,
        FenceError::Stopped,
    ];

    fn label(self) -> &'static str {
        match self {
            FenceError::Broker => "broker",
            FenceError::NoWorker => "no_worker",
            FenceError::Behind => "behind",
            FenceError::Database => "database",
            FenceError::Busy => "busy",
            FenceError::Stopped => "stopped",
        }
    }
}

/// A request waiting for a round: when it arrived, and where its answer goes.
struct Waiter {
    arrived: Instant,
    answer: oneshot::Sender<Result<(), FenceError>>,
}

/// How long after its round's deadline a request still waits for the round's answer (the
/// rounds' task is late only when it cannot run).
const ANSWER_GRACE: Duration = Duration::from_millis(100);

/// The way to the fence task; cheap to clone.
#[derive(Clone)]
pub struct StorageFence {
    waiting: mpsc::Sender<Waiter>,
}

impl StorageFence {
    /// Starts the fence task on `tracker`; it ends at `shutdown`.
    pub fn spawn(
        publisher: FencePublisher,
        pool: PgPool,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> StorageFence {
        for error in FenceError::ALL {
            metrics::counter!("switchboard_history_fence_failures_total", "reason" => error.label())
                .increment(0);
        }
        let (waiting, requests) = mpsc::channel(MAX_WAITING);
        let rounds = Rounds { publisher, pool };
        tracker.spawn(drive(rounds, requests, shutdown));
        StorageFence { waiting }
    }

    /// Resolves once every event confirmed before this call is stored, or with why that could
    /// not be established within [`FENCE_TIMEOUT`].
    pub async fn wait(&self) -> Result<(), FenceError> {
        let (answer, answered) = oneshot::channel();
        let waiter = Waiter {
            arrived: Instant::now(),
            answer,
        };
        let outcome = match self.waiting.try_send(waiter) {
            Err(_) => Err(FenceError::Busy),
            Ok(()) => match tokio::time::timeout(FENCE_TIMEOUT + ANSWER_GRACE, answered).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => Err(FenceError::Stopped),
                // Its round answers by its deadline; only a task that cannot run is later.
                Err(_) => Err(FenceError::Behind),
            },
        };
        if let Err(error) = outcome {
            metrics::counter!("switchboard_history_fence_failures_total", "reason" => error.label())
                .increment(1);
        }
        outcome
    }
}

async fn drive(rounds: Rounds, mut requests: mpsc::Receiver<Waiter>, shutdown: CancellationToken) {
    loop {
        let first = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            first = requests.recv() => match first {
                Some(first) => first,
                None => return,
            },
        };
        // Every request taken now arrived before the round's first copy is published.
        let mut waiters = vec![first];
        while let Ok(more) = requests.try_recv() {
            waiters.push(more);
        }
        // Each request waits at most FENCE_TIMEOUT from its arrival.
        let deadline = waiters
            .iter()
            .map(|waiter| waiter.arrived)
            .min()
            .unwrap_or_else(Instant::now)
            + FENCE_TIMEOUT;
        let started = Instant::now();
        let outcome = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            outcome = rounds.run(deadline) => outcome,
        };
        metrics::histogram!("switchboard_history_fence_seconds")
            .record(started.elapsed().as_secs_f64());
        for waiter in waiters {
            let _ = waiter.answer.send(outcome);
        }
    }
}

struct Rounds {
    publisher: FencePublisher,
    pool: PgPool,
}

impl Rounds {
    /// One round: a fresh fence, published until every consumer of the persist queue recorded
    /// a copy, at the latest by `deadline`.
    async fn run(&self, deadline: Instant) -> Result<(), FenceError> {
        let token = Uuid::now_v7();
        let mut next_copy = Instant::now();
        let mut published = false;
        let mut failure = FenceError::Behind;
        loop {
            if Instant::now() >= next_copy {
                let copy = tokio::time::timeout_at(deadline, self.publisher.publish(token)).await;
                match copy {
                    Ok(Ok(())) => published = true,
                    Ok(Err(_)) => failure = FenceError::Broker,
                    Err(_) => {}
                }
                next_copy = Instant::now() + REPUBLISH_EVERY;
            }
            if published {
                match tokio::time::timeout_at(deadline, self.recorded(token)).await {
                    Ok(Ok(true)) => return Ok(()),
                    Ok(Ok(false)) => failure = FenceError::Behind,
                    Ok(Err(error)) => failure = error,
                    Err(_) => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(failure);
            }
            tokio::time::sleep_until(deadline.min(Instant::now() + CHECK_EVERY)).await;
        }
    }

    /// Whether the fence is recorded by as many consumers as the persist queue has. The
    /// recorders are read before the count: with no consumer lost meanwhile, the recorders are
    /// consumers still, so as many recorders as consumers means all of them.
    async fn recorded(&self, token: Uuid) -> Result<bool, FenceError> {
        let recorders: i64 =
            sqlx::query_scalar("SELECT count(*) FROM persist_fences WHERE token = $1")
                .bind(token)
                .fetch_one(&self.pool)
                .await
                .map_err(|_| FenceError::Database)?;
        let consumers = self
            .publisher
            .consumers()
            .await
            .map_err(|_| FenceError::Broker)?;
        if consumers == 0 {
            return Err(FenceError::NoWorker);
        }
        Ok(recorders >= i64::from(consumers))
    }
}
