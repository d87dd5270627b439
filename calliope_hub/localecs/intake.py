"""What a request must be before any operation sees it: bounded, finite, and typed as ECS declares.

Every ECS request passes here first, so a stranger's body can only earn a 4xx:
- at most `MAX_BODY_BYTES`, refused from its Content-Length before it is read;
- at most `MAX_DEPTH` levels of nesting (no ECS request needs more than 8, and Python's
  own decoder would otherwise recurse until it fails);
- no NaN or Infinity and no integer of more than 19 digits, which are not JSON that AWS takes;
- each member typed as botocore's ECS service model declares it. That model is the one
  AWS's SDKs are generated from, so its types are ECS's own; a mismatch is ECS's
  `SerializationException`. Unknown members are ignored, as AWS ignores them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from aiohttp import web

from calliope_hub.ecsfacts import MAX_JSON_DEPTH, JsonBoundsError, bounded_json
from calliope_hub.localecs.model import EcsError

#: the largest request body taken; larger ones get 413 without being read.
MAX_BODY_BYTES = 1024 * 1024
#: the deepest nesting of arrays and objects taken.
MAX_DEPTH = MAX_JSON_DEPTH
_INT_RANGE = {"integer": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
#: members where local ECS takes fractions of a second, which ECS does not (docs/local-ecs.md, health checks).
_FRACTIONS = {("HealthCheck", "interval"), ("HealthCheck", "timeout"), ("HealthCheck", "startPeriod")}


def too_large(size: int | None) -> EcsError:
    shown = f"of {size} bytes " if size is not None else ""
    return EcsError(
        "RequestEntityTooLargeException",
        f"The request body {shown}is larger than the {MAX_BODY_BYTES}-byte limit.",
        413,
    )


async def read_body(request: web.Request) -> bytes:
    """The body, read only when it fits: a declared oversize is refused before one byte is read."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large(request.content_length)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:  # a chunked body that kept going
        raise too_large(None) from None


def _malformed(detail: str) -> EcsError:
    return EcsError("SerializationException", f"Malformed JSON request body: {detail}")


def decode(raw: bytes) -> Any:
    """Bytes to JSON within ecsfacts' bounds; anything else is a SerializationException."""
    try:
        return bounded_json(raw, MAX_DEPTH)
    except JsonBoundsError as error:
        raise _malformed(str(error)) from None


def decode_object(raw: bytes) -> dict:
    """A request body as a JSON object ({} when empty)."""
    if not raw.strip():
        return {}
    params = decode(raw)
    if not isinstance(params, dict):
        raise EcsError("SerializationException", "The request body must be a JSON object.")
    return params


# ---------------------------------------------------------------- types from botocore's ECS model


class _Mismatch(Exception):
    """A value of the wrong type; `path` is filled innermost first as it travels up."""

    def __init__(self, expected: str, value: Any):
        super().__init__(expected)
        self.expected, self.value = expected, value
        self.path: list[str] = []


Check = Callable[[Any], None]
_JSON_KIND = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


def _scalar(kind: str) -> Check:
    if kind == "string" or kind == "blob":
        return _typed(str, "a string")
    if kind == "boolean":
        return _typed(bool, "a boolean")
    if kind in _INT_RANGE:
        low, high = _INT_RANGE[kind]
        expected = f"an integer from {low} to {high}"

        def check_int(value: Any) -> None:
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise _Mismatch(expected, value)

        return check_int
    accepted: tuple[type, ...] = (int, float, str) if kind == "timestamp" else (int, float)

    def check_number(value: Any) -> None:
        if not isinstance(value, accepted) or isinstance(value, bool):
            raise _Mismatch("a number", value)

    return check_number


def _typed(kind: type, expected: str) -> Check:
    def check(value: Any) -> None:
        if not isinstance(value, kind):
            raise _Mismatch(expected, value)

    return check


def _compile(shape: Any, cache: dict[str, Check]) -> Check:
    """One checker per botocore shape, built once; containers check their items lazily by name."""
    if shape.name in cache:
        return cache[shape.name]
    kind = shape.type_name
    if kind == "structure":
        members: dict[str, Check] = {}
        cache[shape.name] = check = _structure(members)
        members.update(
            {
                name: _scalar("double") if (shape.name, name) in _FRACTIONS else _compile(member, cache)
                for name, member in shape.members.items()
            }
        )
    elif kind == "list":
        cache[shape.name] = check = _container(list, "an array", enumerate, _compile(shape.member, cache))
    elif kind == "map":
        cache[shape.name] = check = _container(dict, "an object", dict.items, _compile(shape.value, cache))
    else:
        cache[shape.name] = check = _scalar(kind)
    return check


def _structure(members: dict[str, Check]) -> Check:
    def check(value: Any) -> None:
        if not isinstance(value, dict):
            raise _Mismatch("an object", value)
        for key, item in value.items():
            member = members.get(key)
            if member is not None and item is not None:  # null is absent, as AWS takes it
                try:
                    member(item)
                except _Mismatch as mismatch:
                    mismatch.path.append(f".{key}")
                    raise

    return check


def _container(kind: type, expected: str, items: Callable[[Any], Any], each: Check) -> Check:
    def check(value: Any) -> None:
        if not isinstance(value, kind):
            raise _Mismatch(expected, value)
        for key, item in items(value):
            try:
                each(item)
            except _Mismatch as mismatch:
                mismatch.path.append(f"[{key}]" if kind is list else f".{key}")
                raise

    return check


@functools.cache
def _ecs_inputs() -> dict[str, Check]:
    import botocore.session

    model = botocore.session.get_session().get_service_model("ecs")
    cache: dict[str, Check] = {}
    return {
        name: _compile(model.operation_model(name).input_shape, cache)
        for name in model.operation_names
        if model.operation_model(name).input_shape is not None
    }


def load_model() -> None:
    """Load and compile ECS's model now (about half a second), not on the first request."""
    _ecs_inputs()


def check_types(operation: str, params: dict) -> None:
    """Refuse a member whose JSON type is not the one ECS declares for it."""
    check = _ecs_inputs().get(operation)
    if check is None:
        return
    try:
        check(params)
    except _Mismatch as mismatch:
        path = "".join(reversed(mismatch.path)).lstrip(".")
        got = _JSON_KIND.get(type(mismatch.value), "a value")
        raise EcsError(
            "SerializationException", f"{path or 'The request'} must be {mismatch.expected}, not {got}."
        ) from None
