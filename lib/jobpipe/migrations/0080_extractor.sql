-- Extractor (issue 19): a structured summary of every posting's description, made by a local LLM.
--
-- The summary is stored per posting, with the schema/prompt version and the model it was made
-- with (a change of either is re-queued by the daemon's bounded sweep) and the sha256 of the
-- description text that was sent (the dedupe key: identical descriptions of one employer in many
-- cities are extracted once and copied).
ALTER TABLE postings
    ADD COLUMN summary          jsonb,
    ADD COLUMN summary_version  text,
    ADD COLUMN summary_model    text,
    ADD COLUMN summary_hash     text,
    ADD COLUMN summarized_at    timestamptz;
CREATE INDEX postings_summary_hash ON postings (summary_hash, summary_version, summary_model)
    WHERE summary_hash IS NOT NULL;

-- Stage `extract` (subject = posting): queued in the same transaction as the change that needs
-- it, i.e. when a posting gets a fetched description, or its fetched description changes, and
-- when it becomes external (completed as skipped_external without a model call).
CREATE FUNCTION jobpipe_postings_enqueue_extract() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.description_state IN ('fetched', 'external')
       AND (TG_OP = 'INSERT'
            OR NEW.description_state IS DISTINCT FROM OLD.description_state
            OR NEW.description IS DISTINCT FROM OLD.description) THEN
        PERFORM jobpipe_enqueue('extract', NEW.id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER postings_enqueue_extract AFTER INSERT OR UPDATE OF description, description_state
    ON postings FOR EACH ROW EXECUTE FUNCTION jobpipe_postings_enqueue_extract();

-- Postings that already have a description when this migration runs.
INSERT INTO queue (stage, subject)
SELECT 'extract', id FROM postings WHERE description_state IN ('fetched', 'external')
ON CONFLICT DO NOTHING;
