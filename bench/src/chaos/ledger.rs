//! What the chaos run sent and what it was told: one slot per event sequence number, written by
//! the producers without locks and read once at the end.

use std::ops::Range;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};

/// How an event was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    /// `POST /apps/{id}/events`, one event.
    Trigger = 1,
    /// `POST /apps/{id}/batch_events`.
    Batch = 2,
    /// Segment `/v1/batch` (stored only; its live copy goes to the analytics channel).
    Segment = 3,
    /// A `client-*` event over a WebSocket.
    Client = 4,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Trigger, Kind::Batch, Kind::Segment, Kind::Client];

    fn from_u8(value: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u8 == value)
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Trigger => "HTTP trigger",
            Kind::Batch => "batch trigger",
            Kind::Segment => "Segment batch",
            Kind::Client => "client event",
        }
    }

    /// Whether subscribers of the event's channel must receive it live.
    pub fn is_live(self) -> bool {
        self != Kind::Segment
    }
}

/// Channel index of events that have none of the run's channels.
pub const NO_CHANNEL: u16 = u16::MAX;

/// One event as the ledger holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub kind: Kind,
    pub channel: u16,
    /// When its request was first sent (µs on the run's clock).
    pub sent_us: u64,
    /// Whether the server acknowledged it.
    pub acked: bool,
}

pub struct Ledger {
    next: AtomicU64,
    sent: Vec<AtomicU64>,
    acked: Vec<AtomicU8>,
    kind: Vec<AtomicU8>,
    channel: Vec<AtomicU16>,
}

impl Ledger {
    /// A ledger for at most `capacity` events.
    pub fn new(capacity: u64) -> Ledger {
        let slots = capacity as usize;
        Ledger {
            next: AtomicU64::new(0),
            sent: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            acked: (0..slots).map(|_| AtomicU8::new(0)).collect(),
            kind: (0..slots).map(|_| AtomicU8::new(0)).collect(),
            channel: (0..slots).map(|_| AtomicU16::new(NO_CHANNEL)).collect(),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.sent.len() as u64
    }

    /// Sequence numbers for `count` new events, or `None` once the run has sent them all.
    pub fn allocate(&self, count: u64) -> Option<Range<u64>> {
        let start = self.next.fetch_add(count, Ordering::Relaxed);
        (start + count <= self.capacity()).then_some(start..start + count)
    }

    /// How many sequence numbers were handed out (at most the capacity).
    pub fn allocated(&self) -> u64 {
        self.next.load(Ordering::Relaxed).min(self.capacity())
    }

    pub fn sent(&self, seq: u64, kind: Kind, channel: u16, at_us: u64) {
        let i = seq as usize;
        self.kind[i].store(kind as u8, Ordering::Relaxed);
        self.channel[i].store(channel, Ordering::Relaxed);
        self.sent[i].store(at_us + 1, Ordering::Release);
    }

    pub fn acked(&self, seqs: Range<u64>) {
        for seq in seqs {
            self.acked[seq as usize].store(1, Ordering::Release);
        }
    }

    /// Every event that was sent, in sequence order.
    pub fn entries(&self) -> Vec<Entry> {
        (0..self.allocated())
            .filter_map(|seq| {
                let i = seq as usize;
                let sent = self.sent[i].load(Ordering::Acquire);
                let kind = Kind::from_u8(self.kind[i].load(Ordering::Relaxed))?;
                (sent > 0).then(|| Entry {
                    seq,
                    kind,
                    channel: self.channel[i].load(Ordering::Relaxed),
                    sent_us: sent - 1,
                    acked: self.acked[i].load(Ordering::Acquire) == 1,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_up_to_capacity_and_records() {
        let ledger = Ledger::new(5);
        assert_eq!(ledger.allocate(3), Some(0..3));
        assert_eq!(ledger.allocate(3), None);
        assert_eq!(ledger.allocated(), 5);
        ledger.sent(0, Kind::Batch, 2, 10);
        ledger.sent(2, Kind::Client, 1, 0);
        ledger.acked(2..3);
        let entries = ledger.entries();
        assert_eq!(
            entries,
            [
                Entry {
                    seq: 0,
                    kind: Kind::Batch,
                    channel: 2,
                    sent_us: 10,
                    acked: false
                },
                Entry {
                    seq: 2,
                    kind: Kind::Client,
                    channel: 1,
                    sent_us: 0,
                    acked: true
                },
            ]
        );
        assert!(!Kind::Segment.is_live());
    }
}
