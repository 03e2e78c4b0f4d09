//! The registry's side of the debug console ([`crate::debug`]): whether anyone watches an
//! app's debug channel, here or on another node, the bounded queue of records, their delivery
//! to this node's consoles.

use protocol::channel::DEBUG_CHANNEL;
use tokio::sync::mpsc::{self, error::TrySendError};

use super::state::State;
use super::Registry;
use crate::debug::{record_frame, Audience, DebugRecord, Record, DEBUG_QUEUE};

impl Registry {
    /// The debug records from now on, for one consumer ([`crate::run_debug`]; a later call
    /// replaces it). Records are made only while a console watches the app somewhere.
    pub fn debug_log(&self) -> mpsc::Receiver<DebugRecord> {
        let (tx, rx) = mpsc::channel(DEBUG_QUEUE);
        self.state.write().debug = Some(tx);
        rx
    }

    /// Records what happened to an app, if a console watches it (`record` is not called
    /// otherwise).
    pub fn debug(&self, app_id: &str, record: impl FnOnce() -> Record) {
        self.state.read().debug(app_id, record);
    }

    /// Sends a record (its JSON) to the consoles of its app on this node.
    pub(crate) fn send_debug(&self, app_id: &str, json: &str) {
        let state = self.state.read();
        if let Some(channel) = state.local.channel(app_id, DEBUG_CHANNEL) {
            channel.send_all(&record_frame(json), None);
        }
    }
}

impl State {
    /// Which consoles watch the app: on this node, on others (as the cluster view knows them).
    pub fn watchers(&self, app_id: &str) -> Audience {
        let here = self
            .local
            .channel(app_id, DEBUG_CHANNEL)
            .is_some_and(|channel| !channel.subscribers.is_empty());
        let elsewhere = self.cluster.subscriptions(app_id, DEBUG_CHANNEL) > 0;
        Audience { here, elsewhere }
    }

    /// Queues `record()` for every console of the app.
    pub fn debug(&self, app_id: &str, record: impl FnOnce() -> Record) {
        self.debug_for(app_id, self.watchers(app_id), record);
    }

    /// Queues `record()` for the consoles of `audience`; dropped (and counted) when the queue
    /// is full. Nothing is made for an empty audience or a record about the console itself.
    pub fn debug_for(&self, app_id: &str, audience: Audience, record: impl FnOnce() -> Record) {
        let Some(debug) = &self.debug else { return };
        if audience.is_empty() {
            return;
        }
        let record = record();
        if record.is_about_the_console() {
            return;
        }
        if let Err(TrySendError::Full(_)) =
            debug.try_send(DebugRecord::now(app_id, record, audience))
        {
            metrics::counter!("switchboard_debug_records_dropped_total").increment(1);
        }
    }
}
