"""Reading a decoded AWS request field by field, for the SSM and EFS subsets.

Each service names its own error for a malformed field (SSM: ValidationException, EFS:
BadRequest), so the caller passes the factory; the checks and their wording are shared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from calliope_hub.localecs.model import EcsError

_KINDS = {str: "a string", int: "an integer", bool: "a boolean", list: "a list", dict: "an object"}


def read(
    params: Mapping[str, Any], key: str, kind: type, error: Callable[[str], EcsError], *, required: bool = False
) -> Any:
    """`params[key]` when it is of `kind`; None when absent and not `required`; else `error(...)`."""
    value = params.get(key)
    if value is None:
        if required:
            raise error(f"{key} is required and was not given.")
        return None
    wrong_bool = kind is int and isinstance(value, bool)
    if not isinstance(value, kind) or wrong_bool:
        raise error(f"{key} must be {_KINDS[kind]}, not {type(value).__name__}.")
    return value


def read_tags(
    tags: Any, error: Callable[[str], EcsError], *, key: str = "Key", value: str = "Value", limit: int = 50
) -> dict[str, str]:
    """A `[{Key, Value}]` list as a dict: keys 1-128 characters, values up to 256, no `aws:` prefix."""
    if tags is None:
        return {}
    if not isinstance(tags, list) or not all(isinstance(tag, dict) for tag in tags):
        raise error(f"Tags must be a list of {{{key}, {value}}} objects.")
    if len(tags) > limit:
        raise error(f"Too many tags: {len(tags)} given, at most {limit} are allowed.")
    result: dict[str, str] = {}
    for tag in tags:
        name, text = tag.get(key), tag.get(value, "")
        if not isinstance(name, str) or not 1 <= len(name) <= 128 or name.lower().startswith("aws:"):
            raise error(f"Tag key {name!r} must be 1-128 characters and must not start with 'aws:'.")
        if not isinstance(text, str) or len(text) > 256:
            raise error(f"Tag value for {name!r} must be a string of at most 256 characters.")
        result[name] = text
    return result
