//! The Grafana dashboards of `dashboards/grafana/`: every metric `switchboard.json` names is one
//! `/metrics` exposes after some traffic, and every query of `reports.json` names only tables,
//! views and functions the schema has — and runs, as `switchboard_analyst`, with Grafana's
//! macros filled in.

use std::collections::BTreeSet;

use ingest::WebhookConfig;
use protocol::webhook::EventType;
use serde_json::{json, Value};
use sqlx::{Connection, Row};

use super::dead_letter_one;
use crate::common::{TestServer, KEY};

const SWITCHBOARD: &str = include_str!("../../../dashboards/grafana/switchboard.json");
const REPORTS: &str = include_str!("../../../dashboards/grafana/reports.json");

/// Every string under a key named `key`, anywhere in `value`.
fn strings_at(value: &Value, key: &str, found: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                match field {
                    Value::String(text) if name == key => found.push(text.clone()),
                    other => strings_at(other, key, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| strings_at(item, key, found)),
        _ => {}
    }
}

/// The identifiers in `text` that start with `prefix` (`switchboard_`, `reports.`).
fn names(text: &str, prefix: &str) -> BTreeSet<String> {
    text.match_indices(prefix)
        .map(|(at, _)| {
            let rest = &text[at + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            format!("{prefix}{}", &rest[..end])
        })
        .collect()
}

#[tokio::test]
async fn every_metric_of_the_grafana_dashboard_is_exposed_after_traffic() {
    let dashboard: Value = serde_json::from_str(SWITCHBOARD).unwrap();
    assert_eq!(dashboard["__inputs"][0]["pluginId"], "prometheus");
    let mut exprs = Vec::new();
    strings_at(&dashboard, "expr", &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let named: BTreeSet<String> = exprs
        .iter()
        .flat_map(|e| names(e, "switchboard_"))
        .collect();

    // A webhook that can never be delivered (nothing listens on the discard port), given up
    // after a second: every webhook metric has something to count.
    let server = TestServer::start_with(|c| {
        c.apps[0].webhooks = vec![WebhookConfig {
            event_types: vec![EventType::CacheMiss],
            ..WebhookConfig::new("http://127.0.0.1:9/never")
        }];
        c.webhooks.batch_window_ms = 10;
        c.webhooks.retry_period_secs = 1;
        c.webhooks.backoff_base_ms = 50;
        c.webhooks.backoff_max_ms = 100;
    })
    .await;
    let mut client = server.connect().await;
    client.subscribe("grafana").await;
    client.subscribe("cache-grafana").await;
    assert_eq!(client.next_app_event().await["event"], "pusher:cache_miss");
    assert_eq!(server.trigger("grafana", "ev", "{}").await.status(), 200);
    client.next_app_event().await;
    let tracked = reqwest::Client::new()
        .post(server.url("/v1/track"))
        .basic_auth(KEY, Some(""))
        .json(&json!({"userId": "u1", "event": "Signed Up"}))
        .send()
        .await
        .unwrap();
    assert_eq!(tracked.status(), 200);
    server.wait_count("SELECT count(*) FROM events", 2).await;
    dead_letter_one(&server).await;
    let mut metrics = server.metrics().await;
    for _ in 0..200 {
        let counted = [
            "switchboard_dead_lettered_total{",
            "switchboard_webhook_dead_total ",
        ];
        if counted.iter().all(|name| metrics.contains(name)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        metrics = server.metrics().await;
    }
    let exposed: BTreeSet<&str> = metrics
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = named
        .iter()
        .filter(|name| !exposed.contains(name.as_str()))
        .collect();
    assert!(missing.is_empty(), "not in /metrics: {missing:?}");
    server.cleanup().await;
}

/// A query with Grafana's macros and the dashboard's variables filled in.
fn filled(sql: &str) -> String {
    let (from, to) = ("'2026-01-01T00:00:00Z'", "'2026-02-01T00:00:00Z'");
    let mut sql = sql
        .replace("$__timeFrom()", from)
        .replace("$__timeTo()", to)
        .replace("${app_id}", "app-id")
        .replace("${funnel_steps}", "Signed Up,Order Completed");
    while let Some(start) = sql.find("$__timeFilter(") {
        let open = start + "$__timeFilter(".len();
        let close = open + sql[open..].find(')').expect("a closing parenthesis");
        let column = sql[open..close].to_owned();
        sql.replace_range(start..=close, &format!("{column} BETWEEN {from} AND {to}"));
    }
    assert!(!sql.contains('$'), "an unknown macro or variable: {sql}");
    sql
}

#[tokio::test]
async fn every_query_of_the_reports_dashboard_runs_against_the_schema() {
    let dashboard: Value = serde_json::from_str(REPORTS).unwrap();
    assert_eq!(
        dashboard["__inputs"][0]["pluginId"],
        "grafana-postgresql-datasource"
    );
    let mut queries = Vec::new();
    strings_at(&dashboard, "rawSql", &mut queries);
    strings_at(&dashboard["templating"], "query", &mut queries);
    queries.retain(|q| q.contains("SELECT"));
    assert!(queries.len() >= 10, "{queries:?}");

    let server = TestServer::start().await;
    let mut db = server.db().await;
    let known: BTreeSet<String> = sqlx::query(
        "SELECT 'reports.' || c.relname AS name FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'reports' AND c.relkind IN ('r', 'v', 'm', 'p') \
         UNION SELECT 'reports.' || p.proname FROM pg_proc p \
         JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'reports'",
    )
    .fetch_all(&mut db)
    .await
    .unwrap()
    .iter()
    .map(|row| row.get("name"))
    .collect();
    for query in &queries {
        for name in names(query, "reports.") {
            assert!(known.contains(&name), "{name} is not in the schema");
        }
        let mut tx = db.begin().await.unwrap();
        for statement in [
            "SET TRANSACTION READ ONLY",
            "SET LOCAL ROLE switchboard_analyst",
        ] {
            sqlx::query(statement).execute(&mut *tx).await.unwrap();
        }
        if let Err(error) = sqlx::query(&filled(query)).fetch_all(&mut *tx).await {
            panic!("{query}\nfails: {error}");
        }
        tx.rollback().await.unwrap();
    }
    drop(db);
    server.cleanup().await;
}
