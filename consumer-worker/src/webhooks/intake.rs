//! The webhook queue → `webhook_deliveries`: takes the messages that arrive within the batch
//! window of the first, sorts their events to every configured webhook that wants them (type
//! and channel prefix), cuts each webhook's events into batches of at most
//! `max_events_per_request`, inserts the batches in one transaction and only then acks the
//! messages. A crash before the commit means redelivery; nothing is acked that is not stored.

use std::collections::HashSet;
use std::sync::Arc;

use bus::Backoff;
use lapin::message::Delivery;
use lapin::types::DeliveryTag;
use protocol::webhook::{decode_queued, Queued, WebhookEvent};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::store::{self, NewBatch};
use super::target::Target;
use super::WebhooksConfig;
use crate::link::{Link, LinkConfig, LinkError, Reconnect};

pub(crate) struct Intake {
    pub config: Arc<WebhooksConfig>,
    pub broker: bus::Broker,
    pub pool: PgPool,
    /// One per target, in the order of `config.targets`.
    pub wakes: Vec<Arc<Notify>>,
    pub shutdown: CancellationToken,
}

/// Messages taken together.
#[derive(Default)]
struct Taken {
    messages: usize,
    last_tag: DeliveryTag,
    events: Vec<Queued>,
}

impl Intake {
    pub(crate) async fn run(self) {
        let link_config = LinkConfig {
            broker: &self.broker,
            topology: &self.config.topology,
            queue_type: self.config.queue_type,
            queue: self.config.topology.webhook_queue(),
            prefetch: self.config.prefetch,
        };
        let mut reconnect = Reconnect::new(&link_config, "webhook intake", self.shutdown.clone());
        while let Some(mut link) = reconnect.open().await {
            let outcome = self.consume(&mut link).await;
            link.close().await;
            match outcome {
                Ok(()) => break,
                Err(error) => reconnect.lost(error).await,
            }
        }
    }

    /// Stores batches until shutdown (`Ok`) or until the link fails.
    async fn consume(&self, link: &mut Link) -> Result<(), LinkError> {
        loop {
            let Some(taken) = self.take(link).await? else {
                return Ok(());
            };
            let batches = self.batches(&taken.events);
            if !self.store(&batches).await {
                info!("shutdown while Postgres is failing: the webhook messages are left unacked");
                return Ok(());
            }
            link.ack(taken.last_tag, true).await?;
            for (index, target) in self.config.targets.iter().enumerate() {
                if batches
                    .iter()
                    .any(|b| b.app_id == target.app_id && b.webhook == target.name)
                {
                    self.wakes[index].notify_one();
                }
            }
            debug!(
                messages = taken.messages,
                batches = batches.len(),
                "webhook batches stored"
            );
            if self.shutdown.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// Waits for a message, then takes what arrives within the batch window. `None` when
    /// shutdown comes first.
    async fn take(&self, link: &mut Link) -> Result<Option<Taken>, LinkError> {
        let mut taken = Taken::default();
        while taken.messages == 0 {
            let delivery = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Ok(None),
                delivery = link.next_delivery() => delivery?,
            };
            self.decode(link, delivery, &mut taken).await?;
        }
        let deadline = Instant::now() + self.config.batch_window;
        while taken.messages < usize::from(self.config.prefetch) {
            let delivery = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                () = tokio::time::sleep_until(deadline) => break,
                delivery = link.next_delivery() => delivery?,
            };
            self.decode(link, delivery, &mut taken).await?;
        }
        Ok(Some(taken))
    }

    /// Adds a message's events; one that cannot be decoded is dead-lettered and acked at once.
    async fn decode(
        &self,
        link: &Link,
        delivery: Delivery,
        taken: &mut Taken,
    ) -> Result<(), LinkError> {
        match decode_queued(&delivery.data) {
            Ok(events) => {
                taken.messages += 1;
                taken.last_tag = taken.last_tag.max(delivery.delivery_tag);
                taken.events.extend(events);
            }
            Err(error) => {
                link.dead_letter(&delivery.data, &format!("webhook events: {error}"))
                    .await?;
                link.ack(delivery.delivery_tag, false).await?;
                metrics::counter!("switchboard_dead_lettered_total", "reason" => "decode")
                    .increment(1);
                warn!(
                    delivery_tag = delivery.delivery_tag,
                    bytes = delivery.data.len(),
                    "undecodable webhook message dead-lettered"
                );
            }
        }
        Ok(())
    }

    /// Each webhook's events, in order, cut into batches.
    fn batches(&self, events: &[Queued]) -> Vec<NewBatch> {
        group(
            &self.config.targets,
            events,
            self.config.max_events_per_request,
        )
    }

    /// Inserts the batches, retrying while Postgres fails. False when shutdown came first.
    async fn store(&self, batches: &[NewBatch]) -> bool {
        if batches.is_empty() {
            return true;
        }
        let mut backoff = Backoff::default();
        loop {
            match store::insert(&self.pool, batches).await {
                Ok(()) => return true,
                Err(error) => {
                    let delay = backoff.next_delay();
                    warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot store webhook batches; retrying");
                    tokio::select! {
                        biased;
                        () = self.shutdown.cancelled() => return false,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// Sorts `events` to the targets that want them and cuts each target's share into batches of
/// at most `max_events`, keeping their order; of a channel's `subscription_count` events only
/// the latest is kept. Events no target wants are dropped here (the gateway filters the same
/// way, so only a configuration that differs between roles has any).
pub(crate) fn group(targets: &[Target], events: &[Queued], max_events: usize) -> Vec<NewBatch> {
    let mut batches = Vec::new();
    for target in targets {
        let wanted: Vec<_> = events
            .iter()
            .filter(|queued| queued.app_id == target.app_id && target.filter.matches(&queued.event))
            .map(|queued| queued.event.clone())
            .collect();
        let wanted = latest_counts(wanted);
        for chunk in wanted.chunks(max_events.max(1)) {
            batches.push(NewBatch {
                id: Uuid::now_v7(),
                app_id: target.app_id.clone(),
                webhook: target.name.clone(),
                events: chunk.to_vec(),
            });
        }
    }
    batches
}

/// `events` without the `subscription_count`s that a later one of the same channel replaces.
fn latest_counts(events: Vec<WebhookEvent>) -> Vec<WebhookEvent> {
    let mut counted = HashSet::new();
    let mut kept: Vec<WebhookEvent> = events
        .into_iter()
        .rev()
        .filter(|event| match event {
            WebhookEvent::SubscriptionCount { channel, .. } => counted.insert(channel.clone()),
            _ => true,
        })
        .collect();
    kept.reverse();
    kept
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use protocol::webhook::{EventType, Filter};

    fn target(app: &str, url: &str, types: &[EventType], prefix: Option<&str>) -> Target {
        let filter = Filter {
            event_types: types.to_vec(),
            channel_prefix: prefix.map(str::to_owned),
        };
        Target::new(app, "k", "s", url, filter, &BTreeMap::new()).unwrap()
    }

    fn miss(app: &str, channel: &str) -> Queued {
        Queued {
            app_id: app.into(),
            event: WebhookEvent::CacheMiss {
                channel: channel.into(),
            },
        }
    }

    #[test]
    fn events_go_to_every_webhook_that_wants_them_in_batches() {
        let targets = [
            target("1", "http://a/", &EventType::ALL, None),
            target("1", "http://b/", &[EventType::CacheMiss], Some("cache-b")),
            target("1", "http://c/", &[EventType::ClientEvent], None),
            target("2", "http://a/", &EventType::ALL, None),
        ];
        let events: Vec<Queued> = (0..5)
            .map(|i| {
                miss(
                    "1",
                    &format!("cache-{}", if i % 2 == 0 { "a" } else { "b" }),
                )
            })
            .chain([miss("2", "cache-z")])
            .collect();
        let batches = group(&targets, &events, 2);
        let shape: Vec<(&str, &str, usize)> = batches
            .iter()
            .map(|b| (b.app_id.as_str(), b.webhook.as_str(), b.events.len()))
            .collect();
        assert_eq!(
            shape,
            [
                ("1", "http://a/", 2),
                ("1", "http://a/", 2),
                ("1", "http://a/", 1),
                ("1", "http://b/", 2),
                ("2", "http://a/", 1),
            ]
        );
        assert_eq!(batches[0].events[0], events[0].event);
        assert_eq!(batches[2].events[0], events[4].event);
        assert!(group(&targets, &[miss("3", "cache-a")], 2).is_empty());
    }

    #[test]
    fn only_the_latest_count_of_a_channel_is_kept() {
        let count = |channel: &str, n| WebhookEvent::SubscriptionCount {
            channel: channel.into(),
            subscription_count: n,
        };
        let miss = WebhookEvent::CacheMiss {
            channel: "cache-a".into(),
        };
        let events = vec![
            count("a", 1),
            miss.clone(),
            count("b", 1),
            count("a", 2),
            count("a", 3),
        ];
        assert_eq!(latest_counts(events), [miss, count("b", 1), count("a", 3)]);
    }
}
