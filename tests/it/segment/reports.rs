//! The `reports` schema against fixture data, the analyst role, and the example queries of
//! docs/REPORTS.md (parsed out of the document, so doc and test cannot drift).

use chrono::{DateTime, Datelike, Duration, Utc};
use serde_json::json;
use sqlx::{Connection, PgConnection, Row};

use super::{iso, ok, post, CHROME, FIREFOX_LINUX, GOOGLEBOT, ROWS_SQL, SAFARI_IPHONE};
use crate::common::{TestServer, APP_ID};

/// Monday 00:00 UTC three weeks before this week's Monday: the fixture's week 0.
fn fixture_base() -> DateTime<Utc> {
    let today = Utc::now().date_naive();
    let monday = today - Duration::days(i64::from(today.weekday().num_days_from_monday()));
    (monday - Duration::weeks(3))
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
}

/// Four visitors over three weeks (see the expectations in `reports_match_the_fixture`).
pub(super) async fn load_fixture(server: &TestServer) -> DateTime<Utc> {
    let base = fixture_base();
    // week, day of week (0 = Monday), hour, minute
    let at = |week: i64, day: i64, hour: i64, minute: i64| {
        iso(base
            + Duration::weeks(week)
            + Duration::days(day)
            + Duration::hours(hour)
            + Duration::minutes(minute))
    };
    let utm = "?utm_source=google&utm_medium=cpc&utm_campaign=spring";
    let visitors = [
        (
            CHROME,
            json!([
                {"type": "identify", "userId": "u1", "timestamp": at(0, 0, 9, 59), "traits": {"plan": "pro"}},
                {"type": "page", "userId": "u1", "timestamp": at(0, 0, 10, 0),
                 "properties": {"path": "/", "url": format!("https://shop.example/{utm}"), "search": utm,
                                "referrer": "https://www.google.com/search?q=shop", "title": "Home"}},
                {"type": "track", "userId": "u1", "event": "Signed Up", "timestamp": at(0, 0, 10, 1)},
                {"type": "track", "userId": "u1", "event": "Order Completed", "timestamp": at(0, 0, 10, 5), "properties": {"total": 30}},
                {"type": "page", "userId": "u1", "timestamp": at(1, 1, 9, 0),
                 "context": {"page": {"path": "/pricing", "url": "https://shop.example/pricing", "referrer": "https://shop.example/"}}},
                {"type": "track", "userId": "u1", "event": "Order Completed", "timestamp": at(2, 2, 12, 0), "properties": {"total": 12.5}}
            ]),
        ),
        (
            SAFARI_IPHONE,
            json!([
                {"type": "page", "userId": "u2", "timestamp": at(0, 1, 11, 0),
                 "properties": {"path": "/", "url": "https://shop.example/", "referrer": "https://news.ycombinator.com/item?id=1"}},
                {"type": "track", "userId": "u2", "event": "Signed Up", "timestamp": at(0, 1, 11, 30)},
                {"type": "page", "userId": "u2", "timestamp": at(1, 1, 12, 0), "properties": {"path": "/", "url": "https://shop.example/"}}
            ]),
        ),
        (
            FIREFOX_LINUX,
            json!([
                {"type": "page", "anonymousId": "a3", "timestamp": at(1, 2, 8, 0),
                 "context": {"page": {"path": "/pricing", "url": "https://shop.example/pricing", "referrer": "https://www.google.com/"},
                             "campaign": {"source": "google", "medium": "cpc", "name": "spring"}}},
                {"type": "track", "anonymousId": "a3", "event": "Signed Up", "timestamp": at(1, 2, 8, 10)},
                {"type": "track", "anonymousId": "a3", "event": "Order Completed", "timestamp": at(1, 2, 8, 40), "properties": {"total": 20}}
            ]),
        ),
        (
            GOOGLEBOT,
            json!([
                {"type": "page", "anonymousId": "bot-1", "timestamp": at(1, 2, 10, 0), "properties": {"path": "/", "url": "https://shop.example/"}}
            ]),
        ),
    ];
    for (user_agent, batch) in visitors {
        let body = json!({"batch": batch, "context": {"userAgent": user_agent}});
        assert_eq!(post(server, "batch", &body).await, ok());
    }
    assert_eq!(server.wait_count(ROWS_SQL, 13).await, 13);
    base
}

async fn analyst(server: &TestServer) -> PgConnection {
    let mut db = PgConnection::connect(&server.config.database_url)
        .await
        .unwrap();
    sqlx::query("SET ROLE switchboard_analyst")
        .execute(&mut db)
        .await
        .unwrap();
    db
}

#[tokio::test]
async fn reports_match_the_fixture() {
    let server = TestServer::start().await;
    let base = load_fixture(&server).await;
    let mut db = analyst(&server).await;
    let from = base - Duration::days(1);
    let to = Utc::now() + Duration::minutes(1);
    let day =
        |week: i64, day: i64| (base + Duration::weeks(week) + Duration::days(day)).date_naive();
    let hour = |week: i64, day: i64, hour: i64| {
        base + Duration::weeks(week) + Duration::days(day) + Duration::hours(hour)
    };

    let top_events: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT * FROM reports.top_events($1, $2, $3)")
            .bind(APP_ID)
            .bind(from)
            .bind(to)
            .fetch_all(&mut db)
            .await
            .unwrap();
    let expected: Vec<(String, i64, i64)> = vec![
        ("page".into(), 6, 4),
        ("Order Completed".into(), 3, 2),
        ("Signed Up".into(), 3, 3),
        ("identify".into(), 1, 1),
    ];
    assert_eq!(top_events, expected);
    let limited: i64 = sqlx::query_scalar("SELECT count(*) FROM reports.top_events($1, $2, $3, 2)")
        .bind(APP_ID)
        .bind(from)
        .bind(to)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(limited, 2);

    let top_pages: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT * FROM reports.top_pages($1, $2, $3)")
            .bind(APP_ID)
            .bind(from)
            .bind(to)
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(top_pages, [("/".into(), 4, 3), ("/pricing".into(), 2, 2)]);

    let referrers: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT * FROM reports.top_referrers($1, $2, $3)")
            .bind(APP_ID)
            .bind(from)
            .bind(to)
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(
        referrers,
        [
            ("www.google.com".into(), 2, 2),
            ("news.ycombinator.com".into(), 1, 1)
        ]
    );

    type Campaign = (Option<String>, Option<String>, Option<String>, i64, i64);
    let campaigns: Vec<Campaign> =
        sqlx::query_as("SELECT * FROM reports.utm_campaigns($1, $2, $3)")
            .bind(APP_ID)
            .bind(from)
            .bind(to)
            .fetch_all(&mut db)
            .await
            .unwrap();
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(campaigns, [(s("google"), s("cpc"), s("spring"), 2, 2)]);

    let technology = |dimension: &'static str| {
        sqlx::query_as::<_, (Option<String>, i64, i64)>(
            "SELECT * FROM reports.technology($1, $2, $3, $4)",
        )
        .bind(APP_ID)
        .bind(dimension)
        .bind(from)
        .bind(to)
    };
    let browsers = technology("browser").fetch_all(&mut db).await.unwrap();
    assert_eq!(
        browsers,
        [
            (s("Chrome"), 1, 6),
            (s("Firefox"), 1, 3),
            (s("Safari"), 1, 3),
            (s("Googlebot"), 1, 1)
        ]
    );
    let systems = technology("os").fetch_all(&mut db).await.unwrap();
    assert_eq!(
        systems,
        [
            (s("Windows 10"), 1, 6),
            (s("Linux"), 1, 3),
            (s("iPhone"), 1, 3),
            (None, 1, 1)
        ]
    );
    let devices = technology("device_class").fetch_all(&mut db).await.unwrap();
    assert_eq!(
        devices,
        [(s("desktop"), 2, 9), (s("mobile"), 1, 3), (s("bot"), 1, 1)]
    );

    let funnel: Vec<(i32, String, i64)> =
        sqlx::query_as("SELECT * FROM reports.funnel($1, $2, $3, $4, interval '1 hour')")
            .bind(APP_ID)
            .bind(vec!["page", "Signed Up", "Order Completed"])
            .bind(from)
            .bind(to)
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(
        funnel,
        [
            (1, "page".into(), 4),
            (2, "Signed Up".into(), 3),
            (3, "Order Completed".into(), 2)
        ]
    );
    let tight: Vec<i64> = sqlx::query_scalar(
        "SELECT users FROM reports.funnel($1, $2, $3, $4, interval '20 minutes')",
    )
    .bind(APP_ID)
    .bind(vec!["page", "Signed Up", "Order Completed"])
    .bind(from)
    .bind(to)
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        tight,
        [4, 2, 1],
        "u2 signs up after 30 min, a3 orders after 40"
    );

    let retention: Vec<(chrono::NaiveDate, i64, i32, i64, String)> = sqlx::query_as(
        "SELECT cohort_week, cohort_users, week, active_users, retention::text
         FROM reports.retention_weekly($1, $2, $3)",
    )
    .bind(APP_ID)
    .bind(from.date_naive())
    .bind(to.date_naive())
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        retention,
        [
            (day(0, 0), 2, 0, 2, "100.0".into()),
            (day(0, 0), 2, 1, 2, "100.0".into()),
            (day(0, 0), 2, 2, 1, "50.0".into()),
            (day(1, 0), 2, 0, 2, "100.0".into()),
        ]
    );

    let daily: Vec<(chrono::NaiveDate, i64)> = sqlx::query_as(
        "SELECT day, users FROM reports.unique_users_per_day WHERE app_id = $1 ORDER BY day",
    )
    .bind(APP_ID)
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        daily,
        [
            (day(0, 0), 1),
            (day(0, 1), 1),
            (day(1, 1), 2),
            (day(1, 2), 2),
            (day(2, 2), 1)
        ]
    );
    let hourly: Vec<(DateTime<Utc>, i64)> = sqlx::query_as(
        "SELECT hour, users FROM reports.active_users_per_hour WHERE app_id = $1 ORDER BY hour",
    )
    .bind(APP_ID)
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        hourly,
        [
            (hour(0, 0, 9), 1),
            (hour(0, 0, 10), 1),
            (hour(0, 1, 11), 1),
            (hour(1, 1, 9), 1),
            (hour(1, 1, 12), 1),
            (hour(1, 2, 8), 1),
            (hour(1, 2, 10), 1),
            (hour(2, 2, 12), 1)
        ]
    );

    let over_time: Vec<(DateTime<Utc>, String, String, i64)> = sqlx::query_as(
        "SELECT * FROM reports.events_over_time($1, 'hour', $2, $3) WHERE bucket = $4",
    )
    .bind(APP_ID)
    .bind(from)
    .bind(to)
    .bind(hour(1, 2, 8))
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        over_time,
        [
            (hour(1, 2, 8), "track".into(), "Order Completed".into(), 1),
            (hour(1, 2, 8), "track".into(), "Signed Up".into(), 1),
            (hour(1, 2, 8), "track".into(), "page".into(), 1)
        ]
    );
    let buckets = |bucket: &'static str| {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(DISTINCT bucket) FROM reports.events_over_time($1, $2, $3, $4)",
        )
        .bind(APP_ID)
        .bind(bucket)
        .bind(from)
        .bind(to)
    };
    assert_eq!(buckets("minute").fetch_one(&mut db).await.unwrap(), 13);
    assert_eq!(buckets("hour").fetch_one(&mut db).await.unwrap(), 8);
    assert_eq!(buckets("day").fetch_one(&mut db).await.unwrap(), 5);
    assert_eq!(buckets("week").fetch_one(&mut db).await.unwrap(), 3);
    assert_eq!(buckets("fortnight").fetch_one(&mut db).await.unwrap(), 0);

    let per_day: Vec<(String, i64)> = sqlx::query_as(
        "SELECT name, events FROM reports.events_per_day WHERE app_id = $1 AND day = $2 ORDER BY name",
    )
    .bind(APP_ID)
    .bind(day(0, 0))
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        per_day,
        [
            ("Order Completed".into(), 1),
            ("Signed Up".into(), 1),
            ("identify".into(), 1),
            ("page".into(), 1)
        ]
    );
    let per_hour: i64 = sqlx::query_scalar(
        "SELECT sum(events)::bigint FROM reports.events_per_hour WHERE app_id = $1 AND hour = $2",
    )
    .bind(APP_ID)
    .bind(hour(0, 0, 10))
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(per_hour, 3);
    let page_views: Vec<(Option<String>, Option<String>, String)> = sqlx::query_as(
        "SELECT referrer_host, page_host, user_key FROM reports.page_views
         WHERE app_id = $1 AND page_path = '/pricing' ORDER BY occurred_at",
    )
    .bind(APP_ID)
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        page_views,
        [
            (s("shop.example"), s("shop.example"), "u1".into()),
            (s("www.google.com"), s("shop.example"), "a3".into())
        ]
    );
    server.cleanup().await;
}

#[tokio::test]
async fn the_analyst_reads_and_cannot_write() {
    let server = TestServer::start().await;
    load_fixture(&server).await;
    let mut db = analyst(&server).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(rows, 13);
    let rolled: i64 =
        sqlx::query_scalar("SELECT sum(events)::bigint FROM reports.events_per_minute")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(rolled, 13);
    for statement in [
        "INSERT INTO events (id, app_id, source, channel, name, data, occurred_at, received_at)
         VALUES (gen_random_uuid(), 'x', 'api', 'c', 'n', '{}', now(), now())",
        "UPDATE events SET name = 'changed'",
        "DELETE FROM events",
        "TRUNCATE events",
        "INSERT INTO reports.events_per_minute VALUES ('x', 'api', 'n', now(), 1)",
        "UPDATE reports.active_users_daily SET user_key = 'x'",
        "DELETE FROM reports.active_users_hourly",
        "SELECT * FROM event_dedup",
        "DELETE FROM event_dedup",
        "CREATE TABLE reports.mine (x int)",
        "CREATE TABLE public.mine (x int)",
        "SELECT * FROM idempotency_dedup",
        "SELECT switchboard_ensure_partition(current_date + 30)",
    ] {
        let error = sqlx::query(statement)
            .execute(&mut db)
            .await
            .expect_err(statement);
        let code = error
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{statement}: {error}");
    }
    server.cleanup().await;
}

/// The SQL blocks under "Ten example queries" in docs/REPORTS.md.
fn documented_queries() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/REPORTS.md"))
        .expect("docs/REPORTS.md");
    let (_, examples) = doc
        .split_once("## Ten example queries")
        .expect("the examples section");
    examples
        .split("```sql\n")
        .skip(1)
        .map(|block| {
            block
                .split_once("```")
                .expect("a closed sql block")
                .0
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn the_documented_queries_run_as_the_analyst() {
    let queries = documented_queries();
    assert_eq!(queries.len(), 10);
    let server = TestServer::start().await;
    load_fixture(&server).await;
    let mut db = analyst(&server).await;
    for (i, query) in queries.iter().enumerate() {
        let rows = sqlx::query(query)
            .fetch_all(&mut db)
            .await
            .unwrap_or_else(|error| panic!("query {}: {error}\n{query}", i + 1));
        assert!(
            !rows.is_empty(),
            "query {} returned nothing:\n{query}",
            i + 1
        );
    }
    // Spot checks against the fixture.
    let funnel: Vec<i64> = sqlx::query(&queries[7])
        .fetch_all(&mut db)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get("users"))
        .collect();
    assert_eq!(funnel, [4, 3, 2]);
    let revenue: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT revenue::text FROM ({}) AS q",
        queries[9].trim().trim_end_matches(';')
    ))
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(revenue, ["30", "20", "12.5"]);
    let campaigns: Vec<(String, i64, i64)> = sqlx::query_as(&queries[5])
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert_eq!(campaigns, [("spring".into(), 2, 2)]);
    server.cleanup().await;
}
