//! The signed Pusher HTTP API, as the server SDKs call it: one pooled keep-alive client,
//! `POST /apps/{id}/events` and `/batch_events` with `auth_*` query parameters and `body_md5`.

use std::time::Duration;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use protocol::signature::{body_md5, http_string_to_sign, sign};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Target;

/// The signed query string of a request (PROTOCOL.md §2), `auth_signature` last.
pub fn signed_query(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    body: &[u8],
    timestamp: i64,
) -> String {
    let mut params = vec![
        ("auth_key".to_owned(), key.to_owned()),
        ("auth_timestamp".to_owned(), timestamp.to_string()),
        ("auth_version".to_owned(), "1.0".to_owned()),
    ];
    if !body.is_empty() {
        params.push(("body_md5".to_owned(), body_md5(body)));
    }
    let signature = sign(
        secret,
        http_string_to_sign(method, path, &params).as_bytes(),
    );
    let mut query: Vec<String> = params
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    query.push(format!("auth_signature={signature}"));
    query.join("&")
}

/// One event of a trigger or batch body.
pub struct Event<'a> {
    pub channel: &'a str,
    pub name: &'a str,
    pub data: String,
}

pub fn trigger_body(event: Event<'_>) -> Vec<u8> {
    json!({ "name": event.name, "channel": event.channel, "data": event.data })
        .to_string()
        .into()
}

/// A Segment `/v1/batch` body of `track` calls: `event` is the name, the data the
/// `properties`, each with its own `messageId`.
pub fn segment_batch_body(events: Vec<(u64, Event<'_>)>) -> Vec<u8> {
    let batch: Vec<String> = events
        .into_iter()
        .map(|(seq, e)| {
            let name = Value::from(e.name);
            format!(
                r#"{{"type":"track","event":{name},"userId":"bench-{}","messageId":"{}-{seq}","properties":{}}}"#,
                seq % 1000,
                e.name,
                e.data
            )
        })
        .collect();
    format!(r#"{{"batch":[{}]}}"#, batch.join(",")).into()
}

pub fn batch_body(events: Vec<Event<'_>>) -> Vec<u8> {
    let batch: Vec<Value> = events
        .into_iter()
        .map(|e| json!({ "name": e.name, "channel": e.channel, "data": e.data }))
        .collect();
    json!({ "batch": batch }).to_string().into()
}

/// Why a request was not accepted: an HTTP status other than 200, the transport, or (over the
/// WebSocket) a nack.
#[derive(Debug)]
pub enum Refused {
    Status(u16),
    Transport(String),
    /// A `switchboard:nack`, with its reason.
    Nack(String),
}

impl Refused {
    pub fn kind(&self) -> String {
        match self {
            Refused::Status(status) => format!("HTTP {status}"),
            Refused::Transport(error) => format!("transport: {error}"),
            Refused::Nack(reason) => format!("nack: {reason}"),
        }
    }
}

pub struct Api {
    http: reqwest::Client,
    base: String,
    app_id: String,
    key: String,
    secret: String,
    /// `Basic base64(key:)`: the app key as Segment write key.
    write_key_auth: String,
}

impl Api {
    /// A client keeping up to `connections` idle keep-alive connections.
    pub fn new(target: &Target, connections: usize) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Api {
            http,
            base: target.http.trim_end_matches('/').to_owned(),
            app_id: target.app_id.clone(),
            key: target.key.clone(),
            secret: target.secret.clone(),
            write_key_auth: format!("Basic {}", BASE64.encode(format!("{}:", target.key))),
        })
    }

    fn path(&self, endpoint: &str) -> String {
        format!("/apps/{}/{endpoint}", self.app_id)
    }

    /// `path?signed query` for a POST of `body` to `endpoint` (`events`, `batch_events`).
    pub fn signed_target(&self, endpoint: &str, body: &[u8]) -> String {
        let path = self.path(endpoint);
        let now = chrono::Utc::now().timestamp();
        let query = signed_query(&self.key, &self.secret, "POST", &path, body, now);
        format!("{path}?{query}")
    }

    /// POSTs a signed `body`; Ok only for `200`.
    pub async fn post(&self, endpoint: &str, body: Vec<u8>) -> Result<(), Refused> {
        let url = format!("{}{}", self.base, self.signed_target(endpoint, &body));
        self.send(self.http.post(url), body).await
    }

    /// POSTs `body` to the Segment `/v1/batch` with the app key as write key; Ok only for `200`.
    pub async fn post_segment_batch(&self, body: Vec<u8>) -> Result<(), Refused> {
        self.send(self.segment_batch(), body).await
    }

    /// The same with a gzip-compressed `body`.
    pub async fn post_segment_batch_gzip(&self, body: Vec<u8>) -> Result<(), Refused> {
        let request = self.segment_batch().header("content-encoding", "gzip");
        self.send(request, body).await
    }

    fn segment_batch(&self) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/v1/batch", self.base))
            .header("authorization", &self.write_key_auth)
    }

    async fn send(&self, request: reqwest::RequestBuilder, body: Vec<u8>) -> Result<(), Refused> {
        let response = request
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| Refused::Transport(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        // Read the body so that the connection goes back to the pool.
        let _ = response.bytes().await;
        if status == 200 {
            Ok(())
        } else {
            Err(Refused::Status(status))
        }
    }
}

/// Status, `Content-Length` and whether the server announced `Connection: close`, from a
/// complete HTTP/1.1 response head.
pub fn parse_response_head(head: &str) -> Option<(u16, usize, bool)> {
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let mut length = 0;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().ok()?;
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    Some((status, length, close))
}

/// Sends signed triggers one after the other on a single TCP connection; returns how many were
/// answered 200 on it before the server closed it (or `count` when it never did).
pub async fn requests_on_one_connection(
    api: &Api,
    addr: &str,
    channel: &str,
    count: usize,
) -> anyhow::Result<usize> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    for answered in 0..count {
        let body = trigger_body(Event {
            channel,
            name: "keep-alive-check",
            data: crate::payload::encode(answered as u64, crate::payload::now_us(), 40),
        });
        let request = format!(
            "POST {} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            api.signed_target("events", &body),
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        stream.write_all(&body).await?;
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        let (status, close) = loop {
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                return Ok(answered);
            }
            buffer.extend_from_slice(&chunk[..read]);
            let text = String::from_utf8_lossy(&buffer);
            if let Some(end) = text.find("\r\n\r\n") {
                let Some((status, length, close)) = parse_response_head(&text[..end]) else {
                    bail!("unreadable HTTP response head: {:?}", &text[..end]);
                };
                if buffer.len() >= end + 4 + length {
                    break (status, close);
                }
            }
        };
        if status != 200 {
            bail!("trigger answered HTTP {status}");
        }
        if close {
            return Ok(answered + 1);
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_the_protocol_vector() {
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let query = signed_query(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            "POST",
            "/apps/3/events",
            body.as_bytes(),
            1353088179,
        );
        assert_eq!(
            query,
            "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
             &body_md5=ec365a775a4cd0599faeb73354201b6f\
             &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }

    #[test]
    fn bodies_carry_data_as_a_string() {
        let body = trigger_body(Event {
            channel: "c",
            name: "n",
            data: r#"{"sb":[1,2]}"#.into(),
        });
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["data"], r#"{"sb":[1,2]}"#);
        let batch = batch_body(vec![
            Event {
                channel: "a",
                name: "n",
                data: "1".into(),
            },
            Event {
                channel: "b",
                name: "n",
                data: "2".into(),
            },
        ]);
        let value: Value = serde_json::from_slice(&batch).unwrap();
        assert_eq!(value["batch"][1]["channel"], "b");
        assert_eq!(value["batch"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn segment_batches_are_track_calls_with_message_ids() {
        let body = segment_batch_body(vec![(
            1234,
            Event {
                channel: "unused",
                name: "ingest-x",
                data: crate::payload::encode(1234, 5, 40),
            },
        )]);
        let value: Value = serde_json::from_slice(&body).unwrap();
        let call = &value["batch"][0];
        assert_eq!(call["type"], "track");
        assert_eq!(call["event"], "ingest-x");
        assert_eq!(call["userId"], "bench-234");
        assert_eq!(call["messageId"], "ingest-x-1234");
        assert_eq!(call["properties"]["sb"], json!([1234, 5]));
    }

    #[test]
    fn response_heads() {
        let check = |head: &str, expected| assert_eq!(parse_response_head(head), expected);
        check(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2",
            Some((200, 2, false)),
        );
        check(
            "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 30",
            Some((503, 30, true)),
        );
        check("HTTP/1.1 200 OK", Some((200, 0, false)));
        check("garbage", None);
    }
}
