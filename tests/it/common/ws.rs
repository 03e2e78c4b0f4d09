//! A minimal Pusher WebSocket client for tests.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct Client {
    pub socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub socket_id: String,
    pub established: Value,
}

/// What the client saw next.
#[derive(Debug)]
pub enum Seen {
    Event(Value),
    Close(Option<u16>),
    Pong,
    Nothing,
}

pub const WAIT: Duration = Duration::from_secs(10);

impl Client {
    /// Connects and reads `pusher:connection_established`.
    pub async fn connect(url: &str) -> Client {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connects");
        let mut client = Client {
            socket,
            socket_id: String::new(),
            established: Value::Null,
        };
        let first = client.next_event().await;
        assert_eq!(first["event"], "pusher:connection_established", "{first}");
        let data: Value = serde_json::from_str(first["data"].as_str().unwrap()).unwrap();
        client.socket_id = data["socket_id"].as_str().unwrap().to_owned();
        client.established = data;
        client
    }

    /// Connects without reading anything.
    pub async fn connect_raw(url: &str) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connects")
            .0
    }

    pub async fn send(&mut self, frame: Value) {
        self.socket
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::text(text.to_owned()))
            .await
            .unwrap();
    }

    pub async fn seen(&mut self, within: Duration) -> Seen {
        read_seen(&mut self.socket, within).await
    }

    /// The next text frame as JSON; panics on close or timeout.
    pub async fn next_event(&mut self) -> Value {
        match self.seen(WAIT).await {
            Seen::Event(v) => v,
            other => panic!("expected an event, saw {other:?}"),
        }
    }

    /// Next event whose name is not `pusher:ping` (the server's idle ping).
    pub async fn next_app_event(&mut self) -> Value {
        loop {
            let ev = self.next_event().await;
            if ev["event"] != "pusher:ping" {
                return ev;
            }
        }
    }

    pub async fn subscribe(&mut self, channel: &str) {
        self.send(
            serde_json::json!({"event":"pusher:subscribe","data":{"auth":"","channel":channel}}),
        )
        .await;
        let reply = self.next_event().await;
        assert_eq!(
            reply["event"], "pusher_internal:subscription_succeeded",
            "{reply}"
        );
        assert_eq!(reply["channel"], channel);
    }

    /// Subscribes to a presence channel as `user_id`; returns `subscription_succeeded`'s data.
    pub async fn join(&mut self, channel: &str, user_id: &str) -> Value {
        let channel_data =
            serde_json::json!({"user_id": user_id, "user_info": {"name": user_id}}).to_string();
        let auth = super::presence_auth(&self.socket_id, channel, &channel_data);
        self.send(serde_json::json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth,"channel_data":channel_data}}))
            .await;
        let reply = self.next_app_event().await;
        assert_eq!(
            reply["event"], "pusher_internal:subscription_succeeded",
            "{reply}"
        );
        data(&reply)
    }

    /// Subscribes to a private channel with a valid signature.
    pub async fn subscribe_private(&mut self, channel: &str) {
        let auth = super::channel_auth(&self.socket_id, channel);
        self.send(
            serde_json::json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth}}),
        )
        .await;
        let reply = self.next_app_event().await;
        assert_eq!(
            reply["event"], "pusher_internal:subscription_succeeded",
            "{reply}"
        );
    }

    /// Waits for the close frame and returns its code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.seen(WAIT).await {
                Seen::Close(code) => return code,
                Seen::Event(_) | Seen::Pong => continue,
                Seen::Nothing => panic!("no close within {WAIT:?}"),
            }
        }
    }

    /// Asserts that no application event arrives within `quiet`.
    pub async fn assert_silent(&mut self, quiet: Duration) {
        match self.seen(quiet).await {
            Seen::Nothing => {}
            other => panic!("expected silence, saw {other:?}"),
        }
    }
}

pub async fn read_seen(
    socket: &mut WebSocketStream<MaybeTlsStream<TcpStream>>,
    within: Duration,
) -> Seen {
    loop {
        let next = match tokio::time::timeout(within, socket.next()).await {
            Err(_) => return Seen::Nothing,
            Ok(next) => next,
        };
        match next {
            Some(Ok(Message::Text(text))) => {
                return Seen::Event(serde_json::from_str(text.as_str()).expect("frames are JSON"))
            }
            Some(Ok(Message::Close(frame))) => {
                return Seen::Close(frame.map(|f| u16::from(f.code)))
            }
            Some(Ok(Message::Pong(_))) => return Seen::Pong,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Seen::Close(None),
        }
    }
}

pub fn data(event: &Value) -> Value {
    serde_json::from_str(event["data"].as_str().expect("data is a string")).expect("data is JSON")
}
