"""The database every test starts from: emptied between tests, as a freshly migrated one
would be."""

from __future__ import annotations

import asyncpg

from gateway.store.database import load_migrations
from tests.support import TABLES_QUERY, Api, Receiver, empty_all, eventually


async def counts(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        tables = [row["relname"] for row in await conn.fetch(TABLES_QUERY)]
        return {t: await conn.fetchval(f'SELECT count(*) FROM "{t}"') for t in tables}
    finally:
        await conn.close()


async def test_emptying_removes_every_row_a_test_left_and_keeps_the_migrations_applied(
        api: Api, dsn: str, receiver: Receiver) -> None:
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    await api.emit(key)
    await receiver.wait_for(1)

    async def attempted() -> bool:
        return (await counts(dsn))["attempts"] == 1
    await eventually(attempted)
    filled = await counts(dsn)
    assert all(filled[t] for t in ("apps", "endpoints", "events", "deliveries", "attempts"))

    await empty_all(dsn)

    assert set((await counts(dsn)).values()) == {0}
    conn = await asyncpg.connect(dsn)
    try:
        applied = [row["version"] for row in
                   await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")]
    finally:
        await conn.close()
    assert applied == [m.version for m in load_migrations()]
