"""Running the server: ``gateway serve``, ``gateway dispatch`` and ``gateway migrate``, and
``gateway apps`` straight on the database (before any gateway runs). The command line
(:mod:`gateway.cli`) loads this module only for these commands."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import secrets
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web

from gateway import crypto, supervisor
from gateway.api.http import validate
from gateway.api.models import AppKeyRotate
from gateway.app import create_app, make_store
from gateway.config import Settings
from gateway.errors import GatewayError
from gateway.retention import partition_days
from gateway.store import embedded
from gateway.store.database import Database, migrate
from gateway.store.postgres import Store
from gateway_client import commands
from gateway_client.models import AppCreated, AppPage, RotatedAppKey

log = logging.getLogger("gateway")
T = TypeVar("T")

#: Net new container objects before the cyclic collector runs (Python's default: 700).
#: A request's objects are freed by reference counting, not by the collector, but with
#: 64 requests in flight the default ran it every few dozen requests, each time walking
#: every in-flight request's objects: a tenth of the gateway's CPU per request.
GC_THRESHOLD_OBJECTS = 10_000


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run a server command (``serve``, ``dispatch``, ``migrate``, or ``apps`` on the
    database); its exit status."""
    if args.command == "apps":
        assert settings.database_url is not None
        return commands.report(args, _apps_direct(args, settings),
                               expected=(GatewayError,))
    if args.command == "secrets" and args.secrets_command == "new-key":
        print(crypto.new_key())
        return 0
    sealer = crypto.Sealer(settings.secret_key)  # a malformed key stops here, with its reason
    dsn = database_url(settings)
    if args.command == "secrets":
        if not sealer.enabled:
            print("gateway: set GATEWAY_SECRET_KEY first", file=sys.stderr)
            return 2
        changed = _run(_reseal(dsn, sealer, partition_days(settings.retention_days)))
        print("resealed " + ", ".join(f"{n} {table}" for table, n in changed.items()))
        return 0
    if not sealer.enabled:
        log.warning("GATEWAY_SECRET_KEY is not set: endpoint secrets, push credentials' "
                    "keys and user-token secrets are stored in plain text")
    if args.command == "migrate":
        applied = _run(migrate(dsn, partition_days(settings.retention_days)))
        print(f"applied {len(applied)} migration(s)" if applied else "schema up to date")
        return 0
    if args.command == "serve":
        if settings.admin_key is None:
            settings = settings.with_overrides(admin_key="gwadmin_" + secrets.token_urlsafe(24))
            print(f"GATEWAY_ADMIN_KEY is not set; this run's operator key is: "
                  f"{settings.admin_key}", file=sys.stderr, flush=True)
        if args.sandbox and args.no_dispatcher:
            print("gateway: --sandbox needs the dispatcher in the same process",
                  file=sys.stderr)
            return 2
        host = args.host or settings.host
        port = args.port if args.port is not None else settings.port
        try:
            workers = supervisor.worker_count(args.workers)
        except ValueError:
            print("gateway: --workers takes a positive integer or 'auto'", file=sys.stderr)
            return 2
        if workers > 1:
            return _supervise(args, settings, dsn, workers, host, port)
        return _run(_serve(settings, dsn, api=True, dispatcher=not args.no_dispatcher,
                           host=host, port=port, sandbox=args.sandbox,
                           reuse_port=args.reuse_port))
    port = args.health_port
    return _run(_serve(settings, dsn, api=False, dispatcher=True,
                       host=settings.host if port is not None else None, port=port))


def database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    uri = embedded.start(settings.data_path)
    log.info("embedded PostgreSQL running, data in %s", settings.data_path / "pgdata")
    return uri


def _supervise(args: argparse.Namespace, settings: Settings, dsn: str, workers: int,
               host: str, port: int) -> int:
    """``gateway serve --workers N`` (N > 1): migrate once, then run N workers."""
    if args.sandbox:
        print("gateway: --sandbox keeps its fake providers' inbox in one process; "
              "run it with --workers 1", file=sys.stderr)
        return 2
    if port == 0:
        print("gateway: --workers needs a fixed --port to share", file=sys.stderr)
        return 2
    _run(migrate(dsn, partition_days(settings.retention_days)))
    argv = [sys.executable, "-m", "gateway", "serve", "--host", host, "--port", str(port),
            "--reuse-port", *(["--no-dispatcher"] if args.no_dispatcher else [])]
    env = {**os.environ, "DATABASE_URL": dsn}
    if settings.admin_key is not None:
        env["GATEWAY_ADMIN_KEY"] = settings.admin_key
    log.info("gateway listening on http://%s:%d with %d workers", host, port, workers)
    return supervisor.Supervisor(argv, workers, env, settings.shutdown_grace_s).run()


async def _run_app(app: web.Application, settings: Settings, host: str | None,
                   port: int | None, *, reuse_port: bool = False) -> int:
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=settings.shutdown_grace_s)
    await runner.setup()
    # What startup made (modules, models, the app) lives as long as the process: the
    # collector need not walk it again.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD_OBJECTS)
    if port is not None and host is not None:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
        await site.start()
        log.info("gateway listening on http://%s:%d", host, port)
    log.info("gateway ready")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: intake stopped, finishing in-flight work")
    await runner.cleanup()
    log.info("stopped")
    return 0


async def _serve(settings: Settings, dsn: str, *, api: bool, dispatcher: bool,
                 host: str | None, port: int | None, sandbox: bool = False,
                 reuse_port: bool = False) -> int:
    await migrate(dsn, partition_days(settings.retention_days))
    app = create_app(settings, dsn, serve_api=api, dispatcher=dispatcher, sandbox=sandbox)
    return await _run_app(app, settings, host, port, reuse_port=reuse_port)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.run(coro)
    return uvloop.run(coro)


async def _reseal(dsn: str, sealer: crypto.Sealer, width: int) -> dict[str, int]:
    await migrate(dsn, width)
    db = await Database.connect(dsn, max_size=1)
    try:
        return await Store(db, sealer=sealer).reseal()
    finally:
        await db.close()


async def _apps_direct(args: argparse.Namespace, settings: Settings) -> Any:
    """``gateway apps`` on the database itself, as the running gateway would do it."""
    dsn = settings.database_url
    assert dsn is not None
    await migrate(dsn, partition_days(settings.retention_days))
    db = await Database.connect(dsn, max_size=1)
    try:
        store = make_store(db, settings)
        if args.apps_command == "create":
            return AppCreated.model_validate(await store.create_app(args.name))
        if args.apps_command == "delete":
            # Running gateways hear it (their key caches, and the cleanup of its rows).
            await store.delete_app(args.id)
            return {"id": args.id, "deleted": True}
        if args.apps_command == "rotate-key":
            asked = validate(AppKeyRotate, {} if args.grace_s is None
                             else {"grace_s": args.grace_s})
            return RotatedAppKey.model_validate(
                await store.rotate_app_key(args.id, asked.grace_s))
        page = await store.list_apps(args.cursor, args.limit or 50)
        return AppPage.model_validate({"data": page.items, "next_cursor": page.next_cursor})
    finally:
        await db.close()
