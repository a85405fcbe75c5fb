"""The schema the migrations make, as stable text: ``sql/schema.sql`` is this text for a
freshly migrated database, checked in, and a test migrates an empty database and compares
(so a migration cannot change the schema without the reviewed file changing too).

It is read from the catalog, not from ``pg_dump``, so it does not depend on the server's
version (the suite runs on PostgreSQL 15, 16 and 18) or on client programs being there.

    python -m gateway.store.schema DATABASE_URL > gateway/store/sql/schema.sql
"""

from __future__ import annotations

import asyncio
import sys
from importlib import resources

import asyncpg

from gateway.store.database import QUERIES


async def describe(conn: asyncpg.Connection) -> str:
    """Every table (columns, constraints, indexes), function and view of the schema."""
    parts = ["-- The schema the migrations make (gateway/store/schema.py writes this file;",
             "-- a test checks it). Partitions, made as time passes, are left out.", ""]
    for table in await conn.fetch(QUERIES["schema_tables"]):
        columns = []
        for c in await conn.fetch(QUERIES["schema_columns"], table["oid"]):
            line = f"    {c['name']} {c['type']}"
            if c["generated"]:
                line += f" GENERATED ALWAYS AS ({c['default_value']}) STORED"
            elif c["identity"]:
                line += " GENERATED " + ("ALWAYS" if c["identity"] == "a" else "BY DEFAULT") \
                    + " AS IDENTITY"
            elif c["default_value"] is not None:
                line += f" DEFAULT {c['default_value']}"
            if c["not_null"]:
                line += " NOT NULL"
            columns.append(line)
        suffix = f" PARTITION BY {table['partition_key']}" if table["partitioned"] else ""
        parts.append(f"CREATE TABLE {table['name']} (\n" + ",\n".join(columns) + f"\n){suffix};")
        for k in await conn.fetch(QUERIES["schema_constraints"], table["oid"]):
            parts.append(f"ALTER TABLE {table['name']} ADD CONSTRAINT {k['name']} "
                         f"{k['definition']};")
        for i in await conn.fetch(QUERIES["schema_indexes"], table["oid"]):
            parts.append(f"{i['definition']};")
        parts.append("")
    for view in await conn.fetch(QUERIES["schema_views"]):
        parts += [f"CREATE VIEW {view['name']} AS\n{view['definition'].strip()}", ""]
    for function in await conn.fetch(QUERIES["schema_functions"]):
        parts += [function["definition"].strip() + ";", ""]
    return "\n".join(parts).rstrip() + "\n"


def checked_in() -> str:
    return resources.files("gateway.store").joinpath("sql/schema.sql").read_text("utf-8")


async def _main(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        sys.stdout.write(await describe(conn))
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1]))
