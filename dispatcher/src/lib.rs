//! The live path: which local sockets listen on which channel, what the other gateway nodes
//! report, and the fan-out of events consumed from this node's live queue into each socket's
//! bounded outbound queue.
//!
//! The dispatcher never parses client JSON and never waits on a socket: a frame is encoded once
//! per event and offered to every subscriber with `try_send`; a subscriber whose queue is full is
//! closed with 4100 (slow consumer) instead of slowing the others.

mod barrier;
mod cluster;
mod debounce;
pub mod debug;
mod interest;
mod live;
mod registry;
mod socket;
mod transition;

pub use barrier::SYNC_TIMEOUT;
pub use debounce::{Debounce, MAX_PENDING as MAX_DEBOUNCE_PENDING};
pub use debug::{run_debug, DebugRecord, Record};
pub use interest::{BindTimeout, Interest, BIND_TIMEOUT, UNBIND_AFTER};
pub use live::{run_live, LiveConfig};
pub use registry::{
    AppOptions, CachedEvent, ConnectError, Occupancy, Peak, Registry, RegistryConfig,
    SubscribeError, CLOSE_TERMINATED, TRANSITIONS_CAPACITY,
};
pub use socket::{CloseSignal, Frame, Outbound, Queued, SocketHandle};
pub use transition::Transition;

/// Pusher close code for "reconnect at once" (4200–4299): the server cannot rule out that this
/// socket missed events (its live queue was lost), so the client reconnects and resubscribes.
pub const CLOSE_RECONNECT: u16 = 4200;

/// Pusher close code for a socket that could not keep up (4100–4199: client backs off, reconnects).
pub const CLOSE_SLOW_CONSUMER: u16 = 4100;
