//! One configured webhook as the worker sends to it: the app's credentials, the parsed URL, its
//! filter and extra headers. Built (and so checked) once at start.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use protocol::webhook::{Filter, CONTENT_TYPE, ID_HEADER, KEY_HEADER, SIGNATURE_HEADER};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE as CONTENT_TYPE_HEADER};
use reqwest::Url;
use thiserror::Error;

/// Why a webhook's configuration cannot be used; each names the field.
#[derive(Debug, Error)]
pub enum TargetError {
    #[error("url {url:?} is not a URL: {source}")]
    Url {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("url {url:?} must be http:// or https://")]
    Scheme { url: String },
    #[error("event_types is empty: the webhook would never be sent")]
    NoEventTypes,
    #[error("headers: {0:?} is not a valid header name")]
    HeaderName(String),
    #[error("headers: the value of {0:?} is not a valid header value")]
    HeaderValue(String),
    #[error("headers: {0:?} is set by Switchboard and cannot be configured")]
    ReservedHeader(String),
    #[error("url {0:?} is configured twice for this app (credentials and query aside)")]
    Duplicate(String),
}

/// One webhook of one app.
#[derive(Clone)]
pub struct Target {
    pub app_id: String,
    key: HeaderValue,
    secret: String,
    url: Url,
    /// What `webhook_deliveries.webhook` holds: the URL without credentials, query or fragment.
    pub name: String,
    pub filter: Filter,
    headers: HeaderMap,
}

impl Target {
    pub fn new(
        app_id: &str,
        key: &str,
        secret: &str,
        url: &str,
        filter: Filter,
        headers: &BTreeMap<String, String>,
    ) -> Result<Target, TargetError> {
        let parsed = Url::parse(url).map_err(|source| TargetError::Url {
            url: bus::redacted_endpoint(url),
            source,
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
            return Err(TargetError::Scheme {
                url: bus::redacted_endpoint(url),
            });
        }
        if filter.event_types.is_empty() {
            return Err(TargetError::NoEventTypes);
        }
        let mut extra = HeaderMap::new();
        for (name, value) in headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| TargetError::HeaderName(name.clone()))?;
            let reserved = [
                CONTENT_TYPE_HEADER.as_str(),
                KEY_HEADER,
                SIGNATURE_HEADER,
                ID_HEADER,
            ];
            if reserved
                .iter()
                .any(|reserved| reserved.eq_ignore_ascii_case(name))
            {
                return Err(TargetError::ReservedHeader(name.clone()));
            }
            let mut value =
                HeaderValue::from_str(value).map_err(|_| TargetError::HeaderValue(name.clone()))?;
            value.set_sensitive(true);
            extra.insert(header, value);
        }
        let key =
            HeaderValue::from_str(key).map_err(|_| TargetError::HeaderValue(KEY_HEADER.into()))?;
        Ok(Target {
            app_id: app_id.to_owned(),
            key,
            secret: secret.to_owned(),
            name: display_name(&parsed),
            url: parsed,
            filter,
            headers: extra,
        })
    }

    pub(crate) fn url(&self) -> &Url {
        &self.url
    }

    /// Every header of a request with `body` signed and `id` as the delivery id.
    pub(crate) fn request_headers(&self, id: &str, body: &[u8]) -> HeaderMap {
        let mut headers = self.headers.clone();
        headers.insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(CONTENT_TYPE));
        headers.insert(KEY_HEADER, self.key.clone());
        let signature = protocol::webhook::sign(&self.secret, body);
        headers.insert(
            SIGNATURE_HEADER,
            HeaderValue::from_str(&signature).expect("hex is a valid header value"),
        );
        headers.insert(
            ID_HEADER,
            HeaderValue::from_str(id).expect("a uuid is a valid header value"),
        );
        headers
    }
}

/// Checks that no two targets of one app share a name (the rows could not tell them apart).
pub fn check_unique<'a>(targets: impl IntoIterator<Item = &'a Target>) -> Result<(), TargetError> {
    let mut seen = HashSet::new();
    for target in targets {
        if !seen.insert((target.app_id.as_str(), target.name.as_str())) {
            return Err(TargetError::Duplicate(target.name.clone()));
        }
    }
    Ok(())
}

/// The URL without credentials, query or fragment.
fn display_name(url: &Url) -> String {
    let mut shown = url.clone();
    // Only cannot-be-a-base URLs refuse these, and http(s) URLs are never such.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("app_id", &self.app_id)
            .field("name", &self.name)
            .field("filter", &self.filter)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::webhook::EventType;

    fn all() -> Filter {
        Filter {
            event_types: EventType::ALL.to_vec(),
            channel_prefix: None,
        }
    }

    fn target(url: &str, headers: &[(&str, &str)]) -> Result<Target, TargetError> {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Target::new("1", "key", "s3cr3t", url, all(), &headers)
    }

    #[test]
    fn only_http_and_https_urls() {
        let ok = target(
            "https://u:hunter2@hooks.example:8443/in?token=hunter3#x",
            &[],
        )
        .unwrap();
        assert_eq!(ok.name, "https://hooks.example:8443/in");
        assert!(target("http://127.0.0.1:1/", &[]).is_ok());
        for bad in ["ftp://h/x", "mailto:a@b", "file:///etc/passwd"] {
            assert!(
                matches!(target(bad, &[]), Err(TargetError::Scheme { .. })),
                "{bad}"
            );
        }
        let error = target("not a url", &[]).unwrap_err();
        assert!(matches!(error, TargetError::Url { .. }), "{error}");
        let error = target("ftp://u:hunter2@h/", &[]).unwrap_err().to_string();
        assert!(
            !error.contains("hunter2") && error.contains("url"),
            "{error}"
        );
    }

    #[test]
    fn headers_are_checked_and_reserved_ones_refused() {
        assert!(target("http://h/", &[("X-Env", "dev")]).is_ok());
        assert!(matches!(
            target("http://h/", &[("Bad Name", "x")]),
            Err(TargetError::HeaderName(_))
        ));
        assert!(matches!(
            target("http://h/", &[("X-Env", "a\nb")]),
            Err(TargetError::HeaderValue(_))
        ));
        for reserved in [
            "x-pusher-signature",
            "Content-Type",
            "X-Switchboard-Webhook-Id",
        ] {
            assert!(
                matches!(
                    target("http://h/", &[(reserved, "x")]),
                    Err(TargetError::ReservedHeader(_))
                ),
                "{reserved}"
            );
        }
        let empty = Target::new(
            "1",
            "k",
            "s",
            "http://h/",
            Filter {
                event_types: vec![],
                channel_prefix: None,
            },
            &BTreeMap::new(),
        );
        assert!(matches!(empty, Err(TargetError::NoEventTypes)));
    }

    #[test]
    fn requests_are_signed_and_debug_hides_secrets() {
        let target = target(
            "http://h/?token=hunter3",
            &[("Authorization", "Bearer hunter4")],
        )
        .unwrap();
        let headers = target.request_headers("0190-id", b"{}");
        assert_eq!(headers[CONTENT_TYPE_HEADER], "application/json");
        assert_eq!(headers[KEY_HEADER], "key");
        assert_eq!(headers[ID_HEADER], "0190-id");
        assert!(protocol::webhook::verify(
            "s3cr3t",
            b"{}",
            headers[SIGNATURE_HEADER].to_str().unwrap()
        ));
        assert_eq!(headers["authorization"], "Bearer hunter4");
        let shown = format!("{target:?}");
        for secret in ["s3cr3t", "hunter3", "hunter4"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn one_url_once_per_app() {
        let a = target("http://h/in", &[]).unwrap();
        let b = target("http://u:p@h/in?x=1", &[]).unwrap();
        let mut other_app = target("http://h/in", &[]).unwrap();
        other_app.app_id = "2".into();
        assert!(check_unique([&a, &other_app]).is_ok());
        assert!(matches!(
            check_unique([&a, &b]),
            Err(TargetError::Duplicate(name)) if name == "http://h/in"
        ));
    }
}
