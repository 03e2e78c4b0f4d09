//! HMAC-SHA256 signatures (PROTOCOL.md §2): channel auth, user signin, HTTP API, webhooks.
//!
//! Every comparison goes through [`Mac::verify_slice`], which is constant-time.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// How far `auth_timestamp` may be from the server's clock, in seconds.
pub const MAX_TIMESTAMP_SKEW_SECS: u64 = 600;

fn mac(secret: &str) -> HmacSha256 {
    HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length")
}

/// Lower-case hex HMAC-SHA256 of `message` under `secret`.
pub fn sign(secret: &str, message: &[u8]) -> String {
    let mut m = mac(secret);
    m.update(message);
    hex::encode(m.finalize().into_bytes())
}

/// Constant-time check of a hex signature.
pub fn verify(secret: &str, message: &[u8], signature_hex: &str) -> bool {
    let Ok(expected) = hex::decode(signature_hex) else {
        return false;
    };
    let mut m = mac(secret);
    m.update(message);
    m.verify_slice(&expected).is_ok()
}

/// The string signed for a private (`channel_data` = None) or presence channel subscription.
pub fn channel_string_to_sign(
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// The secret that signs subscriptions to [`crate::channel::DEBUG_CHANNEL`]: derived from the
/// app's secret, so every gateway node can check what the dashboard of any node signed.
pub fn debug_console_secret(app_secret: &str) -> String {
    sign(app_secret, b"switchboard debug console")
}

/// The string signed for `pusher:signin`.
pub fn signin_string_to_sign(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// Checks a client's `auth` field (`"key:hexsignature"`) for an app.
pub fn verify_client_auth(key: &str, secret: &str, message: &str, auth: &str) -> bool {
    match auth.split_once(':') {
        Some((given_key, sig)) => given_key == key && verify(secret, message.as_bytes(), sig),
        None => false,
    }
}

/// Hex MD5 of the raw body bytes, as `body_md5` carries it.
pub fn body_md5(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// `METHOD\npath\nquery` with every parameter but `auth_signature`, keys lower-cased, sorted by
/// key, values as given (not URL-escaped).
pub fn http_string_to_sign(method: &str, path: &str, params: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, &str)> = params
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .filter(|(k, _)| k != "auth_signature")
        .collect();
    pairs.sort();
    let query = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    format!("{}\n{}\n{}", method.to_ascii_uppercase(), path, query)
}

/// Why a signed request's query string was refused.
#[derive(Debug, Error)]
pub enum QueryError {
    #[error("{0}")]
    Malformed(#[from] serde_urlencoded::de::Error),
    #[error("query parameter {0:?} is given twice")]
    Duplicate(String),
    #[error("query parameter {0:?} contains `&` (or `=` in its name), which the signed string cannot tell from a separator")]
    Ambiguous(String),
}

/// The parameters of a signed request's query string, as the gateway reads and verifies them:
/// keys lower-cased (they are signed lower-cased), each at most once, and no `&` in a key or
/// value nor `=` in a key. The signed string joins `k=v` with `&`, unescaped, so without these
/// rules two different queries could sign the same string (`a=1%26b%3D2` and `a=1&b=2`), and
/// a captured request could be altered without breaking its signature.
pub fn query_params(query: &str) -> Result<Vec<(String, String)>, QueryError> {
    let mut params: Vec<(String, String)> = serde_urlencoded::from_str(query)?;
    for (key, value) in &mut params {
        key.make_ascii_lowercase();
        if key.contains(['&', '=']) || value.contains('&') {
            return Err(QueryError::Ambiguous(key.clone()));
        }
    }
    let mut keys: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    if let Some(pair) = keys.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(QueryError::Duplicate(pair[0].to_owned()));
    }
    Ok(params)
}

/// Why an HTTP API request's signature was refused. The messages are shown to API users.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HttpAuthError {
    #[error("missing query parameter {0}")]
    Missing(&'static str),
    #[error("auth_key does not belong to this app")]
    WrongKey,
    #[error("auth_version must be 1.0")]
    WrongVersion,
    #[error("auth_timestamp is not a unix time in seconds")]
    BadTimestamp,
    #[error("auth_timestamp is {skew_secs} s away from server time; at most {MAX_TIMESTAMP_SKEW_SECS} s allowed, check the clock")]
    StaleTimestamp { skew_secs: u64 },
    #[error("body_md5 does not match the MD5 of the request body")]
    BodyMd5Mismatch,
    #[error(
        "invalid signature: expected HMAC-SHA256 hex of {string_to_sign:?} with the app secret"
    )]
    BadSignature { string_to_sign: String },
}

/// What the server knows about the request when checking its signature.
pub struct HttpRequestToVerify<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub params: &'a [(String, String)],
    pub body: &'a [u8],
}

/// Full check of a Pusher HTTP API request: key, version, timestamp window, body MD5, signature.
pub fn verify_http_request(
    key: &str,
    secret: &str,
    req: &HttpRequestToVerify<'_>,
    now_unix: i64,
) -> Result<(), HttpAuthError> {
    let param = |name: &'static str| {
        req.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let required = |name: &'static str| param(name).ok_or(HttpAuthError::Missing(name));
    if required("auth_key")? != key {
        return Err(HttpAuthError::WrongKey);
    }
    if required("auth_version")? != "1.0" {
        return Err(HttpAuthError::WrongVersion);
    }
    let ts: i64 = required("auth_timestamp")?
        .parse()
        .map_err(|_| HttpAuthError::BadTimestamp)?;
    let skew_secs = now_unix.abs_diff(ts);
    if skew_secs > MAX_TIMESTAMP_SKEW_SECS {
        return Err(HttpAuthError::StaleTimestamp { skew_secs });
    }
    // SDKs differ: some send body_md5 only for non-empty bodies, the PyPI SDK sends the MD5 of the
    // empty body on GETs. Whenever it is present it must match; it is required for a non-empty body.
    match param("body_md5") {
        Some(md5) if !md5.eq_ignore_ascii_case(&body_md5(req.body)) => {
            return Err(HttpAuthError::BodyMd5Mismatch)
        }
        None if !req.body.is_empty() => return Err(HttpAuthError::Missing("body_md5")),
        _ => {}
    }
    let signature = required("auth_signature")?;
    let string_to_sign = http_string_to_sign(req.method, req.path, req.params);
    if verify(secret, string_to_sign.as_bytes(), signature) {
        Ok(())
    } else {
        Err(HttpAuthError::BadSignature { string_to_sign })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_debug_console_secret_is_not_the_app_secret() {
        let secret = debug_console_secret("app-secret");
        assert_eq!(secret.len(), 64);
        assert_ne!(secret, debug_console_secret("other-secret"));
        let auth = format!(
            "app-key:{}",
            sign(&secret, b"1.1:private-switchboard-debug")
        );
        assert!(verify_client_auth(
            "app-key",
            &secret,
            "1.1:private-switchboard-debug",
            &auth
        ));
        assert!(!verify_client_auth(
            "app-key",
            "app-secret",
            "1.1:private-switchboard-debug",
            &auth
        ));
    }

    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";

    #[test]
    fn private_channel_vector() {
        let s = channel_string_to_sign("1234.1234", "private-foobar", None);
        assert_eq!(
            sign(SECRET, s.as_bytes()),
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
    }

    #[test]
    fn signin_vector() {
        let s = signin_string_to_sign("1234.1234", r#"{"id":"12345"}"#);
        assert_eq!(
            sign(SECRET, s.as_bytes()),
            "4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"
        );
    }

    #[test]
    fn presence_vector() {
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Pusher"}}"#;
        let s = channel_string_to_sign("1234.1234", "presence-foobar", Some(data));
        assert_eq!(
            sign(SECRET, s.as_bytes()),
            "afaed3695da2ffd16931f457e338e6c9f2921fa133ce7dac49f529792be6304c"
        );
    }

    #[test]
    fn dev_credentials_vector() {
        let s = channel_string_to_sign("123.456", "private-analytics", None);
        let auth = format!("app-key:{}", sign("app-secret", s.as_bytes()));
        assert_eq!(
            auth,
            "app-key:84ced10efe9ec2d220087c65fe4ee5a50f28c0345d9f08b075278fe4f7dbc9cf"
        );
        assert!(verify_client_auth("app-key", "app-secret", &s, &auth));
        assert!(!verify_client_auth("other-key", "app-secret", &s, &auth));
        assert!(!verify_client_auth("app-key", "wrong", &s, &auth));
        assert!(!verify_client_auth(
            "app-key",
            "app-secret",
            &s,
            "app-key:zz"
        ));
        assert!(!verify_client_auth("app-key", "app-secret", &s, "nocolon"));
    }

    const BODY: &str = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;

    fn vector_params(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = [
            ("auth_key", KEY),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("body_md5", "ec365a775a4cd0599faeb73354201b6f"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        p.reverse();
        p
    }

    #[test]
    fn http_vector() {
        assert_eq!(
            body_md5(BODY.as_bytes()),
            "ec365a775a4cd0599faeb73354201b6f"
        );
        let params = vector_params(&[]);
        let s = http_string_to_sign("POST", "/apps/3/events", &params);
        assert_eq!(
            s,
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        assert_eq!(
            sign(SECRET, s.as_bytes()),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }

    fn verify_vector(
        params: &[(String, String)],
        body: &str,
        now: i64,
    ) -> Result<(), HttpAuthError> {
        let req = HttpRequestToVerify {
            method: "POST",
            path: "/apps/3/events",
            params,
            body: body.as_bytes(),
        };
        verify_http_request(KEY, SECRET, &req, now)
    }

    const SIG: &str = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";

    #[test]
    fn http_request_verification() {
        let now = 1353088179;
        let good = vector_params(&[("auth_signature", SIG)]);
        assert_eq!(verify_vector(&good, BODY, now), Ok(()));
        assert_eq!(verify_vector(&good, BODY, now + 600), Ok(()));
        assert_eq!(
            verify_vector(&good, BODY, now + 601),
            Err(HttpAuthError::StaleTimestamp { skew_secs: 601 })
        );
        assert_eq!(
            verify_vector(&good, BODY, now - 601),
            Err(HttpAuthError::StaleTimestamp { skew_secs: 601 })
        );
        assert_eq!(
            verify_vector(&good, "{}", now),
            Err(HttpAuthError::BodyMd5Mismatch)
        );
        let bad_sig = vector_params(&[("auth_signature", &SIG.replace('d', "e"))]);
        assert!(matches!(
            verify_vector(&bad_sig, BODY, now),
            Err(HttpAuthError::BadSignature { .. })
        ));
        let unsigned = vector_params(&[]);
        assert_eq!(
            verify_vector(&unsigned, BODY, now),
            Err(HttpAuthError::Missing("auth_signature"))
        );
        let mut no_md5 = good.clone();
        no_md5.retain(|(k, _)| k != "body_md5");
        assert_eq!(
            verify_vector(&no_md5, BODY, now),
            Err(HttpAuthError::Missing("body_md5"))
        );
        let mut wrong_key = good.clone();
        wrong_key.last_mut().unwrap().1 = "someone-else".into();
        assert_eq!(
            verify_vector(&wrong_key, BODY, now),
            Err(HttpAuthError::WrongKey)
        );
    }

    #[test]
    fn empty_body_md5_is_accepted_when_it_matches() {
        let params: Vec<(String, String)> = [
            ("auth_key", KEY),
            ("auth_timestamp", "1000"),
            ("auth_version", "1.0"),
            ("body_md5", "d41d8cd98f00b204e9800998ecf8427e"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = http_string_to_sign("GET", "/apps/3/channels", &params);
        let mut signed = params.clone();
        signed.push(("auth_signature".into(), sign(SECRET, s.as_bytes())));
        let req = HttpRequestToVerify {
            method: "GET",
            path: "/apps/3/channels",
            params: &signed,
            body: b"",
        };
        assert_eq!(verify_http_request(KEY, SECRET, &req, 1000), Ok(()));
    }

    #[test]
    fn timestamps_far_from_now_are_stale_not_a_panic() {
        // Found by the property `verification_never_panics_on_any_parameters`: `now - ts`
        // overflowed (a panic in debug builds, a wrapped skew in release ones).
        let mut params = vector_params(&[("auth_signature", SIG)]);
        for (ts, skew_secs) in [
            (i64::MIN, 1353088179 + i64::MAX.unsigned_abs() + 1),
            (i64::MAX, i64::MAX.unsigned_abs() - 1353088179),
        ] {
            params.retain(|(k, _)| k != "auth_timestamp");
            params.push(("auth_timestamp".into(), ts.to_string()));
            assert_eq!(
                verify_vector(&params, BODY, 1353088179),
                Err(HttpAuthError::StaleTimestamp { skew_secs })
            );
        }
    }

    #[test]
    fn query_params_refuse_what_the_signed_string_cannot_tell_apart() {
        // Found by the property `the_signed_string_spells_exactly_the_accepted_parameters`:
        // `filter_by_prefix=presence-%26info%3Duser_count` signs the same string as
        // `filter_by_prefix=presence-&info=user_count`.
        let params = |q: &str| query_params(q).map_err(|e| e.to_string());
        assert_eq!(
            params("Auth_Key=k&info=user_count%2Csubscription_count"),
            Ok(vec![
                ("auth_key".into(), "k".into()),
                ("info".into(), "user_count,subscription_count".into())
            ])
        );
        assert_eq!(params("a=b%3Dc"), Ok(vec![("a".into(), "b=c".into())]));
        for (query, error) in [
            (
                "filter_by_prefix=presence-%26info%3Duser_count",
                "\"filter_by_prefix\" contains `&`",
            ),
            ("a%3Db=c", "\"a=b\" contains `&`"),
            ("a%26b=c", "\"a&b\" contains `&`"),
            ("info=a&INFO=b", "\"info\" is given twice"),
            (
                "auth_signature=1&auth_signature=2",
                "\"auth_signature\" is given twice",
            ),
        ] {
            let got = params(query).unwrap_err();
            assert!(got.contains(error), "{query}: {got}");
        }
    }
}
