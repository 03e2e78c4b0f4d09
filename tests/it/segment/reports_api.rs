//! The dashboard's reports API on the admin listener: Basic auth, every report from the
//! fixture as JSON and CSV, each invalid parameter refused with its reason, and nothing that
//! writes.

use chrono::{Duration, Utc};
use serde_json::{json, Value};

use super::reports::load_fixture;
use crate::common::{TestServer, APP_ID};

const PASSWORD: &str = "dashboard-secret";

async fn server() -> TestServer {
    TestServer::start_with(|c| c.admin.password = Some(PASSWORD.into())).await
}

async fn report(server: &TestServer, path: &str, password: Option<&str>) -> reqwest::Response {
    let request = reqwest::Client::new().get(format!("http://{}/api/reports{path}", server.admin));
    match password {
        Some(password) => request.basic_auth("admin", Some(password)),
        None => request,
    }
    .send()
    .await
    .unwrap()
}

async fn rows(server: &TestServer, path: &str) -> Vec<Value> {
    let response = report(server, path, Some(PASSWORD)).await;
    assert_eq!(response.status(), 200, "{path}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["truncated"], false);
    body["rows"].as_array().unwrap().clone()
}

#[tokio::test]
async fn every_report_answers_from_the_fixture_as_json_and_csv() {
    let server = server().await;
    let base = load_fixture(&server).await;
    let range = format!(
        "app_id={APP_ID}&from={}&to={}",
        (base - Duration::days(1)).format("%Y-%m-%d"),
        (Utc::now() + Duration::days(1)).format("%Y-%m-%d")
    );

    assert_eq!(
        rows(&server, &format!("/top_events?{range}")).await,
        [
            json!(["page", 6, 4]),
            json!(["Order Completed", 3, 2]),
            json!(["Signed Up", 3, 3]),
            json!(["identify", 1, 1])
        ]
    );
    assert_eq!(
        rows(&server, &format!("/top_events?{range}&limit=2"))
            .await
            .len(),
        2
    );
    assert_eq!(
        rows(&server, &format!("/top_pages?{range}")).await,
        [json!(["/", 4, 3]), json!(["/pricing", 2, 2])]
    );
    assert_eq!(
        rows(&server, &format!("/top_referrers?{range}")).await,
        [
            json!(["www.google.com", 2, 2]),
            json!(["news.ycombinator.com", 1, 1])
        ]
    );
    assert_eq!(
        rows(&server, &format!("/utm_campaigns?{range}")).await,
        [json!(["google", "cpc", "spring", 2, 2])]
    );
    assert_eq!(
        rows(
            &server,
            &format!("/technology?{range}&dimension=device_class")
        )
        .await,
        [
            json!(["desktop", 2, 9]),
            json!(["mobile", 1, 3]),
            json!(["bot", 1, 1])
        ]
    );
    let funnel = rows(
        &server,
        &format!("/funnel?{range}&steps=Signed%20Up,Order%20Completed&window=1d"),
    )
    .await;
    assert_eq!(funnel[0], json!([1, "Signed Up", 3]));
    assert_eq!(funnel.len(), 2);
    for path in [
        format!("/events_over_time?{range}&bucket=day"),
        format!("/events_over_time?{range}&bucket=hour"),
        format!("/events_over_time?{range}&bucket=week"),
        format!("/unique_users?{range}"),
        format!("/retention?{range}"),
    ] {
        assert!(!rows(&server, &path).await.is_empty(), "{path}");
    }

    let csv = report(
        &server,
        &format!("/top_pages?{range}&format=csv"),
        Some(PASSWORD),
    )
    .await;
    assert_eq!(csv.status(), 200);
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        csv.headers()["content-disposition"],
        "attachment; filename=\"top_pages.csv\""
    );
    assert_eq!(
        csv.text().await.unwrap(),
        "page_path,views,visitors\n/,4,3\n/pricing,2,2\n"
    );

    let listed: Value = report(&server, "", Some(PASSWORD))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["reports"].as_array().unwrap().len(), 9);
    server.cleanup().await;
}

#[tokio::test]
async fn credentials_and_parameters_are_checked_and_nothing_writes() {
    let server = server().await;
    let top = format!("/top_events?app_id={APP_ID}");
    for password in [None, Some("wrong")] {
        let response = report(&server, &top, password).await;
        assert_eq!(response.status(), 401, "{password:?}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Basic realm=\"Switchboard\", charset=\"UTF-8\""
        );
    }
    let app = format!("app_id={APP_ID}");
    let refused = [
        ("/top_events".to_owned(), "app_id: is required"),
        (
            "/top_events?app_id=nope".to_owned(),
            "app_id: is not a configured app",
        ),
        (
            format!("/top_events?{app}&limit=0"),
            "limit: must be a whole number from 1 to 100",
        ),
        (
            format!("/top_events?{app}&limt=5"),
            "query: unknown parameter `limt`",
        ),
        (
            format!("/events_over_time?{app}&bucket=minute"),
            "bucket: must be hour, day or week",
        ),
        (
            format!("/events_over_time?{app}&bucket=hour&from=2026-01-01&to=2026-03-01"),
            "to: the range may span at most 31 days",
        ),
        (
            format!("/top_pages?{app}&from=2024-01-01&to=2026-01-01"),
            "to: the range may span at most 366 days",
        ),
        (
            format!("/top_pages?{app}&from=2026-01-02&to=2026-01-01"),
            "from: must be before `to`",
        ),
        (
            format!("/top_pages?{app}&from=soon"),
            "from: must be an RFC 3339 time or a YYYY-MM-DD date",
        ),
        (
            format!("/technology?{app}&dimension=cpu"),
            "dimension: must be browser, os or device_class",
        ),
        (
            format!("/funnel?{app}&steps=one"),
            "steps: must list 2 to 5 event names",
        ),
        (
            format!("/funnel?{app}&steps=a,b&window=1y"),
            "window: must be like 30m, 12h or 7d, at most 90d",
        ),
        (
            format!("/top_events?{app}&format=xml"),
            "format: must be json or csv",
        ),
    ];
    for (path, reason) in refused {
        let response = report(&server, &path, Some(PASSWORD)).await;
        assert_eq!(response.status(), 400, "{path}");
        let error = response.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(error.starts_with(reason), "{path}: {error}");
    }
    assert_eq!(
        report(&server, "/drop_everything", Some(PASSWORD))
            .await
            .status(),
        404
    );

    // Parameters are bound, never spliced, and the transaction is read-only as the analyst.
    let hostile = format!("/funnel?{app}&steps=a');%20DELETE%20FROM%20events;%20--,b");
    assert_eq!(
        rows(&server, &hostile).await,
        [
            json!([1, "a'); DELETE FROM events; --", 0]),
            json!([2, "b", 0])
        ]
    );
    let post = reqwest::Client::new()
        .post(format!(
            "http://{}/api/reports/top_events?{app}",
            server.admin
        ))
        .basic_auth("admin", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert!(post.status().is_client_error(), "{}", post.status());
    server.cleanup().await;
}
