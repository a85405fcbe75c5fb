"""``gateway serve --workers N``: N gateway processes on one port and one database.

The supervisor does what must happen once (start the embedded PostgreSQL when
``DATABASE_URL`` is unset, apply migrations, choose the operator key for the run), then
starts N workers: each is ``gateway serve`` itself, binding the same address with
``SO_REUSEPORT`` (the kernel spreads new connections across them) and dispatching from the
same database (claims never overlap: ``FOR UPDATE SKIP LOCKED``). It forwards SIGTERM and
SIGINT to every worker, waits for them to finish their in-flight work, and starts again a
worker that dies on its own (after a pause that doubles while it keeps dying, up to 30 s).
Workers get a parent-death signal, so they never outlive a supervisor that was killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

log = logging.getLogger("gateway.supervisor")

#: Environment variable a worker gets: its number (1..N), shown in its log lines.
WORKER_ENV = "GATEWAY_WORKER"
#: How long a worker must have lived for its death to reset the restart pause.
STABLE_AFTER_S = 10.0
MAX_PAUSE_S = 30.0


def worker_count(text: str) -> int:
    """``--workers``: a positive integer, or ``auto`` for the CPUs this process may use."""
    if text == "auto":
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            return os.cpu_count() or 1
    count = int(text)
    if count < 1:
        raise ValueError("--workers must be at least 1")
    return count


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGTERM this worker when the supervisor dies, however it dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Worker:
    number: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    pause_s: float = 1.0
    restart_at: float | None = None


@dataclass
class Supervisor:
    """Runs ``argv`` (a ``gateway serve`` command line) as ``count`` workers."""

    argv: list[str]
    count: int
    env: dict[str, str]
    grace_s: float
    workers: list[Worker] = field(default_factory=list)
    _stopping: int | None = None

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.workers = [Worker(n) for n in range(1, self.count + 1)]
        for worker in self.workers:
            self._start(worker)
        log.info("supervisor running %d workers", self.count,
                 extra={"pids": ",".join(str(w.proc.pid) for w in self.workers if w.proc)})
        while self._stopping is None:
            self._reap_and_restart()
            time.sleep(0.2)
        return self._stop_all(self._stopping)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = signum

    def _start(self, worker: Worker) -> None:
        env = {**self.env, WORKER_ENV: str(worker.number)}
        worker.proc = subprocess.Popen(
            self.argv, env=env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        worker.started_at = time.monotonic()
        worker.restart_at = None

    def _reap_and_restart(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker.restart_at is not None:
                if now >= worker.restart_at:
                    log.info("restarting worker %d", worker.number)
                    self._start(worker)
                continue
            assert worker.proc is not None
            code = worker.proc.poll()
            if code is None:
                continue
            if now - worker.started_at >= STABLE_AFTER_S:
                worker.pause_s = 1.0
            log.warning("worker %d (pid %d) exited with %d; restarting it in %.0f s",
                        worker.number, worker.proc.pid, code, worker.pause_s)
            worker.restart_at = now + worker.pause_s
            worker.pause_s = min(worker.pause_s * 2, MAX_PAUSE_S)

    def _stop_all(self, signum: int) -> int:
        log.info("supervisor stopping %d workers", self.count)
        running = [w.proc for w in self.workers
                   if w.proc is not None and w.restart_at is None and w.proc.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)
        deadline = time.monotonic() + self.grace_s + 10.0
        codes = []
        for proc in running:
            try:
                codes.append(proc.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in time; killing it", proc.pid)
                proc.kill()
                codes.append(proc.wait())
        # A worker still starting when the signal came dies of it: that is a clean stop too.
        return 0 if all(code in (0, -signum) for code in codes) else 1
