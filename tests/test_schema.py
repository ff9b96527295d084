"""The schema's triggers and functions: work enqueued with the change, titles linked on sight,
occupations propagated, and postings that raced their title's classification repaired."""

from __future__ import annotations


def insert_posting(conn, ext: str, title: str, norm: str) -> int:
    return conn.execute(
        "INSERT INTO postings (external_id, title, title_norm) VALUES (%s, %s, %s) RETURNING id",
        (ext, title, norm),
    ).fetchone()[0]


def add_occupation(conn, oid: int = 1, name: str = "Koch/Köchin") -> None:
    conn.execute(
        "INSERT INTO occupations (id, name, name_norm) VALUES (%s, %s, %s)", (oid, name, name.lower())
    )


def test_posting_links_title_and_takes_a_known_occupation(db_conn):
    add_occupation(db_conn)
    p1 = insert_posting(db_conn, "a", "Koch (m/w/d)", "koch")
    tid = db_conn.execute("SELECT title_id FROM postings WHERE id = %s", (p1,)).fetchone()[0]
    db_conn.execute("UPDATE titles SET occupation_id = 1, outcome = 'matched' WHERE id = %s", (tid,))
    assert db_conn.execute("SELECT occupation_id FROM postings WHERE id = %s", (p1,)).fetchone()[0] == 1
    p2 = insert_posting(db_conn, "b", "Koch in Vollzeit", "koch")
    assert db_conn.execute(
        "SELECT title_id, occupation_id FROM postings WHERE id = %s", (p2,)
    ).fetchone() == (tid, 1)
    assert db_conn.execute("SELECT count(*) FROM titles").fetchone()[0] == 1
    assert db_conn.execute("SELECT count(*) FROM queue WHERE stage = 'classify'").fetchone()[0] == 1


def test_posting_that_raced_its_title_classification_is_repaired(pg_url, db_conn):
    from jobpipe import db

    add_occupation(db_conn)
    insert_posting(db_conn, "a", "Koch", "koch")
    tid = db_conn.execute("SELECT id FROM titles").fetchone()[0]
    crawl = db.connect(pg_url)
    try:
        crawl.execute("BEGIN")
        raced = insert_posting(crawl, "b", "Koch (m/w/d)", "koch")  # reads the title: not classified yet
        db_conn.execute("UPDATE titles SET occupation_id = 1 WHERE id = %s", (tid,))  # cannot see "b"
        crawl.execute("COMMIT")
    finally:
        crawl.close()
    assert db_conn.execute("SELECT occupation_id FROM postings WHERE id = %s", (raced,)).fetchone()[0] is None
    assert db_conn.execute("SELECT jobpipe_repair_posting_occupations(interval '1 day')").fetchone()[0] == 1
    assert db_conn.execute("SELECT occupation_id FROM postings WHERE id = %s", (raced,)).fetchone()[0] == 1
    assert db_conn.execute("SELECT jobpipe_repair_posting_occupations(interval '1 day')").fetchone()[0] == 0


def test_nul_free_text_round_trips(db_conn):
    from jobpipe.text import clean_text

    dirty = b"Koch\x00 K\xc3\xb6chin \xff\xfe".decode("utf-8", errors="surrogateescape")
    cleaned = clean_text(dirty)
    insert_posting(db_conn, "n", cleaned, "koch")
    title = db_conn.execute("SELECT title FROM postings").fetchone()[0]
    assert "\x00" not in title and title.startswith("Koch Köchin")
