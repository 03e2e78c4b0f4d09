//! The verdict: what Postgres holds against what was acknowledged, and what every subscriber that
//! stayed connected received against what it had to.

use std::collections::BTreeMap;

use anyhow::Context;
use sqlx::{Connection, PgConnection};

use super::ledger::{Entry, Kind};
use super::subscribers::Segment;

/// Rows per sequence number in `events` (0 for none), for sequence numbers below `capacity`.
pub async fn stored_counts(database_url: &str, capacity: u64) -> anyhow::Result<Vec<u32>> {
    let mut db = PgConnection::connect(database_url)
        .await
        .context("connecting to the run's database")?;
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT seq, count(*) FROM (
             SELECT coalesce(data->'sb'->>0, data->'properties'->'sb'->>0)::bigint AS seq
             FROM events
         ) stored WHERE seq IS NOT NULL GROUP BY seq",
    )
    .fetch_all(&mut db)
    .await
    .context("counting the stored events")?;
    let mut counts = vec![0u32; capacity as usize];
    for (seq, count) in rows {
        if let Some(slot) = usize::try_from(seq).ok().and_then(|s| counts.get_mut(s)) {
            *slot = count as u32;
        }
    }
    Ok(counts)
}

pub async fn row_count(database_url: &str) -> anyhow::Result<i64> {
    let mut db = PgConnection::connect(database_url).await?;
    Ok(sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut db)
        .await?)
}

/// Storage against the ledger.
#[derive(Debug, Default)]
pub struct Storage {
    pub sent: BTreeMap<Kind, u64>,
    pub acked: BTreeMap<Kind, u64>,
    pub stored: u64,
    /// Acknowledged and not stored.
    pub lost: Vec<u64>,
    /// Stored more than once.
    pub duplicated: Vec<u64>,
    /// Stored although the client was never told it was accepted (allowed: a 503 says "maybe").
    pub stored_unacked: u64,
}

pub fn storage(entries: &[Entry], counts: &[u32]) -> Storage {
    let mut result = Storage::default();
    for entry in entries {
        *result.sent.entry(entry.kind).or_default() += 1;
        let count = counts.get(entry.seq as usize).copied().unwrap_or(0);
        if count > 0 {
            result.stored += 1;
        }
        if count > 1 {
            result.duplicated.push(entry.seq);
        }
        if entry.acked {
            *result.acked.entry(entry.kind).or_default() += 1;
            if count == 0 {
                result.lost.push(entry.seq);
            }
        } else if count > 0 {
            result.stored_unacked += 1;
        }
    }
    result
}

/// Live deliveries against what each connection that stayed open had to receive.
#[derive(Debug, Default)]
pub struct Live {
    /// Connections that stayed open to the end and read all along.
    pub measured: usize,
    pub expected: u64,
    pub received: u64,
    /// (channel, gateway, sequence number) of each acknowledged event a measured connection
    /// did not get.
    pub missed: Vec<(u16, usize, u64)>,
    /// Connections the server closed during the run, by code.
    pub closed: BTreeMap<String, u64>,
}

pub fn live(entries: &[Entry], segments: &[Segment], channels: usize) -> Live {
    // Acknowledged live events per channel, by send time.
    let mut by_channel: Vec<Vec<(u64, u64)>> = vec![Vec::new(); channels];
    for entry in entries.iter().filter(|e| e.acked && e.kind.is_live()) {
        if let Some(list) = by_channel.get_mut(usize::from(entry.channel)) {
            list.push((entry.sent_us, entry.seq));
        }
    }
    for list in &mut by_channel {
        list.sort_unstable();
    }
    let mut result = Live::default();
    for segment in segments {
        if let Some(reason) = &segment.closed {
            *result.closed.entry(reason.clone()).or_default() += 1;
            continue;
        }
        if segment.stalled {
            continue;
        }
        result.measured += 1;
        let list = &by_channel[usize::from(segment.channel)];
        let from = list.partition_point(|(sent, _)| *sent <= segment.start_us);
        for &(_, seq) in &list[from..] {
            result.expected += 1;
            if segment.received.contains(seq) {
                result.received += 1;
            } else {
                result.missed.push((segment.channel, segment.gateway, seq));
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::SeqSet;

    fn entry(seq: u64, kind: Kind, channel: u16, sent_us: u64, acked: bool) -> Entry {
        Entry {
            seq,
            kind,
            channel,
            sent_us,
            acked,
        }
    }

    #[test]
    fn storage_counts_lost_duplicated_and_unacknowledged() {
        let entries = [
            entry(0, Kind::Trigger, 0, 1, true),
            entry(1, Kind::Batch, 0, 1, true),
            entry(2, Kind::Segment, 0, 1, false),
            entry(3, Kind::Client, 0, 1, true),
        ];
        let result = storage(&entries, &[1, 2, 1, 0]);
        assert_eq!(result.lost, [3]);
        assert_eq!(result.duplicated, [1]);
        assert_eq!(result.stored, 3);
        assert_eq!(result.stored_unacked, 1);
        assert_eq!(result.acked.values().sum::<u64>(), 3);
    }

    #[test]
    fn live_checks_only_connections_open_to_the_end() {
        let entries = [
            entry(0, Kind::Trigger, 0, 5, true),
            entry(1, Kind::Trigger, 0, 20, true),
            entry(2, Kind::Trigger, 0, 30, false),
            entry(3, Kind::Segment, 0, 30, true),
            entry(4, Kind::Client, 1, 30, true),
        ];
        let mut got = SeqSet::default();
        got.insert(1);
        let segment =
            |channel, start_us, closed: Option<&str>, stalled, received: SeqSet| Segment {
                channel,
                gateway: 0,
                start_us,
                closed: closed.map(str::to_owned),
                stalled,
                received,
            };
        let segments = [
            // Subscribed at 10: must get 1 (sent at 20), not 0 (sent before) nor 2 (not acked).
            segment(0, 10, None, false, got.clone()),
            // Channel 1 missed the client event.
            segment(1, 0, None, false, SeqSet::default()),
            segment(0, 0, Some("close 4200"), false, SeqSet::default()),
            segment(0, 0, None, true, SeqSet::default()),
        ];
        let result = live(&entries, &segments, 2);
        assert_eq!(result.measured, 2);
        assert_eq!(result.expected, 2);
        assert_eq!(result.received, 1);
        assert_eq!(result.missed, [(1, 0, 4)]);
        assert_eq!(result.closed["close 4200"], 1);
    }
}
