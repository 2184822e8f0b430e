-- Sign-in sessions: the cookie carries a signed random id; only its SHA-256
-- is kept. A row gone (sign-out, user deleted) ends the session at once.
CREATE TABLE IF NOT EXISTS pgagent_watch.auth_session (
    id_hash bytea PRIMARY KEY,
    user_id integer NOT NULL REFERENCES pgagent_watch.app_user (id) ON DELETE CASCADE,
    csrf_token text NOT NULL,
    address text,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS auth_session_user ON pgagent_watch.auth_session (user_id);

-- Who changed what, when, from where. No foreign key to app_user: the
-- history of a deleted user stays.
CREATE TABLE IF NOT EXISTS pgagent_watch.audit (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    user_id integer,
    user_name text NOT NULL,
    action text NOT NULL,
    ok boolean NOT NULL DEFAULT true,
    server_id integer,
    target text,
    address text,
    detail jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_at ON pgagent_watch.audit (at DESC);
