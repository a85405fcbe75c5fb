"""Request bodies, as pydantic models: the handlers validate with these, and the API
description is generated from them."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

EVENT_TYPE_RE = r"^[A-Za-z0-9_.\-]{1,128}$"
_EVENT_TYPE = re.compile(EVENT_TYPE_RE)


def _storable(value: str) -> str:
    """PostgreSQL text holds neither NUL nor lone surrogates; refuse them up front."""
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode (no lone surrogates)") from exc
    return value


def _event_type_pattern(value: str) -> str:
    if value == "*":
        return value
    base = value[:-2] if value.endswith(".*") else value
    if not _EVENT_TYPE.match(base):
        raise ValueError(
            "must be an event type ([A-Za-z0-9_.-], 1-128 characters), 'prefix.*' or '*'"
        )
    return value


Text = Annotated[str, AfterValidator(_storable)]
EventType = Annotated[str, StringConstraints(pattern=EVENT_TYPE_RE)]
EventTypePattern = Annotated[str, AfterValidator(_event_type_pattern)]
HttpURL = Annotated[Text, StringConstraints(min_length=1, max_length=2048)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class AppCreate(_Body):
    name: Annotated[Text, StringConstraints(min_length=1, max_length=200)]


class EventCreate(_Body):
    type: EventType
    payload: dict[str, Any]
    # Push targets; accepted by the schema so a typo is still a 422 (see the push issue).
    user_ids: list[Annotated[Text, StringConstraints(min_length=1, max_length=256)]] | None = (
        Field(default=None, max_length=1000)
    )
    topics: list[Annotated[Text, StringConstraints(min_length=1, max_length=256)]] | None = None
    notification: dict[str, Any] | None = None


class EndpointCreate(_Body):
    url: HttpURL
    event_types: list[EventTypePattern] | None = Field(default=None, min_length=1,
                                                       max_length=256)
    description: Annotated[Text, StringConstraints(max_length=1000)] = ""


class EndpointPatch(_Body):
    url: HttpURL | None = None
    event_types: list[EventTypePattern] | None = Field(default=None, min_length=1,
                                                       max_length=256)
    description: Annotated[Text, StringConstraints(max_length=1000)] | None = None
    status: Literal["active", "disabled"] | None = None
    disabled_reason: Annotated[Text, StringConstraints(max_length=500)] | None = None
