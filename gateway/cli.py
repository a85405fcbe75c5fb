"""``gateway`` command line: serve, dispatch, migrate, and (in :mod:`gateway.commands`) the
API commands: apps, endpoints, events, deliveries, devices, user-tokens, tail."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from aiohttp import web

from gateway import commands, logs
from gateway.app import create_app
from gateway.config import Settings, load_settings, settings_help
from gateway.db import migrate, start_embedded
from gateway.errors import GatewayError

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

    commands.add_parsers(sub)  # apps, endpoints, events, deliveries, devices, tail, ...
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
    logs.configure(settings.log_format, settings.log_level,
                   secrets=(settings.admin_key, settings.metrics_key))
    try:
        if args.command in commands.COMMANDS:  # they talk HTTP (apps: maybe the database)
            return commands.run(args, settings)
        dsn = _database_url(settings)
        if args.command == "migrate":
            applied = _run(migrate(dsn))
            print(f"applied {len(applied)} migration(s)" if applied else "schema up to date")
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
