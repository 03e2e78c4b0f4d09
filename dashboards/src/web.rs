//! The web console's static files, embedded at build time (`include_str!`), served under
//! `/dashboard` with a strict Content-Security-Policy: every script and style is one of these
//! files, nothing is loaded from elsewhere.

use warp::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

/// One embedded file, served at `/dashboard/assets/{name}`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

const INDEX: &str = include_str!("../web/index.html");

const ASSETS: &[Asset] = &[
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../web/style.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../web/icon.svg"),
    },
    Asset {
        name: "main.js",
        content_type: JS,
        body: include_str!("../web/main.js"),
    },
    Asset {
        name: "api.js",
        content_type: JS,
        body: include_str!("../web/api.js"),
    },
    Asset {
        name: "dom.js",
        content_type: JS,
        body: include_str!("../web/dom.js"),
    },
    Asset {
        name: "chart.js",
        content_type: JS,
        body: include_str!("../web/chart.js"),
    },
    Asset {
        name: "funnel.js",
        content_type: JS,
        body: include_str!("../web/funnel.js"),
    },
    Asset {
        name: "system.js",
        content_type: JS,
        body: include_str!("../web/system.js"),
    },
    Asset {
        name: "pusher.js",
        content_type: JS,
        body: include_str!("../web/pusher.js"),
    },
    Asset {
        name: "console.js",
        content_type: JS,
        body: include_str!("../web/console.js"),
    },
    Asset {
        name: "deadletters.js",
        content_type: JS,
        body: include_str!("../web/deadletters.js"),
    },
    Asset {
        name: "reports.js",
        content_type: JS,
        body: include_str!("../web/reports.js"),
    },
];

/// Scripts, styles, images and connections only from the admin listener itself; WebSockets
/// (the console's Pusher client) to any host, since the gateway listens on another port.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                      connect-src 'self' ws: wss:; base-uri 'none'; form-action 'self'; \
                      frame-ancestors 'none'";

/// The console's page.
pub fn index() -> Response {
    serve("text/html; charset=utf-8", INDEX)
}

/// The embedded file `name`, or 404.
pub fn asset(name: &str) -> Response {
    match ASSETS.iter().find(|asset| asset.name == name) {
        Some(asset) => serve(asset.content_type, asset.body),
        None => warp::reply::with_status("no such file", StatusCode::NOT_FOUND).into_response(),
    }
}

fn serve(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    // The files change with the binary: always revalidate.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `/dashboard/assets/…` the page names and every `./….js` a module imports is
    /// served, and nothing else is.
    #[test]
    fn every_referenced_file_is_embedded() {
        let served = |name: &str| ASSETS.iter().any(|asset| asset.name == name);
        let mut referenced = Vec::new();
        for part in INDEX.split("/dashboard/assets/").skip(1) {
            referenced.push(part.split('"').next().unwrap_or_default());
        }
        for asset in ASSETS.iter().filter(|asset| asset.content_type == JS) {
            for part in asset.body.split("from './").skip(1) {
                referenced.push(part.split('\'').next().unwrap_or_default());
            }
        }
        assert!(referenced.contains(&"main.js"));
        for name in &referenced {
            assert!(served(name), "{name} is referenced but not embedded");
        }
        for asset in ASSETS {
            assert!(
                referenced.contains(&asset.name),
                "{} is embedded but nothing loads it",
                asset.name
            );
        }
    }

    #[test]
    fn unknown_files_are_not_found() {
        assert_eq!(asset("main.js").status(), StatusCode::OK);
        assert_eq!(asset("../lib.rs").status(), StatusCode::NOT_FOUND);
        assert_eq!(asset("").status(), StatusCode::NOT_FOUND);
    }
}
