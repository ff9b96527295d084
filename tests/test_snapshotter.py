"""The snapshotter against a real PostgreSQL + pgvector: daily demand snapshots (checked against an
independent Python reference), unknown buckets, empty days, the database clock, two instances,
atomic replacement, occupation similarity (checked against numpy), the daemon, the CLI and the
benchmark's quick mode."""

from __future__ import annotations

import json
import logging
import random
import shutil
import subprocess
import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from jobpipe import cli, config, db, demand, runtime, similarity
from jobpipe.backoff import Backoff
from jobpipe.daemons.snapshotter import SnapshotterDaemon
from jobpipe.errors import ConfigError
from jobpipe.metrics import DaemonMetrics
from tests.bench_run import run_bench
from tests.waiting import in_thread, wait_until

ROOT = Path(__file__).resolve().parent.parent
TZ = "Europe/Berlin"
ZONE = ZoneInfo(TZ)
MODEL = "test-model"
DIMS = 8


# ---------------------------------------------------------------- helpers


@dataclass
class P:
    occ: int | None
    region: str | None
    first_seen: datetime
    last_seen: datetime
    active: bool
    inactive_since: datetime | None
    salary: bool


def use_zone(conn: Any, zone: str) -> None:
    """The database's (and this session's) time zone: day boundaries follow it."""
    conn.execute(f"ALTER DATABASE {conn.info.dbname} SET TimeZone = '{zone}'")
    conn.execute(f"SET TimeZone = '{zone}'")


def add_occupations(conn: Any, n: int, start: int = 1) -> None:
    conn.execute(
        "INSERT INTO occupations (id, name, name_norm) SELECT i, 'Beruf ' || i, 'beruf ' || i "
        "FROM generate_series(%s::int, %s::int) i",
        (start, start + n - 1),
    )


def add_postings(conn: Any, ps: list[P]) -> list[int]:
    rows = conn.execute(
        """INSERT INTO postings (external_id, occupation_id, region, first_seen_at, last_seen_at, active,
                                 inactive_since, has_salary)
           SELECT 'T-' || gen_random_uuid(), o, r, f, l, a, i, s
             FROM unnest(%s::bigint[], %s::text[], %s::timestamptz[], %s::timestamptz[], %s::bool[],
                         %s::timestamptz[], %s::bool[]) AS t(o, r, f, l, a, i, s)
           RETURNING id""",
        (
            [p.occ for p in ps],
            [p.region for p in ps],
            [p.first_seen for p in ps],
            [p.last_seen for p in ps],
            [p.active for p in ps],
            [p.inactive_since for p in ps],
            [p.salary for p in ps],
        ),
    ).fetchall()
    return [r[0] for r in rows]


def reference(ps: list[P], day: date) -> dict[tuple[int, str], tuple[int, int, int, int]]:
    """The snapshot of `day`, computed independently of the SQL."""
    d0 = datetime.combine(day, dtime(0), ZONE)
    d1 = datetime.combine(day + timedelta(days=1), dtime(0), ZONE)
    out: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for p in ps:
        ended = None if p.active else (p.inactive_since or p.last_seen)
        if p.first_seen < d1 and (ended is None or ended >= d0):
            region = p.region if p.region and p.region.strip(" ") else "UNKNOWN"
            g = out[(p.occ or 0, region)]
            g[0] += 1
            g[1] += p.first_seen >= d0
            g[2] += p.salary
            g[3] += ended is not None and ended < d1
    return {k: tuple(v) for k, v in out.items()}  # type: ignore[misc]


def stored(conn: Any, day: date) -> dict[tuple[int, str], tuple[int, int, int, int]]:
    rows = conn.execute(
        """SELECT occupation_id, region, active_postings, new_postings, with_salary, ended_postings
             FROM demand_snapshots WHERE day = %s""",
        (day,),
    ).fetchall()
    return {(r[0], r[1]): (r[2], r[3], r[4], r[5]) for r in rows}


def random_population(rng: random.Random, base: date, n: int) -> list[P]:
    ps = []
    start = datetime.combine(base, dtime(0), ZONE)
    for _ in range(n):
        first = start + timedelta(minutes=rng.randrange(0, 10 * 24 * 60))
        last = first + timedelta(minutes=rng.randrange(0, 4 * 24 * 60))
        active = rng.random() < 0.6
        inactive = None
        if not active and rng.random() < 0.8:
            inactive = last + timedelta(minutes=rng.randrange(0, 2 * 24 * 60))
        ps.append(
            P(
                occ=rng.choice([None, 1, 2, 3, 4, 5]),
                region=rng.choice([None, "", " ", "BERLIN", "BAYERN", "HESSEN"]),
                first_seen=first,
                last_seen=last,
                active=active,
                inactive_since=inactive,
                salary=rng.random() < 0.3,
            )
        )
    return ps


def make_cfg(**overrides: Any) -> config.Config:
    base = {
        "snapshotter__check_interval_s": 0.05,
        "queue__poll_interval_s": 0.05,
        "runtime__status_interval_s": 0.1,
        "embedder__model": MODEL,
        "embedder__dimensions": DIMS,
    }
    base.update(overrides)
    return config.load(path=None, environ={}).with_overrides(**base)


def waiting_on_lock(conn: Any, query_prefix: str) -> bool:
    """True when another backend waits for a heavyweight lock in a statement starting so."""
    row = conn.execute(
        """SELECT count(*) FROM pg_stat_activity
            WHERE wait_event_type = 'Lock' AND ltrim(query) LIKE %s AND pid <> pg_backend_pid()""",
        (query_prefix + "%",),
    ).fetchone()
    return row[0] > 0


@pytest.fixture
def conn(db_conn: Any) -> Any:
    use_zone(db_conn, TZ)
    return db_conn


# ---------------------------------------------------------------- the demand snapshot


def test_snapshot_matches_an_independent_reference_with_unknown_buckets(conn: Any) -> None:
    rng = random.Random(7)
    base = demand.db_today(conn) - timedelta(days=20)
    add_occupations(conn, 5)
    ps = random_population(rng, base, 600)
    add_postings(conn, ps)
    for offset in range(-1, 16):  # days before, during and after the population's life
        day = base + timedelta(days=offset)
        r = demand.snapshot_day(conn, day)
        expected = reference(ps, day)
        assert r.status == demand.DONE
        assert stored(conn, day) == expected, day
        assert r.rows == len(expected)
        assert r.active_postings == sum(v[0] for v in expected.values())
    # The unknown buckets are real rows (never dropped): postings without occupation / region.
    day = base + timedelta(days=5)
    keys = stored(conn, day)
    assert any(occ == demand.UNKNOWN_OCCUPATION for occ, _ in keys)
    assert any(region == demand.UNKNOWN_REGION for _, region in keys)
    assert sum(v[0] for (occ, _), v in keys.items() if occ == 0) == sum(
        1 for p in ps if p.occ is None and reference([p], day)
    )


def test_rerunning_a_day_replaces_it(conn: Any) -> None:
    rng = random.Random(11)
    base = demand.db_today(conn) - timedelta(days=20)
    add_occupations(conn, 5)
    ps = random_population(rng, base, 300)
    ids = add_postings(conn, ps)
    day = base + timedelta(days=6)
    first = demand.snapshot_day(conn, day)
    again = demand.snapshot_day(conn, day)
    assert (first.rows, first.active_postings) == (again.rows, again.active_postings)
    assert stored(conn, day) == reference(ps, day)
    assert conn.execute("SELECT count(*) FROM snapshot_runs WHERE day = %s", (day,)).fetchone()[0] == 1
    # Occupation 3 disappears from the data: its rows must vanish, not linger beside the new ones.
    conn.execute("UPDATE postings SET occupation_id = 4 WHERE occupation_id = 3")
    for p in ps:
        if p.occ == 3:
            p.occ = 4
    demand.snapshot_day(conn, day)
    after = stored(conn, day)
    assert after == reference(ps, day)
    assert not any(occ == 3 for occ, _ in after)
    assert len(ids) == 300


def test_a_day_without_postings_records_the_run_and_invents_no_rows(conn: Any) -> None:
    day = demand.db_today(conn) - timedelta(days=3)
    r = demand.snapshot_day(conn, day)
    assert (r.status, r.rows, r.active_postings) == (demand.DONE, 0, 0)
    assert conn.execute("SELECT count(*) FROM demand_snapshots").fetchone()[0] == 0
    assert conn.execute("SELECT rows FROM snapshot_runs WHERE day = %s", (day,)).fetchone()[0] == 0
    # A day with postings in the table, but none live on that day: still zero rows.
    add_occupations(conn, 1)
    later = datetime.combine(day + timedelta(days=2), dtime(9), ZONE)
    add_postings(conn, [P(1, "BERLIN", later, later, True, None, False)])
    assert demand.snapshot_day(conn, day).rows == 0
    assert demand.snapshot_day(conn, day + timedelta(days=2)).rows == 1
    assert conn.execute("SELECT count(*) FROM snapshot_runs").fetchone()[0] == 2


def set_db_local_time(conn: Any, hh: int, mm: int) -> None:
    """Give the database a fixed-offset time zone in which it is now about hh:mm."""
    utc_min = conn.execute("SELECT extract(epoch FROM (now() AT TIME ZONE 'UTC')::time) / 60").fetchone()[0]
    offset = (hh * 60 + mm - int(utc_min)) % 1440
    if offset > 720:
        offset -= 1440
    posix = -offset  # POSIX zone strings count minutes *west* of UTC
    sign = "-" if posix < 0 else "+"
    use_zone(conn, f"JPT{sign}{abs(posix) // 60:02d}:{abs(posix) % 60:02d}")


def test_due_days_follow_the_database_clock(conn: Any, pg_url: str) -> None:
    """The "now" is the database's: moving the database's clock (its time zone) moves what is due,
    whatever the clock of this host says."""
    set_db_local_time(conn, 12, 0)
    today = demand.db_today(conn)
    assert conn.execute("SELECT extract(hour FROM localtimestamp)").fetchone()[0] in (11, 12)
    # run_at passed (11:00 < ~12:00): yesterday is due; not yet (13:00): the day before.
    assert demand.latest_due_day(conn, dtime(11, 0)) == today - timedelta(days=1)
    assert demand.latest_due_day(conn, dtime(13, 0)) == today - timedelta(days=2)
    assert demand.due_days(conn, dtime(11, 0), 7) == [today - timedelta(days=1)]  # no postings: no catch-up
    # With postings since 10 days, up to catch_up_days missing days are due, oldest first.
    add_occupations(conn, 1)
    t = datetime.now(ZONE) - timedelta(days=10)
    add_postings(conn, [P(1, "BERLIN", t, t, True, None, False)])
    due = demand.due_days(conn, dtime(11, 0), 4)
    assert due == [today - timedelta(days=d) for d in (4, 3, 2, 1)]
    # The daemon decides by the same clock: at ~12:00 database time with run_at 13:00 it does
    # not do yesterday yet, with run_at 11:00 it does.
    cfg = make_cfg(snapshotter__catch_up_days=1)
    runtime.run_daemon(
        SnapshotterDaemon, cfg.with_overrides(snapshotter__run_at="13:00"), once=True, db_url=pg_url
    )
    assert [r[0] for r in conn.execute("SELECT day FROM snapshot_runs")] == [today - timedelta(days=2)]
    runtime.run_daemon(
        SnapshotterDaemon, cfg.with_overrides(snapshotter__run_at="11:00"), once=True, db_url=pg_url
    )
    days = [r[0] for r in conn.execute("SELECT day FROM snapshot_runs ORDER BY day")]
    assert days == [today - timedelta(days=2), today - timedelta(days=1)]
    # The database clock jumps back a few hours (before run_at again): nothing is redone or doubled.
    set_db_local_time(conn, 9, 0)
    back = demand.due_days(conn, dtime(11, 0), 4)
    assert back and not set(back) & set(days) and max(back) < today - timedelta(days=2)
    runtime.run_daemon(
        SnapshotterDaemon, cfg.with_overrides(snapshotter__run_at="11:00"), once=True, db_url=pg_url
    )
    n_days = conn.execute("SELECT count(*), count(DISTINCT day) FROM snapshot_runs").fetchone()
    assert n_days == (2, 2)  # catch_up_days=1: only the (already done) latest due day was looked at


def test_a_partial_day_is_not_done(conn: Any) -> None:
    """A manual run of today does not count: the scheduled run replaces it once the day is over."""
    today = demand.db_today(conn)
    demand.snapshot_day(conn, today)
    assert demand.missing_days(conn, today, today) == [today]
    yesterday = today - timedelta(days=1)
    demand.snapshot_day(conn, yesterday)
    assert demand.missing_days(conn, yesterday, yesterday) == []


def test_bad_run_at_is_a_config_error() -> None:
    for bad in ("3", "25:00", "03:60", "noon", "", "03:00:00"):
        with pytest.raises(ConfigError, match=r"snapshotter\.run_at"):
            demand.parse_run_at(bad)
    assert demand.parse_run_at("3:05") == dtime(3, 5)


def test_two_instances_one_computes_the_other_skips(conn: Any, pg_url: str) -> None:
    day = demand.db_today(conn) - timedelta(days=1)
    other = db.connect(pg_url)
    try:
        # Another instance holds the lock: this one skips and writes nothing.
        other.execute("SELECT pg_advisory_lock(%s)", (demand.SNAPSHOT_LOCK,))
        assert demand.snapshot_day(conn, day, only_if_missing=True).status == demand.SKIPPED_LOCKED
        assert conn.execute("SELECT count(*) FROM snapshot_runs").fetchone()[0] == 0
        other.execute("SELECT pg_advisory_unlock(%s)", (demand.SNAPSHOT_LOCK,))
        # Racing for real: of two instances only one computes the day, whatever the interleaving.
        results = []
        barrier = threading.Barrier(2)

        def race(c: Any) -> None:
            barrier.wait()
            results.append(demand.snapshot_day(c, day, only_if_missing=True).status)

        threads = [threading.Thread(target=race, args=(c,)) for c in (conn, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert sorted(results).count(demand.DONE) == 1
        assert set(results) - {demand.DONE} <= {demand.SKIPPED_LOCKED, demand.SKIPPED_PRESENT}
        assert conn.execute("SELECT count(*) FROM snapshot_runs WHERE day = %s", (day,)).fetchone()[0] == 1
    finally:
        other.close()


def test_two_daemons_compute_each_day_once(conn: Any, pg_url: str) -> None:
    add_occupations(conn, 3)
    t = datetime.now(ZONE) - timedelta(days=4)
    add_postings(conn, [P(1 + i % 3, "BERLIN", t, t, True, None, i % 2 == 0) for i in range(50)])
    cfg = make_cfg(snapshotter__run_at="00:00", snapshotter__catch_up_days=10)
    due = demand.due_days(conn, dtime(0, 0), 10)
    assert len(due) >= 4
    metrics = [DaemonMetrics("snapshotter"), DaemonMetrics("snapshotter")]
    threads = [
        in_thread(lambda m=m: runtime.run_daemon(SnapshotterDaemon, cfg, once=True, db_url=pg_url, metrics=m))
        for m in metrics
    ]
    for th, box in threads:
        th.join(60)
        assert not th.is_alive() and box.get("result") == 0, box
    done = sum(
        m.registry.get_sample_value(
            "jobpipe_snapshotter_runs_total", {"daemon": "snapshotter", "kind": "snapshot", "result": "done"}
        )
        or 0
        for m in metrics
    )
    assert done == len(due)
    rows = conn.execute("SELECT day, count(*) FROM snapshot_runs GROUP BY day").fetchall()
    assert sorted(d for d, _ in rows) == due and all(n == 1 for _, n in rows)


def test_a_daemon_waits_out_another_instance_holding_the_day(conn: Any, pg_url: str) -> None:
    """Deterministic overlap: instance A (this test) holds the lock while instance B (the daemon)
    comes; B skips, A completes the day, B then finds it done and never computes it."""
    cfg = make_cfg(snapshotter__run_at="00:00", snapshotter__catch_up_days=1)
    day = demand.latest_due_day(conn, dtime(0, 0))
    other = db.connect(pg_url)
    other.execute("SELECT pg_advisory_lock(%s)", (demand.SNAPSHOT_LOCK,))
    m = DaemonMetrics("snapshotter")
    th, box = in_thread(
        lambda: runtime.run_daemon(SnapshotterDaemon, cfg, once=True, db_url=pg_url, metrics=m)
    )
    try:

        def skipped() -> float:
            return (
                m.registry.get_sample_value(
                    "jobpipe_snapshotter_runs_total",
                    {"daemon": "snapshotter", "kind": "snapshot", "result": "skipped_locked"},
                )
                or 0.0
            )

        wait_until(lambda: skipped() >= 1, timeout=20, what="the daemon to skip the locked day")
        assert th.is_alive()  # the day is still missing: --once keeps waiting for it
        # Instance A finishes the day (its session lock is re-entrant), then lets go.
        assert demand.snapshot_day(other, day, only_if_missing=True).status == demand.DONE
        other.execute("SELECT pg_advisory_unlock(%s)", (demand.SNAPSHOT_LOCK,))
    finally:
        other.close()
    th.join(30)
    assert box.get("result") == 0, box
    done = m.registry.get_sample_value(
        "jobpipe_snapshotter_runs_total", {"daemon": "snapshotter", "kind": "snapshot", "result": "done"}
    )
    assert not done
    assert conn.execute("SELECT count(*) FROM snapshot_runs WHERE day = %s", (day,)).fetchone()[0] == 1


def test_readers_see_the_old_day_or_the_new_one_never_half(conn: Any, pg_url: str) -> None:
    add_occupations(conn, 5)
    rng = random.Random(3)
    base = demand.db_today(conn) - timedelta(days=20)
    ps = random_population(rng, base, 200)
    add_postings(conn, ps)
    day = base + timedelta(days=5)
    demand.snapshot_day(conn, day)
    old = stored(conn, day)
    conn.execute("UPDATE postings SET region = 'SAARLAND'")
    blocker, reader = db.connect(pg_url), db.connect(pg_url)
    try:
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE snapshot_runs IN EXCLUSIVE MODE")  # the run's last statement waits
        worker = db.connect(pg_url)
        worker.execute(f"SET TimeZone = '{TZ}'")
        th, box = in_thread(lambda: demand.snapshot_day(worker, day, wait=True))
        wait_until(
            lambda: waiting_on_lock(reader, "INSERT INTO snapshot_runs"), 20, what="the run to reach its end"
        )
        assert stored(reader, day) == old  # the deleted and re-inserted rows are invisible until commit
        blocker.execute("COMMIT")
        th.join(20)
        assert box["result"].status == demand.DONE
        new = stored(reader, day)
        assert new != old and all(region in ("SAARLAND",) for _, region in new)
        worker.close()
    finally:
        blocker.close()
        reader.close()


# ---------------------------------------------------------------- similarity


def vec(rng: np.random.Generator, base: np.ndarray | None = None, noise: float = 0.3) -> list[float]:
    v = rng.normal(size=DIMS) if base is None else base + rng.normal(scale=noise, size=DIMS)
    return [float(x) for x in v]


def similarity_fixture(conn: Any, seed: int = 5) -> dict[int, np.ndarray]:
    """12 occupations: 1-8 with >= 5 embedded active postings, 9-10 with 2 (and a name vector),
    11 with 2 and no name vector, 12 with a name vector only. Returns the expected vectors."""
    rng = np.random.default_rng(seed)
    add_occupations(conn, 12)
    bases = {o: rng.normal(size=DIMS) for o in range(1, 13)}
    for o in range(1, 11):
        conn.execute(
            "INSERT INTO occupation_embeddings (occupation_id, model, text_hash, embedding) "
            "VALUES (%s, %s, 'h', %s::vector)",
            (o, MODEL, vec(rng, bases[o])),
        )
    conn.execute(
        "INSERT INTO occupation_embeddings (occupation_id, model, text_hash, embedding) "
        "VALUES (12, %s, 'h', %s::vector)",
        (MODEL, vec(rng, bases[12])),
    )
    now = datetime.now(ZONE)
    counts = {o: 5 + o for o in range(1, 9)} | {9: 2, 10: 2, 11: 2}
    expected: dict[int, np.ndarray] = {}
    for o, n in counts.items():
        ids = add_postings(conn, [P(o, "BERLIN", now, now, True, None, False) for _ in range(n)])
        vs = [vec(rng, bases[o]) for _ in ids]
        conn.execute(
            """INSERT INTO posting_embeddings (posting_id, model, text_hash, dimensions, embedding)
               SELECT i, %s, 'h', %s, v::vector FROM unnest(%s::bigint[], %s::text[]) AS t(i, v)""",
            (MODEL, DIMS, ids, [str(v) for v in vs]),
        )
        if n >= 5 or o == 11:
            expected[o] = np.mean(np.array(vs), axis=0)
    # Noise the centroids must ignore: an inactive posting, another model, another dimension.
    gone = add_postings(conn, [P(1, "BERLIN", now, now, False, now, False)])[0]
    conn.execute(
        "INSERT INTO posting_embeddings VALUES (%s, %s, 'h', %s, %s::vector)",
        (gone, MODEL, DIMS, [100.0] * DIMS),
    )
    conn.execute(
        "INSERT INTO posting_embeddings SELECT posting_id, 'other', 'h', 3, '[9,9,9]' "
        "FROM posting_embeddings WHERE model = %s",
        (MODEL,),
    )
    for o in (9, 10, 12):
        expected[o] = np.array(
            conn.execute("SELECT embedding FROM occupation_embeddings WHERE occupation_id = %s", (o,))
            .fetchone()[0]
            .to_list()
        )
    return expected


def numpy_top_k(vectors: dict[int, np.ndarray], k: int) -> dict[int, list[tuple[int, float]]]:
    ids = sorted(vectors)
    m = np.array([vectors[i] / np.linalg.norm(vectors[i]) for i in ids])
    sims = m @ m.T
    out = {}
    for a, i in enumerate(ids):
        cands = sorted(((-float(sims[a, b]), j) for b, j in enumerate(ids) if j != i))[:k]
        out[i] = [(j, -s) for s, j in cands]
    return out


def test_similarity_matches_numpy_with_the_name_fallback(conn: Any) -> None:
    expected = similarity_fixture(conn)
    r = similarity.compute(conn, model=MODEL, dims=DIMS, top_k=4, min_postings=5, min_score=-1.0)
    assert (r.status, r.occupations, r.from_postings, r.from_names) == (similarity.DONE, 12, 9, 3)
    assert r.pairs == 12 * 4
    basis = dict(conn.execute("SELECT occupation_id, basis FROM occupation_vectors").fetchall())
    assert {o for o, b in basis.items() if b == "names"} == {9, 10, 12}
    assert basis[11] == "postings"  # too few postings, but no name vector: the centroid still counts
    want = numpy_top_k(expected, 4)
    got = defaultdict(list)
    for occ, sim_id, rank, score in conn.execute(
        "SELECT occupation_id, similar_id, rank, score FROM occupation_similarity ORDER BY 1, 3"
    ):
        got[occ].append((sim_id, score))
        assert rank == len(got[occ])
    for occ, pairs in want.items():
        assert [j for j, _ in got[occ]] == [j for j, _ in pairs], occ
        assert [s for _, s in got[occ]] == pytest.approx([s for _, s in pairs], abs=1e-5)
    # min_score drops weak pairs; what is kept is still the top of each list.
    similarity.compute(conn, model=MODEL, dims=DIMS, top_k=4, min_postings=5, min_score=0.5)
    kept = conn.execute("SELECT min(score), count(*) FROM occupation_similarity").fetchone()
    assert kept[0] >= 0.5 and kept[1] == sum(1 for ps in want.values() for _, s in ps if s >= 0.5)


@pytest.mark.parametrize(("n", "dims"), [(400, 64), (40, similarity.HALFVEC_MAX_DIMS + 1)])
def test_similarity_top_k_is_exact_on_random_vectors(conn: Any, n: int, dims: int) -> None:
    """Random vectors (similarities crowd around 0: the hardest case for the half-precision
    candidate scan) give exactly numpy's top-K; above halfvec's 4,000 dimensions the full-precision
    scan runs instead."""
    rng = np.random.default_rng(n)
    add_occupations(conn, n)
    vectors = {o: rng.normal(size=dims) for o in range(1, n + 1)}
    conn.execute(
        """INSERT INTO occupation_embeddings (occupation_id, model, text_hash, embedding)
           SELECT o, %s, 'h', v::vector FROM unnest(%s::bigint[], %s::text[]) AS t(o, v)""",
        (MODEL, list(vectors), [str([float(x) for x in v]) for v in vectors.values()]),
    )
    r = similarity.compute(conn, model=MODEL, dims=dims, top_k=10, min_postings=5, min_score=-1.0)
    assert (r.occupations, r.from_names, r.pairs) == (n, n, n * 10)
    want = numpy_top_k(vectors, 10)
    got = defaultdict(list)
    for occ, sim_id, score in conn.execute(
        "SELECT occupation_id, similar_id, score FROM occupation_similarity ORDER BY occupation_id, rank"
    ):
        got[occ].append((sim_id, score))
    for occ, pairs in want.items():
        assert [j for j, _ in got[occ]] == [j for j, _ in pairs], occ
        assert [s for _, s in got[occ]] == pytest.approx([s for _, s in pairs], abs=1e-5)


def test_similarity_without_vectors_keeps_the_previous_result(conn: Any) -> None:
    similarity_fixture(conn)
    similarity.compute(conn, model=MODEL, dims=DIMS, top_k=3, min_postings=5)
    before = conn.execute("SELECT * FROM occupation_similarity ORDER BY 1, 2").fetchall()
    assert before
    r = similarity.compute_or_keep(conn, model="not-embedded-yet", dims=DIMS, top_k=3, min_postings=5)
    assert r.status == similarity.NO_VECTORS
    assert conn.execute("SELECT * FROM occupation_similarity ORDER BY 1, 2").fetchall() == before
    assert conn.execute("SELECT count(*) FROM occupation_vectors").fetchone()[0] == 12
    # Due logic per model, by the database clock: a no-vector run is retried within the hour.
    assert not similarity.is_due(conn, 24, MODEL)
    assert not similarity.is_due(conn, 24, "not-embedded-yet")
    conn.execute(
        "UPDATE similarity_runs SET finished_at = finished_at - interval '2 hours' WHERE occupations = 0"
    )
    assert similarity.is_due(conn, 24, "not-embedded-yet")
    conn.execute("UPDATE similarity_runs SET finished_at = finished_at - interval '25 hours'")
    assert similarity.is_due(conn, 24, MODEL)


def test_similarity_readers_never_see_half_a_table(conn: Any, pg_url: str) -> None:
    similarity_fixture(conn)
    similarity.compute(conn, model=MODEL, dims=DIMS, top_k=3, min_postings=5)
    old = conn.execute(
        "SELECT occupation_id, similar_id, score FROM occupation_similarity ORDER BY 1, 2"
    ).fetchall()
    conn.execute("UPDATE occupation_embeddings SET embedding = embedding * '[1,-1,1,-1,1,-1,1,-1]'::vector")
    conn.execute("DELETE FROM posting_embeddings")
    blocker, reader, worker = db.connect(pg_url), db.connect(pg_url), db.connect(pg_url)
    try:
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE similarity_runs IN EXCLUSIVE MODE")
        th, box = in_thread(
            lambda: similarity.compute(worker, model=MODEL, dims=DIMS, top_k=3, min_postings=5, wait=True)
        )
        wait_until(
            lambda: waiting_on_lock(reader, "INSERT INTO similarity_runs"),
            20,
            what="the run to reach its end",
        )
        seen = reader.execute(
            "SELECT occupation_id, similar_id, score FROM occupation_similarity ORDER BY 1, 2"
        ).fetchall()
        assert seen == old
        blocker.execute("COMMIT")
        th.join(20)
        assert box["result"].status == similarity.DONE and box["result"].from_names == 11
        new = reader.execute(
            "SELECT occupation_id, similar_id, score FROM occupation_similarity ORDER BY 1, 2"
        ).fetchall()
        assert new != old and len(new) == 11 * 3
    finally:
        for c in (blocker, reader, worker):
            c.close()


# ---------------------------------------------------------------- the daemon


@pytest.mark.system
def test_daemon_catches_up_days_and_computes_similarity(conn: Any, pg_url: str) -> None:
    similarity_fixture(conn)
    t = datetime.now(ZONE) - timedelta(days=3)
    add_postings(conn, [P(None, None, t, t, True, None, True), P(2, "HESSEN", t, t, False, None, False)])
    cfg = make_cfg(
        snapshotter__run_at="00:00", snapshotter__catch_up_days=30, snapshotter__similarity_top_k=3
    )
    due = demand.due_days(conn, dtime(0, 0), 30)
    m = DaemonMetrics("snapshotter")
    assert runtime.run_daemon(SnapshotterDaemon, cfg, once=True, db_url=pg_url, metrics=m) == 0
    assert [r[0] for r in conn.execute("SELECT day FROM snapshot_runs ORDER BY day")] == due
    assert demand.due_days(conn, dtime(0, 0), 30) == []
    assert conn.execute("SELECT count(*) FROM occupation_similarity").fetchone()[0] == 12 * 3
    value = m.registry.get_sample_value
    assert value("jobpipe_snapshotter_missing_snapshots", {"daemon": "snapshotter"}) == 0
    assert value("jobpipe_snapshotter_similarity_pairs", {"daemon": "snapshotter"}) == 36
    assert (
        value("jobpipe_snapshotter_snapshot_rows", {"daemon": "snapshotter"})
        == stored(conn, due[-1]).__len__()
    )
    assert value(
        "jobpipe_items_processed_total", {"daemon": "snapshotter", "stage": "snapshot", "outcome": "done"}
    ) == len(due)
    promtool = shutil.which("promtool")
    if promtool:  # the daemon's own metrics follow Prometheus naming rules
        lint = subprocess.run([promtool, "check", "metrics"], input=m.exposition(), capture_output=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr
    # A second run finds nothing due and computes nothing.
    m2 = DaemonMetrics("snapshotter")
    assert runtime.run_daemon(SnapshotterDaemon, cfg, once=True, db_url=pg_url, metrics=m2) == 0
    assert not m2.registry.get_sample_value(
        "jobpipe_snapshotter_runs_total", {"daemon": "snapshotter", "kind": "snapshot", "result": "done"}
    )


def test_daemon_stop_cancels_a_running_snapshot_without_writing_half(conn: Any, pg_url: str) -> None:
    cfg = make_cfg(snapshotter__run_at="00:00", snapshotter__catch_up_days=1)
    blocker = db.connect(pg_url)
    blocker.execute("BEGIN")
    blocker.execute("LOCK TABLE demand_snapshots IN ACCESS EXCLUSIVE MODE")  # the job's DELETE hangs
    runner = runtime.Runner(SnapshotterDaemon, cfg, db_url=pg_url, serve=False)
    th, box = in_thread(runner.run)
    try:
        wait_until(lambda: waiting_on_lock(conn, "DELETE FROM demand_snapshots"), 20, what="the job to start")
        runner.stop.set()
        th.join(30)
        assert not th.is_alive() and box.get("result") == 0, box
        assert not waiting_on_lock(conn, "DELETE FROM demand_snapshots")  # cancelled, not left behind
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert conn.execute("SELECT count(*) FROM snapshot_runs").fetchone()[0] == 0


def test_alert_conditions_overdue_days_and_stale_similarity(conn: Any, pg_url: str) -> None:
    similarity_fixture(conn)
    t = datetime.now(ZONE) - timedelta(days=10)
    add_postings(conn, [P(1, "BERLIN", t, t, True, None, False)])
    cfg = make_cfg(snapshotter__run_at="00:00", snapshotter__catch_up_days=5)
    ctx = runtime.Context(
        cfg, DaemonMetrics("snapshotter"), "t", pg_url, threading.Event(), logging.getLogger()
    )
    daemon = SnapshotterDaemon(ctx)
    try:

        def conds() -> dict[str, Any]:
            return {c.key: c for c in daemon.alert_conditions(conn)}

        c = conds()
        assert c["snapshot_overdue"].active and "4 day(s)" in c["snapshot_overdue"].numbers
        assert not c["similarity_stale"].active  # never computed: nothing to be stale
        due = demand.due_days(conn, dtime(0, 0), 5)
        for day in due[:-1]:
            demand.snapshot_day(conn, day)
        assert not conds()["snapshot_overdue"].active  # only the newest is missing: it may be running
        similarity.compute(conn, model=MODEL, dims=DIMS, top_k=3, min_postings=5)
        assert not conds()["similarity_stale"].active
        conn.execute(
            "UPDATE similarity_runs SET finished_at = now() - interval '50 hours'"
        )  # > 2 x 24 h + 1 h
        assert conds()["similarity_stale"].active
    finally:
        daemon.close()


def test_daemon_refuses_a_bad_run_at(pg_url: str) -> None:
    cfg = make_cfg(snapshotter__run_at="25:99")
    with pytest.raises(ConfigError, match=r"snapshotter\.run_at"):
        runtime.run_daemon(SnapshotterDaemon, cfg, once=True, db_url=pg_url)


# ---------------------------------------------------------------- CLI


@pytest.fixture
def cfg_file(tmp_path: Path, pg_url: str) -> str:
    path = tmp_path / "jobpipe.yaml"
    path.write_text(f"database:\n  url: '{pg_url}'\nembedder:\n  model: {MODEL}\n  dimensions: {DIMS}\n")
    return str(path)


def test_cli_snapshot_day_since_and_bad_input(
    conn: Any, cfg_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    add_occupations(conn, 2)
    today = demand.db_today(conn)
    t = datetime.combine(today - timedelta(days=5), dtime(10), ZONE)
    add_postings(conn, [P(1, "BERLIN", t, t, True, None, True), P(None, "", t, t, True, None, False)])
    assert cli.main(["-c", cfg_file, "snapshot", "--day", str(today - timedelta(days=2)), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["rows"], out["active_postings"], out["partial"]) == (2, 2, False)
    assert cli.main(["-c", cfg_file, "snapshot", "--since", str(today - timedelta(days=6))]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 and lines[0].startswith(str(today - timedelta(days=6)) + ": 0 rows")
    days = [r[0] for r in conn.execute("SELECT day FROM snapshot_runs ORDER BY day")]
    assert days == [today - timedelta(days=d) for d in range(6, 0, -1)]
    assert cli.main(["-c", cfg_file, "snapshot", "--day", str(today + timedelta(days=1))]) == 2
    assert "in the future" in capsys.readouterr().err
    assert cli.main(["-c", cfg_file, "snapshot", "--since", str(today)]) == 2
    assert "nothing to do" in capsys.readouterr().err
    # The review: a typo'd year ran one snapshot per day since then (740,000 from 0001-01-01).
    assert cli.main(["-c", cfg_file, "snapshot", "--since", "0224-01-01"]) == 2
    assert "days to compute, at most 3,660" in capsys.readouterr().err
    assert conn.execute("SELECT count(*) FROM snapshot_runs").fetchone()[0] == 6  # nothing new
    with pytest.raises(SystemExit) as exc:
        cli.main(["-c", cfg_file, "snapshot", "--day", "2026-02-30"])
    assert exc.value.code == 2 and "not a date" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["-c", cfg_file, "snapshot", "--day", str(today), "--since", str(today)])


def test_cli_similar(conn: Any, cfg_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    similarity_fixture(conn)
    conn.execute("UPDATE occupations SET name = 'Koch/Köchin' WHERE id = 3")
    assert cli.main(["-c", cfg_file, "snapshot", "--similarity"]) == 0
    assert "12 occupations" in capsys.readouterr().out
    assert cli.main(["-c", cfg_file, "similar", "koch/köchin", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (
        out["occupation_id"] == 3
        and [s["rank"] for s in out["similar"]] == list(range(1, 11))[: len(out["similar"])]
    )
    assert cli.main(["-c", cfg_file, "similar", "Beruf 1"]) == 0  # an exact name wins over parts of others
    assert capsys.readouterr().out.startswith("1 Beruf 1 ")
    assert cli.main(["-c", cfg_file, "similar", "eruf 1"]) == 2  # Beruf 1, 10, 11, 12
    assert "matches several occupations" in capsys.readouterr().err
    assert cli.main(["-c", cfg_file, "similar", "999"]) == 2
    assert cli.main(["-c", cfg_file, "similar", "Beruf 1\x00\udcff"]) == 2  # NUL / junk: a clean error
    assert capsys.readouterr().err.count("jobpipe:") == 2


# ---------------------------------------------------------------- benchmark (quick mode)


@pytest.mark.system
def test_benchmark_quick_mode(pg_server: dict[str, Any]) -> None:
    res, _ = run_bench("snapshotter.py", "--quick", "--db-url", pg_server["url"], timeout=240)
    assert res["mode"] == "quick" and res["snapshot_duplicate_keys"] == 0
    assert res["snapshot_active_postings"] > 0 and res["snapshot_rows"] > 0
    assert res["similarity_occupations"] == res["occupations"]
    assert res["similarity_from_names"] > 0 and res["similarity_from_postings"] > 0
    assert res["similarity_pairs"] == res["occupations"] * res["top_k"]
    assert res["snapshot_ok"] and res["similarity_ok"]


def test_snapshot_jobs_failing_run_after_run_are_a_failure_streak_in_health(
    conn: Any, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15's review: the snapshotter's failures went to Prometheus only, so `jobpipe health`
    and the failure-streak rule never saw a snapshot that failed every run (only
    `snapshot_overdue`, a day later). Its outcomes now go to stage_counts like the crawl's."""
    from jobpipe import health
    from jobpipe.daemons import snapshotter

    def failing_snapshot(job_conn: Any, day: date, **kw: Any) -> Any:  # the server refuses the write
        job_conn.execute("DO $$ BEGIN RAISE EXCEPTION 'no space' USING ERRCODE = 'disk_full'; END $$")

    monkeypatch.setattr(demand, "snapshot_day", failing_snapshot)
    monkeypatch.setattr(snapshotter, "FAILURE_BACKOFF", Backoff(0.01, 0.02))
    cfg = make_cfg(snapshotter__run_at="00:00", snapshotter__catch_up_days=3, alerts__failure_min_count=3)
    runner = runtime.Runner(SnapshotterDaemon, cfg, db_url=pg_url, serve=False)
    t, box = in_thread(runner.run)
    try:

        def snapshot_stage() -> Any:
            return next((s for s in health.collect(conn, cfg).stages if s.stage == "snapshot"), None)

        st = wait_until(lambda: (s := snapshot_stage()) and s.verdict == health.FAIL_ and s, timeout=30,
                        what="the snapshot stage FAIL in health")  # fmt: skip
    finally:
        runner.stop.set()
        t.join(30)
    assert "error" not in box, box.get("error")
    assert st.facts.failed_24h >= 3 and st.facts.done_24h == 0, st
