-- The replay mark of each server's listener, shared by the instances that
-- take turns listening to it (see scaleout.py). One small row per server.
CREATE TABLE IF NOT EXISTS pgagent_watch.listener_mark (
    server text PRIMARY KEY,
    mark bigint NOT NULL,
    max_id bigint NOT NULL,
    seen jsonb NOT NULL DEFAULT '{}',
    saved_at timestamptz NOT NULL DEFAULT now()
);
