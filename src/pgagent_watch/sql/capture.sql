-- pgagent-watch capture, version 1.
-- Idempotent: every statement can run again over an earlier install.
-- The triggers must never fail or slow pgAgent's own writes: each body
-- runs in its own exception block, and the notification is skipped when
-- the queue is nearly full (a full queue would fail pgAgent's COMMIT, which
-- no exception block can catch).

CREATE SCHEMA IF NOT EXISTS pgagent_watch;

CREATE TABLE IF NOT EXISTS pgagent_watch.version (
    component text PRIMARY KEY,
    version integer NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now()
);

-- One row per captured status change. Small on purpose: names, durations and
-- output are read from pgAgent's own tables when needed.
CREATE TABLE IF NOT EXISTS pgagent_watch.event (
    id bigserial PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind text NOT NULL,
    job_id integer,
    jlgid integer,
    jstid integer,
    jslid integer,
    status text,
    extra jsonb
);
CREATE INDEX IF NOT EXISTS event_xid ON pgagent_watch.event (xid);

-- Event ids never repeat, not even across uninstall and install: consumers
-- (the alert outbox, a running listener) remember ids. A new table's ids
-- start at the current time in milliseconds, above any an earlier table
-- handed out unless it averaged over a thousand events a second.
SELECT setval(
    pg_get_serial_sequence('pgagent_watch.event', 'id'),
    greatest(
        (SELECT last_value FROM pgagent_watch.event_id_seq),
        (extract(epoch FROM clock_timestamp()) * 1000)::bigint
    )
);
-- BRIN: nearly free on insert, enough to find the rows to prune.
CREATE INDEX IF NOT EXISTS event_at ON pgagent_watch.event USING brin (at);
-- Health detection finds its open conditions (the latest event of each)
-- here; only derived events are indexed, so capture's inserts pay nothing.
CREATE INDEX IF NOT EXISTS event_derived ON pgagent_watch.event (kind, job_id, jlgid, id)
    WHERE kind IN ('agent_down', 'overdue', 'stuck', 'flapping');

CREATE OR REPLACE FUNCTION pgagent_watch.notify(p_id bigint, p_payload text)
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    -- The threshold can be set (ALTER SYSTEM, ALTER DATABASE, SET) as
    -- pgagent_watch.notify_max_usage; anything but a plain number is ignored
    -- rather than cast, since a failed cast would lose the event.
    v_text text := current_setting('pgagent_watch.notify_max_usage', true);
    v_max float8 := 0.9;
BEGIN
    IF v_text ~ '^\s*(0|1)?(\.[0-9]+)?\s*$' AND v_text ~ '[0-9]' THEN
        v_max := v_text::float8;
    END IF;
    -- Above the threshold the queue may fill before our COMMIT and fail
    -- pgAgent's own transaction; the listener's safety read finds the event.
    IF pg_notification_queue_usage() < v_max THEN
        PERFORM pg_notify('pgagent_watch', p_id::text || ',' || p_payload);
    END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION pgagent_watch.capture_run()
RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    v_id bigint;
    v_text text;
    v_max float8 := 0.9;
BEGIN
    BEGIN
        INSERT INTO pgagent_watch.event (kind, job_id, jlgid, status)
        VALUES ('run', NEW.jlgjobid, NEW.jlgid, NEW.jlgstatus)
        RETURNING id INTO v_id;
        -- Inline, not through pgagent_watch.notify(): a function call per
        -- status change is most of capture's cost on pgAgent's write loop.
        -- Same threshold rule as notify(); the setting is read only if set.
        v_text := current_setting('pgagent_watch.notify_max_usage', true);
        IF v_text ~ '^\s*(0|1)?(\.[0-9]+)?\s*$' AND v_text ~ '[0-9]' THEN
            v_max := v_text::float8;
        END IF;
        IF pg_notification_queue_usage() < v_max THEN
            PERFORM pg_notify('pgagent_watch', v_id || ',run,' || NEW.jlgjobid
                || ',' || NEW.jlgid || ',,' || NEW.jlgstatus);
        END IF;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'pgagent_watch: run event not captured: %', SQLERRM;
    END;
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION pgagent_watch.capture_step_run()
RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    v_id bigint;
    v_text text;
    v_max float8 := 0.9;
BEGIN
    BEGIN
        INSERT INTO pgagent_watch.event (kind, jlgid, jstid, jslid, status)
        VALUES ('step', NEW.jsljlgid, NEW.jsljstid, NEW.jslid, NEW.jslstatus)
        RETURNING id INTO v_id;
        v_text := current_setting('pgagent_watch.notify_max_usage', true);
        IF v_text ~ '^\s*(0|1)?(\.[0-9]+)?\s*$' AND v_text ~ '[0-9]' THEN
            v_max := v_text::float8;
        END IF;
        IF pg_notification_queue_usage() < v_max THEN
            PERFORM pg_notify('pgagent_watch', v_id || ',step,,' || NEW.jsljlgid
                || ',' || NEW.jslid || ',' || NEW.jslstatus);
        END IF;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'pgagent_watch: step run event not captured: %', SQLERRM;
    END;
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION pgagent_watch.capture_job()
RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    v_id bigint;
    v_row pgagent.pga_job;
    v_op text;
BEGIN
    BEGIN
        IF TG_OP = 'DELETE' THEN
            v_row := OLD;
            v_op := 'deleted';
        ELSE
            v_row := NEW;
            v_op := CASE TG_OP WHEN 'INSERT' THEN 'created' ELSE 'changed' END;
        END IF;
        INSERT INTO pgagent_watch.event (kind, job_id, status, extra)
        VALUES ('job', v_row.jobid, v_op, jsonb_build_object(
            'name', left(v_row.jobname, 200), 'enabled', v_row.jobenabled))
        RETURNING id INTO v_id;
        PERFORM pgagent_watch.notify(v_id, 'job,' || v_row.jobid || ',,,' || v_op);
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'pgagent_watch: job event not captured: %', SQLERRM;
    END;
    RETURN NULL;
END
$fn$;

DROP TRIGGER IF EXISTS pgagent_watch_run_insert ON pgagent.pga_joblog;
CREATE TRIGGER pgagent_watch_run_insert AFTER INSERT ON pgagent.pga_joblog
    FOR EACH ROW EXECUTE FUNCTION pgagent_watch.capture_run();
DROP TRIGGER IF EXISTS pgagent_watch_run_update ON pgagent.pga_joblog;
CREATE TRIGGER pgagent_watch_run_update AFTER UPDATE OF jlgstatus ON pgagent.pga_joblog
    FOR EACH ROW WHEN (OLD.jlgstatus IS DISTINCT FROM NEW.jlgstatus)
    EXECUTE FUNCTION pgagent_watch.capture_run();

DROP TRIGGER IF EXISTS pgagent_watch_step_run_insert ON pgagent.pga_jobsteplog;
CREATE TRIGGER pgagent_watch_step_run_insert AFTER INSERT ON pgagent.pga_jobsteplog
    FOR EACH ROW EXECUTE FUNCTION pgagent_watch.capture_step_run();
DROP TRIGGER IF EXISTS pgagent_watch_step_run_update ON pgagent.pga_jobsteplog;
CREATE TRIGGER pgagent_watch_step_run_update
    AFTER UPDATE OF jslstatus ON pgagent.pga_jobsteplog
    FOR EACH ROW WHEN (OLD.jslstatus IS DISTINCT FROM NEW.jslstatus)
    EXECUTE FUNCTION pgagent_watch.capture_step_run();

-- pga_job is updated twice per run (claim and release); only a change a
-- person made (name, enabled) is an event.
DROP TRIGGER IF EXISTS pgagent_watch_job_insert ON pgagent.pga_job;
CREATE TRIGGER pgagent_watch_job_insert AFTER INSERT OR DELETE ON pgagent.pga_job
    FOR EACH ROW EXECUTE FUNCTION pgagent_watch.capture_job();
DROP TRIGGER IF EXISTS pgagent_watch_job_update ON pgagent.pga_job;
CREATE TRIGGER pgagent_watch_job_update
    AFTER UPDATE OF jobname, jobenabled, jobdesc ON pgagent.pga_job
    FOR EACH ROW WHEN (OLD.jobname IS DISTINCT FROM NEW.jobname
                       OR OLD.jobenabled IS DISTINCT FROM NEW.jobenabled
                       OR OLD.jobdesc IS DISTINCT FROM NEW.jobdesc)
    EXECUTE FUNCTION pgagent_watch.capture_job();

-- The overview and the history read the latest runs of a job; pgAgent's own
-- index is on the job alone, which sorts every run of the job to find them.
CREATE INDEX IF NOT EXISTS pgagent_watch_joblog_job_run
    ON pgagent.pga_joblog (jlgjobid, jlgid);

INSERT INTO pgagent_watch.version (component, version) VALUES ('capture', 1)
ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version, installed_at = now();
