//! A minimal Pusher v7 WebSocket client: connect from a chosen source address, read
//! `connection_established`, subscribe (signing presence channels), open many at once.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use protocol::signature::{channel_string_to_sign, sign};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::api::Refused;

pub type Ws = WebSocketStream<TcpStream>;

/// How long connecting, or subscribing, may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// The source address of connection `index` of `total`: none (the kernel picks 127.0.0.1) while
/// `total` fits in one address's ephemeral ports, else 127.0.0.2, .3, … with `per_source`
/// connections each.
pub fn source_address(index: usize, total: usize, per_source: usize) -> Option<Ipv4Addr> {
    if total <= per_source {
        return None;
    }
    let n = 2 + index / per_source;
    Some(Ipv4Addr::new(127, 0, (n / 256) as u8, (n % 256) as u8))
}

/// `auth` for a presence subscription: `key:hex(hmac(secret, socket_id:channel:channel_data))`.
pub fn presence_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: &str,
) -> String {
    let signed = channel_string_to_sign(socket_id, channel, Some(channel_data));
    format!("{key}:{}", sign(secret, signed.as_bytes()))
}

/// The value of a top-level string field of a frame, and `data` decoded when it is a JSON string.
fn frame_event(text: &str) -> Option<(String, Option<String>, Value)> {
    let frame: Value = serde_json::from_str(text).ok()?;
    let event = frame.get("event")?.as_str()?.to_owned();
    let channel = frame
        .get("channel")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let data = match frame.get("data") {
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        Some(other) => other.clone(),
        None => Value::Null,
    };
    Some((event, channel, data))
}

async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text),
            Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error.into()),
            None => bail!("connection ended"),
        }
    }
}

/// Connects to `/app/{key}?protocol=7…` and returns the socket and its socket id.
pub async fn connect(
    addr: SocketAddr,
    key: &str,
    source: Option<Ipv4Addr>,
) -> anyhow::Result<(Ws, String)> {
    let steps = async {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::from((ip, 0)))
                .with_context(|| format!("binding to source address {ip}"))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let url = format!(
            "ws://{addr}/app/{key}?protocol=7&client=switchboard-bench&version=0.1.0&flash=false"
        );
        let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
        let text = next_text(&mut ws).await?;
        match frame_event(&text) {
            Some((event, _, data)) if event == "pusher:connection_established" => {
                let socket_id = data["socket_id"]
                    .as_str()
                    .context("connection_established without socket_id")?
                    .to_owned();
                Ok((ws, socket_id))
            }
            _ => bail!("expected pusher:connection_established, got {text}"),
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, steps)
        .await
        .context("connecting timed out")?
}

/// Sends a Segment batch `body` (`{"batch":[…]}` of `events` events) as one `switchboard:track`
/// frame and waits for its answer: every event acked, or why not.
pub async fn track(ws: &mut Ws, body: &[u8], events: usize) -> Result<(), Refused> {
    let body = std::str::from_utf8(body).map_err(|e| Refused::Transport(e.to_string()))?;
    let frame = format!(r#"{{"event":"switchboard:track","data":{body}}}"#);
    ws.send(Message::text(frame))
        .await
        .map_err(|e| Refused::Transport(e.to_string()))?;
    loop {
        let text = tokio::time::timeout(STEP_TIMEOUT, next_text(ws))
            .await
            .map_err(|_| Refused::Transport("no answer within 30 s".into()))?
            .map_err(|e| Refused::Transport(e.to_string()))?;
        let Some((event, _, data)) = frame_event(&text) else {
            continue;
        };
        match event.as_str() {
            "switchboard:ack" => {
                let acked = data["messageIds"].as_array().map_or(0, Vec::len);
                return if acked == events {
                    Ok(())
                } else {
                    Err(Refused::Nack(format!("{acked} of {events} acked")))
                };
            }
            "switchboard:nack" => {
                let reason = data["reason"].as_str().unwrap_or("no reason").to_owned();
                return Err(Refused::Nack(reason));
            }
            _ => {}
        }
    }
}

/// Subscribes and waits for `pusher_internal:subscription_succeeded` of that channel.
pub async fn subscribe(
    ws: &mut Ws,
    channel: &str,
    auth: Option<&str>,
    channel_data: Option<&str>,
) -> anyhow::Result<()> {
    let mut data = json!({ "channel": channel, "auth": auth.unwrap_or("") });
    if let Some(channel_data) = channel_data {
        data["channel_data"] = channel_data.into();
    }
    let frame = json!({ "event": "pusher:subscribe", "data": data }).to_string();
    let steps = async {
        ws.send(Message::Text(frame)).await?;
        loop {
            let text = next_text(ws).await?;
            match frame_event(&text) {
                Some((event, Some(c), _))
                    if event == "pusher_internal:subscription_succeeded" && c == channel =>
                {
                    return Ok(())
                }
                Some((event, _, _))
                    if event == "pusher:subscription_error" || event == "pusher:error" =>
                {
                    bail!("subscribing to {channel} failed: {text}")
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, steps)
        .await
        .with_context(|| format!("subscribing to {channel} timed out"))?
}

/// What the subscriber of connection `index` sends: channel, and for presence `(auth data)`.
pub struct Subscription {
    pub channel: String,
    pub presence_user: Option<String>,
}

/// Opens `total` connections, `concurrency` handshakes at a time, each subscribed as `plan(i)`
/// says; returns them in index order with their socket ids, and how long it took.
pub async fn open_many(
    target: &crate::Target,
    total: usize,
    concurrency: usize,
    per_source: usize,
    plan: impl Fn(usize) -> Subscription,
) -> anyhow::Result<(Vec<(Ws, String)>, Duration)> {
    let started = Instant::now();
    let opened: Vec<anyhow::Result<(Ws, String)>> = futures_util::stream::iter(0..total)
        .map(|i| {
            let subscription = plan(i);
            async move {
                let source = source_address(i, total, per_source);
                let (mut ws, socket_id) = connect(target.ws_addr, &target.key, source)
                    .await
                    .with_context(|| format!("connection {i} (source {source:?})"))?;
                match &subscription.presence_user {
                    Some(user) => {
                        let channel_data = json!({ "user_id": user }).to_string();
                        let auth = presence_auth(
                            &target.key,
                            &target.secret,
                            &socket_id,
                            &subscription.channel,
                            &channel_data,
                        );
                        subscribe(
                            &mut ws,
                            &subscription.channel,
                            Some(&auth),
                            Some(&channel_data),
                        )
                        .await?;
                    }
                    None => subscribe(&mut ws, &subscription.channel, None, None).await?,
                }
                Ok((ws, socket_id))
            }
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    let opened = opened.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok((opened, started.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_spread_beyond_one_ip() {
        assert_eq!(source_address(0, 10_000, 20_000), None);
        assert_eq!(
            source_address(0, 30_000, 20_000),
            Some(Ipv4Addr::new(127, 0, 0, 2))
        );
        assert_eq!(
            source_address(19_999, 30_000, 20_000),
            Some(Ipv4Addr::new(127, 0, 0, 2))
        );
        assert_eq!(
            source_address(20_000, 30_000, 20_000),
            Some(Ipv4Addr::new(127, 0, 0, 3))
        );
        assert_eq!(
            source_address(254 * 10, 300_000, 10),
            Some(Ipv4Addr::new(127, 0, 1, 0))
        );
    }

    #[test]
    fn presence_auth_matches_the_protocol_vector() {
        let auth = presence_auth(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            "1234.1234",
            "presence-foobar",
            r#"{"user_id":10,"user_info":{"name":"Mr. Pusher"}}"#,
        );
        assert_eq!(
            auth,
            "278d425bdf160c739803:afaed3695da2ffd16931f457e338e6c9f2921fa133ce7dac49f529792be6304c"
        );
    }

    #[test]
    fn frames_decode_their_string_data() {
        let (event, channel, data) = frame_event(
            r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\",\"activity_timeout\":120}"}"#,
        )
        .unwrap();
        assert_eq!(event, "pusher:connection_established");
        assert_eq!(channel, None);
        assert_eq!(data["socket_id"], "1.2");
        let (_, channel, _) = frame_event(
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"c","data":"{}"}"#,
        )
        .unwrap();
        assert_eq!(channel.as_deref(), Some("c"));
        assert!(frame_event("not json").is_none());
    }
}
