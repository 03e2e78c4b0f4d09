//! The admin listener's dashboard: the read-only reports API (`/api/reports/*`) behind HTTP
//! Basic auth (user `admin`, `admin.password`), for the web console and for scripts.
//!
//! Never writes: every report runs in a read-only transaction as `switchboard_analyst`.

mod auth;
pub mod reports;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
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
}

struct Dashboard {
    config: DashboardConfig,
    pool: PgPool,
}

/// Most database connections the reports use at once.
const REPORT_CONNECTIONS: u32 = 2;

/// The dashboard's routes (GET only), or an error if the database URL is not one.
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
        .and(list.or(report).unify())
        .recover(auth::recover)
        .unify()
        .boxed())
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
