-- jobpipe schema for the whole mission. Later changes come as new numbered files.
CREATE EXTENSION IF NOT EXISTS vector;

-- ---------------------------------------------------------------- occupations (BERUFENET)
CREATE TABLE occupations (
    id          bigint PRIMARY KEY,              -- BERUFENET id
    name        text NOT NULL,                   -- kurzBezeichnungNeutral
    full_name   text,                            -- bezeichnungNeutral
    kldb2010    text,                            -- 5-digit KldB 2010 code, e.g. '28212'
    codenr      text,
    aliases     text[] NOT NULL DEFAULT '{}',    -- other names that identify it exactly
    name_norm   text NOT NULL,                   -- normalised name for exact title matches
    raw         jsonb,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX occupations_name_norm ON occupations (name_norm);
CREATE INDEX occupations_aliases ON occupations USING gin (aliases);

CREATE TABLE occupation_embeddings (
    occupation_id bigint NOT NULL REFERENCES occupations (id) ON DELETE CASCADE,
    model         text NOT NULL,
    text_hash     text NOT NULL,
    embedding     vector NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (occupation_id, model)
);

-- ---------------------------------------------------------------- titles (unit of classification)
CREATE TABLE titles (
    id             bigserial PRIMARY KEY,
    title_norm     text NOT NULL UNIQUE,
    sample_title   text,                         -- one raw title as seen, for operators and the LLM
    source_label   text,                         -- the source's own occupation label (BA hauptberuf)
    occupation_id  bigint REFERENCES occupations (id),
    outcome        text,                         -- matched_exact, matched_alias, matched_label, matched,
                                                 -- no_match, llm_no, llm_uncertain, error, empty
    confidence     real,
    model          text,
    prompt_version text,
    classified_at  timestamptz,
    postings       integer NOT NULL DEFAULT 0,   -- postings sharing this title (approximate)
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX titles_occupation ON titles (occupation_id);

-- ---------------------------------------------------------------- postings
CREATE TABLE postings (
    id                   bigserial PRIMARY KEY,
    source               text NOT NULL DEFAULT 'ba',
    external_id          text NOT NULL,          -- BA referenznummer
    title                text,
    title_norm           text,
    title_id             bigint REFERENCES titles (id),
    occupation_label     text,                   -- the source's hauptberuf
    occupation_id        bigint REFERENCES occupations (id),
    employer             text,
    offer_type           text,
    postcode             text,                   -- first location, for indexing
    city                 text,
    region               text,                   -- federal state enum, e.g. BADEN_WUERTTEMBERG
    country              text,
    lat                  double precision,
    lon                  double precision,
    locations            jsonb NOT NULL DEFAULT '[]',
    published_at         date,
    first_published      date,
    modified_at          timestamp,
    entry_from           date,
    external_url         text,
    salary               text,
    has_salary           boolean NOT NULL DEFAULT false,
    raw                  jsonb,
    description          text,
    description_state    text NOT NULL DEFAULT 'pending'
        CHECK (description_state IN ('pending', 'fetched', 'external', 'given_up', 'gone')),
    description_fetched_at timestamptz,
    first_seen_at        timestamptz NOT NULL DEFAULT now(),
    last_seen_at         timestamptz NOT NULL DEFAULT now(),
    verified_at          timestamptz,
    active               boolean NOT NULL DEFAULT true,
    inactive_since       timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source, external_id)
);
CREATE INDEX postings_title_id ON postings (title_id);
CREATE INDEX postings_occupation ON postings (occupation_id);
CREATE INDEX postings_verify ON postings (verified_at NULLS FIRST, last_seen_at) WHERE active;
CREATE INDEX postings_first_seen ON postings (first_seen_at);

-- ---------------------------------------------------------------- posting embeddings
CREATE TABLE posting_embeddings (
    posting_id  bigint NOT NULL REFERENCES postings (id) ON DELETE CASCADE,
    model       text NOT NULL,
    text_hash   text NOT NULL,
    dimensions  integer NOT NULL,
    embedding   vector NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (posting_id, model)
);
-- HNSW indexes are created per (model, dimension) by the embedder as an expression index:
--   CREATE INDEX ... USING hnsw ((embedding::vector(768)) vector_cosine_ops) WHERE model = '...'

-- ---------------------------------------------------------------- demand snapshots and similarity
CREATE TABLE demand_snapshots (
    day             date NOT NULL,
    occupation_id   bigint NOT NULL,             -- 0 = unknown occupation
    region          text NOT NULL,               -- 'UNKNOWN' when the posting has none
    active_postings integer NOT NULL,
    new_postings    integer NOT NULL,
    with_salary     integer NOT NULL DEFAULT 0,
    PRIMARY KEY (day, occupation_id, region)
);
CREATE TABLE snapshot_runs (
    day          date PRIMARY KEY,
    rows         integer NOT NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE occupation_similarity (
    occupation_id  bigint NOT NULL,
    similar_id     bigint NOT NULL,
    rank           integer NOT NULL,
    score          real NOT NULL,
    basis          text NOT NULL,                -- 'postings' (centroid) or 'names'
    computed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (occupation_id, similar_id)
);

-- ---------------------------------------------------------------- fetch sources (crawl partitions)
CREATE TABLE fetch_sources (
    name               text PRIMARY KEY,
    params             jsonb NOT NULL,
    last_incremental_at timestamptz,
    last_full_at       timestamptz,
    last_success_at    timestamptz,
    truncated          boolean NOT NULL DEFAULT false,
    last_error         text,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------- the work queue
-- One row per (stage, subject) piece of work. Pending and running rows are few; finished rows
-- are history. Every claim path uses partial indexes over the live rows only, so claim cost does
-- not grow with history.
CREATE TABLE queue (
    id             bigserial PRIMARY KEY,
    stage          text NOT NULL,
    subject        bigint NOT NULL,
    status         text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'done', 'given_up')),
    priority       smallint NOT NULL DEFAULT 0,  -- higher first (on-demand requests)
    attempts       integer NOT NULL DEFAULT 0,   -- charged failures
    run_after      timestamptz NOT NULL DEFAULT now(),
    lease_owner    text,
    lease_expires  timestamptz,
    last_error     text,
    outcome        text,                         -- what the worker recorded on completion
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
-- At most one live item per (stage, subject): re-enqueueing is idempotent.
CREATE UNIQUE INDEX queue_live_subject ON queue (stage, subject) WHERE status IN ('pending', 'running');
CREATE INDEX queue_claim ON queue (stage, priority DESC, run_after, id) WHERE status = 'pending';
CREATE INDEX queue_leases ON queue (stage, lease_expires) WHERE status = 'running';
CREATE INDEX queue_given_up ON queue (stage) WHERE status = 'given_up';
CREATE INDEX queue_finished ON queue (stage, finished_at) WHERE status = 'done';

-- Per-minute outcome counts per stage: rates, failure ratios and health without scanning history.
CREATE TABLE stage_counts (
    stage    text NOT NULL,
    minute   timestamptz NOT NULL,
    outcome  text NOT NULL,
    n        integer NOT NULL,
    PRIMARY KEY (stage, minute, outcome)
);

-- enqueue(): the one way to add work, from SQL (triggers, other applications) and Python alike.
-- Idempotent; a higher priority or earlier run_after on an already pending item is kept.
CREATE FUNCTION jobpipe_enqueue(p_stage text, p_subject bigint, p_priority smallint DEFAULT 0,
                                p_run_after timestamptz DEFAULT now())
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO queue (stage, subject, priority, run_after)
    VALUES (p_stage, p_subject, p_priority, p_run_after)
    ON CONFLICT (stage, subject) WHERE status IN ('pending', 'running') DO UPDATE
        SET priority = greatest(queue.priority, excluded.priority),
            run_after = CASE WHEN queue.status = 'pending' AND excluded.priority > queue.priority
                             THEN least(queue.run_after, excluded.run_after) ELSE queue.run_after END,
            updated_at = now()
        WHERE excluded.priority > queue.priority;
    PERFORM pg_notify('jobpipe_' || p_stage, '');
END $$;

-- ---------------------------------------------------------------- enqueue triggers
-- Work is enqueued in the same transaction as the change that causes it.
CREATE FUNCTION jobpipe_postings_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.description_state = 'pending' THEN
            PERFORM jobpipe_enqueue('description', NEW.id);
        END IF;
        PERFORM jobpipe_enqueue('embed', NEW.id);
    ELSIF NEW.title IS DISTINCT FROM OLD.title
       OR NEW.description IS DISTINCT FROM OLD.description
       OR NEW.occupation_id IS DISTINCT FROM OLD.occupation_id THEN
        PERFORM jobpipe_enqueue('embed', NEW.id);
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.description_state = 'pending' AND OLD.description_state <> 'pending' THEN
        PERFORM jobpipe_enqueue('description', NEW.id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER postings_enqueue AFTER INSERT OR UPDATE ON postings
    FOR EACH ROW EXECUTE FUNCTION jobpipe_postings_enqueue();

-- A posting's title is linked to its normalised title row (created on first sight), and takes the
-- title's occupation at once when the title is already classified.
CREATE FUNCTION jobpipe_postings_link_title() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    t titles%ROWTYPE;
BEGIN
    IF NEW.title_norm IS NULL OR NEW.title_norm = '' THEN
        NEW.title_id := NULL;
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.title_norm IS NOT DISTINCT FROM OLD.title_norm AND NEW.title_id IS NOT NULL THEN
        RETURN NEW;
    END IF;
    SELECT * INTO t FROM titles WHERE title_norm = NEW.title_norm;
    IF NOT FOUND THEN
        INSERT INTO titles (title_norm, sample_title, source_label)
        VALUES (NEW.title_norm, NEW.title, NEW.occupation_label)
        ON CONFLICT (title_norm) DO NOTHING;
        SELECT * INTO t FROM titles WHERE title_norm = NEW.title_norm;
    END IF;
    NEW.title_id := t.id;
    NEW.occupation_id := t.occupation_id;
    RETURN NEW;
END $$;
CREATE TRIGGER postings_link_title BEFORE INSERT OR UPDATE OF title_norm ON postings
    FOR EACH ROW EXECUTE FUNCTION jobpipe_postings_link_title();

CREATE FUNCTION jobpipe_titles_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM jobpipe_enqueue('classify', NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER titles_enqueue AFTER INSERT ON titles
    FOR EACH ROW EXECUTE FUNCTION jobpipe_titles_enqueue();

-- On-demand verification for other applications (e.g. when a posting shows in search results).
CREATE FUNCTION jobpipe_request_verify(p_posting_id bigint) RETURNS void LANGUAGE sql AS $$
    SELECT jobpipe_enqueue('verify', p_posting_id, 10::smallint, now());
$$;

-- ---------------------------------------------------------------- alerts (state shared by instances)
CREATE TABLE alerts (
    daemon        text NOT NULL,
    condition     text NOT NULL,
    firing        boolean NOT NULL,
    since         timestamptz NOT NULL DEFAULT now(),
    last_value    text,
    message       text,
    notified_at   timestamptz,                   -- last delivered start/reminder
    resolved_at   timestamptz,
    delivery      text,                          -- pending_start, pending_resolve, sent, ambiguous
    delivery_attempts integer NOT NULL DEFAULT 0,
    next_delivery_at timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (daemon, condition)
);
CREATE TABLE alert_log (
    id        bigserial PRIMARY KEY,
    daemon    text NOT NULL,
    condition text NOT NULL,
    kind      text NOT NULL,                     -- start, reminder, resolved, unit_failed, test
    message   text NOT NULL,
    status    text NOT NULL,                     -- delivered, failed, rate_limited, ambiguous, unreachable
    at        timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------- daemon heartbeats
CREATE TABLE daemon_status (
    daemon      text NOT NULL,
    instance    text NOT NULL,
    host        text NOT NULL,
    pid         integer NOT NULL,
    started_at  timestamptz NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT now(),
    status      text,
    dependencies jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (daemon, instance)
);

-- A title's classification reaches every posting that carries it (which re-queues their embedding).
CREATE FUNCTION jobpipe_titles_propagate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE postings SET occupation_id = NEW.occupation_id, updated_at = now()
     WHERE title_id = NEW.id AND occupation_id IS DISTINCT FROM NEW.occupation_id;
    RETURN NULL;
END $$;
CREATE TRIGGER titles_propagate AFTER UPDATE OF occupation_id ON titles
    FOR EACH ROW WHEN (NEW.occupation_id IS DISTINCT FROM OLD.occupation_id)
    EXECUTE FUNCTION jobpipe_titles_propagate();
