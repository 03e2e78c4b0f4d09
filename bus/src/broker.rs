//! The process's connection to RabbitMQ, shared: one lapin connection (one socket, one I/O
//! thread, one heartbeat) that the publisher, the live link and the worker each open their own
//! channels on.
//!
//! One task owns it ([`Broker::spawn`]). It connects to the first reachable of the configured
//! URLs (each attempt bounded by [`CONNECT_TIMEOUT`](crate::CONNECT_TIMEOUT)), publishes the
//! connection as a numbered [`Connected`] generation, watches it (lapin's error callback, a
//! 100 ms status check, and users that report it stuck with [`Connected::mark_broken`]) and, once
//! it is lost, connects again — to the next URL first, so a dead node is tried last — with
//! backoff only after every URL failed. Users wait for an open generation with
//! [`Broker::connected`], open their channels on it, and on a failure of theirs ask again: a
//! channel that failed alone is reopened on the same connection, a lost connection is replaced
//! for everyone. The task closes the connection once every [`Broker`] handle is gone, so the
//! last user to finish (the publisher answering its confirms, the worker acking its batch)
//! still has it.

use std::sync::Arc;
use std::time::Duration;

use lapin::Connection;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::{connect, redacted_endpoint, Backoff, BusError};

/// How often the connection's state is looked at, besides lapin's error callback.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How long closing a connection may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// One open connection. `generation` grows with every new connection.
pub struct Connected {
    pub connection: Connection,
    pub generation: u64,
    /// The URL it reached, without credentials.
    pub endpoint: String,
    broken: CancellationToken,
}

impl Connected {
    /// Whether the connection is still usable: lapin reports it connected and nobody found it
    /// broken.
    pub fn is_open(&self) -> bool {
        !self.broken.is_cancelled() && self.connection.status().connected()
    }

    /// Reports the connection stuck (a write that does not complete, say): it is replaced for
    /// every user.
    pub fn mark_broken(&self) {
        self.broken.cancel();
    }

    /// Resolves once the connection is found broken (by lapin, the status check or a user).
    pub async fn lost(&self) {
        self.broken.cancelled().await;
    }
}

/// Handle to the process's shared connection; cheap to clone. The connection closes once every
/// handle is dropped.
#[derive(Clone)]
pub struct Broker {
    current: watch::Receiver<Option<Arc<Connected>>>,
    endpoints: Arc<str>,
}

impl std::fmt::Debug for Broker {
    /// The URLs without credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Starts the connection task on `tracker`; `name` is the connection's name in RabbitMQ.
    /// Until the first connection is up, [`Broker::current`] is `None`.
    pub fn spawn(urls: Vec<String>, name: &'static str, tracker: &TaskTracker) -> Broker {
        let endpoints: Arc<str> = urls
            .iter()
            .map(|url| redacted_endpoint(url))
            .collect::<Vec<_>>()
            .join(",")
            .into();
        let (tx, current) = watch::channel(None);
        tracker.spawn(run(urls, name, tx));
        Broker { current, endpoints }
    }

    /// The open connection now, if there is one.
    pub fn current(&self) -> Option<Arc<Connected>> {
        self.current
            .borrow()
            .as_ref()
            .filter(|connected| connected.is_open())
            .cloned()
    }

    pub fn is_connected(&self) -> bool {
        self.current().is_some()
    }

    /// Waits for an open connection. `None` only if the connection task has ended, which it
    /// does only once every handle is gone, so never for a caller holding one.
    pub async fn connected(&mut self) -> Option<Arc<Connected>> {
        loop {
            if let Some(connected) = self.current() {
                return Some(connected);
            }
            // A connection that broke but is not replaced yet is skipped: wait for the next.
            let check = tokio::time::sleep(CHECK_INTERVAL);
            tokio::select! {
                changed = self.current.changed() => changed.ok()?,
                () = check => {}
            }
        }
    }

    /// The configured URLs without credentials, comma-separated, for logs.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }
}

/// Connects to the first of `urls` (tried in order from `first`, wrapping) that answers;
/// returns its index. Fails with the last URL's error when none does.
pub async fn connect_first(
    urls: &[String],
    first: usize,
    name: &str,
) -> Result<(usize, Connection), BusError> {
    let mut last = None;
    for offset in 0..urls.len() {
        let index = (first + offset) % urls.len();
        match connect(&urls[index], name).await {
            Ok(connection) => return Ok((index, connection)),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or(BusError::NoUrl))
}

async fn run(urls: Vec<String>, name: &'static str, tx: watch::Sender<Option<Arc<Connected>>>) {
    let mut backoff = Backoff::default();
    let mut first = 0;
    let mut generation = 0;
    loop {
        let opened = tokio::select! {
            biased;
            () = tx.closed() => return,
            opened = connect_first(&urls, first, name) => opened,
        };
        let (index, connection) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                let delay = backoff.next_delay();
                warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot reach any RabbitMQ node");
                tokio::select! {
                    biased;
                    () = tx.closed() => return,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        generation += 1;
        let broken = CancellationToken::new();
        let on_error = broken.clone();
        connection.on_error(move |_| on_error.cancel());
        let connected = Arc::new(Connected {
            connection,
            generation,
            endpoint: redacted_endpoint(&urls[index]),
            broken,
        });
        let endpoint = &connected.endpoint;
        info!(%endpoint, generation, "connected to RabbitMQ");
        backoff.reset();
        tx.send_replace(Some(connected.clone()));
        let shutdown = watch(&connected, &tx).await;
        connected.mark_broken();
        tx.send_replace(None);
        let reason = if shutdown {
            "shutting down"
        } else {
            warn!(%endpoint, generation, "lost the RabbitMQ connection; reconnecting, another node first");
            // The node just lost is tried last.
            first = (index + 1) % urls.len();
            "replacing a broken connection"
        };
        // Best effort: a broken connection fails to close, with the same result.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, connected.connection.close(200, reason)).await;
        if shutdown {
            return;
        }
    }
}

/// Waits until the connection breaks (false) or every handle is gone (true).
async fn watch(connected: &Connected, tx: &watch::Sender<Option<Arc<Connected>>>) -> bool {
    let mut check = tokio::time::interval(CHECK_INTERVAL);
    loop {
        tokio::select! {
            biased;
            () = tx.closed() => return true,
            () = connected.lost() => return false,
            _ = check.tick() => {
                if !connected.is_open() {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn debug_hides_credentials_and_the_task_ends_with_the_last_handle() {
        let tracker = TaskTracker::new();
        let broker = Broker::spawn(
            vec![
                "amqp://guest:secret@127.0.0.1:1/%2f".into(),
                "amqp://user:hunter2@127.0.0.2:1/%2f?x=y".into(),
            ],
            "test",
            &tracker,
        );
        let shown = format!("{broker:?}");
        assert!(
            shown.contains("amqp://127.0.0.1:1/%2f,amqp://127.0.0.2:1/%2f"),
            "{shown}"
        );
        assert!(
            !shown.contains("secret") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(!broker.is_connected());
        drop(broker);
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .expect("the connection task ends once every handle is gone");
    }
}
