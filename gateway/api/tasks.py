"""Recovering an endpoint: requeue its failed deliveries, replay the events it missed, as
background tasks (:mod:`gateway.tasks`) the caller follows with ``GET /v1/tasks/{id}``."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from gateway import appkeys
from gateway.api.http import PAGE, answer, app_id, page_answer, page_args, read
from gateway.api.models import TaskWindow
from gateway.api.routing import Route
from gateway.tasks import window
from gateway_client.models import Task, TaskKind, TaskPage


async def _start(request: web.Request, kind: TaskKind) -> web.Response:
    body = await read(request, TaskWindow)
    since, until = window(kind, body.since, body.until, datetime.now(UTC),
                          retention_days=request.app[appkeys.SETTINGS].retention_days)
    task = await request.app[appkeys.TASKS].create(
        app_id(request), kind, request.match_info["endpoint_id"], since, until)
    return answer(Task, task, 202)


async def recover_endpoint(request: web.Request) -> web.Response:
    return await _start(request, TaskKind.RECOVER)


async def replay_endpoint(request: web.Request) -> web.Response:
    return await _start(request, TaskKind.REPLAY)


async def get_task(request: web.Request) -> web.Response:
    return answer(Task, await request.app[appkeys.TASKS].get(
        app_id(request), request.match_info["task_id"]))


async def list_tasks(request: web.Request) -> web.Response:
    cursor, limit = page_args(request)
    return page_answer(TaskPage, await request.app[appkeys.TASKS].list(
        app_id(request), cursor, limit))


ROUTES = [
    Route("POST", "/v1/endpoints/{endpoint_id}/recover", recover_endpoint,
          "Requeue the endpoint's failed deliveries of a window (a background task)",
          "endpoints", body=TaskWindow, ok=(202, Task), description=(
              "Every failed delivery of this endpoint whose event was created in [since, "
              "until) goes back in the queue as a manual retry does: due now, at the start "
              "of the retry schedule. until defaults to now; since may not be in the "
              "future. Runs in the background, in batches; follow it with "
              "GET /v1/tasks/{id}. On a disabled endpoint the requeued deliveries wait "
              "until it is enabled.")),
    Route("POST", "/v1/endpoints/{endpoint_id}/replay", replay_endpoint,
          "Send the endpoint the events of a window it has no delivery for (a background "
          "task)", "endpoints", body=TaskWindow, ok=(202, Task), description=(
              "For every event created in [since, until) that the endpoint's event types "
              "take and that the endpoint has no delivery for (it was disabled, or did not "
              "exist yet), a new delivery. Running it again sends nothing twice. until "
              "defaults to now; since may not be in the future, and moves up to "
              "GATEWAY_RETENTION_DAYS ago at most. Runs in the background, in batches; "
              "follow it with GET /v1/tasks/{id}. On a disabled endpoint the new "
              "deliveries wait until it is enabled.")),
    Route("GET", "/v1/tasks", list_tasks, "List background tasks", "tasks",
          ok=(200, TaskPage), query=PAGE),
    Route("GET", "/v1/tasks/{task_id}", get_task, "A background task and its progress",
          "tasks", ok=(200, Task)),
]
