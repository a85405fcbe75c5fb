"""The migrations make exactly the checked-in schema (``gateway/store/sql/schema.sql``).

``GATEWAY_WRITE_SCHEMA=1`` rewrites the file from a freshly migrated database, after a
migration was added on purpose.
"""

from __future__ import annotations

import asyncio
import os
from importlib import resources
from pathlib import Path

import asyncpg

from gateway.store.database import load_migrations, migrate
from gateway.store.schema import checked_in, describe


async def test_migrating_an_empty_database_gives_exactly_the_checked_in_schema(
    empty_database: str,
) -> None:
    applied = await migrate(empty_database)
    assert applied == [m.version for m in load_migrations()] and applied
    conn = await asyncpg.connect(empty_database)
    try:
        made = await describe(conn)
    finally:
        await conn.close()
    if os.environ.get("GATEWAY_WRITE_SCHEMA") == "1":
        target = Path(str(resources.files("gateway.store").joinpath("sql/schema.sql")))
        await asyncio.to_thread(target.write_text, made)
    assert made == checked_in()


async def test_migrating_twice_changes_nothing(empty_database: str) -> None:
    await migrate(empty_database)
    conn = await asyncpg.connect(empty_database)
    try:
        before = await describe(conn)
        assert await migrate(empty_database) == []
        assert await describe(conn) == before
    finally:
        await conn.close()
