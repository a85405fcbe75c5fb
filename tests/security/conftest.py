"""The security tier: each test attacks the real server (the app on a real socket on
loopback, or the real process) the way a hostile tenant or a stranger would, and is named
after what it proves cannot happen."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from gateway.app import create_app
from gateway.config import Settings
from tests.support import ADMIN_KEY, Api

#: Makes the gateway in this process, behind a real socket, with some settings changed.
Launch = Callable[..., Awaitable[Api]]


@pytest.fixture
def launch(aiohttp_client: Any, dsn: str, settings: Settings) -> Launch:
    async def start(*, dispatcher: bool = True, sandbox: bool = False,
                    **changes: Any) -> Api:
        app = create_app(replace(settings, **changes), dsn, dispatcher=dispatcher,
                         sandbox=sandbox)
        return Api(await aiohttp_client(app))
    return start


async def new_app(api: Api, name: str = "tenant") -> tuple[str, str]:
    """A new app: its API key and its id."""
    status, body = await api.call("POST", "/v1/apps", ADMIN_KEY, {"name": name})
    assert status == 201, body
    return str(body["api_key"]), str(body["id"])
