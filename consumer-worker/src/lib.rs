//! The durable path (DESIGN.md, "Durable path"): persist queue → Postgres, exactly once.
//!
//! [`prepare_database`] creates and migrates the database and the `events` partitions ahead;
//! [`run`] consumes the persist queue in batches, writes each batch with one idempotent
//! `INSERT … SELECT FROM UNNEST … ON CONFLICT DO NOTHING`, and acks only after the commit.
//! Messages that cannot be decoded, and envelopes Postgres refuses for what they contain, go to
//! the dead-letter queue with the reason in the [`REASON_HEADER`] header; every other failure is
//! retried with backoff while the deliveries stay unacked.

mod link;
mod maintenance;
mod storage;
mod worker;

pub use link::{FAILED_AT_HEADER, REASON_HEADER};
pub use storage::{prepare_database, StorageError};
pub use worker::{run, WorkerConfig};
