-- Key-value settings the service keeps for itself (for example the id of
-- this state database's cluster, to notice a restore into another one).
CREATE TABLE IF NOT EXISTS pgagent_watch.setting (
    key text PRIMARY KEY,
    value jsonb NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
