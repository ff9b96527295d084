"""The verifier against a real PostgreSQL and the fake BA server: the 2,114 stale postings of the
predecessor, on-demand requests first (and woken by NOTIFY), the rate-bounded sweep, a posting that
keeps failing (given up for the cycle, never stuck), bad answers, an unreachable API, the staleness
gauge and alert condition, and `jobpipe verify`."""

from __future__ import annotations

import io
import json
import logging
import random
import shutil
import subprocess
import threading
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from jobpipe import cli, config, db, postings, queue, runtime, verification
from jobpipe.ba.wire import decode_refnr, parse_search_page
from jobpipe.daemons.verifier import VerifierDaemon
from jobpipe.metrics import DaemonMetrics
from jobpipe.sim.ba import Answer, FakeBA
from jobpipe.sim.ba_data import Population
from tests.waiting import in_thread, wait_until

STALE = 2114


class RecordingBA(FakeBA):
    """The fake BA, plus the order in which postings were asked for and per-posting failures
    (the fake's own fault switches work per route, not per posting)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: list[str] = []
        self.fail: dict[str, int] = {}
        self._asked_lock = threading.Lock()

    def _details(self, segment: str, decision: Any) -> Answer:
        try:
            refnr = decode_refnr(segment)
        except ValueError:
            return super()._details(segment, decision)
        with self._asked_lock:
            self.asked.append(refnr)
            status = self.fail.get(refnr)
        if status is not None:
            return Answer(status, b'{"status":500,"error":"Internal Server Error"}')
        return super()._details(segment, decision)

    def times_asked(self, refnr: str) -> int:
        with self._asked_lock:
            return self.asked.count(refnr)


def make_cfg(fake: FakeBA, **overrides: Any) -> config.Config:
    base: dict[str, Any] = {
        "fetcher__base_url": fake.url,
        "fetcher__rate_limit_per_s": 1000.0,
        "verifier__workers": 4,
        "verifier__batch_size": 50,
        "verifier__sweep_per_minute": 100000,
        "verifier__sweep_interval_s": 0.05,
        "verifier__request_retries": 0,
        "queue__poll_interval_s": 0.05,
        "queue__backoff_base_s": 0.0,
        "runtime__status_interval_s": 0.1,
    }
    base.update(overrides)
    return config.load(path=None, environ={}).with_overrides(**base)


def store_population(conn: Any, pop: Population) -> dict[str, int]:
    """Store every posting the way the fetcher does (its parser and its upsert); {refnr: id}."""
    refnrs = pop.refnrs()
    for i in range(0, len(refnrs), 500):
        chunk = [pop.get(r) for r in refnrs[i : i + 500]]
        body = (
            b'{"ergebnisliste":['
            + b",".join(pop.item_json(p) for p in chunk)
            + b'],"maxErgebnisse":%d,"page":1,"size":%d}' % (len(chunk), len(chunk))
        )
        postings.upsert_postings(conn, parse_search_page(body).items)
    return dict(conn.execute("SELECT external_id, id FROM postings").fetchall())


def make_stale(conn: Any, ids: list[int], never_verified: bool, days: float = 5.0) -> None:
    """Age postings: first and last seen `days` ago, and verified then (or never)."""
    conn.execute(
        """UPDATE postings SET first_seen_at = now() - %(d)s * interval '1 day',
                  last_seen_at = now() - %(d)s * interval '1 day' + (id %% 1000) * interval '1 minute',
                  verified_at = CASE WHEN %(never)s THEN NULL ELSE now() - %(d)s * interval '1 day' END
            WHERE id = ANY(%(ids)s)""",
        {"d": days, "never": never_verified, "ids": ids},
    )


def verify_items(conn: Any) -> dict[str, int]:
    return dict(
        conn.execute("SELECT status, count(*) FROM queue WHERE stage = 'verify' GROUP BY 1").fetchall()
    )


def sample(m: DaemonMetrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, {"daemon": "verifier", **labels}) or 0.0


# ---------------------------------------------------------------- the predecessor's 2,114


@pytest.mark.system
def test_2114_stale_postings_end_verified_or_inactive_exactly_the_expired_ones(
    db_conn: Any, pg_url: str
) -> None:
    pop = Population.generate(STALE + 100, seed=3, expired_share=0.0)
    with RecordingBA(pop) as fake:
        ids = store_population(db_conn, pop)
        refnrs = pop.refnrs()
        stale, fresh = refnrs[:STALE], refnrs[STALE:]
        make_stale(db_conn, [ids[r] for r in stale[: STALE // 2]], never_verified=True)
        make_stale(db_conn, [ids[r] for r in stale[STALE // 2 :]], never_verified=False)
        db_conn.execute(
            "UPDATE postings SET verified_at = now() - interval '1 hour' WHERE id = ANY(%s)",
            ([ids[r] for r in fresh],),
        )
        # 10 % of the stale ones expired at the BA since we last saw them.
        expired = set(random.Random(9).sample(stale, STALE // 10))
        pop.expire(expired)
        pop.expire(fresh[:5])  # expired but fresh: not due, must stay untouched
        before = db_conn.execute("SELECT now()").fetchone()[0]
        m = DaemonMetrics("verifier")
        assert runtime.run_daemon(VerifierDaemon, make_cfg(fake), once=True, db_url=pg_url, metrics=m) == 0

        rows = db_conn.execute(
            "SELECT external_id, active, inactive_since, verified_at FROM postings "
            "WHERE external_id = ANY(%s)",
            (stale,),
        ).fetchall()
        assert len(rows) == STALE
        inactive = {r for r, active, _, _ in rows if not active}
        assert inactive == expired
        for r, active, since, verified in rows:
            if active:
                assert verified is not None and verified >= before, r
            else:
                assert since is not None and since >= before, r
        # Each stale posting was asked for exactly once; the fresh ones not at all.
        assert len(fake.asked) == STALE and set(fake.asked) == set(stale)
        assert db_conn.execute(
            "SELECT count(*) FROM postings WHERE external_id = ANY(%s) AND active "
            "AND verified_at > now() - interval '2 hours' AND verified_at < %s",
            (fresh, before),
        ).fetchone()[0] == len(fresh)
        assert verify_items(db_conn) == {"done": STALE}
        assert sample(m, "jobpipe_items_processed_total", stage="verify", outcome="gone") == len(expired)
        assert sample(m, "jobpipe_items_processed_total", stage="verify", outcome="verified") == STALE - len(
            expired
        )
        assert sample(m, "jobpipe_verifier_swept_total") == STALE
        promtool = shutil.which("promtool")
        if promtool:  # the daemon's own metrics follow Prometheus naming rules
            lint = subprocess.run([promtool, "check", "metrics"], input=m.exposition(), capture_output=True)
            assert lint.returncode == 0, lint.stdout + lint.stderr
        # The oldest unverified active posting is now one of the fresh ones (about an hour).
        assert 3000 < sample(m, "jobpipe_verifier_oldest_unverified_age_seconds") < 7200


# ---------------------------------------------------------------- on demand


def test_on_demand_requests_are_served_before_the_backlog(db_conn: Any, pg_url: str) -> None:
    pop = Population.generate(300, seed=4, expired_share=0.0)
    with RecordingBA(pop) as fake:
        ids = store_population(db_conn, pop)
        refnrs = pop.refnrs()
        make_stale(db_conn, list(ids.values()), never_verified=True)
        cfg = make_cfg(fake, verifier__workers=1, verifier__batch_size=10)
        # The backlog is queued first ...
        res = verification.sweep(db_conn, max_age_h=72, per_minute=100000, given_up_retry_h=24)
        assert res.enqueued == 300
        # ... then on-demand requests arrive for postings at its end: by CLI and by SQL.
        wanted = refnrs[-5:]
        assert verification.request(db_conn, [str(ids[r]) for r in wanted[:3]] + wanted[3:4]) == (
            [ids[r] for r in wanted[:4]],
            [],
        )
        db_conn.execute("SELECT jobpipe_request_verify(%s)", (ids[wanted[4]],))
        prio = dict(
            db_conn.execute("SELECT subject, priority FROM queue WHERE stage = 'verify' AND priority > 0")
        )
        assert prio == {ids[r]: verification.ON_DEMAND_PRIORITY for r in wanted}
        assert runtime.run_daemon(VerifierDaemon, cfg, once=True, db_url=pg_url) == 0
        assert fake.asked[:5] == wanted  # first, in request order (equal priority: oldest first)
        assert len(fake.asked) == 300


def test_an_idle_verifier_is_woken_by_notify(db_conn: Any, pg_url: str, tmp_path: Path) -> None:
    pop = Population.generate(20, seed=5, expired_share=0.0)
    with RecordingBA(pop) as fake:
        ids = store_population(db_conn, pop)
        db_conn.execute("UPDATE postings SET verified_at = now() - interval '1 hour'")
        # Polling every 60 s: only a NOTIFY can make it answer within seconds.
        cfg = make_cfg(
            fake,
            queue__poll_interval_s=60.0,
            runtime__status_interval_s=60.0,
            verifier__sweep_interval_s=60.0,
        )
        runner = runtime.Runner(VerifierDaemon, cfg, db_url=pg_url, serve=False)
        th, _ = in_thread(runner.run)
        try:
            wait_until(
                lambda: db_conn.execute("SELECT count(*) FROM daemon_status").fetchone()[0] == 1,
                timeout=20,
                what="the verifier to be ready",
            )
            refnr = pop.refnrs()[7]
            pop.expire([refnr])
            cfg_file = tmp_path / "jobpipe.yaml"
            cfg_file.write_text(f"database:\n  url: '{pg_url}'\n")
            out = io.StringIO()
            started = time.monotonic()
            with redirect_stdout(out):
                rc = cli.main(["-c", str(cfg_file), "verify", refnr, "--wait", "15"])
            assert rc == 0 and time.monotonic() - started < 15
            assert out.getvalue().splitlines()[-1] == f"{ids[refnr]}: gone"
            assert fake.asked == [refnr]
        finally:
            runner.stop.set()
            db_conn.execute("NOTIFY jobpipe_verify")  # end the 60 s wait at once
            th.join(30)
        assert not th.is_alive()


# ---------------------------------------------------------------- the sweep


def test_sweep_is_rate_bounded_ordered_and_never_requeues_live_items(db_conn: Any, pg_url: str) -> None:
    pop = Population.generate(200, seed=6, expired_share=0.0)
    ids = list(store_population(db_conn, pop).values())
    never, old, fresh = ids[:80], ids[80:180], ids[180:]
    make_stale(db_conn, never, never_verified=True)
    make_stale(db_conn, old, never_verified=False)
    db_conn.execute("UPDATE postings SET verified_at = now() WHERE id = ANY(%s)", (fresh,))
    seen_lately = old[:50]  # stale, but still seen in recent crawls: they come last
    db_conn.execute("UPDATE postings SET last_seen_at = now() WHERE id = ANY(%s)", (seen_lately,))
    # An on-demand item that is live already: neither re-enqueued nor counted in the background cap.
    verification.request(db_conn, [str(never[0])])

    def sweep() -> verification.SweepResult:
        return verification.sweep(db_conn, max_age_h=72, per_minute=60, given_up_retry_h=24)

    first = sweep()  # first sweep: a full minute's budget
    assert (first.budget, first.enqueued) == (60, 60)
    queued = [
        r[0]
        for r in db_conn.execute(
            "SELECT subject FROM queue WHERE stage = 'verify' AND priority = 0 ORDER BY id"
        )
    ]
    # Never-verified first, least recently seen first; the live on-demand one skipped.
    expect = [
        r[0]
        for r in db_conn.execute(
            "SELECT id FROM postings WHERE id = ANY(%s) ORDER BY last_seen_at, id", (never[1:],)
        )
    ][:60]
    assert queued == expect
    assert sweep().enqueued == 0  # no time has passed: no budget
    # Half a minute later, with the first items done: 30 more, the rest of the never-verified
    # first, then the verified-long-ago ones.
    db_conn.execute(
        "UPDATE queue SET status = 'done', finished_at = now() WHERE stage = 'verify' AND priority = 0"
    )
    db_conn.execute("UPDATE postings SET verified_at = now() WHERE id = ANY(%s)", (queued,))
    db_conn.execute("UPDATE verifier_sweep SET last_at = now() - interval '30 seconds'")
    second = sweep()
    assert second.enqueued == 30
    new = [
        r[0]
        for r in db_conn.execute(
            "SELECT subject FROM queue WHERE stage = 'verify' AND status = 'pending' AND priority = 0"
        )
    ]
    remaining_never = set(never[1:]) - set(queued)
    assert len(remaining_never) == 19 and remaining_never <= set(new)
    assert set(new) - remaining_never <= set(old) - set(seen_lately) and len(new) == 30
    # Still pending: the live cap (per_minute) is not full, but the budget is spent.
    db_conn.execute("UPDATE verifier_sweep SET last_at = now() - interval '10 minutes'")
    third = sweep()
    assert third.enqueued == 60 - 30  # budget capped at one minute, minus the 30 live items
    subjects = [
        r[0]
        for r in db_conn.execute(
            "SELECT subject FROM queue WHERE stage = 'verify' AND status IN ('pending', 'running')"
        )
    ]
    assert len(subjects) == len(set(subjects))  # never two live items for one posting
    assert not set(subjects) & set(fresh)
    # Another instance sweeping right now holds the budget row: this one does nothing.
    other = db.connect(pg_url)
    try:
        other.execute("BEGIN")
        other.execute("SELECT * FROM verifier_sweep FOR UPDATE")
        db_conn.execute("UPDATE queue SET status = 'done', finished_at = now() WHERE stage = 'verify'")
        assert sweep() == verification.SweepResult(0, 0, 0)
        other.execute("ROLLBACK")
    finally:
        other.close()


def test_a_posting_that_keeps_failing_is_given_up_for_the_cycle_never_stuck(
    db_conn: Any, pg_url: str
) -> None:
    pop = Population.generate(20, seed=7, expired_share=0.0)
    with RecordingBA(pop) as fake:
        ids = store_population(db_conn, pop)
        make_stale(db_conn, list(ids.values()), never_verified=True)
        bad = pop.refnrs()[3]
        fake.fail[bad] = 500
        cfg = make_cfg(fake, verifier__max_attempts=3)
        m = DaemonMetrics("verifier")
        assert runtime.run_daemon(VerifierDaemon, cfg, once=True, db_url=pg_url, metrics=m) == 0
        assert fake.times_asked(bad) == 3
        assert verify_items(db_conn) == {"done": 19, "given_up": 1}
        assert sample(m, "jobpipe_items_processed_total", stage="verify", outcome="given_up") == 1
        row = db_conn.execute("SELECT attempts, last_error FROM queue WHERE status = 'given_up'").fetchone()
        assert row[0] == 3 and "500" in row[1]
        assert db_conn.execute(
            "SELECT active, verified_at FROM postings WHERE id = %s", (ids[bad],)
        ).fetchone() == (True, None)
        # Same cycle: the sweep leaves it alone (no request storm against a broken posting).
        assert runtime.run_daemon(VerifierDaemon, cfg, once=True, db_url=pg_url) == 0
        assert fake.times_asked(bad) == 3
        # The next cycle (given_up_retry_h later): swept again, its given-up item revived; the BA
        # has recovered, so it ends verified and nothing is left given up.
        db_conn.execute(
            "UPDATE queue SET finished_at = now() - interval '25 hours' WHERE status = 'given_up'"
        )
        del fake.fail[bad]
        assert runtime.run_daemon(VerifierDaemon, cfg, once=True, db_url=pg_url) == 0
        assert fake.times_asked(bad) == 4
        assert verify_items(db_conn) == {"done": 20}
        assert db_conn.execute(
            "SELECT verified_at IS NOT NULL FROM postings WHERE id = %s", (ids[bad],)
        ).fetchone()[0]


def test_bad_answers_are_retried_and_lose_nothing(db_conn: Any, pg_url: str) -> None:
    pop = Population.generate(30, seed=8, expired_share=0.0, dirty_share=0.5)
    with RecordingBA(pop) as fake:
        ids = store_population(db_conn, pop)
        make_stale(db_conn, list(ids.values()), never_verified=True)
        # A malformed 200 (HTML), a truncated body, a 404 without the gone code, a firewall 403.
        fake.faults.malformed_next(1, route="details")
        fake.faults.truncate_next(1, route="details")
        fake.fail[pop.refnrs()[0]] = 404
        fake.faults.fail_next(1, 403, route="details")
        cfg = make_cfg(fake, verifier__workers=1)
        assert runtime.run_daemon(VerifierDaemon, cfg, once=True, db_url=pg_url) == 0
        # The 404-without-code posting is not "gone" (a gateway hiccup is no expiry).
        assert db_conn.execute("SELECT count(*) FROM postings WHERE NOT active").fetchone()[0] == 0
        statuses = verify_items(db_conn)
        assert statuses.get("pending", 0) == 0 and statuses.get("running", 0) == 0
        assert statuses.get("done", 0) + statuses.get("given_up", 0) == 30
        # Dirty postings (NUL, invalid UTF-8, 1 MB text...) were verified and stored cleanly.
        n = db_conn.execute("SELECT count(*) FROM postings WHERE verified_at IS NOT NULL").fetchone()[0]
        assert statuses == {"done": 29, "given_up": 1} and n == 29
        # max_attempts, then given up for this cycle, with the reason kept.
        gave_up = db_conn.execute(
            "SELECT subject, attempts, last_error FROM queue WHERE status = 'given_up'"
        ).fetchone()
        assert gave_up[0] == ids[pop.refnrs()[0]] and gave_up[1] == 5 and "404" in gave_up[2]


def test_an_unreachable_api_defers_without_charging(db_conn: Any, pg_url: str) -> None:
    pop = Population.generate(10, seed=9, expired_share=0.0)
    fake = RecordingBA(pop).start()
    ids = store_population(db_conn, pop)
    make_stale(db_conn, list(ids.values()), never_verified=True)
    cfg = make_cfg(fake)
    fake.stop()  # connection refused from now on
    m = DaemonMetrics("verifier")
    runner = runtime.Runner(VerifierDaemon, cfg, db_url=pg_url, serve=False, metrics=m)
    th, _ = in_thread(runner.run)
    try:

        def deferred() -> bool:
            n = db_conn.execute(
                "SELECT count(*) FROM queue WHERE stage = 'verify' AND last_error LIKE '%ba_api%'"
            ).fetchone()[0]
            return n == 10

        wait_until(deferred, timeout=20, what="every item to be deferred")
        assert sample(m, "jobpipe_dependency_up", dependency="ba_api") == 0
    finally:
        runner.stop.set()
        th.join(30)
    assert not th.is_alive()
    rows = db_conn.execute("SELECT status, attempts FROM queue WHERE stage = 'verify'").fetchall()
    assert len(rows) == 10 and all(st == "pending" and att == 0 for st, att in rows), rows
    n = db_conn.execute(
        "SELECT count(*) FROM postings WHERE verified_at IS NOT NULL OR NOT active"
    ).fetchone()[0]
    assert n == 0


def test_changed_fields_go_through_the_fetchers_mapping(db_conn: Any, pg_url: str) -> None:
    pop = Population.generate(10, seed=10, expired_share=0.0, partner_share=0.0)
    with RecordingBA(pop) as fake:
        ids = store_population(db_conn, pop)
        make_stale(db_conn, list(ids.values()), never_verified=True)
        assert runtime.run_daemon(VerifierDaemon, make_cfg(fake), once=True, db_url=pg_url) == 0
        # A second cycle, in which one posting changed its title at the BA.
        make_stale(db_conn, list(ids.values()), never_verified=False)
        changed = pop.refnrs()[2]
        pop.modify(changed, title="Koch (m/w/d) Nachtschicht \x00 neu")
        db_conn.execute("DELETE FROM queue")
        assert runtime.run_daemon(VerifierDaemon, make_cfg(fake), once=True, db_url=pg_url) == 0
        title, desc, state = db_conn.execute(
            "SELECT title, description, description_state FROM postings WHERE id = %s", (ids[changed],)
        ).fetchone()
        assert title == "Koch (m/w/d) Nachtschicht neu" and "\x00" not in title
        assert state == "fetched" and desc and "Ihre Aufgaben" in desc
        # The trigger queued a new embedding for the changed posting only (the others' text and
        # fields are the same, so they were not rewritten).
        embeds = [r[0] for r in db_conn.execute("SELECT subject FROM queue WHERE stage = 'embed'")]
        assert embeds == [ids[changed]]
        assert verify_items(db_conn) == {"done": 10}


# ---------------------------------------------------------------- staleness: metric, STATUS, alert


def test_staleness_gauge_status_and_alert_condition(db_conn: Any, pg_url: str) -> None:
    pop = Population.generate(10, seed=11, expired_share=0.0)
    with RecordingBA(pop) as fake:
        ids = store_population(db_conn, pop)
        make_stale(db_conn, list(ids.values()), never_verified=False, days=5)  # 120 h > 72 + 24
        st = verification.staleness(db_conn, max_age_h=72, alert_margin_h=24)
        assert st.firing and 119 * 3600 < st.oldest_age_s < 121 * 3600 and st.limit_s == 96 * 3600
        assert "120" in st.message or "119" in st.message
        assert not verification.staleness(db_conn, max_age_h=72, alert_margin_h=60).firing
        m = DaemonMetrics("verifier")
        cfg = make_cfg(fake)
        ctx = runtime.Context(cfg, m, "test", pg_url, threading.Event(), logging.getLogger("test"))
        daemon = VerifierDaemon(ctx)
        try:
            assert daemon.publish(db_conn).firing
            # The same condition, as the alerting evaluates it (daemon hook).
            conds = daemon.alert_conditions(db_conn)
            assert [c.key for c in conds] == ["oldest_unverified"] and conds[0].active
        finally:
            daemon.close()
        assert ctx.status_extra.startswith("oldest unverified 120.0h (limit 96h) ALERT")
        assert 119 * 3600 < sample(m, "jobpipe_verifier_oldest_unverified_age_seconds") < 121 * 3600
        assert sample(m, "jobpipe_verifier_oldest_unverified_limit_seconds") == 96 * 3600
        # Once the verifier has run, nothing is old any more.
        m = DaemonMetrics("verifier")
        assert runtime.run_daemon(VerifierDaemon, cfg, once=True, db_url=pg_url, metrics=m) == 0
        assert sample(m, "jobpipe_verifier_oldest_unverified_age_seconds") < 60
        assert not verification.staleness(db_conn, 72, 24).firing


# ---------------------------------------------------------------- CLI


def test_cli_verify_queues_reports_unknown_and_shows_status(
    db_conn: Any, pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pop = Population.generate(5, seed=12, expired_share=0.0)
    ids = store_population(db_conn, pop)
    make_stale(db_conn, list(ids.values()), never_verified=True)
    cfg_file = tmp_path / "jobpipe.yaml"
    cfg_file.write_text(f"database:\n  url: '{pg_url}'\n")
    refnr = pop.refnrs()[1]
    rc = cli.main(["-c", str(cfg_file), "verify", str(ids[pop.refnrs()[0]]), refnr, "999999", "X-\x00\udcff"])
    cap = capsys.readouterr()
    assert rc == 2 and "queued 2 posting(s)" in cap.out
    assert "'999999'" in cap.err and cap.err.count("no posting") == 2
    rows = db_conn.execute(
        "SELECT subject, priority FROM queue WHERE stage = 'verify' ORDER BY subject"
    ).fetchall()
    assert rows == sorted([(ids[pop.refnrs()[0]], 10), (ids[refnr], 10)])
    assert cli.main(["-c", str(cfg_file), "verify", "--status", "--json"]) == 1  # 5 days > 72 h + 24 h
    out = json.loads(capsys.readouterr().out)
    assert out["alert"] and out["stale_active_postings"] == 5 and out["queued"] == 2
    assert cli.main(["-c", str(cfg_file), "verify"]) == 2
    assert "give posting ids" in capsys.readouterr().err
    assert queue.stats(db_conn, ["verify"])["verify"].pending == 2
