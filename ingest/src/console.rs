//! The dashboard's event creator enters here: its event becomes a Pusher HTTP API trigger,
//! signed with the app's secret as a backend would sign it, and answered by the same code
//! (`http_api::handle`: validation, limits, publish, confirm) — only without the network.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use protocol::signature::{body_md5, http_string_to_sign, sign};
use warp::http::{header, HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;

use crate::error::error_response;
use crate::http_api::{self, ApiRequest, Endpoint};
use crate::Gateway;

/// `POST /apps/{app_id}/events` with `body` (the trigger's JSON), signed now.
pub async fn trigger(gateway: Arc<Gateway>, app_id: &str, body: Bytes) -> Response {
    let Some(app) = gateway.apps.by_id(app_id).cloned() else {
        return error_response(StatusCode::NOT_FOUND, "Unknown app");
    };
    let path = format!("/apps/{app_id}/events");
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let mut params = vec![
        ("auth_key".to_owned(), app.key.clone()),
        ("auth_timestamp".to_owned(), timestamp.to_string()),
        ("auth_version".to_owned(), "1.0".to_owned()),
        ("body_md5".to_owned(), body_md5(&body)),
    ];
    let signature = sign(
        &app.secret,
        http_string_to_sign("POST", &path, &params).as_bytes(),
    );
    params.push(("auth_signature".to_owned(), signature));
    let query = serde_urlencoded::to_string(&params).expect("strings encode");
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let request = ApiRequest {
        app_id: Some(app_id.to_owned()),
        method: "POST",
        path,
        query,
        headers,
        body,
    };
    http_api::handle(gateway, Endpoint::Trigger, request).await
}
