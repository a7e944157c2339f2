"""orjson encoding and validated decoding of events on the wire."""

from __future__ import annotations

from typing import TypeVar

import orjson
from pydantic import TypeAdapter, ValidationError

from shared.errors import DeadLetterError
from shared.events.models import AnyEvent, Envelope

E = TypeVar("E", bound=Envelope)

_ANY_EVENT: TypeAdapter[Envelope] = TypeAdapter(AnyEvent)  # type: ignore[arg-type]


class UndecodableEvent(DeadLetterError):
    """Bytes on a topic that are not a valid event of a known type and version."""


def encode(event: Envelope) -> bytes:
    """Serialize an event to compact JSON bytes."""
    return orjson.dumps(event.model_dump(mode="json"))


def _load(data: bytes) -> dict[str, object]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UndecodableEvent(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise UndecodableEvent("an event must be a JSON object")
    return obj


def _check_version(event: Envelope) -> Envelope:
    if event.schema_version > type(event).SCHEMA_VERSION:
        raise UndecodableEvent(
            f"{event.type} schema_version {event.schema_version} is newer than supported "
            f"{type(event).SCHEMA_VERSION}"
        )
    return event


def decode(data: bytes) -> Envelope:
    """Parse any known event; raises UndecodableEvent with the reason otherwise.

    The hot path validates the JSON bytes in pydantic-core directly (about twice as
    fast as building Python objects first); only bytes it refuses take the slower
    path that explains why.
    """
    try:
        event = _ANY_EVENT.validate_json(data)
    except ValidationError:
        obj = _load(data)
        try:
            event = _ANY_EVENT.validate_python(obj)
        except ValidationError as exc:
            raise UndecodableEvent(_summarize(exc)) from None
    return _check_version(event)


def decode_as(data: bytes, model: type[E]) -> E:
    """Parse an event that must be of one given type."""
    obj = _load(data)
    try:
        event = model.model_validate(obj)
    except ValidationError as exc:
        raise UndecodableEvent(_summarize(exc)) from None
    _check_version(event)
    return event


def _summarize(exc: ValidationError) -> str:
    parts = [
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
        for err in exc.errors()[:5]
    ]
    more = exc.error_count() - len(parts)
    return "invalid event: " + "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
