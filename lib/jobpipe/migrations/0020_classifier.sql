-- Classifier (issue 5): what the vector stage found, which embedding model a result rests on, and
-- the 'error' outcome for titles whose work item was given up.

ALTER TABLE titles
    -- the vector stage's top-K: [{"id": occupation id, "sim": cosine similarity}], best first;
    -- the LLM stage reads its candidates from here (and operators see why a title got no match)
    ADD COLUMN candidates      jsonb,
    -- embedding model of the candidate search behind outcome (with model + prompt_version of the LLM):
    -- a change of either makes the result stale (`jobpipe classifier requeue --stale`)
    ADD COLUMN embedding_model text;
CREATE INDEX titles_outcome ON titles (outcome);

-- A classify/classify_llm item that used up its attempts marks its title 'error' (kept occupation, if
-- an earlier run had found one). A trigger covers every path: failed attempts and expired leases.
CREATE FUNCTION jobpipe_classify_given_up() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE titles SET outcome = 'error', classified_at = now() WHERE id = NEW.subject;
    RETURN NULL;
END $$;
CREATE TRIGGER queue_classify_given_up AFTER UPDATE OF status ON queue
    FOR EACH ROW
    WHEN (NEW.stage IN ('classify', 'classify_llm') AND NEW.status = 'given_up'
          AND OLD.status IS DISTINCT FROM 'given_up')
    EXECUTE FUNCTION jobpipe_classify_given_up();
