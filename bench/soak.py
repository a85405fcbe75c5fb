"""Soak: ingest and claim rates on an empty database and on one holding a million
deliveries (issue 11, point 6: big tables must not slow the hot paths down).

One run, one fresh embedded PostgreSQL, one database that grows:

1. migrate it and make the day partitions of the last ``--days`` days;
2. on the EMPTY database measure (a) ingest: ``gateway serve --no-dispatcher`` under
   the load generator of ``bench/run.py`` (wrk or its Python fallback), every event
   writing one pending delivery per endpoint of its app; and (b) claim: ``--claims``
   past-due deliveries claimed and completed through the real queue
   (``gateway/store/postgres_queue.py``) by this process, as the dispatcher does (batches
   of ``GATEWAY_DISPATCH_BATCH``, at most ``GATEWAY_DISPATCH_CONCURRENCY`` claimed and
   unsettled, results written by group commit), with nothing sent: only database work;
3. fill it to ``--deliveries`` deliveries in SQL (events, deliveries and attempts spread
   over the last ``--days`` days, mostly succeeded, some failed, a backlog pending and
   past due), then VACUUM ANALYZE and CHECKPOINT;
4. measure (a) again, and (b) twice: on fresh work (past-due deliveries made in the
   last hour, dense in today's partition) and on the fill's old backlog (the oldest due
   deliveries, scattered among finished ones); print the rates, full/empty (target
   >= 0.9), CPU per process, WAL and buffers per item, and the claim queries' plans
   (claim_due and claim_due_plain) on both databases (EXPLAIN ANALYZE, BUFFERS, rolled
   back; custom and generic), which must read deliveries through an index, not a Seq
   Scan on a partition that holds rows, and should walk deliveries_due in order rather
   than read every due row.

After each ingest its deliveries are marked delivered (as a dispatcher would have left
them), so each claim phase finds only the backlog it is meant to find.

Usage: ``python bench/soak.py [--quick]``; writes ``bench/results/soak-latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import re
import shutil
import sys
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from common import Postgres, own_cpu
from run import (
    EVENT_BODY,
    HOST,
    Bench,
    BenchError,
    CpuMeter,
    busy_windows,
    fmt_cpu,
    free_port,
    git_state,
    machine_idle_check,
    percentile,
    prepare,
    r,
    run_loop,
)

from gateway.batching import GroupCommit
from gateway.config import Settings
from gateway.crypto import Sealer
from gateway.dispatcher import PUSH_KINDS
from gateway.retention import MAX_PARTITION_DAYS
from gateway.store.database import QUERIES, SESSION_SETTINGS, Database, migrate
from gateway.store.postgres_queue import PLAIN_PARAMS, PostgresQueue, claim_params
from gateway.store.queue import AttemptResult, Job, Rooms
from gateway_client.models import AttemptOutcome, DeliveryStatus

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "results" / "soak-latest.json"
TARGET_RATIO = 0.9
#: Events per fill statement (each writes one delivery per endpoint and their attempts).
FILL_CHUNK_EVENTS = 25_000
#: A Seq Scan on a deliveries partition with at least this many rows fails the plan check.
BIG_PARTITION_ROWS = 1_000

#: One chunk of events, their deliveries (one per endpoint of the event's app) and those
#: deliveries' attempts. $1 first event number, $2 events, $3 events in the whole set,
#: $4 its first millisecond, $5 the milliseconds it spans, $6 app ids, $7 a tag that keeps
#: ids of different sets apart, $8 $9 $10 parts per 10,000 of deliveries pending and past
#: due (the backlog), pending and due later (retries waiting), and failed; the rest
#: succeeded. $11 the payload. $12 how much earlier than usual the backlog falls due (a
#: claim takes the earliest due first). Ids have the gateway's shape: creation time in hex first,
#: so each row lands in its day's partition, and a delivery's id is its event's time.
FILL_SQL = """
WITH ev AS (
    INSERT INTO events (app_id, id, type, payload, created_at)
    SELECT ($6::text[])[1 + g % cardinality($6::text[])],
           'evt_' || lpad(to_hex($4::bigint + g * $5::bigint / $3::bigint), 12, '0')
               || left(md5($7::text || g), 20),
           (ARRAY['order.created', 'order.paid', 'invoice.sent', 'user.signed_up'])
               [1 + (g / 7) % 4],
           $11::text,
           to_timestamp(($4::bigint + g * $5::bigint / $3::bigint) / 1000.0)
    FROM generate_series($1::bigint, $1::bigint + $2::bigint - 1) AS g
    RETURNING app_id, id, created_at
), d AS (
    SELECT ev.app_id, gateway_delivery_id(ev.id, ep.id) AS id, ev.id AS event_id,
           ep.id AS endpoint_id, ev.created_at,
           abs(hashtext(ev.id || ep.id)::bigint) % 10000 AS h
    FROM ev JOIN endpoints ep ON ep.app_id = ev.app_id AND ep.deleted_at IS NULL
), dl AS (
    INSERT INTO deliveries (app_id, id, event_id, endpoint_id, kind, status, attempt_count,
                            schedule_pos, next_attempt_at, last_attempt_at, last_error,
                            created_at, updated_at)
    SELECT app_id, id, event_id, endpoint_id, 'webhook', s.status, s.attempts,
           s.attempts, s.due, created_at + make_interval(secs => 300 * (s.attempts - 1)),
           CASE WHEN s.status = 'succeeded' THEN NULL ELSE 'HTTP 503' END,
           created_at, created_at + make_interval(secs => 300 * (s.attempts - 1))
    FROM d, LATERAL (SELECT
        CASE WHEN d.h < $8::int + $9::int THEN 'pending'
             WHEN d.h < $8::int + $9::int + $10::int THEN 'failed'
             ELSE 'succeeded' END AS status,
        CASE WHEN d.h < $8::int THEN 1
             WHEN d.h < $8::int + $9::int THEN 3
             WHEN d.h < $8::int + $9::int + $10::int THEN 8
             WHEN d.h % 10 = 0 THEN 2
             ELSE 1 END AS attempts,
        CASE WHEN d.h < $8::int
                 THEN least(d.created_at + interval '5 minutes', now() - interval '1 minute')
                      - $12::interval
             WHEN d.h < $8::int + $9::int
                 THEN now() + make_interval(mins => 5 + (d.h % 600)::int)
        END AS due) AS s
    RETURNING app_id, id, status, attempt_count, created_at
)
INSERT INTO attempts (delivery_id, app_id, attempted_at, duration_ms, outcome, status_code,
                      response_snippet, error)
SELECT dl.id, dl.app_id, dl.created_at + make_interval(secs => 300 * (n - 1)),
       20 + n * 7 % 80,
       CASE WHEN n < dl.attempt_count OR dl.status = 'pending' THEN 'retry'
            WHEN dl.status = 'failed' THEN 'failed' ELSE 'delivered' END,
       CASE WHEN dl.status = 'succeeded' AND n = dl.attempt_count THEN 200 ELSE 503 END,
       CASE WHEN dl.status = 'succeeded' AND n = dl.attempt_count THEN '{"ok":true}'
            ELSE 'Service Unavailable' END,
       CASE WHEN dl.status = 'succeeded' AND n = dl.attempt_count THEN NULL
            ELSE 'HTTP 503' END
FROM dl, generate_series(1, dl.attempt_count) AS n
"""

#: $1 when the ingest began. Its deliveries (pending, nothing sent them) become delivered,
#: with an attempt each, as a dispatcher would have left them: the claim phase that
#: follows then finds only the backlog it is meant to find.
DELIVER_INGESTED_SQL = """
WITH done AS (
    UPDATE deliveries SET status = 'succeeded', next_attempt_at = NULL, attempt_count = 1,
        last_attempt_at = now(), updated_at = now()
    WHERE status = 'pending' AND created_at >= $1::timestamptz
    RETURNING app_id, id
)
INSERT INTO attempts (delivery_id, app_id, attempted_at, duration_ms, outcome, status_code,
                      response_snippet)
SELECT id, app_id, now(), 12, 'delivered', 200, '{"ok":true}' FROM done
"""

COUNTS_SQL = """
SELECT (SELECT count(*) FROM deliveries) AS deliveries,
       (SELECT count(*) FROM events) AS events,
       (SELECT count(*) FROM attempts) AS attempts,
       (SELECT count(*) FROM deliveries WHERE status = 'pending'
                                          AND next_attempt_at <= now()) AS due,
       (SELECT count(*) FROM deliveries WHERE status = 'pending') AS pending,
       (SELECT count(*) FROM deliveries WHERE status = 'failed') AS failed
"""

#: What PostgreSQL wrote and read (backends flush these counters at least every second and
#: when they exit; the soak reads them after the measured processes closed their
#: connections).
IO_SQL = """
SELECT w.wal_bytes::bigint AS wal_bytes, w.wal_fpi, d.blks_read, d.blks_hit
FROM pg_stat_wal w, pg_stat_database d WHERE d.datname = current_database()
"""

#: Each deliveries partition with its estimated rows (after ANALYZE).
PARTITIONS_SQL = """
SELECT c.relname AS name, c.reltuples::bigint AS rows
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'deliveries'::regclass ORDER BY c.relname
"""

#: The partitions' own indexes that belong to deliveries_due.
DUE_INDEXES_SQL = """
SELECT c.relname AS name FROM pg_partition_tree('deliveries_due') t
JOIN pg_class c ON c.oid = t.relid
"""


@dataclass
class ClaimStats:
    claimed: int = 0
    completed: int = 0
    claims: int = 0
    empty_claims: int = 0
    claim_ms: list[float] = field(default_factory=list)
    complete_ms: list[float] = field(default_factory=list)
    complete_batches: list[int] = field(default_factory=list)


@dataclass
class Soak:
    args: argparse.Namespace
    bench: Bench
    pg: Postgres
    dsn: str = ""
    keys: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    # --- database ---------------------------------------------------------------------

    async def connect(self) -> asyncpg.Connection:
        # The gateway's planner settings: the claim's plans printed are its sessions'.
        conn: asyncpg.Connection = await asyncpg.connect(self.dsn, timeout=30,
                                                         command_timeout=self.args.sql_timeout,
                                                         server_settings=SESSION_SETTINGS)
        await conn.execute(f"SET statement_timeout = '{int(self.args.sql_timeout)}s'")
        return conn

    async def counts(self) -> dict[str, int]:
        conn = await self.connect()
        try:
            row = await conn.fetchrow(COUNTS_SQL)
            parts = await conn.fetch(PARTITIONS_SQL)
        finally:
            await conn.close()
        assert row is not None
        found = {k: int(v) for k, v in row.items()}
        found["partitions"] = len(parts)
        return found

    async def due(self) -> int:
        conn = await self.connect()
        try:
            found: int = await conn.fetchval(
                "SELECT count(*) FROM deliveries WHERE status = 'pending' "
                "AND next_attempt_at <= now()")
        finally:
            await conn.close()
        return found

    async def io(self) -> dict[str, int]:
        conn = await self.connect()
        try:
            row = await conn.fetchrow(IO_SQL)
        finally:
            await conn.close()
        assert row is not None
        return {k: int(v) for k, v in row.items()}

    async def io_since(self, before: dict[str, int], count: int) -> dict[str, Any]:
        """WAL and buffer use since ``before``, per item of ``count``."""
        after = await self.io()
        delta = {k: after[k] - before[k] for k in before}
        n = max(1, count)
        return {**delta, "wal_bytes_per": round(delta["wal_bytes"] / n),
                "wal_fpi_per": round(delta["wal_fpi"] / n, 2),
                "blks_hit_per": round(delta["blks_hit"] / n, 1),
                "blks_read_per": round(delta["blks_read"] / n, 2)}

    async def settle(self, what: str) -> None:
        """VACUUM ANALYZE and CHECKPOINT, so that the measurement that follows finds
        statistics and the visibility map as autovacuum would have left them, and no
        checkpoint of the writes before it lands in its window."""
        started = time.monotonic()
        conn = await self.connect()
        try:
            await conn.execute("VACUUM (ANALYZE) events, deliveries, attempts, endpoints, apps")
            await conn.execute("CHECKPOINT")
        finally:
            await conn.close()
        print(f"  {what}: VACUUM ANALYZE + CHECKPOINT in {time.monotonic() - started:.1f} s",
              flush=True)

    async def insert(self, what: str, events: int, tag: str, due_bp: int, future_bp: int,
                     failed_bp: int, *, span_s: float | None = None,
                     due_earlier: timedelta = timedelta(0)) -> float:
        """``events`` events spread over ``span_s`` seconds (default: the last ``--days``
        days) ending ten minutes ago, their deliveries and attempts; returns the seconds
        it took."""
        conn = await self.connect()
        try:
            apps = [r["app_id"] for r in await conn.fetch(
                "SELECT DISTINCT app_id FROM endpoints WHERE deleted_at IS NULL ORDER BY 1")]
            end_ms = int(time.time() * 1000) - 600_000
            span_ms = (int(span_s * 1000) if span_s is not None
                       else int(self.args.days * 86_400_000) - 3_600_000)
            payload = json.dumps(json.loads(EVENT_BODY)["payload"], separators=(",", ":"))
            started = time.monotonic()
            last_print = started
            for first in range(0, events, FILL_CHUNK_EVENTS):
                count = min(FILL_CHUNK_EVENTS, events - first)
                await conn.execute(FILL_SQL, first, count, events, end_ms - span_ms, span_ms,
                                   apps, tag, due_bp, future_bp, failed_bp, payload,
                                   due_earlier)
                if time.monotonic() - last_print > 10:
                    last_print = time.monotonic()
                    done = first + count
                    print(f"    {what}: {done * self.args.endpoints_per_app:,} deliveries "
                          f"({100 * done / events:.0f}%) after {last_print - started:.0f} s",
                          flush=True)
            return time.monotonic() - started
        finally:
            await conn.close()

    async def explain(self) -> dict[str, Any]:
        """The claim queries' plans on this database (claim_due, and claim_due_plain,
        the queue's common case, under "plain_"), executed and rolled back, both as a
        custom plan (for these parameters) and as the generic plan a prepared statement
        switches to once the planner finds it no dearer; checks that none reads a
        deliveries partition that holds rows with a Seq Scan."""
        s = Settings()
        args = claim_params(s.dispatch_batch, s.effective_lease_s, uuid.uuid4(),
                            dispatcher_rooms(s))
        scan_limit = int(args[11])
        conn = await self.connect()
        out: dict[str, Any] = {}
        try:
            sizes = {row["name"]: int(row["rows"]) for row in await conn.fetch(PARTITIONS_SQL)}
            due_indexes = {row["name"] for row in await conn.fetch(DUE_INDEXES_SQL)}
            for query, prefix, used in (("claim_due", "", args),
                                        ("claim_due_plain", "plain_", args[:PLAIN_PARAMS])):
                params = ", ".join(sql_literal(v) for v in used)
                await conn.execute(f"PREPARE soak_{query} AS " + QUERIES[query])
                for mode in ("custom", "generic"):
                    await conn.execute(f"SET plan_cache_mode = force_{mode}_plan")
                    for fmt in ("TEXT", "JSON"):
                        tr = conn.transaction()
                        await tr.start()
                        try:
                            rows = await conn.fetch(
                                f"EXPLAIN (ANALYZE, BUFFERS, FORMAT {fmt}) "
                                f"EXECUTE soak_{query}({params})")
                        finally:
                            await tr.rollback()
                        if fmt == "TEXT":
                            out[f"{prefix}{mode}_text"] = [row[0] for row in rows]
                        else:
                            out[f"{prefix}{mode}"] = check_plan(
                                json.loads(rows[0][0]), sizes, due_indexes, scan_limit)
        finally:
            await conn.close()
        out["due"] = await self.due()
        out["pass"] = all(out[f"{prefix}{mode}"]["pass"] for prefix in ("", "plain_")
                          for mode in ("custom", "generic"))
        return out

    # --- (a) ingest -------------------------------------------------------------------

    async def create_apps(self, base: str) -> list[str]:
        """``--apps`` apps with ``--endpoints-per-app`` endpoints each, subscribed to
        everything; nothing listens there and no dispatcher runs, so nothing is sent."""
        admin = {"Authorization": f"Bearer {self.bench.admin_key}"}
        keys = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for i in range(self.args.apps):
                async with session.post(f"{base}/v1/apps", json={"name": f"soak-{i}"},
                                        headers=admin) as resp:
                    body = await resp.json()
                    if resp.status != 201:
                        raise BenchError(f"POST /v1/apps answered {resp.status}: {body}")
                    key: str = body["api_key"]
                for j in range(self.args.endpoints_per_app):
                    async with session.post(
                        f"{base}/v1/endpoints",
                        json={"url": f"http://{HOST}:9/app{i}/hook{j}", "event_types": ["*"]},
                        headers={"Authorization": f"Bearer {key}"},
                    ) as resp:
                        if resp.status != 201:
                            raise BenchError(f"POST /v1/endpoints answered {resp.status}: "
                                             f"{await resp.text()}")
                keys.append(key)
        return keys

    async def ingest(self, label: str) -> dict[str, Any]:
        a = self.args
        conn = await self.connect()
        try:
            began = await conn.fetchval("SELECT now()")
        finally:
            await conn.close()
        port = free_port()
        gw = await self.bench.start_gateway(f"gateway-{label}", self.dsn, "serve",
                                            "--no-dispatcher", port=port)
        try:
            base = f"http://{HOST}:{port}"
            if not self.keys:
                self.keys = await self.create_apps(base)
            url = f"{base}/v1/events"
            await self.bench.load(f"ingest-{label}-warmup", url, a.warmup, self.keys[0])
            meter = CpuMeter({"gateway": lambda: own_cpu(gw.pid), "postgres": self.pg.cpu})
            io_before = await self.io()
            meter.start()
            out = await self.bench.load(f"ingest-{label}", url, a.duration, self.keys[0])
            window = meter.stop({"loadgen": out.pop("loadgen_cpu_s")})
        finally:
            await self.bench.stop_proc(gw)
        good = out["requests"] - out["status_errors"]
        io = await self.io_since(io_before, good)
        cpu = window["cpu_s"]
        res = {**out, **window, "rate": out["ok_rps"], "io": io,
               "postgres_us_per_event": per(cpu.get("postgres"), good),
               "gateway_us_per_request": per(cpu.get("gateway"), good)}
        print(f"  ingest ({label}) {out['ok_rps']:8.0f} events/s  p99 {out['p99_ms']:.1f} ms  "
              f"non-2xx {out['status_errors']}  PostgreSQL "
              f"{fmt_us(res['postgres_us_per_event'])} µs/event, gateway "
              f"{fmt_us(res['gateway_us_per_request'])} µs/request  {fmt_cpu(window)}",
              flush=True)
        print(f"    per event: {fmt_io(io)}", flush=True)
        if out["status_errors"] or out.get("socket_errors"):
            print(f"    WARNING: errors during ingest, e.g. {out.get('error_sample')}",
                  flush=True)
        conn = await self.connect()
        try:
            status = await conn.execute(DELIVER_INGESTED_SQL, began)
        finally:
            await conn.close()
        res["deliveries_marked_delivered"] = int(status.split()[-1])
        print(f"    its {res['deliveries_marked_delivered']:,} pending deliveries marked "
              "delivered (with an attempt each), as a dispatcher would have left them",
              flush=True)
        return res

    # --- (b) claim --------------------------------------------------------------------

    async def claim(self, label: str, n: int) -> dict[str, Any]:
        """Claim and complete ``n`` due deliveries through the real queue, as the
        dispatcher would with an adapter that answers at once."""
        s = Settings()
        due_before = await self.due()
        db = await Database.connect(self.dsn, max_size=4)
        queue = PostgresQueue(db, Sealer(os.environ.get("GATEWAY_SECRET_KEY") or None))
        stats = ClaimStats()

        async def settle(results: Sequence[AttemptResult]) -> list[None]:
            t0 = time.perf_counter()
            await queue.complete(results)
            stats.complete_ms.append((time.perf_counter() - t0) * 1000)
            stats.complete_batches.append(len(results))
            stats.completed += len(results)
            return [None] * len(results)

        commit: GroupCommit[AttemptResult, None] = GroupCommit(
            settle, max_batch=500, max_flushers=2, name="soak-attempt-writer")
        per_target: Counter[str] = Counter()
        per_app: Counter[str] = Counter()
        inflight: set[asyncio.Task[None]] = set()
        slot_free = asyncio.Event()

        async def deliver(job: Job) -> None:
            now = datetime.now(UTC)
            await commit.submit(AttemptResult(
                delivery_id=job.delivery.delivery_id, app_id=job.delivery.app_id,
                lease_id=job.lease_id, status=DeliveryStatus.SUCCEEDED, next_attempt_at=None,
                schedule_pos=job.schedule_pos, attempted_at=now, duration_ms=12,
                outcome=AttemptOutcome.DELIVERED, status_code=200,
                response_snippet='{"ok":true}', error=None))

        def done(task: asyncio.Task[None], target: str, app_id: str) -> None:
            inflight.discard(task)
            for counts, key in ((per_target, target), (per_app, app_id)):
                counts[key] -= 1
                if counts[key] <= 0:
                    del counts[key]
            slot_free.set()

        def rooms() -> Rooms:
            return Rooms(
                endpoints={t: s.endpoint_concurrency - c for t, c in per_target.items()
                           if c and t not in PUSH_KINDS},
                kinds={k: s.push_concurrency - per_target[k] for k in PUSH_KINDS},
                apps={a: s.app_concurrency - c for a, c in per_app.items() if c},
                endpoint=s.endpoint_concurrency, app=s.app_concurrency)

        meter = CpuMeter({"postgres": self.pg.cpu,
                          "loadgen(bench)": lambda: own_cpu(os.getpid())})
        io_before = await self.io()
        try:
            meter.start()
            started = time.perf_counter()
            async with asyncio.timeout(self.args.claim_timeout):
                while stats.claimed < n:
                    free = s.dispatch_concurrency - len(inflight)
                    if free <= 0:
                        slot_free.clear()
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(1.0):
                                await slot_free.wait()
                        continue
                    want = min(free, s.dispatch_batch, n - stats.claimed)
                    # As the dispatcher: a slot freed while the claim runs counts.
                    slot_free.clear()
                    busy_at_claim = bool(inflight)
                    t0 = time.perf_counter()
                    jobs = await queue.claim(want, s.effective_lease_s, uuid.uuid4(), rooms())
                    stats.claim_ms.append((time.perf_counter() - t0) * 1000)
                    stats.claims += 1
                    stats.claimed += len(jobs)
                    for job in jobs:
                        target = job.delivery.endpoint.id if job.delivery.endpoint else \
                            job.delivery.kind
                        per_target[target] += 1
                        per_app[job.delivery.app_id] += 1
                        task = asyncio.create_task(deliver(job))
                        inflight.add(task)
                        task.add_done_callback(functools.partial(
                            done, target=target, app_id=job.delivery.app_id))
                    if not jobs:
                        stats.empty_claims += 1
                        if not busy_at_claim and not inflight:
                            print(f"    claim ({label}): nothing more is due after "
                                  f"{stats.claimed} of {n}", flush=True)
                            break
                        # Rooms were full: wait for a delivery to finish.
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(1.0):
                                await slot_free.wait()
                if inflight:
                    await asyncio.gather(*inflight)
            elapsed = time.perf_counter() - started
            window = meter.stop()
            left = await db.pool.fetchval(
                "SELECT count(*) FROM deliveries WHERE status = 'pending' AND lease_id IS NOT NULL")
        finally:
            for task in inflight:
                task.cancel()
            await commit.close()
            await db.close()
        rate = stats.completed / elapsed if elapsed > 0 else 0.0
        io = await self.io_since(io_before, stats.completed)
        cpu = window["cpu_s"]
        res = {
            "io": io,
            "deliveries": stats.completed, "claimed": stats.claimed, "elapsed_s": elapsed,
            "rate": rate, "claims": stats.claims, "empty_claims": stats.empty_claims,
            "rows_per_claim": stats.claimed / max(1, stats.claims),
            "claim_ms_p50": r(percentile(stats.claim_ms, 50), 2),
            "claim_ms_p99": r(percentile(stats.claim_ms, 99), 2),
            "complete_calls": len(stats.complete_ms),
            "rows_per_complete": sum(stats.complete_batches) / max(1, len(stats.complete_batches)),
            "complete_ms_p50": r(percentile(stats.complete_ms, 50), 2),
            "complete_ms_p99": r(percentile(stats.complete_ms, 99), 2),
            "postgres_us_per_delivery": per(cpu.get("postgres"), stats.completed),
            "bench_us_per_delivery": per(cpu.get("loadgen(bench)"), stats.completed),
            "still_leased_after": int(left), "due_before": due_before, **window,
        }
        print(f"  claim ({label}) {rate:8.0f} deliveries/s  ({stats.completed} of "
              f"{due_before:,} due in {elapsed:.1f} s; "
              f"{stats.claims} claims of {res['rows_per_claim']:.0f} rows, p50 "
              f"{res['claim_ms_p50']} ms p99 {res['claim_ms_p99']} ms; "
              f"{res['complete_calls']} completes of {res['rows_per_complete']:.0f}, p50 "
              f"{res['complete_ms_p50']} ms p99 {res['complete_ms_p99']} ms; PostgreSQL "
              f"{fmt_us(res['postgres_us_per_delivery'])} µs/delivery)  {fmt_cpu(window)}",
              flush=True)
        print(f"    per delivery: {fmt_io(io)}", flush=True)
        if left:
            print(f"    WARNING: {left} deliveries still leased after the claim phase",
                  flush=True)
        return res

    # --- the run ----------------------------------------------------------------------

    async def run(self) -> None:
        a = self.args
        per_event = a.endpoints_per_app
        self.dsn = await self.pg.fresh_database("soak")
        await migrate(self.dsn)
        conn = await self.connect()
        try:
            made = await conn.fetchval(QUERIES["make_partitions"], a.days + 1,
                                       MAX_PARTITION_DAYS)
            shared_buffers = await conn.fetchval("SHOW shared_buffers")
        finally:
            await conn.close()
        print(f"database migrated; {made} more partitions for the last {a.days} days; "
              f"{a.apps} apps with {per_event} endpoint(s) each; shared_buffers "
              f"{shared_buffers}", flush=True)
        self.results["shared_buffers"] = shared_buffers

        print("\n--- empty database ---", flush=True)
        empty_ingest = await self.ingest("empty")
        seeded_events = math.ceil(a.claims / per_event)
        took = await self.insert("claim backlog", seeded_events, "seed", 10_000, 0, 0)
        print(f"  {seeded_events * per_event:,} past-due deliveries (the backlog the claim "
              f"phase takes) inserted in {took:.1f} s", flush=True)
        await self.settle("empty")
        empty_counts = await self.counts()
        print(f"  database: {fmt_counts(empty_counts)}", flush=True)
        empty_plan = await self.explain()
        print(f"  claim plan: {fmt_plan(empty_plan)}", flush=True)
        empty_claim = await self.claim("empty", a.claims)

        print(f"\n--- filling to {a.deliveries:,} deliveries ---", flush=True)
        before = await self.counts()
        need = max(0, a.deliveries - before["deliveries"])
        events = math.ceil(need / per_event)
        # The backlog: --backlog-pct of the rows, and enough for the claim phase.
        due_bp = min(5000, max(round(a.backlog_pct * 100),
                               math.ceil(10_000 * 1.25 * a.claims / max(1, need))))
        fill_s = await self.insert("fill", events, "fill", due_bp, 100, 400)
        print(f"  {events * per_event:,} deliveries (backlog pending and past due "
              f"{due_bp / 100:g}%, pending and due later 1%, failed 4%, the rest succeeded) "
              f"with their events and attempts in {fill_s:.1f} s", flush=True)
        await self.settle("full")
        full_counts = await self.counts()
        print(f"  database: {fmt_counts(full_counts)}", flush=True)

        print("\n--- full database ---", flush=True)
        full_ingest = await self.ingest("full")
        # New work in the big table: past-due deliveries made in the last hour, dense in
        # today's partition, due before the old backlog so the first claim takes them.
        took = await self.insert("fresh", seeded_events, "fresh", 10_000, 0, 0,
                                 span_s=3000, due_earlier=timedelta(days=30))
        print(f"  {seeded_events * per_event:,} past-due deliveries made in the last hour "
              f"(fresh work, claimed first) inserted in {took:.1f} s", flush=True)
        await self.settle("full, after ingest")
        full_plan = await self.explain()
        print(f"  claim plan: {fmt_plan(full_plan)}", flush=True)
        fresh_claim = await self.claim("full, fresh work", a.claims)
        await self.settle("full, before the backlog")
        full_claim = await self.claim("full, old backlog", min(a.claims, await self.due()))

        print("\nclaim query (claim_due) on the full database, custom plan, "
              "EXPLAIN (ANALYZE, BUFFERS), rolled back:")
        print("\n".join("  " + line for line in full_plan["custom_text"]))
        print("\nthe same as a generic plan (what a prepared statement may switch to), "
              "its scans:")
        for line in full_plan["generic_text"]:
            if "Scan" in line or "Append" in line or "Execution Time" in line:
                print("  " + line)
        self.results.update({
            "empty": {"counts": empty_counts, "ingest": empty_ingest, "claim": empty_claim,
                      "claim_plan": empty_plan},
            "fill": {"seconds": fill_s, "deliveries_added": events * per_event,
                     "backlog_bp": due_bp},
            "full": {"counts": full_counts, "ingest": full_ingest, "claim_fresh": fresh_claim,
                     "claim": full_claim, "claim_plan": full_plan},
            "ingest_ratio": ratio(full_ingest["rate"], empty_ingest["rate"]),
            "claim_fresh_ratio": ratio(fresh_claim["rate"], empty_claim["rate"]),
            "claim_ratio": ratio(full_claim["rate"], empty_claim["rate"]),
            "target_ratio": TARGET_RATIO,
        })


def sql_literal(value: Any) -> str:
    """A claim parameter as SQL text for EXECUTE (ids, kinds and numbers only)."""
    if isinstance(value, list):
        return "'{" + ",".join(str(v) for v in value) + "}'"
    if isinstance(value, uuid.UUID):
        return f"'{value}'"
    return repr(value)


def dispatcher_rooms(s: Settings) -> Rooms:
    """The rooms of a dispatcher with nothing in flight."""
    return Rooms(kinds={k: s.push_concurrency for k in PUSH_KINDS},
                 endpoint=s.endpoint_concurrency, app=s.app_concurrency)


def check_plan(plan: Any, sizes: dict[str, int], due_indexes: set[str],
               scan_limit: int) -> dict[str, Any]:
    """How a plan (EXPLAIN ANALYZE, JSON) reads the deliveries partitions. It passes if it
    reads them through an index and never with a Seq Scan on a partition that holds
    ``BIG_PARTITION_ROWS`` or more. Separately: how many due rows the scan for candidates
    read (the scans that test next_attempt_at), and whether a Sort sits above them: a
    walk of deliveries_due in order stops near the claim's scan limit ($12); a plan that
    reads every due row and sorts them costs in proportion to the backlog."""
    seq_big: list[str] = []
    seq_small: list[str] = []
    index_scans: Counter[str] = Counter()
    due_rows = 0
    sorted_above_due = False

    def walk(node: dict[str, Any], under_sort: bool) -> None:
        nonlocal due_rows, sorted_above_due
        rel = node.get("Relation Name", "")
        kind = node.get("Node Type", "")
        if rel in sizes:
            if kind == "Seq Scan":
                (seq_big if sizes[rel] >= BIG_PARTITION_ROWS else seq_small).append(rel)
            elif "Index" in kind:
                name = node.get("Index Name", "")
                # Partitions' own indexes, folded: deliveries_20250101_pkey -> deliveries_*_pkey
                index_scans["deliveries_due" if name in due_indexes
                            else re.sub(r"_\d{8}_", "_*_", name)] += 1
            tests = f"{node.get('Index Cond', '')} {node.get('Filter', '')}"
            if "next_attempt_at" in tests:
                due_rows += int(node.get("Actual Rows", 0)) * int(node.get("Actual Loops", 1))
                sorted_above_due |= under_sort
        for child in node.get("Plans", []):
            walk(child, under_sort or kind == "Sort")

    walk(plan[0]["Plan"], False)
    bounded = due_rows <= 2 * scan_limit + len(sizes)
    return {"seq_scans_on_partitions_with_rows": seq_big,
            "seq_scans_on_small_partitions": seq_small,
            "index_scans_on_deliveries": dict(index_scans),
            "due_rows_read": due_rows, "scan_limit": scan_limit,
            "all_due_rows_sorted": sorted_above_due, "bounded_walk": bounded,
            "pass": not seq_big and bool(index_scans)}


def fmt_plan(plan: dict[str, Any]) -> str:
    parts = []
    for mode in ("custom", "generic", "plain_custom", "plain_generic"):
        p = plan[mode]
        parts.append(
            f"{mode}: {'index' if p['pass'] else 'NOT ON AN INDEX'}, "
            f"{p['due_rows_read']:,} due rows read "
            f"({'a bounded walk' if p['bounded_walk'] else 'every due row'}"
            f"{', then sorted' if p['all_due_rows_sorted'] else ''})")
    return f"{plan['due']:,} due; " + "; ".join(parts)


def per(cpu_s: float | None, count: int) -> float | None:
    return None if cpu_s is None or count <= 0 else round(cpu_s / count * 1e6, 1)


def fmt_us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def ratio(full: float, empty: float) -> float:
    return round(full / empty, 3) if empty > 0 else 0.0


def fmt_io(io: dict[str, Any]) -> str:
    return (f"WAL {io['wal_bytes_per']:,} bytes ({io['wal_fpi_per']:g} full-page images), "
            f"buffers {io['blks_hit_per']:g} hit + {io['blks_read_per']:g} read")


def fmt_counts(c: dict[str, int]) -> str:
    return (f"{c['deliveries']:,} deliveries ({c['pending']:,} pending, {c['due']:,} of them "
            f"due; {c['failed']:,} failed), {c['events']:,} events, {c['attempts']:,} attempts, "
            f"{c['partitions']} deliveries partitions")


def print_summary(results: dict[str, Any]) -> None:
    print("\n=== soak summary ===")
    busy, total = busy_windows()
    if busy:
        print(f"NOT VALID: other work used the CPU in {busy} of {total} measured windows "
              "(see 'other' above); rerun on an idle machine (--wait-idle)")
    empty, full = results["empty"], results["full"]
    print(f"database: {fmt_counts(full['counts'])}")
    rows = (("ingest", "ingest", "ingest", "events/s", "postgres_us_per_event"),
            ("claim, fresh work", "claim", "claim_fresh", "deliveries/s",
             "postgres_us_per_delivery"),
            ("claim, old backlog", "claim", "claim", "deliveries/s",
             "postgres_us_per_delivery"))
    for label, e_key, f_key, unit, us in rows:
        e, f = empty[e_key], full[f_key]
        q = ratio(f["rate"], e["rate"])
        print(f"{label:18} empty {e['rate']:6.0f} {unit}, full {f['rate']:6.0f} {unit}: "
              f"full/empty {q:.2f} (>= {TARGET_RATIO}) {'PASS' if q >= TARGET_RATIO else 'FAIL'}"
              f"   [PostgreSQL µs/item {fmt_us(e[us])} -> {fmt_us(f[us])}, WAL bytes/item "
              f"{e['io']['wal_bytes_per']:,} -> {f['io']['wal_bytes_per']:,}]")
    plan = full["claim_plan"]
    for name in ("custom", "generic", "plain_custom", "plain_generic"):
        p = plan[name]
        scans = p["index_scans_on_deliveries"]
        due = scans.get("deliveries_due", 0)
        others = ", ".join(f"{k} x{v}" for k, v in scans.items() if k != "deliveries_due")
        seq = p["seq_scans_on_partitions_with_rows"]
        query = "claim_due_plain" if name.startswith("plain_") else "claim_due"
        print(f"{query} plan ({name.removeprefix('plain_')}, full database): "
              f"deliveries_due on {due} partitions"
              f"{f' (and {others})' if others else ''}; Seq Scans on partitions with rows: "
              f"{', '.join(seq) if seq else 'none'}: on an index "
              f"{'PASS' if p['pass'] else 'FAIL'}; {p['due_rows_read']:,} due rows read of "
              f"{plan['due']:,} (scan limit {p['scan_limit']}): bounded walk "
              f"{'PASS' if p['bounded_walk'] else 'FAIL'}")


def orchestrate(args: argparse.Namespace) -> int:
    if args.quick:
        args.deliveries = 100_000
        args.duration, args.warmup = 3.0, 1.0
        args.claims = min(args.claims, 5_000)
    args.profile = False
    prepared = prepare(args, "soak")
    if prepared is None:
        return 2
    loadgen, work, procs, pg, user_dsn = prepared
    soak = Soak(args, Bench(args, work, procs, pg, loadgen), pg)
    started = time.time()
    idle: dict[str, float] = {}
    code = 1
    try:
        print(f"soak: work dir {work}; PostgreSQL: "
              f"{'DATABASE_URL from the environment' if user_dsn else 'fresh embedded'}; "
              f"load generator: {loadgen}; {os.cpu_count()} CPUs; target "
              f"{args.deliveries:,} deliveries over {args.days} days", flush=True)
        if user_dsn:
            print("  WARNING: DATABASE_URL is set: the soak fills that database", flush=True)
        idle = machine_idle_check()
        waited = 0.0
        while idle["busy_pct"] > 15 and waited < args.wait_idle:
            time.sleep(4.0)
            waited += 5.0
            idle = machine_idle_check()
        print(f"  machine before start: {idle['busy_pct']:.0f}% of one core busy"
              + ("  WARNING: other work is running; figures will be low and noisy"
                 if idle["busy_pct"] > 15 else ""), flush=True)
        pg.start()
        run_loop(asyncio.wait_for(soak.run(), args.timeout), "uvloop")
        code = 0
    except BenchError as exc:
        print(f"\nsoak: FAILED: {exc}", file=sys.stderr)
    except TimeoutError:
        print(f"\nsoak: FAILED: not done after --timeout {args.timeout:g} s", file=sys.stderr)
    except KeyboardInterrupt:
        print("\nsoak: interrupted", file=sys.stderr)
        code = 130
    except Exception:
        traceback.print_exc()
        print("\nsoak: FAILED (see the traceback above)", file=sys.stderr)
    finally:
        procs.stop_all()
        pg.stop()
        if args.keep_work:
            print(f"soak: logs and data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results = {
        "meta": {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
            "elapsed_s": round(time.time() - started, 1), "cpus": os.cpu_count(),
            "loadgen": loadgen, "connections": args.connections, "duration_s": args.duration,
            "warmup_s": args.warmup, "deliveries": args.deliveries, "days": args.days,
            "claims": args.claims, "backlog_pct": args.backlog_pct, "apps": args.apps,
            "endpoints_per_app": args.endpoints_per_app, "quick": args.quick, "complete": code == 0,
            "machine_busy_before_start": idle, "git": git_state(),
            "busy_windows": dict(zip(("busy", "total"), busy_windows(), strict=True)),
            "valid": code == 0 and busy_windows()[0] == 0,
        },
        **soak.results,
    }
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if code == 0:
        print_summary(soak.results)
    print(f"\nresults written to {args.output}")
    return code


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Ingest and claim rates on an empty database and on one holding "
                    "a million deliveries, and the claim query's plan.")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 100,000 deliveries, 3 s ingest runs, 5,000 claims")
    p.add_argument("--deliveries", type=int, default=1_000_000,
                   help="deliveries in the full database (default 1,000,000)")
    p.add_argument("--days", type=int, default=7,
                   help="the filled rows spread over this many past days (default 7)")
    p.add_argument("--claims", type=int, default=20_000,
                   help="deliveries claimed and completed per claim measurement")
    p.add_argument("--backlog-pct", type=float, default=5.0,
                   help="filled deliveries pending and past due, in %% (default 5; at least "
                        "1.25 times --claims)")
    p.add_argument("--apps", type=int, default=4, help="apps (default 4)")
    p.add_argument("--endpoints-per-app", type=int, default=2,
                   help="endpoints per app, each subscribed to every event (default 2)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per ingest run")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each")
    p.add_argument("--connections", type=int, default=64, help="ingest connections")
    p.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                   help="ingest load generator (auto: wrk when /usr/bin/wrk exists)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads")
    p.add_argument("--gateway-cmd",
                   help="command that runs the gateway CLI (default: the 'gateway' script "
                        "next to this Python)")
    p.add_argument("--sql-timeout", type=float, default=600.0,
                   help="time limit of each SQL statement the soak runs itself, in seconds")
    p.add_argument("--claim-timeout", type=float, default=300.0,
                   help="time limit of each claim measurement, in seconds")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="time limit of the whole run, in seconds")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results JSON path")
    p.add_argument("--wait-idle", type=float, default=0.0,
                   help="wait up to this many seconds for the machine to go idle first")
    p.add_argument("--keep-work", action="store_true",
                   help="keep the temporary data and process logs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return orchestrate(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
