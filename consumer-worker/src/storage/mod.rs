//! Postgres: database preparation, daily partitions, the batched idempotent write ([`insert`],
//! over binary [`copy`]), and the classification of write errors into "retry" and "the data was
//! refused".

mod copy;
mod insert;

pub(crate) use insert::Writer;

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use chrono::{Days, NaiveDate};
use protocol::Envelope;
use serde_json::value::RawValue;
use sqlx::migrate::{MigrateDatabase, MigrateError};
use sqlx::postgres::{PgDatabaseError, PgPool, PgPoolOptions};
use sqlx::Postgres;
use thiserror::Error;
use tracing::info;

/// How long taking a connection from the pool may take, reconnects included, before the write
/// attempt fails (and is retried). Also bounds how long shutdown waits during an outage.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("invalid database URL {endpoint}: {source}")]
    Url {
        endpoint: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot reach Postgres at {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot create the database {endpoint}: {source}")]
    CreateDatabase {
        endpoint: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot apply the migrations to {endpoint}: {source}")]
    Migrate {
        endpoint: String,
        #[source]
        source: MigrateError,
    },
    #[error("cannot create the events partitions in {endpoint}: {source}")]
    Partitions {
        endpoint: String,
        #[source]
        source: sqlx::Error,
    },
}

/// Creates the database named in `database_url` if it does not exist, connects a pool, applies
/// the embedded migrations and creates the partitions of today and the next
/// `partition_days_ahead` days (UTC).
pub async fn prepare_database(
    database_url: &str,
    partition_days_ahead: u32,
) -> Result<PgPool, StorageError> {
    let endpoint = bus::redacted_endpoint(database_url);
    let unreachable = |source: sqlx::Error| match source {
        sqlx::Error::Configuration(_) => StorageError::Url {
            endpoint: endpoint.clone(),
            source,
        },
        source => StorageError::Connect {
            endpoint: endpoint.clone(),
            source,
        },
    };
    if !Postgres::database_exists(database_url)
        .await
        .map_err(unreachable)?
    {
        match Postgres::create_database(database_url).await {
            Ok(()) => info!(%endpoint, "created the database"),
            // Another process created it between our check and our attempt.
            Err(error) if sqlstate(&error).as_deref() == Some("42P04") => {}
            Err(source) => {
                return Err(StorageError::CreateDatabase {
                    endpoint: endpoint.clone(),
                    source,
                })
            }
        }
    }
    let pool = PgPoolOptions::new()
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect(database_url)
        .await
        .map_err(unreachable)?;
    sqlx::migrate!("../migrations")
        .run(&pool)
        .await
        .map_err(|source| StorageError::Migrate {
            endpoint: endpoint.clone(),
            source,
        })?;
    ensure_partitions(&pool, &days_ahead(today(), partition_days_ahead))
        .await
        .map_err(|source| StorageError::Partitions {
            endpoint: endpoint.clone(),
            source,
        })?;
    Ok(pool)
}

pub(crate) fn today() -> NaiveDate {
    chrono::Utc::now().date_naive()
}

/// Makes sure the partitions of `days` exist (one `switchboard_ensure_partition` call per day).
pub(crate) async fn ensure_partitions(
    pool: &PgPool,
    days: &[NaiveDate],
) -> Result<(), sqlx::Error> {
    let created: Vec<NaiveDate> = sqlx::query_scalar(
        "SELECT day FROM unnest($1::date[]) AS day WHERE switchboard_ensure_partition(day)",
    )
    .bind(days)
    .fetch_all(pool)
    .await?;
    for day in &created {
        info!(%day, "created the events partition");
    }
    Ok(())
}

/// `today` and the `count` days that follow it.
pub(crate) fn days_ahead(today: NaiveDate, count: u32) -> Vec<NaiveDate> {
    (0..=u64::from(count))
        .map_while(|ahead| today.checked_add_days(Days::new(ahead)))
        .collect()
}

/// The days (UTC) of the envelopes' `received_at` that are not in `known`, in order.
pub(crate) fn missing_days(envelopes: &[Envelope], known: &HashSet<NaiveDate>) -> Vec<NaiveDate> {
    envelopes
        .iter()
        .map(|envelope| envelope.received_at.date_naive())
        .filter(|day| !known.contains(day))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Deletes the Segment and idempotency-key dedup rows first seen more than `window` ago;
/// returns how many.
pub(crate) async fn prune_dedup(pool: &PgPool, window: Duration) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    for table in ["event_dedup", "idempotency_dedup"] {
        deleted += sqlx::query(&format!(
            "DELETE FROM {table} WHERE received_at < now() - make_interval(secs => $1)"
        ))
        .bind(window.as_secs_f64())
        .execute(pool)
        .await?
        .rows_affected();
    }
    Ok(deleted)
}

/// The JSON text stored in `data`: the payload itself when it is JSON, else the payload as a
/// JSON string. (Postgres may still refuse JSON that serde accepts, e.g. `"\u0000"` in jsonb.)
pub(crate) fn data_json(data: &str) -> Cow<'_, str> {
    if serde_json::from_str::<&RawValue>(data).is_ok() {
        Cow::Borrowed(data)
    } else {
        Cow::Owned(serde_json::Value::from(data).to_string())
    }
}

/// What to do about a failed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Postgres, or the way to it, is down as a whole: keep the deliveries and retry, without
    /// limit and without dead-lettering anything.
    Outage,
    /// Postgres refused the data itself: retrying the same rows cannot succeed.
    Reject,
    /// The write failed for another reason (a trigger, a lock or statement timeout, a
    /// serialization failure, a missing object, …): retried a bounded number of times, then
    /// the envelopes are split and, if the database works without them, dead-lettered.
    Failed,
}

/// Outages are the errors of reaching Postgres: I/O and TLS errors, the pool's timeout (no
/// connection could be made within [`ACQUIRE_TIMEOUT`]) and a closed pool, and the SQLSTATEs of
/// a server that cannot serve at all (see [`sqlstate_disposition`]). Data errors reject; every
/// other error fails the write.
pub(crate) fn disposition(error: &sqlx::Error) -> Disposition {
    match error {
        sqlx::Error::Database(_) => sqlstate(error)
            .as_deref()
            .map_or(Disposition::Failed, sqlstate_disposition),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Disposition::Outage,
        sqlx::Error::Encode(_) => Disposition::Reject,
        _ => Disposition::Failed,
    }
}

/// SQLSTATE classes that blame the data: 22 data exception (e.g. `\u0000` in jsonb, a NUL byte
/// in text), 23 integrity constraint violation, 54 program limit exceeded (e.g. an index row
/// too large). Those of a server that cannot serve anyone: 08 connection exception, 53
/// insufficient resources (disk full, out of memory, too many connections), 28 invalid
/// authorization, 57P01–57P03 (shutting down, crashed, not yet accepting connections), 3D000
/// (no such database), 25006 (a read-only server, e.g. a standby after a failover). Anything
/// else — including transaction rollbacks (40001, 40P01) and cancelled statements (57014) —
/// fails this write.
fn sqlstate_disposition(code: &str) -> Disposition {
    match code.get(..2) {
        Some("22" | "23" | "54") => Disposition::Reject,
        Some("08" | "53" | "28") => Disposition::Outage,
        _ if matches!(code, "57P01" | "57P02" | "57P03" | "3D000" | "25006") => Disposition::Outage,
        _ => Disposition::Failed,
    }
}

fn sqlstate(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(database) => database.code().map(Cow::into_owned),
        _ => None,
    }
}

/// The reason recorded with a rejected envelope: SQLSTATE, message and detail. It goes into the
/// dead-letter header only (never into logs), as Postgres may quote the offending value.
pub(crate) fn rejection_reason(error: &sqlx::Error) -> String {
    let sqlx::Error::Database(database) = error else {
        return error.to_string();
    };
    let code = database.code().unwrap_or_default();
    let mut reason = format!("{code}: {}", database.message());
    if let Some(detail) = database
        .try_downcast_ref::<PgDatabaseError>()
        .and_then(PgDatabaseError::detail)
    {
        reason.push_str(" (");
        reason.push_str(detail);
        reason.push(')');
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use protocol::Source;

    #[test]
    fn data_is_json_when_it_parses_else_a_json_string() {
        let check =
            |input: &str, expected: &str| assert_eq!(data_json(input), expected, "{input:?}");
        check(r#"{"a":1,"b":[true,null]}"#, r#"{"a":1,"b":[true,null]}"#);
        check(r#" { "spaced" : 1 } "#, r#" { "spaced" : 1 } "#);
        check("42", "42");
        check(r#""already a string""#, r#""already a string""#);
        check("null", "null");
        check(r#"{"a":"\u0000"}"#, r#"{"a":"\u0000"}"#);
        check("hello world", r#""hello world""#);
        check("", r#""""#);
        check(r#"{"a":1"#, r#""{\"a\":1""#);
        check("{\"a\":1} trailing", r#""{\"a\":1} trailing""#);
        check("tab\there \u{1F600}", r#""tab\there 😀""#);
        check("nul\u{0}byte", r#""nul\u0000byte""#);
    }

    #[test]
    fn data_errors_reject_outages_wait_and_the_rest_fail() {
        let check = |code: &str, expected: Disposition| {
            assert_eq!(sqlstate_disposition(code), expected, "{code}")
        };
        check("22P05", Disposition::Reject); // untranslatable character (\u0000 in jsonb)
        check("22021", Disposition::Reject); // NUL byte in text
        check("22P02", Disposition::Reject); // invalid text representation
        check("23514", Disposition::Reject); // check violation
        check("23502", Disposition::Reject); // not null violation
        check("54000", Disposition::Reject); // index row too large
        check("08006", Disposition::Outage); // connection failure
        check("08001", Disposition::Outage);
        check("57P01", Disposition::Outage); // admin shutdown
        check("57P03", Disposition::Outage); // cannot connect now
        check("53300", Disposition::Outage); // too many connections
        check("53100", Disposition::Outage); // disk full
        check("28P01", Disposition::Outage); // password authentication failed
        check("3D000", Disposition::Outage); // database does not exist
        check("25006", Disposition::Outage); // read-only transaction (a standby)
        check("40001", Disposition::Failed); // serialization failure
        check("40P01", Disposition::Failed); // deadlock
        check("57014", Disposition::Failed); // statement timeout
        check("55P03", Disposition::Failed); // lock not available
        check("P0001", Disposition::Failed); // raised by a trigger
        check("42P01", Disposition::Failed); // undefined table
        check("42501", Disposition::Failed); // insufficient privilege
        check("", Disposition::Failed);
    }

    #[test]
    fn client_side_errors_are_classified_by_kind() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(disposition(&sqlx::Error::Io(io)), Disposition::Outage);
        assert_eq!(disposition(&sqlx::Error::PoolTimedOut), Disposition::Outage);
        assert_eq!(disposition(&sqlx::Error::PoolClosed), Disposition::Outage);
        assert_eq!(
            disposition(&sqlx::Error::Protocol("unexpected message".into())),
            Disposition::Failed
        );
        assert_eq!(
            disposition(&sqlx::Error::Encode("out of range".into())),
            Disposition::Reject
        );
    }

    #[test]
    fn days_ahead_include_today() {
        let day = |d: u32| NaiveDate::from_ymd_opt(2024, 12, d).unwrap();
        assert_eq!(days_ahead(day(30), 0), vec![day(30)]);
        assert_eq!(
            days_ahead(day(30), 3),
            vec![
                day(30),
                day(31),
                NaiveDate::from_ymd_opt(2025, 1, 1).unwrap(),
                NaiveDate::from_ymd_opt(2025, 1, 2).unwrap()
            ]
        );
    }

    #[test]
    fn missing_days_are_distinct_sorted_utc_days() {
        let at = |d: u32, h: u32| {
            let mut e = Envelope::new("1", Source::Api, "c", "e", String::new());
            e.received_at = Utc.with_ymd_and_hms(2025, 3, d, h, 59, 59).unwrap();
            e
        };
        let day = |d: u32| NaiveDate::from_ymd_opt(2025, 3, d).unwrap();
        let batch = [at(3, 23), at(1, 0), at(3, 0), at(2, 12), at(1, 23)];
        assert_eq!(
            missing_days(&batch, &HashSet::new()),
            vec![day(1), day(2), day(3)]
        );
        assert_eq!(
            missing_days(&batch, &HashSet::from([day(1), day(3)])),
            vec![day(2)]
        );
    }
}
