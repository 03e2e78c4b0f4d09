//! Interest-based routing: which channel shards this node's live queue is bound to.
//!
//! A socket's subscription to a channel of a shard the node is not bound to waits in
//! [`Interest::ensure`] until the live link has bound the queue to the shard's key (the bind
//! awaited: from then on every event of the shard reaches this node), and only then is it
//! registered and answered `subscription_succeeded`. The live link performs the binds in order
//! ([`Interest::pending`], [`Interest::bound`]), binds every shard again after a reconnect before
//! it consumes, and unbinds a shard lazily, once it has had no local subscriber for
//! [`UNBIND_AFTER`] ([`Interest::idle`]), so bindings are bounded by the shards in use and a
//! channel that comes back soon costs no bind.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// How long a shard stays bound after its last local subscriber left.
pub const UNBIND_AFTER: Duration = Duration::from_secs(60);

/// How long a subscription waits for its shard's bind (the live link may be reconnecting).
pub const BIND_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("the live queue could not be bound to the channel's shard within {BIND_TIMEOUT:?}")]
pub struct BindTimeout;

#[derive(Debug)]
enum State {
    /// Waiting for the live link to bind it; the subscriptions waiting for it.
    Pending(Vec<oneshot::Sender<()>>),
    /// Bound; when a local subscription last needed it.
    Bound { used: Instant },
}

/// This node's shard bindings; see the module documentation.
#[derive(Debug, Default)]
pub struct Interest {
    shards: Mutex<HashMap<u16, State>>,
    /// Wakes the live link when a shard is waiting for its bind.
    wake: Notify,
}

impl Interest {
    /// Returns once the live queue is bound to `shard` (at once when it already is), or fails
    /// after [`BIND_TIMEOUT`].
    pub async fn ensure(&self, shard: u16) -> Result<(), BindTimeout> {
        self.ensure_each([shard]).await
    }

    /// Returns once the live queue is bound to every one of `shards`, or fails after
    /// [`BIND_TIMEOUT`].
    pub async fn ensure_each(
        &self,
        shards: impl IntoIterator<Item = u16>,
    ) -> Result<(), BindTimeout> {
        let mut waiting = Vec::new();
        {
            let mut state = self.shards.lock();
            let now = Instant::now();
            for shard in shards {
                match state.get_mut(&shard) {
                    Some(State::Bound { used }) => *used = now,
                    Some(State::Pending(waiters)) => {
                        let (tx, rx) = oneshot::channel();
                        waiters.push(tx);
                        waiting.push(rx);
                    }
                    None => {
                        let (tx, rx) = oneshot::channel();
                        state.insert(shard, State::Pending(vec![tx]));
                        waiting.push(rx);
                    }
                }
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        self.wake.notify_one();
        let all = futures_util::future::join_all(waiting);
        match tokio::time::timeout(BIND_TIMEOUT, all).await {
            Ok(bound) if bound.iter().all(Result::is_ok) => Ok(()),
            _ => Err(BindTimeout),
        }
    }

    /// Resolves when some shard may be waiting for its bind.
    pub async fn wanted(&self) {
        self.wake.notified().await;
    }

    /// The shards waiting for their bind.
    pub fn pending(&self) -> Vec<u16> {
        let shards = self.shards.lock();
        let pending = shards
            .iter()
            .filter(|(_, state)| matches!(state, State::Pending(_)));
        pending.map(|(shard, _)| *shard).collect()
    }

    /// Every shard that is or is to be bound: what a new live link binds before it consumes.
    pub fn all(&self) -> BTreeSet<u16> {
        self.shards.lock().keys().copied().collect()
    }

    /// Records that the live queue is now bound to `shard`; the subscriptions waiting for it go
    /// on.
    pub fn bound(&self, shard: u16) {
        let mut shards = self.shards.lock();
        let now = Instant::now();
        if let Some(State::Pending(waiters)) = shards.insert(shard, State::Bound { used: now }) {
            for waiter in waiters {
                let _ = waiter.send(());
            }
        }
        metrics::gauge!("switchboard_live_bound_shards").set(shards.len() as f64);
    }

    /// Takes the bound shards that no local subscriber has needed for [`UNBIND_AFTER`] and
    /// that have none now (`in_use` says which have), to be unbound; they are forgotten at
    /// once, so a subscription that comes meanwhile waits for a new bind, made after the
    /// unbind.
    pub fn idle(&self, in_use: impl Fn(u16) -> bool) -> Vec<u16> {
        let mut shards = self.shards.lock();
        let now = Instant::now();
        let idle: Vec<u16> = shards
            .iter()
            .filter(|(shard, state)| match state {
                State::Bound { used } => now - *used >= UNBIND_AFTER && !in_use(**shard),
                State::Pending(_) => false,
            })
            .map(|(shard, _)| *shard)
            .collect();
        for shard in &idle {
            shards.remove(shard);
        }
        metrics::gauge!("switchboard_live_bound_shards").set(shards.len() as f64);
        idle
    }

    /// Marks the shards with local subscribers as used now, so they are never idle.
    pub fn touch(&self, in_use: impl Iterator<Item = u16>) {
        let mut shards = self.shards.lock();
        let now = Instant::now();
        for shard in in_use {
            if let Some(State::Bound { used }) = shards.get_mut(&shard) {
                *used = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_subscription_waits_for_the_bind_and_idle_shards_are_unbound_later() {
        let interest = std::sync::Arc::new(Interest::default());
        let waiting = tokio::spawn({
            let interest = interest.clone();
            async move { interest.ensure(17).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(interest.pending(), [17]);
        assert!(!waiting.is_finished(), "not before the bind");
        interest.bound(17);
        waiting.await.unwrap().unwrap();
        assert!(interest.pending().is_empty());
        interest.ensure(17).await.unwrap();

        assert!(interest.idle(|_| false).is_empty(), "bound a moment ago");
        tokio::time::advance(UNBIND_AFTER).await;
        assert!(interest.idle(|_| true).is_empty(), "still has a subscriber");
        interest.touch([17].into_iter());
        tokio::time::advance(UNBIND_AFTER).await;
        assert_eq!(interest.idle(|_| false), [17]);
        assert!(interest.all().is_empty());

        // No bind at all: the subscription gives up.
        let refused = interest.ensure(18).await;
        assert!(refused.is_err());
        // Several at once: one wake-up, every one bound before it returns.
        let many = tokio::spawn({
            let interest = interest.clone();
            async move { interest.ensure_each([1, 2, 18]).await }
        });
        tokio::task::yield_now().await;
        let mut pending = interest.pending();
        pending.sort_unstable();
        assert_eq!(pending, [1, 2, 18]);
        for shard in pending {
            interest.bound(shard);
        }
        many.await.unwrap().unwrap();
    }
}
