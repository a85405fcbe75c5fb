"""Times the dispatcher's claim cycle: a wrapper for ``bench/run.py --gateway-cmd``.

    .venv/bin/python bench/run.py --phases drain \\
        --gateway-cmd ".venv/bin/python bench/dispatch_probe.py"

Runs the gateway CLI with the dispatcher's claims and result writes wrapped by timers
(nothing else changes), and when the process ends writes what it saw to
``$DISPATCH_PROBE_OUT`` (default ``bench/results/dispatch-probe-<pid>.json``) and a
summary to stderr: per claim, what it asked for, what it got, how many due deliveries it
left waiting for room, how many deliveries were being sent when it started, and its round
trip; per result write, its batch and round trip; the time between claims.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from gateway import cli
from gateway.dispatcher import Dispatcher
from gateway.store.postgres_queue import PostgresQueue

claims: list[dict[str, float]] = []
writes: list[dict[str, float]] = []
_sending_at_claim: list[int] = []

_claim = PostgresQueue.claim
_settle = Dispatcher._settle
_rooms = Dispatcher._rooms


async def claim(self: PostgresQueue, limit: int, *args: Any, **kwargs: Any) -> Any:
    started = time.monotonic()
    result = await _claim(self, limit, *args, **kwargs)
    claims.append({"at": started, "want": limit, "got": len(result),
                   "waiting": result.waiting, "held_back": result.held_back,
                   "sending": _sending_at_claim[-1] if _sending_at_claim else 0,
                   "ms": 1000 * (time.monotonic() - started)})
    return result


async def settle(self: Dispatcher, results: Any) -> Any:
    started = time.monotonic()
    done = await _settle(self, results)
    writes.append({"at": started, "batch": len(results),
                   "ms": 1000 * (time.monotonic() - started)})
    return done


def rooms(self: Dispatcher, *args: Any, **kwargs: Any) -> Any:
    _sending_at_claim.append(self._sending)
    return _rooms(self, *args, **kwargs)


def summary() -> dict[str, Any]:
    def stats(values: list[float]) -> dict[str, float]:
        if not values:
            return {}
        ordered = sorted(values)
        return {"mean": round(statistics.fmean(values), 2),
                "p50": round(ordered[len(ordered) // 2], 2),
                "p90": round(ordered[int(len(ordered) * 0.9)], 2)}

    working = [c for c in claims if c["got"]]
    starts = [c["at"] for c in working]
    return {
        "claims": len(claims), "claims_that_took": len(working),
        "want": stats([c["want"] for c in working]),
        "got": stats([c["got"] for c in working]),
        "waiting": stats([c["waiting"] for c in working]),
        "sending_at_claim": stats([c["sending"] for c in working]),
        "claim_ms": stats([c["ms"] for c in working]),
        "ms_between_claims": stats([1000 * (b - a) for a, b in itertools.pairwise(starts)]),
        "writes": len(writes),
        "write_batch": stats([w["batch"] for w in writes]),
        "write_ms": stats([w["ms"] for w in writes]),
    }


def report() -> None:
    if not claims:
        return
    out = Path(os.environ.get("DISPATCH_PROBE_OUT") or
               Path(__file__).resolve().parent / "results" / f"dispatch-probe-{os.getpid()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    data = summary()
    out.write_text(json.dumps({"summary": data, "claims": claims, "writes": writes}))
    print(f"dispatch probe ({out}): {json.dumps(data)}", file=sys.stderr)


PostgresQueue.claim = claim  # type: ignore[method-assign]
Dispatcher._settle = settle  # type: ignore[method-assign]
Dispatcher._rooms = rooms  # type: ignore[method-assign]
atexit.register(report)

if __name__ == "__main__":
    sys.exit(cli.main())
