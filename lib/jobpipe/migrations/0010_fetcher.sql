-- Fetcher (issue 6): change detection, crawl scheduling state, and the description give-up mirror.

-- Hash of every mapped field of the posting as last stored (jobpipe.postings.content_hash). A crawl
-- compares it in SQL: unchanged postings only get last_seen_at bumped, changed ones are rewritten.
ALTER TABLE postings ADD COLUMN content_hash bytea;

-- One row per configured partition (fetcher.sources). A crawl takes a lease on its row, so two
-- fetcher instances never crawl the same source at once; a failed run backs off via next_attempt_at.
ALTER TABLE fetch_sources
    ADD COLUMN enabled         boolean NOT NULL DEFAULT true,   -- false once removed from the config
    ADD COLUMN lease_owner     text,
    ADD COLUMN lease_expires   timestamptz,
    ADD COLUMN next_attempt_at timestamptz,                     -- after a failed run: not before
    ADD COLUMN failures        integer NOT NULL DEFAULT 0,      -- consecutive failed runs
    ADD COLUMN last_run_kind   text CHECK (last_run_kind IN ('full', 'incremental')),
    ADD COLUMN last_run_at     timestamptz,                     -- start of the last finished run
    ADD COLUMN last_run_stats  jsonb,                           -- pages, postings, inserted, ...
    -- Parts still above the 10,000 cap after every split: [{"params": {...}, "total": n, "kind": ...}]
    ADD COLUMN truncated_parts jsonb NOT NULL DEFAULT '[]';

-- A description work item that used up its attempts leaves the posting in state 'given_up' (counted
-- apart from failures); requeueing it (`jobpipe queue requeue description`) makes it 'pending' again.
-- A trigger covers every path (failed attempts and expired leases alike).
CREATE FUNCTION jobpipe_description_given_up() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'given_up' THEN
        UPDATE postings SET description_state = 'given_up', updated_at = now()
         WHERE id = NEW.subject AND description_state = 'pending';
    ELSIF OLD.status = 'given_up' THEN
        UPDATE postings SET description_state = 'pending', updated_at = now()
         WHERE id = NEW.subject AND description_state = 'given_up';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER queue_description_given_up AFTER UPDATE OF status ON queue
    FOR EACH ROW
    WHEN (NEW.stage = 'description' AND NEW.status IS DISTINCT FROM OLD.status
          AND (NEW.status = 'given_up' OR OLD.status = 'given_up'))
    EXECUTE FUNCTION jobpipe_description_given_up();
