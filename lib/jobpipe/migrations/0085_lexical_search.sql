-- Lexical candidates beside the vector ones (issue 18).
--
-- pg_trgm ships with PostgreSQL's contrib and is a trusted extension (the database owner may
-- create it). Trigram similarity finds what an embedding of a short title misses: a qualifier
-- that drags the vector away ("Fleischer Instandhaltung"), a compound that contains the name
-- ("Großküchenkoch"), a typo.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- Every normalised name an occupation is known by (name_norm and its aliases: both gender forms,
-- curated abbreviations), one row each, so one trigram index serves all of them. Kept by a
-- trigger, so every writer of `occupations` (catalogue loads, repairs, tests) keeps it complete.
CREATE TABLE occupation_terms (
    occupation_id bigint NOT NULL REFERENCES occupations (id) ON DELETE CASCADE,
    term          text NOT NULL,
    PRIMARY KEY (occupation_id, term)
);
-- GiST, not GIN: candidates are the K nearest terms by trigram distance (`ORDER BY term <-> title
-- LIMIT K`, an index-ordered scan, 3-30 ms over the 15,000 terms of the full catalogue), where a
-- GIN `%` filter left the planner choosing a sequential scan of ~200 ms per title.
CREATE INDEX occupation_terms_trgm ON occupation_terms USING gist (term gist_trgm_ops);

CREATE FUNCTION jobpipe_occupation_terms() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM occupation_terms WHERE occupation_id = NEW.id;
    INSERT INTO occupation_terms (occupation_id, term)
    SELECT DISTINCT NEW.id, t FROM unnest(array_append(NEW.aliases, NEW.name_norm)) AS t
     WHERE t IS NOT NULL AND t <> '';
    RETURN NULL;
END $$;

CREATE TRIGGER occupations_terms AFTER INSERT OR UPDATE OF name_norm, aliases ON occupations
    FOR EACH ROW EXECUTE FUNCTION jobpipe_occupation_terms();

INSERT INTO occupation_terms (occupation_id, term)
SELECT DISTINCT o.id, t FROM occupations o, unnest(array_append(o.aliases, o.name_norm)) AS t
 WHERE t IS NOT NULL AND t <> '';

-- `jobpipe search`: trigram matches on the normalised posting title (GIN, `%>` = word similarity
-- of the query within the title). Built in the migration's transaction: a large existing table
-- takes a while once (an index over title_norm of a million postings: well under a minute).
CREATE INDEX postings_title_norm_trgm ON postings USING gin (title_norm gin_trgm_ops);
