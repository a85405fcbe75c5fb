"""Fixtures for the end-to-end tier: real gateway processes and an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.support import GatewayProcess


@pytest.fixture
def procs() -> Iterator[list[GatewayProcess]]:
    """Gateway processes a test started; each is stopped afterwards, whatever happened."""
    started: list[GatewayProcess] = []
    yield started
    for proc in started:
        proc.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
