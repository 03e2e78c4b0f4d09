//! The registry's side of the debug console ([`crate::debug`]): whether anyone watches an
//! app's debug channel on this node, the bounded queue of records, their delivery.

use protocol::channel::DEBUG_CHANNEL;
use tokio::sync::mpsc::{self, error::TrySendError};

use super::state::State;
use super::Registry;
use crate::debug::{DebugRecord, Record, DEBUG_QUEUE};

impl Registry {
    /// The debug records from now on, for one consumer ([`crate::run_debug`]; a later call
    /// replaces it). Records are made only while a console watches the app on this node.
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

    /// Sends a record to the consoles of its app on this node.
    pub(crate) fn send_debug(&self, record: &DebugRecord) {
        let state = self.state.read();
        if let Some(channel) = state.local.channel(&record.app_id, DEBUG_CHANNEL) {
            channel.send_all(&record.frame(), None);
        }
    }
}

impl State {
    /// Queues `record()` for the app's consoles; dropped (and counted) when the queue is full.
    pub fn debug(&self, app_id: &str, record: impl FnOnce() -> Record) {
        let Some(debug) = &self.debug else { return };
        let watched = self
            .local
            .channel(app_id, DEBUG_CHANNEL)
            .is_some_and(|channel| !channel.subscribers.is_empty());
        if !watched {
            return;
        }
        let record = record();
        if record.is_about_the_console() {
            return;
        }
        if let Err(TrySendError::Full(_)) = debug.try_send(DebugRecord::now(app_id, record)) {
            metrics::counter!("switchboard_debug_records_dropped_total").increment(1);
        }
    }
}
