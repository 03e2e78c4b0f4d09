//! The admin listener's dashboard: the web console (`/dashboard`, its files embedded in the
//! binary) and the read-only reports API (`/api/reports/*`) behind it, both behind HTTP Basic
//! auth (user `admin`, `admin.password`); `GET /` redirects to the console.
//!
//! Never writes: every report runs in a read-only transaction as `switchboard_analyst`.

mod auth;
pub mod console;
pub mod dead;
pub mod reports;
pub mod system;
mod web;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::postgres::{PgArguments, PgPoolOptions};
use sqlx::query::QueryScalar;
use sqlx::{PgPool, Postgres};
use warp::filters::BoxedFilter;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use reports::{Report, ReportError, Request};

pub use auth::{debug_secret, ADMIN_USER};

/// What the dashboard serves from.
#[derive(custom_debug::Debug)]
pub struct DashboardConfig {
    /// `admin.password`; `None` serves without auth (only allowed on a loopback admin bind).
    #[debug(with = auth::debug_secret)]
    pub password: Option<String>,
    /// The database the reports read (a small pool of its own, opened on first use).
    #[debug(skip)]
    pub database_url: String,
    /// The configured apps' ids.
    pub apps: Vec<String>,
    /// The statement timeout of one report.
    pub report_timeout: Duration,
    /// The system view's samples.
    #[debug(skip)]
    pub system: Arc<system::System>,
    /// The debug console's apps, gateway and event creator.
    pub console: console::ConsoleConfig,
    /// Reads what sits in the dead-letter queue.
    #[debug(skip)]
    pub dead_letters: dead::DeadLetterSource,
    /// Whether any app has a webhook (else the failing deliveries show "none configured").
    pub webhooks_configured: bool,
}

struct Dashboard {
    config: DashboardConfig,
    pool: PgPool,
}

/// Most database connections the reports use at once.
const REPORT_CONNECTIONS: u32 = 2;

/// The dashboard's routes, or an error if the database URL is not one.
pub fn routes(config: DashboardConfig) -> Result<BoxedFilter<(Response,)>, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(REPORT_CONNECTIONS)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&config.database_url)?;
    let dashboard = Arc::new(Dashboard { config, pool });
    let with = {
        let dashboard = dashboard.clone();
        warp::any().map(move || dashboard.clone())
    };
    let authorized = with
        .clone()
        .and(warp::header::optional::<String>("authorization"))
        .and_then(
            |dashboard: Arc<Dashboard>, header: Option<String>| async move {
                if auth::allows(dashboard.config.password.as_deref(), header.as_deref()) {
                    Ok(dashboard)
                } else {
                    Err(warp::reject::custom(auth::Unauthorized))
                }
            },
        );
    let root = warp::path::end().map(|| {
        warp::redirect::see_other(warp::http::Uri::from_static("/dashboard")).into_response()
    });
    let page = warp::path!("dashboard")
        .and(authorized.clone())
        .map(|_: Arc<Dashboard>| web::index());
    let asset = warp::path!("dashboard" / "assets" / String)
        .and(authorized.clone())
        .map(|name: String, _: Arc<Dashboard>| web::asset(&name));
    let apps =
        warp::path!("api" / "apps")
            .and(authorized.clone())
            .map(|dashboard: Arc<Dashboard>| {
                warp::reply::json(&json!({ "apps": dashboard.config.apps })).into_response()
            });
    let stream = warp::path!("api" / "system" / "stream")
        .and(authorized.clone())
        .and(warp::query::<HashMap<String, String>>())
        .map(
            |dashboard: Arc<Dashboard>, query: HashMap<String, String>| {
                let app_id = query.get("app_id").cloned();
                if app_id
                    .as_ref()
                    .is_some_and(|id| !dashboard.config.apps.contains(id))
                {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "app_id: is not a configured app".into(),
                    );
                }
                let events = dashboard.config.system.stream(app_id);
                warp::sse::reply(warp::sse::keep_alive().stream(events)).into_response()
            },
        );
    let connection = warp::path!("api" / "console" / String)
        .and(authorized.clone())
        .map(|app_id: String, dashboard: Arc<Dashboard>| {
            dashboard.config.console.connection(&app_id)
        });
    let console_auth = warp::path!("api" / "console" / String / "auth")
        .and(authorized.clone())
        .and(json_body())
        .map(
            |app_id: String, dashboard: Arc<Dashboard>, request: console::AuthRequest| {
                dashboard.config.console.authorize(&app_id, &request)
            },
        );
    let console_events = warp::path!("api" / "console" / String / "events")
        .and(authorized.clone())
        .and(json_body())
        .then(
            |app_id: String, dashboard: Arc<Dashboard>, request: console::EventRequest| async move {
                dashboard.config.console.trigger(&app_id, request).await
            },
        );
    let console_webhooks = warp::path!("api" / "console" / String / "webhooks")
        .and(authorized.clone())
        .and(warp::query::<console::WebhookQuery>())
        .then(
            |app_id: String, dashboard: Arc<Dashboard>, query: console::WebhookQuery| async move {
                dashboard
                    .config
                    .console
                    .webhooks(&dashboard.pool, &app_id, &query)
                    .await
            },
        );
    let posts = warp::post().and(console_auth.or(console_events).unify());
    let dead_letters = warp::path!("api" / "dead-letters")
        .and(authorized.clone())
        .then(|dashboard: Arc<Dashboard>| async move {
            dead::answer(&dashboard.config.dead_letters).await
        });
    let webhook_failures = warp::path!("api" / "webhook-failures")
        .and(authorized.clone())
        .then(|dashboard: Arc<Dashboard>| async move {
            dead::webhook_failures(&dashboard.pool, dashboard.config.webhooks_configured).await
        });
    let list = warp::path!("api" / "reports")
        .and(authorized.clone())
        .map(|_: Arc<Dashboard>| list_reports().into_response());
    let report = warp::path!("api" / "reports" / String)
        .and(authorized)
        .and(warp::query::<HashMap<String, String>>())
        .then(
            |name: String, dashboard: Arc<Dashboard>, query: HashMap<String, String>| async move {
                answer(&dashboard, &name, &query).await
            },
        );
    Ok(warp::get()
        .and(
            root.or(page)
                .unify()
                .or(asset)
                .unify()
                .or(apps)
                .unify()
                .or(stream)
                .unify()
                .or(connection)
                .unify()
                .or(console_webhooks)
                .unify()
                .or(dead_letters)
                .unify()
                .or(webhook_failures)
                .unify()
                .or(list)
                .unify()
                .or(report)
                .unify(),
        )
        .or(posts)
        .unify()
        .recover(auth::recover)
        .unify()
        .boxed())
}

/// Runs one query that answers a JSON value in a read-only transaction (the dashboard never
/// writes).
async fn read_only(
    pool: &PgPool,
    query: QueryScalar<'_, Postgres, Value, PgArguments>,
) -> Result<Value, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await?;
    let value = query.fetch_one(&mut *tx).await?;
    tx.rollback().await?;
    Ok(value)
}

/// A JSON body, refused unless sent as `application/json`: a cross-site form cannot send that,
/// so a browser logged in to the dashboard cannot be made to post here by another page.
fn json_body<T: serde::de::DeserializeOwned + Send>(
) -> impl Filter<Extract = (T,), Error = warp::Rejection> + Clone {
    warp::header::exact_ignore_case("content-type", "application/json")
        .and(warp::body::content_length_limit(console::MAX_BODY_BYTES))
        .and(warp::body::json())
}

fn list_reports() -> warp::reply::Json {
    let reports: Vec<_> = Report::ALL
        .iter()
        .map(|r| {
            json!({
                "name": r.name(),
                "parameters": r.parameters(),
                "columns": r.columns(),
            })
        })
        .collect();
    warp::reply::json(&json!({ "reports": reports }))
}

async fn answer(dashboard: &Dashboard, name: &str, query: &HashMap<String, String>) -> Response {
    let Some(report) = Report::from_name(name) else {
        return error(StatusCode::NOT_FOUND, format!("no report `{name}`"));
    };
    let request = match Request::parse(report, query, &dashboard.config.apps, chrono::Utc::now()) {
        Ok(request) => request,
        Err(invalid) => return error(StatusCode::BAD_REQUEST, invalid.to_string()),
    };
    let csv = request.csv;
    match reports::run(&dashboard.pool, request, dashboard.config.report_timeout).await {
        Ok(table) if csv => warp::reply::with_header(
            warp::reply::with_header(
                table.to_csv(),
                header::CONTENT_TYPE,
                "text/csv; charset=utf-8",
            ),
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{}.csv\"", report.name()),
        )
        .into_response(),
        Ok(table) => warp::reply::json(&table.to_json()).into_response(),
        Err(failure) => {
            tracing::warn!(error = %failure, report = report.name(), "report failed");
            let status = match failure {
                ReportError::Timeout(_) | ReportError::Unavailable(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                ReportError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, failure.to_string())
        }
    }
}

fn error(status: StatusCode, message: String) -> Response {
    warp::reply::with_status(warp::reply::json(&json!({ "error": message })), status)
        .into_response()
}
