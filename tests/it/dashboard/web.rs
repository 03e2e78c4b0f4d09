//! `GET /` redirects to the console; the page and its embedded files are served behind the
//! dashboard's password, with a Content-Security-Policy; `/health` and `/metrics` stay open.

use crate::common::{TestServer, APP_ID};

const PASSWORD: &str = "console-secret";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn get(server: &TestServer, path: &str, password: Option<&str>) -> reqwest::Response {
    let request = client().get(format!("http://{}{path}", server.admin));
    match password {
        Some(password) => request.basic_auth("admin", Some(password)),
        None => request,
    }
    .send()
    .await
    .unwrap()
}

#[tokio::test]
async fn the_console_is_served_behind_the_password() {
    let server = TestServer::start_with(|c| c.admin.password = Some(PASSWORD.into())).await;

    let root = get(&server, "/", None).await;
    assert_eq!(root.status(), 303);
    assert_eq!(root.headers()["location"], "/dashboard");

    for path in ["/dashboard", "/dashboard/assets/main.js", "/api/apps"] {
        for password in [None, Some("wrong")] {
            let response = get(&server, path, password).await;
            assert_eq!(response.status(), 401, "{path} {password:?}");
            assert!(response.headers().contains_key("www-authenticate"));
        }
    }

    let page = get(&server, "/dashboard", Some(PASSWORD)).await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("/dashboard/assets/main.js"));

    for (path, content_type) in [
        (
            "/dashboard/assets/main.js",
            "text/javascript; charset=utf-8",
        ),
        ("/dashboard/assets/style.css", "text/css; charset=utf-8"),
        ("/dashboard/assets/icon.svg", "image/svg+xml"),
    ] {
        let response = get(&server, path, Some(PASSWORD)).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], content_type, "{path}");
    }
    assert_eq!(
        get(&server, "/dashboard/assets/missing.js", Some(PASSWORD))
            .await
            .status(),
        404
    );

    let apps: serde_json::Value = get(&server, "/api/apps", Some(PASSWORD))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(apps, serde_json::json!({ "apps": [APP_ID] }));

    for open in ["/health", "/metrics"] {
        assert_eq!(get(&server, open, None).await.status(), 200, "{open}");
    }
    server.cleanup().await;
}

#[tokio::test]
async fn without_a_password_a_loopback_console_is_open() {
    let server = TestServer::start().await;
    assert_eq!(get(&server, "/dashboard", None).await.status(), 200);
    server.cleanup().await;
}
