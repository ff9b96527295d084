"""jobpipe: the processing backbone for German job postings (BA Jobsuche -> PostgreSQL + pgvector)."""

__version__ = "0.1.0"
