-- Webhooks: one row per batch of webhook events for one configured webhook of an app, written by
-- the worker before it acks the RabbitMQ messages that carried the events, then delivered (and
-- retried) by the worker from here. The row's id is the X-Switchboard-Webhook-Id header: the same
-- on every attempt, so a receiver can drop a batch it already took.
CREATE TABLE webhook_deliveries (
    id              uuid        NOT NULL,
    app_id          text        NOT NULL,
    -- The webhook's URL without credentials, query or fragment (unique per app).
    webhook         text        NOT NULL,
    -- The distinct `name`s of the events, for filtering without reading `events`.
    event_types     text[]      NOT NULL,
    -- The body's `events`, in order: the body is {"time_ms": <created_at in ms>, "events": …}.
    events          jsonb       NOT NULL,
    status          text        NOT NULL DEFAULT 'pending',
    attempts        integer     NOT NULL DEFAULT 0,
    -- Why the latest failed attempt failed (kept once delivered).
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    -- While a worker is sending the row: until when, and which claim (a claim whose lease ran
    -- out cannot overwrite the next one's outcome).
    lease_until     timestamptz,
    lease_token     uuid,
    CONSTRAINT webhook_deliveries_pkey PRIMARY KEY (id),
    CONSTRAINT webhook_deliveries_status CHECK (status IN ('pending', 'delivered', 'dead'))
);
-- What each webhook's delivery task claims: its due pending rows.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (app_id, webhook, next_attempt_at)
    WHERE status = 'pending';
-- The oldest pending row (a metric) and retention of delivered and dead rows.
CREATE INDEX webhook_deliveries_status_created ON webhook_deliveries (status, created_at);
COMMENT ON TABLE webhook_deliveries IS
    'Webhook batches per app and webhook: pending (being retried), delivered or dead (retry period '
    'over; last_error says why). Written only by the worker; README "Webhooks".';
REVOKE ALL ON webhook_deliveries FROM PUBLIC;
