//! The read-only reports API: each report is one fixed query over the `reports` schema, run in
//! a read-only transaction as `switchboard_analyst` under a statement timeout, its parameters
//! validated first. Answers are JSON (`columns` and `rows`) or CSV.

mod params;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::postgres::PgArguments;
use sqlx::query::QueryScalar;
use sqlx::{PgPool, Postgres};

use params::Query;
pub use params::{
    InvalidParameter, MAX_FUNNEL_WINDOW_DAYS, MAX_HOURLY_RANGE_DAYS, MAX_LIMIT, MAX_RANGE_DAYS,
};

/// Most rows one report answers with; beyond that the answer says `truncated`.
pub const MAX_ROWS: usize = 10_000;

/// One report: its name in the URL, its parameters, its columns and its query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    EventsOverTime,
    UniqueUsers,
    TopEvents,
    TopPages,
    TopReferrers,
    UtmCampaigns,
    Technology,
    Funnel,
    Retention,
}

impl Report {
    pub const ALL: [Report; 9] = [
        Report::EventsOverTime,
        Report::UniqueUsers,
        Report::TopEvents,
        Report::TopPages,
        Report::TopReferrers,
        Report::UtmCampaigns,
        Report::Technology,
        Report::Funnel,
        Report::Retention,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Report::EventsOverTime => "events_over_time",
            Report::UniqueUsers => "unique_users",
            Report::TopEvents => "top_events",
            Report::TopPages => "top_pages",
            Report::TopReferrers => "top_referrers",
            Report::UtmCampaigns => "utm_campaigns",
            Report::Technology => "technology",
            Report::Funnel => "funnel",
            Report::Retention => "retention",
        }
    }

    pub fn from_name(name: &str) -> Option<Report> {
        Report::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The parameters it takes besides `app_id`, `from`, `to` and `format`.
    pub fn parameters(self) -> &'static [&'static str] {
        match self {
            Report::EventsOverTime => &["bucket"],
            Report::TopEvents | Report::TopPages | Report::TopReferrers => &["limit"],
            Report::Technology => &["dimension"],
            Report::Funnel => &["steps", "window"],
            Report::UniqueUsers | Report::UtmCampaigns | Report::Retention => &[],
        }
    }

    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Report::EventsOverTime => &["bucket", "source", "name", "events"],
            Report::UniqueUsers => &["day", "users"],
            Report::TopEvents => &["name", "events", "users"],
            Report::TopPages => &["page_path", "views", "visitors"],
            Report::TopReferrers => &["referrer_host", "views", "visitors"],
            Report::UtmCampaigns => &[
                "utm_source",
                "utm_medium",
                "utm_campaign",
                "events",
                "users",
            ],
            Report::Technology => &["value", "users", "events"],
            Report::Funnel => &["step", "name", "users"],
            Report::Retention => &[
                "cohort_week",
                "cohort_users",
                "week",
                "active_users",
                "retention",
            ],
        }
    }

    /// The query; `$1` is the app, `$2` and `$3` the range, then the report's own parameters.
    fn sql(self) -> &'static str {
        match self {
            Report::EventsOverTime => {
                "SELECT bucket, source, name, events FROM reports.events_over_time($1, $4, $2, $3)"
            }
            Report::UniqueUsers => {
                "SELECT day, users FROM reports.unique_users_per_day WHERE app_id = $1 \
                 AND day >= ($2 AT TIME ZONE 'UTC')::date AND day < ($3 AT TIME ZONE 'UTC')::date \
                 ORDER BY day"
            }
            Report::TopEvents => "SELECT * FROM reports.top_events($1, $2, $3, $4)",
            Report::TopPages => "SELECT * FROM reports.top_pages($1, $2, $3, $4)",
            Report::TopReferrers => "SELECT * FROM reports.top_referrers($1, $2, $3, $4)",
            Report::UtmCampaigns => "SELECT * FROM reports.utm_campaigns($1, $2, $3)",
            Report::Technology => "SELECT * FROM reports.technology($1, $4, $2, $3)",
            Report::Funnel => {
                "SELECT * FROM reports.funnel($1, $4, $2, $3, make_interval(secs => $5))"
            }
            Report::Retention => {
                "SELECT * FROM reports.retention_weekly($1, ($2 AT TIME ZONE 'UTC')::date, \
                 ($3 AT TIME ZONE 'UTC')::date)"
            }
        }
    }
}

/// A report's own parameter value, bound after the app and the range.
enum Bind {
    Text(&'static str),
    Int(i32),
    Seconds(f64),
    Names(Vec<String>),
}

/// A validated request: the report, its app, its range and its own parameters.
pub struct Request {
    pub report: Report,
    pub csv: bool,
    app_id: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    binds: Vec<Bind>,
}

impl Request {
    /// Validates `values` for `report`; `apps` are the configured app ids.
    pub fn parse(
        report: Report,
        values: &HashMap<String, String>,
        apps: &[String],
        now: DateTime<Utc>,
    ) -> Result<Request, InvalidParameter> {
        let mut known = vec!["app_id", "from", "to", "format"];
        known.extend_from_slice(report.parameters());
        let query = Query::new(values, &known)?;
        let app_id = query.app_id(apps)?;
        let binds = match report {
            Report::EventsOverTime => vec![Bind::Text(query.bucket()?)],
            Report::TopEvents | Report::TopPages | Report::TopReferrers => {
                vec![Bind::Int(query.limit()?)]
            }
            Report::Technology => vec![Bind::Text(query.dimension()?)],
            Report::Funnel => vec![
                Bind::Names(query.steps()?),
                Bind::Seconds(query.window()?.num_seconds() as f64),
            ],
            Report::UniqueUsers | Report::UtmCampaigns | Report::Retention => Vec::new(),
        };
        let hourly = matches!(binds.first(), Some(Bind::Text("hour")));
        let max_days = if report == Report::EventsOverTime && hourly {
            MAX_HOURLY_RANGE_DAYS
        } else {
            MAX_RANGE_DAYS
        };
        let (from, to) = query.range(now, max_days)?;
        Ok(Request {
            report,
            csv: query.csv()?,
            app_id,
            from,
            to,
            binds,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the report took longer than {0:?}; narrow its range")]
    Timeout(Duration),
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("the report failed")]
    Failed(#[source] sqlx::Error),
}

/// A report's answer: its rows as JSON objects, in the report's order.
#[derive(Debug)]
pub struct Table {
    pub report: Report,
    pub rows: Vec<serde_json::Map<String, Value>>,
    pub truncated: bool,
}

/// Runs `request` on `pool` as `switchboard_analyst`, read-only, within `timeout`.
pub async fn run(pool: &PgPool, request: Request, timeout: Duration) -> Result<Table, ReportError> {
    let wrapped = format!(
        "SELECT coalesce(json_agg(to_jsonb(t)), '[]'::json) FROM ({} LIMIT {}) AS t",
        request.report.sql(),
        MAX_ROWS + 1
    );
    let mut tx = pool.begin().await.map_err(ReportError::Unavailable)?;
    for statement in [
        "SET TRANSACTION READ ONLY".to_owned(),
        "SET LOCAL ROLE switchboard_analyst".to_owned(),
        format!("SET LOCAL statement_timeout = {}", timeout.as_millis()),
    ] {
        sqlx::query(&statement)
            .execute(&mut *tx)
            .await
            .map_err(ReportError::Failed)?;
    }
    let query = bind_all(sqlx::query_scalar(&wrapped), &request);
    let rows: Value = query.fetch_one(&mut *tx).await.map_err(|error| {
        match error.as_database_error().and_then(|e| e.code()) {
            Some(code) if code == "57014" => ReportError::Timeout(timeout),
            _ => ReportError::Failed(error),
        }
    })?;
    let _ = tx.rollback().await;
    let mut rows: Vec<serde_json::Map<String, Value>> = match rows {
        Value::Array(rows) => rows
            .into_iter()
            .filter_map(|row| match row {
                Value::Object(row) => Some(row),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let truncated = rows.len() > MAX_ROWS;
    rows.truncate(MAX_ROWS);
    Ok(Table {
        report: request.report,
        rows,
        truncated,
    })
}

fn bind_all<'q>(
    mut query: QueryScalar<'q, Postgres, Value, PgArguments>,
    request: &Request,
) -> QueryScalar<'q, Postgres, Value, PgArguments> {
    query = query
        .bind(request.app_id.clone())
        .bind(request.from)
        .bind(request.to);
    for bind in &request.binds {
        query = match bind {
            Bind::Text(text) => query.bind(*text),
            Bind::Int(value) => query.bind(*value),
            Bind::Seconds(value) => query.bind(*value),
            Bind::Names(names) => query.bind(names.clone()),
        };
    }
    query
}

impl Table {
    pub fn to_json(&self) -> Value {
        let columns = self.report.columns();
        let rows: Vec<Vec<Value>> = self
            .rows
            .iter()
            .map(|row| {
                columns
                    .iter()
                    .map(|c| row.get(*c).cloned().unwrap_or(Value::Null))
                    .collect()
            })
            .collect();
        json!({
            "report": self.report.name(),
            "columns": columns,
            "rows": rows,
            "truncated": self.truncated,
        })
    }

    pub fn to_csv(&self) -> Vec<u8> {
        let mut writer = csv::Writer::from_writer(Vec::new());
        let columns = self.report.columns();
        let cell = |value: Option<&Value>| match value {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
        };
        let written = std::iter::once(writer.write_record(columns))
            .chain(
                self.rows
                    .iter()
                    .map(|row| writer.write_record(columns.iter().map(|c| cell(row.get(*c))))),
            )
            .collect::<csv::Result<()>>();
        written.expect("writing CSV into memory cannot fail");
        writer
            .into_inner()
            .expect("flushing into memory cannot fail")
    }
}
