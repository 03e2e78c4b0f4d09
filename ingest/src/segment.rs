//! The Segment Tracking API (`POST /v1/{track,identify,page,screen,group,alias,batch}`,
//! PROTOCOL.md §5): write key, CORS, gzip, the client's address, then `protocol::segment` for
//! validation and enrichment, publish, and `200 {"success":true}` after the broker confirm.

use std::borrow::Cow;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use flate2::read::MultiGzDecoder;
use protocol::segment::{Edge, Endpoint, Request, MAX_REQUEST_BYTES};
use protocol::Source;
use warp::http::HeaderMap;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::error::{self, ApiError};
use crate::forwarded::{client_ip, PeerAddr};
use crate::Gateway;

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

async fn handle(gateway: &Gateway, request: SegmentRequest) -> Response {
    match handle_inner(gateway, request).await {
        Ok(()) => warp::reply::json(&serde_json::json!({ "success": true })).into_response(),
        Err(error) => {
            tracing::debug!(%error, status = error.status().as_u16(), "Segment request rejected");
            error.into_response()
        }
    }
}

async fn handle_inner(gateway: &Gateway, request: SegmentRequest) -> Result<(), ApiError> {
    let received_at = chrono::Utc::now();
    let header = |name: &str| {
        request
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
    };
    let header_key = header("authorization").map(basic_username).transpose()?;
    if let Some(key) = &header_key {
        app_of(gateway, key)?;
    }
    let body = decoded(header("content-encoding"), &request.body)?;
    let parsed = Request::parse(request.endpoint, &body)?;
    let key = header_key
        .or_else(|| parsed.write_key.clone())
        .ok_or(ApiError::MissingWriteKey)?;
    let app = app_of(gateway, &key)?;
    let edge = Edge {
        received_at,
        ip: request.peer.map(|PeerAddr(peer)| {
            client_ip(
                peer.ip(),
                header("x-forwarded-for"),
                &gateway.config.trusted_proxies,
            )
        }),
        user_agent: header("user-agent"),
    };
    let envelopes = parsed.into_envelopes(&app.id, &edge)?;
    crate::http_api::publish(gateway, Source::Track, envelopes).await
}

fn app_of<'g>(gateway: &'g Gateway, key: &str) -> Result<&'g Arc<crate::App>, ApiError> {
    let app = gateway.apps.by_key(key).ok_or(ApiError::UnknownWriteKey)?;
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
fn decoded<'b>(encoding: Option<&str>, body: &'b [u8]) -> Result<Cow<'b, [u8]>, ApiError> {
    let encoding = encoding.map(|e| e.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("" | "identity") => Ok(Cow::Borrowed(body)),
        Some("gzip" | "x-gzip") => {
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

#[cfg(test)]
mod tests {
    use super::*;
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
