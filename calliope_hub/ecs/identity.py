"""Who a task belongs to, written on the task itself: the calliope:* tags, startedBy, the clientToken.

A restarted hub re-adopts its servers, and the orphan sweep finds what no spawner owns, only
from what ECS keeps with each task, so this is the one place that writes and reads it. Tag
values are escaped reversibly, so a restarted hub can read the user and server back; the
startedBy rule (the sanitized hub id) is an ECS fact local ECS shares, kept in ecsfacts.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from calliope_hub.ecsfacts import started_by

__all__ = [
    "POOL_CLAIMED",
    "POOL_DEFINITION",
    "POOL_IDLE",
    "POOL_TAG",
    "TAG_FIELDS",
    "TAG_PREFIX",
    "TaskIdentity",
    "decode_tag_value",
    "encode_tag_value",
    "read_tags",
    "started_by",
]

TAG_PREFIX = "calliope:"
TAG_FIELDS = ("hub", "user", "server", "service", "size")
#: the tag that marks a warm-pool task (calliope_hub.pool), and its values: an idle one belongs to the
#: pool keeper (the orphan sweep leaves it alone); a claimed one carries its user and is a server like any other
POOL_TAG = TAG_PREFIX + "pool"
POOL_IDLE, POOL_CLAIMED = "idle", "claimed"
#: the pool tag's value on a pool's task definition (not a task)
POOL_DEFINITION = "definition"
#: ECS: a tag value has at most 256 characters.
MAX_TAG_VALUE = 256

_TAG_SAFE_SYMBOLS = frozenset(" +-.:/@_")
_ESCAPE = re.compile(r"=([0-9A-F]{2})")


def encode_tag_value(value: str) -> str:
    """`value` in ECS's tag alphabet; other characters (and "=") become =XX per UTF-8 byte.

    A value whose escaped form exceeds 256 characters is cut and ends in "/" plus a hash of
    the whole, so distinct long values keep distinct tags (reading one back gives the prefix).
    """
    units = [
        ch if (ch.isalnum() or ch in _TAG_SAFE_SYMBOLS) else "".join(f"={b:02X}" for b in ch.encode()) for ch in value
    ]
    encoded = "".join(units)
    if len(encoded) <= MAX_TAG_VALUE:
        return encoded
    suffix = "/" + hashlib.sha256(value.encode()).hexdigest()[:16]
    kept: list[str] = []
    length = 0
    for unit in units:
        if length + len(unit) > MAX_TAG_VALUE - len(suffix):
            break
        kept.append(unit)
        length += len(unit)
    return "".join(kept) + suffix


def decode_tag_value(value: str) -> str:
    """The inverse of encode_tag_value for values that were not cut short."""
    raw = bytearray()
    position = 0
    for match in _ESCAPE.finditer(value):
        raw += value[position : match.start()].encode()
        raw.append(int(match.group(1), 16))
        position = match.end()
    raw += value[position:].encode()
    return raw.decode("utf-8", "replace")


def read_tags(tags: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """The calliope:* tags of a described task, decoded: {"hub": ..., "user": ..., ...}."""
    found: dict[str, str] = {}
    for tag in tags:
        key = tag.get("key", "")
        if key.startswith(TAG_PREFIX) and key[len(TAG_PREFIX) :] in TAG_FIELDS:
            found[key[len(TAG_PREFIX) :]] = decode_tag_value(tag.get("value", ""))
    return found


@dataclass(frozen=True)
class TaskIdentity:
    """Who a task belongs to, and which start attempt it is: the source of tags and tokens."""

    hub_id: str
    user: str
    server_name: str
    service: str
    size: str
    attempt: int

    def __post_init__(self) -> None:
        if not self.hub_id:
            raise ValueError("hub_id must not be empty: it scopes startedBy and the clientToken")
        if not isinstance(self.attempt, int) or self.attempt < 0:
            raise ValueError(f"attempt must be a whole number >= 0, not {self.attempt!r}")

    def tags(self) -> list[dict[str, str]]:
        """The calliope:* tags that let a restarted hub re-adopt or clean up this task."""
        values = (self.hub_id, self.user, self.server_name, self.service, self.size)
        return [
            {"key": TAG_PREFIX + field, "value": encode_tag_value(value)}
            for field, value in zip(TAG_FIELDS, values, strict=True)
        ]

    @property
    def started_by(self) -> str:
        """startedBy: the hub's, for ListTasks (calliope_hub.ecsfacts.started_by)."""
        return started_by(self.hub_id)

    @property
    def client_token(self) -> str:
        """The same for a retried RunTask of one attempt, so ECS starts one task, not two."""
        parts = (self.hub_id, self.user, self.server_name, str(self.attempt))
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()  # 64 hex characters
