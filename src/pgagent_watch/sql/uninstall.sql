-- Removes everything capture.sql added; state tables of the service stay.
DROP TRIGGER IF EXISTS pgagent_watch_run_insert ON pgagent.pga_joblog;
DROP TRIGGER IF EXISTS pgagent_watch_run_update ON pgagent.pga_joblog;
DROP TRIGGER IF EXISTS pgagent_watch_step_run_insert ON pgagent.pga_jobsteplog;
DROP TRIGGER IF EXISTS pgagent_watch_step_run_update ON pgagent.pga_jobsteplog;
DROP TRIGGER IF EXISTS pgagent_watch_job_insert ON pgagent.pga_job;
DROP TRIGGER IF EXISTS pgagent_watch_job_update ON pgagent.pga_job;
DROP FUNCTION IF EXISTS pgagent_watch.capture_run();
DROP FUNCTION IF EXISTS pgagent_watch.capture_step_run();
DROP FUNCTION IF EXISTS pgagent_watch.capture_job();
DROP FUNCTION IF EXISTS pgagent_watch.notify(bigint, text);
DROP TABLE IF EXISTS pgagent_watch.event;
DROP INDEX IF EXISTS pgagent.pgagent_watch_joblog_job_run;
DO $$
BEGIN
    IF to_regclass('pgagent_watch.version') IS NOT NULL THEN
        DELETE FROM pgagent_watch.version WHERE component = 'capture';
    END IF;
END
$$;
