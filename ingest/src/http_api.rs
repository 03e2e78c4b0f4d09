//! The Pusher HTTP API: signed requests from backends and server SDKs (PROTOCOL.md §2–3).

use std::sync::Arc;

use bytes::Bytes;
use dispatcher::Occupancy;
use protocol::channel::DEBUG_CHANNEL;
use protocol::control::Control;
use protocol::signature::{query_params, verify_http_request, HttpRequestToVerify};
use protocol::{Channel, ChannelKind, Envelope, SocketId, Source};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use warp::http::HeaderMap;
use warp::reply::Response;
use warp::Reply;

use crate::apps::App;
use crate::error::ApiError;
use crate::history::HistoryQuery;
use crate::idempotency::IdempotencyKey;
use crate::offload::API_INLINE_MAX_BYTES;
use crate::Gateway;

/// Longest event name accepted, in characters.
pub const MAX_EVENT_NAME_LEN: usize = 200;

/// Which API call a request is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Trigger,
    BatchTrigger,
    Channels,
    Channel(String),
    Users(String),
    TerminateConnections(String),
    /// `GET /apps/{id}/channels/{name}/events`: the channel's history.
    History(String),
}

/// One signed API request as it arrived.
#[derive(Clone)]
pub struct ApiRequest {
    /// The app id from the path; None for the one path the PyPI SDK sends without it
    /// (`/users/{id}/terminate_connections`), where the app is found by `auth_key`.
    pub app_id: Option<String>,
    pub method: &'static str,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Answers an API request: authenticate, then the endpoint's own work.
pub async fn handle(gateway: Arc<Gateway>, endpoint: Endpoint, request: ApiRequest) -> Response {
    match handle_inner(&gateway, endpoint, &request).await {
        Ok(body) => warp::reply::json(&body).into_response(),
        Err(error) => {
            tracing::debug!(%error, app_id = request.app_id, "API request rejected");
            error.into_response()
        }
    }
}

async fn handle_inner(
    gateway: &Arc<Gateway>,
    endpoint: Endpoint,
    request: &ApiRequest,
) -> Result<Value, ApiError> {
    let size = request.body.len();
    let job = {
        let (gateway, request) = (gateway.clone(), request.clone());
        move || authenticate(&gateway, &request).map(|(app, params)| (app.clone(), params))
    };
    let (app, params) = gateway.offload.run(size, API_INLINE_MAX_BYTES, job).await?;
    let app = &app;
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    match endpoint {
        Endpoint::Trigger => {
            let trigger: TriggerRequest = gateway
                .offload
                .json(&request.body)
                .await
                .map_err(ApiError::BadBody)?;
            let key = IdempotencyKey::from_headers(&request.headers)?;
            let info = trigger.info.as_deref().map(parse_info).transpose()?;
            let mut envelopes = trigger.into_envelopes(app)?;
            if let Some(key) = &key {
                for envelope in &mut envelopes {
                    envelope.idempotency_key = Some(key.for_trigger(&envelope.channel));
                }
            }
            let channels: Vec<String> = envelopes.iter().map(|e| e.channel.clone()).collect();
            publish_once(gateway, envelopes).await?;
            Ok(match info {
                Some(attributes) => describe_channels(gateway, app, &channels, &attributes),
                None => json!({}),
            })
        }
        Endpoint::BatchTrigger => {
            let batch: BatchRequest = gateway
                .offload
                .json(&request.body)
                .await
                .map_err(ApiError::BadBody)?;
            if batch.batch.len() > app.limits.max_batch_events {
                return Err(ApiError::BatchTooLarge {
                    count: batch.batch.len(),
                    max: app.limits.max_batch_events,
                });
            }
            let key = IdempotencyKey::from_headers(&request.headers)?;
            let mut envelopes = Vec::with_capacity(batch.batch.len());
            // Per item, in request order: its channels and the attributes it asked for.
            let mut items = Vec::with_capacity(batch.batch.len());
            for (index, item) in batch.batch.into_iter().enumerate() {
                let info = item.info.as_deref().map(parse_info).transpose()?;
                let mut item_envelopes = item.into_envelopes(app)?;
                if let Some(key) = &key {
                    for envelope in &mut item_envelopes {
                        envelope.idempotency_key =
                            Some(key.for_batch_item(index, &envelope.channel));
                    }
                }
                let channels: Vec<String> =
                    item_envelopes.iter().map(|e| e.channel.clone()).collect();
                items.push((channels, info));
                envelopes.extend(item_envelopes);
            }
            publish_once(gateway, envelopes).await?;
            if items.iter().all(|(_, info)| info.is_none()) {
                return Ok(json!({}));
            }
            let described: Vec<Value> = items
                .iter()
                .map(|(channels, info)| match (info, channels.as_slice()) {
                    (None, _) => json!({}),
                    (Some(attributes), [channel]) => describe(gateway, app, channel, attributes),
                    (Some(attributes), channels) => {
                        describe_channels(gateway, app, channels, attributes)
                    }
                })
                .collect();
            Ok(json!({ "batch": described }))
        }
        Endpoint::Channels => {
            gateway.registry.fresh().await;
            let prefix = param("filter_by_prefix").unwrap_or("");
            let attributes = param("info")
                .map(parse_info)
                .transpose()?
                .unwrap_or_default();
            if attributes.iter().any(|a| a == "user_count") && !prefix.starts_with("presence-") {
                return Err(ApiError::InvalidInfo {
                    attribute: "user_count".into(),
                    reason: "needs filter_by_prefix=presence-",
                });
            }
            for attribute in &attributes {
                if attribute != "user_count" && attribute != "subscription_count" {
                    return Err(ApiError::InvalidInfo {
                        attribute: attribute.clone(),
                        reason: "is not available here",
                    });
                }
            }
            let channels: Map<String, Value> = gateway
                .registry
                .occupied(&app.id, prefix)
                .into_iter()
                .filter(|(name, _)| name != DEBUG_CHANNEL)
                .map(|(name, occupancy)| {
                    let info = attributes_of(occupancy, &attributes);
                    (name, Value::Object(info))
                })
                .collect();
            Ok(json!({ "channels": channels }))
        }
        Endpoint::Channel(name) => {
            validate_channel(&name)?;
            gateway.registry.fresh().await;
            let attributes = param("info")
                .map(parse_info)
                .transpose()?
                .unwrap_or_default();
            Ok(describe_checked(gateway, app, &name, &attributes)?)
        }
        Endpoint::History(name) => {
            let name = crate::history::channel_from_path(&name)?;
            validate_channel(&name)?;
            let query = HistoryQuery::parse(param("after"), param("limit"))?;
            Ok(gateway.history.answer(&app.id, &name, query).await?)
        }
        Endpoint::Users(name) => {
            let channel = validate_channel(&name)?;
            if channel.kind != ChannelKind::Presence {
                return Err(ApiError::NotPresence(name));
            }
            gateway.registry.fresh().await;
            let users: Vec<Value> = gateway
                .registry
                .members(&app.id, &name)
                .into_iter()
                .map(|m| json!({ "id": m.user_id }))
                .collect();
            Ok(json!({ "users": users }))
        }
        Endpoint::TerminateConnections(user_id) => {
            let len = user_id.chars().count();
            if len == 0 || len > protocol::presence::MAX_USER_ID_LEN {
                return Err(ApiError::InvalidUserId);
            }
            gateway.registry.terminate_local(&app.id, &user_id);
            gateway.registry.broadcast(Control::Terminate {
                app_id: app.id.clone(),
                user_id,
            });
            Ok(json!({}))
        }
    }
}

type QueryParams = Vec<(String, String)>;

/// Finds the app, checks the request's signature, and returns the app and the query parameters.
fn authenticate<'g>(
    gateway: &'g Gateway,
    request: &ApiRequest,
) -> Result<(&'g Arc<App>, QueryParams), ApiError> {
    let params = query_params(&request.query).map_err(ApiError::BadQuery)?;
    let app = match &request.app_id {
        Some(id) => gateway.apps.by_id(id),
        None => params
            .iter()
            .find(|(k, _)| k == "auth_key")
            .and_then(|(_, key)| gateway.apps.by_key(key)),
    }
    .ok_or(ApiError::UnknownApp)?;
    let to_verify = HttpRequestToVerify {
        method: request.method,
        path: &request.path,
        params: &params,
        body: &request.body,
    };
    verify_http_request(
        &app.key,
        &app.secret,
        &to_verify,
        chrono::Utc::now().timestamp(),
    )?;
    if !app.enabled {
        return Err(ApiError::AppDisabled);
    }
    Ok((app, params))
}

/// Publishes the envelopes of a trigger whose idempotency keys this node has not had confirmed
/// (all of them when the request had no key) and remembers their keys once confirmed.
async fn publish_once(gateway: &Gateway, mut envelopes: Vec<Envelope>) -> Result<(), ApiError> {
    let known = gateway.recent_keys.drop_known(&mut envelopes);
    if known > 0 {
        metrics::counter!("switchboard_idempotent_duplicates_total").increment(known as u64);
    }
    if envelopes.is_empty() {
        return Ok(());
    }
    let keys: Vec<(String, String)> = envelopes
        .iter()
        .filter_map(|e| Some((e.app_id.clone(), e.idempotency_key.clone()?)))
        .collect();
    publish(gateway, Source::Api, envelopes).await?;
    gateway.recent_keys.remember(keys);
    Ok(())
}

/// Publishes a request's envelopes and waits for the broker's confirm; counts them by source.
pub(crate) async fn publish(
    gateway: &Gateway,
    source: Source,
    envelopes: Vec<Envelope>,
) -> Result<(), ApiError> {
    let count = envelopes.len() as u64;
    gateway
        .publisher
        .publish(envelopes)
        .await
        .map_err(ApiError::Unavailable)?;
    metrics::counter!("switchboard_events_in_total", "source" => source.as_str()).increment(count);
    Ok(())
}

fn validate_channel(name: &str) -> Result<Channel<'_>, ApiError> {
    Channel::parse(name).map_err(|source| ApiError::InvalidChannel {
        name: name.to_owned(),
        source,
    })
}

fn parse_info(info: &str) -> Result<Vec<String>, ApiError> {
    Ok(info
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect())
}

fn attributes_of(occupancy: Occupancy, attributes: &[String]) -> Map<String, Value> {
    let mut info = Map::new();
    for attribute in attributes {
        match attribute.as_str() {
            "user_count" => info.insert(attribute.clone(), occupancy.users.into()),
            "subscription_count" => info.insert(attribute.clone(), occupancy.subscriptions.into()),
            _ => None,
        };
    }
    info
}

/// A trigger's `info` reply: `{"channels": {name: attributes}}`.
fn describe_channels(
    gateway: &Gateway,
    app: &App,
    channels: &[String],
    attributes: &[String],
) -> Value {
    let described: Map<String, Value> = channels
        .iter()
        .map(|c| (c.clone(), describe(gateway, app, c, attributes)))
        .collect();
    json!({ "channels": described })
}

/// The requested attributes of one channel; those that do not apply to its type are left out
/// (trigger replies) rather than refused.
fn describe(gateway: &Gateway, app: &App, channel: &str, attributes: &[String]) -> Value {
    let is_presence = Channel::parse(channel).is_ok_and(|c| c.kind == ChannelKind::Presence);
    let applicable: Vec<String> = attributes
        .iter()
        .filter(|a| a.as_str() != "user_count" || is_presence)
        .cloned()
        .collect();
    Value::Object(attributes_of(
        gateway.registry.occupancy(&app.id, channel),
        &applicable,
    ))
}

/// `GET /channels/{name}`: `occupied` plus the requested attributes, refusing those that do not
/// apply to the channel's type.
fn describe_checked(
    gateway: &Gateway,
    app: &App,
    name: &str,
    attributes: &[String],
) -> Result<Value, ApiError> {
    let channel = validate_channel(name)?;
    let occupancy = gateway.registry.occupancy(&app.id, name);
    let mut body = Map::new();
    body.insert("occupied".into(), (occupancy.subscriptions > 0).into());
    for attribute in attributes {
        let invalid = |reason| ApiError::InvalidInfo {
            attribute: attribute.clone(),
            reason,
        };
        match attribute.as_str() {
            "user_count" if channel.kind != ChannelKind::Presence => {
                return Err(invalid("is only available for presence channels"))
            }
            "user_count" => body.insert(attribute.clone(), occupancy.users.into()),
            "subscription_count" => body.insert(attribute.clone(), occupancy.subscriptions.into()),
            "cache" if !channel.cache => {
                return Err(invalid("is only available for cache channels"))
            }
            "cache" => {
                if let Some(cached) = gateway.registry.cached(&app.id, name) {
                    body.insert(
                        "cache".into(),
                        json!({ "event": cached.event, "data": cached.data, "ttl": cached.ttl.as_secs() }),
                    );
                }
                None
            }
            _ => return Err(invalid("is not a channel attribute")),
        };
    }
    Ok(Value::Object(body))
}

#[derive(Deserialize)]
struct TriggerRequest {
    name: String,
    data: Box<RawValue>,
    channel: Option<String>,
    channels: Option<Vec<String>>,
    socket_id: Option<String>,
    info: Option<String>,
}

#[derive(Deserialize)]
struct BatchRequest {
    batch: Vec<TriggerRequest>,
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
    /// Validates the trigger against the app's limits and turns it into one envelope per channel.
    fn into_envelopes(self, app: &App) -> Result<Vec<Envelope>, ApiError> {
        let limits = &app.limits;
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
            let channel = validate_channel(name)?;
            // Only the gateway publishes the console's records there.
            if channel.name == DEBUG_CHANNEL {
                return Err(ApiError::ReservedChannel(name.clone()));
            }
            if channel.kind == ChannelKind::PrivateEncrypted && channels.len() > 1 {
                return Err(ApiError::EncryptedMultiChannel(name.clone()));
            }
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
