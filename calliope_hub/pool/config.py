"""`c.CalliopePool.*`: which pools a hub keeps, checked against the catalog at hub start.

    c.CalliopePool.pools = {
        "chat/small": {"min_idle": 2, "max": 20, "max_idle_age": 3600,
                       "schedule": [{"days": "mon-fri", "start": "08:45", "end": "09:15", "min_idle": 200}]},
    }

A pool belongs to one catalog service and size. Its target of idle tasks is `min_idle`, or a
schedule window's `min_idle` while one is open (the largest wins), never above `max` (which
also caps idle plus starting tasks). A task idle for `max_idle_age` seconds is recycled. A bad
entry stops the hub's start with the pool's name and the field, like every other setting.

Refused, because a warm task would not be what the user's server must be:
- a service with per-user storage: its task definition carries the user's EFS access point
  (ECS cannot override volumes in RunTask), and a warm task exists before its user does;
- a service with no command: the launcher must know what to exec (on ECS such a service
  runs its image's entrypoint, which the launcher cannot learn).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from traitlets import Dict, Float, Unicode, validate
from traitlets.config import Config, Configurable

from ..catalog import Catalog

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_ENTRY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
#: what a pool entry may say
POOL_FIELDS = frozenset({"min_idle", "max", "max_idle_age", "schedule"})
WINDOW_FIELDS = frozenset({"days", "start", "end", "min_idle"})
#: a hard ceiling per pool: ten times ECS's RunTask burst, far above any class
MAX_POOL_SIZE = 1000


class PoolConfigError(ValueError):
    """A pool the hub must not start with; the message names the pool and the field."""


@dataclass(frozen=True)
class Window:
    """A weekly window with its own idle target: `days` (0 = Monday), [start, end) local time."""

    days: frozenset[int]
    start: time
    end: time
    min_idle: int

    def open_at(self, moment: datetime) -> bool:
        return moment.weekday() in self.days and self.start <= moment.time() < self.end


@dataclass(frozen=True)
class PoolSpec:
    """One pool: a service and size, how many idle tasks, for how long."""

    service: str
    size: str
    min_idle: int = 0
    max: int = 10
    max_idle_age: float = 3600.0
    schedule: tuple[Window, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.service}/{self.size}"

    def target(self, moment: datetime) -> int:
        """Idle tasks wanted at `moment` (in the schedule's time zone)."""
        scheduled = [w.min_idle for w in self.schedule if w.open_at(moment)]
        return min(self.max, max([self.min_idle, *scheduled]))


def parse_pools(raw: Mapping[str, Any]) -> tuple[PoolSpec, ...]:
    """`c.CalliopePool.pools` as PoolSpecs; PoolConfigError names the first wrong field."""
    return tuple(_pool(str(name), entry) for name, entry in raw.items())


def _pool(name: str, entry: Any) -> PoolSpec:
    where = f"c.CalliopePool.pools[{name!r}]"
    service, slash, size = name.partition("/")
    if not slash or not service or not size or "/" in size:
        raise PoolConfigError(f"{where}: a pool is named SERVICE/SIZE, e.g. 'chat/small'")
    if not isinstance(entry, Mapping):
        raise PoolConfigError(f"{where}: must be a dict of {', '.join(sorted(POOL_FIELDS))}")
    unknown = set(entry) - POOL_FIELDS
    if unknown:
        raise PoolConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    maximum = _whole(entry.get("max", 10), f"{where}.max", 1, MAX_POOL_SIZE)
    min_idle = _whole(entry.get("min_idle", 0), f"{where}.min_idle", 0, maximum)
    age = entry.get("max_idle_age", 3600.0)
    if isinstance(age, bool) or not isinstance(age, (int, float)) or not 60 <= age <= 7 * 86400:
        raise PoolConfigError(f"{where}.max_idle_age: seconds from 60 to 604800, not {age!r}")
    schedule = entry.get("schedule", [])
    if not isinstance(schedule, list):
        raise PoolConfigError(f"{where}.schedule: must be a list of windows")
    windows = tuple(_window(w, f"{where}.schedule[{i}]", maximum) for i, w in enumerate(schedule))
    return PoolSpec(service, size, min_idle, maximum, float(age), windows)


def _whole(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PoolConfigError(f"{where}: a whole number from {low} to {high}, not {value!r}")
    return value


def _window(raw: Any, where: str, maximum: int) -> Window:
    if not isinstance(raw, Mapping) or set(raw) != WINDOW_FIELDS:
        raise PoolConfigError(f"{where}: a window has exactly {', '.join(sorted(WINDOW_FIELDS))}")
    start, end = _clock(raw["start"], f"{where}.start"), _clock(raw["end"], f"{where}.end")
    if end <= start:
        raise PoolConfigError(f"{where}: end {raw['end']} is not after start {raw['start']} (one day at most)")
    return Window(
        _days(raw["days"], f"{where}.days"), start, end, _whole(raw["min_idle"], f"{where}.min_idle", 0, maximum)
    )


def _clock(value: Any, where: str) -> time:
    match = _TIME.match(value) if isinstance(value, str) else None
    if match is None:
        raise PoolConfigError(f"{where}: HH:MM on a 24-hour clock, not {value!r}")
    return time(int(match.group(1)), int(match.group(2)))


def _days(value: Any, where: str) -> frozenset[int]:
    """'mon-fri', 'sat,sun', 'mon-wed,fri' -> weekday numbers."""
    if not isinstance(value, str) or not value:
        raise PoolConfigError(f"{where}: days like 'mon-fri' or 'sat,sun', not {value!r}")
    days: set[int] = set()
    for part in value.lower().split(","):
        first, dash, last = part.strip().partition("-")
        if first not in DAYS or (dash and last not in DAYS):
            raise PoolConfigError(f"{where}: {part!r} is not a day or range of {', '.join(DAYS)}")
        low, high = DAYS.index(first), DAYS.index(last if dash else first)
        if high < low:
            raise PoolConfigError(f"{where}: {part!r} runs backwards")
        days.update(range(low, high + 1))
    return frozenset(days)


def check_against_catalog(pools: tuple[PoolSpec, ...], catalog: Catalog, *, local: bool) -> None:
    """Refuse a pool whose warm tasks could not be the user's server (see the module's docstring)."""
    for pool in pools:
        where = f"c.CalliopePool.pools[{pool.name!r}]"
        service = catalog.services.get(pool.service)
        if service is None:
            raise PoolConfigError(
                f"{where}: no service {pool.service!r} in the catalog ({', '.join(catalog.services)})"
            )
        if pool.size not in service.sizes:
            raise PoolConfigError(f"{where}: {pool.service} offers no size {pool.size!r} ({', '.join(service.sizes)})")
        if service.storage is not None:
            raise PoolConfigError(
                f"{where}: {pool.service} keeps each user's files on EFS, so its task definition is the user's own "
                "(ECS cannot override volumes in RunTask); a warm task started before its user cannot carry them. "
                "Pool a service without storage (docs/pool.md)"
            )
        if not (service.local.command if local else service.command):
            raise PoolConfigError(
                f"{where}: {pool.service} has no command (its image's entrypoint runs), so the pool's launcher "
                "cannot know what to exec; give the service a `command` to pool it"
            )


class CalliopePool(Configurable):
    """`c.CalliopePool.*`: warm pools (docs/pool.md)."""

    pools = Dict(
        {}, help="SERVICE/SIZE -> {min_idle, max, max_idle_age, schedule}: the pools the hub keeps filled."
    ).tag(config=True)
    interval = Float(5.0, min=0.5, max=300.0, help="Seconds between the keeper's looks at its pools.").tag(config=True)
    claim_timeout = Float(
        5.0, min=0.5, max=60.0, help="Seconds a claim may take before the spawn falls back to a cold start."
    ).tag(config=True)
    refill_rate = Float(
        2.0,
        min=0.05,
        max=20.0,
        help="Pool tasks started per second at most, through the hub's RunTask buckets (spawns go first).",
    ).tag(config=True)
    spawn_priority_window = Float(
        15.0,
        min=0.0,
        max=600.0,
        help="Seconds refills pause after a spawn found no warm task, so cold starts get the RunTask quota.",
    ).tag(config=True)
    timezone = Unicode("UTC", help="The time zone of the pools' schedules (an IANA name).").tag(config=True)
    entry_points = Dict(
        {},
        help="SERVICE -> MODULE:FUNCTION its command runs (e.g. {'lab': 'jupyterhub.singleuser:main'}): a warm "
        "task imports it while it waits and calls it once claimed, so the server's imports are paid before the user "
        "arrives. Services not named here exec their command after the claim.",
    ).tag(config=True)

    @validate("pools")
    def _validate_pools(self, proposal: dict[str, Any]) -> dict[str, Any]:
        parse_pools(proposal["value"])  # PoolConfigError names the pool and the field
        return dict(proposal["value"])

    @validate("entry_points")
    def _validate_entry_points(self, proposal: dict[str, Any]) -> dict[str, str]:
        for service, entry in proposal["value"].items():
            if not isinstance(entry, str) or not _ENTRY.match(entry):
                raise PoolConfigError(
                    f"c.CalliopePool.entry_points[{service!r}]: MODULE:FUNCTION, e.g. 'jupyterhub.singleuser:main', "
                    f"not {entry!r}"
                )
        return {str(service): str(entry) for service, entry in proposal["value"].items()}

    @validate("timezone")
    def _validate_timezone(self, proposal: dict[str, Any]) -> str:
        try:
            ZoneInfo(proposal["value"])
        except (ZoneInfoNotFoundError, ValueError):
            raise PoolConfigError(f"c.CalliopePool.timezone: no time zone {proposal['value']!r}") from None
        return str(proposal["value"])


@dataclass(frozen=True)
class PoolSettings:
    """The pool settings, typed, as the keeper reads them."""

    pools: tuple[PoolSpec, ...]
    interval: float = 5.0
    claim_timeout: float = 5.0
    refill_rate: float = 2.0
    spawn_priority_window: float = 15.0
    timezone: str = "UTC"
    #: service -> MODULE:FUNCTION the launcher preloads and calls (launcher.py --entry)
    entry_points: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Config, catalog: Catalog, *, local: bool) -> PoolSettings:
        """Read `c.CalliopePool` and check it against the catalog (a PoolConfigError names the field)."""
        chosen = CalliopePool(config=config)
        pools = parse_pools(chosen.pools)
        check_against_catalog(pools, catalog, local=local)
        return cls(
            pools,
            interval=chosen.interval,
            claim_timeout=chosen.claim_timeout,
            refill_rate=chosen.refill_rate,
            spawn_priority_window=chosen.spawn_priority_window,
            timezone=chosen.timezone,
            entry_points=dict(chosen.entry_points),
        )
