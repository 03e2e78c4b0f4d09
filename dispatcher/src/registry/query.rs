//! What the registry answers without changing anything the sockets see: counts, peaks,
//! occupancy, presence members and cached events, for the HTTP API and the dashboards.

use std::collections::HashSet;

use protocol::presence::Member;
use tokio::time::Instant;

use super::{CachedEvent, Registry};

/// A count (an app's connections, its subscriptions) now and at its highest since the
/// previous look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peak {
    pub now: usize,
    pub peak: usize,
}

/// A channel's occupancy across the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Occupancy {
    pub subscriptions: usize,
    /// Unique presence members (0 for other channel types).
    pub users: usize,
}

impl Registry {
    /// Connections of an app across the cluster.
    pub fn connections(&self, app_id: &str) -> usize {
        self.state.read().connections(app_id)
    }

    /// An app's connections across the cluster now, and the most there were since the previous
    /// call — at its end, or at any local connect in between: a true peak, not a sample.
    pub fn connection_peak(&self, app_id: &str) -> Peak {
        let mut state = self.state.write();
        let now = state.connections(app_id);
        let peak = state.peaks.remove(app_id).unwrap_or(0).max(now);
        // The next window starts at the count now.
        if now > 0 {
            state.peaks.insert(app_id.to_owned(), now);
        }
        Peak { now, peak }
    }

    /// An app's subscriptions on this node now, and the most there were since the previous
    /// call (never less than now).
    pub fn subscription_peak(&self, app_id: &str) -> Peak {
        let mut state = self.state.write();
        let now = state
            .local
            .apps
            .get(app_id)
            .map_or(0, |app| app.subscriptions);
        let peak = state
            .subscription_peaks
            .remove(app_id)
            .unwrap_or(0)
            .max(now);
        if now > 0 {
            state.subscription_peaks.insert(app_id.to_owned(), now);
        }
        Peak { now, peak }
    }

    pub fn occupancy(&self, app_id: &str, channel: &str) -> Occupancy {
        let state = self.state.read();
        Occupancy {
            subscriptions: state.subscriptions(app_id, channel),
            users: state.members(app_id, channel).len(),
        }
    }

    pub fn members(&self, app_id: &str, channel: &str) -> Vec<Member> {
        self.state.read().members(app_id, channel)
    }

    /// Occupied channels of an app across the cluster whose name starts with `prefix`.
    pub fn occupied(&self, app_id: &str, prefix: &str) -> Vec<(String, Occupancy)> {
        let state = self.state.read();
        let mut names: HashSet<&str> = state.cluster.channels(app_id).collect();
        if let Some(app) = state.local.apps.get(app_id) {
            names.extend(
                app.channels
                    .iter()
                    .filter(|(_, c)| !c.subscribers.is_empty())
                    .map(|(n, _)| n.as_str()),
            );
        }
        let mut occupied: Vec<(String, Occupancy)> = names
            .into_iter()
            .filter(|name| name.starts_with(prefix))
            .map(|name| {
                let occupancy = Occupancy {
                    subscriptions: state.subscriptions(app_id, name),
                    users: state.members(app_id, name).len(),
                };
                (name.to_owned(), occupancy)
            })
            .collect();
        occupied.sort_by(|a, b| a.0.cmp(&b.0));
        occupied
    }

    /// The cached last event of a cache channel, if it has not expired.
    pub fn cached(&self, app_id: &str, channel: &str) -> Option<CachedEvent> {
        self.state
            .read()
            .local
            .channel(app_id, channel)
            .and_then(|c| c.cached(Instant::now()))
    }
}
