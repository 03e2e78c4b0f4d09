//! What sits in the dead-letter queue, for the dashboard: its depth and the reasons of its
//! first messages, read without taking them — fetched unacknowledged on a channel of its own,
//! which is then closed, so RabbitMQ puts every one back where it was.

use std::collections::BTreeMap;

use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

use crate::{connect_first, setup_step, BusError};

/// The reasons of the first messages in a queue, and how many it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetters {
    pub depth: u64,
    /// How many messages were read (at most the `max` asked for).
    pub sampled: usize,
    /// Each reason with how many of the sampled messages carry it, most frequent first.
    pub reasons: Vec<(String, u64)>,
}

/// Reads up to `max` messages of `queue` on the first of `urls` that answers and counts the values of their `header`
/// (`(no reason)` where it is missing); takes none of them.
pub async fn peek_dead_letters(
    urls: &[String],
    queue: &str,
    header: &str,
    max: usize,
) -> Result<DeadLetters, BusError> {
    let (_, connection) = connect_first(urls, 0, "switchboard-dead-letters").await?;
    let channel = setup_step("opening a channel", connection.create_channel()).await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = setup_step(
        "asking a queue's depth",
        channel.queue_declare(queue, passive, FieldTable::default()),
    )
    .await?;
    let depth = u64::from(declared.message_count());
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut sampled = 0;
    while sampled < max {
        let got = setup_step(
            "reading a dead letter",
            channel.basic_get(queue, BasicGetOptions { no_ack: false }),
        )
        .await?;
        let Some(message) = got else { break };
        sampled += 1;
        let reason = message
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|headers| headers.inner().get(header))
            .and_then(|value| match value {
                AMQPValue::LongString(text) => {
                    Some(String::from_utf8_lossy(text.as_bytes()).into_owned())
                }
                AMQPValue::ShortString(text) => Some(text.to_string()),
                _ => None,
            })
            .unwrap_or_else(|| "(no reason)".to_owned());
        *counts.entry(reason).or_default() += 1;
    }
    // Unacknowledged messages go back to the queue, in their order, when their channel closes.
    let _ = setup_step(
        "putting the dead letters back",
        channel.close(200, "peeked"),
    )
    .await;
    let _ = connection.close(200, "peeked").await;
    let mut reasons: Vec<(String, u64)> = counts.into_iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(DeadLetters {
        depth,
        sampled,
        reasons,
    })
}
