-- Alerts: subscriptions, the durable outbox, per-group dispatch state and
-- the alert engine's replay cursor, one row per monitored server.

-- (user, server, one job or every job, statuses, channel). job_id NULL means
-- every job of the server. Statuses are words: failed, succeeded, aborted,
-- started, stuck, overdue, agent_down, flapping.
CREATE TABLE IF NOT EXISTS pgagent_watch.subscription (
    id serial PRIMARY KEY,
    user_id integer NOT NULL REFERENCES pgagent_watch.app_user (id) ON DELETE CASCADE,
    server_id integer NOT NULL,
    job_id integer,
    statuses text[] NOT NULL,
    channel text NOT NULL DEFAULT 'email',
    created_at timestamptz NOT NULL DEFAULT now(),
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS subscription_one_per_target
    ON pgagent_watch.subscription (user_id, server_id, (coalesce(job_id, 0)), channel);
CREATE INDEX IF NOT EXISTS subscription_by_server
    ON pgagent_watch.subscription (server_id);

-- The outbox: one row per (event, recipient, channel). The unique key makes
-- a second write of the same match a no-op, whichever instance does it.
CREATE TABLE IF NOT EXISTS pgagent_watch.alert (
    id bigserial PRIMARY KEY,
    user_id integer REFERENCES pgagent_watch.app_user (id) ON DELETE SET NULL,
    recipient text NOT NULL,
    channel text NOT NULL,
    server_id integer NOT NULL,
    server_name text NOT NULL,
    event_id bigint NOT NULL,
    status text NOT NULL,
    job_id integer,
    job_name text,
    run_id integer,
    event_at timestamptz NOT NULL,
    duration float8,
    detail jsonb NOT NULL DEFAULT '{}',
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'dead')),
    created_at timestamptz NOT NULL DEFAULT now(),
    not_before timestamptz NOT NULL DEFAULT now(),
    claimed_at timestamptz,
    claimed_by text,
    attempts integer NOT NULL DEFAULT 0,
    sent_at timestamptz,
    last_error text,
    subject text,
    message_id text,
    UNIQUE (server_name, event_id, recipient, channel)
);
CREATE INDEX IF NOT EXISTS alert_waiting
    ON pgagent_watch.alert (recipient, channel, id) WHERE state IN ('pending', 'sending');
CREATE INDEX IF NOT EXISTS alert_by_state ON pgagent_watch.alert (state, id);

-- One row per (recipient, channel): when its last digest left and when a
-- failing channel may be tried again. Claiming locks this row, so that two
-- dispatchers never start two digests of one group at once.
CREATE TABLE IF NOT EXISTS pgagent_watch.alert_group (
    recipient text NOT NULL,
    channel text NOT NULL,
    last_sent_at timestamptz,
    failures integer NOT NULL DEFAULT 0,
    retry_at timestamptz,
    PRIMARY KEY (recipient, channel)
);

-- The alert engine's place in each server's event table (replay.CursorState).
CREATE TABLE IF NOT EXISTS pgagent_watch.alert_cursor (
    server_name text PRIMARY KEY,
    mark bigint NOT NULL,
    max_id bigint NOT NULL,
    seen jsonb NOT NULL DEFAULT '{}',
    changed_at timestamptz NOT NULL DEFAULT now()
);
