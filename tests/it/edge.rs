//! The HTTP edge: slow and idle clients, the connection limit and its refusal, chunked bodies,
//! unknown paths and the `GET /` page.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{self, TestServer, APP_ID};

const ROWS_SQL: &str = "SELECT count(*) FROM events";

async fn open(server: &TestServer) -> TcpStream {
    TcpStream::connect(server.http).await.unwrap()
}

/// Waits until the server closes `stream` (EOF or reset); returns how long that took, or
/// `None` if it was still open after `limit`. Whatever arrives meanwhile is discarded.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// Reads one HTTP/1.1 response with a `content-length`; returns (status, head, body).
async fn read_response(stream: &mut TcpStream) -> (u16, String, String) {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    let read = async {
        loop {
            if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(bytes[..end].to_vec()).unwrap();
                let length: usize = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().unwrap())
                    })
                    .expect("the response has a content-length");
                if bytes.len() >= end + 4 + length {
                    let body =
                        String::from_utf8(bytes[end + 4..end + 4 + length].to_vec()).unwrap();
                    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                    return (status, head, body);
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed mid-response: {bytes:?}");
            bytes.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a response within 10 s")
}

async fn request(stream: &mut TcpStream, head: &str) -> (u16, String, String) {
    stream.write_all(head.as_bytes()).await.unwrap();
    read_response(stream).await
}

#[tokio::test]
async fn stalled_request_heads_are_closed_within_the_header_timeout() {
    let server = TestServer::start_with(|c| {
        c.gateway.header_read_timeout_secs = 1;
        c.gateway.idle_timeout_secs = 60;
    })
    .await;
    let mut stalled = Vec::new();
    for _ in 0..300 {
        let mut stream = open(&server).await;
        stream
            .write_all(b"GET /apps/app-id/channels HTTP/1.1\r\nHost: x\r\nUser-")
            .await
            .unwrap();
        stalled.push(stream);
    }
    // One more that never sends a byte.
    stalled.push(open(&server).await);
    let closes = futures_util::future::join_all(
        stalled
            .iter_mut()
            .map(|stream| closed_within(stream, Duration::from_secs(15))),
    )
    .await;
    let open_after = closes.iter().filter(|closed| closed.is_none()).count();
    assert_eq!(open_after, 0, "connections still open after 15 s");
    let earliest = closes.iter().flatten().min().unwrap();
    assert!(
        *earliest >= Duration::from_millis(800),
        "closed before the timeout: {earliest:?}"
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"switchboard_http_timeouts_total{listener="gateway",phase="header"}"#),
        "{metrics}"
    );
    // The listener still serves.
    let mut fresh = open(&server).await;
    let (status, _, _) = request(&mut fresh, "GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 404);
    server.cleanup().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_but_an_open_websocket_is_not() {
    let server = TestServer::start_with(|c| {
        c.gateway.header_read_timeout_secs = 1;
        c.gateway.idle_timeout_secs = 2;
    })
    .await;
    let mut websocket = server.connect().await;
    websocket.subscribe("kept-open").await;

    let mut keep_alive = open(&server).await;
    let (status, _, _) = request(
        &mut keep_alive,
        "GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404);
    // Within the idle timeout the connection is reused.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, _, _) = request(&mut keep_alive, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 200);
    let idle = closed_within(&mut keep_alive, Duration::from_secs(15))
        .await
        .expect("the idle connection is closed");
    assert!(idle >= Duration::from_millis(1800), "closed after {idle:?}");

    // The WebSocket has been silent for longer than both timeouts, and still works.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        server
            .trigger("kept-open", "ev", "still here")
            .await
            .status(),
        200
    );
    assert_eq!(websocket.next_app_event().await["data"], "still here");
    server.cleanup().await;
}

#[tokio::test]
async fn over_the_connection_limit_new_connections_get_503_and_open_ones_keep_working() {
    let server = TestServer::start_with(|c| c.gateway.max_connections = 3).await;
    let mut websocket = server.connect().await;
    websocket.subscribe("limited").await;
    let mut keep_alive = open(&server).await;
    let (status, _, _) = request(&mut keep_alive, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 200);
    let third = open(&server).await;

    // The fourth: a complete 503 with Retry-After, then the server closes.
    let mut refused = open(&server).await;
    let (status, head, body) = read_response(&mut refused).await;
    assert_eq!(status, 503, "{head}");
    assert!(head.to_lowercase().contains("retry-after: 1"), "{head}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "too many connections; retry later"
    );
    assert!(closed_within(&mut refused, Duration::from_secs(5))
        .await
        .is_some());
    // A client that sends its request first gets the same answer.
    let mut eager = open(&server).await;
    let (status, _, _) = request(&mut eager, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 503);

    // The open ones keep working; a trigger goes through the keep-alive connection.
    let body = json!({"name":"ev","channel":"limited","data":"through"}).to_string();
    let path = format!("/apps/{APP_ID}/events");
    let query = common::signed_query("POST", &path, &body, common::SECRET, common::now());
    let (status, _, answer) = request(
        &mut keep_alive,
        &format!(
            "POST {path}?{query} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(websocket.next_app_event().await["data"], "through");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"switchboard_connections_refused_total{listener="gateway"} 2"#),
        "{metrics}"
    );

    // A closed connection frees its place.
    drop(third);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut next = open(&server).await;
        let (status, _, _) = request(&mut next, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the freed place was not reused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.wait_count(ROWS_SQL, 1).await, 1);
    server.cleanup().await;
}

/// A request with a chunked body (`chunks` of `chunk` bytes each); returns the status.
async fn post_chunked(server: &TestServer, target: &str, chunks: &[String]) -> (u16, String) {
    let mut stream = open(server).await;
    let mut message = format!(
        "POST {target} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\n\r\n"
    );
    for chunk in chunks {
        message.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    message.push_str("0\r\n\r\n");
    // The server may answer 413 and close before it read everything: write, then read.
    let _ = stream.write_all(message.as_bytes()).await;
    let (status, _, body) = read_response(&mut stream).await;
    (status, body)
}

/// Splits `text` into chunks of at most `size` bytes.
fn chunked(text: &str, size: usize) -> Vec<String> {
    text.as_bytes()
        .chunks(size)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect()
}

#[tokio::test]
async fn chunked_bodies_are_accepted_under_the_same_limits() {
    let server = TestServer::start().await;
    let path = format!("/apps/{APP_ID}/events");
    let signed = |body: &str| {
        let query = common::signed_query("POST", &path, body, common::SECRET, common::now());
        format!("{path}?{query}")
    };

    let trigger = json!({"name":"ev","channel":"chunks","data":"x".repeat(5000)}).to_string();
    let (status, body) = post_chunked(&server, &signed(&trigger), &chunked(&trigger, 1000)).await;
    assert_eq!((status, body.as_str()), (200, "{}"));

    let batch = json!({"batch":[{"name":"a","channel":"chunks","data":"1"},{"name":"b","channel":"chunks","data":"2"}]}).to_string();
    let batch_path = format!("/apps/{APP_ID}/batch_events");
    let query = common::signed_query("POST", &batch_path, &batch, common::SECRET, common::now());
    let (status, body) = post_chunked(
        &server,
        &format!("{batch_path}?{query}"),
        &chunked(&batch, 7),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Over 256 KB in chunks: the same 413 as with a Content-Length.
    let huge = "y".repeat(300 * 1024);
    let (status, body) = post_chunked(&server, &signed(&huge), &chunked(&huge, 16 * 1024)).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "request body is too large"
    );
    // A Content-Length over the limit is refused before any of the body is sent.
    let mut stream = open(&server).await;
    let (status, _, _) = request(
        &mut stream,
        &format!(
            "POST {} HTTP/1.1\r\nHost: x\r\ncontent-length: {}\r\n\r\n",
            signed(&huge),
            huge.len()
        ),
    )
    .await;
    assert_eq!(status, 413);

    // Segment, chunked: accepted; over 500 KB: 413.
    let track = json!({"writeKey": common::KEY, "userId": "u1", "event": "Chunked"}).to_string();
    let (status, body) = post_chunked(&server, "/v1/track", &chunked(&track, 10)).await;
    assert_eq!((status, body.as_str()), (200, r#"{"success":true}"#));
    let big = format!(
        r#"{{"writeKey":"{}","batch":[],"pad":"{}"}}"#,
        common::KEY,
        "z".repeat(520 * 1024)
    );
    let (status, _) = post_chunked(&server, "/v1/batch", &chunked(&big, 64 * 1024)).await;
    assert_eq!(status, 413);

    // Exactly what was accepted is stored: 1 + 2 triggers, 1 track.
    assert_eq!(server.wait_count(ROWS_SQL, 4).await, 4);
    server.cleanup().await;
}

#[tokio::test]
async fn unknown_paths_are_404_wrong_methods_405_and_the_root_describes_the_server() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let status = |method: reqwest::Method, path: &str| {
        let request = http.request(method, server.url(path));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    use reqwest::Method;
    for (method, path, expected) in [
        (Method::GET, "/favicon.ico", 404),
        (Method::GET, "/apps/app-id/nothing", 404),
        (Method::POST, "/favicon.ico", 404),
        (Method::GET, "/apps/app-id/events", 405),
        (Method::GET, "/apps/app-id/batch_events", 405),
        (Method::POST, "/apps/app-id/channels", 405),
        (Method::GET, "/v1/track", 405),
        (Method::POST, "/", 405),
        (Method::GET, "/", 200),
    ] {
        assert_eq!(
            status(method.clone(), path).await,
            expected,
            "{method} {path}"
        );
    }
    let not_found = http.get(server.url("/favicon.ico")).send().await.unwrap();
    assert_eq!(
        not_found.json::<Value>().await.unwrap(),
        json!({"error": "not found"})
    );

    let page = http
        .get(server.url("/"))
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    for needle in [
        "Switchboard",
        env!("CARGO_PKG_VERSION"),
        "/app/{key}?protocol=7",
        "POST /apps/{app_id}/events",
        "POST /v1/batch",
        "/switchboard/app/{key}?protocol=7",
        "GET /app/{key}/channels/{channel}/events",
        &format!("http://{}/ready", server.admin),
    ] {
        assert!(html.contains(needle), "{needle:?} not in {html}");
    }

    let about: Value = http
        .get(server.url("/"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(about["name"], "Switchboard");
    assert_eq!(about["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(about["websocket"], "ws://<this host>/app/{key}?protocol=7");
    assert_eq!(about["tls"], false);
    assert_eq!(about["admin"]["url"], format!("http://{}", server.admin));
    assert_eq!(about["segment_api"].as_array().unwrap().len(), 7);
    assert_eq!(about["web_client"].as_array().unwrap().len(), 2);
    server.cleanup().await;
}
