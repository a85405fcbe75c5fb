"""What the hot statements cost PostgreSQL, exactly: ingest's ``insert_events`` and the
dispatcher's ``claim_due`` and ``settle_delivered``, each timed by the CPU of the server
process that runs it.

    .venv/bin/python bench/statement_cost.py                       # 9 day partitions
    .venv/bin/python bench/statement_cost.py --days-back 30        # 38: 30 days' retention
    .venv/bin/python bench/statement_cost.py --committed --batch 13 --rounds 150
    .venv/bin/python bench/statement_cost.py --committed --variants statusdomain,noapiindexes
    .venv/bin/python bench/statement_cost.py --committed --batch 32 --writers 2
    .venv/bin/python bench/statement_cost.py --batch 1 --claims full,plain   # claim_due_plain

A fresh embedded PostgreSQL, one app with one endpoint and ``--events`` pending deliveries
(all due, in today's partition), then ``--rounds`` times, on one connection in a
transaction that is rolled back (so every round sees the same rows): ``--batch`` events
stored as ingest stores them (one delivery each), a claim of ``--batch`` as the dispatcher
makes it, then the settlement of what it took as delivered. A statement's cost is
mostly fixed at small batches: ``--batch 1`` shows what a lightly loaded gateway pays
per event (each ingest batch, claim and settlement then holds one or a few).
The server process's CPU (``/proc/<pid>/stat``) is read around each statement, so the
figures are PostgreSQL's own work (parse, plan, execute, commit aside) and not the
bench's. Each ``--plan-cache-mode`` gets a connection of its own; the first rounds of each
(``--warmup``) are not counted, so ``auto`` shows the plan it settles on. The prepared
statements' plan counts (``pg_prepared_statements``) are printed after each mode.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import minimal_server
from common import Postgres

from gateway.ids import new_ids
from gateway.store.database import (
    MAX_CACHED_STATEMENT_CHARS,
    QUERIES,
    SESSION_SETTINGS,
    STATEMENT_CACHE_SIZE,
    Database,
    migrate,
)
from gateway.store.postgres import EventDraft, Store
from gateway.store.postgres_queue import PLAIN_PARAMS, claim_params
from gateway.store.queue import Rooms
from gateway_client.models import iso

TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """User and system CPU seconds of a local process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


async def fill(dsn: str, events: int) -> tuple[str, str]:
    """One app, one endpoint, ``events`` pending deliveries; returns the app's and the
    endpoint's ids."""
    await migrate(dsn)
    db = await Database.connect(dsn, max_size=2)
    try:
        store = Store(db)
        app = await store.create_app("statement-cost")
        endpoint = await store.create_endpoint(app.id, "http://127.0.0.1:9/", "", None)
        for start in range(0, events, 250):
            await store.write_events([EventDraft(app.id, "order.created", '{"n":1}')
                                      for _ in range(min(250, events - start))])
        return app.id, endpoint.id
    finally:
        await db.close()


async def measure(dsn: str, app_id: str, endpoint_id: str, mode: str, batch: int,
                  rounds: int, warmup: int, scan: str = "wide", claim: str = "full") -> None:
    # Prepared and planned as the gateway's pool has them (a statement past asyncpg's
    # default size limit would otherwise be planned again on every call; the planner
    # settings of its sessions).
    conn = await asyncpg.connect(dsn, server_settings={**SESSION_SETTINGS,
                                                       "plan_cache_mode": mode},
                                 max_cacheable_statement_size=MAX_CACHED_STATEMENT_CHARS,
                                 statement_cache_size=STATEMENT_CACHE_SIZE)
    try:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        insert_s = claim_s = settle_s = 0.0
        took = 0
        for i in range(warmup + rounds):
            tx = conn.transaction()
            await tx.start()
            lease = uuid.uuid4()
            started = process_cpu(pid)
            await conn.fetchrow(QUERIES["insert_events"], new_ids("evt", batch),
                                [app_id] * batch, ["order.created"] * batch,
                                ['{"n":1}'] * batch, datetime.now(UTC), [None] * batch,
                                [None] * batch, [None] * batch, None, None, None, None)
            before = process_cpu(pid)
            params = claim_params(batch, 45.0, lease, Rooms(endpoints={endpoint_id: 64}),
                                  narrow=scan == "narrow")
            rows = await (conn.fetch(QUERIES["claim_due"], *params) if claim == "full" else
                          conn.fetch(QUERIES["claim_due_plain"], *params[:PLAIN_PARAMS]))
            if claim == "plain" and rows[0]["unusual"]:
                raise SystemExit("claim_due_plain stood aside for claim_due: not measured")
            claimed = process_cpu(pid)
            ids = [row["id"] for row in rows if row["id"] is not None]
            now = datetime.now(UTC)
            k = len(ids)
            await conn.fetchrow(
                QUERIES["settle_delivered"], ids, [lease] * k, [1] * k, [iso(now)] * k,
                [3] * k, [200] * k, [None] * k, [rows[0]["app_id"]] * k, [endpoint_id] * k)
            settled = process_cpu(pid)
            await tx.rollback()
            if i >= warmup:
                insert_s += before - started
                claim_s += claimed - before
                settle_s += settled - claimed
                took += k
        print(f"  {mode:20s} {scan:6s} {claim:5s} insert_events of {batch}: "
              f"{insert_s / rounds * 1e6:6.0f} µs   "
              f"claim of {batch}: {claim_s / rounds * 1e6:6.0f} µs   "
              f"settle_delivered of {took / rounds:.0f}: {settle_s / rounds * 1e6:7.0f} µs"
              f"   (PostgreSQL CPU per statement, {rounds} rounds)", flush=True)
        plans = await conn.fetch(
            "SELECT generic_plans, custom_plans, split_part(ltrim(statement), E'\\n', 1) AS s "
            "FROM pg_prepared_statements WHERE generic_plans + custom_plans > 1")
        for plan in plans:
            print(f"      {plan['generic_plans']} generic, {plan['custom_plans']} custom: "
                  f"{plan['s'][:60]}")
    finally:
        await conn.close()


#: ``--variants``: the gateway's schema with one change, each a database of its own, to
#: see what a part of the statement costs (the statement is the same).
VARIANTS: dict[str, list[str]] = {
    # Without the two status CHECK constraints, which every statement reads back from
    # their stored text for each partition it writes (ExecConstraints -> stringToNode) and
    # evaluates on every updated row.
    "nochecks": ["ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check",
                 "ALTER TABLE events DROP CONSTRAINT events_fanout_status_check"],
    # The same rules as domains, parsed once per session and checked only where a status
    # is written (made as a migration would, without rewriting the tables).
    "statusdomain": [
        "ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check",
        "ALTER TABLE events DROP CONSTRAINT events_fanout_status_check",
        "CREATE DOMAIN bench_delivery_status AS text",
        "CREATE DOMAIN bench_fanout_status AS text",
        "ALTER TABLE deliveries ALTER COLUMN status TYPE bench_delivery_status",
        "ALTER TABLE events ALTER COLUMN fanout_status TYPE bench_fanout_status",
        "ALTER DOMAIN bench_delivery_status ADD CONSTRAINT bench_delivery_status_check"
        " CHECK (VALUE IN ('pending', 'succeeded', 'failed')) NOT VALID",
        "ALTER DOMAIN bench_fanout_status ADD CONSTRAINT bench_fanout_status_check"
        " CHECK (VALUE IN ('pending', 'done')) NOT VALID"],
    # The two indexes the API reads deliveries by (by status, by endpoint).
    "noapiindexes": ["DROP INDEX deliveries_open", "DROP INDEX deliveries_by_endpoint"],
}


def backend_cpu(pid: int) -> float:
    """CPU seconds a local process has run, to the nanosecond (``schedstat``), so that
    short slices can be timed; clock ticks where the kernel does not keep it."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return process_cpu(pid)


async def store_batch(conn: asyncpg.Connection, name: str, batch: int, app_id: str,
                      payload: str) -> None:
    """One commit of ``batch`` events, as the gateway or the minimal server writes it."""
    payloads = [payload] * batch
    if name == "minimal":
        await conn.execute(minimal_server.INSERT, [uuid.uuid4() for _ in range(batch)],
                           ["app_1"] * batch, ["order.created"] * batch, payloads,
                           [datetime.now(UTC)] * batch)
    else:
        await conn.fetchrow(QUERIES["insert_events"], new_ids("evt", batch),
                            [app_id] * batch, ["order.created"] * batch, payloads,
                            datetime.now(UTC), [None] * batch, [None] * batch, [None] * batch,
                            None, None, None, None)


async def committed_ingest(pg: Postgres, args: argparse.Namespace) -> None:
    """``--committed``: what storing events costs PostgreSQL with its commit (WAL flush
    included), ``--batch`` events a statement as a group commit's batch, for the gateway's
    ``insert_events`` (one endpoint subscribed) and for bench/minimal_server.py's INSERT,
    each on a database of its own (and each ``--variants`` schema on one more): the ratio
    target (a) compares, without HTTP.

    The sides take turns, ``--rounds`` commits each, ``--slices`` times, and each side's
    figure is the median of its slices: on a VM whose speed drifts over a minute (this one
    does, by up to 2x), one long block per side compares two different machines.
    ``--writers N``: N connections a side commit at once (ingest's group commit has two
    flushers), each side's figure the CPU of its N backends per commit."""
    batch = args.batch
    payload = '{"n":1}' if not args.payload_kb else (
        '{"n":"' + "x" * (args.payload_kb * 1024) + '"}')
    sides = ["minimal", "gateway"] + [f"gateway+{v}" for v in args.variants.split(",") if v]
    writers = args.writers
    conns: dict[str, tuple[list[asyncpg.Connection], list[int], str]] = {}

    async def commits(side: str, conn: asyncpg.Connection, app_id: str, count: int) -> None:
        for _ in range(count):
            await store_batch(conn, side, batch, app_id, payload)

    try:
        for side in sides:
            name = side.replace("+", "_")
            dsn = await pg.fresh_database(f"committed_{name}")
            app_id = (await fill(dsn, 0))[0] if side != "minimal" else ""
            side_conns = [await asyncpg.connect(dsn) for _ in range(writers)]
            pids = [await conn.fetchval("SELECT pg_backend_pid()") for conn in side_conns]
            conns[side] = (side_conns, pids, app_id)
            if side == "minimal":
                await side_conns[0].execute(minimal_server.SCHEMA)
            for ddl in VARIANTS[side.split("+")[1]] if "+" in side else []:
                await side_conns[0].execute(ddl)
            for conn in side_conns:
                await commits(side, conn, app_id, args.warmup)
        costs: dict[str, list[float]] = {side: [] for side in sides}
        for _ in range(args.slices):
            for side in sides:
                side_conns, pids, app_id = conns[side]
                started = sum(backend_cpu(pid) for pid in pids)
                # --writers connections commit at once, as a group commit's flushers do.
                await asyncio.gather(*(commits(side, conn, app_id, args.rounds)
                                       for conn in side_conns))
                costs[side].append((sum(backend_cpu(pid) for pid in pids) - started)
                                   / (args.rounds * writers))
    finally:
        for side, (side_conns, _, _) in conns.items():
            for conn in side_conns:
                await conn.close()
            await pg.drop_database(f"committed_{side.replace('+', '_')}")
    floor = costs["minimal"]
    print(f"  {batch} events a commit, {len(payload)}-byte payloads, {args.slices} slices of "
          f"{args.rounds} commits a side on each of {writers} connection(s) at once "
          "(PostgreSQL CPU, median and interquartile range of the slices; the ratio is the "
          "median of each slice's ratio to the minimal server's slice beside it):",
          flush=True)
    for side in sides:
        median = statistics.median(costs[side])
        low, _, high = statistics.quantiles(costs[side], n=4)
        ratio = statistics.median(c / f for c, f in zip(costs[side], floor, strict=True))
        print(f"  {side:22s} {median * 1e6:6.0f} µs a commit ({low * 1e6:.0f}-"
              f"{high * 1e6:.0f}), {median / batch * 1e6:6.1f} µs an event, "
              f"{ratio:.2f} x minimal", flush=True)


async def main(args: argparse.Namespace, pg: Postgres) -> None:
    if set(args.claims.split(",")) - {"full", "plain"}:
        raise SystemExit(f"--claims: full and/or plain, not {args.claims}")
    unknown = set(filter(None, args.variants.split(","))) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown --variants {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(VARIANTS)}")
    if args.committed:
        await committed_ingest(pg, args)
        return
    dsn = await pg.fresh_database("statement_cost", args.days_back)
    app_id, endpoint_id = await fill(dsn, args.events)
    conn = await asyncpg.connect(dsn)
    partitions = await conn.fetchval(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'deliveries'::regclass")
    await conn.close()
    print(f"{args.events} due deliveries in today's partition; {partitions} deliveries "
          f"partitions", flush=True)
    for mode in args.plan_cache_mode.split(","):
        for scan in args.scans.split(","):
            for claim in args.claims.split(","):
                await measure(dsn, app_id, endpoint_id, mode, args.batch, args.rounds,
                              args.warmup, scan, claim)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--events", type=int, default=1000, help="pending deliveries (default 1000)")
    p.add_argument("--batch", type=int, default=8, help="deliveries per claim (default 8)")
    p.add_argument("--days-back", type=int, default=0,
                   help="also make day partitions this many days back (default 0: a new "
                        "database's 4, yesterday to two days ahead)")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--plan-cache-mode", default="auto,force_generic_plan",
                   help="comma list of plan_cache_mode values")
    p.add_argument("--scans", default="wide,narrow",
                   help="comma list: the claim's scan, 'wide' (what a claim reads after "
                        "one that passed rows over) and/or 'narrow' (after one that took "
                        "the head of its scan)")
    p.add_argument("--claims", default="full,plain",
                   help="comma list: claim_due ('full') and/or claim_due_plain ('plain', "
                        "what a claim costs when no circuit is open and no rate limit "
                        "applies)")
    p.add_argument("--committed", action="store_true",
                   help="instead: ingest's statement committed, --batch events each, "
                        "against the minimal durable server's, in --slices turns of "
                        "--rounds commits a side")
    p.add_argument("--slices", type=int, default=20,
                   help="--committed: turns each side takes (default 20)")
    p.add_argument("--variants", default="",
                   help="--committed: comma list of schema variants of the gateway's "
                        f"side to measure beside it ({', '.join(VARIANTS)})")
    p.add_argument("--writers", type=int, default=1,
                   help="--committed: connections committing at once on each side, as "
                        "the group commit's flushers do (default 1)")
    p.add_argument("--payload-kb", type=int, default=0,
                   help="--committed: payloads of this many KiB (default: 7 bytes)")
    return p


if __name__ == "__main__":
    arguments = parser().parse_args()
    server = Postgres(None, Path(tempfile.mkdtemp(prefix="statement-cost-")) / "data")
    server.start()
    try:
        started = time.monotonic()
        asyncio.run(main(arguments, server))
        print(f"done in {time.monotonic() - started:.0f} s")
    finally:
        server.stop()
