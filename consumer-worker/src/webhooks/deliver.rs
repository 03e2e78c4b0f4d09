//! One delivery task per webhook: claims its due rows (with a lease, `FOR UPDATE SKIP LOCKED`,
//! so two workers never send one row at once and a crashed worker's rows are sent again once
//! its lease is over), sends them, and records each outcome. A slow or dead receiver holds up
//! only its own task.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use rand::Rng;
use reqwest::Client;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};
use uuid::Uuid;

use super::send::{self, Failure};
use super::store::{self, Claimed};
use super::target::Target;
use super::WebhooksConfig;

/// Most rows one task sends at once.
const CLAIM_LIMIT: i64 = 8;
/// How often an idle task looks for rows it was not told about (made by another worker, or
/// whose lease ran out).
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// What a lease adds to the request timeout: time to record the outcome.
const LEASE_MARGIN: Duration = Duration::from_secs(10);

/// The delay before the next attempt after `attempts` failed ones: "full jitter", a uniform
/// random delay between zero and `base × 2^(attempts − 1)`, capped at `max`.
pub(crate) fn retry_delay(
    base: Duration,
    max: Duration,
    attempts: u32,
    rng: &mut impl Rng,
) -> Duration {
    let exponent = attempts.saturating_sub(1).min(31);
    let ceiling = base.saturating_mul(1 << exponent).min(max);
    ceiling.mul_f64(rng.gen::<f64>())
}

pub(crate) struct Delivery {
    pub config: Arc<WebhooksConfig>,
    pub target: Target,
    pub pool: PgPool,
    pub client: Client,
    /// Told when the intake committed new rows for this webhook.
    pub wake: Arc<Notify>,
    pub shutdown: CancellationToken,
}

impl Delivery {
    pub(crate) async fn run(self) {
        let span = info_span!("webhook", app_id = %self.target.app_id, webhook = %self.target.name);
        async {
            debug!("webhook delivery task started");
            while !self.shutdown.is_cancelled() {
                let token = Uuid::new_v4();
                let lease = self.config.request_timeout + LEASE_MARGIN;
                let claimed = match store::claim(
                    &self.pool,
                    &self.target.app_id,
                    &self.target.name,
                    CLAIM_LIMIT,
                    lease,
                    token,
                )
                .await
                {
                    Ok(claimed) => claimed,
                    Err(error) => {
                        warn!(%error, "cannot claim webhook deliveries; retrying");
                        self.idle(POLL_INTERVAL).await;
                        continue;
                    }
                };
                if claimed.is_empty() {
                    let wait =
                        match store::next_due(&self.pool, &self.target.app_id, &self.target.name)
                            .await
                        {
                            Ok(Some(due)) => due.min(POLL_INTERVAL),
                            Ok(None) | Err(_) => POLL_INTERVAL,
                        };
                    self.idle(wait).await;
                    continue;
                }
                self.send_all(claimed, token).await;
            }
        }
        .instrument(span)
        .await;
    }

    /// Waits `wait`, or less when told of new rows or at shutdown.
    async fn idle(&self, wait: Duration) {
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => {}
            () = self.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }

    /// Sends the claimed rows concurrently and records each outcome; at shutdown the attempts
    /// are abandoned and the claims given up, so another worker sends them at once.
    async fn send_all(&self, claimed: Vec<Claimed>, token: Uuid) {
        let ids: Vec<Uuid> = claimed.iter().map(|row| row.id).collect();
        let attempts = join_all(claimed.iter().map(|row| self.send_one(row, token)));
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => {
                if let Err(error) = store::release(&self.pool, &ids, token).await {
                    warn!(%error, "cannot release webhook claims at shutdown; they are sent again after their lease");
                }
                info!(rows = ids.len(), "shutdown: webhook attempts abandoned, claims released");
            }
            _ = attempts => {}
        }
    }

    async fn send_one(&self, row: &Claimed, token: Uuid) {
        let id = row.id.to_string();
        let outcome = send::attempt(
            &self.client,
            &self.target,
            &id,
            row.body(),
            self.config.request_timeout,
            self.config.max_response_bytes,
        )
        .await;
        let recorded = match &outcome {
            Ok(()) => store::delivered(&self.pool, row.id, token)
                .await
                .map(|()| false),
            Err(failure) => self.record_failure(row, token, failure).await,
        };
        match (&outcome, recorded) {
            (Ok(()), Ok(_)) => {
                metrics::counter!("switchboard_webhook_attempts_total", "result" => "delivered")
                    .increment(1);
                debug!(delivery = %id, events = row.events(), "webhook delivered");
            }
            (Err(failure), Ok(dead)) => {
                metrics::counter!("switchboard_webhook_attempts_total", "result" => "failed")
                    .increment(1);
                metrics::counter!("switchboard_webhook_failures_total", "reason" => failure.label()).increment(1);
                if dead {
                    metrics::counter!("switchboard_webhook_dead_total").increment(1);
                    warn!(delivery = %id, reason = failure.label(), error = %failure.message(), "webhook dead: its retry period is over");
                } else {
                    debug!(delivery = %id, reason = failure.label(), "webhook attempt failed; retrying later");
                }
            }
            (_, Err(error)) => {
                warn!(%error, delivery = %id, "cannot record a webhook attempt; it is made again after its lease");
            }
        }
    }

    async fn record_failure(
        &self,
        row: &Claimed,
        token: Uuid,
        failure: &Failure,
    ) -> Result<bool, sqlx::Error> {
        let attempts = u32::try_from(row.attempts).unwrap_or(0).saturating_add(1);
        let delay = retry_delay(
            self.config.backoff_base,
            self.config.backoff_max,
            attempts,
            &mut rand::thread_rng(),
        );
        store::failed(
            &self.pool,
            row.id,
            token,
            &failure.message(),
            delay,
            self.config.retry_period,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::mock::StepRng;

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_full_jitter() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        // The largest value the generator gives: the ceiling itself (to the millisecond).
        let mut high = StepRng::new(u64::MAX, 0);
        let ceilings: Vec<u128> = (1..=9)
            .map(|attempts| retry_delay(base, max, attempts, &mut high).as_millis())
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        let mut low = StepRng::new(0, 0);
        assert_eq!(retry_delay(base, max, 5, &mut low), Duration::ZERO);
        // No overflow however many attempts.
        assert!(retry_delay(base, max, u32::MAX, &mut high) <= max);
    }
}
