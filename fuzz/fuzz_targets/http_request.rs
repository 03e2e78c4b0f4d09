//! A signed Pusher HTTP API request: the first line is the query string, the rest the body.
//! The query is read as the gateway reads it (`signature::query_params`), then verified.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::signature::{
    body_md5, http_string_to_sign, query_params, sign, verify_http_request, HttpAuthError,
    HttpRequestToVerify,
};

const KEY: &str = "278d425bdf160c739803";
const SECRET: &str = "7ad3773142a6692b25b8";
/// The `auth_timestamp` of the seeds (PROTOCOL.md's test vector).
const NOW: i64 = 1_353_088_179;
const PATH: &str = "/apps/3/events";

fuzz_target!(|data: &[u8]| {
    let (query, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    // warp gives the handler the raw query as a string.
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let Ok(params) = query_params(query) else {
        return;
    };
    let method = if body.is_empty() { "GET" } else { "POST" };
    let verify = |params: &[(String, String)]| {
        let request = HttpRequestToVerify {
            method,
            path: PATH,
            params,
            body,
        };
        verify_http_request(KEY, SECRET, &request, NOW)
    };
    let _ = verify(&params);

    // The same parameters signed afresh (and with the body's own MD5) verify, unless a
    // parameter other than the signature is wrong: signing is deterministic and canonical.
    let mut resigned: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "auth_signature" && k != "body_md5")
        .cloned()
        .collect();
    if !body.is_empty() {
        resigned.push(("body_md5".into(), body_md5(body)));
    }
    let signature = sign(
        SECRET,
        http_string_to_sign(method, PATH, &resigned).as_bytes(),
    );
    resigned.push(("auth_signature".into(), signature));
    let outcome = verify(&resigned);
    assert!(
        !matches!(
            outcome,
            Err(HttpAuthError::BadSignature { .. } | HttpAuthError::BodyMd5Mismatch)
        ),
        "{outcome:?}"
    );
    // And they survive being sent again: form-encoded, then read as the gateway reads them.
    let sent = serde_urlencoded::to_string(&resigned).expect("pairs of strings encode");
    assert_eq!(query_params(&sent).ok(), Some(resigned));
});
