"""``gateway serve --workers N``: N processes share the port and the database under one
supervisor that forwards signals and restarts a worker that dies."""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.support import Api, GatewayProcess, Receiver, eventually

pytestmark = pytest.mark.e2e


def children(pid: int) -> set[int]:
    """The live processes whose parent is ``pid`` (Linux /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (not gone, not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


async def start(procs: list[GatewayProcess], dsn: str, workers: str) -> GatewayProcess:
    proc = GatewayProcess(dsn, "serve", "--workers", workers).start()
    procs.append(proc)
    await proc.wait_ready(timeout_s=40)
    assert proc.proc is not None
    await eventually(lambda: _have(proc.proc.pid if proc.proc else 0, int(workers)))

    async def all_ready() -> bool:
        return proc.log().count("gateway ready worker=") == int(workers)

    await eventually(all_ready, timeout_s=40)
    return proc


async def _have(pid: int, count: int) -> bool:
    return len(children(pid)) == count


def worker_lines(log: str) -> collections.Counter[str]:
    """How many ``POST /v1/events 202`` lines each worker logged."""
    return collections.Counter(re.findall(r"POST /v1/events 202 .*?worker=(\d+)", log))


async def test_two_workers_share_the_port_and_deliver_every_event_once(
    dsn: str, procs: list[GatewayProcess], receiver: Receiver
) -> None:
    gw = await start(procs, dsn, "2")
    # A new connection per request: the kernel picks a worker per connection.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        api = Api(http, gw.base)
        key = await api.new_app()
        await api.new_endpoint(key, receiver.url())
        sent = await asyncio.gather(*(api.emit(key, payload={"i": i}) for i in range(60)))
    await receiver.wait_for(60, timeout_s=30)
    await asyncio.sleep(0.5)  # time for a duplicate to show up
    counts = collections.Counter(r.headers["webhook-id"] for r in receiver.requests)
    assert set(counts) == {e["id"] for e in sent}
    assert max(counts.values()) == 1

    async def all_logged() -> bool:  # request lines reach the file within a flush (0.2 s)
        return sum(worker_lines(gw.log()).values()) == 60

    await eventually(all_logged, timeout_s=5)
    per_worker = worker_lines(gw.log())
    assert set(per_worker) == {"1", "2"}, per_worker
    assert gw.proc is not None
    workers = children(gw.proc.pid)
    assert gw.terminate() == 0
    assert not [pid for pid in workers if alive(pid)]  # the workers stopped with it


async def test_a_worker_that_dies_is_started_again_and_the_port_keeps_answering(
    dsn: str, procs: list[GatewayProcess], receiver: Receiver
) -> None:
    gw = await start(procs, dsn, "2")
    assert gw.proc is not None
    first = children(gw.proc.pid)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    assert gw.proc is not None
    supervisor = gw.proc.pid

    async def replaced() -> bool:
        now = children(supervisor)
        return len(now) == 2 and victim not in now

    await eventually(replaced, timeout_s=30)

    async def told() -> bool:  # log lines reach the file within a flush (0.2 s)
        return "restarting worker" in gw.log()

    await eventually(told, timeout_s=5)

    async def restarted_ready() -> bool:
        return gw.log().count("gateway ready worker=") == 3

    await eventually(restarted_ready, timeout_s=40)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        api = Api(http, gw.base)
        key = await api.new_app()
        await api.new_endpoint(key, receiver.url())
        for i in range(40):
            await api.emit(key, payload={"i": i})
    await receiver.wait_for(40, timeout_s=30)
    assert gw.terminate() == 0
    after = worker_lines(gw.log())
    assert set(after) == {"1", "2"}, after  # the restarted worker takes load again


def test_workers_must_be_a_positive_number_or_auto() -> None:
    from gateway.supervisor import worker_count

    assert worker_count("3") == 3
    assert worker_count("auto") >= 1
    with pytest.raises(ValueError):
        worker_count("0")
    with pytest.raises(ValueError):
        worker_count("many")
