//! The Segment Tracking API (`POST /v1/{track,identify,page,screen,group,alias,batch}`,
//! PROTOCOL.md §5): write key, CORS, gzip, the client's address, then `protocol::segment` for
//! validation and enrichment, publish, and `200 {"success":true}` after the broker confirm.

use std::borrow::Cow;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use flate2::read::MultiGzDecoder;
use protocol::segment::{Edge, Endpoint, Request, MAX_REQUEST_BYTES};
use protocol::{Envelope, Source};
use warp::http::HeaderMap;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::error::{self, ApiError};
use crate::forwarded::{client_ip, PeerAddr, TrustedProxy};
use crate::offload::SEGMENT_INLINE_MAX_BYTES;
use crate::{App, Apps, Gateway};

/// How long browsers may cache a CORS preflight answer.
const CORS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The `/v1/*` routes, with CORS (preflights answered, headers on every answer, errors
/// included) and their errors rendered here so that browsers can read them.
pub fn routes(
    gateway: Arc<Gateway>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let cors = warp::cors()
        .allow_any_origin()
        .allow_methods(["POST"])
        .allow_headers(["content-type", "authorization", "content-encoding"])
        .max_age(CORS_MAX_AGE);
    let endpoint = warp::path::param::<String>().and_then(|call: String| async move {
        Endpoint::parse(&call).ok_or_else(warp::reject::not_found)
    });
    let calls = warp::post()
        .and(endpoint)
        .and(warp::path::end())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<PeerAddr>())
        .and(crate::body::limited(MAX_REQUEST_BYTES as u64))
        .and(warp::any().map(move || gateway.clone()))
        .then(
            |endpoint, headers, peer, body, gateway: Arc<Gateway>| async move {
                let request = SegmentRequest {
                    endpoint,
                    headers,
                    peer,
                    body,
                };
                handle(&gateway, request).await
            },
        )
        .recover(error::recover)
        .unify()
        .with(cors)
        .map(Reply::into_response);
    warp::path("v1").and(calls)
}

/// One Tracking API request as it arrived.
struct SegmentRequest {
    endpoint: Endpoint,
    headers: HeaderMap,
    peer: Option<PeerAddr>,
    body: Bytes,
}

impl SegmentRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

async fn handle(gateway: &Arc<Gateway>, request: SegmentRequest) -> Response {
    match handle_inner(gateway, request).await {
        Ok(()) => warp::reply::json(&serde_json::json!({ "success": true })).into_response(),
        Err(error) => {
            tracing::debug!(%error, status = error.status().as_u16(), "Segment request rejected");
            error.into_response()
        }
    }
}

async fn handle_inner(gateway: &Arc<Gateway>, request: SegmentRequest) -> Result<(), ApiError> {
    let received_at = Utc::now();
    let header_key = request
        .header("authorization")
        .map(basic_username)
        .transpose()?;
    if let Some(key) = &header_key {
        app_of(&gateway.apps, key)?;
    }
    let size = work_size(&request);
    let job = {
        let gateway = gateway.clone();
        move || {
            let trusted_proxies = &gateway.config.trusted_proxies;
            envelopes(
                &gateway.apps,
                trusted_proxies,
                received_at,
                header_key,
                &request,
            )
        }
    };
    let envelopes = gateway
        .offload
        .run(size, SEGMENT_INLINE_MAX_BYTES, job)
        .await?;
    crate::http_api::publish(gateway, Source::Track, envelopes).await
}

/// What the request's work is sized by: its body, or the most a gzip body may inflate to
/// (its inflated size is known only once inflated).
fn work_size(request: &SegmentRequest) -> usize {
    match request.header("content-encoding") {
        Some(encoding) if is_gzip(encoding) => MAX_REQUEST_BYTES,
        _ => request.body.len(),
    }
}

/// The request's envelopes: the body inflated, parsed, its write key resolved, every event
/// validated and enriched. The CPU-heavy part of a request, run through [`crate::offload`].
fn envelopes(
    apps: &Apps,
    trusted_proxies: &[TrustedProxy],
    received_at: DateTime<Utc>,
    header_key: Option<String>,
    request: &SegmentRequest,
) -> Result<Vec<Envelope>, ApiError> {
    let body = decoded(request.header("content-encoding"), &request.body)?;
    let parsed = Request::parse(request.endpoint, &body)?;
    let key = header_key
        .or_else(|| parsed.write_key.clone())
        .ok_or(ApiError::MissingWriteKey)?;
    let app = app_of(apps, &key)?;
    let edge = Edge {
        received_at,
        ip: request.peer.map(|PeerAddr(peer)| {
            client_ip(
                peer.ip(),
                request.header("x-forwarded-for"),
                trusted_proxies,
            )
        }),
        user_agent: request.header("user-agent"),
        live_channel: app.analytics_channel.name(),
    };
    Ok(parsed.into_envelopes(&app.id, &edge)?)
}

fn app_of<'a>(apps: &'a Apps, key: &str) -> Result<&'a Arc<App>, ApiError> {
    let app = apps.by_key(key).ok_or(ApiError::UnknownWriteKey)?;
    if !app.enabled {
        return Err(ApiError::AppDisabled);
    }
    Ok(app)
}

/// The username of `Authorization: Basic base64(username:password)`: Segment's write key.
fn basic_username(authorization: &str) -> Result<String, ApiError> {
    let encoded = authorization
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, credentials)| credentials.trim())
        .ok_or(ApiError::BadAuthorization)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| ApiError::BadAuthorization)?;
    let text = String::from_utf8(decoded).map_err(|_| ApiError::BadAuthorization)?;
    let username = text.split_once(':').map_or(text.as_str(), |(user, _)| user);
    if username.is_empty() {
        return Err(ApiError::MissingWriteKey);
    }
    Ok(username.to_owned())
}

/// The body after `Content-Encoding`: identity or gzip. A gzip body is inflated into at most
/// [`MAX_REQUEST_BYTES`] (+1 to notice the excess): a bomb costs that much and no more.
pub fn decoded<'b>(encoding: Option<&str>, body: &'b [u8]) -> Result<Cow<'b, [u8]>, ApiError> {
    match encoding {
        None => Ok(Cow::Borrowed(body)),
        Some(identity) if is_identity(identity) => Ok(Cow::Borrowed(body)),
        Some(gzip) if is_gzip(gzip) => {
            let mut inflated = Vec::new();
            MultiGzDecoder::new(body)
                .take(MAX_REQUEST_BYTES as u64 + 1)
                .read_to_end(&mut inflated)
                .map_err(ApiError::BadGzip)?;
            if inflated.len() > MAX_REQUEST_BYTES {
                return Err(ApiError::DecompressedTooLarge {
                    max: MAX_REQUEST_BYTES,
                });
            }
            Ok(Cow::Owned(inflated))
        }
        Some(_) => Err(ApiError::UnsupportedEncoding),
    }
}

fn is_identity(encoding: &str) -> bool {
    let encoding = encoding.trim();
    encoding.is_empty() || encoding.eq_ignore_ascii_case("identity")
}

fn is_gzip(encoding: &str) -> bool {
    let encoding = encoding.trim();
    encoding.eq_ignore_ascii_case("gzip") || encoding.eq_ignore_ascii_case("x-gzip")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::tests::ticks_during;
    use crate::offload::Offload;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn basic_auth_username_is_the_write_key() {
        let basic = |text: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(text)
            )
        };
        assert_eq!(basic_username(&basic("app-key:")).unwrap(), "app-key");
        assert_eq!(basic_username(&basic("app-key")).unwrap(), "app-key");
        assert_eq!(basic_username(&basic("k:ignored")).unwrap(), "k");
        assert!(matches!(
            basic_username(&basic(":")),
            Err(ApiError::MissingWriteKey)
        ));
        for bad in ["Bearer abc", "Basic", "Basic !!!", "app-key"] {
            assert!(
                matches!(basic_username(bad), Err(ApiError::BadAuthorization)),
                "{bad}"
            );
        }
    }

    /// A gzip `/v1/batch` of 1,000 track calls (about 150 KB inflated), as it arrives.
    fn big_gzip_batch() -> SegmentRequest {
        let events: Vec<String> = (0..1000)
            .map(|i| {
                format!(
                    r#"{{"type":"track","event":"e{i}","userId":"u{i}","properties":{{"n":{i},"pad":"{}"}}}}"#,
                    "p".repeat(80)
                )
            })
            .collect();
        let body = format!(r#"{{"writeKey":"k","batch":[{}]}}"#, events.join(","));
        let mut headers = HeaderMap::new();
        headers.insert("content-encoding", "gzip".parse().unwrap());
        headers.insert("user-agent", "curl/8.0".parse().unwrap());
        SegmentRequest {
            endpoint: Endpoint::Batch,
            headers,
            peer: None,
            body: gzip(body.as_bytes()).into(),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_big_request_is_prepared_on_the_blocking_pool() {
        let apps = Arc::new(Apps::new(vec![App::new("1", "k", "s")]).unwrap());
        let offload = Offload::new(1);
        let prepare = |request: SegmentRequest, size: usize| {
            let apps = apps.clone();
            offload.run(size, SEGMENT_INLINE_MAX_BYTES, move || {
                envelopes(&apps, &[], Utc::now(), None, &request)
            })
        };
        let request = big_gzip_batch();
        let size = work_size(&request);
        assert_eq!(
            size, MAX_REQUEST_BYTES,
            "a gzip body goes to the pool, however small"
        );
        let (prepared, ticks) = ticks_during(prepare(request, size)).await;
        let prepared = prepared.unwrap();
        assert!(
            ticks >= 1,
            "the runtime kept running while the batch was prepared"
        );
        assert_eq!(prepared.len(), 1000);
        assert_eq!(prepared[999].name, "e999");
        assert_eq!(prepared[999].app_id, "1");
        assert_eq!(prepared[999].channel, "private-analytics");
        let fields = prepared[999].segment.as_deref().unwrap();
        assert_eq!(fields.client.agent.browser.as_deref(), Some("HTTP Library"));
        assert_eq!(fields.client.user_agent.as_deref(), Some("curl/8.0"));
        // The control: the same work inline blocks this single-threaded runtime.
        let (inline, ticks) = ticks_during(prepare(big_gzip_batch(), 0)).await;
        assert_eq!(inline.unwrap().len(), 1000);
        assert_eq!(ticks, 0);
    }

    #[test]
    fn bodies_are_inflated_within_the_cap() {
        let json = br#"{"batch":[]}"#;
        assert_eq!(&*decoded(None, json).unwrap(), json);
        assert_eq!(&*decoded(Some("identity"), json).unwrap(), json);
        assert_eq!(&*decoded(Some("GZIP"), &gzip(json)).unwrap(), json);
        let exactly = vec![b' '; MAX_REQUEST_BYTES];
        assert_eq!(
            decoded(Some("gzip"), &gzip(&exactly)).unwrap().len(),
            MAX_REQUEST_BYTES
        );
        let bomb = gzip(&vec![0u8; 50 * MAX_REQUEST_BYTES]);
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        assert!(matches!(
            decoded(Some("gzip"), &bomb),
            Err(ApiError::DecompressedTooLarge { .. })
        ));
        assert!(matches!(
            decoded(Some("gzip"), b"not gzip"),
            Err(ApiError::BadGzip(_))
        ));
        assert!(matches!(
            decoded(Some("br"), json),
            Err(ApiError::UnsupportedEncoding)
        ));
    }
}
