"""Fixtures for every tier. The database is a real PostgreSQL: embedded by default, the
server at TEST_DATABASE_URL when set; either way a fresh database is created for the
run and dropped after it."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import secrets
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway import logs
from gateway.app import create_app
from gateway.config import Settings
from gateway.store.database import migrate
from tests.support import (
    ADMIN_KEY,
    Api,
    Receiver,
    create_database,
    drop_database,
    embedded_server,
    empty_all,
    with_database,
)

T = TypeVar("T")


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """A PostgreSQL server: TEST_DATABASE_URL's, or an embedded one for this run."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield with_database(external, "postgres")
        return
    with embedded_server() as server:
        yield server.get_uri()


def run_apart(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to its end on an event loop of its own, leaving the thread's current
    loop as it was. ``asyncio.run`` would unset it: the one pytest-asyncio before 1.4 puts
    there after each async test is then dropped unclosed, and the garbage collector later
    fails whichever test it happens to run in with a ResourceWarning about the loop's
    socket pair."""
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        return runner.run(work)


@pytest.fixture(scope="session")
def database_url(server_dsn: str) -> Iterator[str]:
    """A fresh, migrated database for this test run; dropped at the end."""
    name = f"gw_test_{secrets.token_hex(4)}"
    dsn = run_apart(create_database(server_dsn, name))
    run_apart(migrate(dsn))
    try:
        yield dsn
    finally:
        run_apart(drop_database(server_dsn, name))


@pytest.fixture
async def empty_database(server_dsn: str) -> AsyncIterator[str]:
    """A database of the test's own, not migrated; dropped after it (for a test that
    changes what every other test would see, such as the schema or its partitions)."""
    name = f"gw_own_{secrets.token_hex(4)}"
    dsn = await create_database(server_dsn, name)
    try:
        yield dsn
    finally:
        await drop_database(server_dsn, name)


@pytest.fixture
async def dsn(database_url: str) -> str:
    """The run's database, emptied before the test."""
    await empty_all(database_url)
    return database_url


@pytest.fixture
def settings() -> Settings:
    return Settings(
        admin_key=ADMIN_KEY,
        allow_private_endpoints=True,
        retry_schedule=(0.1, 0.2, 0.3),
        retry_jitter=0.0,
        poll_interval_s=0.2,
        delivery_timeout_s=2.0,
        shutdown_grace_s=2.0,
    )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = await Receiver().start()
    yield recv
    await recv.stop()


@pytest.fixture
async def api(
    aiohttp_client: object, dsn: str, settings: Settings
) -> Api:
    """The gateway app (API + dispatcher) in this process, behind a real socket."""
    client: TestClient[aiohttp.web.Request, aiohttp.web.Application] = (
        await aiohttp_client(create_app(settings, dsn))  # type: ignore[operator]
    )
    return Api(client)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger writing JSON into a buffer; everything put back afterwards."""
    root = logging.getLogger()
    level = root.level
    buffer = io.StringIO()
    handler = logs.configure("json", "DEBUG", stream=buffer)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        logs._handler = None
        logs._secrets = ()
