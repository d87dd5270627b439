"""Slot task definitions: a server's secret outside the ECS API without a definition per user.

A task's `secrets` can only be named in its task definition (RunTask cannot override them),
so a per-server parameter needs a per-server definition, and RegisterTaskDefinition's quota
(20 burst, then 1 a second) would cap the first spawns of new users at one a second. For a
service with no per-user storage every server's definition is the same but for the one
parameter it names. So the hub keeps a small pool of "slot" definitions per (service, size,
catalog content): slot k is the shared definition whose `secrets` name the parameter
`<root>/<hub>/slots/<service>/<size>/<k>`.

A spawn leases a free slot, writes its token into the slot's parameter, runs the task with
the slot's definition, and keeps the lease until ECS has resolved the secret, that is until
the task has left PENDING (ECS resolves `secrets` before the containers start) or stopped.
Then the parameter is deleted and the slot is free again. So:

- a parameter is never overwritten while a task that will read it is still PENDING: only the
  leaseholder writes it, and the lease outlives the read;
- the token stays in SSM only from its spawn's write until its task is RUNNING;
- slots in use <= spawns in flight, so the pool stays near concurrent_spawn_limit, and the
  1/s registration quota only limits growing it, once: slots persist across restarts and are
  found again by family and content hash (calliope_hub.ecs.taskdefs).

A hub that restarts knows no leases. Every slot is therefore vetted before its first use in a
process: ListTasks by the slot's family, and the lease waits until every task it lists has
left PENDING. The same vetting follows a RunTask whose outcome is unknown (retries ran out
with the same clientToken). Services with per-user storage keep their per-server definitions
(the user's EFS access point is in the volume), see docs/security.md.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from .secrets import escape_name_part
from .snapshot import TaskSnapshot

log = logging.getLogger(__name__)

#: the states in which ECS may still read a task's `secrets`: a lease holds while its task is in one
PENDING_STATES = frozenset({"PROVISIONING", "PENDING"})


def secrets_resolved(snapshot: TaskSnapshot) -> bool:
    """ECS has read the task's secrets, or never will: it left PENDING, or it stopped."""
    return snapshot.last_status not in PENDING_STATES


@dataclass(frozen=True)
class SlotKey:
    """Which definitions are interchangeable: the service, the size, and the shared content's hash."""

    service: str
    size: str
    spec: str


@dataclass(frozen=True)
class Slot:
    """One slot: its place in the pool, the parameter its definition names, its family and ARN."""

    key: SlotKey
    index: int
    parameter: str
    family: str
    definition: str


def slot_parameter(root: str, hub_id: str, service: str, size: str, index: int) -> str:
    """`<root>/<hub>/slots/<service>/<size>/<k>`, escaped as server parameters are.

    One level deeper than any server's parameter (`<root>/<hub>/<user>/<server>/<NAME>`), so
    the two can never share a name.
    """
    parts = [escape_name_part(part) for part in (hub_id, "slots", service, size, str(index))]
    return "/".join([root.rstrip("/"), *parts])


class SlotPool:
    """The bookkeeping of one hub's slots: which are free, which wait to be vetted, how many exist.

    The launch path (calliope_hub.ecs.launch) does the AWS calls; this keeps the state they
    decide on, and the tasks that hold leases until ECS has read the secrets.
    """

    def __init__(self) -> None:
        self._free: dict[SlotKey, list[Slot]] = collections.defaultdict(list)
        self._unvetted: dict[SlotKey, list[Slot]] = collections.defaultdict(list)
        self._next: dict[SlotKey, int] = collections.defaultdict(int)
        self._holds: set[asyncio.Task[None]] = set()
        #: leases in force (a slot leased or being vetted), for logs, metrics and tests
        self.in_use = 0
        #: what happened to leases: reused | grown | vetted-busy | suspect
        self.outcomes: collections.Counter[str] = collections.Counter()

    def take(self, key: SlotKey) -> Slot | None:
        """A free, vetted slot (the lowest index, so the pool stays compact), or None."""
        free = self._free[key]
        if not free:
            return None
        free.sort(key=lambda slot: slot.index, reverse=True)
        self.in_use += 1
        self.outcomes["reused"] += 1
        return free.pop()

    def take_unvetted(self, key: SlotKey) -> Slot | None:
        """A slot that must be vetted before it is written (unknown RunTask outcome), or None."""
        unvetted = self._unvetted[key]
        if not unvetted:
            return None
        self.in_use += 1
        return unvetted.pop()

    def grow(self, key: SlotKey) -> int:
        """The next slot index of `key` to find or register; counted as in use until given back."""
        index = self._next[key]
        self._next[key] += 1
        self.in_use += 1
        self.outcomes["grown"] += 1
        return index

    def give_back(self, slot: Slot) -> None:
        """The slot's task (if any) has resolved its secret and the parameter is cleared: free."""
        self.in_use -= 1
        self._free[slot.key].append(slot)

    def suspect(self, slot: Slot) -> None:
        """A task may exist for the slot that nobody watches (RunTask's outcome is unknown): vet it again first."""
        self.in_use -= 1
        self.outcomes["suspect"] += 1
        self._unvetted[slot.key].append(slot)

    def abandon(self) -> None:
        """A grown index that could not be registered: not in use (the index is not reused)."""
        self.in_use -= 1

    def hold(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Keep `work` (a lease waiting for ECS) alive; it ends when the watcher closes and cancels its waits."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._holds.add(task)
        task.add_done_callback(self._holds.discard)

    @property
    def holding(self) -> int:
        """Leases waiting for ECS to read their secrets; they end with the watcher (its waiters are cancelled)."""
        return len(self._holds)
