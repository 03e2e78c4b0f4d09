//! HTTP Basic auth for the dashboard: user [`ADMIN_USER`], the configured password, compared in
//! constant time.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;
use subtle::ConstantTimeEq;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::{Rejection, Reply};

pub const ADMIN_USER: &str = "admin";

#[derive(Debug)]
pub struct Unauthorized;

impl warp::reject::Reject for Unauthorized {}

/// Whether `authorization` (the header's value) carries `admin` and `password`; anything goes
/// when no password is configured.
pub fn allows(password: Option<&str>, authorization: Option<&str>) -> bool {
    let Some(password) = password else {
        return true;
    };
    let Some(encoded) = authorization.and_then(|h| h.strip_prefix("Basic ")) else {
        return false;
    };
    let Ok(decoded) = STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let expected = format!("{ADMIN_USER}:{password}");
    bool::from(decoded.ct_eq(expected.as_bytes()))
}

/// Renders [`Unauthorized`] as 401 with a Basic challenge; passes every other rejection on.
pub async fn recover(rejection: Rejection) -> Result<Response, Rejection> {
    if rejection.find::<Unauthorized>().is_none() {
        return Err(rejection);
    }
    let body = warp::reply::json(&json!({ "error": "the dashboard needs the admin password" }));
    Ok(warp::reply::with_header(
        warp::reply::with_status(body, StatusCode::UNAUTHORIZED),
        header::WWW_AUTHENTICATE,
        "Basic realm=\"Switchboard\", charset=\"UTF-8\"",
    )
    .into_response())
}

// custom_debug passes the field itself.
#[allow(clippy::ref_option)]
pub fn debug_secret(secret: &Option<String>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str(if secret.is_some() {
        "Some(\"…\")"
    } else {
        "None"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(credentials: &str) -> String {
        format!("Basic {}", STANDARD.encode(credentials))
    }

    #[test]
    fn only_the_admin_with_the_password_passes() {
        let password = Some("s3cret");
        assert!(allows(password, Some(&basic("admin:s3cret"))));
        for refused in [
            None,
            Some(basic("admin:wrong")),
            Some(basic("root:s3cret")),
            Some(basic("admin:s3cret2")),
            Some(basic("admin")),
            Some("Bearer s3cret".to_owned()),
            Some("Basic !!!".to_owned()),
        ] {
            assert!(!allows(password, refused.as_deref()), "{refused:?}");
        }
        assert!(allows(None, None), "no password configured: open");
    }
}
