//! The Pusher HTTP API: signed requests from backends and server SDKs (PROTOCOL.md §2–3).

use std::sync::Arc;

use bytes::Bytes;
use protocol::signature::{verify_http_request, HttpRequestToVerify};
use protocol::{Channel, Envelope, SocketId, Source};
use serde::Deserialize;
use serde_json::value::RawValue;
use warp::reply::Response;
use warp::Reply;

use crate::apps::App;
use crate::error::ApiError;
use crate::Gateway;

/// Longest event name accepted, in characters.
pub const MAX_EVENT_NAME_LEN: usize = 200;

/// Finds the app and checks the request's signature.
fn authenticate<'g>(
    gateway: &'g Gateway,
    app_id: &str,
    method: &str,
    path: &str,
    raw_query: &str,
    body: &[u8],
) -> Result<&'g Arc<App>, ApiError> {
    let app = gateway.apps.by_id(app_id).ok_or(ApiError::UnknownApp)?;
    let params: Vec<(String, String)> =
        serde_urlencoded::from_str(raw_query).map_err(ApiError::BadQuery)?;
    let request = HttpRequestToVerify {
        method,
        path,
        params: &params,
        body,
    };
    verify_http_request(
        &app.key,
        &app.secret,
        &request,
        chrono::Utc::now().timestamp(),
    )?;
    if !app.enabled {
        return Err(ApiError::AppDisabled);
    }
    Ok(app)
}

#[derive(Deserialize)]
struct TriggerRequest {
    name: String,
    data: Box<RawValue>,
    channel: Option<String>,
    channels: Option<Vec<String>>,
    socket_id: Option<String>,
}

/// `data` is a string on the wire; an SDK that sends a JSON value instead gets its JSON text kept.
fn data_text(raw: &RawValue) -> Result<String, ApiError> {
    let text = raw.get();
    if text.starts_with('"') {
        serde_json::from_str(text).map_err(ApiError::BadBody)
    } else {
        Ok(text.to_owned())
    }
}

impl TriggerRequest {
    /// Validates the trigger and turns it into one envelope per channel.
    fn into_envelopes(self, app: &App, gateway: &Gateway) -> Result<Vec<Envelope>, ApiError> {
        let limits = &gateway.config;
        let channels: Vec<String> = match (self.channels, self.channel) {
            (Some(channels), _) if !channels.is_empty() => channels,
            (_, Some(channel)) => vec![channel],
            _ => return Err(ApiError::NoChannels),
        };
        if channels.len() > limits.max_channels_per_trigger {
            return Err(ApiError::TooManyChannels {
                count: channels.len(),
                max: limits.max_channels_per_trigger,
            });
        }
        for name in &channels {
            Channel::parse(name).map_err(|source| ApiError::InvalidChannel {
                name: name.clone(),
                source,
            })?;
        }
        let name_len = self.name.chars().count();
        if name_len == 0 || name_len > MAX_EVENT_NAME_LEN {
            return Err(ApiError::InvalidEventName {
                max: MAX_EVENT_NAME_LEN,
            });
        }
        if let Some(socket_id) = &self.socket_id {
            if !SocketId::is_valid(socket_id) {
                return Err(ApiError::InvalidSocketId(socket_id.clone()));
            }
        }
        let data = data_text(&self.data)?;
        if data.len() > limits.max_event_data_bytes {
            return Err(ApiError::DataTooLarge {
                size: data.len(),
                max: limits.max_event_data_bytes,
            });
        }
        Ok(channels
            .iter()
            .map(|channel| {
                let mut envelope =
                    Envelope::new(&app.id, Source::Api, channel, &self.name, data.clone());
                envelope.socket_id.clone_from(&self.socket_id);
                envelope
            })
            .collect())
    }
}

/// `POST /apps/{app_id}/events`: answers exactly `200 {}` once RabbitMQ confirmed every event.
pub async fn trigger(
    gateway: Arc<Gateway>,
    app_id: String,
    path: String,
    raw_query: String,
    body: Bytes,
) -> Response {
    match trigger_inner(&gateway, &app_id, &path, &raw_query, &body).await {
        Ok(()) => {
            warp::reply::with_header("{}", "content-type", "application/json").into_response()
        }
        Err(error) => {
            tracing::debug!(%error, app_id, "trigger rejected");
            error.into_response()
        }
    }
}

async fn trigger_inner(
    gateway: &Gateway,
    app_id: &str,
    path: &str,
    raw_query: &str,
    body: &[u8],
) -> Result<(), ApiError> {
    let app = authenticate(gateway, app_id, "POST", path, raw_query, body)?;
    let request: TriggerRequest = serde_json::from_slice(body).map_err(ApiError::BadBody)?;
    let envelopes = request.into_envelopes(app, gateway)?;
    let count = envelopes.len() as u64;
    gateway
        .publisher
        .publish(envelopes)
        .await
        .map_err(ApiError::Unavailable)?;
    metrics::counter!("switchboard_events_in_total", "source" => Source::Api.as_str())
        .increment(count);
    Ok(())
}
