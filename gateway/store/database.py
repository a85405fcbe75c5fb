"""PostgreSQL plumbing: the pool, SQL loaded by name, migrations, the embedded
server, and translation of driver errors into :class:`~gateway.errors.DatabaseUnavailable`.

Only the store (this package) talks to the driver; everything above it gets records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import asyncpg

from gateway.errors import DatabaseUnavailable, GatewayError

log = logging.getLogger("gateway.db")

if TYPE_CHECKING:
    #: What ``Database.connection`` hands out (a pooled connection proxy).
    Connection = asyncpg.pool.PoolConnectionProxy[asyncpg.Record]

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)

#: NOTIFY channels: new or requeued deliveries (the dispatchers listen), events with push
#: targets to expand (the fan-out), attempt outcomes (the live tail), and apps deleted or
#: given a new key (``deleted <app id>`` or ``rotated <app id>``: every process's key cache
#: and the cleanup of deleted apps).
DELIVERIES_CHANNEL = "gateway_deliveries"
FANOUT_CHANNEL = "gateway_fanout"
OUTCOMES_CHANNEL = "gateway_outcomes"
APPS_CHANNEL = "gateway_apps"
#: Background tasks to run (gateway/tasks.py).
TASKS_CHANNEL = "gateway_tasks"


#: The files of named queries: the gateway's own, and the catalog reads that describe the
#: schema (gateway/store/schema.py).
QUERY_FILES = ("queries.sql", "catalog.sql")


def load_queries(text: str | None = None) -> dict[str, str]:
    """Split the query files into ``{name: sql}`` on their ``-- name:`` lines."""
    if text is None:
        folder = resources.files("gateway.store").joinpath("sql")
        text = "\n".join(folder.joinpath(f).read_text("utf-8") for f in QUERY_FILES)
    parts = _NAME.split(text)
    queries = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} defined twice")
        queries[name] = body.strip()
    return queries


QUERIES = load_queries()

#: The longest statement (in characters) asyncpg keeps prepared on a connection. Its own
#: default, 15 KiB, sits just above claim_due (14 KiB, most of it comments): a statement
#: past the limit is parsed, described and planned again on every call, silently. With
#: claim_due past it (the limit lowered to try), the drain lost a third of its rate and
#: PostgreSQL spent 2.3 times the CPU a delivery (bench/README.md, "The statement
#: cache"). Every named query must fit (tests/unit/test_sql_files.py).
MAX_CACHED_STATEMENT_CHARS = 64 * 1024
#: How many statements a connection keeps prepared, least recently used dropped first:
#: room for every named query (asyncpg's default, 100, is fewer than there are), so a
#: pooled connection that served the API for a while still has the hot path's prepared.
STATEMENT_CACHE_SIZE = 256


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    folder = resources.files("gateway.store").joinpath("sql/migrations")
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    # Numbers are handed out to pieces of work before they land, so one may be missing
    # for a while; migrate() applies whichever are not applied yet, in order.
    if len(set(versions)) != len(versions) or (versions and versions[0] != 1):
        raise ValueError("migrations must be numbered from 0001, each number once")
    return found


# Errors that mean "the database is not there right now", as opposed to a bad query.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, socket file gone
    TimeoutError,  # no connection free in time, or the server does not answer
    asyncpg.PostgresConnectionError,  # class 08: the connection broke
    asyncpg.OperatorInterventionError,  # class 57: shutting down, starting up, cancelled
    asyncpg.TooManyConnectionsError,
)
#: asyncpg raises InterfaceError / InternalClientError for a connection that broke under
#: it; with any other message they are programming errors (wrong argument count…) and
#: must surface as 500s with their cause logged, not as "database unavailable".
_BROKEN_MESSAGES = ("closed", "another operation is in progress", "cannot switch to state")


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Turn a lost or refused database connection, or a transaction PostgreSQL rolled back
    to end a conflict, into ``DatabaseUnavailable``: nothing was written; retry."""
    try:
        yield
    except GatewayError:
        raise
    except _UNAVAILABLE as exc:
        raise DatabaseUnavailable(
            "The database is unavailable; nothing was written. Retry shortly."
        ) from exc
    except asyncpg.TransactionRollbackError as exc:
        # Class 40: PostgreSQL rolled the transaction back to end a deadlock or a
        # serialization conflict (a partition being made or dropped meanwhile, say).
        # Nothing was written and the same write may well pass again: its docs ask
        # applications to retry, and every caller retries what is "unavailable".
        raise DatabaseUnavailable(
            "The database rolled the write back to end a conflict with another; nothing "
            "was written. Retry shortly."
        ) from exc
    except (asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
        if not any(m in str(exc) for m in _BROKEN_MESSAGES):
            raise
        raise DatabaseUnavailable(
            "The database is unavailable; nothing was written. Retry shortly."
        ) from exc


#: Planner settings of the gateway's pooled sessions. A page the hot statements read is
#: almost always in memory (the newest partition and its indexes), and with the default
#: random_page_cost (4, a disk's seek) the generic plans of the claim and of the
#: settlements join the deliveries they change by hashing a scan of every partition
#: whenever the partitions look small: in a new database, and in every database until
#: autovacuum first analyzes a new partition, which can take minutes. A connection keeps
#: its generic plans, so each claim then read the whole partition as it grew (24 million
#: rows read for 11,000 deliveries in a 20-s run at 500 events/s: bench/README.md,
#: "Plans made on small partitions"). At 1.1, as for SSDs or cached data, they look each
#: row up by its key, at any size.
SESSION_SETTINGS = {"random_page_cost": "1.1"}


async def _no_reset(conn: asyncpg.Connection) -> None:
    return None


class Database:
    """An asyncpg pool whose every use is :func:`translated`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, dsn: str, *, max_size: int = 10) -> Database:
        with translated():
            pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=max_size, command_timeout=30,
                max_inactive_connection_lifetime=60,
                max_cacheable_statement_size=MAX_CACHED_STATEMENT_CHARS,
                statement_cache_size=STATEMENT_CACHE_SIZE,
                # Pooled sessions never LISTEN, SET or hold advisory locks (the LISTEN and
                # migration connections are separate), so asyncpg's reset query on every
                # release is a wasted round trip on the hot path.
                reset=_no_reset,
                server_settings=SESSION_SETTINGS,
            )
        return cls(pool)

    @contextlib.asynccontextmanager
    async def connection(self, timeout_s: float = 5.0) -> AsyncIterator[Connection]:
        with translated():
            async with self.pool.acquire(timeout=timeout_s) as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self.connection() as conn, conn.transaction():
            yield conn

    async def fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        async with self.connection() as conn:
            return list(await conn.fetch(QUERIES[name], *args))

    async def fetchrow(self, name: str, *args: Any) -> asyncpg.Record | None:
        async with self.connection() as conn:
            return await conn.fetchrow(QUERIES[name], *args)

    async def execute(self, name: str, *args: Any) -> str:
        async with self.connection() as conn:
            return await conn.execute(QUERIES[name], *args)

    async def ping(self, timeout_s: float = 2.0) -> None:
        with translated():
            async with asyncio.timeout(timeout_s), self.connection(timeout_s) as conn:
                await conn.fetchval(QUERIES["ping"])

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pool.close(), 5)


async def migrate(dsn: str, partition_days: int = 7) -> list[int]:
    """Apply pending migrations in order, each in its own transaction, and make the
    partitions from yesterday to ``partition_days`` (at least two) ahead (that wide: see
    gateway/retention.py partition_days); returns the migrations applied.

    An advisory lock makes concurrent start-ups (API and dispatcher) take turns.
    """
    applied: list[int] = []
    with translated():
        conn = await asyncpg.connect(dsn)
    try:
        with translated():
            await conn.execute(QUERIES["migration_lock"])
            await conn.execute(QUERIES["create_migrations_table"])
            done = {r["version"] for r in await conn.fetch(QUERIES["applied_migrations"])}
            for migration in load_migrations():
                if migration.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(QUERIES["record_migration"], migration.version,
                                       migration.name)
                applied.append(migration.version)
                log.info("applied migration %04d_%s", migration.version, migration.name)
            # Today's partitions must exist before the first event (see gateway/retention.py
            # for who keeps them coming).
            await conn.fetchval(QUERIES["make_partitions"], 1, partition_days)
    finally:
        with contextlib.suppress(Exception):
            await conn.close()
    return applied
