//! The batched, idempotent write. Each batch is COPYed (binary) into `switchboard_batch`, a
//! temporary table of the writer's own connection, and one statement moves it from there into
//! `events`, the dedup tables and the rollups, in one transaction; the commit empties the
//! staging table (`ON COMMIT DELETE ROWS`). COPY costs Postgres a fraction of what binding the
//! batch as 37 arrays and unnesting them did (BENCHMARKS.md, "Issue 12").

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use protocol::envelope::analytics::{DeviceClass, SegmentFields};
use protocol::Envelope;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, Postgres};

use super::copy::BinaryCopy;
use super::data_json;

/// The staging table, one per connection, created when the writer takes the connection. Its
/// columns are the fields of [`stage`] in order.
const CREATE_STAGING: &str = "\
CREATE TEMP TABLE IF NOT EXISTS switchboard_batch (
    id uuid, app_id text, source text, channel text, name text, data text, user_id text,
    socket_id text, received_at timestamptz, anonymous_id text, message_id text,
    occurred_at timestamptz, context text, type text, original_timestamp timestamptz,
    sent_at timestamptz, group_id text, previous_id text, page_url text, page_path text,
    page_referrer text, page_search text, page_title text, utm_source text, utm_medium text,
    utm_campaign text, utm_term text, utm_content text, ip text, user_agent text, browser text,
    browser_version text, os text, os_version text, device_class text, is_bot bool,
    idempotency_key text
) ON COMMIT DELETE ROWS";
const STAGING_COLUMNS: i16 = 37;
const COPY_STAGING: &str = "COPY switchboard_batch FROM STDIN (FORMAT binary)";

/// Only envelopes whose `(app_id, message_id)` (Segment) and `(app_id, idempotency_key)` (HTTP
/// API with `X-Idempotency-Key`) are new to the dedup tables are inserted. Rows are sorted by
/// key before the inserts so that concurrent workers take their locks in the same order.
const DEDUP: &str = "\
new_messages AS (
    INSERT INTO event_dedup (app_id, message_id, event_id, received_at)
    SELECT app_id, message_id, id, received_at FROM switchboard_batch
    WHERE message_id IS NOT NULL
    ORDER BY app_id, message_id
    ON CONFLICT DO NOTHING
    RETURNING event_id
),
new_keys AS (
    INSERT INTO idempotency_dedup (app_id, idempotency_key, event_id, received_at)
    SELECT app_id, idempotency_key, id, received_at FROM switchboard_batch
    WHERE idempotency_key IS NOT NULL
    ORDER BY app_id, idempotency_key
    ON CONFLICT DO NOTHING
    RETURNING event_id
),";
const DEDUP_FILTER: &str = "
    WHERE (message_id IS NULL OR id IN (SELECT event_id FROM new_messages))
      AND (idempotency_key IS NULL OR id IN (SELECT event_id FROM new_keys))";

/// The statement that moves the staged batch into `events`. A row whose `(id, received_at)`
/// exists already is skipped, which makes redeliveries harmless; with `dedup`, [`DEDUP`] makes
/// client retries (same key, new id and received_at) harmless too — a batch without any key
/// skips that work. The rollups are fed from the rows actually inserted.
fn insert_statement(dedup: bool) -> String {
    let (dedup, filter) = if dedup {
        (DEDUP, DEDUP_FILTER)
    } else {
        ("", "")
    };
    format!(
        "\
WITH {dedup}
inserted AS (
    INSERT INTO events
        (id, app_id, source, channel, name, data, user_id, socket_id, received_at,
         anonymous_id, message_id, occurred_at, context, type, original_timestamp, sent_at,
         group_id, previous_id, page_url, page_path, page_referrer, page_search, page_title,
         utm_source, utm_medium, utm_campaign, utm_term, utm_content, ip, user_agent,
         browser, browser_version, os, os_version, device_class, is_bot)
    SELECT id, app_id, source, channel, name, data::jsonb, user_id, socket_id, received_at,
           anonymous_id, message_id, occurred_at, context::jsonb, type, original_timestamp,
           sent_at, group_id, previous_id, page_url, page_path, page_referrer, page_search,
           page_title, utm_source, utm_medium, utm_campaign, utm_term, utm_content, ip::inet,
           user_agent, browser, browser_version, os, os_version, device_class, is_bot
    FROM switchboard_batch{filter}
    ON CONFLICT DO NOTHING
    RETURNING app_id, source, name, occurred_at, coalesce(user_id, anonymous_id) AS user_key
),
per_minute AS (
    INSERT INTO reports.events_per_minute AS r (app_id, minute, source, name, events)
    SELECT app_id, date_trunc('minute', occurred_at, 'UTC'), source, name, count(*)
    FROM inserted
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (app_id, minute, source, name) DO UPDATE SET events = r.events + EXCLUDED.events
),
hourly AS (
    INSERT INTO reports.active_users_hourly (app_id, hour, user_key)
    SELECT DISTINCT app_id, date_trunc('hour', occurred_at, 'UTC'), user_key
    FROM inserted
    WHERE user_key IS NOT NULL
    ORDER BY 1, 2, 3
    ON CONFLICT DO NOTHING
),
daily AS (
    INSERT INTO reports.active_users_daily (app_id, day, user_key)
    SELECT DISTINCT app_id, (occurred_at AT TIME ZONE 'UTC')::date, user_key
    FROM inserted
    WHERE user_key IS NOT NULL
    ORDER BY 1, 2, 3
    ON CONFLICT DO NOTHING
)
SELECT count(*) FROM inserted"
    )
}

static INSERT_WITH_DEDUP: LazyLock<String> = LazyLock::new(|| insert_statement(true));
static INSERT_WITHOUT_DEDUP: LazyLock<String> = LazyLock::new(|| insert_statement(false));

/// Writes batches on a connection of its own, which holds the staging table. A connection on
/// which a write failed is closed, never reused: the next write takes a fresh one.
pub(crate) struct Writer {
    pool: PgPool,
    connection: Option<PoolConnection<Postgres>>,
}

impl Writer {
    pub(crate) fn new(pool: PgPool) -> Writer {
        Writer {
            pool,
            connection: None,
        }
    }

    /// Inserts `envelopes` (and their rollups) in one transaction; returns how many rows were
    /// new. Without envelopes it runs the same statements on no rows.
    pub(crate) async fn insert(&mut self, envelopes: &[Envelope]) -> Result<u64, sqlx::Error> {
        let rows = stage(envelopes)?;
        let dedup = envelopes
            .iter()
            .any(|e| e.idempotency_key.is_some() || e.segment.is_some());
        let statement = if dedup {
            &INSERT_WITH_DEDUP
        } else {
            &INSERT_WITHOUT_DEDUP
        };
        let written = self.write(rows, statement).await;
        if written.is_err() {
            if let Some(mut connection) = self.connection.take() {
                connection.close_on_drop();
            }
        }
        written
    }

    async fn write(&mut self, rows: Vec<u8>, statement: &str) -> Result<u64, sqlx::Error> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            None => {
                let mut connection = self.pool.acquire().await?;
                sqlx::query(CREATE_STAGING)
                    .execute(&mut *connection)
                    .await?;
                self.connection.insert(connection)
            }
        };
        let mut transaction = sqlx::Connection::begin(&mut **connection).await?;
        let mut copy = transaction.copy_in_raw(COPY_STAGING).await?;
        copy.send(rows).await?;
        copy.finish().await?;
        let inserted: i64 = sqlx::query_scalar(statement)
            .fetch_one(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(u64::try_from(inserted).unwrap_or_default())
    }
}

/// The envelopes as rows of the staging table, in binary COPY format.
fn stage(envelopes: &[Envelope]) -> Result<Vec<u8>, sqlx::Error> {
    let mut copy = BinaryCopy::new(STAGING_COLUMNS);
    for e in envelopes {
        let segment = e.segment.as_deref();
        let text = |f: fn(&SegmentFields) -> Option<&str>| segment.and_then(f);
        let time = |f: fn(&SegmentFields) -> Option<DateTime<Utc>>| segment.and_then(f);
        copy.row();
        copy.field(&e.id)?;
        copy.field(&e.app_id.as_str())?;
        copy.field(&e.source.as_str())?;
        copy.field(&e.channel.as_str())?;
        copy.field(&e.name.as_str())?;
        copy.field(&data_json(&e.data))?;
        copy.field(&e.user_id.as_deref())?;
        copy.field(&e.socket_id.as_deref())?;
        copy.field(&e.received_at)?;
        copy.field(&text(|s| s.anonymous_id.as_deref()))?;
        copy.field(&text(|s| Some(&s.message_id)))?;
        copy.field(&segment.map_or(e.received_at, |s| s.occurred_at))?;
        copy.field(&text(|s| s.context.as_deref()))?;
        copy.field(&text(|s| Some(s.call.as_str())))?;
        copy.field(&time(|s| s.original_timestamp))?;
        copy.field(&time(|s| s.sent_at))?;
        copy.field(&text(|s| s.group_id.as_deref()))?;
        copy.field(&text(|s| s.previous_id.as_deref()))?;
        copy.field(&text(|s| s.page.url.as_deref()))?;
        copy.field(&text(|s| s.page.path.as_deref()))?;
        copy.field(&text(|s| s.page.referrer.as_deref()))?;
        copy.field(&text(|s| s.page.search.as_deref()))?;
        copy.field(&text(|s| s.page.title.as_deref()))?;
        copy.field(&text(|s| s.campaign.source.as_deref()))?;
        copy.field(&text(|s| s.campaign.medium.as_deref()))?;
        copy.field(&text(|s| s.campaign.name.as_deref()))?;
        copy.field(&text(|s| s.campaign.term.as_deref()))?;
        copy.field(&text(|s| s.campaign.content.as_deref()))?;
        copy.field(&segment.and_then(|s| s.client.ip).map(|ip| ip.to_string()))?;
        copy.field(&text(|s| s.client.user_agent.as_deref()))?;
        copy.field(&text(|s| s.client.agent.browser.as_deref()))?;
        copy.field(&text(|s| s.client.agent.browser_version.as_deref()))?;
        copy.field(&text(|s| s.client.agent.os.as_deref()))?;
        copy.field(&text(|s| s.client.agent.os_version.as_deref()))?;
        copy.field(&text(|s| s.client.agent.device.map(DeviceClass::as_str)))?;
        copy.field(&segment.is_some_and(|s| s.client.agent.is_bot))?;
        copy.field(&e.idempotency_key.as_deref())?;
    }
    Ok(copy.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Source;

    #[test]
    fn the_staging_table_has_a_column_per_field() {
        let columns = CREATE_STAGING
            .split_once('(')
            .and_then(|(_, rest)| rest.rsplit_once(')'))
            .map(|(columns, _)| columns.split(',').count());
        assert_eq!(columns, Some(STAGING_COLUMNS as usize));
        // Debug builds check every row's field count against the same number.
        let envelope = Envelope::new("1", Source::Api, "c", "e", "{}".into());
        assert!(stage(&[envelope.clone(), envelope]).is_ok());
    }

    #[test]
    fn only_batches_with_keys_pay_for_dedup() {
        assert!(INSERT_WITH_DEDUP.contains("event_dedup"));
        assert!(INSERT_WITH_DEDUP.contains("idempotency_dedup"));
        assert!(!INSERT_WITHOUT_DEDUP.contains("_dedup"));
        assert!(!INSERT_WITHOUT_DEDUP.contains("new_messages"));
    }
}
