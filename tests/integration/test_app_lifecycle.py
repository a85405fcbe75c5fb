"""App lifecycle through the real server: deleting an app refuses its keys and user tokens
at once, stops its work and removes every row it owned in the background, in batches,
resuming after a restart; rotating an app's key keeps the previous one working for its
grace period only."""

from __future__ import annotations

import asyncio
import math
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import ec

from gateway import appkeys, dashboard
from gateway.app import create_app
from gateway.auth import Authenticator
from gateway.cleanup import AppCleanup
from gateway.config import Settings
from gateway.outcomes import OutcomeStream
from gateway.sandbox import pem_private
from gateway.store.postgres import Cleaner
from gateway.store.queue import AttemptResult
from gateway_client.models import AttemptOutcome, DeliveryStatus, iso
from tests.push_support import android_token, ios_token
from tests.support import ADMIN_KEY, Api, Receiver, eventually


async def new_app(api: Api, name: str) -> tuple[str, str]:
    """A new app: its API key and its id."""
    status, body = await api.call("POST", "/v1/apps", ADMIN_KEY, {"name": name})
    assert status == 201, body
    return str(body["api_key"]), str(body["id"])


async def user_token(api: Api, key: str, user_id: str = "alice") -> str:
    status, body = await api.call("POST", "/v1/user-tokens", key, {"user_id": user_id})
    assert status == 201, body
    return str(body["token"])


async def push(api: Api, key: str) -> None:
    """An event pushed to alice's devices too."""
    status, body = await api.call("POST", "/v1/events", key, {
        "type": "chat.message", "payload": {}, "user_ids": ["alice"],
        "notification": {"title": "Hi", "body": "there"}})
    assert status == 202, body


async def caching(client: TestClient[Any, Any]) -> None:
    """Wait until the process hears app changes, so verified keys are cached."""
    auth: Authenticator = client.app[appkeys.AUTH]

    async def on() -> bool:
        return auth.caching
    await eventually(on)


async def sign_in(api: Api, key: str) -> str:
    """A dashboard session cookie for ``key``."""
    async with api.session.post("/dashboard/login", data={"key": key},
                                allow_redirects=False) as resp:
        assert resp.status == 303
        found = re.search(rf"{dashboard.SESSION_COOKIE}=([^;]+)", resp.headers["Set-Cookie"])
    assert found
    api.session.session.cookie_jar.clear()
    return found[1]


async def dashboard_get(api: Api, path: str, cookie: str) -> tuple[int, str]:
    async with api.session.get(path, headers={"Cookie": f"{dashboard.SESSION_COOKIE}={cookie}"},
                               allow_redirects=False) as resp:
        return resp.status, resp.headers.get("Location", "") or await resp.text()


async def rows_of(dsn: str, app_id: str, delivery_ids: list[str]) -> dict[str, int]:
    """The app's rows in every table that names an app (its own row under ``apps``), and
    the attempts of ``delivery_ids``."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = [r["table_name"] for r in await conn.fetch(  # not the day partitions
            "SELECT DISTINCT c.table_name FROM information_schema.columns c"
            " JOIN pg_class t ON t.relname = c.table_name"
            " WHERE c.table_schema = 'public' AND c.column_name = 'app_id'"
            " AND NOT t.relispartition")]
        counts = {t: int(await conn.fetchval(f"SELECT count(*) FROM {t} WHERE app_id = $1",
                                             app_id)) for t in tables}
        counts["apps"] = int(await conn.fetchval("SELECT count(*) FROM apps WHERE id = $1",
                                                 app_id))
        counts["attempts"] = int(await conn.fetchval(
            "SELECT count(*) FROM attempts WHERE delivery_id = ANY($1::text[])",
            delivery_ids))
        return counts
    finally:
        await conn.close()


async def delivery_ids(dsn: str, app_id: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r["id"] for r in await conn.fetch(
            "SELECT id FROM deliveries WHERE app_id = $1", app_id)]
    finally:
        await conn.close()


async def sql(dsn: str, statement: str, *args: Any) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement, *args)
    finally:
        await conn.close()


async def fill(api: Api, key: str, app_id: str, receiver: Receiver, dsn: str) -> None:
    """Something in every table an app owns: endpoints, events with deliveries (attempted,
    where a dispatcher runs), idempotency keys, devices and a push fan-out, push
    credentials, a rate window, a dashboard session, an event type, an operational
    webhook, a task, a live tail."""
    # A live tail's row left by a process that stopped without a word (it runs out by
    # itself, or goes with the app).
    await sql(dsn, "INSERT INTO live_tails (process_id, app_id, expires_at)"
                   " VALUES ($1, $2, now() + interval '1 hour')", uuid.uuid4(), app_id)
    # First, so it is told of every failure below.
    status, body = await api.call("PUT", "/v1/operational-webhook", key,
                                  {"url": receiver.url(f"/{app_id}/ops")})
    assert status == 200, body
    await api.new_endpoint(key, receiver.url(f"/{app_id}"))
    other = await api.new_endpoint(key, receiver.url(f"/{app_id}/other"),
                                   event_types=["other.*"])
    for n in range(7):
        await api.emit(key, payload={"n": n}, headers={"Idempotency-Key": f"k-{n}"})
    token = await user_token(api, key)
    for n in range(4):
        status, body = await api.call("POST", "/v1/devices", token,
                                      {"platform": "android", "token": android_token(n)})
        assert status == 201, body
    await push(api, key)
    status, body = await api.call("PUT", f"/v1/apps/{app_id}/push/apns", key, {
        "key_p8": pem_private(ec.generate_private_key(ec.SECP256R1())),
        "key_id": "ABC123DEFG", "team_id": "DEF123GHIJ", "topic": "com.example.app"})
    assert status == 200, body
    status, body = await api.call("PATCH", f"/v1/apps/{app_id}", ADMIN_KEY,
                                  {"rate_limit": 1000})
    assert status == 200, body
    await sign_in(api, key)
    status, body = await api.call("POST", "/v1/event-types", key,
                                  {"name": "order.created", "schema": {"type": "object"}})
    assert status == 201, body
    since = iso(datetime.now(UTC) - timedelta(hours=1))
    status, body = await api.call("POST", f"/v1/endpoints/{other['id']}/replay", key,
                                  {"since": since})
    assert status == 202, body


# --- deleting: what stops at once ----------------------------------------------------

async def test_a_deleted_apps_key_and_user_tokens_are_refused_at_once_and_it_is_gone(
        aiohttp_client: Any, dsn: str, settings: Settings) -> None:
    client = await aiohttp_client(create_app(settings, dsn))
    api = Api(client)
    await caching(client)
    key, app_id = await new_app(api, "doomed")
    other_key, other_id = await new_app(api, "kept")
    token = await user_token(api, key)
    # Both are verified, and so cached, before the deletion.
    assert (await api.call("GET", "/v1/endpoints", key))[0] == 200
    assert (await api.call("GET", "/v1/devices", token))[0] == 200

    status, body = await api.call("DELETE", f"/v1/apps/{app_id}", ADMIN_KEY)
    assert status == 204 and body is None

    assert (await api.call("GET", "/v1/endpoints", key))[0] == 401
    assert (await api.call("POST", "/v1/events", key, {"type": "a", "payload": {}}))[0] == 401
    assert (await api.call("GET", "/v1/devices", token))[0] == 401
    status, body = await api.call("GET", f"/v1/apps/{app_id}", ADMIN_KEY)
    assert status == 404 and body["error"]["code"] == "not_found"
    _, listed = await api.call("GET", "/v1/apps", ADMIN_KEY, params={"limit": "250"})
    assert [a["id"] for a in listed["data"]] == [other_id]
    assert (await api.call("DELETE", f"/v1/apps/{app_id}", ADMIN_KEY))[0] == 404
    assert (await api.call("POST", f"/v1/apps/{app_id}/keys/rotate", ADMIN_KEY))[0] == 404
    assert (await api.call("PATCH", f"/v1/apps/{app_id}", ADMIN_KEY,
                           {"rate_limit": 5}))[0] == 404
    assert (await api.call("GET", f"/v1/apps/{app_id}/push", ADMIN_KEY))[0] == 404
    async with api.session.post("/dashboard/login", data={"key": key},
                                allow_redirects=False) as resp:
        assert resp.status == 401
    # The other app carries on.
    assert (await api.call("GET", "/v1/endpoints", other_key))[0] == 200
    await api.emit(other_key)


async def test_only_the_operator_deletes_apps(aiohttp_client: Any, dsn: str,
                                              settings: Settings) -> None:
    api = Api(await aiohttp_client(create_app(settings, dsn, dispatcher=False)))
    key, app_id = await new_app(api, "self")
    token = await user_token(api, key)
    for caller in (key, token):
        status, body = await api.call("DELETE", f"/v1/apps/{app_id}", caller)
        assert status == 403 and body["error"]["code"] == "forbidden"
    assert (await api.call("DELETE", "/v1/apps/app_nope", ADMIN_KEY))[0] == 404
    assert (await api.call("GET", f"/v1/apps/{app_id}", key))[0] == 200


async def test_another_process_refuses_a_deleted_apps_key_once_it_hears_of_it(
        aiohttp_client: Any, dsn: str, settings: Settings) -> None:
    here = await aiohttp_client(create_app(settings, dsn, dispatcher=False))
    there = await aiohttp_client(create_app(settings, dsn, dispatcher=False))
    await caching(there)
    api_here, api_there = Api(here), Api(there)
    key, app_id = await new_app(api_here, "doomed")
    token = await user_token(api_here, key)
    assert (await api_there.call("GET", "/v1/endpoints", key))[0] == 200  # cached there
    assert (await api_there.call("GET", "/v1/devices", token))[0] == 200

    assert (await api_here.call("DELETE", f"/v1/apps/{app_id}", ADMIN_KEY))[0] == 204

    async def refused_there() -> bool:
        return (await api_there.call("GET", "/v1/endpoints", key))[0] == 401 and \
            (await api_there.call("GET", "/v1/devices", token))[0] == 401
    await eventually(refused_there)


async def test_a_process_that_cannot_hear_app_changes_caches_no_key(
        aiohttp_client: Any, dsn: str, settings: Settings) -> None:
    client = await aiohttp_client(create_app(settings, dsn, dispatcher=False))
    api = Api(client)
    await caching(client)
    key, app_id = await new_app(api, "doomed")
    auth = client.app[appkeys.AUTH]
    auth.hearing(False)  # as when its LISTEN connection is lost
    assert (await api.call("GET", "/v1/endpoints", key))[0] == 200
    # Deleted behind its back, with no notification at all.
    await sql(dsn, "UPDATE apps SET deleted_at = now() WHERE id = $1", app_id)
    assert (await api.call("GET", "/v1/endpoints", key))[0] == 401


async def test_a_deleted_apps_dashboard_sessions_end_and_the_operator_no_longer_sees_it(
        aiohttp_client: Any, dsn: str, settings: Settings) -> None:
    api = Api(await aiohttp_client(create_app(settings, dsn, dispatcher=False)))
    key, app_id = await new_app(api, "doomed")
    _, other_id = await new_app(api, "kept")
    own = await sign_in(api, key)
    operator = await sign_in(api, ADMIN_KEY)
    assert (await dashboard_get(api, f"/dashboard/apps/{app_id}/events", own))[0] == 200
    _, apps_page = await dashboard_get(api, "/dashboard/apps", operator)
    assert app_id in apps_page and other_id in apps_page

    assert (await api.call("DELETE", f"/v1/apps/{app_id}", ADMIN_KEY))[0] == 204

    assert await dashboard_get(api, f"/dashboard/apps/{app_id}/events", own) == \
        (303, "/dashboard/login")
    status, apps_page = await dashboard_get(api, "/dashboard/apps", operator)
    assert status == 200 and app_id not in apps_page and other_id in apps_page
    assert (await dashboard_get(api, f"/dashboard/apps/{app_id}/events", operator))[0] == 404


async def test_a_deleted_apps_pending_deliveries_and_fan_outs_are_never_taken(
        aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver) -> None:
    # Written with no dispatcher running, so everything is still pending at the deletion.
    api_client = await aiohttp_client(create_app(settings, dsn, dispatcher=False))
    api = Api(api_client)
    apps = {}
    for name in ("doomed", "kept"):
        key, app_id = await new_app(api, name)
        apps[name] = app_id
        await api.new_endpoint(key, receiver.url(f"/{name}"))
        token = await user_token(api, key)
        status, _ = await api.call("POST", "/v1/devices", token,
                                   {"platform": "android", "token": android_token(1)})
        assert status == 201
        await push(api, key)
        await api.emit(key)
    assert (await api.call("DELETE", f"/v1/apps/{apps['doomed']}", ADMIN_KEY))[0] == 204

    queue = api_client.app[appkeys.QUEUE]
    while await queue.expand(100) is not None:
        pass
    conn = await asyncpg.connect(dsn)
    try:
        pushes = {r["app_id"]: r["n"] for r in await conn.fetch(
            "SELECT app_id, count(*) AS n FROM deliveries WHERE kind <> 'webhook' "
            "GROUP BY app_id")}
    finally:
        await conn.close()
    assert pushes == {apps["kept"]: 1}
    lease = uuid.uuid4()
    claimed = await queue.claim(100, 30.0, lease)
    assert {job.delivery.app_id for job in claimed} == {apps["kept"]} and len(claimed) == 3
    await queue.release([lease])

    # A dispatcher now sends the kept app's webhook, and never the deleted app's.
    await aiohttp_client(create_app(settings, dsn))
    await receiver.wait_for(1, "/kept")
    assert receiver.on("/doomed") == []


async def test_a_deleted_apps_sandbox_inbox_identity_and_provider_connections_go(
        aiohttp_client: Any, dsn: str, settings: Settings) -> None:
    client = await aiohttp_client(create_app(settings, dsn, sandbox=True))
    api = Api(client)
    sandbox = client.app[appkeys.SANDBOX]
    keys, apps = {}, {}
    for name in ("doomed", "kept"):
        keys[name], apps[name] = await new_app(api, name)
        token = await user_token(api, keys[name])
        for platform, device in (("ios", ios_token(1)), ("android", android_token(1))):
            status, body = await api.call("POST", "/v1/devices", token,
                                          {"platform": platform, "token": device})
            assert status == 201, body
        await push(api, keys[name])

    async def inbox(name: str) -> int:
        _, body = await api.call("GET", "/v1/sandbox/pushes", keys[name])
        return len(body["data"])

    async def both_arrived() -> bool:
        return await inbox("doomed") == 2 and await inbox("kept") == 2
    await eventually(both_arrived)
    fcm, apns = sandbox.credentials_for(apps["doomed"])
    doomed_senders = {fcm["client_email"], apns["key_id"]}
    connections = sandbox.apns.open_connections  # each app has its own to APNs
    assert connections >= 2

    assert (await api.call("DELETE", f"/v1/apps/{apps['doomed']}", ADMIN_KEY))[0] == 204

    async def forgotten() -> bool:
        received = [*sandbox.fcm.received, *sandbox.apns.received]
        return not any(p.sender in doomed_senders for p in received) and \
            sandbox.apns.open_connections < connections
    await eventually(forgotten)
    # The other app's inbox and its own connection are untouched, and it pushes on.
    assert await inbox("kept") == 2
    await push(api, keys["kept"])

    async def kept_pushes_on() -> bool:
        return await inbox("kept") == 4
    await eventually(kept_pushes_on)


async def test_a_deleted_apps_live_tail_ends(aiohttp_client: Any, dsn: str,
                                             settings: Settings) -> None:
    client = await aiohttp_client(create_app(settings, dsn, dispatcher=False))
    api = Api(client)
    key, app_id = await new_app(api, "doomed")
    stream: OutcomeStream = client.app[appkeys.OUTCOMES]
    async with client.get("/v1/deliveries/stream",
                          headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status == 200

        async def open_() -> bool:
            return stream.subscriber_count() == 1
        await eventually(open_)
        assert (await api.call("DELETE", f"/v1/apps/{app_id}", ADMIN_KEY))[0] == 204
        async with asyncio.timeout(10):
            await resp.read()  # returns once the stream has ended
    assert stream.subscriber_count() == 0


# --- deleting: the cleanup ---------------------------------------------------------------

async def test_the_cleanup_covers_every_table_that_refers_to_an_app(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        # Tables, not their day partitions (the cleanup deletes through the parent).
        naming = {r["table_name"] for r in await conn.fetch(
            "SELECT c.table_name FROM information_schema.columns c"
            " JOIN pg_class t ON t.relname = c.table_name"
            " WHERE c.table_schema = 'public' AND c.column_name = 'app_id'"
            " AND NOT t.relispartition")}
        referring = {r["table"] for r in await conn.fetch(
            "SELECT conrelid::regclass::text AS table FROM pg_constraint "
            "WHERE contype = 'f' AND confrelid = 'apps'::regclass")}
    finally:
        await conn.close()
    # Attempts go with their deliveries (the deliveries step deletes both).
    assert naming | referring <= set(Cleaner.STEPS) | {"attempts"}


async def test_the_cleanup_removes_every_row_of_a_deleted_app_in_batches_and_no_other(
        aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver) -> None:
    full = await aiohttp_client(create_app(settings, dsn))
    api = Api(full)
    apps = {}
    for name in ("doomed", "kept"):
        key, app_id = await new_app(api, name)
        apps[name] = app_id
        await fill(api, key, app_id, receiver, dsn)

    async def settled() -> bool:
        # Each app: 8 webhooks delivered, 4 pushes failed (no FCM credentials).
        conn = await asyncpg.connect(dsn)
        try:
            # (Besides: each app's operational webhook is told of its 4 failed pushes.)
            return bool(await conn.fetchval(
                "SELECT count(*) FILTER (WHERE kind <> 'operational') = 24"
                " AND count(*) FILTER (WHERE status = 'pending') = 0 FROM deliveries")
                and await conn.fetchval(
                    "SELECT count(*) = 24 FROM attempts WHERE delivery_id IN"
                    " (SELECT id FROM deliveries WHERE kind <> 'operational')"))
        finally:
            await conn.close()
    await eventually(settled, timeout_s=20)
    ids = {name: await delivery_ids(dsn, app_id) for name, app_id in apps.items()}
    before = {name: await rows_of(dsn, app_id, ids[name]) for name, app_id in apps.items()}
    assert before["doomed"] == before["kept"]
    assert all(n > 0 for table, n in before["doomed"].items()
               if table != "dashboard_sessions"), before["doomed"]
    await full.close()  # its own cleanup is not to run: the test runs one, with small batches

    api_only = await aiohttp_client(create_app(settings, dsn, dispatcher=False))
    assert (await Api(api_only).call("DELETE", f"/v1/apps/{apps['doomed']}",
                                     ADMIN_KEY))[0] == 204
    cleanup = AppCleanup(api_only.app[appkeys.STORE], batch=3, pause_s=0, settle_s=0)
    cleaned = await cleanup.run_once()

    assert cleaned.apps == [apps["doomed"]] and cleaned.left == 0
    doomed = before["doomed"]
    assert {t: n for t, n in cleaned.rows.items() if not t.startswith("notices:")} \
        == {t: n for t, n in doomed.items() if n and t not in ("apps", "dashboard_sessions")}
    # Its operational webhook's notices (of the 4 failed pushes) went too.
    assert cleaned.rows["notices:deliveries"] == cleaned.rows["notices:events"] == 4
    assert cleaned.batches >= sum(math.ceil(n / 3) for t, n in doomed.items()
                                  if t not in ("apps", "attempts", "dashboard_sessions"))
    assert set((await rows_of(dsn, apps["doomed"], ids["doomed"])).values()) == {0}
    assert await rows_of(dsn, apps["kept"], ids["kept"]) == before["kept"]
    assert (await cleanup.run_once()).apps == []


async def test_other_apps_ingest_and_deliveries_carry_on_between_the_cleanups_batches(
        aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver,
        monkeypatch: Any) -> None:
    client = await aiohttp_client(create_app(settings, dsn))
    await client.app[appkeys.CLEANUP].stop()  # the test runs the cleanup itself
    api = Api(client)
    doomed_key, doomed = await new_app(api, "doomed")
    kept_key, kept = await new_app(api, "kept")
    await api.new_endpoint(doomed_key, receiver.url("/doomed"))
    await api.new_endpoint(kept_key, receiver.url("/kept"))
    for n in range(12):
        await api.emit(doomed_key, payload={"n": n}, headers={"Idempotency-Key": f"k-{n}"})
    await receiver.wait_for(12, "/doomed")
    assert (await api.call("DELETE", f"/v1/apps/{doomed}", ADMIN_KEY))[0] == 204

    # The cleanup stops after its first batch until the other app has emitted and been
    # delivered to: nothing the cleanup did or holds stands in the way.
    first_batch_done, other_app_served = asyncio.Event(), asyncio.Event()
    remove = Cleaner.remove

    async def remove_then_wait(self: Cleaner, table: str, app_id: str,
                               batch: int) -> dict[str, int]:
        removed = await remove(self, table, app_id, batch)
        if not first_batch_done.is_set():
            first_batch_done.set()
            await other_app_served.wait()
        return removed
    monkeypatch.setattr(Cleaner, "remove", remove_then_wait)
    cleanup = AppCleanup(client.app[appkeys.STORE], batch=5, pause_s=0, settle_s=0)
    running = asyncio.create_task(cleanup.run_once())
    await first_batch_done.wait()
    assert not running.done()
    for n in range(10):
        await api.emit(kept_key, payload={"n": n}, headers={"Idempotency-Key": f"k-{n}"})
    await receiver.wait_for(10, "/kept")
    other_app_served.set()
    cleaned = await running

    assert cleaned.apps == [doomed] and cleaned.rows["deliveries"] == 12
    ids = await delivery_ids(dsn, kept)
    assert len(ids) == 10
    left = await rows_of(dsn, kept, ids)
    assert (left["events"], left["deliveries"], left["attempts"],
            left["idempotency_keys"]) == (10, 10, 10, 10)


async def test_the_cleanup_resumes_after_a_restart(
        aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver) -> None:
    # An API-only process deletes the app; nothing there cleans up, and then it stops.
    api_only = await aiohttp_client(create_app(settings, dsn, dispatcher=False))
    api = Api(api_only)
    key, app_id = await new_app(api, "doomed")
    await fill(api, key, app_id, receiver, dsn)
    ids = await delivery_ids(dsn, app_id)
    assert (await api.call("DELETE", f"/v1/apps/{app_id}", ADMIN_KEY))[0] == 204
    left = await rows_of(dsn, app_id, ids)
    assert left["deliveries"] == 8 and left["events"] == 8 and left["apps"] == 1
    await api_only.close()
    # Long enough ago for the app's own row to go too.
    await sql(dsn, "UPDATE apps SET deleted_at = now() - interval '1 hour' WHERE id = $1",
              app_id)

    await aiohttp_client(create_app(settings, dsn))

    async def gone() -> bool:
        return set((await rows_of(dsn, app_id, ids)).values()) == {0}
    await eventually(gone, timeout_s=20)


async def test_making_day_partitions_and_cleaning_up_deleted_apps_never_hold_each_other_up(
        aiohttp_client: Any, dsn: str, settings: Settings) -> None:
    client = await aiohttp_client(create_app(settings, dsn, dispatcher=False))
    store = client.app[appkeys.STORE]
    conn = await asyncpg.connect(dsn)
    try:
        # Another process making day partitions holds its lock until its transaction ends.
        async with conn.transaction():
            await conn.fetchval("SELECT gateway_make_partitions(current_date, current_date)")
            assert (await AppCleanup(store, pause_s=0).run_once()).ran
        # A cleanup pass under way here; the other process makes partitions meanwhile (a
        # wait on the cleanup's lock would end in an error, not a pass).
        async with store.cleaning() as cleaner:
            assert cleaner is not None
            await conn.execute("SET lock_timeout = '10s'")
            await conn.fetchval("SELECT gateway_make_partitions(current_date, current_date)")
    finally:
        await conn.close()


async def one_pending_delivery(aiohttp_client: Any, dsn: str, settings: Settings,
                               receiver: Receiver) -> tuple[TestClient[Any, Any], Api, str]:
    """A gateway with no dispatcher and an app "doomed" whose one endpoint has one
    pending delivery; the client, its API and the app's id."""
    client = await aiohttp_client(create_app(settings, dsn, dispatcher=False))
    api = Api(client)
    key, app_id = await new_app(api, "doomed")
    await api.new_endpoint(key, receiver.url())
    await api.emit(key)
    return client, api, app_id


async def test_the_cleanup_waits_for_a_delivery_being_sent_and_takes_it_after_its_attempt(
        aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver) -> None:
    client, api, app_id = await one_pending_delivery(aiohttp_client, dsn, settings, receiver)
    queue = client.app[appkeys.QUEUE]
    lease = uuid.uuid4()
    [job] = await queue.claim(10, 60.0, lease)  # a dispatcher is sending it
    assert (await api.call("DELETE", f"/v1/apps/{app_id}", ADMIN_KEY))[0] == 204
    cleanup = AppCleanup(client.app[appkeys.STORE], batch=3, pause_s=0, settle_s=0)

    first = await cleanup.run_once()
    assert first.apps == [] and first.left == 1
    held = await rows_of(dsn, app_id, [job.delivery.delivery_id])
    assert (held["deliveries"], held["events"], held["endpoints"], held["apps"]) == (1, 1, 1, 1)

    now = datetime.now(UTC)
    await queue.complete([AttemptResult(
        job.delivery.delivery_id, app_id, lease, DeliveryStatus.SUCCEEDED, None, 1, now, 12,
        AttemptOutcome.DELIVERED, 200, "ok", None)])
    second = await cleanup.run_once()
    assert second.apps == [app_id] and second.rows["attempts"] == 1
    assert set((await rows_of(dsn, app_id, [job.delivery.delivery_id])).values()) == {0}


async def test_the_cleanup_takes_a_parked_delivery_that_kept_a_lapsed_claimers_lease(
        aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver) -> None:
    """A claimer's lease lapsed (it died), and the next claim parked the delivery behind
    its endpoint's open circuit: it keeps that lease, due at 'infinity', sent by no one.
    The cleanup takes it like any other."""
    client, api, app_id = await one_pending_delivery(aiohttp_client, dsn, settings, receiver)
    queue = client.app[appkeys.QUEUE]
    [job] = await queue.claim(10, 0.2, uuid.uuid4())
    await asyncio.sleep(0.3)  # the claimer is gone; its lease lapses
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE endpoints SET circuit_open_until = now() + "
                           "interval '1 hour' WHERE app_id = $1", app_id)
        assert await queue.claim(10, 60.0, uuid.uuid4()) == []  # it parks the delivery
        parked = await conn.fetchrow(
            "SELECT lease_id, next_attempt_at = 'infinity' AS parked FROM deliveries "
            "WHERE id = $1", job.delivery.delivery_id)
    finally:
        await conn.close()
    assert parked is not None and parked["parked"] and parked["lease_id"] == job.lease_id
    assert (await api.call("DELETE", f"/v1/apps/{app_id}", ADMIN_KEY))[0] == 204
    cleaned = await AppCleanup(client.app[appkeys.STORE], pause_s=0, settle_s=0).run_once()
    assert cleaned.apps == [app_id] and cleaned.rows["deliveries"] == 1
    assert set((await rows_of(dsn, app_id, [job.delivery.delivery_id])).values()) == {0}


async def test_the_app_row_stays_until_its_deletion_settles(
        aiohttp_client: Any, dsn: str, settings: Settings) -> None:
    client = await aiohttp_client(create_app(settings, dsn, dispatcher=False))
    api = Api(client)
    key, app_id = await new_app(api, "doomed")
    await api.emit(key)
    assert (await api.call("DELETE", f"/v1/apps/{app_id}", ADMIN_KEY))[0] == 204
    cleanup = AppCleanup(client.app[appkeys.STORE], pause_s=0, settle_s=3600)
    cleaned = await cleanup.run_once()
    assert cleaned.rows == {"events": 1} and cleaned.apps == [] and cleaned.left == 1
    assert (await rows_of(dsn, app_id, []))["apps"] == 1
    # Still deleted for every caller meanwhile.
    assert (await api.call("GET", f"/v1/apps/{app_id}", ADMIN_KEY))[0] == 404


# --- rotating the key --------------------------------------------------------------------

async def test_a_rotated_key_works_at_once_and_the_old_one_until_its_grace_ends(
        aiohttp_client: Any, dsn: str, settings: Settings) -> None:
    client = await aiohttp_client(create_app(settings, dsn, dispatcher=False))
    api = Api(client)
    await caching(client)
    old, app_id = await new_app(api, "rotating")
    token = await user_token(api, old)
    assert (await api.call("GET", "/v1/endpoints", old))[0] == 200  # cached

    status, rotated = await api.call("POST", f"/v1/apps/{app_id}/keys/rotate", ADMIN_KEY,
                                     {"grace_s": 3600})
    assert status == 200 and set(rotated) == {"api_key", "previous_key_expires_at"}
    new = rotated["api_key"]
    assert new.startswith("gk_") and new != old
    ends = datetime.fromisoformat(rotated["previous_key_expires_at"])
    assert timedelta(minutes=59) < ends - datetime.now(UTC) <= timedelta(hours=1)
    for key in (new, old):
        status, body = await api.call("GET", f"/v1/apps/{app_id}", key)
        assert status == 200 and body["id"] == app_id
    assert (await api.call("GET", "/v1/devices", token))[0] == 200  # user tokens live on

    # When the grace is over, the old key is refused, though this process cached it.
    auth = client.app[appkeys.AUTH]
    auth.clock = lambda: datetime.now(UTC) + timedelta(hours=1, seconds=1)
    assert (await api.call("GET", "/v1/endpoints", old))[0] == 401
    assert (await api.call("GET", "/v1/endpoints", old))[0] == 401  # not cached again
    assert (await api.call("GET", "/v1/endpoints", new))[0] == 200


async def test_dashboard_sessions_opened_with_a_replaced_key_end_with_it(
        aiohttp_client: Any, dsn: str, settings: Settings) -> None:
    api = Api(await aiohttp_client(create_app(settings, dsn, dispatcher=False)))
    old, app_id = await new_app(api, "rotating")
    page = f"/dashboard/apps/{app_id}/events"
    before = await sign_in(api, old)
    path = f"/v1/apps/{app_id}/keys/rotate"
    _, rotated = await api.call("POST", path, ADMIN_KEY, {"grace_s": 600})
    grace_ends = datetime.fromisoformat(rotated["previous_key_expires_at"])
    # Opened with the old key during its grace: it lasts no longer than the key.
    async with api.session.post("/dashboard/login", data={"key": old},
                                allow_redirects=False) as resp:
        assert resp.status == 303
        max_age = int(resp.cookies[dashboard.SESSION_COOKIE]["max-age"])
        during = resp.cookies[dashboard.SESSION_COOKIE].value
    api.session.session.cookie_jar.clear()
    assert 0 < max_age <= 600
    conn = await asyncpg.connect(dsn)
    try:
        ends = await conn.fetch("SELECT expires_at FROM dashboard_sessions WHERE app_id = $1",
                                app_id)
    finally:
        await conn.close()
    assert len(ends) == 2 and all(r["expires_at"] <= grace_ends for r in ends)
    for cookie in (before, during):
        assert (await dashboard_get(api, page, cookie))[0] == 200

    # A rotation with no grace ends the old key now, and every session it opened.
    _, again = await api.call("POST", path, ADMIN_KEY, {"grace_s": 0})
    for cookie in (before, during):
        assert await dashboard_get(api, page, cookie) == (303, "/dashboard/login")
    assert (await dashboard_get(api, page, await sign_in(api, again["api_key"])))[0] == 200


async def test_rotating_without_a_body_gives_the_old_key_a_day(
        aiohttp_client: Any, dsn: str, settings: Settings) -> None:
    api = Api(await aiohttp_client(create_app(settings, dsn, dispatcher=False)))
    old, app_id = await new_app(api, "rotating")
    status, rotated = await api.call("POST", f"/v1/apps/{app_id}/keys/rotate", ADMIN_KEY)
    assert status == 200
    ends = datetime.fromisoformat(rotated["previous_key_expires_at"])
    assert timedelta(hours=23, minutes=59) < ends - datetime.now(UTC) <= timedelta(days=1)
    assert (await api.call("GET", "/v1/endpoints", old))[0] == 200


async def test_a_grace_of_0_ends_the_old_key_at_once_here_and_in_other_processes(
        aiohttp_client: Any, dsn: str, settings: Settings) -> None:
    here = await aiohttp_client(create_app(settings, dsn, dispatcher=False))
    there = await aiohttp_client(create_app(settings, dsn, dispatcher=False))
    await caching(here)
    await caching(there)
    api_here, api_there = Api(here), Api(there)
    old, app_id = await new_app(api_here, "rotating")
    for api in (api_here, api_there):
        assert (await api.call("GET", "/v1/endpoints", old))[0] == 200  # cached in both

    status, rotated = await api_here.call("POST", f"/v1/apps/{app_id}/keys/rotate", old,
                                          {"grace_s": 0})
    assert status == 200 and rotated["previous_key_expires_at"] is None

    assert (await api_here.call("GET", "/v1/endpoints", old))[0] == 401
    assert (await api_here.call("GET", "/v1/endpoints", rotated["api_key"]))[0] == 200

    async def refused_there() -> bool:
        return (await api_there.call("GET", "/v1/endpoints", old))[0] == 401
    await eventually(refused_there)


async def test_a_second_rotation_ends_the_older_previous_key_at_once(
        aiohttp_client: Any, dsn: str, settings: Settings) -> None:
    api = Api(await aiohttp_client(create_app(settings, dsn, dispatcher=False)))
    first, app_id = await new_app(api, "rotating")
    path = f"/v1/apps/{app_id}/keys/rotate"
    _, one = await api.call("POST", path, ADMIN_KEY, {"grace_s": 3600})
    _, two = await api.call("POST", path, one["api_key"], {"grace_s": 600})
    second, third = one["api_key"], two["api_key"]
    assert (await api.call("GET", "/v1/endpoints", first))[0] == 401
    assert (await api.call("GET", "/v1/endpoints", second))[0] == 200
    assert (await api.call("GET", "/v1/endpoints", third))[0] == 200
    ends = datetime.fromisoformat(two["previous_key_expires_at"])
    assert ends - datetime.now(UTC) <= timedelta(minutes=10)


async def test_an_app_rotates_its_own_key_but_no_other_apps_and_a_user_token_none(
        aiohttp_client: Any, dsn: str, settings: Settings) -> None:
    api = Api(await aiohttp_client(create_app(settings, dsn, dispatcher=False)))
    key, app_id = await new_app(api, "mine")
    other_key, other_id = await new_app(api, "theirs")
    token = await user_token(api, key)
    path = f"/v1/apps/{app_id}/keys/rotate"
    status, body = await api.call("POST", f"/v1/apps/{other_id}/keys/rotate", key)
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert (await api.call("POST", path, other_key))[0] == 403
    assert (await api.call("POST", path, token))[0] == 403
    assert (await api.call("GET", "/v1/endpoints", other_key))[0] == 200  # untouched
    for bad in ({"grace_s": -1}, {"grace_s": 30 * 86400 + 1}, {"grace_s": "60"},
                {"grace_s": 1.5}, {"grace": 60}):
        status, body = await api.call("POST", path, key, bad)
        assert status == 422 and body["error"]["code"] == "validation_error", bad
    assert (await api.call("GET", "/v1/endpoints", key))[0] == 200  # nothing rotated
    status, rotated = await api.call("POST", path, key, {"grace_s": 30 * 86400})
    assert status == 200
    assert (await api.call("GET", "/v1/endpoints", rotated["api_key"]))[0] == 200


async def test_the_api_description_documents_deleting_and_rotating(
        aiohttp_client: Any, dsn: str, settings: Settings) -> None:
    api = Api(await aiohttp_client(create_app(settings, dsn, dispatcher=False)))
    _, doc = await api.call("GET", "/openapi.json")
    delete = doc["paths"]["/v1/apps/{app_id}"]["delete"]
    assert delete["security"] == [{"operatorKey": []}] and "204" in delete["responses"]
    rotate = doc["paths"]["/v1/apps/{app_id}/keys/rotate"]["post"]
    assert rotate["requestBody"]["required"] is False
    assert {"200", "403", "404", "422"} <= set(rotate["responses"])
