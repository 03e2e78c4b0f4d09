//! One HTTP attempt at a webhook batch and what its outcome means.
//!
//! Only a 2xx answer whose body (read at most `max_response_bytes`) ends within the request
//! timeout delivers the batch. Redirects are never followed: a 3xx is a failure that names the
//! `Location`. The failure reasons are a closed set ([`Failure::label`]) used as a metric label.

use std::time::Duration;

use reqwest::redirect::Policy;
use reqwest::{Client, StatusCode};

use super::target::Target;

/// Most bytes of a refusing receiver's answer kept in `last_error`.
const ERROR_BODY_BYTES: usize = 200;

/// Why an attempt did not deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No complete answer within the request timeout (connecting included).
    Timeout(Duration),
    /// The receiver could not be reached (refused, unreachable, DNS, TLS).
    Connect(String),
    /// A 3xx answer; `Location` without its query.
    Redirect(StatusCode, Option<String>),
    /// A 4xx answer, with the start of its body.
    Status4xx(StatusCode, String),
    /// A 5xx (or other non-2xx) answer, with the start of its body.
    Status5xx(StatusCode, String),
    /// The answer's body was longer than `max_response_bytes`.
    BodyTooLarge(StatusCode, usize),
    /// Any other failure of the request (the connection broke mid-answer, say).
    Request(String),
}

impl Failure {
    /// The `reason` label of `switchboard_webhook_failures_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Failure::Timeout(_) => "timeout",
            Failure::Connect(_) => "connect",
            Failure::Redirect(..) => "redirect",
            Failure::Status4xx(..) => "status_4xx",
            Failure::Status5xx(..) => "status_5xx",
            Failure::BodyTooLarge(..) => "body_too_large",
            Failure::Request(_) => "request",
        }
    }

    /// What `last_error` says.
    pub fn message(&self) -> String {
        match self {
            Failure::Timeout(timeout) => format!("timeout: no complete answer within {timeout:?}"),
            Failure::Connect(error) => format!("connect: {error}"),
            Failure::Redirect(status, location) => format!(
                "redirect: HTTP {} to {}; redirects are not followed",
                status.as_u16(),
                location.as_deref().unwrap_or("(no Location)")
            ),
            Failure::Status4xx(status, body) | Failure::Status5xx(status, body) => {
                format!("status: HTTP {} {body:?}", status.as_u16())
            }
            Failure::BodyTooLarge(status, limit) => format!(
                "body_too_large: HTTP {} with an answer over {limit} bytes",
                status.as_u16()
            ),
            Failure::Request(error) => format!("request: {error}"),
        }
    }
}

/// The HTTP client every delivery task shares: no redirects, the request timeout over the whole
/// exchange (connect, send, answer and its body).
pub(crate) fn client(timeout: Duration) -> Result<Client, reqwest::Error> {
    Client::builder()
        .redirect(Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("Switchboard-Webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// POSTs `body` to `target` as delivery `id`.
pub(crate) async fn attempt(
    client: &Client,
    target: &Target,
    id: &str,
    body: Vec<u8>,
    timeout: Duration,
    max_response_bytes: usize,
) -> Result<(), Failure> {
    let headers = target.request_headers(id, &body);
    let classify = |error: reqwest::Error| {
        if error.is_timeout() {
            Failure::Timeout(timeout)
        } else if error.is_connect() {
            Failure::Connect(chain(&error))
        } else {
            Failure::Request(chain(&error))
        }
    };
    let mut response = client
        .post(target.url().clone())
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(classify)?;
    let status = response.status();
    let mut answer = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        if answer.len() + chunk.len() > max_response_bytes {
            return Err(Failure::BodyTooLarge(status, max_response_bytes));
        }
        answer.extend_from_slice(&chunk);
    }
    if status.is_success() {
        return Ok(());
    }
    if status.is_redirection() {
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(|location| match location.contains("://") {
                true => bus::redacted_endpoint(location),
                false => location.split('?').next().unwrap_or_default().to_owned(),
            });
        return Err(Failure::Redirect(status, location));
    }
    let mut end = answer.len().min(ERROR_BODY_BYTES);
    let text = loop {
        match std::str::from_utf8(&answer[..end]) {
            Ok(text) => break text.to_owned(),
            Err(error) => end = error.valid_up_to(),
        }
    };
    if status.is_client_error() {
        Err(Failure::Status4xx(status, text))
    } else {
        Err(Failure::Status5xx(status, text))
    }
}

/// An error with its sources, each once.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_has_a_label_and_a_message() {
        let cases = [
            (
                Failure::Timeout(Duration::from_secs(10)),
                "timeout",
                "timeout: no complete answer within 10s",
            ),
            (
                Failure::Connect("refused".into()),
                "connect",
                "connect: refused",
            ),
            (
                Failure::Redirect(StatusCode::FOUND, Some("http://elsewhere/x".into())),
                "redirect",
                "redirect: HTTP 302 to http://elsewhere/x; redirects are not followed",
            ),
            (
                Failure::Status4xx(StatusCode::GONE, "gone".into()),
                "status_4xx",
                "status: HTTP 410 \"gone\"",
            ),
            (
                Failure::Status5xx(StatusCode::BAD_GATEWAY, String::new()),
                "status_5xx",
                "status: HTTP 502 \"\"",
            ),
            (
                Failure::BodyTooLarge(StatusCode::OK, 65536),
                "body_too_large",
                "body_too_large: HTTP 200 with an answer over 65536 bytes",
            ),
            (
                Failure::Request("reset".into()),
                "request",
                "request: reset",
            ),
        ];
        for (failure, label, message) in cases {
            assert_eq!(failure.label(), label);
            assert_eq!(failure.message(), message);
        }
    }
}
