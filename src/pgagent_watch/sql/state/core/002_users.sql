-- Users, their grants and their API tokens. Roles: viewer, operator, admin.
CREATE TABLE IF NOT EXISTS pgagent_watch.app_user (
    id serial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    email text,
    role text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    password_hash text,
    disabled boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The servers (by configured name, which is stable) a viewer or operator
-- may see; '*' grants every server. Admins see every server regardless.
CREATE TABLE IF NOT EXISTS pgagent_watch.user_grant (
    user_id integer NOT NULL REFERENCES pgagent_watch.app_user (id) ON DELETE CASCADE,
    server_name text NOT NULL,
    PRIMARY KEY (user_id, server_name)
);

-- Personal API tokens: only a SHA-256 of the token is kept; the token itself
-- is shown once, when created.
CREATE TABLE IF NOT EXISTS pgagent_watch.api_token (
    id serial PRIMARY KEY,
    user_id integer NOT NULL REFERENCES pgagent_watch.app_user (id) ON DELETE CASCADE,
    name text NOT NULL DEFAULT '',
    token_hash bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);
