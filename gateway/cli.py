"""``gateway`` command line: the server's commands (``serve``, ``dispatch``, ``migrate``)
and the API commands of :mod:`gateway_client.commands` (``apps``, ``endpoints``,
``events``, ``deliveries``, ``devices``, ``user-tokens``, ``push``, ``ops-webhook``,
``tasks``, ``tail``).

This module imports only what the client needs: the server's modules (and with them
PostgreSQL, the providers' libraries and the rest of ``event-gateway[server]``) load only
when a server command runs, so ``pip install event-gateway`` is enough for the API
commands.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence

from gateway import __version__, logs
from gateway.config import Settings, load_settings, settings_help
from gateway.errors import GatewayError
from gateway_client import commands

SERVER_COMMANDS = ("serve", "dispatch", "migrate", "secrets")


def _parser() -> argparse.ArgumentParser:
    epilog = settings_help()
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="gateway", formatter_class=fmt, epilog=epilog,
        description="Async event gateway: durable ingest, signed webhooks, push fan-out.",
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
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
    serve.add_argument("--workers", default="1", metavar="N",
                       help="run N processes sharing the port (SO_REUSEPORT) and the "
                       "database, under one supervisor that forwards signals and restarts a "
                       "worker that dies; 'auto': one per CPU (default 1: one process)")
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
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

    secrets = sub.add_parser("secrets", help="seal stored secrets (GATEWAY_SECRET_KEY)",
                             formatter_class=fmt, epilog=epilog,
                             description="Secrets at rest: endpoint signing secrets and "
                             "header values, push credentials' keys and user-token secrets "
                             "are sealed with the newest of GATEWAY_SECRET_KEY's keys.")
    actions = secrets.add_subparsers(dest="secrets_command", required=True, metavar="ACTION")
    actions.add_parser("new-key", help="print a new key for GATEWAY_SECRET_KEY")
    actions.add_parser("reseal", help="seal every stored secret under the newest key "
                       "(after adding a key in front, or setting one for the first time)")

    commands.add_parsers(sub)  # apps, endpoints, events, ..., push, ops-webhook, tasks, tail
    return parser


def _server_installed() -> bool:
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except GatewayError as exc:
        print(f"gateway: {exc.message}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format, settings.log_level,
                   secrets=(settings.admin_key, settings.metrics_key),
                   buffered=args.command in ("serve", "dispatch"))
    server_side = args.command in SERVER_COMMANDS or _apps_on_database(args, settings)
    if server_side and not _server_installed():
        print("gateway: the server is not installed; pip install 'event-gateway[server]'",
              file=sys.stderr)
        return 2
    try:
        if not server_side:
            return commands.run(args, commands.Target(
                settings.client_url, settings.api_key, settings.admin_key))
        from gateway import serve  # the server, and everything it needs

        return serve.run(args, settings)
    except GatewayError as exc:
        print(f"gateway: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _apps_on_database(args: argparse.Namespace, settings: Settings) -> bool:
    """``apps`` goes straight to the database when DATABASE_URL is set and GATEWAY_URL is
    not (to bootstrap the first app before any gateway runs); everything else goes through
    the API."""
    return args.command == "apps" and bool(settings.database_url) and not settings.url


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
