-- Durability: the HTTP API's idempotency keys, and retention without blocking inserts.

-- Exactly once for Pusher HTTP API retries that carry `X-Idempotency-Key`: the gateway derives
-- one key per envelope (`"{key} {channel}"`, or `"{key} {index} {channel}"` for a batch item);
-- a retry has new envelope ids and perhaps another day's received_at, so the events primary key
-- cannot catch it. As with event_dedup, the worker inserts (app_id, idempotency_key) here and
-- the event only when that row is new, in the same statement; rows older than the dedup window
-- are pruned by the worker.
CREATE TABLE idempotency_dedup (
    app_id          text        NOT NULL,
    idempotency_key text        NOT NULL,
    event_id        uuid        NOT NULL,
    received_at     timestamptz NOT NULL,
    CONSTRAINT idempotency_dedup_pkey PRIMARY KEY (app_id, idempotency_key)
);
CREATE INDEX idempotency_dedup_received_at_brin ON idempotency_dedup USING brin (received_at);
COMMENT ON TABLE idempotency_dedup IS
    'Per-envelope HTTP API idempotency keys seen per app within the dedup window (internal; '
    'pruned by the worker).';
REVOKE ALL ON idempotency_dedup FROM PUBLIC;

-- Retention moved to the worker: it detaches expired partitions with DETACH PARTITION ...
-- CONCURRENTLY (which cannot run inside a function's transaction) and then drops them, under
-- lock and statement timeouts, so that no ACCESS EXCLUSIVE lock on `events` ever waits behind
-- an analyst's query with every insert queued behind it.
DROP FUNCTION switchboard_drop_partitions_before(date);
