//! The publisher's connector: the one task that connects. It opens a connection and a
//! confirm-mode channel (every step bounded), hands the channel to the publishing task as a
//! [`Link`], watches it, and replaces it with backoff once it breaks. Publishing never waits for
//! it: while there is no link, the publishing task fails requests at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::PublisherConfig;
use crate::{connect, declare_durable, setup_step, within, Backoff, BusError};

/// How often the connector looks at the link's state, besides lapin's error callbacks.
const LINK_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How long closing a connection that is being replaced may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// An open confirm-mode channel. `generation` grows with every new connection, so the publishing
/// task can tell which messages were published on an earlier one.
pub(super) struct Link {
    pub channel: Channel,
    pub generation: u64,
    broken: CancellationToken,
}

impl Link {
    /// Tells the connector to replace this link (the publishing task saw it fail).
    pub fn mark_broken(&self) {
        self.broken.cancel();
    }

    fn healthy(&self, connection: &Connection) -> bool {
        !self.broken.is_cancelled()
            && connection.status().connected()
            && self.channel.status().connected()
    }
}

/// Keeps a link open until every receiver of `links` is gone, then closes it.
pub(super) async fn run(
    config: PublisherConfig,
    links: watch::Sender<Option<Arc<Link>>>,
    connected: Arc<AtomicBool>,
) {
    let endpoint = crate::redacted_endpoint(&config.url);
    let mut backoff = Backoff::default();
    let mut generation = 0;
    loop {
        let opened = tokio::select! {
            biased;
            () = links.closed() => return,
            opened = open(&config) => opened,
        };
        let (connection, channel) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                let delay = backoff.next_delay();
                warn!(%error, %endpoint, retry_in_ms = delay.as_millis() as u64, "publisher cannot connect");
                tokio::select! {
                    biased;
                    () = links.closed() => return,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        generation += 1;
        let link = Arc::new(Link {
            channel,
            generation,
            broken: CancellationToken::new(),
        });
        let broken = link.broken.clone();
        connection.on_error(move |_| broken.cancel());
        let broken = link.broken.clone();
        link.channel.on_error(move |_| broken.cancel());
        info!(%endpoint, generation, "publisher connected");
        backoff.reset();
        connected.store(true, Ordering::Relaxed);
        links.send_replace(Some(link.clone()));
        let shutdown = watch_link(&link, &connection, &links).await;
        connected.store(false, Ordering::Relaxed);
        links.send_replace(None);
        let reason = if shutdown {
            "shutting down"
        } else {
            warn!(%endpoint, generation, "lost the RabbitMQ publishing channel; reconnecting");
            "replacing a broken link"
        };
        // Best effort: a broken connection fails to close, with the same result.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, reason)).await;
        if shutdown {
            return;
        }
    }
}

/// Waits until the link breaks (false) or the publishing task is gone (true).
async fn watch_link(
    link: &Link,
    connection: &Connection,
    links: &watch::Sender<Option<Arc<Link>>>,
) -> bool {
    let mut check = tokio::time::interval(LINK_CHECK_INTERVAL);
    loop {
        tokio::select! {
            biased;
            () = links.closed() => return true,
            () = link.broken.cancelled() => return false,
            _ = check.tick() => {
                if !link.healthy(connection) {
                    return false;
                }
            }
        }
    }
}

/// Connects and sets up a confirm-mode channel with the durable topology declared; every step is
/// bounded, and a connection whose setup failed is closed.
async fn open(config: &PublisherConfig) -> Result<(Connection, Channel), BusError> {
    let connection = connect(&config.url, "switchboard-publisher").await?;
    let setup = async {
        let channel = setup_step("opening a channel", connection.create_channel()).await?;
        setup_step(
            "enabling publisher confirms",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        within(
            "declaring the topology",
            declare_durable(&channel, &config.topology, config.persist_queue_type),
        )
        .await?;
        Ok(channel)
    };
    match setup.await {
        Ok(channel) => Ok((connection, channel)),
        Err(error) => {
            let _ =
                tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "setup failed")).await;
            Err(error)
        }
    }
}
