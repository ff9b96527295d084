-- A change that arrives while its subject's item is running must not be lost: the item is
-- marked `rerun`, and completing it enqueues the subject again (queue.complete does that).
ALTER TABLE queue ADD COLUMN rerun boolean NOT NULL DEFAULT false;

CREATE OR REPLACE FUNCTION jobpipe_enqueue(p_stage text, p_subject bigint, p_priority smallint DEFAULT 0,
                                           p_run_after timestamptz DEFAULT now())
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO queue (stage, subject, priority, run_after)
    VALUES (p_stage, p_subject, p_priority, p_run_after)
    ON CONFLICT (stage, subject) WHERE status IN ('pending', 'running') DO UPDATE
        SET priority = greatest(queue.priority, excluded.priority),
            run_after = CASE WHEN queue.status = 'pending' AND excluded.priority > queue.priority
                             THEN least(queue.run_after, excluded.run_after) ELSE queue.run_after END,
            rerun = queue.rerun OR queue.status = 'running',
            updated_at = now()
        WHERE excluded.priority > queue.priority OR queue.status = 'running';
    PERFORM pg_notify('jobpipe_' || p_stage, '');
END $$;
