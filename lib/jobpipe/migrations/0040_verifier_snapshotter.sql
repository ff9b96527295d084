-- Verifier and snapshotter (issue 7): sweep state, the staleness index, snapshot extras, similarity runs.

-- "Unverified since": when a posting was last confirmed to exist (verified_at), or first seen when it
-- never was. The sweep takes the stale range of this index and the oldest-unverified gauge its first
-- entry, so neither scans the table.
CREATE INDEX postings_unverified_since ON postings ((coalesce(verified_at, first_seen_at))) WHERE active;

-- The sweep's rate budget, shared by every verifier instance (row-locked, database clock): the sweep
-- may enqueue `sweep_per_minute` postings per minute in total, however many instances run.
CREATE TABLE verifier_sweep (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    last_at  timestamptz NOT NULL DEFAULT 'epoch',  -- long ago: the first sweep has a full minute
    enqueued bigint NOT NULL DEFAULT 0              -- total, for `jobpipe verify --status`
);
INSERT INTO verifier_sweep DEFAULT VALUES;

-- Snapshot figures beyond the original three: postings that went inactive that day.
ALTER TABLE demand_snapshots ADD COLUMN ended_postings integer NOT NULL DEFAULT 0;
-- What a run counted and how long it took (rows = 0 still records that an empty day ran).
ALTER TABLE snapshot_runs
    ADD COLUMN active_postings bigint NOT NULL DEFAULT 0,
    ADD COLUMN seconds real;
CREATE INDEX postings_inactive_since ON postings (inactive_since) WHERE inactive_since IS NOT NULL;

-- The vector each occupation was compared by (the posting centroid or the name embedding), replaced
-- together with occupation_similarity in one transaction. Kept inline (no TOAST) up to ~2,000
-- dimensions: the all-pairs comparison reads every vector 3,600 times, and a TOAST fetch per read
-- made it ten times slower.
CREATE TABLE occupation_vectors (
    occupation_id bigint PRIMARY KEY,
    model         text NOT NULL,
    basis         text NOT NULL CHECK (basis IN ('postings', 'names')),
    postings      integer NOT NULL,                -- embedded active postings behind the centroid
    embedding     vector NOT NULL,                 -- unit length
    computed_at   timestamptz NOT NULL DEFAULT now()
) WITH (toast_tuple_target = 8160);

-- One row per similarity computation (the "due" logic reads the last one; database clock).
CREATE TABLE similarity_runs (
    id            bigserial PRIMARY KEY,
    model         text NOT NULL,
    occupations   integer NOT NULL,
    from_postings integer NOT NULL,
    from_names    integer NOT NULL,
    pairs         integer NOT NULL,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL DEFAULT now(),
    seconds       real
);
CREATE INDEX similarity_runs_model_finished ON similarity_runs (model, finished_at);
