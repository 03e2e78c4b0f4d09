//! The system view's stream: Server-Sent Events from the in-process sampler — the history
//! first, then one sample a second with what happened in it (connections per app with their
//! peak and quota, events in by source, deliveries); it ends when the server shuts down.

use std::time::Duration;

use serde_json::Value;

use crate::common::{TestServer, APP_ID};

const PASSWORD: &str = "system-secret";

/// Reads `event:`/`data:` pairs off a Server-Sent Events response.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(server: &TestServer) -> Events {
        let response = reqwest::Client::new()
            .get(format!(
                "http://{}/api/system/stream?app_id={APP_ID}",
                server.admin
            ))
            .basic_auth("admin", Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The next event's name and JSON data (keep-alive comments skipped); `None` at the end.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|line| line.strip_prefix(name))
                        .map(str::to_owned)
                };
                if let (Some(event), Some(data)) = (field("event:"), field("data:")) {
                    return Some((event, serde_json::from_str(&data).unwrap()));
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.response.chunk())
                .await
                .expect("a sample within 5 s");
            let Ok(Some(chunk)) = chunk else {
                return None;
            };
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The samples up to the first that satisfies `check`, within `seconds` samples.
    async fn samples_until(
        &mut self,
        seconds: usize,
        check: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let mut seen = Vec::new();
        for _ in 0..seconds {
            let (event, sample) = self.next().await.expect("the stream goes on");
            assert_eq!(event, "sample");
            let done = check(&sample);
            seen.push(sample);
            if done {
                return seen;
            }
        }
        panic!("no such sample within {seconds} s: {seen:?}");
    }
}

#[tokio::test]
async fn samples_stream_live_with_connection_peaks_and_quotas() {
    let server = TestServer::start_with(|c| {
        c.admin.password = Some(PASSWORD.into());
        c.apps[0].max_connections = Some(40);
    })
    .await;
    let anonymous = reqwest::get(format!("http://{}/api/system/stream", server.admin))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    let unknown = reqwest::Client::new()
        .get(format!(
            "http://{}/api/system/stream?app_id=nope",
            server.admin
        ))
        .basic_auth("admin", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);

    let mut events = Events::open(&server).await;
    let (first, history) = events.next().await.unwrap();
    assert_eq!(first, "history");
    assert!(history.as_array().unwrap().len() <= dashboards::system::HISTORY);

    let app = |sample: &Value| {
        sample["connections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["app_id"] == APP_ID)
            .cloned()
            .unwrap()
    };
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(server.connect().await);
    }
    let seen = events.samples_until(10, |s| app(s)["now"] == 3).await;
    let sample = seen.last().unwrap();
    assert_eq!(app(sample)["quota"], 40);
    assert_eq!(app(sample)["peak"], 3);
    clients[0].subscribe("one").await;
    clients[0].subscribe("two").await;
    let seen = events
        .samples_until(10, |s| app(s)["subscriptions_now"] == 2)
        .await;
    assert_eq!(app(seen.last().unwrap())["subscriptions_peak"], 2);

    // A fourth comes and two leave at once: the samples show the peak of 4.
    clients.push(server.connect().await);
    clients.truncate(2);
    let seen = events.samples_until(10, |s| app(s)["now"] == 2).await;
    let peak = seen.iter().map(|s| app(s)["peak"].as_u64().unwrap()).max();
    assert_eq!(peak, Some(4), "{seen:?}");

    // The counters and timings are the process's: other tests' servers in this process read
    // (and take) the same ones, so trigger until one of this stream's samples shows both.
    let mut shown = false;
    for _ in 0..20 {
        let status = server.trigger("system-view", "ev", "{}").await.status();
        assert_eq!(status, 200);
        let (_, sample) = events.next().await.expect("the stream goes on");
        if sample["events_in"]["api"].as_u64() > Some(0)
            && sample["confirm"]["max_ms"].as_f64() > Some(0.0)
        {
            shown = true;
            break;
        }
    }
    assert!(
        shown,
        "no sample showed the events in and their confirm latency"
    );

    let mut server = server;
    assert!(
        server.stop().await,
        "an open stream does not hold the shutdown"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(5), async {
            while events.next().await.is_some() {}
        })
        .await
        .is_ok(),
        "the stream ends with the server"
    );
    server.cleanup().await;
}
