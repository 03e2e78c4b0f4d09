//! What this node tells the other nodes of its state — numbered deltas of what changed, and
//! snapshots — and what it makes of theirs.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::RwLockWriteGuard;
use protocol::control::{Change, Control, MAX_CONTROL_BYTES};
use tokio::time::Instant;

use super::Registry;
use crate::cluster::Heard;

/// Distinct changes waiting for the next delta; beyond, they are dropped and a snapshot is sent
/// instead (so a burst of changes costs at most one snapshot, not an unbounded queue).
pub const MAX_PENDING_CHANGES: usize = 10_000;

/// What a change is about: a later change with the same key supersedes it.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Key {
    Connections(String),
    Subscriptions(String, String),
    Member(String, String, String),
    User(String, String),
}

impl Key {
    fn of(change: &Change) -> Key {
        match change {
            Change::Connections { app_id, .. } => Key::Connections(app_id.clone()),
            Change::Subscriptions {
                app_id, channel, ..
            } => Key::Subscriptions(app_id.clone(), channel.clone()),
            Change::MemberAdded {
                app_id,
                channel,
                user_id,
                ..
            }
            | Change::MemberRemoved {
                app_id,
                channel,
                user_id,
            } => Key::Member(app_id.clone(), channel.clone(), user_id.clone()),
            Change::SignedIn { app_id, user_id } | Change::SignedOut { app_id, user_id } => {
                Key::User(app_id.clone(), user_id.clone())
            }
        }
    }
}

/// The local changes not yet told to the other nodes, one per key (the latest), in the order
/// each key first changed; and the number of this node's last control message.
#[derive(Debug)]
pub(super) struct Outgoing {
    seq: u64,
    pending: Vec<Change>,
    index: HashMap<Key, usize>,
    /// The next message is a snapshot (at start, when asked for one, after an overflow).
    snapshot_due: bool,
}

impl Default for Outgoing {
    /// Numbers start at the time of creation in microseconds, so a node restarted under the
    /// same id never repeats a number its peers hold for it.
    fn default() -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Outgoing {
            seq: u64::try_from(now.as_micros()).unwrap_or(u64::MAX / 2),
            pending: Vec::new(),
            index: HashMap::new(),
            snapshot_due: true,
        }
    }
}

impl Outgoing {
    pub fn record(&mut self, change: Change) {
        if self.snapshot_due {
            return;
        }
        let key = Key::of(&change);
        if let Some(&i) = self.index.get(&key) {
            self.pending[i] = change;
        } else if self.pending.len() < MAX_PENDING_CHANGES {
            self.index.insert(key, self.pending.len());
            self.pending.push(change);
        } else {
            metrics::counter!("switchboard_cluster_delta_overflows_total").increment(1);
            self.discard();
            self.snapshot_due = true;
        }
    }

    fn take(&mut self) -> Vec<Change> {
        self.index.clear();
        std::mem::take(&mut self.pending)
    }

    fn discard(&mut self) {
        self.index.clear();
        self.pending.clear();
    }
}

impl Registry {
    /// The control messages due for the other nodes: the pending changes as deltas, then a
    /// snapshot if `heartbeat` (carrying the last delta's number, so nodes that saw every delta
    /// skip it). A snapshot that is due for another reason (start, a node asked, too many
    /// changes at once) replaces the deltas and takes a new number, so every node applies it.
    pub fn outgoing(&self, heartbeat: bool) -> Vec<Control> {
        let mut guard = self.state.write();
        let state = &mut *guard;
        let out = &mut state.outgoing;
        let forced = std::mem::take(&mut out.snapshot_due);
        if forced {
            out.discard();
            out.seq += 1;
        }
        let mut messages = Control::deltas(self.node, out.seq + 1, out.take(), MAX_CONTROL_BYTES);
        out.seq += messages.len() as u64;
        if forced || heartbeat {
            let seq = out.seq;
            // No change can come between the deltas and the snapshot, but readers (the fan-out)
            // need not wait while the state is copied.
            let state = RwLockWriteGuard::downgrade(guard);
            let changes = state.local.changes();
            drop(state);
            messages.extend(Control::snapshot(
                self.node,
                seq,
                changes,
                MAX_CONTROL_BYTES,
            ));
        }
        messages
    }

    /// Makes the next [`Registry::outgoing`] a snapshot that every node applies.
    pub fn request_snapshot(&self) {
        self.state.write().outgoing.snapshot_due = true;
    }

    /// Handles a control message from the bus (this node's own included).
    pub fn receive(&self, message: Control) {
        match message {
            Control::Delta { node, seq, changes } if node != self.node => {
                self.heard(node, |state| {
                    state.cluster.delta(node, seq, &changes, &state.local)
                });
            }
            Control::Snapshot {
                node,
                seq,
                part,
                last,
                changes,
            } if node != self.node => {
                self.heard(node, |state| {
                    state
                        .cluster
                        .snapshot(node, seq, part, last, &changes, &state.local)
                });
            }
            Control::Resync { node } if node == self.node => self.request_snapshot(),
            Control::Goodbye { node } if node != self.node => self.forget_node(node),
            Control::Terminate { app_id, user_id } => {
                self.terminate_local(&app_id, &user_id);
            }
            Control::Synced { to, from, id } if to == self.node => self.syncs.synced(id, from),
            Control::Debug { node, records } if node != self.node => {
                for relayed in records {
                    self.send_debug(&relayed.app_id, &relayed.record);
                }
            }
            // Our own state, or a snapshot asked of another node.
            Control::Delta { .. }
            | Control::Snapshot { .. }
            | Control::Resync { .. }
            | Control::Goodbye { .. }
            | Control::Synced { .. }
            | Control::Debug { .. } => {}
            // The live link answers it: it must publish this node's pending changes first.
            Control::Sync { .. } => {}
        }
    }

    /// Applies what a node's message means locally, or asks the node for a snapshot.
    fn heard(&self, node: u32, hear: impl FnOnce(&mut super::State) -> Heard) {
        let mut guard = self.state.write();
        let state = &mut *guard;
        match hear(state) {
            Heard::Applied(effects) => state.apply(effects),
            Heard::Gap => {
                drop(guard);
                metrics::counter!("switchboard_cluster_resyncs_total").increment(1);
                tracing::info!(
                    node,
                    "missed control messages of a node; asking for a snapshot"
                );
                self.broadcast(Control::Resync { node });
            }
        }
    }

    /// Forgets a node (it said goodbye, or it went silent), notifying local sockets.
    pub fn forget_node(&self, node: u32) {
        self.syncs.forget(node);
        let mut guard = self.state.write();
        let state = &mut *guard;
        if let Some(effects) = state.cluster.forget(node, &state.local) {
            state.apply(effects);
            tracing::info!(node, "forgot gateway node");
        }
    }

    /// The node that leads cluster-wide duties (webhooks): the lowest id this node knows alive,
    /// itself included.
    pub fn leader(&self) -> u32 {
        let nodes = self.state.read().cluster.nodes();
        nodes.into_iter().fold(self.node, u32::min)
    }

    /// When another node was last heard from, if it is known.
    pub fn heard_at(&self, node: u32) -> Option<Instant> {
        self.state.read().cluster.heard_at(node)
    }

    /// Nodes not heard from for longer than `timeout`.
    pub fn stale_nodes(&self, timeout: Duration) -> Vec<u32> {
        self.state.read().cluster.stale(timeout)
    }
}
