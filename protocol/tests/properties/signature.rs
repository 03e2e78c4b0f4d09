//! Signatures: HMAC round trips, single-byte changes, and signed HTTP API requests as the
//! gateway sees them (query decoded by `signature::query_params`).

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use proptest::prelude::*;
use protocol::signature::{
    channel_string_to_sign, http_string_to_sign, query_params, sign, verify, verify_client_auth,
    verify_http_request, HttpAuthError, HttpRequestToVerify,
};
use sha2::Sha256;

use super::config;

const KEY: &str = "278d425bdf160c739803";
const SECRET: &str = "7ad3773142a6692b25b8";
const NOW: i64 = 1_353_088_179;

/// One byte of `bytes` replaced by a different one.
fn mutated(bytes: &[u8], index: prop::sample::Index, with: u8) -> Vec<u8> {
    let mut changed = bytes.to_vec();
    let at = index.index(changed.len());
    changed[at] = if changed[at] == with {
        with ^ 0x01
    } else {
        with
    };
    changed
}

/// An HMAC-SHA256 hex as a server SDK computes it, independently of the code under test.
fn sdk_hmac(secret: &str, message: impl AsRef<[u8]>) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message.as_ref());
    hex::encode(mac.finalize().into_bytes())
}

/// The query string of a signed request, built as the Node SDK builds it: lower-case keys
/// sorted, values signed unescaped, sent form-encoded.
fn sdk_query(
    method: &str,
    path: &str,
    extra: &[(String, String)],
    body: &[u8],
    timestamp: i64,
) -> String {
    let mut params: Vec<(String, String)> = extra.to_vec();
    params.push(("auth_key".into(), KEY.into()));
    params.push(("auth_timestamp".into(), timestamp.to_string()));
    params.push(("auth_version".into(), "1.0".into()));
    if !body.is_empty() {
        params.push(("body_md5".into(), hex::encode(Md5::digest(body))));
    }
    params.sort();
    let signed: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let signature = sdk_hmac(SECRET, format!("{method}\n{path}\n{}", signed.join("&")));
    params.push(("auth_signature".into(), signature));
    serde_urlencoded::to_string(&params).unwrap()
}

fn check_request(
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
    now: i64,
) -> Result<Vec<(String, String)>, String> {
    let params = query_params(query).map_err(|e| e.to_string())?;
    let request = HttpRequestToVerify {
        method,
        path,
        params: &params,
        body,
    };
    verify_http_request(KEY, SECRET, &request, now).map_err(|e| e.to_string())?;
    Ok(params)
}

/// Extra parameters as SDKs send them (`info`, `filter_by_prefix`, …): keys `[a-z_]`, values
/// of any characters but `&`, which the signed string could not tell from a separator.
fn extra_params() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::btree_map("[a-z][a-z_]{0,15}", "[^&]{0,20}", 0..4).prop_map(|map| {
        map.into_iter()
            .filter(|(k, _)| !k.starts_with("auth_") && k != "body_md5")
            .collect()
    })
}

fn method_and_path() -> impl Strategy<Value = (&'static str, String)> {
    (
        prop::sample::select(&["GET", "POST"][..]),
        "/apps/[0-9]{1,4}/(events|batch_events|channels|channels/[a-z-]{1,10}(/users)?)",
    )
}

/// Parameters as the handler reads them, with the fields compared case-insensitively by the
/// verifier (hex digests) folded.
fn meaning(params: &[(String, String)]) -> Vec<(String, String)> {
    let mut folded: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| {
            let k = k.to_ascii_lowercase();
            let v = if k == "auth_signature" || k == "body_md5" {
                v.to_ascii_lowercase()
            } else {
                v.clone()
            };
            (k, v)
        })
        .collect();
    folded.sort();
    folded
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn hmac_round_trip_and_any_changed_byte_fails(
        secret in any::<String>(),
        message in prop::collection::vec(any::<u8>(), 0..256),
        index in any::<prop::sample::Index>(),
        with in any::<u8>(),
        other_secret in any::<String>(),
    ) {
        let signature = sign(&secret, &message);
        prop_assert_eq!(&signature, &sdk_hmac(&secret, &message));
        prop_assert!(verify(&secret, &message, &signature));
        if !message.is_empty() {
            prop_assert!(!verify(&secret, &mutated(&message, index, with), &signature));
        }
        // A signature that decodes to other bytes fails; a hex digit's case does not matter.
        let digits = signature.as_bytes();
        let at = index.index(digits.len());
        let mut changed = digits.to_vec();
        changed[at] = if digits[at] == b'0' { b'1' } else { b'0' };
        prop_assert!(!verify(&secret, &message, std::str::from_utf8(&changed).unwrap()));
        prop_assert!(verify(&secret, &message, &signature.to_ascii_uppercase()));
        if other_secret != secret {
            prop_assert!(!verify(&other_secret, &message, &signature));
        }
    }

    #[test]
    fn verify_never_panics_on_any_signature(secret in any::<String>(), signature in any::<String>()) {
        let _ = verify(&secret, b"message", &signature);
        let _ = verify_client_auth(KEY, &secret, "1.2:private-a", &signature);
    }

    #[test]
    fn channel_auth_round_trip_and_no_other_channel_or_socket(
        socket_id in "[0-9]{1,10}\\.[0-9]{1,10}",
        channel in "(private-|presence-)?[A-Za-z0-9_=@,.;-]{1,20}",
        channel_data in prop::option::of(any::<String>()),
        other in "[A-Za-z0-9_=@,.;-]{1,20}",
    ) {
        let message = channel_string_to_sign(&socket_id, &channel, channel_data.as_deref());
        let auth = format!("{KEY}:{}", sdk_hmac(SECRET, &message));
        prop_assert!(verify_client_auth(KEY, SECRET, &message, &auth));
        prop_assert!(!verify_client_auth("other-key", SECRET, &message, &auth));
        let elsewhere = channel_string_to_sign(&socket_id, &other, channel_data.as_deref());
        prop_assert_eq!(verify_client_auth(KEY, SECRET, &elsewhere, &auth), other == channel);
    }

    #[test]
    fn signed_requests_verify_and_any_changed_byte_fails(
        (method, path) in method_and_path(),
        extra in extra_params(),
        body in prop::collection::vec(any::<u8>(), 0..64),
        skew in -600i64..=600,
        index in any::<prop::sample::Index>(),
        with in 0x20u8..0x7f,
    ) {
        let query = sdk_query(method, &path, &extra, &body, NOW + skew);
        let signed = check_request(method, &path, &query, &body, NOW);
        prop_assert!(signed.is_ok(), "{:?}", signed);
        let signed = signed.unwrap();
        // Any change to the body is caught by its MD5.
        if !body.is_empty() {
            let changed = mutated(&body, index, with);
            prop_assert_eq!(
                check_request(method, &path, &query, &changed, NOW),
                Err(HttpAuthError::BodyMd5Mismatch.to_string())
            );
        }
        // Any change to the query that changes what it means is refused.
        let changed = String::from_utf8(mutated(query.as_bytes(), index, with)).unwrap();
        if let Ok(params) = query_params(&changed) {
            if meaning(&params) != meaning(&signed) {
                prop_assert!(
                    check_request(method, &path, &changed, &body, NOW).is_err(),
                    "{} verified as {:?}", changed, params
                );
            }
        }
        // And the same request to another path or with another method.
        let other_path = format!("{path}/x");
        prop_assert!(check_request(method, &other_path, &query, &body, NOW).is_err());
        let other_method = if method == "GET" { "POST" } else { "GET" };
        prop_assert!(check_request(other_method, &path, &query, &body, NOW).is_err());
    }

    /// A query that is accepted has exactly the parameters its signed string spells out: no two
    /// different parameter sets sign the same string.
    #[test]
    fn the_signed_string_spells_exactly_the_accepted_parameters(
        pairs in prop::collection::vec(("[a-c=&]{1,3}", "[a-c=&]{0,3}"), 0..4),
    ) {
        let query = serde_urlencoded::to_string(&pairs).unwrap();
        if let Ok(params) = query_params(&query) {
            let to_sign = http_string_to_sign("GET", "/p", &params);
            let spelled = to_sign.splitn(3, '\n').nth(2).unwrap();
            let mut read_back: Vec<(String, String)> = if spelled.is_empty() {
                Vec::new()
            } else {
                spelled
                    .split('&')
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        (k.to_owned(), v.to_owned())
                    })
                    .collect()
            };
            read_back.sort();
            prop_assert_eq!(read_back, meaning(&params), "{}", query);
        }
    }

    #[test]
    fn verification_never_panics_on_any_parameters(
        query in prop_oneof![
            any::<String>(),
            prop::collection::vec(
                (
                    prop::sample::select(&["auth_key", "auth_timestamp", "auth_version",
                        "body_md5", "auth_signature", "AUTH_KEY"][..]),
                    prop_oneof![
                        any::<String>(),
                        any::<i64>().prop_map(|n| n.to_string()),
                        Just(i64::MIN.to_string()),
                        Just(i64::MAX.to_string()),
                        Just(KEY.to_owned()),
                        Just("1.0".to_owned()),
                    ],
                ),
                0..8,
            )
            .prop_map(|pairs| serde_urlencoded::to_string(pairs).unwrap()),
        ],
        body in prop::collection::vec(any::<u8>(), 0..16),
        now in prop_oneof![any::<i64>(), Just(NOW), Just(i64::MIN), Just(i64::MAX)],
    ) {
        let _ = check_request("POST", "/apps/1/events", &query, &body, now);
    }
}
