"""Event type schemas: checked where they are written, compiled once per process and
applied to payloads at ingest.

A schema is JSON Schema Draft 2020-12, run by the ``jsonschema`` library. What could cost
the gateway more than the tenant's own requests is refused where the schema is written:

- more than :data:`MAX_SCHEMA_CHARS` of JSON or deeper than :data:`MAX_SCHEMA_DEPTH`;
- a ``$ref`` or ``$dynamicRef`` that does not resolve inside the schema itself. Nothing is
  ever fetched: every validator's registry refuses retrieval (jsonschema's default one
  would fetch remote ``$ref`` URLs over HTTP);
- a ``pattern`` or ``patternProperties`` regex RE2 cannot run. RE2 matches in linear time,
  so no payload can make a regex backtrack for minutes; ``unevaluatedProperties`` beside
  ``patternProperties`` is refused, since jsonschema would match those with Python's
  backtracking ``re``;
- a ``$schema`` other than Draft 2020-12's.

``format`` stays an annotation, as Draft 2020-12 has it by default: ``"format": "email"``
is not asserted.

Checking a payload is bounded too: each keyword evaluation is a step (an ``enum`` one per
value, ``uniqueItems`` one per item). A check runs on the event loop for up to
:data:`INLINE_STEPS`; one that needs more runs again on a worker thread, one at a time per
app, up to :data:`MAX_STEPS`, past which the payload is refused as too costly to check.

Ingest reads a type's schema once per process and cache period (:class:`EventTypeSchemas`),
one type at a time, within a bound on what a process keeps.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import re2
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError
from jsonschema.exceptions import ValidationError as SchemaViolation
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import DRAFT202012

from gateway.errors import ValidationError
from gateway.store.records import EventTypeSchema

T = TypeVar("T")

#: The longest schema, in characters of JSON.
MAX_SCHEMA_CHARS = 65_536
#: How deep a schema's JSON may nest.
MAX_SCHEMA_DEPTH = 32
#: Steps a payload check may take on the event loop (a few milliseconds).
INLINE_STEPS = 2_000
#: Steps a payload check may take at all (around a second, on a worker thread).
MAX_STEPS = 200_000
#: Violations listed in one refusal.
MAX_ERRORS = 20
#: How much of a violation's message is kept (it may quote the payload).
MAX_MESSAGE_CHARS = 300
DIALECTS = frozenset({"https://json-schema.org/draft/2020-12/schema",
                      "https://json-schema.org/draft/2020-12/schema#"})

#: Keywords whose value is one subschema, a list of them, or a map of names to them.
_ONE = ("additionalProperties", "contains", "contentSchema", "else", "if", "items", "not",
        "propertyNames", "then", "unevaluatedItems", "unevaluatedProperties")
_LIST = ("allOf", "anyOf", "oneOf", "prefixItems")
_MAP = ("$defs", "definitions", "dependentSchemas", "patternProperties", "properties")


class _TooCostly(Exception):
    """A payload check ran out of steps."""


class _Steps(threading.local):
    """Steps left to the check running on this thread (checks never interleave on one
    thread: they do not await)."""

    left = 0


_steps = _Steps()


def _charge(count: int) -> None:
    left = _steps.left - count
    if left < 0:
        raise _TooCostly
    _steps.left = left


# --- the validator ---------------------------------------------------------------------

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is the caller's answer, not a log line


@functools.lru_cache(maxsize=4096)
def _regex(pattern: str) -> Any:
    return re2.compile(pattern, _RE2_OPTIONS)


def _search(pattern: str, text: str) -> bool:
    return _regex(pattern).search(text) is not None


Keyword = Callable[[Any, Any, Any, Mapping[str, Any]], Iterator[SchemaViolation] | None]


def _counted(keyword: Keyword) -> Keyword:
    def counted(validator: Any, value: Any, instance: Any,
                schema: Mapping[str, Any]) -> Iterator[SchemaViolation] | None:
        _charge(1)
        return keyword(validator, value, instance, schema)
    return counted


def _pattern(validator: Any, pattern: str, instance: Any,
             schema: Mapping[str, Any]) -> Iterator[SchemaViolation]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield SchemaViolation(f"does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: Mapping[str, Any], instance: Any,
                        schema: Mapping[str, Any]) -> Iterator[SchemaViolation]:
    if not validator.is_type(instance, "object"):
        return
    _charge(len(patterns) * len(instance))
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, additional: Any, instance: Any,
                           schema: Mapping[str, Any]) -> Iterator[SchemaViolation]:
    if not validator.is_type(instance, "object"):
        return
    named = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    _charge(len(patterns) * len(instance))
    extras = [key for key in instance if key not in named
              and not any(_search(p, key) for p in patterns)]
    if validator.is_type(additional, "object"):
        for key in extras:
            yield from validator.descend(instance[key], additional, path=key)
    elif additional is False:
        for key in extras:
            yield SchemaViolation("is not allowed here (additionalProperties is false)",
                                  path=[key])


def _required(validator: Any, required: list[str], instance: Any,
              schema: Mapping[str, Any]) -> Iterator[SchemaViolation]:
    # The path names the missing property, as for every other field the API checks.
    if validator.is_type(instance, "object"):
        for name in required:
            if name not in instance:
                yield SchemaViolation("is a required property", path=[name])


def _unique_items(validator: Any, unique: bool, instance: Any,
                  schema: Mapping[str, Any]) -> Iterator[SchemaViolation]:
    # jsonschema compares every pair of objects; hashing keeps a long array linear.
    if not unique or not validator.is_type(instance, "array"):
        return
    _charge(len(instance))
    seen: set[Any] = set()
    for index, item in enumerate(instance):
        key = _canonical(item)
        if key in seen:
            yield SchemaViolation("repeats an earlier item (uniqueItems)", path=[index])
            return
        seen.add(key)


def _enum(validator: Any, values: list[Any], instance: Any,
          schema: Mapping[str, Any]) -> Iterator[SchemaViolation] | None:
    _charge(len(values))
    return _ENUM(validator, values, instance, schema)


def _canonical(value: Any) -> Any:
    """A hashable form equal for JSON-equal values: 1 and 1.0 alike, true and 1 not,
    objects whatever their key order."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, dict):
        return ("o", frozenset((k, _canonical(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("a", tuple(_canonical(v) for v in value))
    return ("v", value)


_BASE = Draft202012Validator.VALIDATORS
_ENUM: Keyword = _BASE["enum"]
#: Draft 2020-12 with every keyword counted, and the keywords that would match regexes
#: with Python's ``re`` or compare items pairwise replaced.
_Validator: Any = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator, {
        **{name: _counted(keyword) for name, keyword in _BASE.items()},
        "pattern": _counted(_pattern),
        "patternProperties": _counted(_pattern_properties),
        "additionalProperties": _counted(_additional_properties),
        "required": _counted(_required),
        "uniqueItems": _counted(_unique_items),
        "enum": _counted(_enum),
    })


def _never_retrieve(uri: str) -> Resource[Any]:
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]  # attrs fields, unseen by mypy


#: The one registry every schema is resolved in: it knows nothing and fetches nothing,
#: so a reference resolves inside its own schema or not at all.
REGISTRY: Registry[Any] = Registry(retrieve=_never_retrieve)  # type: ignore[call-arg]


# --- where a schema is written ---------------------------------------------------------

def _refused(path: list[str | int], message: str) -> ValidationError:
    where = ".".join(["schema", *(str(p) for p in path)])
    return ValidationError(f"Invalid field '{where}': {message}.",
                           details=[{"path": where, "message": message}])


def _depth(value: Any) -> int:
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1)
                         for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def check_schema(schema: dict[str, Any]) -> None:
    """Refuse (422, path ``schema...``) what :mod:`gateway.schemas` says a schema may not
    be (its size is bounded where the body is read, see :data:`MAX_SCHEMA_CHARS`)."""
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        raise _refused([], f"nests deeper than {MAX_SCHEMA_DEPTH} levels")
    dialect = schema.get("$schema")
    if dialect is not None and dialect not in DIALECTS:
        raise _refused(["$schema"], "only JSON Schema Draft 2020-12 is supported "
                       "(https://json-schema.org/draft/2020-12/schema)")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise _refused(list(exc.absolute_path), _short(exc.message)) from None
    root = DRAFT202012.create_resource(schema)
    _walk(schema, REGISTRY.resolver_with_root(root), [], {"patterns": False,
                                                        "unevaluated": None})
    _try(schema)


def _walk(node: Any, resolver: Any, path: list[str | int], seen: dict[str, Any]) -> None:
    """Every subschema: references resolve inside, regexes run in RE2."""
    if not isinstance(node, dict):
        return
    if isinstance(node.get("$id"), str):
        try:
            resolver = resolver.in_subresource(DRAFT202012.create_resource(node))
        except ValueError:  # not a URI reference ("http://[")
            raise _refused([*path, "$id"], "is not a URI reference") from None
    for keyword in ("$ref", "$dynamicRef"):
        ref = node.get(keyword)
        if isinstance(ref, str):
            try:
                resolver.lookup(ref)
            except (Unresolvable, ValueError, LookupError):
                raise _refused([*path, keyword], f"{ref[:200]!r} does not resolve inside "
                               "this schema; references to other documents are never "
                               "fetched") from None
    if isinstance(node.get("pattern"), str):
        _compiles(node["pattern"], [*path, "pattern"])
    patterns = node.get("patternProperties")
    if isinstance(patterns, dict) and patterns:
        for pattern in patterns:
            _compiles(pattern, [*path, "patternProperties", pattern])
        seen["patterns"] = True
    if "unevaluatedProperties" in node and seen["unevaluated"] is None:
        seen["unevaluated"] = [*path, "unevaluatedProperties"]
    if seen["patterns"] and seen["unevaluated"] is not None:
        raise _refused(seen["unevaluated"], "cannot be combined with patternProperties "
                       "(its regexes would run on a backtracking engine); list the "
                       "properties, or use additionalProperties")
    for keyword in _ONE:
        if keyword in node:
            _walk(node[keyword], resolver, [*path, keyword], seen)
    for keyword in _LIST:
        if isinstance(node.get(keyword), list):
            for index, child in enumerate(node[keyword]):
                _walk(child, resolver, [*path, keyword, index], seen)
    for keyword in _MAP:
        if isinstance(node.get(keyword), dict):
            for name, child in node[keyword].items():
                _walk(child, resolver, [*path, keyword, name], seen)


def _compiles(pattern: str, path: list[str | int]) -> None:
    try:
        _regex(pattern)
    except re2.error:
        raise _refused(path, "is not a regex RE2 runs (no backreferences or lookarounds)") \
            from None


def _try(schema: dict[str, Any]) -> None:
    """Run the schema once on a few trivial payloads: a ``$ref`` that loops without
    ever reaching into the payload shows here, not at ingest."""
    checker = _Validator(schema, registry=REGISTRY)
    _steps.left = MAX_STEPS
    try:
        samples: tuple[Any, ...] = ({}, [], "", 0, None)
        for sample in samples:
            for _ in checker.iter_errors(sample):
                pass
    except RecursionError:
        raise _refused([], "refers to itself without end (a $ref loop that never "
                       "reaches into the payload)") from None
    except _TooCostly:
        raise _refused([], "is too costly to check even against an empty payload") \
            from None


def _short(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else \
        message[:MAX_MESSAGE_CHARS] + "…"


# --- at ingest -------------------------------------------------------------------------

class PayloadSchema:
    """One event type's compiled schema."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self._validator = _Validator(schema, registry=REGISTRY)

    def problems(self, payload: Any, steps: int) -> list[dict[str, str]]:
        """What is wrong with ``payload``, as ``{"path", "message"}`` (path under
        ``payload``); raises :class:`_TooCostly` past ``steps``."""
        _steps.left = steps
        found: list[dict[str, str]] = []
        try:
            for error in self._validator.iter_errors(payload):
                found.append({"path": ".".join(["payload", *map(str, error.absolute_path)]),
                              "message": _short(error.message)})
                if len(found) >= MAX_ERRORS:
                    break
        except RecursionError:
            return [{"path": "payload", "message": "the event type's schema refers to "
                     "itself without end"}]
        except OverflowError:
            return [{"path": "payload", "message": "holds a number too large to check "
                     "against the event type's schema"}]
        except Unresolvable as exc:  # only a schema stored without check_schema
            return [{"path": "payload", "message": "the event type's schema refers to "
                     f"{_short(str(exc))}, which is not inside it (never fetched)"}]
        return found


def _refusal(found: list[dict[str, str]]) -> ValidationError:
    first = found[0]
    return ValidationError(
        f"The payload does not match the schema of its event type: '{first['path']}' "
        f"{first['message']}.", details=found)


_TOO_COSTLY = ("is too large or too complex to check against the event type's schema "
               f"(over {MAX_STEPS} steps)")


class _Turn:
    """One app's work on the worker: one piece at a time, the others waiting."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


# --- the per-process cache and payload checks ------------------------------------------

class SchemaSource(Protocol):
    """Where the cache reads a type's schema (the store)."""

    async def event_type_schema(self, app_id: str, name: str) -> EventTypeSchema | None: ...


@dataclass(frozen=True, slots=True)
class _Cached:
    schema: PayloadSchema | None
    #: What it counts against :attr:`EventTypeSchemas.max_chars`.
    chars: int
    expires_at: float


class EventTypeSchemas:
    """Event type schemas, compiled, each kept for ``ttl_s``, and the payload checks
    against them. Ingest reads a type's entry from PostgreSQL once per ``ttl_s`` and
    process, not per request. A change made through
    this process applies at once; one made through another process within ``ttl_s``.

    Types are read one at a time, as events of them arrive, so an event costs at most one
    schema's worth of reading and compiling, however large the app's catalog. What is
    kept is bounded by ``max_chars`` characters of schema JSON (a type without a schema
    counts :data:`ABSENT_CHARS`); past it, the types read longest ago make room.
    """

    #: What remembering a type without a schema counts, besides its app id and name.
    ABSENT_CHARS = 64

    def __init__(self, store: SchemaSource, ttl_s: float, *, max_chars: int = 8 << 20,
                 workers: int = 2, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self.ttl_s = ttl_s
        self.max_chars = max_chars
        self.clock = clock
        self._cached: dict[tuple[str, str], _Cached] = {}
        self._chars = 0
        self._reading: dict[tuple[str, str], asyncio.Task[_Cached]] = {}
        self._turns: dict[str, _Turn] = {}
        #: Where costly payload checks run, off the event loop.
        self.worker = ThreadPoolExecutor(max_workers=workers,
                                         thread_name_prefix="schema-check")

    @property
    def cached_chars(self) -> int:
        """What the kept types count against ``max_chars``."""
        return self._chars

    async def schema(self, app_id: str, event_type: str) -> PayloadSchema | None:
        """The schema events of this type must match (None: any payload), read at most
        once per ``ttl_s``, one query shared by whoever asks meanwhile."""
        key = (app_id, event_type)
        found = self._cached.get(key)
        if found is not None and found.expires_at > self.clock():
            return found.schema
        reading = self._reading.get(key)
        if reading is None:
            reading = asyncio.create_task(self._read(app_id, event_type),
                                          name="event-type-schema")
            self._reading[key] = reading
            reading.add_done_callback(functools.partial(self._read_done, key))
        return (await asyncio.shield(reading)).schema

    async def _read(self, app_id: str, event_type: str) -> _Cached:
        row = await self._store.event_type_schema(app_id, event_type)
        expires_at = self.clock() + self.ttl_s
        chars = len(app_id) + len(event_type) + self.ABSENT_CHARS
        if row is None:
            return _Cached(None, chars, expires_at)
        return _Cached(PayloadSchema(row.schema), chars + row.chars, expires_at)

    def _read_done(self, key: tuple[str, str], reading: asyncio.Task[_Cached]) -> None:
        failed = reading.cancelled() or reading.exception() is not None
        if self._reading.get(key) is not reading:
            return  # forgotten meanwhile: what it read may be older than the change
        del self._reading[key]
        if not failed:
            self._keep(key, reading.result())

    def _keep(self, key: tuple[str, str], entry: _Cached) -> None:
        self._drop(key)
        while self._cached and self._chars + entry.chars > self.max_chars:
            self._drop(next(iter(self._cached)))  # the one read longest ago
        if entry.chars <= self.max_chars:
            self._cached[key] = entry
            self._chars += entry.chars

    def _drop(self, key: tuple[str, str]) -> None:
        gone = self._cached.pop(key, None)
        if gone is not None:
            self._chars -= gone.chars

    def forget(self, app_id: str, event_type: str) -> None:
        """The type's entry changed here: read it again on its next event."""
        self._drop((app_id, event_type))
        self._reading.pop((app_id, event_type), None)

    # --- checking payloads

    async def check(self, app_id: str, schema: PayloadSchema, payload: Any) -> None:
        """Refuse ``payload`` (422 ``validation_error``, one detail per violation) unless it
        matches. A check costlier than :data:`INLINE_STEPS` runs again in the app's turn
        on the worker (:meth:`offload`)."""
        try:
            found = schema.problems(payload, INLINE_STEPS)
        except _TooCostly:
            try:
                found = await self.offload(
                    app_id, functools.partial(schema.problems, payload, MAX_STEPS))
            except _TooCostly:
                found = [{"path": "payload", "message": _TOO_COSTLY}]
        if found:
            raise _refusal(found)

    async def offload(self, app_id: str, work: Callable[[], T]) -> T:
        """``work``'s result, computed on :attr:`worker` in the app's turn: one piece of an
        app's work at a time, so however much an app sends, it holds one worker thread and
        the others stay free for other apps. The turn ends when the thread is done, even
        if the caller has gone."""
        turn = self._turns.setdefault(app_id, _Turn())
        turn.users += 1
        try:
            await turn.lock.acquire()
        except BaseException:
            self._leave(app_id, turn)
            raise
        job = asyncio.get_running_loop().run_in_executor(self.worker, work)
        job.add_done_callback(functools.partial(self._job_done, app_id, turn))
        return await asyncio.shield(job)

    def _job_done(self, app_id: str, turn: _Turn, job: asyncio.Future[Any]) -> None:
        if not job.cancelled():
            job.exception()  # retrieved here: whoever awaited it may have gone
        turn.lock.release()
        self._leave(app_id, turn)

    def _leave(self, app_id: str, turn: _Turn) -> None:
        turn.users -= 1
        if turn.users == 0 and self._turns.get(app_id) is turn:
            del self._turns[app_id]

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)
