//! Client events (`client-*`): checked, published, and reported to webhooks once confirmed.

use protocol::channel::DEBUG_CHANNEL;
use protocol::frame;
use protocol::webhook::{EventType, WebhookEvent};
use protocol::{Channel, ChannelKind, Envelope, Source};
use tracing::warn;

use super::{code, Session, MAX_EVENT_NAME_LEN};

impl Session {
    pub(super) fn client_event(&mut self, event: String, channel: String, data: String) {
        if !self.app.client_events {
            return self.error("Client events are not enabled for this app", None);
        }
        let kind = Channel::parse(&channel).map(|c| c.kind);
        if !matches!(
            kind,
            Ok(ChannelKind::Private | ChannelKind::PrivateEncrypted | ChannelKind::Presence)
        ) {
            return self.error(
                "Client events are only allowed on private and presence channels",
                None,
            );
        }
        if self.app.analytics_channel.is(&channel) {
            return self.error(
                "Client events are not allowed on the analytics channel",
                None,
            );
        }
        if channel == DEBUG_CHANNEL {
            return self.error("Client events are not allowed on the debug channel", None);
        }
        let Some(user_id) = self.subscriptions.get(&channel) else {
            return self.error(
                "Subscribe to the channel before sending client events",
                None,
            );
        };
        if event.chars().count() > MAX_EVENT_NAME_LEN {
            return self.error("Client event name is longer than 200 characters", None);
        }
        if data.len() > self.app.limits.max_event_data_bytes {
            return self.error("Client event data is too large", None);
        }
        if !self.rate.allow() {
            let limit = self.app.limits.client_events_per_second;
            return self.error(
                &format!("Client event rate limit reached: at most {limit} per second"),
                Some(code::CLIENT_EVENT_RATE_LIMIT),
            );
        }
        let webhook = self
            .gateway
            .webhooks
            .wants(&self.app.id, EventType::ClientEvent, &channel)
            .then(|| WebhookEvent::ClientEvent {
                channel: channel.clone(),
                event: event.clone(),
                data: data.clone(),
                socket_id: self.handle.socket_id.to_string(),
                user_id: user_id.clone(),
            });
        let mut envelope = Envelope::new(&self.app.id, Source::Client, &channel, &event, data);
        envelope.socket_id = Some(self.handle.socket_id.to_string());
        envelope.user_id.clone_from(user_id);
        metrics::counter!("switchboard_events_in_total", "source" => Source::Client.as_str())
            .increment(1);
        match self.gateway.publisher.enqueue(vec![envelope]) {
            Ok(pending) => {
                let handle = self.handle.clone();
                let gateway = self.gateway.clone();
                let app_id = self.app.id.clone();
                // The webhook reports only a client event RabbitMQ confirmed.
                tokio::spawn(async move {
                    match pending.confirmed().await {
                        Ok(()) => {
                            if let Some(webhook) = webhook {
                                gateway.webhooks.emit(&app_id, webhook);
                            }
                        }
                        Err(error) => {
                            warn!(%error, "client event not accepted");
                            handle.send(
                                frame::encode_error(
                                    &format!("Client event not delivered: {error}"),
                                    None,
                                )
                                .into(),
                            );
                        }
                    }
                });
            }
            Err(error) => self.error(&format!("Client event not delivered: {error}"), None),
        }
    }
}
