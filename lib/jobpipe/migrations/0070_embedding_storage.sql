-- Keep vectors in the row. pgvector's type is stored EXTERNAL, so any row over ~2 kB (a vector
-- of more than ~500 dimensions) went to the TOAST table: two heap inserts per vector on write,
-- and a TOAST fetch per vector for every index build, search re-rank and similarity scan.
-- With the target at its maximum, rows up to a page stay inline (vectors up to ~2,000
-- dimensions, uncompressed: floats do not compress); larger ones are still TOASTed.
ALTER TABLE posting_embeddings SET (toast_tuple_target = 8160);
ALTER TABLE occupation_embeddings SET (toast_tuple_target = 8160);
