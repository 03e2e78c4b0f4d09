//! The durable path (DESIGN.md, "Durable path"): persist queue → Postgres, exactly once.
//!
//! [`prepare_database`] creates and migrates the database and the `events` partitions ahead;
//! [`run`] consumes the persist queue in batches, writes each batch with one idempotent
//! `INSERT … SELECT FROM UNNEST … ON CONFLICT DO NOTHING`, and acks only after the commit.
//! Messages that cannot be decoded, envelopes Postgres refuses for what they contain, and
//! envelopes that still fail alone after `max_attempts` go to the dead-letter queue with the
//! reason in the [`REASON_HEADER`] header; while Postgres is unreachable (or fails even without
//! any rows) the deliveries stay unacked and the write is retried with backoff.
//!
//! [`webhooks::run`] is the webhook sender: the webhook queue → `webhook_deliveries` → the apps'
//! URLs, retried until delivered or dead.

mod fence;
mod link;
mod maintenance;
mod storage;
pub mod webhooks;
mod worker;

pub use link::{FAILED_AT_HEADER, REASON_HEADER};
pub use storage::{prepare_database, StorageError};
pub use worker::{run, WorkerConfig};
