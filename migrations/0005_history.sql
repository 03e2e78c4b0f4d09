-- History and recovery (issue 11): the index a recovery query reads, and the storage fence.

-- A channel's events in id order after a cursor (`GET …/channels/{name}/events?after=`): one
-- range scan per daily partition, merged by id. `received_at` is included so that the
-- partition-pruning bound and the window's count are answered from the index alone. Built under
-- a SHARE lock on `events`: inserts wait while it builds (once, at this migration).
CREATE INDEX events_app_id_channel_id_idx ON events (app_id, channel, id) INCLUDE (received_at);

-- The storage fence: a gateway publishes a fence (a token) to the persist queue; each consumer
-- of the queue (one worker link) that takes a copy records it here once everything it took
-- before is committed. The gateway answers a history request once every consumer of the queue
-- has recorded a copy. Rows are pruned by the worker a minute after they were recorded.
CREATE TABLE persist_fences (
    token       uuid        NOT NULL,
    consumer    uuid        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT persist_fences_pkey PRIMARY KEY (token, consumer)
);
COMMENT ON TABLE persist_fences IS
    'Storage fences recorded by the persist queue''s consumers (internal; pruned by the worker).';
REVOKE ALL ON persist_fences FROM PUBLIC;
