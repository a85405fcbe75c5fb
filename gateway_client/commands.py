"""The ``gateway`` commands that drive a running gateway over its HTTP API, through
:class:`~gateway_client.client.GatewayClient`: ``apps``, ``endpoints``, ``events``,
``event-types``, ``deliveries``, ``devices``, ``user-tokens``, ``push``, ``ops-webhook``,
``tasks`` and ``tail``. Every one takes ``--json`` and then prints the API's answer as JSON
(``tail``: one object per line), so an operator can script it.

They call ``GATEWAY_URL`` (default ``http://GATEWAY_HOST:GATEWAY_PORT``) with
``GATEWAY_API_KEY``; ``apps`` sends ``GATEWAY_ADMIN_KEY`` (``apps rotate-key`` the app key
when the operator key is not set), and ``push`` the app key when it is set, else the
operator key. They need only the client's dependencies; the server's
command line (:mod:`gateway.cli`) adds them to its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import BaseModel

from gateway_client.client import (
    UNSET,
    DeliveryOutcome,
    GatewayAPIError,
    GatewayClient,
    GatewayClientError,
    GatewayConnectionError,
    Unset,
)
from gateway_client.models import DeliveryStatus, DeviceStatus, Platform, iso

Action = Callable[[GatewayClient, argparse.Namespace], Awaitable[Any]]


# --- the parser ----------------------------------------------------------------------

def _leaf(group: Any, name: str, help_text: str, action: Action,
          ) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(name, help=help_text,
                                                       description=help_text)
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    parser.set_defaults(action=action)
    return parser


def _paged(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--limit", type=int, help="page size, 1-250 (default 50)")
    parser.add_argument("--cursor", help="next_cursor of the previous page")
    return parser


def _endpoint_options(parser: argparse.ArgumentParser, changing: bool = False) -> None:
    """--rate-limit, --header and --filter (and, to change an endpoint, their --no-*)."""
    for flag, dest, extra in (
        ("--rate-limit", "rate_limit", {"type": int, "metavar": "N",
                                        "help": "sends per second at most"}),
        ("--header", "headers", {"action": "append", "metavar": "NAME=VALUE",
                                 "help": "a header sent with every delivery (repeatable"
                                 + ("; replaces the whole set)" if changing else ")")}),
        ("--filter", "filter", {"metavar": "JSON", "help": "a JSON object of dotted payload "
                                "paths to a value or a list of values, all to match"}),
    ):
        if not changing:
            parser.add_argument(flag, dest=dest, **extra)
            continue
        either = parser.add_mutually_exclusive_group()
        either.add_argument(flag, dest=dest, **extra)
        what = {"rate_limit": "lift the rate limit", "headers": "remove every custom header",
                "filter": "let every event through"}[dest]
        either.add_argument(f"--no-{flag[2:]}{'s' if dest == 'headers' else ''}",
                            dest=f"no_{dest}", action="store_true", help=what)


def _header_pairs(pairs: list[str] | None) -> dict[str, str] | None:
    if pairs is None:
        return None
    headers: dict[str, str] = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise GatewayClientError(f"--header takes NAME=VALUE, not {pair!r}")
        headers[name] = value
    return headers


def _group(sub: Any, name: str, help_text: str) -> Any:
    parser = sub.add_parser(name, help=help_text, description=help_text + ". " + _WHERE)
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")


_WHERE = ("Calls GATEWAY_URL (default http://GATEWAY_HOST:GATEWAY_PORT) with GATEWAY_API_KEY; "
          "'apps' sends GATEWAY_ADMIN_KEY")


def add_parsers(sub: Any) -> None:
    """Add every API command to the ``gateway`` parser's subcommands."""
    apps = _group(sub, "apps", "manage apps (operator key; or the database directly when "
                  "DATABASE_URL is set and GATEWAY_URL is not)")
    _leaf(apps, "create", "create an app and print its API key", _apps_create) \
        .add_argument("name")
    _paged(_leaf(apps, "list", "list apps", _apps_list))
    _leaf(apps, "delete", "delete an app: its keys stop working at once, and everything it "
          "owns is removed in the background", _apps_delete).add_argument("id")
    rotate = _leaf(apps, "rotate-key", "give an app a new API key (printed once); the old "
                   "one keeps working for --grace-s", _apps_rotate_key)
    rotate.add_argument("id")
    rotate.add_argument("--grace-s", type=int, metavar="N",
                        help="seconds the old key keeps working (default 86400; 0: it ends "
                        "now)")

    endpoints = _group(sub, "endpoints", "manage webhook endpoints")
    create = _leaf(endpoints, "create", "subscribe a webhook endpoint (prints its secret)",
                   _endpoints_create)
    create.add_argument("url")
    create.add_argument("--event-type", action="append", dest="event_types",
                        metavar="TYPE", help="exact type, 'prefix.*' or '*' (repeatable; "
                        "default: every type)")
    create.add_argument("--description")
    _endpoint_options(create)
    _paged(_leaf(endpoints, "list", "list endpoints", _endpoints_list))
    _leaf(endpoints, "get", "show an endpoint", _endpoints_get).add_argument("id")
    update = _leaf(endpoints, "update", "change an endpoint; enable or disable it",
                   _endpoints_update)
    update.add_argument("id")
    update.add_argument("--url")
    types = update.add_mutually_exclusive_group()
    types.add_argument("--event-type", action="append", dest="event_types", metavar="TYPE",
                       help="replace the subscribed types (repeatable)")
    types.add_argument("--all-event-types", action="store_true",
                       help="subscribe to every event type")
    update.add_argument("--description")
    state = update.add_mutually_exclusive_group()
    state.add_argument("--enable", action="store_true",
                       help="enable it afresh: not failing, its circuit closed, its waiting "
                       "deliveries resumed (on an active endpoint too)")
    state.add_argument("--disable", action="store_true",
                       help="disable it (disabled_reason manual); its deliveries wait")
    _endpoint_options(update, changing=True)
    _leaf(endpoints, "delete", "delete an endpoint", _endpoints_delete).add_argument("id")
    _leaf(endpoints, "secret", "show an endpoint's signing secret",
          _endpoints_secret).add_argument("id")
    _leaf(endpoints, "rotate-secret", "rotate the signing secret (the old one signs too "
          "for 24 h)", _endpoints_rotate).add_argument("id")
    for name, help_text, action in (
            ("recover", "requeue the endpoint's failed deliveries of events created in a "
             "window (a background task)", _endpoints_recover),
            ("replay", "send the endpoint the events of a window it has no delivery for "
             "(a background task)", _endpoints_replay)):
        task = _leaf(endpoints, name, help_text, action)
        task.add_argument("id")
        task.add_argument("--since", required=True, metavar="TIME",
                          help="ISO 8601 time with its offset (2030-01-31T14:00:00Z), or a "
                          "time ago: 90m, 6h, 2d")
        task.add_argument("--until", metavar="TIME", help="the same (default: now)")
        task.add_argument("--wait", action="store_true",
                          help="wait until the task is done, then print it")

    events = _group(sub, "events", "emit and inspect events")
    emit = _leaf(events, "emit", "emit an event", _events_emit)
    emit.add_argument("type")
    emit.add_argument("payload", nargs="?", default="{}",
                      help="the payload as a JSON object, or '-' to read it from stdin "
                      "(default: {})")
    emit.add_argument("--idempotency-key", help="default: a fresh one, reused on retries")
    emit.add_argument("--user-id", action="append", dest="user_ids", metavar="USER_ID",
                      help="push to this user's devices (repeatable; needs --notification)")
    emit.add_argument("--topic", action="append", dest="topics", metavar="TOPIC",
                      help="push to this topic's devices (repeatable; needs --notification)")
    emit.add_argument("--notification", help="the push notification as a JSON object")
    listing = _paged(_leaf(events, "list", "list events", _events_list))
    listing.add_argument("--type", dest="event_type", help="only this event type")
    _leaf(events, "get", "show an event with its deliveries", _events_get).add_argument("id")

    event_types = _group(sub, "event-types", "manage the event type catalog (descriptions "
                         "and JSON Schemas payloads must match)")
    create = _leaf(event_types, "create", "add an event type", _event_types_create)
    create.add_argument("name")
    create.add_argument("--description")
    create.add_argument("--schema", metavar="FILE",
                        help="a JSON Schema (Draft 2020-12) file ('-' reads stdin)")
    _paged(_leaf(event_types, "list", "list the catalog", _event_types_list))
    _leaf(event_types, "get", "show an event type with its schema",
          _event_types_get).add_argument("name")
    update = _leaf(event_types, "update", "change an event type's description or schema",
                   _event_types_update)
    update.add_argument("name")
    update.add_argument("--description")
    schema = update.add_mutually_exclusive_group()
    schema.add_argument("--schema", metavar="FILE",
                        help="replace the schema with this file's ('-' reads stdin)")
    schema.add_argument("--no-schema", action="store_true",
                        help="remove the schema: any payload is accepted")
    _leaf(event_types, "delete", "remove an event type from the catalog",
          _event_types_delete).add_argument("name")

    deliveries = _group(sub, "deliveries", "inspect and retry deliveries")
    listing = _paged(_leaf(deliveries, "list", "list deliveries", _deliveries_list))
    listing.add_argument("--status", choices=[s.value for s in DeliveryStatus])
    listing.add_argument("--endpoint-id")
    listing.add_argument("--event-id")
    _leaf(deliveries, "get", "show a delivery", _deliveries_get).add_argument("id")
    _leaf(deliveries, "attempts", "every attempt of a delivery",
          _deliveries_attempts).add_argument("id")
    _leaf(deliveries, "retry", "requeue a failed delivery now",
          _deliveries_retry).add_argument("id")

    devices = _group(sub, "devices", "manage push devices")
    register = _leaf(devices, "register", "register (upsert) a device", _devices_register)
    register.add_argument("platform", choices=[p.value for p in Platform])
    register.add_argument("token")
    register.add_argument("--user-id", required=True)
    register.add_argument("--topic", action="append", dest="topics", metavar="TOPIC")
    register.add_argument("--locale")
    register.add_argument("--app-version")
    listing = _paged(_leaf(devices, "list", "list devices", _devices_list))
    listing.add_argument("--user-id")
    listing.add_argument("--topic")
    listing.add_argument("--platform", choices=[p.value for p in Platform])
    listing.add_argument("--status", choices=[s.value for s in DeviceStatus])
    _leaf(devices, "get", "show a device", _devices_get).add_argument("token")
    _leaf(devices, "delete", "delete a device", _devices_delete).add_argument("token")
    topics = _leaf(devices, "set-topics", "replace a device's topics", _devices_set_topics)
    topics.add_argument("token")
    topics.add_argument("topics", nargs="*", metavar="TOPIC")

    user_tokens = _group(sub, "user-tokens", "mint user tokens for mobile apps")
    mint = _leaf(user_tokens, "create", "mint a short-lived user token", _user_tokens_create)
    mint.add_argument("user_id")
    mint.add_argument("--ttl-seconds", type=int)

    push = _group(sub, "push", "manage an app's push credentials (the app key, or the "
                  "operator key when GATEWAY_API_KEY is unset)")
    fcm = _leaf(push, "set-fcm", "upload the app's Firebase service account JSON",
                _push_set_fcm)
    fcm.add_argument("app_id", metavar="APP")
    fcm.add_argument("--service-account", required=True, metavar="FILE",
                     help="the service account JSON file ('-' reads stdin)")
    apns = _leaf(push, "set-apns", "upload the app's APNs token-auth key (.p8) or push "
                 "certificate", _push_set_apns)
    apns.add_argument("app_id", metavar="APP")
    form = apns.add_mutually_exclusive_group(required=True)
    form.add_argument("--key-file", metavar="FILE",
                      help="token auth: the AuthKey_XXXXXXXXXX.p8 file (with --key-id and "
                      "--team-id)")
    form.add_argument("--certificate", metavar="FILE",
                      help="certificate auth: the push certificate and its private key in "
                      "one PEM file ('openssl pkcs12 -in cert.p12 -out cert.pem -nodes "
                      "-clcerts'; '-' reads stdin)")
    apns.add_argument("--key-id")
    apns.add_argument("--team-id")
    apns.add_argument("--topic", help="the app's bundle id (with --certificate, default: "
                      "the certificate's)")
    apns.add_argument("--environment", choices=("production", "sandbox"),
                      default="production")
    _leaf(push, "show", "show the app's push credentials, masked",
          _push_show).add_argument("app_id", metavar="APP")

    ops = _group(sub, "ops-webhook", "manage the app's operational webhook (where the "
                 "gateway tells it about disabled endpoints, exhausted deliveries, dead "
                 "device tokens and refused push credentials)")
    ops_set = _leaf(ops, "set", "set the operational webhook (prints its secret, kept when "
                    "set again)", _ops_set)
    ops_set.add_argument("url")
    ops_set.add_argument("--event-type", action="append", dest="event_types",
                         metavar="TYPE", help="an operational event type, 'prefix.*' or "
                         "'*' (repeatable; default: every type)")
    _leaf(ops, "show", "show the operational webhook (not its secret)", _ops_show)
    _leaf(ops, "delete", "remove the operational webhook", _ops_delete)
    tasks = _group(sub, "tasks", "follow background tasks (recover, replay)")
    show = _leaf(tasks, "show", "show a task and its progress", _tasks_show)
    show.add_argument("id")
    show.add_argument("--wait", action="store_true",
                      help="wait until the task is done, then print it")
    _paged(_leaf(tasks, "list", "list the app's tasks, newest first", _tasks_list))

    tail = sub.add_parser(
        "tail", help="print delivery outcomes as they happen",
        description="Print every delivery outcome of the app as it happens (GET "
        "/v1/deliveries/stream), until interrupted. " + _WHERE + ".")
    tail.add_argument("--endpoint-id", help="only this endpoint's deliveries")
    tail.add_argument("--event-type", help="only this type: exact, 'prefix.*' or '*'")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")


# --- running -------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """Where the API commands go, and with which keys (from GATEWAY_URL, GATEWAY_API_KEY
    and GATEWAY_ADMIN_KEY)."""

    url: str
    api_key: str | None
    admin_key: str | None

    def key_for(self, command: str, action: str | None = None) -> tuple[str, str | None]:
        """The key a command (and its action) sends, and the variable it comes from."""
        if command == "apps" and action == "rotate-key" and not self.admin_key:
            return "GATEWAY_API_KEY", self.api_key  # an app rotating its own key
        if command == "apps" or (command == "push" and not self.api_key):
            return "GATEWAY_ADMIN_KEY", self.admin_key
        return "GATEWAY_API_KEY", self.api_key


def run(args: argparse.Namespace, target: Target) -> int:
    """Run an API command; the exit status: 0, 1 on an error answer or no connection,
    2 on missing configuration."""
    key_env, key = target.key_for(args.command, getattr(args, "apps_command", None))
    if not key:
        print(f"gateway: set {key_env} to use 'gateway {args.command}'", file=sys.stderr)
        return 2
    client = GatewayClient(target.url, key)
    if args.command == "tail":
        return asyncio.run(_tail(client, args))
    return report(args, _with(client, args))


async def _with(client: GatewayClient, args: argparse.Namespace) -> Any:
    async with client:
        return await args.action(client, args)


def report(args: argparse.Namespace, call: Coroutine[Any, Any, Any], *,
           expected: tuple[type[Exception], ...] = ()) -> int:
    """Run ``call`` and print its answer as the command's output; an error answer, a
    :class:`GatewayClientError` or one of ``expected`` is printed instead, exit status 1."""
    try:
        answer = asyncio.run(call)
    except GatewayAPIError as exc:
        if args.json:
            print(json.dumps({"error": {"code": exc.code, "message": exc.message,
                                        "details": exc.details}}), file=sys.stderr)
        else:
            print(f"gateway: {exc.status} {exc.code}: {exc.message}", file=sys.stderr)
            for detail in exc.details:
                print(f"  {json.dumps(detail)}", file=sys.stderr)
        return 1
    except Exception as exc:
        if not isinstance(exc, (GatewayClientError, *expected)):
            raise
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    data = _plain(answer)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        _print_human(data)
    return 0


def _plain(answer: Any) -> Any:
    if isinstance(answer, BaseModel):
        return answer.model_dump(mode="json", by_alias=True)
    if isinstance(answer, list):
        return [_plain(a) for a in answer]
    if isinstance(answer, dict):
        return {k: _plain(v) for k, v in answer.items()}
    return answer


# --- the commands ----------------------------------------------------------------------

async def _apps_create(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.create_app(args.name)


async def _apps_list(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.list_apps(limit=args.limit, cursor=args.cursor)


async def _apps_delete(gw: GatewayClient, args: argparse.Namespace) -> Any:
    await gw.delete_app(args.id)
    return {"id": args.id, "deleted": True}


async def _apps_rotate_key(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.rotate_app_key(args.id, grace_s=args.grace_s)


async def _endpoints_create(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.create_endpoint(
        args.url, event_types=args.event_types, description=args.description,
        rate_limit=args.rate_limit, headers=_header_pairs(args.headers),
        filter=_json_object(args.filter, "--filter") if args.filter is not None else None)


async def _endpoints_list(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.list_endpoints(limit=args.limit, cursor=args.cursor)


async def _endpoints_get(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.get_endpoint(args.id)


async def _endpoints_update(gw: GatewayClient, args: argparse.Namespace) -> Any:
    status: Literal["active", "disabled"] | Unset = (
        "active" if args.enable else "disabled" if args.disable else UNSET)
    options: dict[str, Any] = {
        "rate_limit": None if args.no_rate_limit else args.rate_limit,
        "headers": None if args.no_headers else _header_pairs(args.headers),
        "filter": None if args.no_filter else (
            _json_object(args.filter, "--filter") if args.filter is not None else None)}
    changed = {k: v for k, v in options.items()
               if v is not None or getattr(args, f"no_{k}")}
    return await gw.update_endpoint(
        args.id, url=args.url if args.url is not None else UNSET,
        event_types=None if args.all_event_types else args.event_types or UNSET,
        description=args.description if args.description is not None else UNSET,
        status=status, **changed)


async def _endpoints_delete(gw: GatewayClient, args: argparse.Namespace) -> Any:
    await gw.delete_endpoint(args.id)
    return {"id": args.id, "deleted": True}


async def _endpoints_secret(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.get_endpoint_secret(args.id)


async def _endpoints_rotate(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.rotate_secret(args.id)


#: How often ``--wait`` asks how a task is doing, in seconds.
TASK_POLL_S = 0.5
_AGO = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def instant(text: str, now: datetime | None = None) -> str:
    """A ``--since``/``--until`` value as the API takes it: ISO 8601 as given, or a time
    ago (``90m``, ``6h``, ``2d``) as of ``now``."""
    ago = _AGO.match(text.strip())
    if ago is None:
        return text
    delta = timedelta(**{_UNITS[ago[2]]: int(ago[1])})
    return iso((now or datetime.now(UTC)) - delta)


async def _endpoints_recover(gw: GatewayClient, args: argparse.Namespace) -> Any:
    task = await gw.recover_endpoint(
        args.id, instant(args.since), until=instant(args.until) if args.until else None)
    return await gw.wait_for_task(task.id, poll_interval_s=TASK_POLL_S) if args.wait \
        else task


async def _endpoints_replay(gw: GatewayClient, args: argparse.Namespace) -> Any:
    task = await gw.replay_endpoint(
        args.id, instant(args.since), until=instant(args.until) if args.until else None)
    return await gw.wait_for_task(task.id, poll_interval_s=TASK_POLL_S) if args.wait \
        else task


async def _tasks_show(gw: GatewayClient, args: argparse.Namespace) -> Any:
    if args.wait:
        return await gw.wait_for_task(args.id, poll_interval_s=TASK_POLL_S)
    return await gw.get_task(args.id)


async def _tasks_list(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.list_tasks(limit=args.limit, cursor=args.cursor)


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise GatewayClientError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise GatewayClientError(f"{what} must be a JSON object")
    return value


async def _events_emit(gw: GatewayClient, args: argparse.Namespace) -> Any:
    text = sys.stdin.read() if args.payload == "-" else args.payload
    notification = (_json_object(args.notification, "--notification")
                    if args.notification else None)
    return await gw.emit(args.type, _json_object(text, "the payload"),
                         user_ids=args.user_ids, topics=args.topics,
                         notification=notification, idempotency_key=args.idempotency_key)


async def _events_list(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.list_events(event_type=args.event_type, limit=args.limit,
                                cursor=args.cursor)


async def _events_get(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.get_event(args.id)


async def _event_types_create(gw: GatewayClient, args: argparse.Namespace) -> Any:
    schema = _json_object(_read(args.schema), "the schema file") if args.schema else None
    return await gw.create_event_type(args.name, description=args.description, schema=schema)


async def _event_types_list(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.list_event_types(limit=args.limit, cursor=args.cursor)


async def _event_types_get(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.get_event_type(args.name)


async def _event_types_update(gw: GatewayClient, args: argparse.Namespace) -> Any:
    schema: dict[str, Any] | Unset | None = UNSET
    if args.no_schema:
        schema = None
    elif args.schema:
        schema = _json_object(_read(args.schema), "the schema file")
    return await gw.update_event_type(
        args.name, description=args.description if args.description is not None else UNSET,
        schema=schema)


async def _event_types_delete(gw: GatewayClient, args: argparse.Namespace) -> Any:
    await gw.delete_event_type(args.name)
    return {"name": args.name, "deleted": True}


async def _deliveries_list(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.list_deliveries(status=args.status, endpoint_id=args.endpoint_id,
                                    event_id=args.event_id, limit=args.limit,
                                    cursor=args.cursor)


async def _deliveries_get(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.get_delivery(args.id)


async def _deliveries_attempts(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return {"data": await gw.attempts(args.id)}


async def _deliveries_retry(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.retry_delivery(args.id)


async def _devices_register(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.register_device(args.platform, args.token, user_id=args.user_id,
                                    topics=args.topics, locale=args.locale,
                                    app_version=args.app_version)


async def _devices_list(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.list_devices(user_id=args.user_id, topic=args.topic,
                                 platform=args.platform, status=args.status,
                                 limit=args.limit, cursor=args.cursor)


async def _devices_get(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.get_device(args.token)


async def _devices_delete(gw: GatewayClient, args: argparse.Namespace) -> Any:
    await gw.delete_device(args.token)
    return {"token": args.token, "deleted": True}


async def _devices_set_topics(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.set_device_topics(args.token, args.topics)


async def _user_tokens_create(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.create_user_token(args.user_id, ttl_seconds=args.ttl_seconds)


def _read(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise GatewayClientError(f"cannot read {path}: {exc.strerror}") from None


async def _push_set_fcm(gw: GatewayClient, args: argparse.Namespace) -> Any:
    account = _json_object(_read(args.service_account), "the service account file")
    return await gw.set_fcm_credentials(args.app_id, account)


async def _push_set_apns(gw: GatewayClient, args: argparse.Namespace) -> Any:
    if args.certificate is not None:
        if args.key_id or args.team_id:
            raise GatewayClientError("--key-id and --team-id go with --key-file, not "
                                     "--certificate")
        return await gw.set_apns_certificate(
            args.app_id, certificate_pem=_read(args.certificate), topic=args.topic,
            environment=args.environment)
    missing = [f"--{n.replace('_', '-')}" for n in ("key_id", "team_id", "topic")
               if not getattr(args, n)]
    if missing:
        raise GatewayClientError(f"--key-file needs {', '.join(missing)} too")
    return await gw.set_apns_credentials(
        args.app_id, key_p8=_read(args.key_file), key_id=args.key_id, team_id=args.team_id,
        topic=args.topic, environment=args.environment)


async def _push_show(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return (await gw.push_credentials(args.app_id)).model_dump(mode="json", exclude_none=True)


async def _ops_set(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.set_operational_webhook(args.url, event_types=args.event_types)


async def _ops_show(gw: GatewayClient, args: argparse.Namespace) -> Any:
    return await gw.operational_webhook()


async def _ops_delete(gw: GatewayClient, args: argparse.Namespace) -> Any:
    await gw.delete_operational_webhook()
    return {"deleted": True}


# --- tail ----------------------------------------------------------------------------

def outcome_line(o: DeliveryOutcome) -> str:
    """One outcome as a terminal line, the way ``stripe listen`` prints them."""
    target = o.endpoint_id if o.endpoint_id is not None else o.kind
    code = f" [{o.status_code}]" if o.status_code is not None else ""
    return (f"{o.at}  {o.event_type} {o.event_id} --> {target}  {o.outcome}{code}  "
            f"attempt {o.attempt}, {o.status}  {o.delivery_id}")


async def _tail(client: GatewayClient, args: argparse.Namespace) -> int:
    """Print outcomes until SIGINT/SIGTERM; reconnect when the connection breaks."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    out: TextIO = sys.stdout

    def dropped(count: int) -> None:
        print(f"gateway: {count} outcome(s) dropped: this terminal reads too slowly",
              file=sys.stderr, flush=True)

    delay = 0.5
    try:
        async with client:
            while True:
                try:
                    async with client.tail(endpoint_id=args.endpoint_id,
                                           event_type=args.event_type,
                                           on_dropped=dropped) as outcomes:
                        print(f"Ready: tailing delivery outcomes from {client.base_url} "
                              "(Ctrl-C to stop)", file=sys.stderr, flush=True)
                        delay = 0.5
                        async for outcome in outcomes:
                            line = (json.dumps(outcome.to_json()) if args.json
                                    else outcome_line(outcome))
                            print(line, file=out, flush=True)
                    print("gateway: the stream ended; reconnecting", file=sys.stderr,
                          flush=True)
                except GatewayConnectionError as exc:
                    print(f"gateway: {exc}; reconnecting in {delay:.1f} s", file=sys.stderr,
                          flush=True)
                except GatewayAPIError as exc:
                    print(f"gateway: {exc.status} {exc.code}: {exc.message}", file=sys.stderr)
                    return 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
    except asyncio.CancelledError:
        return 0


# --- human output --------------------------------------------------------------------

_COLUMNS = ("id", "token", "name", "type", "url", "status", "kind", "outcome", "status_code",
            "event_types", "platform", "user_id", "attempt_count", "attempted_at",
            "created_at")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _print_human(data: Any, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        rows: Sequence[dict[str, Any]] = data["data"]
        if rows:
            columns = [c for c in _COLUMNS if c in rows[0]]
            if "token" in columns and "id" in columns:
                columns.remove("id")
            widths = [max(len(c), *(len(_cell(r.get(c))) for r in rows)) for c in columns]
            print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
                  .rstrip(), file=out)
            for r in rows:
                print("  ".join(_cell(r.get(c)).ljust(w)
                                for c, w in zip(columns, widths, strict=True)).rstrip(),
                      file=out)
        else:
            print("(none)", file=out)
        if data.get("next_cursor"):
            print(f"more: --cursor {data['next_cursor']}", file=out)
        return
    if isinstance(data, dict):
        width = max((len(k) for k in data), default=0)
        for k, v in data.items():
            if isinstance(v, list) and v and isinstance(v[0], dict):
                print(f"{k}:", file=out)
                _print_human({"data": v}, out)
            else:
                print(f"{k.ljust(width)}  {_cell(v)}", file=out)
        return
    print(_cell(data), file=out)
