//! Pure wire types and codecs shared by every Switchboard role.
//!
//! Nothing here touches sockets, RabbitMQ or Postgres: every function is a value-in, value-out
//! transformation, so all of it is unit-tested with golden vectors.

pub mod channel;
pub mod control;
pub mod envelope;
pub mod frame;
pub mod presence;
pub mod segment;
pub mod signature;
pub mod socket_id;
pub mod webhook;

pub use channel::{Channel, ChannelError, ChannelKind};
pub use envelope::{Envelope, EnvelopeError, Source};
pub use frame::{ClientMessage, FrameError};
pub use socket_id::SocketId;
pub use webhook::WebhookEvent;
