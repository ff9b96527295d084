"""The verifier: no active posting stays unverified.

Claims: stage 'verify' (subject = posting id) - background items from the sweep (jobpipe.verification)
  and on-demand ones (`jobpipe verify`, SQL jobpipe_request_verify()), which have a higher priority
  and are therefore claimed first.
Calls: the BA detail endpoint, one posting per call, `workers` at once (BAClient: rate limit,
  firewall retries).
Writes: 200 -> verified_at = now(), plus whatever changed (the fetcher's mapping in
  jobpipe.postings: upsert_postings for the item fields, store_descriptions for the text);
  404 STELLENANGEBOT_NICHT_GEFUNDEN -> active = false, inactive_since = now().
Errors: anything else is an ItemError (the queue retries with backoff, gives up after
  max_attempts; the next sweep cycle tries again). Only an unreachable API (connection refused,
  timeout, bad API key) defers the item without charge and backs the daemon off.
Tick: the sweep, at most every `sweep_interval_s`, and the gauge of the oldest unverified age.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests
from prometheus_client import Counter, Gauge

from jobpipe import postings, verification
from jobpipe.alerts.conditions import Condition, age_condition
from jobpipe.ba.client import BAClient, Gone
from jobpipe.ba.wire import PostingDetails, SchemaError
from jobpipe.errors import DependencyDown, ItemError
from jobpipe.queue import Item
from jobpipe.runtime import Context, Daemon, Skip, Stage

STAGE = verification.STAGE
VERIFIED = "verified"
GONE = "gone"
# DependencyDown kinds that say nothing about the posting: the API itself is unreachable.
_UNREACHABLE = frozenset({"connection", "timeout", "http_401"})


class VerifierDaemon(Daemon):
    name = "verifier"
    dependencies = ("ba_api",)

    def __init__(
        self,
        ctx: Context,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(ctx)
        cfg = ctx.cfg
        sec, ba = cfg.verifier, cfg.fetcher
        self.clock = clock
        self.next_sweep = 0.0
        self.client = BAClient(
            ba.base_url,
            ba.api_key,
            user_agent=ba.user_agent,
            session=session,
            max_concurrency=sec.workers,
            rate_limit_per_s=ba.rate_limit_per_s,
            read_timeout=ba.timeout_s,
            deadline_s=ba.deadline_s,
            max_response_bytes=ba.max_response_bytes,
            max_retries=sec.request_retries,
            max_description_chars=ba.description_max_chars,
            sleep=sleep,
            observer=lambda op, seconds, outcome: ctx.metrics.observe_model_call(op, "ba", seconds, outcome),
        )
        reg, p, d = ctx.metrics.registry, ctx.metrics.prefix, ctx.metrics.daemon
        self.m_oldest = Gauge(
            f"{p}oldest_unverified_age_seconds",
            "Age of the oldest unverified active posting (since verified, or first seen if never)",
            ["daemon"],
            registry=reg,
        )
        self.m_limit = Gauge(
            f"{p}oldest_unverified_limit_seconds",
            "Alert limit for the oldest unverified age: max_age + alert_margin",
            ["daemon"],
            registry=reg,
        )
        self.m_swept = Counter(
            f"{p}swept", "Stale postings enqueued by the background sweep", ["daemon"], registry=reg
        )
        self.m_oldest.labels(d).set(0)
        self.m_limit.labels(d).set(verification.alert_limit_s(sec.max_age_h, sec.alert_margin_h))
        self.m_swept.labels(d)

    def stages(self) -> list[Stage]:
        sec = self.ctx.cfg.verifier
        return [
            Stage(
                STAGE,
                self.load,
                self.call,
                self.write,
                batch_size=sec.batch_size,
                workers=sec.workers,
                per_item=True,
                max_attempts=sec.max_attempts,
            )
        ]

    # ------------------------------------------------------------------ sweep (loop thread)
    def tick(self, conn: Any) -> None:
        now = self.clock()
        if now < self.next_sweep:
            return
        sec = self.ctx.cfg.verifier
        self.next_sweep = now + sec.sweep_interval_s
        res = verification.sweep(
            conn,
            max_age_h=sec.max_age_h,
            per_minute=sec.sweep_per_minute,
            given_up_retry_h=sec.given_up_retry_h,
        )
        if res.enqueued:
            self.m_swept.labels(self.ctx.metrics.daemon).inc(res.enqueued)
        self.publish(conn, res.enqueued)

    def publish(self, conn: Any, swept: int = 0) -> verification.Staleness:
        sec = self.ctx.cfg.verifier
        st = verification.staleness(conn, sec.max_age_h, sec.alert_margin_h)
        self.m_oldest.labels(self.ctx.metrics.daemon).set(st.oldest_age_s)
        flag = " ALERT" if st.firing else ""
        self.ctx.set_status_extra(
            f"oldest unverified {st.oldest_age_s / 3600:.1f}h "
            f"(limit {st.limit_s / 3600:.0f}h){flag}; swept {swept}"
        )
        return st

    def alert_conditions(self, conn: Any) -> list[Condition]:
        """Alert-worthy: an active posting unverified for longer than max_age + alert_margin."""
        sec = self.ctx.cfg.verifier
        return [
            age_condition(
                "oldest_unverified",
                "active postings left unverified",
                verification.oldest_unverified_age(conn),
                verification.alert_limit_s(sec.max_age_h, sec.alert_margin_h),
                what="unverified active posting",
                hint="is the verifier keeping up? `jobpipe verify --status`; the BA rate "
                "(fetcher.rate_limit_per_s) and verifier.workers bound how many checks fit in max_age_h",
            )
        ]

    def pending_work(self, conn: Any) -> int:
        sec = self.ctx.cfg.verifier
        self.publish(conn)  # asked when the queue looks drained: the gauge ends up current
        return verification.stale_pending(
            conn, max_age_h=sec.max_age_h, given_up_retry_h=sec.given_up_retry_h
        )

    # ------------------------------------------------------------------ the stage
    def load(self, conn: Any, items: list[Item]) -> dict[int, Any]:
        rows = conn.execute(
            "SELECT id, source, external_id, active FROM postings WHERE id = ANY(%s)",
            ([i.subject for i in items],),
        ).fetchall()
        by_id = {r[0]: r for r in rows}
        out: dict[int, Any] = {}
        for it in items:
            r = by_id.get(it.subject)
            if r is None:
                continue  # deleted meanwhile: the runtime completes it as "missing"
            _, source, external_id, active = r
            if not active:
                out[it.id] = Skip("already_inactive")
            elif source != "ba":
                out[it.id] = Skip("not_ba")
            else:
                out[it.id] = (it.subject, external_id)
        return out

    def call(self, payloads: list[tuple[int, str]]) -> list[Any]:
        out: list[Any] = []
        for _posting_id, refnr in payloads:
            try:
                out.append(self.client.details(refnr))
            except SchemaError as exc:
                out.append(ItemError(str(exc), kind="schema_error"))
            except DependencyDown as exc:
                # The BA answered (after the client's own retries) with an error for this posting:
                # charge the item; the queue backs it off. Unreachable: not the posting's fault.
                out.append(exc if exc.kind in _UNREACHABLE else ItemError(str(exc), kind=exc.kind))
        return out

    def write(self, conn: Any, done: list[tuple[Item, Any, Any]]) -> dict[int, str]:
        records = []
        results: list[postings.DescriptionResult] = []
        for _item, (posting_id, refnr), res in done:
            if isinstance(res, Gone):
                results.append(postings.DescriptionResult(posting_id, postings.GONE))
                continue
            assert isinstance(res, PostingDetails)
            # Changed item fields go through the fetcher's own mapping (never a second one here);
            # a details answer for another referenznummer is not trusted with them.
            if res.record is not None and res.record.external_id == refnr:
                records.append(res.record)
            state = postings.EXTERNAL if res.is_external else postings.FETCHED
            results.append(postings.DescriptionResult(posting_id, state, res.description))
        if records:
            postings.upsert_postings(conn, records)
        stored = postings.store_descriptions(conn, results)
        outcome = {}
        for item, (posting_id, _), _res in done:
            state = stored.get(posting_id)
            outcome[item.id] = "missing" if state is None else (GONE if state == postings.GONE else VERIFIED)
        return outcome

    def close(self) -> None:
        self.client.close()


DAEMON = VerifierDaemon
