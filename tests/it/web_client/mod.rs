//! Issue 11, the server side of the web client: event ids on the opt-in path
//! (`/switchboard/app/{key}`), analytics over the WebSocket (`switchboard:track`), history from
//! Postgres behind the storage fence, and recovery after a cut.

mod opt_in;

use crate::common::ws::Client;
use crate::common::{self, TestServer, KEY};

/// The opt-in path's URL, with the query string pusher-js sends.
pub fn opt_in_url(server: &TestServer) -> String {
    format!(
        "ws://{}/switchboard/app/{KEY}?protocol=7&client=js&version=8.4.0&flash=false",
        server.http
    )
}

/// A connection on the opt-in path.
pub async fn connect_opted_in(server: &TestServer) -> Client {
    Client::connect(&opt_in_url(server)).await
}

pub fn channel_name(prefix: &str) -> String {
    format!("{prefix}-{}", common::random_suffix())
}
