//! The publisher's connector: the one task that opens its channel. On the process's shared
//! connection ([`Broker`](crate::Broker)) it opens a confirm-mode channel and declares the
//! topology (every step bounded), hands the channel to the publishing task as a [`Link`], watches
//! it, and replaces it with backoff once it breaks: on the same connection when only the channel
//! failed, on the next one when the connection was lost. Publishing never waits for it: while
//! there is no link, the publishing task fails requests at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::Channel;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::PublisherConfig;
use crate::{declare_durable, setup_step, within, Backoff, BusError, Connected};

/// How often the connector looks at the link's state, besides lapin's error callback.
const LINK_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How long closing a channel that is being replaced may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// An open confirm-mode channel. `generation` grows with every new channel, so the publishing
/// task can tell which messages were published on an earlier one.
pub(super) struct Link {
    pub channel: Channel,
    pub generation: u64,
    connection: Arc<Connected>,
    broken: CancellationToken,
    /// Whether the connection itself is suspect (the channel broke while lapin still had it
    /// open: a write that did not complete).
    suspect: AtomicBool,
}

impl Link {
    /// Tells the connector to replace this link (the publishing task saw it fail). If lapin
    /// still reports the channel open, the connection is stuck and is replaced for every user.
    pub fn mark_broken(&self) {
        self.suspect.store(true, Ordering::Relaxed);
        self.broken.cancel();
    }

    /// Tells the connector to open a new channel (and declare the topology again) on the same
    /// connection: the broker refused a message, the connection is fine.
    pub fn reopen(&self) {
        self.broken.cancel();
    }

    fn healthy(&self) -> bool {
        !self.broken.is_cancelled()
            && self.connection.is_open()
            && self.channel.status().connected()
    }
}

/// Keeps a link open until every receiver of `links` is gone, then closes its channel.
pub(super) async fn run(
    config: PublisherConfig,
    links: watch::Sender<Option<Arc<Link>>>,
    connected: Arc<AtomicBool>,
) {
    let mut broker = config.broker.clone();
    let mut backoff = Backoff::default();
    let mut generation = 0;
    // A link still usable that the next one replaces (it is closed once that one is up).
    let mut replaced: Option<Arc<Link>> = None;
    loop {
        let connection = tokio::select! {
            biased;
            () = links.closed() => return,
            connection = broker.connected() => connection,
        };
        let Some(connection) = connection else { return };
        let opened = tokio::select! {
            biased;
            () = links.closed() => return,
            opened = open(&config, &connection) => opened,
        };
        let channel = match opened {
            Ok(channel) => channel,
            Err(error) => {
                let delay = backoff.next_delay();
                let endpoint = &connection.endpoint;
                warn!(%error, %endpoint, retry_in_ms = delay.as_millis() as u64, "publisher cannot open its channel");
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
            connection: connection.clone(),
            broken: CancellationToken::new(),
            suspect: AtomicBool::new(false),
        });
        let broken = link.broken.clone();
        link.channel.on_error(move |_| broken.cancel());
        let endpoint = &connection.endpoint;
        info!(%endpoint, generation, "publisher connected");
        backoff.reset();
        connected.store(true, Ordering::Relaxed);
        links.send_replace(Some(link.clone()));
        if let Some(old) = replaced.take() {
            // Best effort: a broken channel fails to close, with the same result.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, old.channel.close(200, "replaced")).await;
        }
        let shutdown = watch_link(&link, &links).await;
        if shutdown {
            connected.store(false, Ordering::Relaxed);
            links.send_replace(None);
            let _ =
                tokio::time::timeout(CLOSE_TIMEOUT, link.channel.close(200, "shutting down")).await;
            return;
        }
        warn!(%endpoint, generation, "lost the RabbitMQ publishing channel; reopening it");
        let channel_open = link.channel.status().connected();
        if link.suspect.load(Ordering::Relaxed) && channel_open {
            connection.mark_broken();
        }
        if channel_open && connection.is_open() {
            // Make before break: the outbox keeps publishing on this channel until the next one
            // is up (what is unconfirmed then is published again on it).
            replaced = Some(link);
        } else {
            connected.store(false, Ordering::Relaxed);
            links.send_replace(None);
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, link.channel.close(200, "reopening")).await;
        }
    }
}

/// Waits until the link breaks (false) or the publishing task is gone (true).
async fn watch_link(link: &Link, links: &watch::Sender<Option<Arc<Link>>>) -> bool {
    let mut check = tokio::time::interval(LINK_CHECK_INTERVAL);
    loop {
        tokio::select! {
            biased;
            () = links.closed() => return true,
            () = link.broken.cancelled() => return false,
            () = link.connection.lost() => return false,
            _ = check.tick() => {
                if !link.healthy() {
                    return false;
                }
            }
        }
    }
}

/// Opens a confirm-mode channel on `connection` with the durable topology declared; every step
/// is bounded, and a channel whose setup failed is closed.
async fn open(config: &PublisherConfig, connection: &Connected) -> Result<Channel, BusError> {
    let channel = setup_step(
        "opening the publishing channel",
        connection.connection.create_channel(),
    )
    .await?;
    let setup = async {
        setup_step(
            "enabling publisher confirms",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        within(
            "declaring the topology",
            declare_durable(&channel, &config.topology, config.persist_queue_type),
        )
        .await
    };
    match setup.await {
        Ok(()) => Ok(channel),
        Err(error) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "setup failed")).await;
            Err(error)
        }
    }
}
