//! The registry's tests; helpers here, cases by area below.

mod cache;
mod cluster;
mod local;

use protocol::{Envelope, Source};
use serde_json::Value;
use tokio::sync::mpsc;

use super::*;
use crate::Outbound;

const APP: &str = "app";

fn config() -> RegistryConfig {
    RegistryConfig {
        cache_ttl: Duration::from_secs(60),
        max_channels_per_connection: 100,
    }
}

fn registry() -> Registry {
    Registry::new(1, config()).0
}

fn options() -> AppOptions {
    AppOptions {
        subscription_count: false,
        max_presence_members: 100,
        max_connections: None,
    }
}

fn socket(registry: &Registry, id: &str) -> (SocketHandle, Outbound) {
    let (handle, rx) = SocketHandle::new(id, 64);
    registry.connect(APP, options(), &handle).unwrap();
    (handle, rx)
}

fn drain(rx: &mut Outbound) -> Vec<Value> {
    let mut frames = Vec::new();
    while let Some(queued) = rx.try_recv() {
        frames.push(serde_json::from_str(&queued.frame).unwrap());
    }
    frames
}

fn events(rx: &mut Outbound) -> Vec<String> {
    drain(rx)
        .iter()
        .map(|f| f["event"].as_str().unwrap().to_owned())
        .collect()
}

fn envelope(channel: &str, data: &str) -> Envelope {
    Envelope::new(APP, Source::Api, channel, "ev", data.to_owned())
}

fn member(id: &str) -> Option<Member> {
    Some(Member {
        user_id: id.into(),
        user_info: Some(format!(r#"{{"name":"{id}"}}"#)),
    })
}

fn data(frame: &Value) -> Value {
    serde_json::from_str(frame["data"].as_str().unwrap()).unwrap()
}

/// Hands `from`'s due control messages (a snapshot too on a `heartbeat`) to `to`; returns them.
fn tell(from: &Registry, to: &Registry, heartbeat: bool) -> Vec<Control> {
    let messages = from.outgoing(heartbeat);
    for message in &messages {
        to.receive(message.clone());
    }
    messages
}
