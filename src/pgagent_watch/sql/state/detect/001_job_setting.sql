-- Health detection: a job's own thresholds, where the [detect] settings do
-- not fit it. Keyed by the server's configured name (stable, unlike its
-- position) and pgAgent's jobid. A null falls back to the setting.
CREATE TABLE IF NOT EXISTS pgagent_watch.job_setting (
    server_name text NOT NULL,
    job_id integer NOT NULL,
    -- false: no health condition is ever reported for this job.
    detect boolean NOT NULL DEFAULT true,
    -- seconds past its next run before the job is overdue
    overdue_grace double precision CHECK (overdue_grace >= 0),
    -- seconds a run may stay in 'r' before it is stuck
    max_duration double precision CHECK (max_duration > 0),
    changed_by text,
    changed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (server_name, job_id)
);
