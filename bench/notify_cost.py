"""What a LISTEN connection costs PostgreSQL on every notifying commit.

PostgreSQL wakes every backend that LISTENs in a database on each NOTIFY there, whatever
its channels, and each woken backend runs a transaction to read the notification queue.
Ingest's ``insert_events`` notifies the dispatchers on every commit. This commits it,
``--batch`` events at a time, with 0, 1, 2 and ``--listeners`` idle LISTEN connections on
other channels (each a connection of its own, as a gateway process held one per channel
until 2026-12-05), in turns (``--slices`` of ``--rounds`` commits each), and prints the
server's CPU per commit (every process of the server, from ``/proc/<pid>/schedstat``):
the median of each count's turns, and what each listening connection adds.

    .venv/bin/python bench/notify_cost.py            # about a minute
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
from common import Postgres, process_tree
from statement_cost import backend_cpu, fill, store_batch


def server_cpu(postmaster: int) -> float:
    """CPU seconds of the server's live processes (a listener's backend among them)."""
    return sum(backend_cpu(pid) for pid in process_tree(postmaster))


def _ignore(*_: Any) -> None:
    return None


async def main(args: argparse.Namespace, pg: Postgres) -> None:
    assert pg.postmaster_pid is not None
    dsn = await pg.fresh_database("notify_cost")
    app_id, _ = await fill(dsn, 0)
    writer = await asyncpg.connect(dsn)
    listeners = [await asyncpg.connect(dsn) for _ in range(args.listeners)]
    counts = sorted({0, 1, 2, args.listeners})
    costs: dict[int, list[float]] = {n: [] for n in counts}
    try:
        for _ in range(args.warmup):
            await store_batch(writer, "gateway", args.batch, app_id, '{"n":1}')
        for _ in range(args.slices):
            for n in counts:
                for i, conn in enumerate(listeners[:n]):
                    await conn.add_listener(f"bench_other_{i}", _ignore)
                await asyncio.sleep(0.05)
                started = server_cpu(pg.postmaster_pid)
                for _ in range(args.rounds):
                    await store_batch(writer, "gateway", args.batch, app_id, '{"n":1}')
                await asyncio.sleep(0.05)  # the last commit's listeners have read it
                costs[n].append((server_cpu(pg.postmaster_pid) - started) / args.rounds)
                for i, conn in enumerate(listeners[:n]):
                    await conn.remove_listener(f"bench_other_{i}", _ignore)
    finally:
        for conn in [writer, *listeners]:
            await conn.close()
        await pg.drop_database("notify_cost")
    print(f"  insert_events, {args.batch} events a commit, {args.slices} turns of "
          f"{args.rounds} commits (PostgreSQL CPU, every process, median of the turns):")
    for n in counts:
        print(f"  {n} listening connection(s): {statistics.median(costs[n]) * 1e6:6.0f} µs a "
              "commit", flush=True)
    top = args.listeners
    first = statistics.median(c - z for c, z in zip(costs[1], costs[0], strict=True))
    more = statistics.median((c - o) / (top - 1)
                             for c, o in zip(costs[top], costs[1], strict=True))
    print(f"  the first listening connection adds {first * 1e6:.0f} µs a notifying commit, "
          f"each one more {more * 1e6:.0f} µs (medians over the turns of 1 - none, and of "
          f"({top} - 1) / {top - 1})")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--batch", type=int, default=30, help="events a commit (default 30)")
    p.add_argument("--listeners", type=int, default=5,
                   help="listening connections of the largest count (default 5)")
    p.add_argument("--rounds", type=int, default=300, help="commits a turn (default 300)")
    p.add_argument("--slices", type=int, default=10, help="turns of each count (default 10)")
    p.add_argument("--warmup", type=int, default=100)
    return p


if __name__ == "__main__":
    arguments = parser().parse_args()
    server = Postgres(None, Path(tempfile.mkdtemp(prefix="notify-cost-")) / "data")
    server.start()
    try:
        began = time.monotonic()
        asyncio.run(main(arguments, server))
        print(f"done in {time.monotonic() - began:.0f} s")
    finally:
        server.stop()
