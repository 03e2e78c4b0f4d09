-- When the latest attempt of a webhook batch ended (delivered or failed): the debug console's
-- live log of webhooks sent and failed reads the rows whose latest attempt is recent.
ALTER TABLE webhook_deliveries ADD COLUMN last_attempt_at timestamptz;
CREATE INDEX webhook_deliveries_last_attempt ON webhook_deliveries (app_id, last_attempt_at)
    WHERE last_attempt_at IS NOT NULL;
