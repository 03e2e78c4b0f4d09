//! CPU-heavy request work off the async worker threads: gzip inflation, Segment validation and
//! enrichment, the MD5 and JSON of large Pusher API bodies. Work on a body up to its call
//! site's limit ([`SEGMENT_INLINE_MAX_BYTES`], [`API_INLINE_MAX_BYTES`]: about 100 µs of work at
//! most, measured in BENCHMARKS.md, "Responsiveness") runs where it is; bigger work runs on
//! tokio's blocking pool, at most `permits` jobs at a time, so a burst of big requests can
//! neither stall the WebSocket sessions and small requests on the worker threads nor fill the
//! blocking pool with threads.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

/// The largest Segment body prepared on the async worker thread that received it: tiny events
/// cost about 25 ns per byte (a 16 KiB batch of 390 events about 400 µs), so 4 KiB is about
/// 100 µs. A gzip body always goes to the pool (it may inflate to 500 KB).
pub const SEGMENT_INLINE_MAX_BYTES: usize = 4 * 1024;

/// The largest Pusher API body verified (MD5, about 1.7 ns per byte) and parsed inline: 16 KiB
/// is about 30 µs; a 256 KB body's MD5 alone takes about 450 µs.
pub const API_INLINE_MAX_BYTES: usize = 16 * 1024;

/// The gate to the blocking pool.
#[derive(Debug, Clone)]
pub struct Offload {
    permits: Arc<Semaphore>,
}

impl Offload {
    /// At most `permits` jobs run on the blocking pool at once; the others wait for a permit,
    /// first come first served (each waiter is a request already read, so their number is
    /// bounded by the gateway's connections).
    pub fn new(permits: usize) -> Offload {
        Offload {
            permits: Arc::new(Semaphore::new(permits.max(1))),
        }
    }

    /// One permit per core: the blocking jobs and the worker threads share the cores, and the
    /// kernel preempts the jobs, so the workers keep answering while they run.
    pub fn per_core() -> Offload {
        Offload::new(std::thread::available_parallelism().map_or(1, usize::from))
    }

    /// Runs `work`, a job on a body of `size` bytes: here when `size <= inline_max`, else on
    /// the blocking pool under a permit. A job that panics panics the caller, as it would
    /// inline. A job whose caller went away (client disconnected) still runs to its end,
    /// holding its permit.
    pub async fn run<T, F>(&self, size: usize, inline_max: usize, work: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        if size <= inline_max {
            return work();
        }
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the offload semaphore is never closed");
        let job = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        });
        match job.await {
            Ok(value) => value,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }

    /// Parses a Pusher API JSON body, on the blocking pool when it is over
    /// [`API_INLINE_MAX_BYTES`].
    pub async fn json<T>(&self, body: &bytes::Bytes) -> Result<T, serde_json::Error>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let body = body.clone();
        self.run(body.len(), API_INLINE_MAX_BYTES, move || {
            serde_json::from_slice(&body)
        })
        .await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread::ThreadId;
    use std::time::Duration;

    /// Counts the ticks of a 1 ms timer on this (single-threaded) runtime while `work` runs: a
    /// blocked runtime does not tick.
    pub(crate) async fn ticks_during<T>(work: impl std::future::Future<Output = T>) -> (T, usize) {
        let ticks = Arc::new(AtomicUsize::new(0));
        let ticker = tokio::spawn({
            let ticks = ticks.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    ticks.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        tokio::task::yield_now().await;
        let before = ticks.load(Ordering::Relaxed);
        let value = work.await;
        let during = ticks.load(Ordering::Relaxed) - before;
        ticker.abort();
        (value, during)
    }

    /// About 50 ms of CPU work, and the thread that did it.
    fn busy() -> ThreadId {
        let until = std::time::Instant::now() + Duration::from_millis(50);
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
        std::thread::current().id()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn big_work_runs_on_the_blocking_pool_and_the_runtime_keeps_ticking() {
        let offload = Offload::new(1);
        let here = std::thread::current().id();
        let (thread, ticks) = ticks_during(offload.run(2, 1, busy)).await;
        assert_ne!(thread, here);
        assert!(ticks >= 1, "the runtime was blocked for 50 ms");
        // The control: the same work inline blocks the runtime, so the ticker cannot run.
        let (thread, ticks) = ticks_during(offload.run(1, 1, busy)).await;
        assert_eq!(thread, here);
        assert_eq!(ticks, 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn jobs_beyond_the_permits_wait() {
        let offload = Offload::new(1);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let job = || {
            let (running, most) = (running.clone(), most.clone());
            offload.run(1, 0, move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                busy();
                running.fetch_sub(1, Ordering::SeqCst);
            })
        };
        futures_util::future::join_all((0..4).map(|_| job())).await;
        assert_eq!(most.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn big_json_bodies_parse_the_same() {
        let offload = Offload::new(1);
        let text = serde_json::json!({ "data": "x".repeat(100_000) }).to_string();
        let body = bytes::Bytes::from(text.clone());
        let parsed: serde_json::Value = offload.json(&body).await.unwrap();
        assert_eq!(
            parsed,
            serde_json::from_str::<serde_json::Value>(&text).unwrap()
        );
        let broken = bytes::Bytes::from(format!("{text}}}"));
        assert!(offload.json::<serde_json::Value>(&broken).await.is_err());
    }
}
