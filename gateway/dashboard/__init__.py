"""The operator dashboard, served by the gateway itself at ``/dashboard``:
server-rendered pages (``templates/``), no CDN, working offline. Pages are in
:mod:`~gateway.dashboard.pages`, sessions and CSRF in :mod:`~gateway.dashboard.sessions`,
how things are written in :mod:`~gateway.dashboard.format`."""

from __future__ import annotations

import aiohttp_jinja2
import jinja2
from aiohttp import web

from gateway.dashboard import format
from gateway.dashboard.format import notification
from gateway.dashboard.pages import ROUTES
from gateway.dashboard.sessions import (
    SESSION_COOKIE,
    csrf_token,
    issue_session,
    read_session,
    session_key,
)

__all__ = ["ROUTES", "SESSION_COOKIE", "csrf_token", "issue_session", "notification",
           "read_session", "session_key", "setup"]


def setup(app: web.Application) -> None:
    """Templates for the dashboard; call once from ``create_app``."""
    env = aiohttp_jinja2.setup(
        app, loader=jinja2.PackageLoader("gateway.dashboard", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        default_helpers=False,
    )
    env.filters.update(when=format.when, ago=format.ago, duration=format.duration,
                       pretty=format.pretty, middle=format.middle)
    env.globals.update(next_attempt=format.next_attempt, target=format.target)
