-- Analytics (Segment Tracking API): promoted columns on `events`, the Segment dedup table,
-- rollups maintained by consumer-worker in the same transaction as its inserts, the `reports`
-- schema, retention, and the read-only `switchboard_analyst` role. See docs/REPORTS.md.

ALTER TABLE events
    ADD COLUMN type               text,
    ADD COLUMN original_timestamp timestamptz,
    ADD COLUMN sent_at            timestamptz,
    ADD COLUMN group_id           text,
    ADD COLUMN previous_id        text,
    ADD COLUMN page_url           text,
    ADD COLUMN page_path          text,
    ADD COLUMN page_referrer      text,
    ADD COLUMN page_search        text,
    ADD COLUMN page_title         text,
    ADD COLUMN utm_source         text,
    ADD COLUMN utm_medium         text,
    ADD COLUMN utm_campaign       text,
    ADD COLUMN utm_term           text,
    ADD COLUMN utm_content        text,
    ADD COLUMN ip                 inet,
    ADD COLUMN user_agent         text,
    ADD COLUMN browser            text,
    ADD COLUMN browser_version    text,
    ADD COLUMN os                 text,
    ADD COLUMN os_version         text,
    ADD COLUMN device_class       text,
    ADD COLUMN is_bot             boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT events_type_check
        CHECK (type IN ('track', 'identify', 'page', 'screen', 'group', 'alias')),
    ADD CONSTRAINT events_device_class_check
        CHECK (device_class IN ('desktop', 'mobile', 'appliance', 'bot', 'other'));

COMMENT ON COLUMN events.occurred_at IS
    'When the event happened. Segment calls: the client timestamp corrected for clock skew, '
    'received_at - (sent_at - original_timestamp); the timestamp as is without sent_at; '
    'received_at without a timestamp; never later than received_at (future values are clamped). '
    'Pusher events: received_at.';
COMMENT ON COLUMN events.user_id IS
    'Segment userId; for client events the sender''s presence user id, when known.';
COMMENT ON COLUMN events.message_id IS
    'Segment messageId (the sender''s dedup key), generated at the edge when the sender gave none.';
COMMENT ON COLUMN events.context IS
    'Segment context (the batch''s context merged under the event''s), when given.';
COMMENT ON COLUMN events.data IS
    'The payload: the parsed JSON when the payload text is valid JSON, else the payload text as '
    'a JSON string. Segment calls: the whole event object as sent (properties, traits, ...).';
COMMENT ON COLUMN events.type IS
    'Segment call type: track, identify, page, screen, group or alias. NULL for Pusher events.';
COMMENT ON COLUMN events.original_timestamp IS 'Segment timestamp (or originalTimestamp) as sent by the client.';
COMMENT ON COLUMN events.sent_at IS 'Segment sentAt (the event''s, else the batch''s) as sent by the client.';
COMMENT ON COLUMN events.group_id IS 'Segment groupId (group calls).';
COMMENT ON COLUMN events.previous_id IS 'Segment previousId (alias calls).';
COMMENT ON COLUMN events.page_url IS 'context.page.url (page calls: else properties.url).';
COMMENT ON COLUMN events.page_path IS 'context.page.path (page calls: else properties.path).';
COMMENT ON COLUMN events.page_referrer IS 'context.page.referrer (page calls: else properties.referrer).';
COMMENT ON COLUMN events.page_search IS 'context.page.search (page calls: else properties.search).';
COMMENT ON COLUMN events.page_title IS 'context.page.title (page calls: else properties.title).';
COMMENT ON COLUMN events.utm_source IS 'context.campaign.source, else utm_source of the page''s query string.';
COMMENT ON COLUMN events.utm_medium IS 'context.campaign.medium, else utm_medium of the page''s query string.';
COMMENT ON COLUMN events.utm_campaign IS 'context.campaign.name, else utm_campaign of the page''s query string.';
COMMENT ON COLUMN events.utm_term IS 'context.campaign.term, else utm_term of the page''s query string.';
COMMENT ON COLUMN events.utm_content IS 'context.campaign.content, else utm_content of the page''s query string.';
COMMENT ON COLUMN events.ip IS
    'Client address: context.ip when valid, else the connecting address (X-Forwarded-For only '
    'from configured trusted proxies).';
COMMENT ON COLUMN events.user_agent IS 'context.userAgent, else the request''s User-Agent header.';
COMMENT ON COLUMN events.browser IS 'Browser (or crawler) name parsed from user_agent (woothee).';
COMMENT ON COLUMN events.browser_version IS 'Browser version parsed from user_agent.';
COMMENT ON COLUMN events.os IS 'Operating system parsed from user_agent.';
COMMENT ON COLUMN events.os_version IS 'Operating system version parsed from user_agent.';
COMMENT ON COLUMN events.device_class IS 'desktop, mobile, appliance, bot or other; NULL when unknown.';
COMMENT ON COLUMN events.is_bot IS 'True for known crawlers and bots (kept, never dropped).';

-- Exactly once for Segment retries: a retry carries the same messageId but gets a new edge id
-- and received_at (possibly another day's partition), so the events primary key cannot catch
-- it. The worker inserts (app_id, message_id) here and the event only when that row is new,
-- in the same statement. Rows older than the dedup window are pruned by the worker.
CREATE TABLE event_dedup (
    app_id      text        NOT NULL,
    message_id  text        NOT NULL,
    event_id    uuid        NOT NULL,
    received_at timestamptz NOT NULL,
    CONSTRAINT event_dedup_pkey PRIMARY KEY (app_id, message_id)
);
CREATE INDEX event_dedup_received_at_brin ON event_dedup USING brin (received_at);
COMMENT ON TABLE event_dedup IS
    'Segment messageIds seen per app within the dedup window (internal; pruned by the worker).';

CREATE SCHEMA reports;
COMMENT ON SCHEMA reports IS 'Rollups, views and functions for analysts (docs/REPORTS.md). All times are UTC.';

-- Rollups: written by the worker in the transaction that inserts the events, from the rows
-- actually inserted (duplicates never count).
CREATE TABLE reports.events_per_minute (
    app_id text        NOT NULL,
    source text        NOT NULL,
    name   text        NOT NULL,
    minute timestamptz NOT NULL,
    events bigint      NOT NULL,
    CONSTRAINT events_per_minute_pkey PRIMARY KEY (app_id, minute, source, name)
);
COMMENT ON TABLE reports.events_per_minute IS
    'Events per minute of occurred_at (UTC) by app, source and name; maintained by the worker.';

-- One row per user and hour (day) with activity: the set the active-user counts come from.
CREATE TABLE reports.active_users_hourly (
    app_id   text        NOT NULL,
    hour     timestamptz NOT NULL,
    user_key text        NOT NULL,
    CONSTRAINT active_users_hourly_pkey PRIMARY KEY (app_id, hour, user_key)
);
COMMENT ON TABLE reports.active_users_hourly IS
    'Users (coalesce(user_id, anonymous_id)) with at least one event in the hour of occurred_at (UTC).';

CREATE TABLE reports.active_users_daily (
    app_id   text NOT NULL,
    day      date NOT NULL,
    user_key text NOT NULL,
    CONSTRAINT active_users_daily_pkey PRIMARY KEY (app_id, day, user_key)
);
COMMENT ON TABLE reports.active_users_daily IS
    'Users (coalesce(user_id, anonymous_id)) with at least one event on the UTC day of occurred_at.';

CREATE VIEW reports.events_per_hour AS
SELECT app_id, source, name, date_trunc('hour', minute, 'UTC') AS hour, sum(events)::bigint AS events
FROM reports.events_per_minute
GROUP BY 1, 2, 3, 4;
COMMENT ON VIEW reports.events_per_hour IS 'Events per hour (UTC) by app, source and name.';

CREATE VIEW reports.events_per_day AS
SELECT app_id, source, name, (minute AT TIME ZONE 'UTC')::date AS day, sum(events)::bigint AS events
FROM reports.events_per_minute
GROUP BY 1, 2, 3, 4;
COMMENT ON VIEW reports.events_per_day IS 'Events per UTC day by app, source and name.';

CREATE VIEW reports.active_users_per_hour AS
SELECT app_id, hour, count(*) AS users
FROM reports.active_users_hourly
GROUP BY 1, 2;
COMMENT ON VIEW reports.active_users_per_hour IS 'Distinct active users per hour (UTC).';

CREATE VIEW reports.unique_users_per_day AS
SELECT app_id, day, count(*) AS users
FROM reports.active_users_daily
GROUP BY 1, 2;
COMMENT ON VIEW reports.unique_users_per_day IS 'Distinct active users per UTC day.';

-- Page views: page calls with the referrer's host, for the page and referrer reports.
CREATE VIEW reports.page_views AS
SELECT app_id, occurred_at, received_at,
       coalesce(user_id, anonymous_id) AS user_key,
       page_path, page_url, page_title, page_referrer,
       lower(substring(page_referrer FROM '^[A-Za-z][A-Za-z0-9+.-]*://([^/?#:]+)')) AS referrer_host,
       lower(substring(page_url FROM '^[A-Za-z][A-Za-z0-9+.-]*://([^/?#:]+)')) AS page_host,
       utm_source, utm_medium, utm_campaign, browser, os, device_class, is_bot
FROM events
WHERE type = 'page';
COMMENT ON VIEW reports.page_views IS 'One row per page call, with the hosts of the page and of its referrer.';

-- The functions below take a half-open range [p_from, p_to) of occurred_at. Because
-- occurred_at never exceeds received_at, they also filter received_at >= p_from, which lets
-- Postgres skip the older partitions. Ties are ordered bytewise (COLLATE "C"), the same on
-- every installation.

CREATE FUNCTION reports.events_over_time(
    p_app_id text, p_bucket text, p_from timestamptz, p_to timestamptz)
RETURNS TABLE (bucket timestamptz, source text, name text, events bigint)
LANGUAGE sql STABLE AS $$
    SELECT date_trunc(p_bucket, m.minute, 'UTC'), m.source, m.name, sum(m.events)::bigint
    FROM reports.events_per_minute m
    WHERE m.app_id = p_app_id AND m.minute >= p_from AND m.minute < p_to
      AND p_bucket IN ('minute', 'hour', 'day', 'week', 'month')
    GROUP BY 1, 2, 3
    ORDER BY 1, m.source COLLATE "C", m.name COLLATE "C"
$$;
COMMENT ON FUNCTION reports.events_over_time(text, text, timestamptz, timestamptz) IS
    'Events per bucket (minute, hour, day, week or month; UTC) by source and name in '
    '[p_from, p_to); any other bucket gives no rows.';

CREATE FUNCTION reports.top_events(
    p_app_id text, p_from timestamptz, p_to timestamptz, p_limit integer DEFAULT 10)
RETURNS TABLE (name text, events bigint, users bigint)
LANGUAGE sql STABLE AS $$
    SELECT e.name, count(*), count(DISTINCT coalesce(e.user_id, e.anonymous_id))
    FROM events e
    WHERE e.app_id = p_app_id AND e.occurred_at >= p_from AND e.occurred_at < p_to
      AND e.received_at >= p_from
    GROUP BY e.name
    ORDER BY 2 DESC, e.name COLLATE "C"
    LIMIT p_limit
$$;
COMMENT ON FUNCTION reports.top_events(text, timestamptz, timestamptz, integer) IS
    'The most frequent event names (all sources) in [p_from, p_to), with their distinct users.';

CREATE FUNCTION reports.top_pages(
    p_app_id text, p_from timestamptz, p_to timestamptz, p_limit integer DEFAULT 10)
RETURNS TABLE (page_path text, views bigint, visitors bigint)
LANGUAGE sql STABLE AS $$
    SELECT v.page_path, count(*), count(DISTINCT v.user_key)
    FROM reports.page_views v
    WHERE v.app_id = p_app_id AND v.occurred_at >= p_from AND v.occurred_at < p_to
      AND v.received_at >= p_from AND v.page_path IS NOT NULL
    GROUP BY v.page_path
    ORDER BY 2 DESC, v.page_path COLLATE "C"
    LIMIT p_limit
$$;
COMMENT ON FUNCTION reports.top_pages(text, timestamptz, timestamptz, integer) IS
    'The most viewed page paths in [p_from, p_to), with their distinct visitors.';

CREATE FUNCTION reports.top_referrers(
    p_app_id text, p_from timestamptz, p_to timestamptz, p_limit integer DEFAULT 10)
RETURNS TABLE (referrer_host text, views bigint, visitors bigint)
LANGUAGE sql STABLE AS $$
    SELECT v.referrer_host, count(*), count(DISTINCT v.user_key)
    FROM reports.page_views v
    WHERE v.app_id = p_app_id AND v.occurred_at >= p_from AND v.occurred_at < p_to
      AND v.received_at >= p_from AND v.referrer_host IS NOT NULL
      AND v.referrer_host IS DISTINCT FROM v.page_host
    GROUP BY v.referrer_host
    ORDER BY 2 DESC, v.referrer_host COLLATE "C"
    LIMIT p_limit
$$;
COMMENT ON FUNCTION reports.top_referrers(text, timestamptz, timestamptz, integer) IS
    'External referrer hosts of page views in [p_from, p_to) (same-host referrals left out).';

CREATE FUNCTION reports.utm_campaigns(p_app_id text, p_from timestamptz, p_to timestamptz)
RETURNS TABLE (utm_source text, utm_medium text, utm_campaign text, events bigint, users bigint)
LANGUAGE sql STABLE AS $$
    SELECT e.utm_source, e.utm_medium, e.utm_campaign, count(*),
           count(DISTINCT coalesce(e.user_id, e.anonymous_id))
    FROM events e
    WHERE e.app_id = p_app_id AND e.occurred_at >= p_from AND e.occurred_at < p_to
      AND e.received_at >= p_from
      AND (e.utm_source IS NOT NULL OR e.utm_medium IS NOT NULL OR e.utm_campaign IS NOT NULL)
    GROUP BY 1, 2, 3
    ORDER BY 4 DESC, e.utm_source COLLATE "C", e.utm_medium COLLATE "C",
             e.utm_campaign COLLATE "C"
$$;
COMMENT ON FUNCTION reports.utm_campaigns(text, timestamptz, timestamptz) IS
    'Events and distinct users per (utm_source, utm_medium, utm_campaign) in [p_from, p_to).';

CREATE FUNCTION reports.technology(
    p_app_id text, p_dimension text, p_from timestamptz, p_to timestamptz)
RETURNS TABLE (value text, users bigint, events bigint)
LANGUAGE sql STABLE AS $$
    SELECT t.value, count(DISTINCT t.user_key), count(*)
    FROM (
        SELECT CASE p_dimension
                   WHEN 'browser' THEN e.browser
                   WHEN 'os' THEN e.os
                   WHEN 'device_class' THEN e.device_class
               END AS value,
               coalesce(e.user_id, e.anonymous_id) AS user_key
        FROM events e
        WHERE e.app_id = p_app_id AND e.occurred_at >= p_from AND e.occurred_at < p_to
          AND e.received_at >= p_from AND e.type IS NOT NULL
          AND p_dimension IN ('browser', 'os', 'device_class')
    ) AS t
    GROUP BY t.value
    ORDER BY 2 DESC, 3 DESC, t.value COLLATE "C"
$$;
COMMENT ON FUNCTION reports.technology(text, text, timestamptz, timestamptz) IS
    'Distinct users and events of Segment calls per browser, os or device_class (p_dimension) '
    'in [p_from, p_to); NULL value = not recognised.';

-- Funnel: for each user, the first occurrence of step 1 in the range starts the funnel; step
-- k+1 counts when it occurs at or after step k and within p_window of step 1.
CREATE FUNCTION reports.funnel(
    p_app_id text, p_steps text[], p_from timestamptz, p_to timestamptz, p_window interval)
RETURNS TABLE (step integer, name text, users bigint)
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE
    hits AS (
        SELECT coalesce(e.user_id, e.anonymous_id) AS user_key, e.name, e.occurred_at
        FROM events e
        WHERE e.app_id = p_app_id AND e.name = ANY (p_steps)
          AND e.occurred_at >= p_from AND e.occurred_at < p_to AND e.received_at >= p_from
          AND coalesce(e.user_id, e.anonymous_id) IS NOT NULL
    ),
    progress (step, user_key, started, reached) AS (
        SELECT 1, h.user_key, min(h.occurred_at), min(h.occurred_at)
        FROM hits h
        WHERE h.name = p_steps[1]
        GROUP BY h.user_key
        UNION ALL
        SELECT p.step + 1, p.user_key, p.started,
               (SELECT min(h.occurred_at) FROM hits h
                WHERE h.user_key = p.user_key AND h.name = p_steps[p.step + 1]
                  AND h.occurred_at >= p.reached AND h.occurred_at <= p.started + p_window)
        FROM progress p
        WHERE p.step < cardinality(p_steps) AND p.reached IS NOT NULL
    )
    SELECT s.step, p_steps[s.step], count(p.reached)
    FROM generate_series(1, cardinality(p_steps)) AS s (step)
    LEFT JOIN progress p ON p.step = s.step
    GROUP BY s.step
    ORDER BY s.step
$$;
COMMENT ON FUNCTION reports.funnel(text, text[], timestamptz, timestamptz, interval) IS
    'Users reaching each of N ordered steps (event names) within p_window of their first step-1 '
    'event in [p_from, p_to).';

-- Weekly retention: a user's cohort is the ISO week (Monday) of their first active day ever;
-- for each cohort starting in [p_from, p_to), how many of its users were active k weeks later.
CREATE FUNCTION reports.retention_weekly(p_app_id text, p_from date, p_to date)
RETURNS TABLE (cohort_week date, cohort_users bigint, week integer, active_users bigint,
               retention numeric)
LANGUAGE sql STABLE AS $$
    WITH days AS (
        SELECT user_key, day FROM reports.active_users_daily WHERE app_id = p_app_id
    ),
    firsts AS (
        SELECT user_key, date_trunc('week', min(day))::date AS cohort_week
        FROM days GROUP BY user_key
    ),
    cohorts AS (
        SELECT f.cohort_week, count(*) AS cohort_users
        FROM firsts f
        WHERE f.cohort_week >= p_from AND f.cohort_week < p_to
        GROUP BY f.cohort_week
    ),
    weeks AS (
        SELECT DISTINCT user_key, date_trunc('week', day)::date AS active_week FROM days
    )
    SELECT c.cohort_week, c.cohort_users, ((w.active_week - c.cohort_week) / 7)::integer,
           count(*), round(100.0 * count(*) / c.cohort_users, 1)
    FROM cohorts c
    JOIN firsts f ON f.cohort_week = c.cohort_week
    JOIN weeks w ON w.user_key = f.user_key
    GROUP BY c.cohort_week, c.cohort_users, w.active_week
    ORDER BY 1, 3
$$;
COMMENT ON FUNCTION reports.retention_weekly(text, date, date) IS
    'Weekly retention cohorts (first active week) starting in [p_from, p_to): active users and '
    'percent of the cohort for each week since.';

-- Retention of raw events: drops the daily partitions of days before `cutoff` (UTC); returns
-- the names of the dropped partitions. Rollups are kept.
CREATE FUNCTION switchboard_drop_partitions_before(cutoff date) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    partition regclass;
    partition_name name;
BEGIN
    FOR partition, partition_name IN
        SELECT c.oid::regclass, c.relname
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'events'::regclass
          AND c.relname ~ '^events_[0-9]{8}$'
          AND to_date(substring(c.relname FROM 8), 'YYYYMMDD') < cutoff
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %s', partition);
        RETURN NEXT partition_name;
    END LOOP;
END
$$;
COMMENT ON FUNCTION switchboard_drop_partitions_before(date) IS
    'Drops the events partitions of the UTC days before cutoff; returns their names.';

-- The analysts' role: reads events and reports, writes nothing. Roles are cluster-wide, so it
-- may exist already (another database, or a concurrent migration); login stays disabled until
-- the operator sets a password and LOGIN.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'switchboard_analyst') THEN
        CREATE ROLE switchboard_analyst NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

REVOKE ALL ON event_dedup FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION switchboard_drop_partitions_before(date) FROM PUBLIC;
GRANT SELECT ON events TO switchboard_analyst;
GRANT USAGE ON SCHEMA reports TO switchboard_analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA reports TO switchboard_analyst;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA reports TO switchboard_analyst;
-- What later migrations add to `reports` is readable too.
ALTER DEFAULT PRIVILEGES IN SCHEMA reports GRANT SELECT ON TABLES TO switchboard_analyst;
ALTER DEFAULT PRIVILEGES IN SCHEMA reports GRANT EXECUTE ON FUNCTIONS TO switchboard_analyst;
