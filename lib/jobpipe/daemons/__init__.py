"""The six jobpipe daemons. Each module says what its daemon claims, calls and writes;
the shared mechanics live in the jobpipe library (jobpipe.runtime, jobpipe.queue, ...)."""
