-- The `events` table: one row per accepted event, the analysts' contract (DESIGN.md, "Storage").
-- Written only by consumer-worker, idempotently (`ON CONFLICT DO NOTHING` on the primary key).

CREATE TABLE events (
    id           uuid        NOT NULL,
    app_id       text        NOT NULL,
    source       text        NOT NULL CONSTRAINT events_source_check
                                      CHECK (source IN ('api', 'client', 'track')),
    channel      text        NOT NULL,
    name         text        NOT NULL,
    data         jsonb       NOT NULL,
    user_id      text,
    anonymous_id text,
    message_id   text,
    socket_id    text,
    occurred_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    context      jsonb,
    inserted_at  timestamptz NOT NULL DEFAULT now(),
    -- A unique key on a partitioned table must contain the partition key. `received_at` is set
    -- once at the edge and carried in the envelope, so a redelivered event has the same key.
    CONSTRAINT events_pkey PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);

CREATE INDEX events_received_at_brin ON events USING brin (received_at);
CREATE INDEX events_app_id_name_received_at_idx ON events (app_id, name, received_at);

COMMENT ON TABLE events IS
    'One row per accepted event (Pusher API, client event or Segment call), stored exactly once. '
    'Partitioned by day of received_at (UTC): partitions are named events_YYYYMMDD.';
COMMENT ON COLUMN events.id IS
    'Event id: a UUIDv7 assigned once at the edge; redeliveries and retries carry the same id.';
COMMENT ON COLUMN events.app_id IS 'The application the event was sent to.';
COMMENT ON COLUMN events.source IS
    'Where the event entered: api (Pusher HTTP API), client (client-* WebSocket event), '
    'track (Segment Tracking API).';
COMMENT ON COLUMN events.channel IS 'The channel the event was published on.';
COMMENT ON COLUMN events.name IS 'The event name.';
COMMENT ON COLUMN events.data IS
    'The payload: the parsed JSON when the payload text is valid JSON, else the payload text as '
    'a JSON string.';
COMMENT ON COLUMN events.user_id IS 'The user the event is attributed to, when known.';
COMMENT ON COLUMN events.anonymous_id IS 'Segment anonymousId, when given.';
COMMENT ON COLUMN events.message_id IS 'Segment messageId, when given (the sender''s dedup key).';
COMMENT ON COLUMN events.socket_id IS 'The Pusher socket id the publisher excluded, when given.';
COMMENT ON COLUMN events.occurred_at IS
    'When the event happened. Currently equal to received_at; Segment clock-skew correction '
    '(received_at - (sent_at - timestamp)) will refine it for track events.';
COMMENT ON COLUMN events.received_at IS
    'When the edge accepted the event (server clock), set once and never changed. Partition key.';
COMMENT ON COLUMN events.context IS 'Segment context object, when given.';
COMMENT ON COLUMN events.inserted_at IS 'When the row was written to Postgres.';

-- Creates the partition of `events` holding `day` (UTC) unless it exists; returns whether it
-- created it. Serialized by an advisory lock so concurrent workers do not race. The partition is
-- created on its own and then attached: ATTACH takes only a SHARE UPDATE EXCLUSIVE lock on
-- `events`, so it neither waits for nor blocks running inserts and analysts' queries (CREATE
-- TABLE ... PARTITION OF would take an ACCESS EXCLUSIVE lock).
CREATE FUNCTION switchboard_ensure_partition(day date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    schema_name name;
    partition_name name := 'events_' || to_char(day, 'YYYYMMDD');
BEGIN
    SELECT n.nspname INTO schema_name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = 'events'::regclass;

    IF to_regclass(format('%I.%I', schema_name, partition_name)) IS NOT NULL THEN
        RETURN false;
    END IF;

    PERFORM pg_advisory_xact_lock(hashtext('switchboard_ensure_partition'));

    -- Another session may have created it while we waited: look in the catalog with a fresh
    -- snapshot (the relation cache may not have seen that commit yet).
    IF EXISTS (
        SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = schema_name AND c.relname = partition_name
    ) THEN
        RETURN false;
    END IF;

    EXECUTE format(
        'CREATE TABLE %I.%I (LIKE %I.events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
        schema_name, partition_name, schema_name);
    EXECUTE format(
        'ALTER TABLE %I.events ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
        schema_name, schema_name, partition_name,
        to_char(day, 'YYYY-MM-DD') || ' 00:00:00+00',
        to_char(day + 1, 'YYYY-MM-DD') || ' 00:00:00+00');
    RETURN true;
END
$$;

COMMENT ON FUNCTION switchboard_ensure_partition(date) IS
    'Creates the events partition for one UTC day (events_YYYYMMDD) unless it exists; '
    'returns whether it was created. Safe to call concurrently.';
