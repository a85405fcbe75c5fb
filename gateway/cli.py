"""``gateway`` command line: serve, dispatch, migrate, apps."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from aiohttp import web

from gateway.app import create_app
from gateway.config import Settings, load_settings, settings_help
from gateway.db import Database, migrate, start_embedded
from gateway.errors import GatewayError
from gateway.store import Store

log = logging.getLogger("gateway")
T = TypeVar("T")


def _parser() -> argparse.ArgumentParser:
    epilog = settings_help()
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="gateway", formatter_class=fmt, epilog=epilog,
        description="Async event gateway: durable ingest, signed webhooks, push fan-out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the HTTP API and the dispatcher",
                           formatter_class=fmt, epilog=epilog,
                           description="Run the HTTP API and, unless --no-dispatcher, the "
                           "dispatcher. Without DATABASE_URL an embedded PostgreSQL starts in "
                           "GATEWAY_DATA_DIR.")
    serve.add_argument("--host", help="listen address (default: GATEWAY_HOST)")
    serve.add_argument("--port", type=int, help="listen port (default: GATEWAY_PORT)")
    serve.add_argument("--no-dispatcher", action="store_true",
                       help="run the API alone; run 'gateway dispatch' elsewhere")
    serve.add_argument("--sandbox", action="store_true",
                       help="run fake FCM and APNs servers in-process on loopback; apps "
                       "without push credentials push to them (GET /v1/sandbox/pushes)")

    dispatch = sub.add_parser("dispatch", help="run the dispatcher alone",
                              formatter_class=fmt, epilog=epilog,
                              description="Deliver pending deliveries; no API. Any number of "
                              "these may share one database.")
    dispatch.add_argument("--health-port", type=int,
                          help="serve /healthz and /readyz on this port (GATEWAY_HOST)")

    sub.add_parser("migrate", help="apply pending database migrations and exit",
                   formatter_class=fmt, epilog=epilog)

    apps = sub.add_parser("apps", help="manage apps")
    apps_sub = apps.add_subparsers(dest="apps_command", required=True, metavar="ACTION")
    create = apps_sub.add_parser("create", help="create an app and print its API key")
    create.add_argument("name")
    create.add_argument("--json", action="store_true", help="print the app as JSON")
    return parser


def _database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    uri = start_embedded(settings.data_path)
    log.info("embedded PostgreSQL running, data in %s", settings.data_path / "pgdata")
    return uri


async def _run_app(app: web.Application, settings: Settings, host: str | None,
                   port: int | None) -> int:
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=settings.shutdown_grace_s)
    await runner.setup()
    if port is not None and host is not None:
        site = web.TCPSite(runner, host, port)
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
                 host: str | None, port: int | None, sandbox: bool = False) -> int:
    await migrate(dsn)
    app = create_app(settings, dsn, serve_api=api, dispatcher=dispatcher, sandbox=sandbox)
    return await _run_app(app, settings, host, port)


async def _create_app(dsn: str, name: str) -> dict[str, str]:
    await migrate(dsn)
    db = await Database.connect(dsn, max_size=1)
    try:
        row, key = await Store(db).create_app(name)
    finally:
        await db.close()
    return {"id": row["id"], "name": row["name"], "api_key": key,
            "created_at": row["created_at"].isoformat()}


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except GatewayError as exc:
        print(f"gateway: {exc.message}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    try:
        dsn = _database_url(settings)
        if args.command == "migrate":
            applied = _run(migrate(dsn))
            print(f"applied {len(applied)} migration(s)" if applied else "schema up to date")
            return 0
        if args.command == "apps":
            created = _run(_create_app(dsn, args.name))
            if args.json:
                print(json.dumps(created))
            else:
                print(f"app {created['id']} ({created['name']})\napi key: {created['api_key']}")
            return 0
        if settings.admin_key is None and args.command == "serve":
            settings = settings.with_overrides(admin_key="gwadmin_" + secrets.token_urlsafe(24))
            print(f"GATEWAY_ADMIN_KEY is not set; this run's operator key is: "
                  f"{settings.admin_key}", file=sys.stderr, flush=True)
        if args.command == "serve":
            host = args.host or settings.host
            port = args.port if args.port is not None else settings.port
            if args.sandbox and args.no_dispatcher:
                print("gateway: --sandbox needs the dispatcher in the same process",
                      file=sys.stderr)
                return 2
            return _run(_serve(settings, dsn, api=True, dispatcher=not args.no_dispatcher,
                               host=host, port=port, sandbox=args.sandbox))
        if args.command == "dispatch":
            port = args.health_port
            return _run(_serve(settings, dsn, api=False, dispatcher=True,
                               host=settings.host if port is not None else None, port=port))
    except GatewayError as exc:
        print(f"gateway: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
