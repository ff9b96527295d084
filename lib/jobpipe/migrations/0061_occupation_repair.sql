-- A posting inserted in a transaction that overlaps the one classifying its title can miss the
-- title's occupation (the propagating UPDATE cannot see the uncommitted posting, and the posting
-- read the title before it was classified). The classifier repairs such postings periodically;
-- they are recent by construction, so the scan is bounded by first_seen_at.
CREATE FUNCTION jobpipe_repair_posting_occupations(p_since interval) RETURNS integer
LANGUAGE sql AS $$
    WITH fixed AS (
        UPDATE postings p SET occupation_id = t.occupation_id, updated_at = now()
          FROM titles t
         WHERE p.title_id = t.id
           AND p.first_seen_at > now() - p_since
           AND p.occupation_id IS DISTINCT FROM t.occupation_id
        RETURNING 1
    )
    SELECT count(*)::integer FROM fixed;
$$;
