//! RabbitMQ for Switchboard: topology, the confirmed batching [`Publisher`], consumer helpers.
//!
//! Every role opens its own connection through [`connect`] and declares what it uses with
//! [`declare_durable`] (idempotent), so roles can start in any order.

mod backoff;
mod dead;
mod depth;
mod publisher;
mod topology;

pub use backoff::Backoff;
pub use dead::{peek_dead_letters, DeadLetters};
pub use depth::QueueDepths;
pub use publisher::{
    FencePublisher, Pending, PublishError, Publisher, PublisherConfig, WebhookPublisher,
    FENCE_MESSAGE_TYPE,
};
pub use topology::{
    declare_durable, declare_live_queue, delete_live_queues, live_queue_exists, LiveQueues,
    QueueType, Topology, CONTROL_ROUTING_KEY, EVENT_ROUTING_KEY,
};

use std::future::Future;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use thiserror::Error;

/// How long one connection attempt may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long each later setup step (open a channel, enable confirms, declare the topology, start
/// consuming) may take before it counts as failed.
pub const SETUP_STEP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum BusError {
    #[error("cannot reach RabbitMQ at {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: lapin::Error,
    },
    #[error("timed out connecting to RabbitMQ at {endpoint}")]
    ConnectTimeout { endpoint: String },
    #[error("RabbitMQ refused a topology declaration: {0}")]
    Declare(#[source] lapin::Error),
    #[error("RabbitMQ failed while {step}: {source}")]
    Setup {
        step: &'static str,
        #[source]
        source: lapin::Error,
    },
    #[error("RabbitMQ did not answer within {SETUP_STEP_TIMEOUT:?} while {step}")]
    SetupTimeout { step: &'static str },
}

/// Runs one setup step of a connection, bounded by [`SETUP_STEP_TIMEOUT`].
pub async fn setup_step<T>(
    step: &'static str,
    future: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, BusError> {
    within(step, async {
        future
            .await
            .map_err(|source| BusError::Setup { step, source })
    })
    .await
}

/// Runs a setup step that reports its own [`BusError`] (such as [`declare_durable`]), bounded by
/// [`SETUP_STEP_TIMEOUT`].
pub async fn within<T>(
    step: &'static str,
    future: impl Future<Output = Result<T, BusError>>,
) -> Result<T, BusError> {
    tokio::time::timeout(SETUP_STEP_TIMEOUT, future)
        .await
        .map_err(|_| BusError::SetupTimeout { step })?
}

/// The URL without credentials or query (which may carry a password), for messages, logs and
/// `Debug`.
pub fn redacted_endpoint(url: &str) -> String {
    let url = url.split_once('?').map_or(url, |(base, _)| base);
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{host}")
}

/// Opens a connection on the current tokio runtime, bounded by [`CONNECT_TIMEOUT`].
pub async fn connect(url: &str, name: &str) -> Result<Connection, BusError> {
    let endpoint = redacted_endpoint(url);
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name(name.into());
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, props)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(source)) => Err(BusError::Connect { endpoint, source }),
        Err(_) => Err(BusError::ConnectTimeout { endpoint }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_never_shows_credentials() {
        assert_eq!(
            redacted_endpoint("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
        assert_eq!(redacted_endpoint("amqp://host:5672"), "amqp://host:5672");
        assert_eq!(
            redacted_endpoint("postgres://user:secret@127.0.0.1:5432/switchboard"),
            "postgres://127.0.0.1:5432/switchboard"
        );
        assert_eq!(
            redacted_endpoint("postgres://127.0.0.1/switchboard?password=secret&sslmode=disable"),
            "postgres://127.0.0.1/switchboard"
        );
    }
}
