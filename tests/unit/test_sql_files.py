from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.store.database import (
    MAX_CACHED_STATEMENT_CHARS,
    QUERIES,
    STATEMENT_CACHE_SIZE,
    load_migrations,
    load_queries,
)

SOURCES = [Path("gateway"), Path("adapters")]


def test_every_query_the_code_names_exists_and_every_query_is_used() -> None:
    code = "\n".join(p.read_text() for d in SOURCES for p in d.rglob("*.py"))
    named = set(re.findall(r'QUERIES\["(\w+)"\]', code)) | set(
        re.findall(r'\.(?:fetch|fetchrow|execute)\(\s*"(\w+)"', code))
    assert named - set(QUERIES) == set()
    assert set(QUERIES) - named == set()


def test_every_named_query_is_short_enough_for_the_pool_to_keep_it_prepared() -> None:
    longest = max(QUERIES, key=lambda name: len(QUERIES[name]))
    assert len(QUERIES[longest]) <= MAX_CACHED_STATEMENT_CHARS, longest


def test_a_pooled_connection_has_room_to_keep_every_named_query_prepared() -> None:
    assert len(QUERIES) <= STATEMENT_CACHE_SIZE


def test_a_query_defined_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        load_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_migrations_are_numbered_in_order_from_one_each_number_once() -> None:
    versions = [m.version for m in load_migrations()]
    assert versions[0] == 1
    assert versions == sorted(set(versions))


def test_a_broken_connection_is_unavailable_but_a_wrong_query_is_a_bug() -> None:
    import asyncpg

    from gateway.errors import DatabaseUnavailable
    from gateway.store.database import translated

    with pytest.raises(DatabaseUnavailable), translated():
        raise asyncpg.InterfaceError("cannot perform operation: connection is closed")
    with pytest.raises(asyncpg.InterfaceError), translated():
        raise asyncpg.InterfaceError("the server expects 6 arguments for this query, 5 were passed")


def test_a_transaction_rolled_back_to_end_a_conflict_is_one_to_retry() -> None:
    import asyncpg

    from gateway.errors import DatabaseUnavailable
    from gateway.store.database import translated

    for rolled_back in (asyncpg.DeadlockDetectedError("deadlock detected"),
                        asyncpg.SerializationError("could not serialize access")):
        with pytest.raises(DatabaseUnavailable, match="nothing was written"), translated():
            raise rolled_back
    with pytest.raises(asyncpg.UniqueViolationError), translated():
        raise asyncpg.UniqueViolationError("duplicate key")


def test_every_advisory_lock_has_a_key_of_its_own() -> None:
    from gateway.store import postgres
    from gateway.store.schema import checked_in

    sql = "\n".join([*QUERIES.values(), checked_in()])
    keys = [int(k) for k in re.findall(r"pg_(?:try_)?advisory_(?:xact_)?lock\((\d+)\)", sql)]
    keys += [v for name, v in vars(postgres).items() if name.endswith("_LOCK_KEY")]
    assert len(keys) >= 4 and len(keys) == len(set(keys))
