//! Fresh cluster-wide answers: a barrier over the bus. Before a node answers `GET /channels*`
//! or a presence list, it broadcasts `Sync { node, id }` and waits until every other node it knows
//! has answered `Synced`. A node answers only after publishing its pending changes on the same
//! channel, and the broker keeps one channel's messages in order on each queue, so by the time
//! every `Synced` has arrived, every change those nodes made before the request has been applied
//! here: a backend that asks right after a `subscription_succeeded` on another node sees it.
//! The wait is bounded ([`SYNC_TIMEOUT`]): a node that does not answer in time is answered from
//! what is known (at most one heartbeat old).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// Longest a cluster-wide answer waits for the other nodes.
pub const SYNC_TIMEOUT: Duration = Duration::from_millis(250);

/// Most rounds waiting at once; a request beyond that answers from what is known (the count of
/// HTTP requests in flight is bounded by the listener's connection limit anyway).
const MAX_ROUNDS: usize = 1024;

#[derive(Debug)]
struct Round {
    waiting: HashSet<u32>,
    done: oneshot::Sender<()>,
}

#[derive(Debug, Default)]
pub struct SyncRounds {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    rounds: HashMap<u64, Round>,
}

impl SyncRounds {
    /// Starts a round that waits for `nodes`; its id to broadcast and what completes when all
    /// of them answered. None when there is nobody to wait for (or too many rounds wait).
    pub fn start(
        &self,
        nodes: impl IntoIterator<Item = u32>,
    ) -> Option<(u64, oneshot::Receiver<()>)> {
        let waiting: HashSet<u32> = nodes.into_iter().collect();
        let mut inner = self.inner.lock();
        if waiting.is_empty() || inner.rounds.len() >= MAX_ROUNDS {
            return None;
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let (done, receiver) = oneshot::channel();
        inner.rounds.insert(id, Round { waiting, done });
        Some((id, receiver))
    }

    /// `node` answered round `id`.
    pub fn synced(&self, id: u64, node: u32) {
        let mut inner = self.inner.lock();
        let complete = inner.rounds.get_mut(&id).is_some_and(|round| {
            round.waiting.remove(&node);
            round.waiting.is_empty()
        });
        if complete {
            if let Some(round) = inner.rounds.remove(&id) {
                let _ = round.done.send(());
            }
        }
    }

    /// `node` is gone: no round waits for it any more.
    pub fn forget(&self, node: u32) {
        let mut inner = self.inner.lock();
        let complete: Vec<u64> = inner
            .rounds
            .iter_mut()
            .filter_map(|(id, round)| {
                round.waiting.remove(&node);
                round.waiting.is_empty().then_some(*id)
            })
            .collect();
        for id in complete {
            if let Some(round) = inner.rounds.remove(&id) {
                let _ = round.done.send(());
            }
        }
    }

    /// Round `id` ended without every answer (timed out, or its broadcast failed).
    pub fn abandon(&self, id: u64) {
        self.inner.lock().rounds.remove(&id);
    }

    #[cfg(test)]
    fn pending(&self) -> usize {
        self.inner.lock().rounds.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_completes_when_every_node_answered() {
        let rounds = SyncRounds::default();
        let (id, mut done) = rounds.start([2, 3]).unwrap();
        rounds.synced(id, 2);
        rounds.synced(id + 1, 3);
        assert!(done.try_recv().is_err(), "node 3 answered another round");
        rounds.synced(id, 3);
        assert_eq!(done.try_recv(), Ok(()));
        assert_eq!(rounds.pending(), 0);
    }

    #[test]
    fn a_forgotten_node_is_not_waited_for() {
        let rounds = SyncRounds::default();
        let (_, mut first) = rounds.start([2, 3]).unwrap();
        let (_, mut second) = rounds.start([3]).unwrap();
        rounds.forget(3);
        assert_eq!(second.try_recv(), Ok(()));
        assert!(first.try_recv().is_err(), "still waits for node 2");
        rounds.forget(2);
        assert_eq!(first.try_recv(), Ok(()));
    }

    #[test]
    fn nobody_to_wait_for_and_abandoned_rounds() {
        let rounds = SyncRounds::default();
        assert!(rounds.start([]).is_none());
        let (id, _) = rounds.start([9]).unwrap();
        rounds.abandon(id);
        assert_eq!(rounds.pending(), 0);
        let held: Vec<_> = (0..MAX_ROUNDS).map(|_| rounds.start([9])).collect();
        assert!(held.iter().all(Option::is_some));
        assert!(rounds.start([9]).is_none(), "bounded");
    }
}
